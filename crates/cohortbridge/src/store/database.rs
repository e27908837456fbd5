//! Choosing the backend: an SQLite file in the data folder, or a PostgreSQL database named by a
//! URL. Also redacts database URLs, so that a password never reaches a log or an error message.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use super::{PostgresStore, SqliteStore, Store, StoreResult};

/// The SQLite file's name inside the data folder.
pub const SQLITE_FILE: &str = "cohortbridge.db";

/// The location of the store.
#[derive(Debug, Clone)]
pub enum Database {
    Sqlite {
        path: PathBuf,
    },
    Postgres {
        /// The URL as given, password included; print [`redact_url`] of it instead.
        url: String,
        /// Connections the node keeps open at most.
        max_connections: usize,
    },
}

/// A `--database-url` that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseUrlError {
    #[error("invalid --database-url {url:?}: it must start with postgres:// or postgresql://")]
    Scheme { url: String },
    #[error("invalid --database-url {url:?}: {reason}; expected postgres://user:password@host:port/database")]
    Invalid { url: String, reason: String },
}

impl Database {
    /// Picks PostgreSQL when `database_url` is given, else the SQLite file in `data_dir`.
    /// Errors show the URL with its password redacted.
    pub fn from_settings(
        database_url: Option<&str>,
        data_dir: &Path,
        max_connections: usize,
    ) -> Result<Self, DatabaseUrlError> {
        let Some(url) = database_url else {
            return Ok(Self::Sqlite {
                path: data_dir.join(SQLITE_FILE),
            });
        };
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(DatabaseUrlError::Scheme {
                url: redact_url(url),
            });
        }
        tokio_postgres::Config::from_str(url).map_err(|e| DatabaseUrlError::Invalid {
            url: redact_url(url),
            reason: e.to_string(),
        })?;
        Ok(Self::Postgres {
            url: url.to_owned(),
            max_connections: max_connections.max(1),
        })
    }

    /// Names the database for logs and messages, without a password.
    pub fn describe(&self) -> String {
        match self {
            Self::Sqlite { path } => format!("SQLite file {}", path.display()),
            Self::Postgres { url, .. } => format!("PostgreSQL {}", redact_url(url)),
        }
    }

    /// Applies the migrations not yet applied and returns their names.
    pub async fn migrate(&self) -> StoreResult<Vec<String>> {
        match self {
            Self::Sqlite { path } => SqliteStore::migrate_file(path),
            Self::Postgres {
                url,
                max_connections,
            } => {
                let store = PostgresStore::connect(url, *max_connections).await?;
                store.migrate().await
            }
        }
    }
}

/// Opens the store and applies pending migrations.
pub async fn open(database: &Database) -> StoreResult<Arc<dyn Store>> {
    Ok(match database {
        Database::Sqlite { path } => Arc::new(SqliteStore::open(path)?),
        Database::Postgres {
            url,
            max_connections,
        } => {
            let store = PostgresStore::connect(url, *max_connections).await?;
            store.migrate().await?;
            Arc::new(store)
        }
    })
}

/// Replaces the password of a database URL, in its user part or a `password=` parameter, with
/// `<redacted>`.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(at) => url.split_at(at + 3),
        None => return redact_key_value(url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => {
            let (user_info, host) = authority.split_at(at);
            match user_info.find(':') {
                Some(colon) => format!("{}:<redacted>{host}", &user_info[..colon]),
                None => authority.to_owned(),
            }
        }
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let parameters: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => {
                        format!("{key}=<redacted>")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", parameters.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}{authority}{tail}")
}

/// Redacts a libpq key=value connection string, such as `host=db password=secret`. A quoted
/// password may contain spaces, so everything after `password=` up to the next ` key=` goes.
fn redact_key_value(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let Some(start) = lower.find("password=") else {
        return text.to_owned();
    };
    let value_start = start + "password=".len();
    let rest = &text[value_start..];
    // The value ends where the next `name=` pair begins.
    let end = rest
        .char_indices()
        .filter(|(_, c)| *c == ' ')
        .map(|(i, _)| i)
        .find(|&i| {
            let next = &rest[i + 1..];
            let word_end = next.find([' ', '=']).unwrap_or(next.len());
            next[word_end..].starts_with('=') && word_end > 0
        })
        .unwrap_or(rest.len());
    format!(
        "{}<redacted>{}",
        &text[..value_start],
        redact_key_value(&rest[end..])
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_url_hides_key_value_password() {
        let text = "host=127.0.0.1 user=postgres password=KvPwLeak123 dbname=nonexist";
        let shown = redact_url(text);
        assert!(!shown.contains("KvPwLeak123"), "{shown}");
        assert_eq!(
            shown,
            "host=127.0.0.1 user=postgres password=<redacted> dbname=nonexist"
        );
        let quoted = redact_url("PASSWORD='a b c' host=x");
        assert_eq!(quoted, "PASSWORD=<redacted> host=x");
        let error = Database::from_settings(Some(text), Path::new("."), 1)
            .unwrap_err()
            .to_string();
        assert!(!error.contains("KvPwLeak123"), "{error}");
        assert!(error.contains("postgres://"), "{error}");
    }

    #[test]
    fn redact_url_hides_user_password() {
        assert_eq!(
            redact_url("postgres://app:s3cr:et@db.internal:5432/cb?sslmode=disable"),
            "postgres://app:<redacted>@db.internal:5432/cb?sslmode=disable"
        );
    }

    #[test]
    fn redact_url_hides_password_parameter() {
        assert_eq!(
            redact_url("postgresql://db/cb?user=app&password=hunter2&application_name=x"),
            "postgresql://db/cb?user=app&password=<redacted>&application_name=x"
        );
    }

    #[test]
    fn redact_url_keeps_url_without_password() {
        let url = "postgres://postgres@127.0.0.1:5432/test";
        assert_eq!(redact_url(url), url);
    }

    #[test]
    fn database_url_with_wrong_scheme_is_rejected() {
        let error = Database::from_settings(Some("mysql://u:pw@h/db"), Path::new("."), 4)
            .unwrap_err()
            .to_string();
        assert!(error.contains("--database-url"), "{error}");
        assert!(error.contains("mysql://u:<redacted>@h/db"), "{error}");
        assert!(!error.contains("pw"), "{error}");
    }

    #[test]
    fn malformed_database_url_names_the_value() {
        let error =
            Database::from_settings(Some("postgres://u:pw@h:notaport/db"), Path::new("."), 4)
                .unwrap_err()
                .to_string();
        assert!(
            error.contains("postgres://u:<redacted>@h:notaport/db"),
            "{error}"
        );
        assert!(!error.contains(":pw@"), "{error}");
    }

    #[test]
    fn no_database_url_means_sqlite_in_data_dir() {
        let database = Database::from_settings(None, Path::new("/srv/cb"), 4).unwrap();
        assert!(matches!(database, Database::Sqlite { ref path } if path.ends_with(SQLITE_FILE)));
    }
}
