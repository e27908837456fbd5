//! The embedded store: one SQLite file in WAL mode with `synchronous=FULL`, so a committed
//! transaction survives a crash of the process or of the machine.
//!
//! Writes go through one connection and reads through another, so readers never wait for a
//! write in progress. Blocking calls run on tokio's blocking pool.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::types::Type;
use rusqlite::{params, params_from_iter, Connection as SqlConnection, OptionalExtension, Row};
use serde_json::{Map, Value};

use super::*;

mod accounts;
mod checkpoint;
mod cohort_rows;
mod group_commit;
mod mtu_rollup;

use checkpoint::{WalCheckpoints, Writer};
use group_commit::{PendingWrite, WriteQueue};

const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_init", include_str!("migrations/sqlite/0001_init.sql")),
    (
        "0002_ingestion",
        include_str!("migrations/sqlite/0002_ingestion.sql"),
    ),
    (
        "0003_project_timezone",
        include_str!("migrations/sqlite/0003_project_timezone.sql"),
    ),
    (
        "0004_sync_lifecycle",
        include_str!("migrations/sqlite/0004_sync_lifecycle.sql"),
    ),
    (
        "0005_import_credentials",
        include_str!("migrations/sqlite/0005_import_credentials.sql"),
    ),
    (
        MTU_ROLLUP_MIGRATION,
        include_str!("migrations/sqlite/0006_mtu_rollup.sql"),
    ),
    (
        "0007_time_ordered_dedupe",
        include_str!("migrations/sqlite/0007_time_ordered_dedupe.sql"),
    ),
    (
        "0008_accounts",
        include_str!("migrations/sqlite/0008_accounts.sql"),
    ),
    (
        "0009_sync_leases",
        include_str!("migrations/sqlite/0009_sync_leases.sql"),
    ),
    (
        "0010_connection_turns",
        include_str!("migrations/sqlite/0010_connection_turns.sql"),
    ),
    (
        "0011_mtu_deltas",
        include_str!("migrations/sqlite/0011_mtu_deltas.sql"),
    ),
    (
        MTU_PACKED_MIGRATION,
        include_str!("migrations/sqlite/0012_mtu_deltas_packed.sql"),
    ),
    (
        "0013_sync_rows_without_rowid",
        include_str!("migrations/sqlite/0013_sync_rows_without_rowid.sql"),
    ),
    (
        "0014_identity_failure_lookup",
        include_str!("migrations/sqlite/0014_identity_failure_lookup.sql"),
    ),
];

/// The migration that creates the MTU rollup, which is then filled from the stored events.
const MTU_ROLLUP_MIGRATION: &str = "0006_mtu_rollup";

/// The migration that packs pending MTU changes, after which the unpacked ones are folded.
const MTU_PACKED_MIGRATION: &str = "0012_mtu_deltas_packed";

/// The error text of a run whose node stopped or lost its lease.
const INTERRUPTED: &str = "interrupted: the server stopped during the run; the next run resumes from what Braze acknowledged";

#[derive(Clone)]
pub struct SqliteStore {
    writer: Arc<Mutex<Writer>>,
    reader: Arc<Mutex<SqlConnection>>,
    /// Event writes waiting for a group commit.
    queue: WriteQueue,
    /// Declared after the connections, so that its thread stops after they close.
    _checkpoints: Arc<WalCheckpoints>,
}

impl SqliteStore {
    /// Opens (or creates) the database file and applies pending migrations.
    pub fn open(path: &Path) -> StoreResult<Self> {
        Self::open_with_checkpoint(path, WAL_CHECKPOINT_BYTES)
    }

    /// Opens the database file like [`SqliteStore::open`], checkpointing the WAL once it
    /// reaches `checkpoint_bytes`.
    fn open_with_checkpoint(path: &Path, checkpoint_bytes: i64) -> StoreResult<Self> {
        let mut writer = Writer::new(open_connection(path)?);
        configure(&writer)?;
        configure_writer(&writer)?;
        migrate(&mut writer)?;
        let reader = open_connection(path)?;
        configure(&reader)?;
        let checkpointer = open_connection(path)?;
        configure(&checkpointer)?;
        let checkpoints = WalCheckpoints::start(checkpointer)?;
        writer.checkpoint_on(&checkpoints, checkpoint_bytes)?;
        Ok(Self {
            writer: Arc::new(Mutex::new(writer)),
            reader: Arc::new(Mutex::new(reader)),
            queue: WriteQueue::default(),
            _checkpoints: Arc::new(checkpoints),
        })
    }

    /// Opens (or creates) the database file, applies pending migrations and returns the names
    /// of those applied now.
    pub fn migrate_file(path: &Path) -> StoreResult<Vec<String>> {
        let mut conn = open_connection(path)?;
        configure(&conn)?;
        migrate(&mut conn)
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

/// Opens a connection to the database file at `path`.
///
/// Before the first one, SQLite's memory statistics are turned off: with them on, every
/// allocation and free inside SQLite takes a global mutex, which profiles of ingestion put at
/// a few percent of the writer's time. Nothing here reads those statistics.
fn open_connection(path: &Path) -> StoreResult<SqlConnection> {
    static MEMORY_STATISTICS_OFF: std::sync::Once = std::sync::Once::new();
    MEMORY_STATISTICS_OFF.call_once(|| {
        // SAFETY: SQLITE_CONFIG_MEMSTATUS takes one int. SQLite accepts configuration only
        // before it initialises; if a connection was opened earlier in this process, it
        // returns SQLITE_MISUSE and changes nothing, which is harmless.
        let code = unsafe {
            rusqlite::ffi::sqlite3_config(
                rusqlite::ffi::SQLITE_CONFIG_MEMSTATUS,
                0 as std::ffi::c_int,
            )
        };
        if code != rusqlite::ffi::SQLITE_OK {
            tracing::debug!(code, "SQLite memory statistics stay on");
        }
    });
    Ok(SqlConnection::open(path)?)
}

/// The page size of a new database file.
///
/// Ingestion appends rows to the event table and to the ends of its two indexes. Pages of
/// 16 KiB split and rebalance a quarter as often as SQLite's default 4 KiB, which measured 5 to
/// 10% less CPU time per stored event. SQLite fixes the size when the first table is created,
/// so a file made by an earlier version keeps its own.
const NEW_FILE_PAGE_SIZE: i64 = 16 * 1024;

/// How much of the WAL accumulates before it is checkpointed into the database file. More than
/// SQLite's default of 1000 pages, so that each hot page is copied to the file less often.
/// Durability is unchanged: `synchronous=FULL` syncs the WAL at every commit.
const WAL_CHECKPOINT_BYTES: i64 = 64 * 1024 * 1024;

fn configure(conn: &SqlConnection) -> StoreResult<()> {
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    // Has no effect on a file that already contains a table, or that is already in WAL mode.
    conn.pragma_update(None, "page_size", NEW_FILE_PAGE_SIZE)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

/// Tunes the write connection for large ingestion transactions. A 64 MiB page cache keeps the
/// index pages of a 2000-event batch in memory instead of spilling them to the WAL mid-way.
fn configure_writer(conn: &SqlConnection) -> StoreResult<()> {
    conn.pragma_update(None, "cache_size", -64 * 1024)?;
    Ok(())
}

/// Applies every migration not yet recorded in `schema_migrations`, each in its own
/// transaction, and returns the names applied now.
fn migrate(conn: &mut SqlConnection) -> StoreResult<Vec<String>> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at_ms INTEGER NOT NULL)",
    )?;
    let mut now_applied = Vec::new();
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
        if *name == MTU_ROLLUP_MIGRATION {
            mtu_rollup::rebuild_all(&tx)?;
        }
        if *name == MTU_PACKED_MIGRATION {
            mtu_rollup::fold_unpacked(&tx)?;
        }
        tx.execute(
            "INSERT INTO schema_migrations (name, applied_at_ms) VALUES (?1, ?2)",
            params![name, chrono::Utc::now().timestamp_millis()],
        )?;
        tx.commit()?;
        tracing::info!(migration = name, "applied migration");
        now_applied.push((*name).to_owned());
    }
    Ok(now_applied)
}

/// Reads the external ids that `table` (`braze_members` or `braze_pending`) records for one
/// connection and cohort. The primary key's index returns them in byte order, so the set is
/// built without sorting and without a string per id.
fn external_ids(
    conn: &SqlConnection,
    table: &'static str,
    connection_id: i64,
    cohort_id: i64,
) -> StoreResult<IdSet> {
    let sql = format!(
        "SELECT external_id FROM {table} WHERE connection_id = ?1 AND cohort_id = ?2
         ORDER BY external_id"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(params![connection_id, cohort_id])?;
    let mut ids = IdSetBuilder::default();
    while let Some(row) = rows.next()? {
        let id = row
            .get_ref(0)?
            .as_str()
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, Type::Text, Box::new(e)))?;
        ids.push(id);
    }
    Ok(ids.finish())
}

/// Ids bound per statement when a statement covers many ids. Each statement then has 102 bound
/// parameters, far below SQLite's limit of 32,766.
const IDS_PER_STATEMENT: usize = 100;

/// Runs, for each chunk of at most `IDS_PER_STATEMENT` of `ids`, the statement `sql_for(chunk
/// length)`, which binds `?1` and `?2` to `key` and the chunk's ids to the following
/// parameters. SQLite runs one statement per chunk faster than one statement per id.
fn for_id_chunks(
    tx: &rusqlite::Transaction<'_>,
    key: (i64, i64),
    ids: &[&str],
    sql_for: impl Fn(usize) -> String,
) -> StoreResult<()> {
    for chunk in ids.chunks(IDS_PER_STATEMENT) {
        let sql = sql_for(chunk.len());
        // Full chunks share one cached statement; a shorter last chunk is prepared once.
        let (mut cached, mut fresh);
        let statement: &mut rusqlite::Statement<'_> = if chunk.len() == IDS_PER_STATEMENT {
            cached = tx.prepare_cached(&sql)?;
            &mut cached
        } else {
            fresh = tx.prepare(&sql)?;
            &mut fresh
        };
        let mut values: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(chunk.len() + 2);
        values.push(&key.0);
        values.push(&key.1);
        values.extend(chunk.iter().map(|id| id as &dyn rusqlite::ToSql));
        statement.execute(values.as_slice())?;
    }
    Ok(())
}

/// Returns the ids of `set`, borrowed.
fn ids(set: &IdSet) -> Vec<&str> {
    set.iter().collect()
}

/// Repeats `item` `n` times, comma-separated.
fn placeholders(item: &str, n: usize) -> String {
    vec![item; n].join(", ")
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

/// The columns of a query that selects `event, distinct_id, time_ms, insert_id, properties`.
type EventColumns = (String, String, i64, String, String);

fn event_columns(row: &Row<'_>) -> rusqlite::Result<EventColumns> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
    ))
}

/// Builds events from rows of [`event_columns`], parsing each row's properties.
fn decode_events(
    rows: impl Iterator<Item = rusqlite::Result<EventColumns>>,
) -> StoreResult<Vec<NewEvent>> {
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
}

fn credential_from_row(row: &Row<'_>) -> rusqlite::Result<ImportCredential> {
    Ok(ImportCredential {
        id: row.get(0)?,
        project_id: row.get(1)?,
        name: row.get(2)?,
        partner_id: row.get(3)?,
        created_at_ms: row.get(4)?,
    })
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
    "id, project_id, name, instance, base_url, data_import_key_enc, user_id_property, created_at_ms, disconnected_at_ms, delivery, attribute_name";

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
        disconnected_at_ms: row.get(8)?,
        delivery: row.get(9)?,
        attribute_name: row.get(10)?,
    })
}

const SYNC_COLUMNS: &str = "id, project_id, cohort_id, connection_id, mode, interval_secs, status, status_reason, next_run_at_ms, created_at_ms, paused_by";

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
        paused_by: row.get(10)?,
    })
}

/// Rows per `INSERT` of run operations. 100 rows of 6 values stay far below SQLite's limit of
/// 32,766 bound parameters per statement.
const OPERATION_ROWS_PER_INSERT: usize = 100;

/// The `INSERT` of a full chunk of `OPERATION_ROWS_PER_INSERT` run operations.
static INSERT_FULL_OPERATIONS_CHUNK: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| insert_operations_sql(OPERATION_ROWS_PER_INSERT));

/// Builds an `INSERT` of `rows` run operations, six values per row.
fn insert_operations_sql(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO sync_run_operations (run_id, seq, distinct_id, external_id, operation, reason) VALUES ",
    );
    for i in 0..rows {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str("(?,?,?,?,?,?)");
    }
    sql
}

const RUN_COLUMNS: &str = "id, sync_id, started_at_ms, finished_at_ms, status, members, added, removed, skipped, requests, error, unchanged, retries, trigger";

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
            unchanged: row.get(11)?,
            retries: row.get(12)?,
        },
        error: row.get(10)?,
        trigger: row.get(13)?,
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

fn insert_events(
    conn: &SqlConnection,
    project_id: i64,
    events: &EncodedEvents,
    now_ms: i64,
) -> StoreResult<()> {
    // The lookup goes through the index on (project, time, insert id), where live events are
    // appended, then compares the name and the distinct id.
    let mut find_stmt = conn.prepare_cached(
        "SELECT id, coalesce(partner_id, ''),
                coalesce(json_extract(properties, '$.\"$import\"'), 0)
         FROM events
         WHERE project_id = ?1 AND time_ms = ?2 AND insert_id = ?3 AND event = ?4
           AND distinct_id = ?5",
    )?;
    let mut insert_stmt = conn.prepare_cached(
        "INSERT INTO events (project_id, event, distinct_id, time_ms, insert_id,
             partner_id, properties, ingested_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    let mut replace_stmt = conn.prepare_cached(
        "UPDATE events SET properties = ?2, partner_id = ?3, ingested_at_ms = ?4 WHERE id = ?1",
    )?;
    let zone = mtu_rollup::project_zone(conn, project_id)?;
    // An event later than every stored event of the project cannot be a duplicate, so live
    // events, which mostly arrive in time order, skip the lookup. Events of this batch count
    // once inserted, so a duplicate within the batch has the same time and is looked up.
    let mut newest: i64 = conn
        .prepare_cached("SELECT max(time_ms) FROM events WHERE project_id = ?1")?
        .query_row([project_id], |row| row.get::<_, Option<i64>>(0))?
        .unwrap_or(i64::MIN);
    let mut earlier_keys: Vec<(String, bool)> = Vec::new();
    // Per stored event: its index, its own rollup key (partner id and `/import` flag, each read
    // from its properties once), and the key of the row it replaced if that key differs.
    let mut changes: Vec<(usize, &str, bool, Option<usize>)> = Vec::with_capacity(events.len());
    for (index, (event, properties)) in events.iter().enumerate() {
        let partner = event.partner_id.as_deref();
        let imported_now = event.imported;
        let earlier: Option<(i64, String, i64)> = if event.time_ms > newest {
            newest = event.time_ms;
            None
        } else {
            find_stmt
                .query_row(
                    params![
                        project_id,
                        event.time_ms,
                        event.insert_id,
                        event.event,
                        event.distinct_id
                    ],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?
        };
        let partner_id_now = partner.unwrap_or("");
        let Some((id, partner_id, imported)) = earlier else {
            insert_stmt.execute(params![
                project_id,
                event.event,
                event.distinct_id,
                event.time_ms,
                event.insert_id,
                partner,
                properties,
                now_ms
            ])?;
            changes.push((index, partner_id_now, imported_now, None));
            continue;
        };
        replace_stmt.execute(params![id, properties, partner, now_ms])?;
        if partner_id != partner_id_now || (imported != 0) != imported_now {
            earlier_keys.push((partner_id, imported != 0));
            changes.push((
                index,
                partner_id_now,
                imported_now,
                Some(earlier_keys.len() - 1),
            ));
        }
    }
    let mut rollup = Vec::with_capacity(changes.len());
    for (index, partner_id, imported, earlier) in changes {
        let (event, _) = events.get(index);
        let month = mtu_rollup::month_of(zone, event.time_ms);
        rollup.push(mtu_rollup::Change {
            month,
            event: &event.event,
            partner_id,
            imported,
            distinct_id: &event.distinct_id,
            delta: 1,
        });
        if let Some(earlier) = earlier {
            let (partner_id, imported) = &earlier_keys[earlier];
            rollup.push(mtu_rollup::Change {
                month,
                event: &event.event,
                partner_id,
                imported: *imported,
                distinct_id: &event.distinct_id,
                delta: -1,
            });
        }
    }
    mtu_rollup::apply(conn, project_id, &rollup)
}

fn write_run_counts(conn: &SqlConnection, run_id: i64, counts: &RunCounts) -> StoreResult<()> {
    conn.execute(
        "UPDATE sync_runs SET members = ?2, added = ?3, removed = ?4, skipped = ?5,
             requests = ?6, unchanged = ?7, retries = ?8 WHERE id = ?1",
        params![
            run_id,
            counts.members,
            counts.added,
            counts.removed,
            counts.skipped,
            counts.requests,
            counts.unchanged,
            counts.retries
        ],
    )?;
    Ok(())
}

/// Number of distinct ids in the cluster whose canonical id is `canonical_id`.
fn cluster_size(conn: &SqlConnection, project_id: i64, canonical_id: &str) -> StoreResult<i64> {
    let linked: i64 = conn.query_row(
        "SELECT count(*) FROM identity_links WHERE project_id = ?1 AND canonical_id = ?2",
        params![project_id, canonical_id],
        |row| row.get(0),
    )?;
    Ok(linked + 1)
}

/// Applies one Original ID Merge, or returns why it cannot happen. The cluster of `from` joins
/// the cluster of `into`: every id that resolved to the old canonical id now resolves to the
/// new one, so earlier events and cohort membership move with the merge.
fn apply_merge(
    conn: &SqlConnection,
    project_id: i64,
    merge: &MergeRequest,
    now_ms: i64,
) -> StoreResult<Option<String>> {
    let into = resolve(conn, project_id, &merge.into)?;
    let from = resolve(conn, project_id, &merge.from)?;
    if into == from {
        return Ok(None);
    }
    let from_size = cluster_size(conn, project_id, &from)?;
    let must_be_unmerged = matches!(merge.kind, MergeKind::Identify | MergeKind::CreateAlias);
    if must_be_unmerged && (from != merge.from || from_size > 1) {
        return Ok(Some(format!(
            "{:?} is already merged with other ids (canonical id {from:?}), so it cannot be merged into {:?}",
            merge.from, merge.into
        )));
    }
    let total = cluster_size(conn, project_id, &into)? + from_size;
    if total > crate::identity::original::MAX_CLUSTER_SIZE {
        return Ok(Some(format!(
            "merging {:?} into {:?} would make a cluster of {total} ids; at most {} are allowed",
            merge.from,
            merge.into,
            crate::identity::original::MAX_CLUSTER_SIZE
        )));
    }
    // NOTE: a profile stored under the old canonical id is not merged into the new one's. It
    // stays an orphan, as a `$device:` profile does under Simplified ID Merge.
    conn.execute(
        "UPDATE identity_links SET canonical_id = ?3, linked_at_ms = ?4
         WHERE project_id = ?1 AND canonical_id = ?2",
        params![project_id, from, into, now_ms],
    )?;
    conn.execute(
        "INSERT INTO identity_links (project_id, distinct_id, canonical_id, linked_at_ms)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (project_id, distinct_id) DO UPDATE SET canonical_id = excluded.canonical_id",
        params![project_id, from, into, now_ms],
    )?;
    Ok(None)
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

    async fn put_setting_if_absent(&self, key: &str, value: &str) -> StoreResult<String> {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
                params![key, value],
            )?;
            Ok(
                conn.query_row("SELECT value FROM settings WHERE key = ?1", [key], |row| {
                    row.get(0)
                })?,
            )
        })
        .await
    }

    async fn create_first_project(&self, project: NewProject) -> StoreResult<Option<Project>> {
        // One writer connection serialises writes, so the check and the insert cannot race.
        let exists = self
            .read(|conn| {
                Ok(
                    conn.query_row("SELECT EXISTS (SELECT 1 FROM projects)", [], |row| {
                        row.get::<_, bool>(0)
                    })?,
                )
            })
            .await?;
        if exists {
            return Ok(None);
        }
        self.create_project(project).await.map(Some)
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

    async fn create_import_credential(
        &self,
        project_id: i64,
        credential: NewImportCredential,
        now_ms: i64,
    ) -> StoreResult<ImportCredential> {
        self.write(move |conn| {
            let inserted = conn.execute(
                "INSERT INTO import_credentials (project_id, name, secret_hash, partner_id, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![project_id, credential.name, credential.secret_hash, credential.partner_id, now_ms],
            );
            match inserted {
                Err(e) if is_unique_violation(&e) => {
                    return Err(StoreError::Conflict { what: "credential", value: credential.name.clone() })
                }
                other => other?,
            };
            Ok(ImportCredential {
                id: conn.last_insert_rowid(),
                project_id,
                name: credential.name,
                partner_id: credential.partner_id,
                created_at_ms: now_ms,
            })
        })
        .await
    }

    async fn list_import_credentials(&self, project_id: i64) -> StoreResult<Vec<ImportCredential>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT id, project_id, name, partner_id, created_at_ms FROM import_credentials
                 WHERE project_id = ?1 ORDER BY id",
            )?;
            let rows = stmt.query_map([project_id], credential_from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn import_credential_by_hash(&self, hash: &str) -> StoreResult<Option<ImportCredential>> {
        let hash = hash.to_owned();
        self.read(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT id, project_id, name, partner_id, created_at_ms FROM import_credentials
                     WHERE secret_hash = ?1",
                    [hash],
                    credential_from_row,
                )
                .optional()?)
        })
        .await
    }

    async fn write_encoded_events(
        &self,
        project_id: i64,
        events: EncodedEvents,
        links: Vec<IdentityLink>,
        now_ms: i64,
    ) -> StoreResult<WriteSummary> {
        let (done, mut result) = tokio::sync::oneshot::channel();
        self.queue.push(PendingWrite {
            project_id,
            events,
            links,
            now_ms,
            done,
        });
        let (conn, queue) = (self.writer.clone(), self.queue.clone());
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            // Another caller may have committed this write already; otherwise flush until it is.
            loop {
                match result.try_recv() {
                    Ok(outcome) => return outcome,
                    Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {
                        queue.flush(&mut guard)
                    }
                    Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
                        return Err(StoreError::Task(
                            "the write was dropped before it was committed".into(),
                        ))
                    }
                }
            }
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    async fn write_events_with_merges(
        &self,
        project_id: i64,
        events: Vec<NewEvent>,
        merges: Vec<MergeRequest>,
        failures: Vec<IdentityFailure>,
        now_ms: i64,
    ) -> StoreResult<Vec<IdentityFailure>> {
        let events = EncodedEvents::encode(&events)?;
        self.write(move |conn| {
            let tx = conn.transaction()?;
            let mut recorded = failures;
            for merge in &merges {
                if let Some(reason) = apply_merge(&tx, project_id, merge, now_ms)? {
                    recorded.push(IdentityFailure {
                        event: merge.event.clone(),
                        insert_id: merge.insert_id.clone(),
                        distinct_id: merge.distinct_id.clone(),
                        reason,
                    });
                }
            }
            {
                // A failure recorded before, when the same event was imported, is not copied.
                let mut failure_stmt = tx.prepare_cached(
                    "INSERT INTO identity_failures
                         (project_id, event, insert_id, distinct_id, reason, failed_at_ms)
                     SELECT ?1, ?2, ?3, ?4, ?5, ?6
                     WHERE NOT EXISTS (
                         SELECT 1 FROM identity_failures
                         WHERE project_id = ?1 AND insert_id = ?3 AND event = ?2
                           AND distinct_id = ?4 AND reason = ?5)",
                )?;
                for failure in &recorded {
                    failure_stmt.execute(params![
                        project_id,
                        failure.event,
                        failure.insert_id,
                        failure.distinct_id,
                        failure.reason,
                        now_ms
                    ])?;
                }
            }
            insert_events(&tx, project_id, &events, now_ms)?;
            tx.commit()?;
            Ok(recorded)
        })
        .await
    }

    async fn identity_failures(
        &self,
        project_id: i64,
        limit: i64,
    ) -> StoreResult<Vec<StoredIdentityFailure>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT event, insert_id, distinct_id, reason, failed_at_ms FROM identity_failures
                 WHERE project_id = ?1 ORDER BY id DESC LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![project_id, limit], |row| {
                Ok(StoredIdentityFailure {
                    failure: IdentityFailure {
                        event: row.get(0)?,
                        insert_id: row.get(1)?,
                        distinct_id: row.get(2)?,
                        reason: row.get(3)?,
                    },
                    failed_at_ms: row.get(4)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn export_events(
        &self,
        project_id: i64,
        from_ms: i64,
        to_ms: i64,
        names: Option<Vec<String>>,
        limit: Option<i64>,
    ) -> StoreResult<Vec<NewEvent>> {
        self.read(move |conn| {
            let mut sql = String::from(
                "SELECT e.event, coalesce(l.canonical_id, e.distinct_id), e.time_ms, e.insert_id,
                        e.properties
                 FROM events e
                 LEFT JOIN identity_links l
                   ON l.project_id = e.project_id AND l.distinct_id = e.distinct_id
                 WHERE e.project_id = ?1 AND e.time_ms >= ?2 AND e.time_ms < ?3",
            );
            let mut values: Vec<rusqlite::types::Value> =
                vec![project_id.into(), from_ms.into(), to_ms.into()];
            if let Some(names) = &names {
                let placeholders: Vec<String> =
                    (0..names.len()).map(|i| format!("?{}", i + 4)).collect();
                sql.push_str(&format!(" AND e.event IN ({})", placeholders.join(", ")));
                values.extend(names.iter().cloned().map(rusqlite::types::Value::from));
            }
            sql.push_str(" ORDER BY e.time_ms, e.id");
            if let Some(limit) = limit {
                sql.push_str(&format!(" LIMIT {limit}"));
            }
            let mut stmt = conn.prepare(&sql)?;
            let rows = stmt.query_map(params_from_iter(values), event_columns)?;
            decode_events(rows)
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
            let rows = stmt.query_map(params![project_id, distinct_id, limit], event_columns)?;
            decode_events(rows)
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
                let distinct_id = if update.ignore_alias {
                    update.distinct_id.clone()
                } else {
                    resolve(&tx, project_id, &update.distinct_id)?
                };
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

    async fn apply_group_updates(
        &self,
        project_id: i64,
        updates: Vec<GroupUpdate>,
        now_ms: i64,
    ) -> StoreResult<WriteSummary> {
        self.write(move |conn| {
            let tx = conn.transaction()?;
            for update in &updates {
                let key = params![project_id, update.group_key, update.group_id];
                let current: Option<String> = tx
                    .query_row(
                        "SELECT properties FROM group_profiles
                         WHERE project_id = ?1 AND group_key = ?2 AND group_id = ?3",
                        key,
                        |row| row.get(0),
                    )
                    .optional()?;
                let mut properties: Map<String, Value> = match current {
                    Some(text) => serde_json::from_str(&text)?,
                    None => Map::new(),
                };
                if crate::ingest::engage::apply(&mut properties, &update.operation)
                    == crate::ingest::engage::Outcome::Deleted
                {
                    tx.execute(
                        "DELETE FROM group_profiles
                         WHERE project_id = ?1 AND group_key = ?2 AND group_id = ?3",
                        key,
                    )?;
                    continue;
                }
                tx.execute(
                    "INSERT INTO group_profiles (project_id, group_key, group_id, properties, updated_at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (project_id, group_key, group_id)
                     DO UPDATE SET properties = excluded.properties, updated_at_ms = excluded.updated_at_ms",
                    params![
                        project_id,
                        update.group_key,
                        update.group_id,
                        serde_json::to_string(&properties)?,
                        now_ms
                    ],
                )?;
            }
            tx.commit()?;
            Ok(WriteSummary { written: updates.len() })
        })
        .await
    }

    async fn group_profile(
        &self,
        project_id: i64,
        group_key: &str,
        group_id: &str,
    ) -> StoreResult<Option<Map<String, Value>>> {
        let (group_key, group_id) = (group_key.to_owned(), group_id.to_owned());
        self.read(move |conn| {
            let text: Option<String> = conn
                .query_row(
                    "SELECT properties FROM group_profiles
                     WHERE project_id = ?1 AND group_key = ?2 AND group_id = ?3",
                    params![project_id, group_key, group_id],
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

    async fn identity_links(&self, project_id: i64) -> StoreResult<HashMap<String, String>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT distinct_id, canonical_id FROM identity_links WHERE project_id = ?1",
            )?;
            let rows = stmt.query_map([project_id], |row| Ok((row.get(0)?, row.get(1)?)))?;
            Ok(rows.collect::<Result<_, _>>()?)
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

    async fn read_cohort_rows(
        &self,
        project_id: i64,
        builder: IndexBuilder,
        until_ms: i64,
    ) -> StoreResult<IndexBuilder> {
        self.read(move |conn| cohort_rows::read_cohort_rows(conn, project_id, builder, until_ms))
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

    async fn replace_project_secret(
        &self,
        project_id: i64,
        secret: ProjectSecret,
        encrypted: String,
        hash: String,
    ) -> StoreResult<()> {
        let (enc_column, hash_column) = secret.columns();
        self.write(move |conn| {
            let changed = conn.execute(
                &format!("UPDATE projects SET {enc_column} = ?2, {hash_column} = ?3 WHERE id = ?1"),
                params![project_id, encrypted, hash],
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

    async fn set_project_timezone(&self, project_id: i64, timezone: &str) -> StoreResult<()> {
        let timezone = timezone.to_owned();
        self.write(move |conn| {
            let tx = conn.transaction()?;
            let earlier = mtu_rollup::project_zone(&tx, project_id)?;
            let changed = tx.execute(
                "UPDATE projects SET timezone = ?2 WHERE id = ?1",
                params![project_id, timezone],
            )?;
            if changed == 0 {
                return Err(StoreError::NotFound {
                    what: "project",
                    id: project_id.to_string(),
                });
            }
            // Months start at local midnight, so a new zone moves events between months.
            if mtu_rollup::project_zone(&tx, project_id)? != earlier {
                mtu_rollup::rebuild(&tx, project_id)?;
            }
            tx.commit()?;
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

    async fn mtu_month(
        &self,
        project_id: i64,
        month: i64,
        distinct_ids: Option<Vec<String>>,
    ) -> StoreResult<MtuMonth> {
        // The report counts every event acknowledged before it started: their pending changes
        // are folded first.
        self.write(|conn| {
            let tx = conn.transaction()?;
            mtu_rollup::fold(&tx)?;
            tx.commit()?;
            Ok(())
        })
        .await?;
        self.read(move |conn| {
            let tx = conn.unchecked_transaction()?;
            let month = mtu_rollup::read_month(&tx, project_id, month, distinct_ids)?;
            tx.commit()?;
            Ok(month)
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
                format!("SELECT {COHORT_COLUMNS} FROM cohorts WHERE project_id = ?1 AND deleted_at_ms IS NULL ORDER BY id");
            let mut stmt = conn.prepare(&sql)?;
            let rows = stmt.query_map([project_id], cohort_from_row)?;
            rows.map(|row| parse_cohort(row?)).collect()
        })
        .await
    }

    async fn cohort(&self, project_id: i64, id: i64) -> StoreResult<Option<Cohort>> {
        self.read(move |conn| {
            let sql =
                format!("SELECT {COHORT_COLUMNS} FROM cohorts WHERE project_id = ?1 AND id = ?2 AND deleted_at_ms IS NULL");
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
                     data_import_key_enc, user_id_property, created_at_ms, delivery, attribute_name)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    project_id,
                    connection.name,
                    connection.instance,
                    connection.base_url,
                    connection.data_import_key_enc,
                    connection.user_id_property,
                    now_ms,
                    connection.delivery,
                    connection.attribute_name
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
                 VALUES (?1, ?2, ?3, ?4, ?5, 'active',
                         CASE WHEN ?4 = 'dynamic' THEN ?6 + ?5 * 1000 END, ?6)",
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
                "UPDATE syncs SET status = ?2, status_reason = ?3, next_run_at_ms = ?4,
                     paused_by = CASE WHEN ?2 = 'paused' THEN paused_by ELSE NULL END
                 WHERE id = ?1",
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
                 WHERE status = 'active'
                   AND next_run_at_ms IS NOT NULL AND next_run_at_ms <= ?1
                   AND (lease_expires_at_ms IS NULL OR lease_expires_at_ms < ?1)
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
        self.write(move |conn| write_run_counts(conn, run_id, &counts))
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
                     skipped = ?6, requests = ?7, error = ?8, finished_at_ms = ?9,
                     unchanged = ?10, retries = ?11 WHERE id = ?1",
                params![
                    run_id,
                    status,
                    counts.members,
                    counts.added,
                    counts.removed,
                    counts.skipped,
                    counts.requests,
                    error,
                    now_ms,
                    counts.unchanged,
                    counts.retries
                ],
            )?;
            run_by_id(conn, run_id)
        })
        .await
    }

    async fn fail_interrupted_runs(&self, node_id: &str, now_ms: i64) -> StoreResult<usize> {
        let node_id = node_id.to_owned();
        self.write(move |conn| {
            let tx = conn.transaction()?;
            // A sync whose run is cut short here runs again at once, so that Braze does not
            // keep a partial cohort until the next run of its cadence.
            tx.execute(
                "UPDATE syncs SET next_run_at_ms = ?2
                 WHERE status = 'active'
                   AND id IN (SELECT sync_id FROM sync_runs WHERE status = 'running')
                   AND (lease_owner IS NULL OR lease_owner = ?1 OR lease_expires_at_ms < ?2)",
                params![node_id, now_ms],
            )?;
            let interrupted = tx.execute(
                "UPDATE sync_runs SET status = 'failed', finished_at_ms = ?2, error = ?3
                 WHERE status = 'running' AND sync_id IN (
                     SELECT id FROM syncs
                     WHERE lease_owner IS NULL OR lease_owner = ?1 OR lease_expires_at_ms < ?2)",
                params![node_id, now_ms, INTERRUPTED],
            )?;
            tx.execute(
                "UPDATE syncs SET lease_owner = NULL, lease_expires_at_ms = NULL
                 WHERE lease_owner = ?1",
                [&node_id],
            )?;
            tx.execute(
                "UPDATE connections SET turn_owner = NULL, turn_expires_at_ms = NULL
                 WHERE turn_owner = ?1",
                [&node_id],
            )?;
            // A once sync has no next run: it runs now, and completes when that run succeeds.
            tx.execute(
                "UPDATE syncs SET next_run_at_ms = ?1
                 WHERE status = 'active' AND next_run_at_ms IS NULL",
                [now_ms],
            )?;
            tx.commit()?;
            Ok(interrupted)
        })
        .await
    }

    async fn lease_sync(
        &self,
        id: i64,
        node_id: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> StoreResult<bool> {
        let node_id = node_id.to_owned();
        self.write(move |conn| {
            let tx = conn.transaction()?;
            let leased = tx.execute(
                "UPDATE syncs SET lease_owner = ?2, lease_expires_at_ms = ?3 + ?4
                 WHERE id = ?1
                   AND (lease_owner IS NULL OR lease_owner = ?2 OR lease_expires_at_ms < ?3)",
                params![id, node_id, now_ms, lease_ms],
            )?;
            if leased == 0 {
                return Ok(false);
            }
            // A run still marked running belongs to a node that lost this lease: it will never
            // finish.
            tx.execute(
                "UPDATE sync_runs SET status = 'failed', finished_at_ms = ?2, error = ?3
                 WHERE sync_id = ?1 AND status = 'running'",
                params![id, now_ms, INTERRUPTED],
            )?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn renew_sync_lease(
        &self,
        id: i64,
        node_id: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> StoreResult<bool> {
        let node_id = node_id.to_owned();
        self.write(move |conn| {
            let changed = conn.execute(
                "UPDATE syncs SET lease_expires_at_ms = ?3 + ?4 WHERE id = ?1 AND lease_owner = ?2",
                params![id, node_id, now_ms, lease_ms],
            )?;
            Ok(changed > 0)
        })
        .await
    }

    async fn release_sync_lease(&self, id: i64, node_id: &str) -> StoreResult<()> {
        let node_id = node_id.to_owned();
        self.write(move |conn| {
            conn.execute(
                "UPDATE syncs SET lease_owner = NULL, lease_expires_at_ms = NULL
                 WHERE id = ?1 AND lease_owner = ?2",
                params![id, node_id],
            )?;
            Ok(())
        })
        .await
    }

    async fn take_connection_turn(
        &self,
        id: i64,
        node_id: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> StoreResult<bool> {
        let node_id = node_id.to_owned();
        self.write(move |conn| {
            let taken = conn.execute(
                "UPDATE connections SET turn_owner = ?2, turn_expires_at_ms = ?3 + ?4
                 WHERE id = ?1
                   AND (turn_owner IS NULL OR turn_owner = ?2 OR turn_expires_at_ms < ?3)",
                params![id, node_id, now_ms, lease_ms],
            )?;
            Ok(taken > 0)
        })
        .await
    }

    async fn renew_connection_turn(
        &self,
        id: i64,
        node_id: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> StoreResult<bool> {
        let node_id = node_id.to_owned();
        self.write(move |conn| {
            let changed = conn.execute(
                "UPDATE connections SET turn_expires_at_ms = ?3 + ?4
                 WHERE id = ?1 AND turn_owner = ?2",
                params![id, node_id, now_ms, lease_ms],
            )?;
            Ok(changed > 0)
        })
        .await
    }

    async fn release_connection_turn(&self, id: i64, node_id: &str) -> StoreResult<()> {
        let node_id = node_id.to_owned();
        self.write(move |conn| {
            conn.execute(
                "UPDATE connections SET turn_owner = NULL, turn_expires_at_ms = NULL
                 WHERE id = ?1 AND turn_owner = ?2",
                params![id, node_id],
            )?;
            Ok(())
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

    async fn braze_members(&self, connection_id: i64, cohort_id: i64) -> StoreResult<IdSet> {
        self.read(move |conn| external_ids(conn, "braze_members", connection_id, cohort_id))
            .await
    }

    async fn braze_pending(&self, connection_id: i64, cohort_id: i64) -> StoreResult<IdSet> {
        self.read(move |conn| external_ids(conn, "braze_pending", connection_id, cohort_id))
            .await
    }

    async fn record_braze_progress(
        &self,
        connection_id: i64,
        cohort_id: i64,
        progress: BrazeProgress,
    ) -> StoreResult<()> {
        self.write(move |conn| {
            let tx = conn.transaction()?;
            let key = (connection_id, cohort_id);
            for_id_chunks(&tx, key, &ids(&progress.acknowledged_adds), |n| {
                format!(
                    "INSERT INTO braze_members (connection_id, cohort_id, external_id) VALUES {}
                     ON CONFLICT DO NOTHING",
                    placeholders("(?1, ?2, ?)", n)
                )
            })?;
            for_id_chunks(&tx, key, &ids(&progress.acknowledged_removes), |n| {
                format!(
                    "DELETE FROM braze_members
                     WHERE connection_id = ?1 AND cohort_id = ?2 AND external_id IN ({})",
                    placeholders("?", n)
                )
            })?;
            let settled: Vec<&str> = progress
                .acknowledged_adds
                .iter()
                .chain(progress.acknowledged_removes.iter())
                .collect();
            for_id_chunks(&tx, key, &settled, |n| {
                format!(
                    "DELETE FROM braze_pending
                     WHERE connection_id = ?1 AND cohort_id = ?2 AND external_id IN ({})",
                    placeholders("?", n)
                )
            })?;
            for_id_chunks(&tx, key, &ids(&progress.pending), |n| {
                format!(
                    "INSERT INTO braze_pending (connection_id, cohort_id, external_id) VALUES {}
                     ON CONFLICT DO NOTHING",
                    placeholders("(?1, ?2, ?)", n)
                )
            })?;
            if let Some((run_id, counts)) = &progress.run_counts {
                write_run_counts(&tx, *run_id, counts)?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn rename_cohort(
        &self,
        project_id: i64,
        id: i64,
        name: &str,
        now_ms: i64,
    ) -> StoreResult<Option<Cohort>> {
        let name = name.to_owned();
        self.write(move |conn| {
            let changed = conn.execute(
                "UPDATE cohorts SET name = ?3, updated_at_ms = ?4
                 WHERE project_id = ?1 AND id = ?2 AND deleted_at_ms IS NULL",
                params![project_id, id, name, now_ms],
            )?;
            if changed == 0 {
                return Ok(None);
            }
            let sql = format!("SELECT {COHORT_COLUMNS} FROM cohorts WHERE id = ?1");
            Ok(Some(parse_cohort(conn.query_row(
                &sql,
                [id],
                cohort_from_row,
            )?)?))
        })
        .await
    }

    async fn delete_cohort(&self, project_id: i64, id: i64, now_ms: i64) -> StoreResult<bool> {
        self.write(move |conn| {
            let changed = conn.execute(
                "UPDATE cohorts SET deleted_at_ms = ?3
                 WHERE project_id = ?1 AND id = ?2 AND deleted_at_ms IS NULL",
                params![project_id, id, now_ms],
            )?;
            Ok(changed > 0)
        })
        .await
    }

    async fn rename_connection(&self, id: i64, name: &str) -> StoreResult<Connection> {
        let name = name.to_owned();
        self.write(move |conn| {
            match conn.execute(
                "UPDATE connections SET name = ?2 WHERE id = ?1",
                params![id, name],
            ) {
                Err(e) if is_unique_violation(&e) => {
                    return Err(StoreError::Conflict {
                        what: "connection",
                        value: name.clone(),
                    })
                }
                other => other?,
            };
            let sql = format!("SELECT {CONNECTION_COLUMNS} FROM connections WHERE id = ?1");
            conn.query_row(&sql, [id], connection_from_row)
                .optional()?
                .ok_or(StoreError::NotFound {
                    what: "connection",
                    id: id.to_string(),
                })
        })
        .await
    }

    async fn replace_data_import_key(
        &self,
        id: i64,
        data_import_key_enc: &str,
    ) -> StoreResult<Connection> {
        let key = data_import_key_enc.to_owned();
        self.write(move |conn| {
            conn.execute(
                "UPDATE connections SET data_import_key_enc = ?2, disconnected_at_ms = NULL
                 WHERE id = ?1",
                params![id, key],
            )?;
            let sql = format!("SELECT {CONNECTION_COLUMNS} FROM connections WHERE id = ?1");
            conn.query_row(&sql, [id], connection_from_row)
                .optional()?
                .ok_or(StoreError::NotFound {
                    what: "connection",
                    id: id.to_string(),
                })
        })
        .await
    }

    async fn disconnect_connection(&self, id: i64, reason: &str, now_ms: i64) -> StoreResult<()> {
        let reason = reason.to_owned();
        self.write(move |conn| {
            let tx = conn.transaction()?;
            tx.execute(
                "UPDATE connections SET disconnected_at_ms = ?2 WHERE id = ?1",
                params![id, now_ms],
            )?;
            tx.execute(
                "UPDATE syncs SET status = 'paused', status_reason = ?2, paused_by = 'connection',
                     next_run_at_ms = NULL
                 WHERE connection_id = ?1 AND mode = 'dynamic' AND status IN ('active', 'paused')
                   AND (paused_by IS NULL OR paused_by <> 'operator')",
                params![id, reason],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn settle_sync(
        &self,
        id: i64,
        status: &str,
        reason: Option<&str>,
        paused_by: Option<&str>,
        next_run_at_ms: Option<i64>,
    ) -> StoreResult<bool> {
        let (status, reason, paused_by) = (
            status.to_owned(),
            reason.map(str::to_owned),
            paused_by.map(str::to_owned),
        );
        self.write(move |conn| {
            let changed = conn.execute(
                "UPDATE syncs SET status = ?2, status_reason = ?3, paused_by = ?4,
                     next_run_at_ms = ?5
                 WHERE id = ?1 AND status = 'active'",
                params![id, status, reason, paused_by, next_run_at_ms],
            )?;
            Ok(changed > 0)
        })
        .await
    }

    async fn pause_sync(&self, id: i64, reason: &str, paused_by: &str) -> StoreResult<()> {
        let (reason, paused_by) = (reason.to_owned(), paused_by.to_owned());
        self.write(move |conn| {
            conn.execute(
                "UPDATE syncs SET status = 'paused', status_reason = ?2, paused_by = ?3,
                     next_run_at_ms = NULL
                 WHERE id = ?1",
                params![id, reason, paused_by],
            )?;
            Ok(())
        })
        .await
    }

    async fn set_run_trigger(&self, run_id: i64, trigger: &str) -> StoreResult<()> {
        let trigger = trigger.to_owned();
        self.write(move |conn| {
            conn.execute(
                "UPDATE sync_runs SET trigger = ?2 WHERE id = ?1",
                params![run_id, trigger],
            )?;
            Ok(())
        })
        .await
    }

    async fn run(&self, run_id: i64) -> StoreResult<Option<SyncRun>> {
        self.read(move |conn| match run_by_id(conn, run_id) {
            Ok(run) => Ok(Some(run)),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        })
        .await
    }

    async fn record_run_operations(
        &self,
        run_id: i64,
        first_seq: i64,
        operations: Vec<RunOperation>,
    ) -> StoreResult<()> {
        self.write(move |conn| {
            let tx = conn.transaction()?;
            let mut seq = first_seq;
            for rows in operations.chunks(OPERATION_ROWS_PER_INSERT) {
                // One statement inserts many rows, which SQLite runs faster than one
                // statement per row.
                let (mut cached, mut fresh);
                let insert: &mut rusqlite::Statement<'_> =
                    if rows.len() == OPERATION_ROWS_PER_INSERT {
                        cached = tx.prepare_cached(&INSERT_FULL_OPERATIONS_CHUNK)?;
                        &mut cached
                    } else {
                        fresh = tx.prepare(&insert_operations_sql(rows.len()))?;
                        &mut fresh
                    };
                let mut values: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(rows.len() * 6);
                let seqs: Vec<i64> = (seq..seq + rows.len() as i64).collect();
                for (op, seq) in rows.iter().zip(&seqs) {
                    values.extend([
                        &run_id as &dyn rusqlite::ToSql,
                        seq,
                        &op.distinct_id,
                        &op.external_id,
                        &op.operation,
                        &op.reason,
                    ]);
                }
                insert.execute(values.as_slice())?;
                seq += rows.len() as i64;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn previous_holders(
        &self,
        connection_id: i64,
        cohort_id: i64,
        before_run_id: i64,
        ids: IdSet,
    ) -> StoreResult<Vec<Option<String>>> {
        self.read(move |conn| {
            let mut holders = vec![None; ids.len()];
            let previous: Option<i64> = conn
                .query_row(
                    "SELECT r.id FROM sync_runs r JOIN syncs s ON s.id = r.sync_id
                     WHERE s.connection_id = ?1 AND s.cohort_id = ?2 AND r.id < ?3
                       AND EXISTS (SELECT 1 FROM sync_run_operations o WHERE o.run_id = r.id)
                     ORDER BY r.id DESC LIMIT 1",
                    params![connection_id, cohort_id, before_run_id],
                    |row| row.get(0),
                )
                .optional()?;
            let Some(previous) = previous else {
                return Ok(holders);
            };
            let mut stmt = conn.prepare(
                "SELECT external_id, distinct_id FROM sync_run_operations
                 WHERE run_id = ?1 AND external_id IS NOT NULL AND distinct_id IS NOT NULL
                 ORDER BY seq",
            )?;
            let mut rows = stmt.query([previous])?;
            while let Some(row) = rows.next()? {
                let external_id = row.get_ref(0)?.as_str().map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(0, Type::Text, Box::new(e))
                })?;
                if let Some(index) = ids.index_of(external_id) {
                    if holders[index].is_none() {
                        holders[index] = Some(row.get(1)?);
                    }
                }
            }
            Ok(holders)
        })
        .await
    }

    async fn run_operations(&self, run_id: i64) -> StoreResult<Vec<RunOperation>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT distinct_id, external_id, operation, reason FROM sync_run_operations
                 WHERE run_id = ?1 ORDER BY seq",
            )?;
            let rows = stmt.query_map([run_id], |row| {
                Ok(RunOperation {
                    distinct_id: row.get(0)?,
                    external_id: row.get(1)?,
                    operation: row.get(2)?,
                    reason: row.get(3)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn prune_run_operations(&self, sync_id: i64, keep: usize) -> StoreResult<u64> {
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        self.write(move |conn| {
            let deleted = conn.execute(
                "DELETE FROM sync_run_operations WHERE run_id IN (
                     SELECT id FROM sync_runs WHERE sync_id = ?1
                     ORDER BY id DESC LIMIT -1 OFFSET ?2)",
                params![sync_id, keep],
            )?;
            Ok(deleted as u64)
        })
        .await
    }

    // Accounts of the web UI and the admin API; the SQL is in `sqlite/accounts.rs`.

    async fn create_user(&self, user: NewUser, now_ms: i64) -> StoreResult<User> {
        self.write(move |conn| accounts::create_user(conn, user, now_ms))
            .await
    }

    async fn list_users(&self) -> StoreResult<Vec<User>> {
        self.read(accounts::list_users).await
    }

    async fn user_by_email(&self, email: &str) -> StoreResult<Option<User>> {
        let email = email.to_owned();
        self.read(move |conn| accounts::user_where(conn, "email = ?1", &email))
            .await
    }

    async fn create_session(&self, session: NewSession) -> StoreResult<()> {
        self.write(move |conn| accounts::create_session(conn, session))
            .await
    }

    async fn session(&self, token_hash: &str, now_ms: i64) -> StoreResult<Option<(User, String)>> {
        let token_hash = token_hash.to_owned();
        self.read(move |conn| accounts::session(conn, &token_hash, now_ms))
            .await
    }

    async fn delete_session(&self, token_hash: &str) -> StoreResult<()> {
        let token_hash = token_hash.to_owned();
        self.write(move |conn| accounts::delete_session(conn, &token_hash))
            .await
    }

    async fn create_user_api_key(
        &self,
        user_id: i64,
        name: &str,
        key_hash: &str,
        now_ms: i64,
    ) -> StoreResult<UserApiKey> {
        let (name, key_hash) = (name.to_owned(), key_hash.to_owned());
        self.write(move |conn| accounts::create_api_key(conn, user_id, name, key_hash, now_ms))
            .await
    }

    async fn user_by_api_key_hash(&self, key_hash: &str) -> StoreResult<Option<User>> {
        let key_hash = key_hash.to_owned();
        self.read(move |conn| accounts::user_by_api_key_hash(conn, &key_hash))
            .await
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn page_size(path: &Path) -> i64 {
        let conn = SqlConnection::open(path).unwrap();
        conn.pragma_query_value(None, "page_size", |row| row.get(0))
            .unwrap()
    }

    #[test]
    fn new_file_page_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.db");
        let _store = SqliteStore::open(&path).unwrap();
        assert_eq!(page_size(&path), NEW_FILE_PAGE_SIZE);
    }

    /// A project with placeholder credentials, for tests that only need one to exist.
    pub(in crate::store) fn test_project() -> NewProject {
        NewProject {
            name: "p".into(),
            token: "t".into(),
            api_secret_enc: "s".into(),
            api_secret_hash: "sh".into(),
            currents_token_enc: "c".into(),
            currents_token_hash: "ch".into(),
        }
    }

    #[tokio::test]
    async fn wal_is_checkpointed_off_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let store = SqliteStore::open_with_checkpoint(&path, 1024 * 1024).unwrap();
        let automatic: i64 = store
            .writer
            .lock()
            .unwrap()
            .pragma_query_value(None, "wal_autocheckpoint", |row| row.get(0))
            .unwrap();
        assert_eq!(automatic, 0, "SQLite's own checkpoint must be off");
        let file_before = std::fs::metadata(&path).unwrap().len();

        let project = store.create_project(test_project()).await.unwrap();
        let events: Vec<NewEvent> = (0..1000)
            .map(|i| NewEvent {
                event: "e".into(),
                distinct_id: format!("user-{i}"),
                time_ms: 1_700_000_000_000 + i,
                insert_id: format!("id-{i}"),
                properties: serde_json::json!({"padding": "x".repeat(200)})
                    .as_object()
                    .unwrap()
                    .clone(),
            })
            .collect();
        store
            .write_events(project.id, events, Vec::new(), 1_700_000_000_000)
            .await
            .unwrap();

        // The checkpoint thread copies pages into the database file, which only a checkpoint
        // writes in WAL mode.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::metadata(&path).unwrap().len() <= file_before {
            assert!(
                std::time::Instant::now() < deadline,
                "no checkpoint copied the WAL into the database file"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(std::fs::metadata(&path).unwrap().len() > 256 * 1024);
    }

    /// A `sync_run_operations` row: run, sequence, distinct id, external id, operation, reason.
    type OperationRow = (
        i64,
        i64,
        Option<String>,
        Option<String>,
        String,
        Option<String>,
    );

    #[test]
    fn sync_rows_keep_through_clustering_migration() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        drop(SqliteStore::open(&path).unwrap());
        {
            // Put the three tables back in their earlier rowid shape, with rows, as a file
            // from before the migration has them. Foreign keys are off only so that the run
            // needs no sync; the migration checks that each operation's run exists.
            let conn = SqlConnection::open(&path).unwrap();
            conn.execute_batch(
                "PRAGMA foreign_keys = OFF;
                 DROP TABLE sync_run_operations; DROP TABLE braze_members; DROP TABLE braze_pending;
                 CREATE TABLE sync_run_operations (
                     run_id INTEGER NOT NULL REFERENCES sync_runs(id), seq INTEGER NOT NULL,
                     distinct_id TEXT, external_id TEXT,
                     operation TEXT NOT NULL CHECK (operation IN ('add', 'remove', 'no-op', 'skipped')),
                     reason TEXT, PRIMARY KEY (run_id, seq));
                 CREATE TABLE braze_members (connection_id INTEGER NOT NULL,
                     cohort_id INTEGER NOT NULL, external_id TEXT NOT NULL,
                     PRIMARY KEY (connection_id, cohort_id, external_id));
                 CREATE TABLE braze_pending (connection_id INTEGER NOT NULL,
                     cohort_id INTEGER NOT NULL, external_id TEXT NOT NULL,
                     PRIMARY KEY (connection_id, cohort_id, external_id));
                 INSERT INTO sync_runs (id, sync_id, started_at_ms, status)
                     VALUES (7, 1, 0, 'succeeded');
                 INSERT INTO sync_run_operations VALUES
                     (7, 0, 'u1', 'ext-ü', 'add', NULL), (7, 1, 'u2', NULL, 'skipped', 'no profile');
                 INSERT INTO braze_members VALUES (1, 2, 'ext-ü'), (1, 2, 'b');
                 INSERT INTO braze_pending VALUES (1, 2, 'c');
                 DELETE FROM schema_migrations WHERE name = '0013_sync_rows_without_rowid';",
            )
            .unwrap();
        }

        let store = SqliteStore::open(&path).unwrap();
        let conn = store.writer.lock().unwrap();
        for table in ["sync_run_operations", "braze_members", "braze_pending"] {
            let sql: String = conn
                .query_row(
                    "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?1",
                    [table],
                    |row| row.get(0),
                )
                .unwrap();
            assert!(sql.ends_with("WITHOUT ROWID"), "{table}: {sql}");
        }

        let operations: Vec<OperationRow> = conn
            .prepare("SELECT * FROM sync_run_operations ORDER BY run_id, seq")
            .unwrap()
            .query_map([], |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                    row.get(5)?,
                ))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            operations,
            vec![
                (
                    7,
                    0,
                    Some("u1".into()),
                    Some("ext-ü".into()),
                    "add".into(),
                    None
                ),
                (
                    7,
                    1,
                    Some("u2".into()),
                    None,
                    "skipped".into(),
                    Some("no profile".into())
                ),
            ]
        );

        let members: Vec<String> = conn
            .prepare("SELECT external_id FROM braze_members WHERE connection_id = 1 AND cohort_id = 2 ORDER BY external_id")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(members, ["b", "ext-ü"]);
        let pending: String = conn
            .query_row("SELECT external_id FROM braze_pending", [], |row| {
                row.get(0)
            })
            .unwrap();
        assert_eq!(pending, "c");

        let duplicate = conn.execute("INSERT INTO braze_members VALUES (1, 2, 'b')", []);
        assert!(
            duplicate.is_err(),
            "the primary key still rejects duplicates"
        );
    }

    #[test]
    fn existing_file_keeps_its_page_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let conn = SqlConnection::open(&path).unwrap();
            conn.pragma_update(None, "page_size", 4096).unwrap();
            conn.pragma_update(None, "journal_mode", "WAL").unwrap();
            conn.execute_batch("CREATE TABLE earlier (x INTEGER)")
                .unwrap();
        }
        let _store = SqliteStore::open(&path).unwrap();
        assert_eq!(page_size(&path), 4096);
    }
}
