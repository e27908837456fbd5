//! The embedded store: one SQLite file in WAL mode with `synchronous=FULL`, so a committed
//! transaction survives a crash of the process or of the machine.
//!
//! Writes go through one connection and reads through another, so readers never wait for a
//! write in progress. Blocking calls run on tokio's blocking pool.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{params, params_from_iter, Connection as SqlConnection, OptionalExtension, Row};
use serde_json::{Map, Value};

use super::*;

const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_init", include_str!("migrations/sqlite/0001_init.sql")),
    (
        "0003_project_timezone",
        include_str!("migrations/sqlite/0003_project_timezone.sql"),
    ),
];

#[derive(Clone)]
pub struct SqliteStore {
    writer: Arc<Mutex<SqlConnection>>,
    reader: Arc<Mutex<SqlConnection>>,
}

impl SqliteStore {
    /// Opens (or creates) the database file and applies pending migrations.
    pub fn open(path: &Path) -> StoreResult<Self> {
        let mut writer = SqlConnection::open(path)?;
        configure(&writer)?;
        migrate(&mut writer)?;
        let reader = SqlConnection::open(path)?;
        configure(&reader)?;
        Ok(Self {
            writer: Arc::new(Mutex::new(writer)),
            reader: Arc::new(Mutex::new(reader)),
        })
    }

    async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut SqlConnection) -> StoreResult<T> + Send + 'static,
    {
        let conn = self.writer.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&SqlConnection) -> StoreResult<T> + Send + 'static,
    {
        let conn = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let guard = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&guard)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

fn configure(conn: &SqlConnection) -> StoreResult<()> {
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

/// Applies every migration not yet recorded in `schema_migrations`, each in its own transaction.
fn migrate(conn: &mut SqlConnection) -> StoreResult<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at_ms INTEGER NOT NULL)",
    )?;
    for (name, sql) in MIGRATIONS {
        let applied: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE name = ?1)",
            [name],
            |row| row.get(0),
        )?;
        if applied {
            continue;
        }
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (name, applied_at_ms) VALUES (?1, ?2)",
            params![name, chrono::Utc::now().timestamp_millis()],
        )?;
        tx.commit()?;
        tracing::info!(migration = name, "applied migration");
    }
    Ok(())
}

fn is_unique_violation(err: &rusqlite::Error) -> bool {
    matches!(
        err,
        rusqlite::Error::SqliteFailure(e, _) if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
    )
}

const PROJECT_COLUMNS: &str = "id, name, token, api_secret_enc, currents_token_enc, created_at_ms";

fn project_from_row(row: &Row<'_>) -> rusqlite::Result<Project> {
    Ok(Project {
        id: row.get(0)?,
        name: row.get(1)?,
        token: row.get(2)?,
        api_secret_enc: row.get(3)?,
        currents_token_enc: row.get(4)?,
        created_at_ms: row.get(5)?,
    })
}

fn project_where(
    conn: &SqlConnection,
    clause: &str,
    value: &dyn rusqlite::ToSql,
) -> StoreResult<Option<Project>> {
    let sql = format!("SELECT {PROJECT_COLUMNS} FROM projects WHERE {clause}");
    Ok(conn.query_row(&sql, [value], project_from_row).optional()?)
}

/// Reads the identity links, the profiles and the distinct ids with events of a project.
fn read_cohort_inputs(conn: &SqlConnection, project_id: i64) -> StoreResult<CohortInputs> {
    let mut inputs = CohortInputs::default();
    let mut stmt =
        conn.prepare("SELECT distinct_id, canonical_id FROM identity_links WHERE project_id = ?1")?;
    for row in stmt.query_map([project_id], |row| Ok((row.get(0)?, row.get(1)?)))? {
        let (from, to): (String, String) = row?;
        inputs.links.insert(from, to);
    }
    let mut stmt =
        conn.prepare("SELECT distinct_id, properties FROM profiles WHERE project_id = ?1")?;
    for row in stmt.query_map([project_id], |row| Ok((row.get(0)?, row.get(1)?)))? {
        let (id, text): (String, String) = row?;
        inputs.profiles.insert(id, serde_json::from_str(&text)?);
    }
    let mut stmt = conn.prepare(
        "SELECT DISTINCT distinct_id FROM events WHERE project_id = ?1 AND distinct_id <> ''",
    )?;
    for row in stmt.query_map([project_id], |row| row.get(0))? {
        inputs.event_distinct_ids.insert(row?);
    }
    Ok(inputs)
}

const COHORT_COLUMNS: &str = "id, project_id, name, definition, created_at_ms, updated_at_ms";

fn cohort_from_row(row: &Row<'_>) -> rusqlite::Result<(Cohort, String)> {
    let definition: String = row.get(3)?;
    Ok((
        Cohort {
            id: row.get(0)?,
            project_id: row.get(1)?,
            name: row.get(2)?,
            definition: Value::Null,
            created_at_ms: row.get(4)?,
            updated_at_ms: row.get(5)?,
        },
        definition,
    ))
}

fn parse_cohort((mut cohort, definition): (Cohort, String)) -> StoreResult<Cohort> {
    cohort.definition = serde_json::from_str(&definition)?;
    Ok(cohort)
}

const CONNECTION_COLUMNS: &str =
    "id, project_id, name, instance, base_url, data_import_key_enc, user_id_property, created_at_ms";

fn connection_from_row(row: &Row<'_>) -> rusqlite::Result<Connection> {
    Ok(Connection {
        id: row.get(0)?,
        project_id: row.get(1)?,
        name: row.get(2)?,
        instance: row.get(3)?,
        base_url: row.get(4)?,
        data_import_key_enc: row.get(5)?,
        user_id_property: row.get(6)?,
        created_at_ms: row.get(7)?,
    })
}

const SYNC_COLUMNS: &str = "id, project_id, cohort_id, connection_id, mode, interval_secs, status, status_reason, next_run_at_ms, created_at_ms";

fn sync_from_row(row: &Row<'_>) -> rusqlite::Result<Sync> {
    let mode: String = row.get(4)?;
    Ok(Sync {
        id: row.get(0)?,
        project_id: row.get(1)?,
        cohort_id: row.get(2)?,
        connection_id: row.get(3)?,
        mode: if mode == "dynamic" {
            SyncMode::Dynamic
        } else {
            SyncMode::Once
        },
        interval_secs: row.get(5)?,
        status: row.get(6)?,
        status_reason: row.get(7)?,
        next_run_at_ms: row.get(8)?,
        created_at_ms: row.get(9)?,
    })
}

const RUN_COLUMNS: &str = "id, sync_id, started_at_ms, finished_at_ms, status, members, added, removed, skipped, requests, error";

fn run_from_row(row: &Row<'_>) -> rusqlite::Result<SyncRun> {
    Ok(SyncRun {
        id: row.get(0)?,
        sync_id: row.get(1)?,
        started_at_ms: row.get(2)?,
        finished_at_ms: row.get(3)?,
        status: row.get(4)?,
        counts: RunCounts {
            members: row.get(5)?,
            added: row.get(6)?,
            removed: row.get(7)?,
            skipped: row.get(8)?,
            requests: row.get(9)?,
        },
        error: row.get(10)?,
    })
}

fn run_by_id(conn: &SqlConnection, id: i64) -> StoreResult<SyncRun> {
    let sql = format!("SELECT {RUN_COLUMNS} FROM sync_runs WHERE id = ?1");
    conn.query_row(&sql, [id], run_from_row)
        .optional()?
        .ok_or(StoreError::NotFound {
            what: "sync run",
            id: id.to_string(),
        })
}

fn resolve(conn: &SqlConnection, project_id: i64, distinct_id: &str) -> StoreResult<String> {
    let canonical: Option<String> = conn
        .query_row(
            "SELECT canonical_id FROM identity_links WHERE project_id = ?1 AND distinct_id = ?2",
            params![project_id, distinct_id],
            |row| row.get(0),
        )
        .optional()?;
    Ok(canonical.unwrap_or_else(|| distinct_id.to_owned()))
}

#[async_trait]
impl Store for SqliteStore {
    async fn get_setting(&self, key: &str) -> StoreResult<Option<String>> {
        let key = key.to_owned();
        self.read(move |conn| {
            Ok(conn
                .query_row("SELECT value FROM settings WHERE key = ?1", [key], |row| {
                    row.get(0)
                })
                .optional()?)
        })
        .await
    }

    async fn put_setting(&self, key: &str, value: &str) -> StoreResult<()> {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO settings (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )?;
            Ok(())
        })
        .await
    }

    async fn create_project(&self, project: NewProject) -> StoreResult<Project> {
        self.write(move |conn| {
            let now = chrono::Utc::now().timestamp_millis();
            conn.execute(
                "INSERT INTO projects (name, token, api_secret_enc, api_secret_hash,
                     currents_token_enc, currents_token_hash, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    project.name,
                    project.token,
                    project.api_secret_enc,
                    project.api_secret_hash,
                    project.currents_token_enc,
                    project.currents_token_hash,
                    now
                ],
            )?;
            let id = conn.last_insert_rowid();
            project_where(conn, "id = ?1", &id)?.ok_or(StoreError::NotFound {
                what: "project",
                id: id.to_string(),
            })
        })
        .await
    }

    async fn list_projects(&self) -> StoreResult<Vec<Project>> {
        self.read(|conn| {
            let sql = format!("SELECT {PROJECT_COLUMNS} FROM projects ORDER BY id");
            let mut stmt = conn.prepare(&sql)?;
            let rows = stmt.query_map([], project_from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn project(&self, id: i64) -> StoreResult<Option<Project>> {
        self.read(move |conn| project_where(conn, "id = ?1", &id))
            .await
    }

    async fn project_by_token(&self, token: &str) -> StoreResult<Option<Project>> {
        let token = token.to_owned();
        self.read(move |conn| project_where(conn, "token = ?1", &token))
            .await
    }

    async fn project_by_api_secret_hash(&self, hash: &str) -> StoreResult<Option<Project>> {
        let hash = hash.to_owned();
        self.read(move |conn| project_where(conn, "api_secret_hash = ?1", &hash))
            .await
    }

    async fn project_by_currents_token_hash(&self, hash: &str) -> StoreResult<Option<Project>> {
        let hash = hash.to_owned();
        self.read(move |conn| project_where(conn, "currents_token_hash = ?1", &hash))
            .await
    }

    async fn write_events(
        &self,
        project_id: i64,
        events: Vec<NewEvent>,
        links: Vec<IdentityLink>,
        now_ms: i64,
    ) -> StoreResult<WriteSummary> {
        self.write(move |conn| {
            let tx = conn.transaction()?;
            {
                let mut link_stmt = tx.prepare_cached(
                    "INSERT INTO identity_links (project_id, distinct_id, canonical_id, linked_at_ms)
                     VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                )?;
                for link in &links {
                    link_stmt.execute(params![project_id, link.distinct_id, link.canonical_id, now_ms])?;
                }
                let mut event_stmt = tx.prepare_cached(
                    "INSERT INTO events (project_id, event, distinct_id, time_ms, insert_id,
                         partner_id, properties, ingested_at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT (project_id, event, distinct_id, time_ms, insert_id)
                     DO UPDATE SET properties = excluded.properties,
                                   partner_id = excluded.partner_id,
                                   ingested_at_ms = excluded.ingested_at_ms",
                )?;
                for event in &events {
                    let properties = serde_json::to_string(&event.properties)?;
                    event_stmt.execute(params![
                        project_id,
                        event.event,
                        event.distinct_id,
                        event.time_ms,
                        event.insert_id,
                        event.partner_id(),
                        properties,
                        now_ms
                    ])?;
                }
            }
            tx.commit()?;
            Ok(WriteSummary { written: events.len() })
        })
        .await
    }

    async fn count_events(&self, project_id: i64) -> StoreResult<i64> {
        self.read(move |conn| {
            Ok(conn.query_row(
                "SELECT count(*) FROM events WHERE project_id = ?1",
                [project_id],
                |row| row.get(0),
            )?)
        })
        .await
    }

    async fn events_of(
        &self,
        project_id: i64,
        distinct_id: &str,
        limit: i64,
    ) -> StoreResult<Vec<NewEvent>> {
        let distinct_id = distinct_id.to_owned();
        self.read(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT event, distinct_id, time_ms, insert_id, properties FROM events
                 WHERE project_id = ?1 AND distinct_id = ?2 ORDER BY time_ms, id LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![project_id, distinct_id, limit], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, String>(4)?,
                ))
            })?;
            let mut events = Vec::new();
            for row in rows {
                let (event, distinct_id, time_ms, insert_id, properties) = row?;
                events.push(NewEvent {
                    event,
                    distinct_id,
                    time_ms,
                    insert_id,
                    properties: serde_json::from_str(&properties)?,
                });
            }
            Ok(events)
        })
        .await
    }

    async fn apply_profile_updates(
        &self,
        project_id: i64,
        updates: Vec<ProfileUpdate>,
        now_ms: i64,
    ) -> StoreResult<WriteSummary> {
        self.write(move |conn| {
            let tx = conn.transaction()?;
            for update in &updates {
                let distinct_id = resolve(&tx, project_id, &update.distinct_id)?;
                let current: Option<String> = tx
                    .query_row(
                        "SELECT properties FROM profiles WHERE project_id = ?1 AND distinct_id = ?2",
                        params![project_id, distinct_id],
                        |row| row.get(0),
                    )
                    .optional()?;
                let existed = current.is_some();
                let mut properties: Map<String, Value> = match current {
                    Some(text) => serde_json::from_str(&text)?,
                    None => Map::new(),
                };
                match crate::ingest::engage::apply(&mut properties, &update.operation) {
                    crate::ingest::engage::Outcome::Deleted => {
                        tx.execute(
                            "DELETE FROM profiles WHERE project_id = ?1 AND distinct_id = ?2",
                            params![project_id, distinct_id],
                        )?;
                        continue;
                    }
                    crate::ingest::engage::Outcome::Updated => {}
                }
                if let Some(ms) = update.last_seen_ms {
                    crate::ingest::engage::touch_last_seen(&mut properties, ms);
                } else if !existed && properties.is_empty() {
                    continue;
                }
                tx.execute(
                    "INSERT INTO profiles (project_id, distinct_id, properties, updated_at_ms)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (project_id, distinct_id)
                     DO UPDATE SET properties = excluded.properties, updated_at_ms = excluded.updated_at_ms",
                    params![project_id, distinct_id, serde_json::to_string(&properties)?, now_ms],
                )?;
            }
            tx.commit()?;
            Ok(WriteSummary { written: updates.len() })
        })
        .await
    }

    async fn profile(
        &self,
        project_id: i64,
        distinct_id: &str,
    ) -> StoreResult<Option<Map<String, Value>>> {
        let distinct_id = distinct_id.to_owned();
        self.read(move |conn| {
            let text: Option<String> = conn
                .query_row(
                    "SELECT properties FROM profiles WHERE project_id = ?1 AND distinct_id = ?2",
                    params![project_id, distinct_id],
                    |row| row.get(0),
                )
                .optional()?;
            Ok(text.map(|t| serde_json::from_str(&t)).transpose()?)
        })
        .await
    }

    async fn quarantine_currents(
        &self,
        project_id: i64,
        items: Vec<(String, String)>,
        now_ms: i64,
    ) -> StoreResult<()> {
        self.write(move |conn| {
            let tx = conn.transaction()?;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO currents_quarantine (project_id, received_at_ms, raw, error)
                     VALUES (?1, ?2, ?3, ?4)",
                )?;
                for (raw, error) in &items {
                    stmt.execute(params![project_id, now_ms, raw, error])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn count_quarantined(&self, project_id: i64) -> StoreResult<i64> {
        self.read(move |conn| {
            Ok(conn.query_row(
                "SELECT count(*) FROM currents_quarantine WHERE project_id = ?1",
                [project_id],
                |row| row.get(0),
            )?)
        })
        .await
    }

    async fn cohort_inputs(&self, project_id: i64) -> StoreResult<CohortInputs> {
        self.read(move |conn| {
            let mut inputs = CohortInputs::default();
            let mut stmt = conn.prepare(
                "SELECT distinct_id, canonical_id FROM identity_links WHERE project_id = ?1",
            )?;
            for row in stmt.query_map([project_id], |row| Ok((row.get(0)?, row.get(1)?)))? {
                let (from, to): (String, String) = row?;
                inputs.links.insert(from, to);
            }
            let mut stmt =
                conn.prepare("SELECT distinct_id, properties FROM profiles WHERE project_id = ?1")?;
            for row in stmt.query_map([project_id], |row| Ok((row.get(0)?, row.get(1)?)))? {
                let (id, text): (String, String) = row?;
                inputs.profiles.insert(id, serde_json::from_str(&text)?);
            }
            let mut stmt = conn.prepare(
                "SELECT DISTINCT distinct_id FROM events WHERE project_id = ?1 AND distinct_id <> ''",
            )?;
            for row in stmt.query_map([project_id], |row| row.get(0))? {
                inputs.event_distinct_ids.insert(row?);
            }
            Ok(inputs)
        })
        .await
    }

    async fn cohort_snapshot(
        &self,
        project_id: i64,
        event_names: Vec<String>,
        with_properties: bool,
        until_ms: i64,
    ) -> StoreResult<CohortSnapshot> {
        self.read(move |conn| {
            let tx = conn.unchecked_transaction()?;
            let inputs = read_cohort_inputs(&tx, project_id)?;
            let mut events = Vec::new();
            let sql = if with_properties {
                "SELECT event, distinct_id, time_ms, properties FROM events
                 WHERE project_id = ?1 AND event = ?2 AND time_ms <= ?3 AND distinct_id <> ''"
            } else {
                "SELECT event, distinct_id, time_ms, '{}' FROM events
                 WHERE project_id = ?1 AND event = ?2 AND time_ms <= ?3 AND distinct_id <> ''"
            };
            let mut stmt = tx.prepare(sql)?;
            for name in &event_names {
                let rows = stmt.query_map(params![project_id, name, until_ms], |row| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get::<_, String>(3)?,
                    ))
                })?;
                for row in rows {
                    let (event, distinct_id, time_ms, properties) = row?;
                    events.push(NewEvent {
                        event,
                        distinct_id,
                        time_ms,
                        insert_id: String::new(),
                        properties: serde_json::from_str(&properties)?,
                    });
                }
            }
            drop(stmt);
            tx.commit()?;
            Ok(CohortSnapshot { inputs, events })
        })
        .await
    }

    async fn project_timezone(&self, project_id: i64) -> StoreResult<String> {
        self.read(move |conn| {
            conn.query_row(
                "SELECT timezone FROM projects WHERE id = ?1",
                [project_id],
                |row| row.get(0),
            )
            .optional()?
            .ok_or_else(|| StoreError::NotFound {
                what: "project",
                id: project_id.to_string(),
            })
        })
        .await
    }

    async fn set_project_timezone(&self, project_id: i64, timezone: &str) -> StoreResult<()> {
        let timezone = timezone.to_owned();
        self.write(move |conn| {
            let changed = conn.execute(
                "UPDATE projects SET timezone = ?2 WHERE id = ?1",
                params![project_id, timezone],
            )?;
            if changed == 0 {
                return Err(StoreError::NotFound {
                    what: "project",
                    id: project_id.to_string(),
                });
            }
            Ok(())
        })
        .await
    }

    async fn update_cohort(
        &self,
        project_id: i64,
        id: i64,
        name: &str,
        definition: &Value,
        now_ms: i64,
    ) -> StoreResult<Cohort> {
        let name = name.to_owned();
        let definition = serde_json::to_string(definition)?;
        self.write(move |conn| {
            let changed = conn.execute(
                "UPDATE cohorts SET name = ?3, definition = ?4, updated_at_ms = ?5
                 WHERE project_id = ?1 AND id = ?2",
                params![project_id, id, name, definition, now_ms],
            )?;
            if changed == 0 {
                return Err(StoreError::NotFound {
                    what: "cohort",
                    id: id.to_string(),
                });
            }
            let sql = format!("SELECT {COHORT_COLUMNS} FROM cohorts WHERE id = ?1");
            parse_cohort(conn.query_row(&sql, [id], cohort_from_row)?)
        })
        .await
    }

    async fn event_counts(
        &self,
        project_id: i64,
        event: &str,
        since_ms: Option<i64>,
        until_ms: i64,
    ) -> StoreResult<HashMap<String, i64>> {
        let event = event.to_owned();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT distinct_id, count(*) FROM events
                 WHERE project_id = ?1 AND event = ?2 AND time_ms >= ?3 AND time_ms <= ?4
                   AND distinct_id <> ''
                 GROUP BY distinct_id",
            )?;
            let rows = stmt.query_map(
                params![project_id, event, since_ms.unwrap_or(i64::MIN), until_ms],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn mtu_distinct_ids(
        &self,
        project_id: i64,
        start_ms: i64,
        end_ms: i64,
        exempt_partner_events: &[&str],
        exempt_events: &[&str],
    ) -> StoreResult<Vec<String>> {
        let partner: Vec<String> = exempt_partner_events
            .iter()
            .map(|s| s.to_string())
            .collect();
        let always: Vec<String> = exempt_events.iter().map(|s| s.to_string()).collect();
        self.read(move |conn| {
            let placeholders = |from: usize, n: usize| {
                (from..from + n)
                    .map(|i| format!("?{i}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let always_list = placeholders(4, always.len());
            let partner_list = placeholders(4 + always.len(), partner.len());
            let sql = format!(
                "SELECT DISTINCT distinct_id FROM events
                 WHERE project_id = ?1 AND time_ms >= ?2 AND time_ms < ?3 AND distinct_id <> ''
                   AND event NOT IN ({always_list})
                   AND NOT (partner_id IS NOT NULL AND lower(event) IN ({partner_list}))"
            );
            let mut values: Vec<rusqlite::types::Value> =
                vec![project_id.into(), start_ms.into(), end_ms.into()];
            values.extend(always.iter().cloned().map(Into::into));
            values.extend(partner.iter().map(|name| name.to_lowercase().into()));
            let mut stmt = conn.prepare(&sql)?;
            let rows = stmt.query_map(params_from_iter(values), |row| row.get(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn create_cohort(
        &self,
        project_id: i64,
        name: &str,
        definition: &Value,
        now_ms: i64,
    ) -> StoreResult<Cohort> {
        let name = name.to_owned();
        let definition = serde_json::to_string(definition)?;
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO cohorts (project_id, name, definition, created_at_ms, updated_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?4)",
                params![project_id, name, definition, now_ms],
            )?;
            let id = conn.last_insert_rowid();
            let sql = format!("SELECT {COHORT_COLUMNS} FROM cohorts WHERE id = ?1");
            parse_cohort(conn.query_row(&sql, [id], cohort_from_row)?)
        })
        .await
    }

    async fn list_cohorts(&self, project_id: i64) -> StoreResult<Vec<Cohort>> {
        self.read(move |conn| {
            let sql =
                format!("SELECT {COHORT_COLUMNS} FROM cohorts WHERE project_id = ?1 ORDER BY id");
            let mut stmt = conn.prepare(&sql)?;
            let rows = stmt.query_map([project_id], cohort_from_row)?;
            rows.map(|row| parse_cohort(row?)).collect()
        })
        .await
    }

    async fn cohort(&self, project_id: i64, id: i64) -> StoreResult<Option<Cohort>> {
        self.read(move |conn| {
            let sql =
                format!("SELECT {COHORT_COLUMNS} FROM cohorts WHERE project_id = ?1 AND id = ?2");
            conn.query_row(&sql, params![project_id, id], cohort_from_row)
                .optional()?
                .map(parse_cohort)
                .transpose()
        })
        .await
    }

    async fn create_connection(
        &self,
        project_id: i64,
        connection: NewConnection,
        now_ms: i64,
    ) -> StoreResult<Connection> {
        self.write(move |conn| {
            let inserted = conn.execute(
                "INSERT INTO connections (project_id, name, instance, base_url,
                     data_import_key_enc, user_id_property, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    project_id,
                    connection.name,
                    connection.instance,
                    connection.base_url,
                    connection.data_import_key_enc,
                    connection.user_id_property,
                    now_ms
                ],
            );
            match inserted {
                Err(e) if is_unique_violation(&e) => {
                    return Err(StoreError::Conflict {
                        what: "connection",
                        value: connection.name.clone(),
                    })
                }
                other => other?,
            };
            let id = conn.last_insert_rowid();
            let sql = format!("SELECT {CONNECTION_COLUMNS} FROM connections WHERE id = ?1");
            Ok(conn.query_row(&sql, [id], connection_from_row)?)
        })
        .await
    }

    async fn list_connections(&self, project_id: i64) -> StoreResult<Vec<Connection>> {
        self.read(move |conn| {
            let sql = format!(
                "SELECT {CONNECTION_COLUMNS} FROM connections WHERE project_id = ?1 ORDER BY id"
            );
            let mut stmt = conn.prepare(&sql)?;
            let rows = stmt.query_map([project_id], connection_from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn connection(&self, id: i64) -> StoreResult<Option<Connection>> {
        self.read(move |conn| {
            let sql = format!("SELECT {CONNECTION_COLUMNS} FROM connections WHERE id = ?1");
            Ok(conn.query_row(&sql, [id], connection_from_row).optional()?)
        })
        .await
    }

    async fn connection_by_name(
        &self,
        project_id: i64,
        name: &str,
    ) -> StoreResult<Option<Connection>> {
        let name = name.to_owned();
        self.read(move |conn| {
            let sql = format!(
                "SELECT {CONNECTION_COLUMNS} FROM connections WHERE project_id = ?1 AND name = ?2"
            );
            Ok(conn
                .query_row(&sql, params![project_id, name], connection_from_row)
                .optional()?)
        })
        .await
    }

    async fn create_sync(
        &self,
        project_id: i64,
        cohort_id: i64,
        connection_id: i64,
        mode: SyncMode,
        interval_secs: Option<i64>,
        now_ms: i64,
    ) -> StoreResult<Sync> {
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO syncs (project_id, cohort_id, connection_id, mode, interval_secs,
                     status, next_run_at_ms, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'active', NULL, ?6)",
                params![
                    project_id,
                    cohort_id,
                    connection_id,
                    mode.as_str(),
                    interval_secs,
                    now_ms
                ],
            )?;
            let id = conn.last_insert_rowid();
            let sql = format!("SELECT {SYNC_COLUMNS} FROM syncs WHERE id = ?1");
            Ok(conn.query_row(&sql, [id], sync_from_row)?)
        })
        .await
    }

    async fn list_syncs(&self, project_id: i64) -> StoreResult<Vec<Sync>> {
        self.read(move |conn| {
            let sql = format!("SELECT {SYNC_COLUMNS} FROM syncs WHERE project_id = ?1 ORDER BY id");
            let mut stmt = conn.prepare(&sql)?;
            let rows = stmt.query_map([project_id], sync_from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn sync(&self, id: i64) -> StoreResult<Option<Sync>> {
        self.read(move |conn| {
            let sql = format!("SELECT {SYNC_COLUMNS} FROM syncs WHERE id = ?1");
            Ok(conn.query_row(&sql, [id], sync_from_row).optional()?)
        })
        .await
    }

    async fn set_sync_state(
        &self,
        id: i64,
        status: &str,
        reason: Option<&str>,
        next_run_at_ms: Option<i64>,
    ) -> StoreResult<()> {
        let (status, reason) = (status.to_owned(), reason.map(str::to_owned));
        self.write(move |conn| {
            conn.execute(
                "UPDATE syncs SET status = ?2, status_reason = ?3, next_run_at_ms = ?4 WHERE id = ?1",
                params![id, status, reason, next_run_at_ms],
            )?;
            Ok(())
        })
        .await
    }

    async fn due_syncs(&self, now_ms: i64) -> StoreResult<Vec<Sync>> {
        self.read(move |conn| {
            let sql = format!(
                "SELECT {SYNC_COLUMNS} FROM syncs
                 WHERE status = 'active' AND mode = 'dynamic'
                   AND next_run_at_ms IS NOT NULL AND next_run_at_ms <= ?1
                 ORDER BY next_run_at_ms, id"
            );
            let mut stmt = conn.prepare(&sql)?;
            let rows = stmt.query_map([now_ms], sync_from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn start_run(&self, sync_id: i64, now_ms: i64) -> StoreResult<SyncRun> {
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO sync_runs (sync_id, started_at_ms, status) VALUES (?1, ?2, 'running')",
                params![sync_id, now_ms],
            )?;
            run_by_id(conn, conn.last_insert_rowid())
        })
        .await
    }

    async fn update_run_counts(&self, run_id: i64, counts: &RunCounts) -> StoreResult<()> {
        let counts = counts.clone();
        self.write(move |conn| {
            conn.execute(
                "UPDATE sync_runs SET members = ?2, added = ?3, removed = ?4, skipped = ?5,
                     requests = ?6 WHERE id = ?1",
                params![
                    run_id,
                    counts.members,
                    counts.added,
                    counts.removed,
                    counts.skipped,
                    counts.requests
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn finish_run(
        &self,
        run_id: i64,
        status: &str,
        counts: &RunCounts,
        error: Option<&str>,
        now_ms: i64,
    ) -> StoreResult<SyncRun> {
        let (status, error, counts) = (status.to_owned(), error.map(str::to_owned), counts.clone());
        self.write(move |conn| {
            conn.execute(
                "UPDATE sync_runs SET status = ?2, members = ?3, added = ?4, removed = ?5,
                     skipped = ?6, requests = ?7, error = ?8, finished_at_ms = ?9 WHERE id = ?1",
                params![
                    run_id,
                    status,
                    counts.members,
                    counts.added,
                    counts.removed,
                    counts.skipped,
                    counts.requests,
                    error,
                    now_ms
                ],
            )?;
            run_by_id(conn, run_id)
        })
        .await
    }

    async fn fail_interrupted_runs(&self, now_ms: i64) -> StoreResult<usize> {
        self.write(move |conn| {
            Ok(conn.execute(
                "UPDATE sync_runs SET status = 'failed', finished_at_ms = ?1,
                     error = 'interrupted: the server stopped during the run; the next run resumes from what Braze acknowledged'
                 WHERE status = 'running'",
                [now_ms],
            )?)
        })
        .await
    }

    async fn list_runs(&self, sync_id: i64) -> StoreResult<Vec<SyncRun>> {
        self.read(move |conn| {
            let sql = format!("SELECT {RUN_COLUMNS} FROM sync_runs WHERE sync_id = ?1 ORDER BY id");
            let mut stmt = conn.prepare(&sql)?;
            let rows = stmt.query_map([sync_id], run_from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn braze_cohort(
        &self,
        connection_id: i64,
        cohort_id: i64,
    ) -> StoreResult<Option<BrazeCohort>> {
        self.read(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT braze_cohort_id, name_sent FROM braze_cohorts
                     WHERE connection_id = ?1 AND cohort_id = ?2",
                    params![connection_id, cohort_id],
                    |row| {
                        Ok(BrazeCohort {
                            braze_cohort_id: row.get(0)?,
                            name_sent: row.get(1)?,
                        })
                    },
                )
                .optional()?)
        })
        .await
    }

    async fn record_braze_cohort(
        &self,
        connection_id: i64,
        cohort_id: i64,
        cohort: &BrazeCohort,
        now_ms: i64,
    ) -> StoreResult<()> {
        let cohort = cohort.clone();
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO braze_cohorts (connection_id, cohort_id, braze_cohort_id, name_sent, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (connection_id, cohort_id) DO UPDATE SET name_sent = excluded.name_sent",
                params![connection_id, cohort_id, cohort.braze_cohort_id, cohort.name_sent, now_ms],
            )?;
            Ok(())
        })
        .await
    }

    async fn braze_members(
        &self,
        connection_id: i64,
        cohort_id: i64,
    ) -> StoreResult<HashSet<String>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT external_id FROM braze_members WHERE connection_id = ?1 AND cohort_id = ?2",
            )?;
            let rows = stmt.query_map(params![connection_id, cohort_id], |row| row.get(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn record_braze_changes(
        &self,
        connection_id: i64,
        cohort_id: i64,
        added: &[String],
        removed: &[String],
    ) -> StoreResult<()> {
        let (added, removed) = (added.to_vec(), removed.to_vec());
        self.write(move |conn| {
            let tx = conn.transaction()?;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO braze_members (connection_id, cohort_id, external_id)
                     VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                )?;
                for id in &added {
                    insert.execute(params![connection_id, cohort_id, id])?;
                }
                let mut delete = tx.prepare_cached(
                    "DELETE FROM braze_members
                     WHERE connection_id = ?1 AND cohort_id = ?2 AND external_id = ?3",
                )?;
                for id in &removed {
                    delete.execute(params![connection_id, cohort_id, id])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }
}
