//! The shared store: one PostgreSQL database that several server processes use at once.
//!
//! Every call takes a connection from a pool and, where it writes more than one row, runs in one
//! transaction. Writes that read before they write (profiles, merges, the first project) take a
//! transaction-level advisory lock on what they change, so that two nodes never overwrite each
//! other's update. Cohort inputs are read in one repeatable-read transaction, so that events,
//! links and profiles come from the same moment.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod};
use serde_json::{Map, Value};
use tokio_postgres::error::SqlState;
use tokio_postgres::{IsolationLevel, NoTls, Row};

use super::*;

mod accounts;
mod cohort_rows;
mod ingest;

const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_init",
        include_str!("migrations/postgres/0001_init.sql"),
    ),
    (
        "0002_sync_leases",
        include_str!("migrations/postgres/0002_sync_leases.sql"),
    ),
    (
        "0003_connection_turns",
        include_str!("migrations/postgres/0003_connection_turns.sql"),
    ),
    (
        "0004_accounts",
        include_str!("migrations/postgres/0004_accounts.sql"),
    ),
    (
        "0005_identity_failure_lookup",
        include_str!("migrations/postgres/0005_identity_failure_lookup.sql"),
    ),
];

/// Advisory lock key that serialises migrations and the first project across nodes.
const BOOTSTRAP_LOCK: &str = "cohortbridge:bootstrap";

/// The error text of a run whose node stopped or lost its lease.
const INTERRUPTED: &str = "interrupted: the node running it stopped or lost its lease; the next run resumes from what Braze acknowledged";

#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
}

impl PostgresStore {
    /// Creates a pool of at most `max_connections` connections to `url` and checks that one
    /// connection can be made. Applies no migrations; see [`PostgresStore::migrate`].
    pub async fn connect(url: &str, max_connections: usize) -> StoreResult<Self> {
        let config = tokio_postgres::Config::from_str(url)?;
        // NOTE: connections are made without TLS, so a URL with `sslmode=require` fails here;
        // the database must be reached over a trusted network.
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(max_connections.max(1))
            .build()
            .map_err(|e| StoreError::Task(format!("cannot build the connection pool: {e}")))?;
        drop(pool.get().await?);
        Ok(Self { pool })
    }

    /// Applies every migration not yet recorded in `schema_migrations`, in one transaction under
    /// an advisory lock, so that nodes starting together apply each migration once. Returns the
    /// names applied now.
    pub async fn migrate(&self) -> StoreResult<Vec<String>> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        advisory_lock(&tx, BOOTSTRAP_LOCK).await?;
        // Checked first, because CREATE TABLE IF NOT EXISTS logs a notice at every start.
        let exists: bool = tx
            .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
            .await?
            .try_get(0)?;
        if !exists {
            tx.batch_execute(
                "CREATE TABLE schema_migrations (name TEXT PRIMARY KEY, applied_at_ms BIGINT NOT NULL)",
            )
            .await?;
        }
        let applied: HashSet<String> = tx
            .query("SELECT name FROM schema_migrations", &[])
            .await?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?;
        let mut now_applied = Vec::new();
        for (name, sql) in MIGRATIONS {
            if applied.contains(*name) {
                continue;
            }
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO schema_migrations (name, applied_at_ms) VALUES ($1, $2)",
                &[name, &chrono::Utc::now().timestamp_millis()],
            )
            .await?;
            now_applied.push((*name).to_owned());
        }
        tx.commit().await?;
        for name in &now_applied {
            tracing::info!(migration = name.as_str(), "applied migration");
        }
        Ok(now_applied)
    }

    async fn client(&self) -> StoreResult<deadpool_postgres::Object> {
        Ok(self.pool.get().await?)
    }

    /// Reads the external ids that `table` (`braze_members` or `braze_pending`) records for one
    /// connection and cohort. `COLLATE "C"` orders them by bytes, as `IdSet` keeps them, so the
    /// set is built without sorting.
    async fn external_ids(
        &self,
        table: &'static str,
        connection_id: i64,
        cohort_id: i64,
    ) -> StoreResult<IdSet> {
        let sql = format!(
            "SELECT external_id FROM {table} WHERE connection_id = $1 AND cohort_id = $2
             ORDER BY external_id COLLATE \"C\""
        );
        // A portal reads the rows in blocks, so that a million ids are never held as rows.
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let portal = tx.bind(&sql, &[&connection_id, &cohort_id]).await?;
        let mut ids = IdSetBuilder::default();
        loop {
            let rows = tx.query_portal(&portal, ID_ROWS_PER_READ).await?;
            for row in &rows {
                ids.push(row.try_get::<_, &str>(0)?);
            }
            if rows.len() < ID_ROWS_PER_READ as usize {
                break;
            }
        }
        tx.commit().await?;
        Ok(ids.finish())
    }
}

/// Rows of an id set read per round trip.
const ID_ROWS_PER_READ: i32 = 50_000;

/// Takes a transaction-level advisory lock on `key`, released at commit or rollback.
async fn write_run_counts(
    client: &impl GenericClient,
    run_id: i64,
    counts: &RunCounts,
) -> StoreResult<()> {
    client
        .execute(
            "UPDATE sync_runs SET members = $2, added = $3, removed = $4, skipped = $5,
                 requests = $6, unchanged = $7, retries = $8 WHERE id = $1",
            &[
                &run_id,
                &counts.members,
                &counts.added,
                &counts.removed,
                &counts.skipped,
                &counts.requests,
                &counts.unchanged,
                &counts.retries,
            ],
        )
        .await?;
    Ok(())
}

async fn advisory_lock(client: &impl GenericClient, key: &str) -> StoreResult<()> {
    client
        .execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&key])
        .await?;
    Ok(())
}

fn is_unique_violation(err: &tokio_postgres::Error) -> bool {
    err.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

const PROJECT_COLUMNS: &str = "id, name, token, api_secret_enc, currents_token_enc, created_at_ms";

fn project_from_row(row: &Row) -> StoreResult<Project> {
    Ok(Project {
        id: row.try_get(0)?,
        name: row.try_get(1)?,
        token: row.try_get(2)?,
        api_secret_enc: row.try_get(3)?,
        currents_token_enc: row.try_get(4)?,
        created_at_ms: row.try_get(5)?,
    })
}

async fn project_where(
    client: &impl GenericClient,
    column: &str,
    value: &(dyn tokio_postgres::types::ToSql + std::marker::Sync),
) -> StoreResult<Option<Project>> {
    let sql = format!("SELECT {PROJECT_COLUMNS} FROM projects WHERE {column} = $1");
    client
        .query_opt(&sql, &[value])
        .await?
        .map(|row| project_from_row(&row))
        .transpose()
}

fn credential_from_row(row: &Row) -> StoreResult<ImportCredential> {
    Ok(ImportCredential {
        id: row.try_get(0)?,
        project_id: row.try_get(1)?,
        name: row.try_get(2)?,
        partner_id: row.try_get(3)?,
        created_at_ms: row.try_get(4)?,
    })
}

fn event_from_row(row: &Row) -> StoreResult<NewEvent> {
    let properties: String = row.try_get(4)?;
    Ok(NewEvent {
        event: row.try_get(0)?,
        distinct_id: row.try_get(1)?,
        time_ms: row.try_get(2)?,
        insert_id: row.try_get(3)?,
        properties: serde_json::from_str(&properties)?,
    })
}

const COHORT_COLUMNS: &str = "id, project_id, name, definition, created_at_ms, updated_at_ms";

fn cohort_from_row(row: &Row) -> StoreResult<Cohort> {
    let definition: String = row.try_get(3)?;
    Ok(Cohort {
        id: row.try_get(0)?,
        project_id: row.try_get(1)?,
        name: row.try_get(2)?,
        definition: serde_json::from_str(&definition)?,
        created_at_ms: row.try_get(4)?,
        updated_at_ms: row.try_get(5)?,
    })
}

async fn cohort_by_id(client: &impl GenericClient, id: i64) -> StoreResult<Cohort> {
    let sql = format!("SELECT {COHORT_COLUMNS} FROM cohorts WHERE id = $1");
    cohort_from_row(&client.query_one(&sql, &[&id]).await?)
}

const CONNECTION_COLUMNS: &str =
    "id, project_id, name, instance, base_url, data_import_key_enc, user_id_property, created_at_ms, disconnected_at_ms, delivery, attribute_name";

fn connection_from_row(row: &Row) -> StoreResult<Connection> {
    Ok(Connection {
        id: row.try_get(0)?,
        project_id: row.try_get(1)?,
        name: row.try_get(2)?,
        instance: row.try_get(3)?,
        base_url: row.try_get(4)?,
        data_import_key_enc: row.try_get(5)?,
        user_id_property: row.try_get(6)?,
        created_at_ms: row.try_get(7)?,
        disconnected_at_ms: row.try_get(8)?,
        delivery: row.try_get(9)?,
        attribute_name: row.try_get(10)?,
    })
}

async fn connection_by_id(client: &impl GenericClient, id: i64) -> StoreResult<Connection> {
    let sql = format!("SELECT {CONNECTION_COLUMNS} FROM connections WHERE id = $1");
    client
        .query_opt(&sql, &[&id])
        .await?
        .map(|row| connection_from_row(&row))
        .transpose()?
        .ok_or(StoreError::NotFound {
            what: "connection",
            id: id.to_string(),
        })
}

const SYNC_COLUMNS: &str = "id, project_id, cohort_id, connection_id, mode, interval_secs, status, status_reason, next_run_at_ms, created_at_ms, paused_by";

fn sync_from_row(row: &Row) -> StoreResult<Sync> {
    let mode: String = row.try_get(4)?;
    Ok(Sync {
        id: row.try_get(0)?,
        project_id: row.try_get(1)?,
        cohort_id: row.try_get(2)?,
        connection_id: row.try_get(3)?,
        mode: if mode == "dynamic" {
            SyncMode::Dynamic
        } else {
            SyncMode::Once
        },
        interval_secs: row.try_get(5)?,
        status: row.try_get(6)?,
        status_reason: row.try_get(7)?,
        next_run_at_ms: row.try_get(8)?,
        created_at_ms: row.try_get(9)?,
        paused_by: row.try_get(10)?,
    })
}

const RUN_COLUMNS: &str = "id, sync_id, started_at_ms, finished_at_ms, status, members, added, removed, skipped, requests, error, unchanged, retries, trigger";

fn run_from_row(row: &Row) -> StoreResult<SyncRun> {
    Ok(SyncRun {
        id: row.try_get(0)?,
        sync_id: row.try_get(1)?,
        started_at_ms: row.try_get(2)?,
        finished_at_ms: row.try_get(3)?,
        status: row.try_get(4)?,
        counts: RunCounts {
            members: row.try_get(5)?,
            added: row.try_get(6)?,
            removed: row.try_get(7)?,
            skipped: row.try_get(8)?,
            requests: row.try_get(9)?,
            unchanged: row.try_get(11)?,
            retries: row.try_get(12)?,
        },
        error: row.try_get(10)?,
        trigger: row.try_get(13)?,
    })
}

async fn run_by_id(client: &impl GenericClient, id: i64) -> StoreResult<Option<SyncRun>> {
    let sql = format!("SELECT {RUN_COLUMNS} FROM sync_runs WHERE id = $1");
    client
        .query_opt(&sql, &[&id])
        .await?
        .map(|row| run_from_row(&row))
        .transpose()
}

fn not_found_run(id: i64) -> StoreError {
    StoreError::NotFound {
        what: "sync run",
        id: id.to_string(),
    }
}

/// Reads a set of strings from the first column of `rows`.
fn string_set(rows: &[Row]) -> StoreResult<HashSet<String>> {
    Ok(rows
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?)
}

/// Reads the identity links, the profiles and the distinct ids with events of a project.
async fn read_cohort_inputs(
    client: &impl GenericClient,
    project_id: i64,
) -> StoreResult<CohortInputs> {
    let mut inputs = CohortInputs::default();
    for row in client
        .query(
            "SELECT distinct_id, canonical_id FROM identity_links WHERE project_id = $1",
            &[&project_id],
        )
        .await?
    {
        inputs.links.insert(row.try_get(0)?, row.try_get(1)?);
    }
    for row in client
        .query(
            "SELECT distinct_id, properties FROM profiles WHERE project_id = $1",
            &[&project_id],
        )
        .await?
    {
        let text: String = row.try_get(1)?;
        inputs
            .profiles
            .insert(row.try_get(0)?, serde_json::from_str(&text)?);
    }
    let rows = client
        .query(
            "SELECT DISTINCT distinct_id FROM events WHERE project_id = $1 AND distinct_id <> ''",
            &[&project_id],
        )
        .await?;
    inputs.event_distinct_ids = string_set(&rows)?;
    Ok(inputs)
}

#[async_trait]
impl Store for PostgresStore {
    async fn get_setting(&self, key: &str) -> StoreResult<Option<String>> {
        let client = self.client().await?;
        let row = client
            .query_opt("SELECT value FROM settings WHERE key = $1", &[&key])
            .await?;
        Ok(row.map(|row| row.try_get(0)).transpose()?)
    }

    async fn put_setting(&self, key: &str, value: &str) -> StoreResult<()> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO settings (key, value) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[&key, &value],
            )
            .await?;
        Ok(())
    }

    async fn put_setting_if_absent(&self, key: &str, value: &str) -> StoreResult<String> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                &[&key, &value],
            )
            .await?;
        let row = client
            .query_one("SELECT value FROM settings WHERE key = $1", &[&key])
            .await?;
        Ok(row.try_get(0)?)
    }

    async fn create_project(&self, project: NewProject) -> StoreResult<Project> {
        let client = self.client().await?;
        insert_project(&client, project).await
    }

    async fn create_first_project(&self, project: NewProject) -> StoreResult<Option<Project>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        advisory_lock(&tx, BOOTSTRAP_LOCK).await?;
        let exists: bool = tx
            .query_one("SELECT EXISTS (SELECT 1 FROM projects)", &[])
            .await?
            .try_get(0)?;
        if exists {
            return Ok(None);
        }
        let created = insert_project(&tx, project).await?;
        tx.commit().await?;
        Ok(Some(created))
    }

    async fn list_projects(&self) -> StoreResult<Vec<Project>> {
        let client = self.client().await?;
        let sql = format!("SELECT {PROJECT_COLUMNS} FROM projects ORDER BY id");
        client
            .query(&sql, &[])
            .await?
            .iter()
            .map(project_from_row)
            .collect()
    }

    async fn project(&self, id: i64) -> StoreResult<Option<Project>> {
        project_where(&self.client().await?, "id", &id).await
    }

    async fn project_by_token(&self, token: &str) -> StoreResult<Option<Project>> {
        project_where(&self.client().await?, "token", &token).await
    }

    async fn project_by_api_secret_hash(&self, hash: &str) -> StoreResult<Option<Project>> {
        project_where(&self.client().await?, "api_secret_hash", &hash).await
    }

    async fn project_by_currents_token_hash(&self, hash: &str) -> StoreResult<Option<Project>> {
        project_where(&self.client().await?, "currents_token_hash", &hash).await
    }

    async fn create_import_credential(
        &self,
        project_id: i64,
        credential: NewImportCredential,
        now_ms: i64,
    ) -> StoreResult<ImportCredential> {
        let client = self.client().await?;
        let inserted = client
            .query_one(
                "INSERT INTO import_credentials (project_id, name, secret_hash, partner_id, created_at_ms)
                 VALUES ($1, $2, $3, $4, $5) RETURNING id",
                &[
                    &project_id,
                    &credential.name,
                    &credential.secret_hash,
                    &credential.partner_id,
                    &now_ms,
                ],
            )
            .await;
        let row = match inserted {
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict {
                    what: "credential",
                    value: credential.name,
                })
            }
            other => other?,
        };
        Ok(ImportCredential {
            id: row.try_get(0)?,
            project_id,
            name: credential.name,
            partner_id: credential.partner_id,
            created_at_ms: now_ms,
        })
    }

    async fn list_import_credentials(&self, project_id: i64) -> StoreResult<Vec<ImportCredential>> {
        let client = self.client().await?;
        client
            .query(
                "SELECT id, project_id, name, partner_id, created_at_ms FROM import_credentials
                 WHERE project_id = $1 ORDER BY id",
                &[&project_id],
            )
            .await?
            .iter()
            .map(credential_from_row)
            .collect()
    }

    async fn import_credential_by_hash(&self, hash: &str) -> StoreResult<Option<ImportCredential>> {
        let client = self.client().await?;
        client
            .query_opt(
                "SELECT id, project_id, name, partner_id, created_at_ms FROM import_credentials
                 WHERE secret_hash = $1",
                &[&hash],
            )
            .await?
            .map(|row| credential_from_row(&row))
            .transpose()
    }

    async fn write_encoded_events(
        &self,
        project_id: i64,
        events: EncodedEvents,
        links: Vec<IdentityLink>,
        now_ms: i64,
    ) -> StoreResult<WriteSummary> {
        let rows = ingest::EventRows::new(&events);
        let mut client = self.client().await?;
        // Two nodes that store overlapping duplicates at once can deadlock on the unique key;
        // PostgreSQL aborts one transaction, which is then retried.
        let mut attempt = 1;
        loop {
            match ingest::write_batch(&mut client, project_id, &rows, &links, now_ms).await {
                Err(StoreError::Postgres(e))
                    if e.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED) && attempt < 3 =>
                {
                    tracing::warn!(project_id, attempt, "event write deadlocked; retrying");
                    attempt += 1;
                }
                other => break other?,
            }
        }
        Ok(WriteSummary {
            written: events.len(),
        })
    }

    async fn write_events_with_merges(
        &self,
        project_id: i64,
        events: Vec<NewEvent>,
        merges: Vec<MergeRequest>,
        failures: Vec<IdentityFailure>,
        now_ms: i64,
    ) -> StoreResult<Vec<IdentityFailure>> {
        let rows = ingest::EventRows::new(&EncodedEvents::encode(&events)?);
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Merges read clusters before they change them, so one project merges on one node at
        // a time.
        advisory_lock(&tx, &format!("cohortbridge:merge:{project_id}")).await?;
        let mut recorded = failures;
        for merge in &merges {
            if let Some(reason) = ingest::apply_merge(&tx, project_id, merge, now_ms).await? {
                recorded.push(IdentityFailure {
                    event: merge.event.clone(),
                    insert_id: merge.insert_id.clone(),
                    distinct_id: merge.distinct_id.clone(),
                    reason,
                });
            }
        }
        let statement = tx
            .prepare_cached(
                "INSERT INTO identity_failures
                     (project_id, event, insert_id, distinct_id, reason, failed_at_ms)
                 SELECT $1, $2, $3, $4, $5, $6
                 WHERE NOT EXISTS (
                     SELECT 1 FROM identity_failures
                     WHERE project_id = $1 AND insert_id = $3 AND event = $2
                       AND distinct_id = $4 AND reason = $5)",
            )
            .await?;
        for failure in &recorded {
            tx.execute(
                &statement,
                &[
                    &project_id,
                    &failure.event,
                    &failure.insert_id,
                    &failure.distinct_id,
                    &failure.reason,
                    &now_ms,
                ],
            )
            .await?;
        }
        ingest::insert_events(&tx, project_id, &rows, now_ms).await?;
        tx.commit().await?;
        Ok(recorded)
    }

    async fn identity_failures(
        &self,
        project_id: i64,
        limit: i64,
    ) -> StoreResult<Vec<StoredIdentityFailure>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT event, insert_id, distinct_id, reason, failed_at_ms FROM identity_failures
                 WHERE project_id = $1 ORDER BY id DESC LIMIT $2",
                &[&project_id, &limit],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(StoredIdentityFailure {
                    failure: IdentityFailure {
                        event: row.try_get(0)?,
                        insert_id: row.try_get(1)?,
                        distinct_id: row.try_get(2)?,
                        reason: row.try_get(3)?,
                    },
                    failed_at_ms: row.try_get(4)?,
                })
            })
            .collect()
    }

    async fn export_events(
        &self,
        project_id: i64,
        from_ms: i64,
        to_ms: i64,
        names: Option<Vec<String>>,
        limit: Option<i64>,
    ) -> StoreResult<Vec<NewEvent>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT e.event, coalesce(l.canonical_id, e.distinct_id), e.time_ms, e.insert_id,
                        e.properties
                 FROM events e
                 LEFT JOIN identity_links l
                   ON l.project_id = e.project_id AND l.distinct_id = e.distinct_id
                 WHERE e.project_id = $1 AND e.time_ms >= $2 AND e.time_ms < $3
                   AND ($4::text[] IS NULL OR e.event = ANY($4))
                 ORDER BY e.time_ms, e.id
                 LIMIT $5",
                &[&project_id, &from_ms, &to_ms, &names, &limit],
            )
            .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn count_events(&self, project_id: i64) -> StoreResult<i64> {
        let client = self.client().await?;
        Ok(client
            .query_one(
                "SELECT count(*) FROM events WHERE project_id = $1",
                &[&project_id],
            )
            .await?
            .try_get(0)?)
    }

    async fn events_of(
        &self,
        project_id: i64,
        distinct_id: &str,
        limit: i64,
    ) -> StoreResult<Vec<NewEvent>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT event, distinct_id, time_ms, insert_id, properties FROM events
                 WHERE project_id = $1 AND distinct_id = $2 ORDER BY time_ms, id LIMIT $3",
                &[&project_id, &distinct_id, &limit],
            )
            .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn apply_profile_updates(
        &self,
        project_id: i64,
        updates: Vec<ProfileUpdate>,
        now_ms: i64,
    ) -> StoreResult<WriteSummary> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        ingest::apply_profile_updates(&tx, project_id, &updates, now_ms).await?;
        tx.commit().await?;
        Ok(WriteSummary {
            written: updates.len(),
        })
    }

    async fn profile(
        &self,
        project_id: i64,
        distinct_id: &str,
    ) -> StoreResult<Option<Map<String, Value>>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT properties FROM profiles WHERE project_id = $1 AND distinct_id = $2",
                &[&project_id, &distinct_id],
            )
            .await?;
        match row {
            Some(row) => Ok(Some(serde_json::from_str(row.try_get(0)?)?)),
            None => Ok(None),
        }
    }

    async fn apply_group_updates(
        &self,
        project_id: i64,
        updates: Vec<GroupUpdate>,
        now_ms: i64,
    ) -> StoreResult<WriteSummary> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        advisory_lock(&tx, &format!("cohortbridge:groups:{project_id}")).await?;
        for update in &updates {
            let current = tx
                .query_opt(
                    "SELECT properties FROM group_profiles
                     WHERE project_id = $1 AND group_key = $2 AND group_id = $3",
                    &[&project_id, &update.group_key, &update.group_id],
                )
                .await?;
            let mut properties: Map<String, Value> = match current {
                Some(row) => serde_json::from_str(row.try_get(0)?)?,
                None => Map::new(),
            };
            if crate::ingest::engage::apply(&mut properties, &update.operation)
                == crate::ingest::engage::Outcome::Deleted
            {
                tx.execute(
                    "DELETE FROM group_profiles
                     WHERE project_id = $1 AND group_key = $2 AND group_id = $3",
                    &[&project_id, &update.group_key, &update.group_id],
                )
                .await?;
                continue;
            }
            tx.execute(
                "INSERT INTO group_profiles (project_id, group_key, group_id, properties, updated_at_ms)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (project_id, group_key, group_id)
                 DO UPDATE SET properties = excluded.properties, updated_at_ms = excluded.updated_at_ms",
                &[
                    &project_id,
                    &update.group_key,
                    &update.group_id,
                    &serde_json::to_string(&properties)?,
                    &now_ms,
                ],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(WriteSummary {
            written: updates.len(),
        })
    }

    async fn group_profile(
        &self,
        project_id: i64,
        group_key: &str,
        group_id: &str,
    ) -> StoreResult<Option<Map<String, Value>>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT properties FROM group_profiles
                 WHERE project_id = $1 AND group_key = $2 AND group_id = $3",
                &[&project_id, &group_key, &group_id],
            )
            .await?;
        match row {
            Some(row) => Ok(Some(serde_json::from_str(row.try_get(0)?)?)),
            None => Ok(None),
        }
    }

    async fn quarantine_currents(
        &self,
        project_id: i64,
        items: Vec<(String, String)>,
        now_ms: i64,
    ) -> StoreResult<()> {
        let (raw, errors): (Vec<String>, Vec<String>) = items.into_iter().unzip();
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO currents_quarantine (project_id, received_at_ms, raw, error)
                 SELECT $1, $2, raw, error FROM unnest($3::text[], $4::text[]) AS q(raw, error)",
                &[&project_id, &now_ms, &raw, &errors],
            )
            .await?;
        Ok(())
    }

    async fn count_quarantined(&self, project_id: i64) -> StoreResult<i64> {
        let client = self.client().await?;
        Ok(client
            .query_one(
                "SELECT count(*) FROM currents_quarantine WHERE project_id = $1",
                &[&project_id],
            )
            .await?
            .try_get(0)?)
    }

    async fn cohort_inputs(&self, project_id: i64) -> StoreResult<CohortInputs> {
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let inputs = read_cohort_inputs(&tx, project_id).await?;
        tx.commit().await?;
        Ok(inputs)
    }

    async fn cohort_snapshot(
        &self,
        project_id: i64,
        event_names: Vec<String>,
        with_properties: bool,
        until_ms: i64,
    ) -> StoreResult<CohortSnapshot> {
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let inputs = read_cohort_inputs(&tx, project_id).await?;
        let sql = if with_properties {
            "SELECT event, distinct_id, time_ms, properties FROM events
             WHERE project_id = $1 AND event = $2 AND time_ms <= $3 AND distinct_id <> ''
             ORDER BY time_ms, id"
        } else {
            "SELECT event, distinct_id, time_ms, '{}'::text FROM events
             WHERE project_id = $1 AND event = $2 AND time_ms <= $3 AND distinct_id <> ''
             ORDER BY time_ms, id"
        };
        let statement = tx.prepare_cached(sql).await?;
        let mut events = Vec::new();
        for name in &event_names {
            for row in tx
                .query(&statement, &[&project_id, name, &until_ms])
                .await?
            {
                let properties: &str = row.try_get(3)?;
                events.push(NewEvent {
                    event: row.try_get(0)?,
                    distinct_id: row.try_get(1)?,
                    time_ms: row.try_get(2)?,
                    insert_id: String::new(),
                    properties: serde_json::from_str(properties)?,
                });
            }
        }
        tx.commit().await?;
        Ok(CohortSnapshot { inputs, events })
    }

    async fn read_cohort_rows(
        &self,
        project_id: i64,
        builder: IndexBuilder,
        until_ms: i64,
    ) -> StoreResult<IndexBuilder> {
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let builder = cohort_rows::read_cohort_rows(&tx, project_id, builder, until_ms).await?;
        tx.commit().await?;
        Ok(builder)
    }

    async fn project_timezone(&self, project_id: i64) -> StoreResult<String> {
        let client = self.client().await?;
        client
            .query_opt(
                "SELECT timezone FROM projects WHERE id = $1",
                &[&project_id],
            )
            .await?
            .map(|row| row.try_get(0))
            .transpose()?
            .ok_or_else(|| StoreError::NotFound {
                what: "project",
                id: project_id.to_string(),
            })
    }

    async fn replace_project_secret(
        &self,
        project_id: i64,
        secret: ProjectSecret,
        encrypted: String,
        hash: String,
    ) -> StoreResult<()> {
        let (enc_column, hash_column) = secret.columns();
        let client = self.client().await?;
        let changed = client
            .execute(
                &format!("UPDATE projects SET {enc_column} = $2, {hash_column} = $3 WHERE id = $1"),
                &[&project_id, &encrypted, &hash],
            )
            .await?;
        if changed == 0 {
            return Err(StoreError::NotFound {
                what: "project",
                id: project_id.to_string(),
            });
        }
        Ok(())
    }

    async fn set_project_timezone(&self, project_id: i64, timezone: &str) -> StoreResult<()> {
        let client = self.client().await?;
        let changed = client
            .execute(
                "UPDATE projects SET timezone = $2 WHERE id = $1",
                &[&project_id, &timezone],
            )
            .await?;
        if changed == 0 {
            return Err(StoreError::NotFound {
                what: "project",
                id: project_id.to_string(),
            });
        }
        Ok(())
    }

    async fn update_cohort(
        &self,
        project_id: i64,
        id: i64,
        name: &str,
        definition: &Value,
        now_ms: i64,
    ) -> StoreResult<Cohort> {
        let definition = serde_json::to_string(definition)?;
        let client = self.client().await?;
        let changed = client
            .execute(
                "UPDATE cohorts SET name = $3, definition = $4, updated_at_ms = $5
                 WHERE project_id = $1 AND id = $2",
                &[&project_id, &id, &name, &definition, &now_ms],
            )
            .await?;
        if changed == 0 {
            return Err(StoreError::NotFound {
                what: "cohort",
                id: id.to_string(),
            });
        }
        cohort_by_id(&client, id).await
    }

    async fn event_counts(
        &self,
        project_id: i64,
        event: &str,
        since_ms: Option<i64>,
        until_ms: i64,
    ) -> StoreResult<HashMap<String, i64>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT distinct_id, count(*) FROM events
                 WHERE project_id = $1 AND event = $2 AND time_ms >= $3 AND time_ms <= $4
                   AND distinct_id <> ''
                 GROUP BY distinct_id",
                &[
                    &project_id,
                    &event,
                    &since_ms.unwrap_or(i64::MIN),
                    &until_ms,
                ],
            )
            .await?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect()
    }

    async fn identity_links(&self, project_id: i64) -> StoreResult<HashMap<String, String>> {
        let client = self.client().await?;
        client
            .query(
                "SELECT distinct_id, canonical_id FROM identity_links WHERE project_id = $1",
                &[&project_id],
            )
            .await?
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect()
    }

    async fn mtu_month(
        &self,
        project_id: i64,
        month: i64,
        distinct_ids: Option<Vec<String>>,
    ) -> StoreResult<MtuMonth> {
        // NOTE: PostgreSQL keeps no MTU rollup yet, so the report groups the month's events on
        // each call, which takes seconds at tens of millions of events.
        let zone = self
            .project_timezone(project_id)
            .await?
            .parse()
            .unwrap_or(chrono_tz::UTC);
        let name = format!("{:04}-{:02}", month / 100, month % 100);
        let (start_ms, end_ms) =
            crate::mtu::month_bounds(&name, zone).map_err(|e| StoreError::Task(e.to_string()))?;
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        // `$import` counts as set unless it is missing, null, false or 0, as SQLite's
        // json_extract reads it.
        let rows = tx
            .query(
                "SELECT distinct_id, event, partner_id,
                        coalesce((properties::jsonb -> '$import')
                            NOT IN ('null'::jsonb, 'false'::jsonb, '0'::jsonb), false) AS imported,
                        count(*)
                 FROM events
                 WHERE project_id = $1 AND time_ms >= $2 AND time_ms < $3
                   AND ($4::text[] IS NULL OR distinct_id = ANY($4))
                 GROUP BY distinct_id, event, partner_id, imported",
                &[&project_id, &start_ms, &end_ms, &distinct_ids],
            )
            .await?;
        let groups = rows
            .iter()
            .map(|row| {
                Ok(MtuEventGroup {
                    distinct_id: row.try_get(0)?,
                    event: row.try_get(1)?,
                    partner_id: row.try_get(2)?,
                    imported: row.try_get(3)?,
                    count: row.try_get(4)?,
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        let links: HashMap<String, String> = tx
            .query(
                "SELECT distinct_id, canonical_id FROM identity_links WHERE project_id = $1",
                &[&project_id],
            )
            .await?
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect::<StoreResult<_>>()?;
        tx.commit().await?;
        Ok(MtuMonth::from_groups(groups, &links))
    }

    async fn create_cohort(
        &self,
        project_id: i64,
        name: &str,
        definition: &Value,
        now_ms: i64,
    ) -> StoreResult<Cohort> {
        let definition = serde_json::to_string(definition)?;
        let client = self.client().await?;
        let sql = format!(
            "INSERT INTO cohorts (project_id, name, definition, created_at_ms, updated_at_ms)
             VALUES ($1, $2, $3, $4, $4) RETURNING {COHORT_COLUMNS}"
        );
        cohort_from_row(
            &client
                .query_one(&sql, &[&project_id, &name, &definition, &now_ms])
                .await?,
        )
    }

    async fn list_cohorts(&self, project_id: i64) -> StoreResult<Vec<Cohort>> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {COHORT_COLUMNS} FROM cohorts
             WHERE project_id = $1 AND deleted_at_ms IS NULL ORDER BY id"
        );
        client
            .query(&sql, &[&project_id])
            .await?
            .iter()
            .map(cohort_from_row)
            .collect()
    }

    async fn cohort(&self, project_id: i64, id: i64) -> StoreResult<Option<Cohort>> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {COHORT_COLUMNS} FROM cohorts
             WHERE project_id = $1 AND id = $2 AND deleted_at_ms IS NULL"
        );
        client
            .query_opt(&sql, &[&project_id, &id])
            .await?
            .map(|row| cohort_from_row(&row))
            .transpose()
    }

    async fn create_connection(
        &self,
        project_id: i64,
        connection: NewConnection,
        now_ms: i64,
    ) -> StoreResult<Connection> {
        let client = self.client().await?;
        let sql = format!(
            "INSERT INTO connections (project_id, name, instance, base_url,
                 data_import_key_enc, user_id_property, created_at_ms, delivery, attribute_name)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {CONNECTION_COLUMNS}"
        );
        let inserted = client
            .query_one(
                &sql,
                &[
                    &project_id,
                    &connection.name,
                    &connection.instance,
                    &connection.base_url,
                    &connection.data_import_key_enc,
                    &connection.user_id_property,
                    &now_ms,
                    &connection.delivery,
                    &connection.attribute_name,
                ],
            )
            .await;
        match inserted {
            Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict {
                what: "connection",
                value: connection.name,
            }),
            other => connection_from_row(&other?),
        }
    }

    async fn list_connections(&self, project_id: i64) -> StoreResult<Vec<Connection>> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {CONNECTION_COLUMNS} FROM connections WHERE project_id = $1 ORDER BY id"
        );
        client
            .query(&sql, &[&project_id])
            .await?
            .iter()
            .map(connection_from_row)
            .collect()
    }

    async fn connection(&self, id: i64) -> StoreResult<Option<Connection>> {
        match connection_by_id(&self.client().await?, id).await {
            Ok(connection) => Ok(Some(connection)),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn connection_by_name(
        &self,
        project_id: i64,
        name: &str,
    ) -> StoreResult<Option<Connection>> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {CONNECTION_COLUMNS} FROM connections WHERE project_id = $1 AND name = $2"
        );
        client
            .query_opt(&sql, &[&project_id, &name])
            .await?
            .map(|row| connection_from_row(&row))
            .transpose()
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
        let client = self.client().await?;
        let sql = format!(
            "INSERT INTO syncs (project_id, cohort_id, connection_id, mode, interval_secs,
                 status, next_run_at_ms, created_at_ms)
             VALUES ($1, $2, $3, $4::text, $5::bigint, 'active',
                     CASE WHEN $4::text = 'dynamic' THEN $6::bigint + $5::bigint * 1000 END,
                     $6::bigint)
             RETURNING {SYNC_COLUMNS}"
        );
        sync_from_row(
            &client
                .query_one(
                    &sql,
                    &[
                        &project_id,
                        &cohort_id,
                        &connection_id,
                        &mode.as_str(),
                        &interval_secs,
                        &now_ms,
                    ],
                )
                .await?,
        )
    }

    async fn list_syncs(&self, project_id: i64) -> StoreResult<Vec<Sync>> {
        let client = self.client().await?;
        let sql = format!("SELECT {SYNC_COLUMNS} FROM syncs WHERE project_id = $1 ORDER BY id");
        client
            .query(&sql, &[&project_id])
            .await?
            .iter()
            .map(sync_from_row)
            .collect()
    }

    async fn sync(&self, id: i64) -> StoreResult<Option<Sync>> {
        let client = self.client().await?;
        let sql = format!("SELECT {SYNC_COLUMNS} FROM syncs WHERE id = $1");
        client
            .query_opt(&sql, &[&id])
            .await?
            .map(|row| sync_from_row(&row))
            .transpose()
    }

    async fn set_sync_state(
        &self,
        id: i64,
        status: &str,
        reason: Option<&str>,
        next_run_at_ms: Option<i64>,
    ) -> StoreResult<()> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE syncs SET status = $2::text, status_reason = $3, next_run_at_ms = $4,
                     paused_by = CASE WHEN $2::text = 'paused' THEN paused_by ELSE NULL END
                 WHERE id = $1",
                &[&id, &status, &reason, &next_run_at_ms],
            )
            .await?;
        Ok(())
    }

    async fn due_syncs(&self, now_ms: i64) -> StoreResult<Vec<Sync>> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {SYNC_COLUMNS} FROM syncs
             WHERE status = 'active'
               AND next_run_at_ms IS NOT NULL AND next_run_at_ms <= $1
               AND (lease_expires_at_ms IS NULL OR lease_expires_at_ms < $1)
             ORDER BY next_run_at_ms, id"
        );
        client
            .query(&sql, &[&now_ms])
            .await?
            .iter()
            .map(sync_from_row)
            .collect()
    }

    async fn start_run(&self, sync_id: i64, now_ms: i64) -> StoreResult<SyncRun> {
        let client = self.client().await?;
        let sql = format!(
            "INSERT INTO sync_runs (sync_id, started_at_ms, status) VALUES ($1, $2, 'running')
             RETURNING {RUN_COLUMNS}"
        );
        run_from_row(&client.query_one(&sql, &[&sync_id, &now_ms]).await?)
    }

    async fn update_run_counts(&self, run_id: i64, counts: &RunCounts) -> StoreResult<()> {
        let client = self.client().await?;
        write_run_counts(&client, run_id, counts).await
    }

    async fn finish_run(
        &self,
        run_id: i64,
        status: &str,
        counts: &RunCounts,
        error: Option<&str>,
        now_ms: i64,
    ) -> StoreResult<SyncRun> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE sync_runs SET status = $2, members = $3, added = $4, removed = $5,
                     skipped = $6, requests = $7, error = $8, finished_at_ms = $9,
                     unchanged = $10, retries = $11 WHERE id = $1",
                &[
                    &run_id,
                    &status,
                    &counts.members,
                    &counts.added,
                    &counts.removed,
                    &counts.skipped,
                    &counts.requests,
                    &error,
                    &now_ms,
                    &counts.unchanged,
                    &counts.retries,
                ],
            )
            .await?;
        run_by_id(&client, run_id)
            .await?
            .ok_or_else(|| not_found_run(run_id))
    }

    async fn fail_interrupted_runs(&self, node_id: &str, now_ms: i64) -> StoreResult<usize> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // A sync whose run is cut short here runs again at once, so that Braze does not keep a
        // partial cohort until the next run of its cadence.
        tx.execute(
            "UPDATE syncs SET next_run_at_ms = $2
             WHERE status = 'active'
               AND id IN (SELECT sync_id FROM sync_runs WHERE status = 'running')
               AND (lease_owner IS NULL OR lease_owner = $1 OR lease_expires_at_ms < $2)",
            &[&node_id, &now_ms],
        )
        .await?;
        let interrupted = tx
            .execute(
                "UPDATE sync_runs SET status = 'failed', finished_at_ms = $2, error = $3
                 WHERE status = 'running' AND sync_id IN (
                     SELECT id FROM syncs
                     WHERE lease_owner IS NULL OR lease_owner = $1 OR lease_expires_at_ms < $2)",
                &[&node_id, &now_ms, &INTERRUPTED],
            )
            .await?;
        tx.execute(
            "UPDATE syncs SET lease_owner = NULL, lease_expires_at_ms = NULL WHERE lease_owner = $1",
            &[&node_id],
        )
        .await?;
        tx.execute(
            "UPDATE connections SET turn_owner = NULL, turn_expires_at_ms = NULL
             WHERE turn_owner = $1",
            &[&node_id],
        )
        .await?;
        // A once sync has no next run: it runs now, and completes when that run succeeds.
        tx.execute(
            "UPDATE syncs SET next_run_at_ms = $1
             WHERE status = 'active' AND next_run_at_ms IS NULL",
            &[&now_ms],
        )
        .await?;
        tx.commit().await?;
        Ok(interrupted as usize)
    }

    async fn lease_sync(
        &self,
        id: i64,
        node_id: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> StoreResult<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // SKIP LOCKED: a node that finds another node leasing the same sync at this moment
        // gives up at once instead of waiting for that transaction.
        let leased = tx
            .query_opt(
                "WITH free AS (
                     SELECT id FROM syncs
                     WHERE id = $1
                       AND (lease_owner IS NULL OR lease_owner = $2 OR lease_expires_at_ms < $3)
                     FOR UPDATE SKIP LOCKED)
                 UPDATE syncs SET lease_owner = $2, lease_expires_at_ms = $3::bigint + $4::bigint
                 FROM free WHERE syncs.id = free.id
                 RETURNING syncs.id",
                &[&id, &node_id, &now_ms, &lease_ms],
            )
            .await?;
        if leased.is_none() {
            return Ok(false);
        }
        // A run still marked running belongs to a node that lost this lease, or to this node
        // before a restart: it will never finish.
        tx.execute(
            "UPDATE sync_runs SET status = 'failed', finished_at_ms = $2, error = $3
             WHERE sync_id = $1 AND status = 'running'",
            &[&id, &now_ms, &INTERRUPTED],
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn renew_sync_lease(
        &self,
        id: i64,
        node_id: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> StoreResult<bool> {
        let client = self.client().await?;
        let changed = client
            .execute(
                "UPDATE syncs SET lease_expires_at_ms = $3::bigint + $4::bigint WHERE id = $1 AND lease_owner = $2",
                &[&id, &node_id, &now_ms, &lease_ms],
            )
            .await?;
        Ok(changed > 0)
    }

    async fn release_sync_lease(&self, id: i64, node_id: &str) -> StoreResult<()> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE syncs SET lease_owner = NULL, lease_expires_at_ms = NULL
                 WHERE id = $1 AND lease_owner = $2",
                &[&id, &node_id],
            )
            .await?;
        Ok(())
    }

    async fn take_connection_turn(
        &self,
        id: i64,
        node_id: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> StoreResult<bool> {
        let client = self.client().await?;
        let taken = client
            .execute(
                "UPDATE connections SET turn_owner = $2, turn_expires_at_ms = $3::bigint + $4::bigint
                 WHERE id = $1
                   AND (turn_owner IS NULL OR turn_owner = $2 OR turn_expires_at_ms < $3)",
                &[&id, &node_id, &now_ms, &lease_ms],
            )
            .await?;
        Ok(taken > 0)
    }

    async fn renew_connection_turn(
        &self,
        id: i64,
        node_id: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> StoreResult<bool> {
        let client = self.client().await?;
        let changed = client
            .execute(
                "UPDATE connections SET turn_expires_at_ms = $3::bigint + $4::bigint
                 WHERE id = $1 AND turn_owner = $2",
                &[&id, &node_id, &now_ms, &lease_ms],
            )
            .await?;
        Ok(changed > 0)
    }

    async fn release_connection_turn(&self, id: i64, node_id: &str) -> StoreResult<()> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE connections SET turn_owner = NULL, turn_expires_at_ms = NULL
                 WHERE id = $1 AND turn_owner = $2",
                &[&id, &node_id],
            )
            .await?;
        Ok(())
    }

    async fn list_runs(&self, sync_id: i64) -> StoreResult<Vec<SyncRun>> {
        let client = self.client().await?;
        let sql = format!("SELECT {RUN_COLUMNS} FROM sync_runs WHERE sync_id = $1 ORDER BY id");
        client
            .query(&sql, &[&sync_id])
            .await?
            .iter()
            .map(run_from_row)
            .collect()
    }

    async fn braze_cohort(
        &self,
        connection_id: i64,
        cohort_id: i64,
    ) -> StoreResult<Option<BrazeCohort>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT braze_cohort_id, name_sent FROM braze_cohorts
                 WHERE connection_id = $1 AND cohort_id = $2",
                &[&connection_id, &cohort_id],
            )
            .await?;
        match row {
            Some(row) => Ok(Some(BrazeCohort {
                braze_cohort_id: row.try_get(0)?,
                name_sent: row.try_get(1)?,
            })),
            None => Ok(None),
        }
    }

    async fn record_braze_cohort(
        &self,
        connection_id: i64,
        cohort_id: i64,
        cohort: &BrazeCohort,
        now_ms: i64,
    ) -> StoreResult<()> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO braze_cohorts (connection_id, cohort_id, braze_cohort_id, name_sent, created_at_ms)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (connection_id, cohort_id) DO UPDATE SET name_sent = excluded.name_sent",
                &[
                    &connection_id,
                    &cohort_id,
                    &cohort.braze_cohort_id,
                    &cohort.name_sent,
                    &now_ms,
                ],
            )
            .await?;
        Ok(())
    }

    async fn braze_members(&self, connection_id: i64, cohort_id: i64) -> StoreResult<IdSet> {
        self.external_ids("braze_members", connection_id, cohort_id)
            .await
    }

    async fn braze_pending(&self, connection_id: i64, cohort_id: i64) -> StoreResult<IdSet> {
        self.external_ids("braze_pending", connection_id, cohort_id)
            .await
    }

    async fn record_braze_progress(
        &self,
        connection_id: i64,
        cohort_id: i64,
        progress: BrazeProgress,
    ) -> StoreResult<()> {
        let added: Vec<&str> = progress.acknowledged_adds.iter().collect();
        let removed: Vec<&str> = progress.acknowledged_removes.iter().collect();
        let settled: Vec<&str> = added.iter().chain(&removed).copied().collect();
        let pending: Vec<&str> = progress.pending.iter().collect();
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        if !added.is_empty() {
            tx.execute(
                "INSERT INTO braze_members (connection_id, cohort_id, external_id)
                 SELECT $1, $2, id FROM unnest($3::text[]) AS added(id)
                 ON CONFLICT DO NOTHING",
                &[&connection_id, &cohort_id, &added],
            )
            .await?;
        }
        if !removed.is_empty() {
            tx.execute(
                "DELETE FROM braze_members
                 WHERE connection_id = $1 AND cohort_id = $2 AND external_id = ANY($3)",
                &[&connection_id, &cohort_id, &removed],
            )
            .await?;
        }
        if !settled.is_empty() {
            tx.execute(
                "DELETE FROM braze_pending
                 WHERE connection_id = $1 AND cohort_id = $2 AND external_id = ANY($3)",
                &[&connection_id, &cohort_id, &settled],
            )
            .await?;
        }
        if !pending.is_empty() {
            tx.execute(
                "INSERT INTO braze_pending (connection_id, cohort_id, external_id)
                 SELECT $1, $2, id FROM unnest($3::text[]) AS pending(id)
                 ON CONFLICT DO NOTHING",
                &[&connection_id, &cohort_id, &pending],
            )
            .await?;
        }
        if let Some((run_id, counts)) = &progress.run_counts {
            write_run_counts(&tx, *run_id, counts).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn rename_cohort(
        &self,
        project_id: i64,
        id: i64,
        name: &str,
        now_ms: i64,
    ) -> StoreResult<Option<Cohort>> {
        let client = self.client().await?;
        let changed = client
            .execute(
                "UPDATE cohorts SET name = $3, updated_at_ms = $4
                 WHERE project_id = $1 AND id = $2 AND deleted_at_ms IS NULL",
                &[&project_id, &id, &name, &now_ms],
            )
            .await?;
        if changed == 0 {
            return Ok(None);
        }
        Ok(Some(cohort_by_id(&client, id).await?))
    }

    async fn delete_cohort(&self, project_id: i64, id: i64, now_ms: i64) -> StoreResult<bool> {
        let client = self.client().await?;
        let changed = client
            .execute(
                "UPDATE cohorts SET deleted_at_ms = $3
                 WHERE project_id = $1 AND id = $2 AND deleted_at_ms IS NULL",
                &[&project_id, &id, &now_ms],
            )
            .await?;
        Ok(changed > 0)
    }

    async fn rename_connection(&self, id: i64, name: &str) -> StoreResult<Connection> {
        let client = self.client().await?;
        match client
            .execute(
                "UPDATE connections SET name = $2 WHERE id = $1",
                &[&id, &name],
            )
            .await
        {
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict {
                    what: "connection",
                    value: name.to_owned(),
                })
            }
            other => other?,
        };
        connection_by_id(&client, id).await
    }

    async fn replace_data_import_key(
        &self,
        id: i64,
        data_import_key_enc: &str,
    ) -> StoreResult<Connection> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE connections SET data_import_key_enc = $2, disconnected_at_ms = NULL
                 WHERE id = $1",
                &[&id, &data_import_key_enc],
            )
            .await?;
        connection_by_id(&client, id).await
    }

    async fn disconnect_connection(&self, id: i64, reason: &str, now_ms: i64) -> StoreResult<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "UPDATE connections SET disconnected_at_ms = $2 WHERE id = $1",
            &[&id, &now_ms],
        )
        .await?;
        tx.execute(
            "UPDATE syncs SET status = 'paused', status_reason = $2, paused_by = 'connection',
                 next_run_at_ms = NULL
             WHERE connection_id = $1 AND mode = 'dynamic' AND status IN ('active', 'paused')
               AND (paused_by IS NULL OR paused_by <> 'operator')",
            &[&id, &reason],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn settle_sync(
        &self,
        id: i64,
        status: &str,
        reason: Option<&str>,
        paused_by: Option<&str>,
        next_run_at_ms: Option<i64>,
    ) -> StoreResult<bool> {
        let client = self.client().await?;
        let changed = client
            .execute(
                "UPDATE syncs SET status = $2, status_reason = $3, paused_by = $4,
                     next_run_at_ms = $5
                 WHERE id = $1 AND status = 'active'",
                &[&id, &status, &reason, &paused_by, &next_run_at_ms],
            )
            .await?;
        Ok(changed > 0)
    }

    async fn pause_sync(&self, id: i64, reason: &str, paused_by: &str) -> StoreResult<()> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE syncs SET status = 'paused', status_reason = $2, paused_by = $3,
                     next_run_at_ms = NULL
                 WHERE id = $1",
                &[&id, &reason, &paused_by],
            )
            .await?;
        Ok(())
    }

    async fn set_run_trigger(&self, run_id: i64, trigger: &str) -> StoreResult<()> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE sync_runs SET trigger = $2 WHERE id = $1",
                &[&run_id, &trigger],
            )
            .await?;
        Ok(())
    }

    async fn run(&self, run_id: i64) -> StoreResult<Option<SyncRun>> {
        run_by_id(&self.client().await?, run_id).await
    }

    async fn record_run_operations(
        &self,
        run_id: i64,
        first_seq: i64,
        operations: Vec<RunOperation>,
    ) -> StoreResult<()> {
        let seq: Vec<i64> = (first_seq..first_seq + operations.len() as i64).collect();
        let mut distinct_ids = Vec::with_capacity(operations.len());
        let mut external_ids = Vec::with_capacity(operations.len());
        let mut kinds = Vec::with_capacity(operations.len());
        let mut reasons = Vec::with_capacity(operations.len());
        for op in operations {
            distinct_ids.push(op.distinct_id);
            external_ids.push(op.external_id);
            kinds.push(op.operation);
            reasons.push(op.reason);
        }
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO sync_run_operations
                     (run_id, seq, distinct_id, external_id, operation, reason)
                 SELECT $1, seq, distinct_id, external_id, operation, reason
                 FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[])
                     AS op(seq, distinct_id, external_id, operation, reason)",
                &[
                    &run_id,
                    &seq,
                    &distinct_ids,
                    &external_ids,
                    &kinds,
                    &reasons,
                ],
            )
            .await?;
        Ok(())
    }

    async fn previous_holders(
        &self,
        connection_id: i64,
        cohort_id: i64,
        before_run_id: i64,
        ids: IdSet,
    ) -> StoreResult<Vec<Option<String>>> {
        let mut holders = vec![None; ids.len()];
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let previous: Option<i64> = tx
            .query_opt(
                "SELECT r.id FROM sync_runs r JOIN syncs s ON s.id = r.sync_id
                 WHERE s.connection_id = $1 AND s.cohort_id = $2 AND r.id < $3
                   AND EXISTS (SELECT 1 FROM sync_run_operations o WHERE o.run_id = r.id)
                 ORDER BY r.id DESC LIMIT 1",
                &[&connection_id, &cohort_id, &before_run_id],
            )
            .await?
            .map(|row| row.try_get(0))
            .transpose()?;
        let Some(previous) = previous else {
            return Ok(holders);
        };
        // A portal reads the rows in blocks, as `external_ids` does.
        let portal = tx
            .bind(
                "SELECT external_id, distinct_id FROM sync_run_operations
                 WHERE run_id = $1 AND external_id IS NOT NULL AND distinct_id IS NOT NULL
                 ORDER BY seq",
                &[&previous],
            )
            .await?;
        loop {
            let rows = tx.query_portal(&portal, ID_ROWS_PER_READ).await?;
            for row in &rows {
                let external_id: &str = row.try_get(0)?;
                if let Some(index) = ids.index_of(external_id) {
                    if holders[index].is_none() {
                        holders[index] = Some(row.try_get::<_, String>(1)?);
                    }
                }
            }
            if rows.len() < ID_ROWS_PER_READ as usize {
                break;
            }
        }
        tx.commit().await?;
        Ok(holders)
    }

    async fn run_operations(&self, run_id: i64) -> StoreResult<Vec<RunOperation>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT distinct_id, external_id, operation, reason FROM sync_run_operations
                 WHERE run_id = $1 ORDER BY seq",
                &[&run_id],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(RunOperation {
                    distinct_id: row.try_get(0)?,
                    external_id: row.try_get(1)?,
                    operation: row.try_get(2)?,
                    reason: row.try_get(3)?,
                })
            })
            .collect()
    }

    async fn prune_run_operations(&self, sync_id: i64, keep: usize) -> StoreResult<u64> {
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        let client = self.client().await?;
        let deleted = client
            .execute(
                "DELETE FROM sync_run_operations WHERE run_id IN (
                     SELECT id FROM sync_runs WHERE sync_id = $1
                     ORDER BY id DESC OFFSET $2)",
                &[&sync_id, &keep],
            )
            .await?;
        Ok(deleted)
    }

    // Accounts: people, browser sessions and per-user API keys.

    async fn create_user(&self, user: NewUser, now_ms: i64) -> StoreResult<User> {
        accounts::create_user(&self.client().await?, user, now_ms).await
    }

    async fn list_users(&self) -> StoreResult<Vec<User>> {
        accounts::list_users(&self.client().await?).await
    }

    async fn user_by_email(&self, email: &str) -> StoreResult<Option<User>> {
        accounts::user_by_email(&self.client().await?, email).await
    }

    async fn create_session(&self, session: NewSession) -> StoreResult<()> {
        accounts::create_session(&self.client().await?, session).await
    }

    async fn session(&self, token_hash: &str, now_ms: i64) -> StoreResult<Option<(User, String)>> {
        accounts::session(&self.client().await?, token_hash, now_ms).await
    }

    async fn delete_session(&self, token_hash: &str) -> StoreResult<()> {
        accounts::delete_session(&self.client().await?, token_hash).await
    }

    async fn create_user_api_key(
        &self,
        user_id: i64,
        name: &str,
        key_hash: &str,
        now_ms: i64,
    ) -> StoreResult<UserApiKey> {
        accounts::create_api_key(&self.client().await?, user_id, name, key_hash, now_ms).await
    }

    async fn user_by_api_key_hash(&self, key_hash: &str) -> StoreResult<Option<User>> {
        accounts::user_by_api_key_hash(&self.client().await?, key_hash).await
    }
}

async fn insert_project(client: &impl GenericClient, project: NewProject) -> StoreResult<Project> {
    let now = chrono::Utc::now().timestamp_millis();
    let sql = format!(
        "INSERT INTO projects (name, token, api_secret_enc, api_secret_hash,
             currents_token_enc, currents_token_hash, created_at_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {PROJECT_COLUMNS}"
    );
    let row = client
        .query_one(
            &sql,
            &[
                &project.name,
                &project.token,
                &project.api_secret_enc,
                &project.api_secret_hash,
                &project.currents_token_enc,
                &project.currents_token_hash,
                &now,
            ],
        )
        .await?;
    project_from_row(&row)
}
