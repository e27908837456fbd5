//! Durable state behind one interface: projects, events, identity links, profiles, cohorts,
//! Braze connections, syncs and what Braze has acknowledged.
//!
//! Every write method returns only after its transaction is committed to disk, so the API layer
//! may acknowledge a request as soon as the call returns.
//!
//! Two backends implement the interface: an embedded SQLite file (the default) and PostgreSQL,
//! which several server processes can share. [`open`] picks one from the configuration.

mod database;
mod encoded;
mod id_set;
mod postgres;
mod sqlite;

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::cohorts::rows::IndexBuilder;
pub use database::{open, redact_url, Database, DatabaseUrlError};
pub use encoded::{EncodedEvent, EncodedEvents, EncodedEventsBuilder};
pub use id_set::{IdSet, IdSetBuilder};
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("PostgreSQL error: {}", postgres_message(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("no PostgreSQL connection available: {0}")]
    Pool(deadpool_postgres::PoolError),
    #[error("stored JSON is invalid: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    #[error("{what} {value:?} already exists")]
    Conflict { what: &'static str, value: String },
    #[error("storage task failed: {0}")]
    Task(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

impl From<deadpool_postgres::PoolError> for StoreError {
    /// Unwraps a failed connection attempt, whose own text already states what failed.
    fn from(error: deadpool_postgres::PoolError) -> Self {
        match error {
            deadpool_postgres::PoolError::Backend(e) => StoreError::Postgres(e),
            other => StoreError::Pool(other),
        }
    }
}

/// Describes a PostgreSQL error with the server's SQLSTATE and message, which the error's own
/// text (`db error`) leaves out.
fn postgres_message(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => error.to_string(),
    }
}

/// A project with its secrets still encrypted.
#[derive(Debug, Clone)]
pub struct Project {
    pub id: i64,
    pub name: String,
    pub token: String,
    pub api_secret_enc: String,
    pub currents_token_enc: String,
    pub created_at_ms: i64,
}

/// Fields of a project to create; secrets arrive encrypted and hashed.
#[derive(Debug, Clone)]
pub struct NewProject {
    pub name: String,
    pub token: String,
    pub api_secret_enc: String,
    pub api_secret_hash: String,
    pub currents_token_enc: String,
    pub currents_token_hash: String,
}

/// An extra `/import` credential. Its secret is stored only as a hash.
#[derive(Debug, Clone, Serialize)]
pub struct ImportCredential {
    pub id: i64,
    pub project_id: i64,
    pub name: String,
    /// Set on every event imported with this credential, such as `braze`.
    pub partner_id: Option<String>,
    pub created_at_ms: i64,
}

#[derive(Debug, Clone)]
pub struct NewImportCredential {
    pub name: String,
    pub secret_hash: String,
    pub partner_id: Option<String>,
}

/// A validated event ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub event: String,
    pub distinct_id: String,
    pub time_ms: i64,
    pub insert_id: String,
    pub properties: Map<String, Value>,
}

impl NewEvent {
    /// Returns the `$partner_id` property, which marks events that a partner such as Braze sent.
    pub fn partner_id(&self) -> Option<&str> {
        self.properties.get("$partner_id").and_then(Value::as_str)
    }
}

/// A credential of a project that the server generates and keeps only encrypted and hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProjectSecret {
    /// The API secret, which `/import` and the query APIs accept.
    ApiSecret,
    /// The bearer token that Braze Currents sends to `/currents`.
    CurrentsToken,
}

impl ProjectSecret {
    /// Returns the `projects` columns that contain the encrypted value and the hash.
    fn columns(self) -> (&'static str, &'static str) {
        match self {
            ProjectSecret::ApiSecret => ("api_secret_enc", "api_secret_hash"),
            ProjectSecret::CurrentsToken => ("currents_token_enc", "currents_token_hash"),
        }
    }
}

/// A Simplified ID Merge link from a `$device:` id to a `$user_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityLink {
    pub distinct_id: String,
    pub canonical_id: String,
}

/// One `/engage` update, already validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileUpdate {
    pub distinct_id: String,
    pub operation: ProfileOperation,
    /// Milliseconds for `$last_seen`, or `None` when `$ignore_time` was set.
    pub last_seen_ms: Option<i64>,
    /// `$ignore_alias`: the update applies to the distinct id as sent, not to the user that
    /// the identity links resolve it to.
    pub ignore_alias: bool,
}

/// The kind of Original ID Merge event that merges two clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeKind {
    /// `$identify`: the anonymous id must not be merged yet.
    Identify,
    /// `$create_alias`: the alias must not be merged yet.
    CreateAlias,
    /// `$merge`: any two clusters.
    Merge,
}

/// A merge that an Original ID Merge event requests: the cluster of `from` joins the cluster of
/// `into`, whose canonical id stays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeRequest {
    pub event: String,
    pub insert_id: String,
    pub distinct_id: String,
    pub kind: MergeKind,
    pub from: String,
    pub into: String,
}

/// A merge that did not happen, recorded with the event that asked for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IdentityFailure {
    pub event: String,
    pub insert_id: String,
    pub distinct_id: String,
    pub reason: String,
}

/// A recorded identity failure, as the admin API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct StoredIdentityFailure {
    #[serde(flatten)]
    pub failure: IdentityFailure,
    pub failed_at_ms: i64,
}

/// One `/groups` update, already validated.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupUpdate {
    /// The event property that names the group, such as `company`.
    pub group_key: String,
    pub group_id: String,
    pub operation: ProfileOperation,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ProfileOperation {
    Set(Map<String, Value>),
    SetOnce(Map<String, Value>),
    Add(Map<String, Value>),
    Append(Map<String, Value>),
    Union(Map<String, Value>),
    Remove(Map<String, Value>),
    Unset(Vec<String>),
    Delete,
}

#[derive(Debug, Clone, Serialize)]
pub struct Cohort {
    pub id: i64,
    pub project_id: i64,
    pub name: String,
    pub definition: Value,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// A Braze connection with its Data Import Key still encrypted.
#[derive(Debug, Clone)]
pub struct Connection {
    pub id: i64,
    pub project_id: i64,
    pub name: String,
    pub instance: String,
    pub base_url: String,
    pub data_import_key_enc: String,
    pub user_id_property: String,
    pub created_at_ms: i64,
    /// Set while the connection is disconnected; its syncs stay paused until a reconnect.
    pub disconnected_at_ms: Option<i64>,
    /// `cohort_import` or `attributes`. In `attributes` mode `data_import_key_enc` contains the
    /// workspace's REST API key.
    pub delivery: String,
    /// The array custom attribute that contains cohort names, in `attributes` mode.
    pub attribute_name: Option<String>,
}

#[derive(Debug, Clone)]
pub struct NewConnection {
    pub name: String,
    pub instance: String,
    pub base_url: String,
    pub data_import_key_enc: String,
    pub user_id_property: String,
    /// `cohort_import` or `attributes`.
    pub delivery: String,
    pub attribute_name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    Once,
    Dynamic,
}

impl SyncMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncMode::Once => "once",
            SyncMode::Dynamic => "dynamic",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Sync {
    pub id: i64,
    pub project_id: i64,
    pub cohort_id: i64,
    pub connection_id: i64,
    pub mode: SyncMode,
    pub interval_secs: Option<i64>,
    /// `active`, `paused`, `completed`, `failed` or `removed`.
    pub status: String,
    pub status_reason: Option<String>,
    pub next_run_at_ms: Option<i64>,
    pub created_at_ms: i64,
    /// Cause of a pause: `operator`, `connection` or `error`, and `None` unless paused.
    pub paused_by: Option<String>,
}

/// The counters of one sync run.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct RunCounts {
    pub members: i64,
    pub added: i64,
    pub removed: i64,
    pub skipped: i64,
    pub requests: i64,
    /// Ids already in Braze that the run left alone.
    pub unchanged: i64,
    /// Braze requests resent after a retryable failure.
    pub retries: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SyncRun {
    pub id: i64,
    pub sync_id: i64,
    pub started_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    /// `running`, `succeeded` or `failed`.
    pub status: String,
    #[serde(flatten)]
    pub counts: RunCounts,
    pub error: Option<String>,
    /// Cause of the run: `manual`, `schedule`, `export` or `removal`.
    pub trigger: String,
}

/// One planned operation of a run, for one member or for one removed id.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RunOperation {
    /// `None` for a remove, because the member who held the id may no longer exist.
    pub distinct_id: Option<String>,
    pub external_id: Option<String>,
    /// `add`, `remove`, `no-op` or `skipped`.
    pub operation: String,
    /// Reason a member was skipped.
    pub reason: Option<String>,
}

/// One step of a run's record of what Braze holds: the adds and removes of the request Braze
/// just acknowledged, and the ids of the request about to be sent.
#[derive(Debug, Clone, Default)]
pub struct BrazeProgress {
    pub acknowledged_adds: IdSet,
    pub acknowledged_removes: IdSet,
    pub pending: IdSet,
    /// The run that sent the acknowledged request and its counts with that request included,
    /// written in the same transaction, so that an interrupted run reports what Braze holds.
    pub run_counts: Option<(i64, RunCounts)>,
}

/// Braze's acknowledged record of one cohort in one connection's workspace.
#[derive(Debug, Clone)]
pub struct BrazeCohort {
    pub braze_cohort_id: String,
    pub name_sent: String,
}

/// Everything the cohort evaluator reads, loaded once per evaluation.
#[derive(Debug, Default)]
pub struct CohortInputs {
    /// `$device:` id to the `$user_id` it was merged into.
    pub links: HashMap<String, String>,
    /// Profile properties by the distinct id they were stored under.
    pub profiles: HashMap<String, Map<String, Value>>,
    /// Every distinct id that has an event, except the empty id.
    pub event_distinct_ids: HashSet<String>,
}

/// Events that share a distinct id, a name, a `$partner_id` and an ingestion path, with
/// their number.
/// Events of one distinct id, name, `$partner_id` and ingestion path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MtuEventGroup {
    pub distinct_id: String,
    pub event: String,
    pub partner_id: Option<String>,
    /// Whether the events came through `/import` (they carry `$import: true`).
    pub imported: bool,
    pub count: i64,
}

/// What decides whether an event counts towards MTU, apart from its user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MtuKey {
    pub event: String,
    pub partner_id: Option<String>,
    pub imported: bool,
}

/// The events of one key and one user in a month.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MtuCell {
    /// An index into [`MtuMonth::keys`].
    pub key: u32,
    /// The user the events belong to after identity resolution, as a number that is unique
    /// within one [`MtuMonth`]; `None` for events of the empty distinct id.
    pub user: Option<i64>,
    pub events: i64,
}

/// A month of events reduced to what the MTU report needs: event counts per key and user,
/// with users already resolved through the identity links.
#[derive(Debug, Clone, Default)]
pub struct MtuMonth {
    pub keys: Vec<MtuKey>,
    pub cells: Vec<MtuCell>,
}

impl MtuMonth {
    /// Builds a month from event groups, resolving each distinct id through `links`.
    pub fn from_groups(groups: Vec<MtuEventGroup>, links: &HashMap<String, String>) -> Self {
        let mut month = MtuMonth::default();
        let mut key_index: HashMap<MtuKey, u32> = HashMap::new();
        let mut users: HashMap<String, i64> = HashMap::new();
        for group in groups {
            let key = MtuKey {
                event: group.event,
                partner_id: group.partner_id,
                imported: group.imported,
            };
            let next = month.keys.len() as u32;
            let key = *key_index.entry(key.clone()).or_insert_with(|| {
                month.keys.push(key);
                next
            });
            let user = if group.distinct_id.is_empty() {
                None
            } else {
                let canonical = crate::identity::canonical(links, &group.distinct_id);
                let next = users.len() as i64;
                Some(*users.entry(canonical.to_owned()).or_insert(next))
            };
            month.cells.push(MtuCell {
                key,
                user,
                events: group.count,
            });
        }
        month
    }
}

/// The inputs of a cohort evaluation, read in one read transaction so that events, links and
/// profiles come from the same moment.
#[derive(Debug, Default)]
pub struct CohortSnapshot {
    pub inputs: CohortInputs,
    /// Events with one of the requested names at or before the requested instant, in storage
    /// order. Their `insert_id` is empty, and their properties are empty unless requested.
    pub events: Vec<NewEvent>,
}

/// Counts of one import or track request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteSummary {
    /// Rows written, including duplicates that replaced an earlier row.
    pub written: usize,
}

/// A person who logs in to the web UI. `role` is `owner`, `admin`, `analyst` or `consumer`.
#[derive(Debug, Clone)]
pub struct User {
    pub id: i64,
    /// Lowercase e-mail address, unique.
    pub email: String,
    /// The argon2 hash in PHC string format; never sent to a client.
    pub password_hash: String,
    pub role: String,
    pub created_at_ms: i64,
}

#[derive(Debug, Clone)]
pub struct NewUser {
    pub email: String,
    pub password_hash: String,
    pub role: String,
}

/// A browser session; the cookie's token is stored only as its SHA-256 hash.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub token_hash: String,
    pub user_id: i64,
    /// The token every form of the session must send back.
    pub csrf_token: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
}

/// A per-user admin API key; the key itself is shown once and stored only as a hash.
#[derive(Debug, Clone, Serialize)]
pub struct UserApiKey {
    pub id: i64,
    pub user_id: i64,
    pub name: String,
    pub created_at_ms: i64,
}

/// The storage interface, implemented by [`SqliteStore`] and [`PostgresStore`].
#[async_trait]
pub trait Store: Send + std::marker::Sync + 'static {
    async fn get_setting(&self, key: &str) -> StoreResult<Option<String>>;
    async fn put_setting(&self, key: &str, value: &str) -> StoreResult<()>;
    /// Stores `value` under `key` unless the key has a value already, and returns the value
    /// stored after the call. Two nodes that race get the same value.
    async fn put_setting_if_absent(&self, key: &str, value: &str) -> StoreResult<String>;

    async fn create_project(&self, project: NewProject) -> StoreResult<Project>;
    /// Creates `project` only while the store has no project at all, and returns it; `None`
    /// when a project exists. Nodes that start at once create one project between them.
    async fn create_first_project(&self, project: NewProject) -> StoreResult<Option<Project>>;
    async fn list_projects(&self) -> StoreResult<Vec<Project>>;
    async fn project(&self, id: i64) -> StoreResult<Option<Project>>;
    async fn project_by_token(&self, token: &str) -> StoreResult<Option<Project>>;
    async fn project_by_api_secret_hash(&self, hash: &str) -> StoreResult<Option<Project>>;
    async fn project_by_currents_token_hash(&self, hash: &str) -> StoreResult<Option<Project>>;
    /// Replaces one of a project's credentials with a new one, given encrypted and hashed.
    async fn replace_project_secret(
        &self,
        project_id: i64,
        secret: ProjectSecret,
        encrypted: String,
        hash: String,
    ) -> StoreResult<()>;

    async fn create_import_credential(
        &self,
        project_id: i64,
        credential: NewImportCredential,
        now_ms: i64,
    ) -> StoreResult<ImportCredential>;
    async fn list_import_credentials(&self, project_id: i64) -> StoreResult<Vec<ImportCredential>>;
    async fn import_credential_by_hash(&self, hash: &str) -> StoreResult<Option<ImportCredential>>;

    /// Stores events and identity links in one transaction. A duplicate on Mixpanel's key
    /// (event, distinct id, time, insert id) replaces the earlier row, so the last one wins.
    async fn write_events(
        &self,
        project_id: i64,
        events: Vec<NewEvent>,
        links: Vec<IdentityLink>,
        now_ms: i64,
    ) -> StoreResult<WriteSummary> {
        let encoded = EncodedEvents::encode(&events)?;
        drop(events);
        self.write_encoded_events(project_id, encoded, links, now_ms)
            .await
    }
    /// Stores events already encoded, like [`Store::write_events`].
    async fn write_encoded_events(
        &self,
        project_id: i64,
        events: EncodedEvents,
        links: Vec<IdentityLink>,
        now_ms: i64,
    ) -> StoreResult<WriteSummary>;
    /// Stores events under Original ID Merge in one transaction: applies `merges` in order,
    /// records each merge that fails and each of `failures`, then stores the events. Returns
    /// every failure recorded.
    async fn write_events_with_merges(
        &self,
        project_id: i64,
        events: Vec<NewEvent>,
        merges: Vec<MergeRequest>,
        failures: Vec<IdentityFailure>,
        now_ms: i64,
    ) -> StoreResult<Vec<IdentityFailure>>;
    /// Identity failures of a project, newest first, at most `limit`.
    async fn identity_failures(
        &self,
        project_id: i64,
        limit: i64,
    ) -> StoreResult<Vec<StoredIdentityFailure>>;
    /// Events with `from_ms <= time_ms < to_ms`, oldest first, each under its canonical id;
    /// only the named events when `names` is given, and at most `limit` when given.
    async fn export_events(
        &self,
        project_id: i64,
        from_ms: i64,
        to_ms: i64,
        names: Option<Vec<String>>,
        limit: Option<i64>,
    ) -> StoreResult<Vec<NewEvent>>;
    async fn count_events(&self, project_id: i64) -> StoreResult<i64>;
    /// Events of one distinct id, oldest first, at most `limit`.
    async fn events_of(
        &self,
        project_id: i64,
        distinct_id: &str,
        limit: i64,
    ) -> StoreResult<Vec<NewEvent>>;

    /// Applies profile updates in order, in one transaction. Each update's distinct id is
    /// resolved through the identity links first.
    async fn apply_profile_updates(
        &self,
        project_id: i64,
        updates: Vec<ProfileUpdate>,
        now_ms: i64,
    ) -> StoreResult<WriteSummary>;
    async fn profile(
        &self,
        project_id: i64,
        distinct_id: &str,
    ) -> StoreResult<Option<Map<String, Value>>>;

    /// Applies group profile updates in order, in one transaction.
    async fn apply_group_updates(
        &self,
        project_id: i64,
        updates: Vec<GroupUpdate>,
        now_ms: i64,
    ) -> StoreResult<WriteSummary>;
    async fn group_profile(
        &self,
        project_id: i64,
        group_key: &str,
        group_id: &str,
    ) -> StoreResult<Option<Map<String, Value>>>;

    async fn quarantine_currents(
        &self,
        project_id: i64,
        items: Vec<(String, String)>,
        now_ms: i64,
    ) -> StoreResult<()>;
    async fn count_quarantined(&self, project_id: i64) -> StoreResult<i64>;

    async fn cohort_inputs(&self, project_id: i64) -> StoreResult<CohortInputs>;
    /// The project's identity links: each linked distinct id and the id it resolves to.
    async fn identity_links(&self, project_id: i64) -> StoreResult<HashMap<String, String>>;
    /// Reads, in one read transaction, the identity links, profiles and distinct ids with
    /// events, and the events named in `event_names` up to and including `until_ms`, with their
    /// properties only when `with_properties` is set.
    async fn cohort_snapshot(
        &self,
        project_id: i64,
        event_names: Vec<String>,
        with_properties: bool,
        until_ms: i64,
    ) -> StoreResult<CohortSnapshot>;
    /// Streams the rows of an evaluation into `builder` in one read transaction and returns it.
    /// The rows are the identity links, the distinct ids with events, the profiles, and the
    /// events of the builder's selected names up to and including `until_ms`.
    async fn read_cohort_rows(
        &self,
        project_id: i64,
        builder: IndexBuilder,
        until_ms: i64,
    ) -> StoreResult<IndexBuilder>;
    /// The project's IANA time zone name (`UTC` unless set).
    async fn project_timezone(&self, project_id: i64) -> StoreResult<String>;
    /// Sets the project's time zone; the caller validates the name.
    async fn set_project_timezone(&self, project_id: i64, timezone: &str) -> StoreResult<()>;
    /// Replaces a cohort's name and definition.
    async fn update_cohort(
        &self,
        project_id: i64,
        id: i64,
        name: &str,
        definition: &Value,
        now_ms: i64,
    ) -> StoreResult<Cohort>;
    /// Per distinct id, how many events named `event` happened in `[since_ms, until_ms]`.
    async fn event_counts(
        &self,
        project_id: i64,
        event: &str,
        since_ms: Option<i64>,
        until_ms: i64,
    ) -> StoreResult<HashMap<String, i64>>;
    /// The MTU rollup of a calendar month of the project's time zone, `month` written as
    /// `YYYY * 100 + MM`. With `distinct_ids`, only the events of those ids.
    async fn mtu_month(
        &self,
        project_id: i64,
        month: i64,
        distinct_ids: Option<Vec<String>>,
    ) -> StoreResult<MtuMonth>;

    async fn create_cohort(
        &self,
        project_id: i64,
        name: &str,
        definition: &Value,
        now_ms: i64,
    ) -> StoreResult<Cohort>;
    async fn list_cohorts(&self, project_id: i64) -> StoreResult<Vec<Cohort>>;
    async fn cohort(&self, project_id: i64, id: i64) -> StoreResult<Option<Cohort>>;

    async fn create_connection(
        &self,
        project_id: i64,
        connection: NewConnection,
        now_ms: i64,
    ) -> StoreResult<Connection>;
    async fn list_connections(&self, project_id: i64) -> StoreResult<Vec<Connection>>;
    async fn connection(&self, id: i64) -> StoreResult<Option<Connection>>;
    async fn connection_by_name(
        &self,
        project_id: i64,
        name: &str,
    ) -> StoreResult<Option<Connection>>;

    async fn create_sync(
        &self,
        project_id: i64,
        cohort_id: i64,
        connection_id: i64,
        mode: SyncMode,
        interval_secs: Option<i64>,
        now_ms: i64,
    ) -> StoreResult<Sync>;
    async fn list_syncs(&self, project_id: i64) -> StoreResult<Vec<Sync>>;
    async fn sync(&self, id: i64) -> StoreResult<Option<Sync>>;
    async fn set_sync_state(
        &self,
        id: i64,
        status: &str,
        reason: Option<&str>,
        next_run_at_ms: Option<i64>,
    ) -> StoreResult<()>;
    /// Active dynamic syncs whose next run is due at `now_ms`.
    async fn due_syncs(&self, now_ms: i64) -> StoreResult<Vec<Sync>>;

    async fn start_run(&self, sync_id: i64, now_ms: i64) -> StoreResult<SyncRun>;
    async fn update_run_counts(&self, run_id: i64, counts: &RunCounts) -> StoreResult<()>;
    async fn finish_run(
        &self,
        run_id: i64,
        status: &str,
        counts: &RunCounts,
        error: Option<&str>,
        now_ms: i64,
    ) -> StoreResult<SyncRun>;
    /// Marks as failed the runs left `running` by a stopped process and returns how many: runs
    /// of syncs leased by `node_id` (this node, before its restart), by no node, or under an
    /// expired lease. Releases `node_id`'s leases and connection turns, and schedules to run now every active dynamic
    /// sync left without a next run. Runs that another live node owns are left alone.
    async fn fail_interrupted_runs(&self, node_id: &str, now_ms: i64) -> StoreResult<usize>;
    /// Leases sync `id` to `node_id` until `now_ms + lease_ms`, unless another node holds an
    /// unexpired lease; returns whether the lease is now `node_id`'s. Taking over an expired
    /// lease marks the previous holder's unfinished runs of the sync as failed.
    async fn lease_sync(
        &self,
        id: i64,
        node_id: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> StoreResult<bool>;
    /// Extends `node_id`'s lease on sync `id`; returns `false` when the node no longer holds it.
    async fn renew_sync_lease(
        &self,
        id: i64,
        node_id: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> StoreResult<bool>;
    /// Gives up `node_id`'s lease on sync `id`, if it still holds it.
    async fn release_sync_lease(&self, id: i64, node_id: &str) -> StoreResult<()>;
    /// Gives `node_id` the turn to send through Braze connection `id` until
    /// `now_ms + lease_ms`, unless another node owns an unexpired turn; returns whether the
    /// turn is now `node_id`'s.
    async fn take_connection_turn(
        &self,
        id: i64,
        node_id: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> StoreResult<bool>;
    /// Extends `node_id`'s turn on connection `id`; returns `false` when it no longer owns it.
    async fn renew_connection_turn(
        &self,
        id: i64,
        node_id: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> StoreResult<bool>;
    /// Gives up `node_id`'s turn on connection `id`, if it still holds it.
    async fn release_connection_turn(&self, id: i64, node_id: &str) -> StoreResult<()>;
    async fn list_runs(&self, sync_id: i64) -> StoreResult<Vec<SyncRun>>;

    async fn braze_cohort(
        &self,
        connection_id: i64,
        cohort_id: i64,
    ) -> StoreResult<Option<BrazeCohort>>;
    async fn record_braze_cohort(
        &self,
        connection_id: i64,
        cohort_id: i64,
        cohort: &BrazeCohort,
        now_ms: i64,
    ) -> StoreResult<()>;
    /// Ids that Braze acknowledged as members of the cohort, in byte order.
    async fn braze_members(&self, connection_id: i64, cohort_id: i64) -> StoreResult<IdSet>;
    /// Ids whose request was sent but never acknowledged, in byte order; Braze's state for
    /// them is unknown.
    async fn braze_pending(&self, connection_id: i64, cohort_id: i64) -> StoreResult<IdSet>;
    /// Records, in one transaction, what Braze acknowledged for one request and the ids of the
    /// next request before it is sent. The acknowledged adds and removes update the members and
    /// leave the pending ids; `progress.pending` become pending.
    async fn record_braze_progress(
        &self,
        connection_id: i64,
        cohort_id: i64,
        progress: BrazeProgress,
    ) -> StoreResult<()>;

    /// Renames a cohort that is not deleted; `None` when there is none.
    async fn rename_cohort(
        &self,
        project_id: i64,
        id: i64,
        name: &str,
        now_ms: i64,
    ) -> StoreResult<Option<Cohort>>;
    /// Marks a cohort deleted, so that lookups no longer find it; returns whether it existed.
    async fn delete_cohort(&self, project_id: i64, id: i64, now_ms: i64) -> StoreResult<bool>;

    async fn rename_connection(&self, id: i64, name: &str) -> StoreResult<Connection>;
    /// Replaces the encrypted Data Import Key and marks the connection connected.
    async fn replace_data_import_key(
        &self,
        id: i64,
        data_import_key_enc: &str,
    ) -> StoreResult<Connection>;
    /// Marks a connection disconnected and pauses its active and failed dynamic syncs with
    /// `reason`, in one transaction.
    async fn disconnect_connection(&self, id: i64, reason: &str, now_ms: i64) -> StoreResult<()>;
    /// Sets a sync's state at the end of a run, but only while the sync is still `active`;
    /// returns whether it was. A pause or removal made during the run is kept.
    async fn settle_sync(
        &self,
        id: i64,
        status: &str,
        reason: Option<&str>,
        paused_by: Option<&str>,
        next_run_at_ms: Option<i64>,
    ) -> StoreResult<bool>;
    /// Pauses a sync, recording the cause: `operator`, `connection` or `error`.
    async fn pause_sync(&self, id: i64, reason: &str, paused_by: &str) -> StoreResult<()>;

    /// Records what started a run: `manual`, `schedule` or `export`.
    async fn set_run_trigger(&self, run_id: i64, trigger: &str) -> StoreResult<()>;
    async fn run(&self, run_id: i64) -> StoreResult<Option<SyncRun>>;
    /// Stores planned operations of a run, in one transaction, numbered from `first_seq`. A
    /// run stores its operations in several calls, so that it never keeps all of them in memory.
    async fn record_run_operations(
        &self,
        run_id: i64,
        first_seq: i64,
        operations: Vec<RunOperation>,
    ) -> StoreResult<()>;
    async fn run_operations(&self, run_id: i64) -> StoreResult<Vec<RunOperation>>;
    /// Deletes the per-user operations of every run of sync `sync_id` but the newest `keep`
    /// runs, and returns how many operations were deleted. The runs keep their counts.
    async fn prune_run_operations(&self, sync_id: i64, keep: usize) -> StoreResult<u64>;
    /// Finds the member who last held each of `ids`, by position. The source is the latest run
    /// before run `before_run_id` that stored operations, among the runs of the syncs of
    /// `cohort_id` through `connection_id`. An id that run did not list with a member gets
    /// `None`.
    async fn previous_holders(
        &self,
        connection_id: i64,
        cohort_id: i64,
        before_run_id: i64,
        ids: IdSet,
    ) -> StoreResult<Vec<Option<String>>>;

    // Accounts: people, browser sessions and per-user API keys.

    /// Adds a person; a second person with the same e-mail is a `Conflict`.
    async fn create_user(&self, user: NewUser, now_ms: i64) -> StoreResult<User>;
    async fn list_users(&self) -> StoreResult<Vec<User>>;
    async fn user_by_email(&self, email: &str) -> StoreResult<Option<User>>;
    /// Stores a session and deletes the expired ones.
    async fn create_session(&self, session: NewSession) -> StoreResult<()>;
    /// The person and CSRF token of a session that has not expired at `now_ms`.
    async fn session(&self, token_hash: &str, now_ms: i64) -> StoreResult<Option<(User, String)>>;
    async fn delete_session(&self, token_hash: &str) -> StoreResult<()>;
    async fn create_user_api_key(
        &self,
        user_id: i64,
        name: &str,
        key_hash: &str,
        now_ms: i64,
    ) -> StoreResult<UserApiKey>;
    async fn user_by_api_key_hash(&self, key_hash: &str) -> StoreResult<Option<User>>;
}
