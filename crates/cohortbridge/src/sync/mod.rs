//! Cohort syncs to Braze: one run computes the cohort, maps members to Braze external ids,
//! diffs them against what Braze last acknowledged, and sends only the adds and removes.
//!
//! Braze's acknowledgement of each request is recorded before the next request is sent. A run
//! that stops half-way (a crash, or giving up after retries) therefore leaves a state that the
//! next run continues from. Nothing acknowledged is sent twice, and nothing unsent is assumed
//! sent.
//! Runs of one connection execute one at a time, and a sync never runs twice at once, also
//! across nodes: a run holds its connection's turn and a lease on its sync in the store.

mod attributes;
mod members;
mod metrics;
mod plan;
mod removal;
mod scheduler;

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{TimeZone, Utc};
use serde_json::Value;

pub use members::{braze_id_of, JsonType, Skip, SyncMembers};
pub use metrics::SyncMetrics;
pub use plan::{exportable_count, plan_changes, plan_operations, Plan};
pub use scheduler::spawn_scheduler;

use crate::braze::client::{BrazeClient, BrazeError, Credentials, MAX_IDS_PER_REQUEST};
use crate::braze::instances;
use crate::cohorts;
use crate::secrets::SecretBox;
use crate::store::{
    BrazeCohort, BrazeProgress, Cohort, Connection, IdSet, RunCounts, RunOperation, Store,
    StoreError, Sync, SyncMode, SyncRun,
};

/// Cause of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// `syncs run` or the API's run route.
    Manual,
    /// The scheduler, when a dynamic sync was due.
    Schedule,
    /// The first run of a new export.
    Export,
    /// `syncs remove --remove-members` or `cohorts delete --remove-members`.
    Removal,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Manual => "manual",
            Trigger::Schedule => "schedule",
            Trigger::Export => "export",
            Trigger::Removal => "removal",
        }
    }
}

/// The plan of the next run, computed without sending anything.
#[derive(Debug)]
pub struct Preview {
    pub plan: Plan,
    /// The planned operations other than `no-op`: adds, removes and skipped members.
    pub changes: Vec<RunOperation>,
}

/// Limits that keep one project from overloading the server or its Braze workspace.
#[derive(Debug, Clone, Copy)]
pub struct SyncLimits {
    /// Dynamic syncs per project that are not removed (active, paused or failed).
    pub max_dynamic_syncs_per_project: usize,
    /// Members a cohort may have for a run to send anything.
    pub max_cohort_members: usize,
    /// Runs of each sync whose per-user operations are kept. Older runs keep their counts;
    /// their operations are deleted after each run, because a run lists every member.
    pub runs_with_operations: usize,
}

impl Default for SyncLimits {
    fn default() -> Self {
        Self {
            max_dynamic_syncs_per_project: 60,
            max_cohort_members: 10_000_000,
            runs_with_operations: 20,
        }
    }
}

/// The operator's partner credentials for Braze's partner API.
#[derive(Clone, Default)]
pub struct PartnerSettings {
    pub name: String,
    /// Key for every host outside `.braze.eu`.
    pub api_key: Option<String>,
    /// Key for `.braze.eu` hosts.
    pub api_key_eu: Option<String>,
}

impl PartnerSettings {
    /// Returns the partner API key for a base URL, or an error naming the missing setting.
    pub fn api_key_for(&self, base_url: &str) -> Result<&str, String> {
        if instances::is_eu(base_url) {
            self.api_key_eu.as_deref().ok_or_else(|| {
                "no partner API key for Braze's EU instances is configured; start the server with --braze-partner-api-key-eu".to_owned()
            })
        } else {
            self.api_key.as_deref().ok_or_else(|| {
                "no partner API key is configured; start the server with --braze-partner-api-key".to_owned()
            })
        }
    }
}

/// Says why a sync that is not active does not run: its recorded reason, or what its status
/// means when none was recorded.
fn not_active_reason(sync: &Sync) -> String {
    if let Some(reason) = &sync.status_reason {
        return reason.clone();
    }
    match sync.status.as_str() {
        "completed" => {
            "a one-time export runs once; start a new export to send the cohort again".into()
        }
        "paused" => "resume it to run it again".into(),
        "removed" => "a removed sync never runs again".into(),
        _ => "no reason recorded".into(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("sync {0} not found")]
    NotFound(i64),
    #[error("sync {0} is already running")]
    AlreadyRunning(i64),
    #[error("sync {0} is already running on another node")]
    RunningElsewhere(i64),
    #[error("sync {id} is {status}: {reason}")]
    NotActive {
        id: i64,
        status: String,
        reason: String,
    },
    /// Removing the members of a sync from Braze failed; the sync was left in place.
    #[error("removing the members of sync {id} from Braze failed: {message}")]
    Removal { id: i64, message: String },
}

pub struct SyncEngine {
    store: Arc<dyn Store>,
    client: BrazeClient,
    secrets: SecretBox,
    partner: PartnerSettings,
    running: Mutex<HashSet<i64>>,
    connection_queues: Mutex<HashMap<i64, Arc<tokio::sync::Mutex<()>>>>,
    limits: SyncLimits,
    metrics: Arc<SyncMetrics>,
    /// This node's name in sync leases.
    node_id: String,
    /// Names this installation in the ids of the cohorts it creates in Braze.
    installation_id: String,
    /// How long a lease holds without renewal.
    lease: std::time::Duration,
    /// Runs whose lease another node took over; they stop before their next Braze request.
    lost_leases: Arc<Mutex<HashSet<i64>>>,
}

/// Stops a lease's renewal when the run ends, however it ends.
struct HeartbeatGuard {
    task: tokio::task::JoinHandle<()>,
    lost_leases: Arc<Mutex<HashSet<i64>>>,
    run_id: i64,
}

impl Drop for HeartbeatGuard {
    fn drop(&mut self) {
        self.task.abort();
        self.lost_leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.run_id);
    }
}

/// Removes a sync from the running set when its run ends, however it ends.
struct RunningGuard<'a> {
    engine: &'a SyncEngine,
    sync_id: i64,
}

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.engine
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.sync_id);
    }
}

/// The failure of a run, before it is recorded.
struct RunFailure {
    message: String,
    /// Set when resending cannot help; the sync is paused with this reason.
    pause: bool,
}

impl RunFailure {
    fn retry_later(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            pause: false,
        }
    }

    fn pause(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            pause: true,
        }
    }
}

impl SyncEngine {
    pub fn new(
        store: Arc<dyn Store>,
        client: BrazeClient,
        secrets: SecretBox,
        partner: PartnerSettings,
    ) -> Self {
        let metrics = Arc::new(SyncMetrics::new());
        Self {
            store,
            client: client.with_metrics(metrics.clone()),
            secrets,
            partner,
            running: Mutex::new(HashSet::new()),
            connection_queues: Mutex::new(HashMap::new()),
            limits: SyncLimits::default(),
            metrics,
            node_id: "local".to_owned(),
            installation_id: "local".to_owned(),
            lease: std::time::Duration::from_secs(30),
            lost_leases: Arc::default(),
        }
    }

    /// Sets the installation id that Braze cohort ids carry.
    pub fn with_installation_id(mut self, installation_id: String) -> Self {
        self.installation_id = installation_id;
        self
    }

    /// Sets this node's id and the lease time of its runs.
    pub fn with_lease(mut self, node_id: String, lease: std::time::Duration) -> Self {
        self.node_id = node_id;
        self.lease = lease;
        self
    }

    /// Replaces the limits.
    pub fn with_limits(mut self, limits: SyncLimits) -> Self {
        self.limits = limits;
        self
    }

    pub fn limits(&self) -> SyncLimits {
        self.limits
    }

    pub fn metrics(&self) -> &SyncMetrics {
        &self.metrics
    }

    pub fn client(&self) -> &BrazeClient {
        &self.client
    }

    pub fn partner(&self) -> &PartnerSettings {
        &self.partner
    }

    pub fn is_running(&self, sync_id: i64) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&sync_id)
    }

    /// Credentials for requests through `connection`.
    pub fn credentials(&self, connection: &Connection) -> Result<Credentials, String> {
        // The attribute mode needs only the workspace's REST API key.
        let partner_api_key = if connection.delivery == "attributes" {
            String::new()
        } else {
            // The instance decides the region when it is a known one, so a custom URL that
            // stands for an EU instance gets the EU key.
            let region_url =
                instances::base_url(&connection.instance).unwrap_or(&connection.base_url);
            self.partner.api_key_for(region_url)?.to_owned()
        };
        let data_import_key = self
            .secrets
            .decrypt(&connection.data_import_key_enc)
            .map_err(|e| {
                format!(
                    "the Data Import Key of connection {:?} cannot be read: {e}",
                    connection.name
                )
            })?;
        Ok(Credentials {
            partner_name: self.partner.name.clone(),
            partner_api_key,
            data_import_key,
        })
    }

    /// Runs a sync now, as a manual run, and returns the recorded run.
    pub async fn run(&self, sync_id: i64) -> Result<SyncRun, SyncError> {
        self.run_triggered(sync_id, Trigger::Manual).await
    }

    /// Runs a sync now and returns the recorded run. Fails without a run when the sync is
    /// already running or is not active.
    pub async fn run_triggered(
        &self,
        sync_id: i64,
        trigger: Trigger,
    ) -> Result<SyncRun, SyncError> {
        let sync = self
            .store
            .sync(sync_id)
            .await?
            .ok_or(SyncError::NotFound(sync_id))?;
        if sync.status != "active" {
            return Err(SyncError::NotActive {
                id: sync_id,
                status: sync.status.clone(),
                reason: not_active_reason(&sync),
            });
        }
        let _guard = self.claim(sync_id)?;
        let queue = self.connection_queue(sync.connection_id);
        let _turn = queue.lock().await;

        self.wait_for_connection_turn(sync.connection_id).await?;
        let result = self.run_in_turn(sync_id, trigger).await;
        self.release_connection_turn(sync.connection_id).await;
        result
    }

    /// Waits until this node has the turn to send through Braze connection `connection_id`.
    /// Runs of one connection on several nodes take turns, as runs on one node do.
    pub(super) async fn wait_for_connection_turn(
        &self,
        connection_id: i64,
    ) -> Result<(), SyncError> {
        let lease_ms = self.lease.as_millis() as i64;
        let mut logged = false;
        while !self
            .store
            .take_connection_turn(connection_id, &self.node_id, now_ms(), lease_ms)
            .await?
        {
            if !logged {
                tracing::debug!(
                    connection_id,
                    "another node is sending through this connection; waiting for its turn to end"
                );
                logged = true;
            }
            tokio::time::sleep(CONNECTION_TURN_POLL).await;
        }
        Ok(())
    }

    /// Gives up this node's turn on a connection, logging a failure (the turn then expires).
    pub(super) async fn release_connection_turn(&self, connection_id: i64) {
        if let Err(e) = self
            .store
            .release_connection_turn(connection_id, &self.node_id)
            .await
        {
            tracing::warn!(connection_id, error = %e, "cannot release the connection turn; it expires by itself");
        }
    }

    /// Leases sync `sync_id` and runs it, during this node's turn on the sync's connection.
    async fn run_in_turn(&self, sync_id: i64, trigger: Trigger) -> Result<SyncRun, SyncError> {
        let lease_ms = self.lease.as_millis() as i64;
        if !self
            .store
            .lease_sync(sync_id, &self.node_id, now_ms(), lease_ms)
            .await?
        {
            return Err(SyncError::RunningElsewhere(sync_id));
        }
        let result = self.run_current(sync_id, trigger).await;
        if let Err(e) = self.store.release_sync_lease(sync_id, &self.node_id).await {
            tracing::warn!(sync_id, error = %e, "cannot release the sync lease; it expires by itself");
        }
        result
    }

    /// Reads the sync again after the waits for its turn and lease, and runs it unless it was
    /// paused, removed, or (for a scheduled run) run by another node in the meantime.
    async fn run_current(&self, sync_id: i64, trigger: Trigger) -> Result<SyncRun, SyncError> {
        let sync = self
            .store
            .sync(sync_id)
            .await?
            .ok_or(SyncError::NotFound(sync_id))?;
        if sync.status != "active" {
            return Err(SyncError::NotActive {
                id: sync_id,
                status: sync.status.clone(),
                reason: not_active_reason(&sync),
            });
        }
        let due = sync.next_run_at_ms.is_some_and(|at| at <= now_ms());
        if trigger == Trigger::Schedule && !due {
            return Err(SyncError::RunningElsewhere(sync_id));
        }
        self.run_leased(&sync, trigger).await
    }

    /// Renews this node's lease on `sync_id`, and its turn on `connection_id`, every third of
    /// the lease time while run `run_id` goes on. When another node has taken either over, marks
    /// the run so that it stops.
    fn keep_lease(&self, sync_id: i64, connection_id: i64, run_id: i64) -> HeartbeatGuard {
        let store = self.store.clone();
        let node_id = self.node_id.clone();
        let lease = self.lease;
        let lost_leases = self.lost_leases.clone();
        let task = tokio::spawn(async move {
            let lease_ms = lease.as_millis() as i64;
            loop {
                tokio::time::sleep(lease / 3).await;
                let renewed = match store
                    .renew_sync_lease(sync_id, &node_id, now_ms(), lease_ms)
                    .await
                {
                    Ok(true) => {
                        store
                            .renew_connection_turn(connection_id, &node_id, now_ms(), lease_ms)
                            .await
                    }
                    other => other,
                };
                match renewed {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::error!(sync_id, run_id, node_id = %node_id, "another node took over the lease of this run; the run stops before its next Braze request");
                        lost_leases
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(run_id);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(sync_id, run_id, error = %e, "cannot renew the sync lease; retrying");
                    }
                }
            }
        });
        HeartbeatGuard {
            task,
            lost_leases: self.lost_leases.clone(),
            run_id,
        }
    }

    /// Fails the run when a renewal found its lease taken over by another node, so that the run
    /// sends no further request.
    fn check_lease(&self, run_id: i64) -> Result<(), RunFailure> {
        let lost = self
            .lost_leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&run_id);
        if lost {
            return Err(RunFailure::retry_later(
                "another node took over this run's lease; the run stopped, and that node resumes from what Braze acknowledged",
            ));
        }
        Ok(())
    }

    /// Executes a run of `sync`, whose lease this node holds, and records its outcome.
    async fn run_leased(&self, sync: &Sync, trigger: Trigger) -> Result<SyncRun, SyncError> {
        let sync_id = sync.id;
        let started = Instant::now();
        let run = self.store.start_run(sync_id, now_ms()).await?;
        let _heartbeat = self.keep_lease(sync_id, sync.connection_id, run.id);
        self.store.set_run_trigger(run.id, trigger.as_str()).await?;
        let span = tracing::info_span!(
            "sync_run",
            project_id = sync.project_id,
            cohort_id = sync.cohort_id,
            sync_id,
            run_id = run.id
        );
        let _entered = span.enter();
        tracing::info!(trigger = trigger.as_str(), "sync run started");
        drop(_entered);

        let mut counts = RunCounts::default();
        let outcome = self.execute(sync, run.id, &mut counts).await;
        let finished_at = now_ms();
        let next_run = match sync.mode {
            SyncMode::Dynamic => sync.interval_secs.map(|secs| finished_at + secs * 1000),
            SyncMode::Once => None,
        };
        let outcome_label = if outcome.is_ok() {
            "succeeded"
        } else {
            "failed"
        };
        self.metrics
            .run_duration
            .with_label_values(&[outcome_label])
            .observe(started.elapsed().as_secs_f64());

        let (status, reason, paused_by, next) = match &outcome {
            Ok(()) if sync.mode == SyncMode::Once => ("completed", None, None, None),
            Ok(()) => ("active", None, None, next_run),
            Err(failure) if sync.mode == SyncMode::Once => {
                ("failed", Some(failure.message.as_str()), None, None)
            }
            Err(failure) if failure.pause => (
                "paused",
                Some(failure.message.as_str()),
                Some("error"),
                None,
            ),
            Err(failure) => ("active", Some(failure.message.as_str()), None, next_run),
        };
        // Only a sync that is still active is updated: an operator may have paused or removed
        // it during the run, and that state wins.
        let settled = self
            .store
            .settle_sync(sync_id, status, reason, paused_by, next)
            .await?;
        if !settled {
            tracing::info!(
                sync_id,
                run_id = run.id,
                "sync was paused or removed during the run; its state is kept"
            );
        }
        let run = match outcome {
            Ok(()) => {
                let run = self
                    .store
                    .finish_run(run.id, "succeeded", &counts, None, finished_at)
                    .await?;
                tracing::info!(
                    sync_id,
                    run_id = run.id,
                    added = counts.added,
                    removed = counts.removed,
                    skipped = counts.skipped,
                    requests = counts.requests,
                    "sync run succeeded"
                );
                run
            }
            Err(failure) => {
                if sync.mode == SyncMode::Once {
                    tracing::error!(sync_id, run_id = run.id, error = %failure.message, "one-time export failed");
                } else if failure.pause {
                    tracing::error!(sync_id, run_id = run.id, error = %failure.message, "sync run failed; sync paused until it is resumed or its connection is reconnected");
                } else {
                    tracing::error!(sync_id, run_id = run.id, error = %failure.message, "sync run failed; the next run retries");
                }
                self.store
                    .finish_run(
                        run.id,
                        "failed",
                        &counts,
                        Some(&failure.message),
                        finished_at,
                    )
                    .await?
            }
        };
        let keep = self.limits.runs_with_operations.max(1);
        match self.store.prune_run_operations(sync_id, keep).await {
            Ok(0) => {}
            Ok(deleted) => {
                tracing::debug!(
                    sync_id,
                    deleted,
                    keep,
                    "deleted the operations of older runs"
                )
            }
            Err(error) => {
                tracing::warn!(sync_id, %error, "could not delete the operations of older runs; the next run retries")
            }
        }
        Ok(run)
    }

    /// Marks a sync as running, or fails when it already is.
    fn claim(&self, sync_id: i64) -> Result<RunningGuard<'_>, SyncError> {
        if !self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(sync_id)
        {
            return Err(SyncError::AlreadyRunning(sync_id));
        }
        Ok(RunningGuard {
            engine: self,
            sync_id,
        })
    }

    /// Returns the lock that lets one run at a time reach a connection's workspace.
    fn connection_queue(&self, connection_id: i64) -> Arc<tokio::sync::Mutex<()>> {
        self.connection_queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(connection_id)
            .or_default()
            .clone()
    }

    /// Evaluates a cohort for a run, keeping of each member only its canonical id and the
    /// connection's user-id property. A failed evaluation, or a cohort over the member limit, is
    /// an error, so that it never looks like an empty cohort.
    async fn evaluate_for_sync(
        &self,
        project_id: i64,
        cohort: &Cohort,
        connection: &Connection,
    ) -> Result<SyncMembers, String> {
        let definition = cohorts::parse(&cohort.definition)
            .map_err(|e| format!("cohort evaluation failed: invalid definition: {e}"))?;
        let evaluated = SyncMembers::evaluate(
            self.store.as_ref(),
            project_id,
            &definition,
            &connection.user_id_property,
            now_ms(),
        )
        .await
        .map_err(|e| format!("cohort evaluation failed: {e}"))?;
        let limit = self.limits.max_cohort_members;
        if evaluated.len() > limit {
            return Err(format!(
                "cohort {} has {} members, more than the limit of {limit} per cohort \
                 (serve flag --max-cohort-members); nothing was sent",
                cohort.id,
                evaluated.len()
            ));
        }
        Ok(evaluated)
    }

    /// Computes what the next run of `cohort` through `connection` would add and remove,
    /// without sending anything.
    pub async fn preview(
        &self,
        project_id: i64,
        cohort: &Cohort,
        connection: &Connection,
    ) -> Result<Preview, String> {
        let evaluated = self
            .evaluate_for_sync(project_id, cohort, connection)
            .await?;
        let storage = |e: StoreError| format!("storage error: {e}");
        let acknowledged = self
            .store
            .braze_members(connection.id, cohort.id)
            .await
            .map_err(storage)?;
        let pending = self
            .store
            .braze_pending(connection.id, cohort.id)
            .await
            .map_err(storage)?;
        let mut plan = plan_changes(&evaluated, &acknowledged, &pending);
        self.find_remove_holders(connection.id, cohort.id, i64::MAX, &mut plan)
            .await
            .map_err(storage)?;
        let changes = plan_operations(&evaluated, &connection.user_id_property, &plan)
            .filter(|op| op.operation != "no-op")
            .collect();
        Ok(Preview { plan, changes })
    }

    async fn execute(
        &self,
        sync: &Sync,
        run_id: i64,
        counts: &mut RunCounts,
    ) -> Result<(), RunFailure> {
        let store_failure = |e: StoreError| RunFailure::retry_later(format!("storage error: {e}"));
        let cohort = self
            .store
            .cohort(sync.project_id, sync.cohort_id)
            .await
            .map_err(store_failure)?
            .ok_or_else(|| {
                RunFailure::pause(format!("cohort {} no longer exists", sync.cohort_id))
            })?;
        let connection = self
            .store
            .connection(sync.connection_id)
            .await
            .map_err(store_failure)?
            .ok_or_else(|| {
                RunFailure::pause(format!(
                    "connection {} no longer exists",
                    sync.connection_id
                ))
            })?;
        if connection.disconnected_at_ms.is_some() {
            return Err(RunFailure::pause(format!(
                "connection {:?} is disconnected; reconnect it to resume",
                connection.name
            )));
        }

        let evaluated = self
            .evaluate_for_sync(sync.project_id, &cohort, &connection)
            .await
            .map_err(RunFailure::retry_later)?;
        let credentials = self.credentials(&connection).map_err(RunFailure::pause)?;
        if connection.delivery == "attributes" {
            return self
                .deliver_attributes(
                    run_id,
                    counts,
                    &cohort,
                    &connection,
                    evaluated,
                    &credentials,
                )
                .await;
        }
        let known = self
            .store
            .braze_cohort(connection.id, cohort.id)
            .await
            .map_err(store_failure)?;
        // A cohort already created in Braze keeps its recorded id, which may predate the
        // installation id.
        let braze_cohort_id = match &known {
            Some(known) => known.braze_cohort_id.clone(),
            None => braze_cohort_id(&self.installation_id, sync.project_id, cohort.id),
        };
        if known.as_ref().is_none_or(|k| k.name_sent != cohort.name) {
            let created_at = Utc
                .timestamp_millis_opt(cohort.created_at_ms)
                .single()
                .unwrap_or_else(Utc::now)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let retries = self
                .client
                .create_cohort(
                    &connection.base_url,
                    &credentials,
                    &braze_cohort_id,
                    &cohort.name,
                    &created_at,
                )
                .await
                .map_err(|e| braze_failure_counted(e, counts))?;
            counts.requests += 1;
            counts.retries += i64::from(retries);
            let record = BrazeCohort {
                braze_cohort_id: braze_cohort_id.clone(),
                name_sent: cohort.name.clone(),
            };
            self.store
                .record_braze_cohort(connection.id, cohort.id, &record, now_ms())
                .await
                .map_err(store_failure)?;
        }

        let acknowledged = self
            .store
            .braze_members(connection.id, cohort.id)
            .await
            .map_err(store_failure)?;
        let pending = self
            .store
            .braze_pending(connection.id, cohort.id)
            .await
            .map_err(store_failure)?;
        let mut plan = plan_changes(&evaluated, &acknowledged, &pending);
        drop(acknowledged);
        drop(pending);
        counts.members = plan.counts.members;
        counts.skipped = plan.counts.skipped;
        counts.unchanged = plan.counts.unchanged;
        self.find_remove_holders(connection.id, cohort.id, run_id, &mut plan)
            .await
            .map_err(store_failure)?;
        self.record_operations(run_id, &evaluated, &connection.user_id_property, &plan)
            .await
            .map_err(store_failure)?;
        drop(evaluated);
        self.store
            .update_run_counts(run_id, counts)
            .await
            .map_err(store_failure)?;

        let mut last_progress = Instant::now();
        let mut acknowledged = BrazeProgress::default();
        for (adds, removes) in batches(plan.adds.len(), plan.removes.len(), MAX_IDS_PER_REQUEST) {
            self.check_lease(run_id)?;
            let added = plan.adds.slice(adds);
            let removed = plan.removes.slice(removes);
            // The previous request's acknowledgement and this request's ids are committed
            // together before this request is sent. A crash while it is in flight leaves these
            // ids pending, and the next run sends them again.
            acknowledged.pending = IdSet::from_ids(added.iter().chain(&removed));
            self.store
                .record_braze_progress(connection.id, cohort.id, acknowledged)
                .await
                .map_err(store_failure)?;
            let retries = self
                .client
                .update_members(
                    &connection.base_url,
                    &credentials,
                    &braze_cohort_id,
                    &added,
                    &removed,
                )
                .await
                .map_err(|e| braze_failure_counted(e, counts))?;
            counts.requests += 1;
            counts.retries += i64::from(retries);
            counts.added += added.len() as i64;
            counts.removed += removed.len() as i64;
            acknowledged = BrazeProgress {
                acknowledged_adds: IdSet::from_ids(&added),
                acknowledged_removes: IdSet::from_ids(&removed),
                pending: IdSet::default(),
                run_counts: Some((run_id, counts.clone())),
            };
            self.metrics
                .ids_sent
                .with_label_values(&["add"])
                .inc_by(added.len() as u64);
            self.metrics
                .ids_sent
                .with_label_values(&["remove"])
                .inc_by(removed.len() as u64);
            // The counts are progress for `syncs show`, not state that a crash must keep, so
            // they are written at most once a second; `finish_run` writes the final ones.
            if last_progress.elapsed() >= PROGRESS_INTERVAL {
                self.store
                    .update_run_counts(run_id, counts)
                    .await
                    .map_err(store_failure)?;
                last_progress = Instant::now();
            }
        }
        if !acknowledged.acknowledged_adds.is_empty()
            || !acknowledged.acknowledged_removes.is_empty()
        {
            self.store
                .record_braze_progress(connection.id, cohort.id, acknowledged)
                .await
                .map_err(store_failure)?;
        }
        Ok(())
    }

    /// Fills in who last held each id that `plan` removes, from the latest run before
    /// `before_run_id` that stored operations, so that a remove names its member when known.
    pub(super) async fn find_remove_holders(
        &self,
        connection_id: i64,
        cohort_id: i64,
        before_run_id: i64,
        plan: &mut Plan,
    ) -> Result<(), StoreError> {
        if plan.removes.is_empty() {
            return Ok(());
        }
        plan.remove_holders = self
            .store
            .previous_holders(
                connection_id,
                cohort_id,
                before_run_id,
                plan.removes.clone(),
            )
            .await?;
        Ok(())
    }

    /// Stores the planned operations of a run in blocks of `OPERATIONS_PER_WRITE`, so that the
    /// run never keeps one operation per member in memory at once.
    pub(super) async fn record_operations(
        &self,
        run_id: i64,
        evaluated: &SyncMembers,
        user_id_property: &str,
        plan: &Plan,
    ) -> Result<(), StoreError> {
        let mut operations = plan_operations(evaluated, user_id_property, plan);
        let mut first_seq = 0;
        loop {
            let block: Vec<_> = operations.by_ref().take(OPERATIONS_PER_WRITE).collect();
            if block.is_empty() {
                return Ok(());
            }
            let written = block.len() as i64;
            self.store
                .record_run_operations(run_id, first_seq, block)
                .await?;
            first_seq += written;
        }
    }
}

/// Time between two attempts to take a connection's turn while another node has it.
const CONNECTION_TURN_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// Operations of a run stored per transaction.
const OPERATIONS_PER_WRITE: usize = 50_000;

/// Least time between two writes of a run's counts while it sends.
const PROGRESS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Builds the id a cohort gets in Braze. It carries the installation and project ids, so that
/// two installations or two projects exporting to one workspace never share a Braze cohort.
pub fn braze_cohort_id(installation_id: &str, project_id: i64, cohort_id: i64) -> String {
    format!("cohortbridge-{installation_id}-{project_id}-{cohort_id}")
}

/// Splits a run's adds and removes, given as counts, into requests of at most `max` ids in
/// total, as index ranges: adds first, then removes, each request filled before the next.
pub fn batches(adds: usize, removes: usize, max: usize) -> Vec<(Range<usize>, Range<usize>)> {
    let mut out = Vec::new();
    let (mut a, mut r) = (0, 0);
    while a < adds || r < removes {
        let take_adds = (adds - a).min(max);
        let take_removes = (removes - r).min(max - take_adds);
        out.push((a..a + take_adds, r..r + take_removes));
        a += take_adds;
        r += take_removes;
    }
    out
}

/// Counts a request that failed (it was sent, and a give-up was resent), then maps the error.
fn braze_failure_counted(error: BrazeError, counts: &mut RunCounts) -> RunFailure {
    counts.requests += 1;
    if let BrazeError::GaveUp { attempts, .. } = &error {
        counts.retries += i64::from(attempts.saturating_sub(1));
    }
    braze_failure(error)
}

/// Maps a Braze error to a run failure: rejected requests pause the sync, exhausted retries
/// leave it for the next run.
fn braze_failure(error: BrazeError) -> RunFailure {
    match error {
        BrazeError::Rejected {
            status,
            ref message,
        } => {
            let advice = match status {
                401 | 403 => "check the connection's Data Import Key and the partner API key",
                404 => "check the connection's Braze instance and the partner name",
                _ => "check whether the cohort still exists in Braze; otherwise report this message as a bug",
            };
            RunFailure::pause(format!(
                "Braze rejected the request (HTTP {status}: {message}); {advice}"
            ))
        }
        BrazeError::GaveUp { .. } | BrazeError::RateLimited { .. } => {
            RunFailure::retry_later(error.to_string())
        }
    }
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completed_once_sync_says_why() {
        let sync = Sync {
            id: 1,
            project_id: 1,
            cohort_id: 1,
            connection_id: 1,
            mode: SyncMode::Once,
            interval_secs: None,
            status: "completed".into(),
            status_reason: None,
            next_run_at_ms: None,
            created_at_ms: 0,
            paused_by: None,
        };
        assert!(not_active_reason(&sync).contains("runs once"));
        let paused = Sync {
            status: "paused".into(),
            status_reason: Some("Braze answered 401".into()),
            ..sync
        };
        assert_eq!(not_active_reason(&paused), "Braze answered 401");
    }

    #[test]
    fn batches_respect_the_limit() {
        let batches = batches(1500, 700, 1000);
        assert_eq!(batches.len(), 3);
        assert!(batches.iter().all(|(a, r)| a.len() + r.len() <= 1000));
        assert_eq!(batches[0], (0..1000, 0..0));
        assert_eq!(batches[1], (1000..1500, 0..500));
        assert_eq!(batches[2], (1500..1500, 500..700));
        let total: usize = batches.iter().map(|(a, r)| a.len() + r.len()).sum();
        assert_eq!(total, 2200);
    }

    #[test]
    fn no_changes_means_no_requests() {
        assert!(batches(0, 0, 1000).is_empty());
    }

    #[test]
    fn partner_key_is_chosen_by_region() {
        let partner = PartnerSettings {
            name: "p".into(),
            api_key: Some("us".into()),
            api_key_eu: None,
        };
        assert_eq!(
            partner
                .api_key_for("https://rest.iad-01.braze.com")
                .unwrap(),
            "us"
        );
        assert!(partner
            .api_key_for("https://rest.fra-01.braze.eu")
            .unwrap_err()
            .contains("--braze-partner-api-key-eu"));
    }
}
