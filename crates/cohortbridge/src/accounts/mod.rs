//! People and what they may do: roles, the actions each role allows, argon2 password hashing
//! and the login rate limit. The web UI and the admin API both check `Role::allows` before
//! every action, so one table decides for both.

mod limiter;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use serde::Serialize;

pub use limiter::LoginLimiter;

/// Shortest password a person may set.
pub const MIN_PASSWORD_LEN: usize = 10;
/// Maximum password length accepted. argon2 hashes any length, but a longer password costs more
/// memory and time per login attempt.
pub const MAX_PASSWORD_LEN: usize = 1024;

/// A project role, as in Mixpanel. Roles apply to every project of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Owner,
    Admin,
    Analyst,
    Consumer,
}

/// Something a person may or may not do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Read cohorts, syncs, users and reports.
    View,
    /// Create and edit cohorts.
    EditCohorts,
    /// Export a cohort, and run, pause, resume or remove its syncs.
    Export,
    /// Connect, reconnect, rename and disconnect Braze connections.
    ManageConnections,
    /// Read the error messages of failed runs and of syncs paused by an error.
    ViewSyncErrors,
    /// Read the project's secrets and change its settings and import credentials.
    ManageProject,
    /// Add people and create their API keys.
    ManageUsers,
}

impl Action {
    /// Phrase for error messages: "role consumer may not <phrase>".
    pub fn phrase(self) -> &'static str {
        match self {
            Action::View => "view the project",
            Action::EditCohorts => "create or edit cohorts",
            Action::Export => "export cohorts or change syncs",
            Action::ManageConnections => "manage Braze connections",
            Action::ViewSyncErrors => "view sync errors",
            Action::ManageProject => "manage project settings and secrets",
            Action::ManageUsers => "manage users",
        }
    }
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Owner, Role::Admin, Role::Analyst, Role::Consumer];

    pub fn parse(text: &str) -> Result<Role, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "owner" => Ok(Role::Owner),
            "admin" => Ok(Role::Admin),
            "analyst" => Ok(Role::Analyst),
            "consumer" => Ok(Role::Consumer),
            _ => Err(format!(
                "role {text:?} is invalid; expected owner, admin, analyst or consumer"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Analyst => "analyst",
            Role::Consumer => "consumer",
        }
    }

    /// Whether this role may perform `action`.
    pub fn allows(self, action: Action) -> bool {
        match action {
            Action::View => true,
            Action::EditCohorts | Action::Export => self != Role::Consumer,
            Action::ManageConnections | Action::ViewSyncErrors | Action::ManageProject => {
                matches!(self, Role::Owner | Role::Admin)
            }
            Action::ManageUsers => self == Role::Owner,
        }
    }
}

/// Checks an e-mail address loosely (one `@`, text on both sides, no spaces) and returns it in
/// lowercase, the form it is stored and looked up in.
pub fn normalize_email(email: &str) -> Result<String, String> {
    let email = email.trim().to_ascii_lowercase();
    let valid = match email.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && !email.contains(char::is_whitespace)
        }
        None => false,
    };
    if valid && email.len() <= 254 {
        Ok(email)
    } else {
        Err(format!("field `email` {email:?} is not an e-mail address"))
    }
}

/// Checks a new password's length; the message never contains the password.
pub fn check_password(password: &str) -> Result<(), String> {
    let length = password.chars().count();
    if length < MIN_PASSWORD_LEN {
        return Err(format!(
            "field `password` is too short: {length} characters, at least {MIN_PASSWORD_LEN} required"
        ));
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(format!(
            "field `password` is longer than {MAX_PASSWORD_LEN} bytes"
        ));
    }
    Ok(())
}

/// Hashes a password with argon2id and a random salt, in PHC string format.
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 hashes any password with default parameters")
        .to_string()
}

/// Checks a password against a stored PHC hash; a malformed hash never verifies.
pub fn verify_password(password: &str, stored_hash: &str) -> bool {
    PasswordHash::new(stored_hash)
        .map(|hash| {
            Argon2::default()
                .verify_password(password.as_bytes(), &hash)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Compares two byte strings in time that depends only on their length.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_table_matches_mixpanel_roles() {
        use Action::*;
        let expected = [
            (Role::Owner, [true, true, true, true, true, true, true]),
            (Role::Admin, [true, true, true, true, true, true, false]),
            (
                Role::Analyst,
                [true, true, true, false, false, false, false],
            ),
            (
                Role::Consumer,
                [true, false, false, false, false, false, false],
            ),
        ];
        let actions = [
            View,
            EditCohorts,
            Export,
            ManageConnections,
            ViewSyncErrors,
            ManageProject,
            ManageUsers,
        ];
        for (role, allowed) in expected {
            for (action, allow) in actions.iter().zip(allowed) {
                assert_eq!(role.allows(*action), allow, "{role:?} {action:?}");
            }
        }
    }

    #[test]
    fn password_hash_verifies_only_the_password() {
        let hash = hash_password("correct horse battery");
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse battery", &hash));
        assert!(!verify_password("correct horse batterY", &hash));
        assert!(!verify_password("correct horse battery", "not a hash"));
    }

    #[test]
    fn email_and_password_checks_name_the_field() {
        assert_eq!(
            normalize_email(" Ann@Example.COM ").unwrap(),
            "ann@example.com"
        );
        for bad in ["ann", "@example.com", "ann@", "a b@example.com", "a@b@c"] {
            let message = normalize_email(bad).unwrap_err();
            assert!(message.contains("field `email`"), "{bad}: {message}");
        }
        let message = check_password("short").unwrap_err();
        assert!(message.contains("field `password`"), "{message}");
        assert!(!message.contains("short\""), "{message}");
        assert!(check_password("long enough password").is_ok());
        assert!(Role::parse("Analyst").is_ok());
        assert!(Role::parse("root").unwrap_err().contains("\"root\""));
    }
}
