//! Admin routes that change connections, cohorts and syncs after they were created: reconnect,
//! disconnect and rename a connection; rename and delete a cohort; pause, resume and remove a
//! sync; list a run's operations. Also the unauthenticated Prometheus `/metrics` route.

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::admin::{
    connection_json, now_ms, probe_credentials, project_or_404, required_name, sync_error,
    sync_in_project,
};
use super::{ApiError, AppState};
use crate::store::{Cohort, Connection, SyncMode};
use crate::sync::Preview;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/projects/{project}/connections/{connection}/reconnect",
            post(reconnect),
        )
        .route(
            "/projects/{project}/connections/{connection}/disconnect",
            post(disconnect),
        )
        .route(
            "/projects/{project}/connections/{connection}/rename",
            post(rename_connection),
        )
        .route(
            "/projects/{project}/cohorts/{cohort}/rename",
            post(rename_cohort),
        )
        .route(
            "/projects/{project}/cohorts/{cohort}",
            delete(delete_cohort),
        )
        .route("/projects/{project}/syncs/{sync}/pause", post(pause_sync))
        .route("/projects/{project}/syncs/{sync}/resume", post(resume_sync))
        .route("/projects/{project}/syncs/{sync}", delete(remove_sync))
        .route(
            "/projects/{project}/runs/{run}/operations",
            get(run_operations),
        )
}

/// Finds a connection of the project by id, or by name when the segment is not an id of one.
async fn connection_in_project(
    state: &AppState,
    project_id: i64,
    segment: &str,
) -> Result<Connection, ApiError> {
    project_or_404(state, project_id).await?;
    if let Ok(id) = segment.parse::<i64>() {
        if let Some(connection) = state
            .store
            .connection(id)
            .await?
            .filter(|c| c.project_id == project_id)
        {
            return Ok(connection);
        }
    }
    state
        .store
        .connection_by_name(project_id, segment)
        .await?
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "connection {segment:?} not found in project {project_id}"
            ))
        })
}

#[derive(Deserialize)]
pub(crate) struct ReconnectBody {
    data_import_key: Option<String>,
    /// The new key of a connection in `attributes` mode.
    rest_api_key: Option<String>,
}

/// Replaces the Data Import Key after Braze accepts it, marks the connection connected and
/// resumes the syncs that a disconnect or a Braze error paused. Syncs an operator paused stay
/// paused.
pub(crate) async fn reconnect(
    State(state): State<AppState>,
    Path((id, segment)): Path<(i64, String)>,
    Json(body): Json<ReconnectBody>,
) -> Result<Json<Value>, ApiError> {
    let connection = connection_in_project(&state, id, &segment).await?;
    let (key_field, key) = if connection.delivery == "attributes" {
        ("rest_api_key", body.rest_api_key)
    } else {
        ("data_import_key", body.data_import_key)
    };
    let data_import_key = key
        .filter(|k| !k.trim().is_empty())
        .ok_or_else(|| ApiError::BadRequest(format!("field `{key_field}` is missing or empty")))?;
    let mut candidate = connection.clone();
    candidate.data_import_key_enc = state.secrets.encrypt(&data_import_key);
    probe_credentials(&state, &candidate).await?;

    let connection = state
        .store
        .replace_data_import_key(connection.id, &candidate.data_import_key_enc)
        .await?;
    let mut resumed = Vec::new();
    for sync in state.store.list_syncs(id).await? {
        let paused_by_connection =
            matches!(sync.paused_by.as_deref(), Some("connection" | "error"));
        if sync.connection_id == connection.id
            && sync.status == "paused"
            && sync.mode == SyncMode::Dynamic
            && paused_by_connection
        {
            state
                .store
                .set_sync_state(sync.id, "active", None, Some(now_ms()))
                .await?;
            resumed.push(sync.id);
        }
    }
    tracing::info!(
        project_id = id,
        connection_id = connection.id,
        resumed_syncs = resumed.len(),
        "Braze connection reconnected with a new Data Import Key; its paused syncs run at the next scheduler tick"
    );
    Ok(Json(
        json!({"connection": connection_json(&connection), "resumed_syncs": resumed}),
    ))
}

/// Marks a connection disconnected and pauses its dynamic syncs, keeping their state.
pub(crate) async fn disconnect(
    State(state): State<AppState>,
    Path((id, segment)): Path<(i64, String)>,
) -> Result<Json<Value>, ApiError> {
    let connection = connection_in_project(&state, id, &segment).await?;
    let reason = format!(
        "connection {:?} was disconnected; reconnect it to resume",
        connection.name
    );
    state
        .store
        .disconnect_connection(connection.id, &reason, now_ms())
        .await?;
    let connection = state
        .store
        .connection(connection.id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("connection {segment:?} not found")))?;
    tracing::info!(
        project_id = id,
        connection_id = connection.id,
        "Braze connection disconnected; its dynamic syncs are paused"
    );
    Ok(Json(connection_json(&connection)))
}

#[derive(Deserialize)]
pub(crate) struct RenameBody {
    name: Option<String>,
}

pub(crate) async fn rename_connection(
    State(state): State<AppState>,
    Path((id, segment)): Path<(i64, String)>,
    Json(body): Json<RenameBody>,
) -> Result<Json<Value>, ApiError> {
    let connection = connection_in_project(&state, id, &segment).await?;
    let name = super::admin::connection_name(body.name)?;
    let connection = state.store.rename_connection(connection.id, &name).await?;
    tracing::info!(
        project_id = id,
        connection_id = connection.id,
        "Braze connection renamed"
    );
    Ok(Json(connection_json(&connection)))
}

/// Renames a cohort. The next run of each of its syncs sends the new name to Braze.
async fn rename_cohort(
    State(state): State<AppState>,
    Path((id, cohort_id)): Path<(i64, i64)>,
    Json(body): Json<RenameBody>,
) -> Result<Json<Value>, ApiError> {
    project_or_404(&state, id).await?;
    let name = required_name(body.name, "name")?;
    let cohort = state
        .store
        .rename_cohort(id, cohort_id, &name, now_ms())
        .await?
        .ok_or_else(|| {
            ApiError::NotFound(format!("cohort {cohort_id} not found in project {id}"))
        })?;
    tracing::info!(
        project_id = id,
        cohort_id,
        "cohort renamed; the next run of each sync sends the new name to Braze"
    );
    Ok(Json(json!(cohort)))
}

#[derive(Deserialize)]
pub(crate) struct RemoveQuery {
    /// First remove every member the sync put in Braze.
    #[serde(default)]
    remove_members: bool,
}

/// Deletes a cohort and stops its syncs, optionally removing their members from Braze first.
pub(crate) async fn delete_cohort(
    State(state): State<AppState>,
    Path((id, cohort_id)): Path<(i64, i64)>,
    Query(query): Query<RemoveQuery>,
) -> Result<Json<Value>, ApiError> {
    project_or_404(&state, id).await?;
    state.store.cohort(id, cohort_id).await?.ok_or_else(|| {
        ApiError::NotFound(format!("cohort {cohort_id} not found in project {id}"))
    })?;
    // A cohort that another cohort uses through `in_cohort` stays, as saving such a reference
    // to a missing cohort is rejected too.
    for other in state.store.list_cohorts(id).await? {
        let Ok(definition) = crate::cohorts::parse(&other.definition) else {
            continue;
        };
        if other.id != cohort_id && definition.cohort_references().contains(&cohort_id) {
            return Err(ApiError::Conflict(format!(
                "cohort {cohort_id} is used by cohort {} ({:?}) through in_cohort; change that cohort first",
                other.id, other.name
            )));
        }
    }
    let mut removed = Vec::new();
    for sync in state.store.list_syncs(id).await? {
        if sync.cohort_id != cohort_id || sync.status == "removed" {
            continue;
        }
        state
            .engine
            .remove_sync(sync.id, query.remove_members)
            .await
            .map_err(sync_error)?;
        removed.push(sync.id);
    }
    state.store.delete_cohort(id, cohort_id, now_ms()).await?;
    tracing::info!(
        project_id = id,
        cohort_id,
        removed_syncs = removed.len(),
        remove_members = query.remove_members,
        "cohort deleted"
    );
    Ok(Json(json!({
        "cohort_id": cohort_id,
        "deleted": true,
        "removed_syncs": removed,
        "members_removed_from_braze": query.remove_members,
    })))
}

pub(crate) async fn pause_sync(
    State(state): State<AppState>,
    Path((id, sync_id)): Path<(i64, i64)>,
) -> Result<Json<Value>, ApiError> {
    let sync = sync_in_project(&state, id, sync_id).await?;
    if sync.status != "active" || sync.mode != SyncMode::Dynamic {
        return Err(ApiError::Conflict(format!(
            "sync {sync_id} is a {} sync with status {}; only active dynamic syncs can be paused",
            sync.mode.as_str(),
            sync.status
        )));
    }
    state
        .store
        .pause_sync(sync_id, "paused by the operator", "operator")
        .await?;
    tracing::info!(
        project_id = id,
        sync_id,
        "sync paused by the operator; it runs again after `syncs resume`"
    );
    Ok(Json(json!(sync_in_project(&state, id, sync_id).await?)))
}

/// Resumes a paused sync; its next run is due at once.
pub(crate) async fn resume_sync(
    State(state): State<AppState>,
    Path((id, sync_id)): Path<(i64, i64)>,
) -> Result<Json<Value>, ApiError> {
    let sync = sync_in_project(&state, id, sync_id).await?;
    if sync.status != "paused" {
        return Err(ApiError::Conflict(format!(
            "sync {sync_id} has status {}, not paused",
            sync.status
        )));
    }
    let connection = state.store.connection(sync.connection_id).await?;
    if let Some(connection) = connection.filter(|c| c.disconnected_at_ms.is_some()) {
        return Err(ApiError::Conflict(format!(
            "connection {:?} of sync {sync_id} is disconnected; reconnect it, which resumes the sync",
            connection.name
        )));
    }
    state
        .store
        .set_sync_state(sync_id, "active", None, Some(now_ms()))
        .await?;
    tracing::info!(
        project_id = id,
        sync_id,
        "sync resumed; it runs at the next scheduler tick"
    );
    Ok(Json(json!(sync_in_project(&state, id, sync_id).await?)))
}

/// Stops a sync for good, optionally removing its members from Braze first.
pub(crate) async fn remove_sync(
    State(state): State<AppState>,
    Path((id, sync_id)): Path<(i64, i64)>,
    Query(query): Query<RemoveQuery>,
) -> Result<Json<Value>, ApiError> {
    sync_in_project(&state, id, sync_id).await?;
    state
        .engine
        .remove_sync(sync_id, query.remove_members)
        .await
        .map_err(sync_error)?;
    Ok(Json(json!(sync_in_project(&state, id, sync_id).await?)))
}

/// Lists every operation of one run: each member (add, no-op or skipped with the reason) and each
/// removed id.
pub(crate) async fn run_operations(
    State(state): State<AppState>,
    Path((id, run_id)): Path<(i64, i64)>,
) -> Result<Json<Value>, ApiError> {
    let run = state
        .store
        .run(run_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("run {run_id} not found in project {id}")))?;
    sync_in_project(&state, id, run.sync_id)
        .await
        .map_err(|_| ApiError::NotFound(format!("run {run_id} not found in project {id}")))?;
    let operations = state.store.run_operations(run_id).await?;
    // A run older than the newest `runs_with_operations` runs of its sync kept only its counts.
    let keep = state.engine.limits().runs_with_operations.max(1);
    let newer = state
        .store
        .list_runs(run.sync_id)
        .await?
        .iter()
        .filter(|other| other.id > run_id)
        .count();
    let deleted = newer >= keep;
    Ok(Json(
        json!({"run": run, "operations": operations, "operations_deleted": deleted}),
    ))
}

/// Builds the reply of a dry run: who the next run would add and remove, and who it skips.
pub(super) fn plan_json(cohort: &Cohort, connection: &Connection, preview: Preview) -> Value {
    let Preview { plan, changes } = preview;
    json!({
        "dry_run": true,
        "cohort_id": cohort.id,
        "connection": connection.name,
        "add": plan.adds,
        "remove": plan.removes,
        "members": plan.counts.members,
        "skipped": plan.counts.skipped,
        "unchanged": plan.counts.unchanged,
        "operations": changes,
    })
}

/// Prometheus metrics in the text exposition format. The paused-syncs gauge is read from the
/// store on each scrape.
pub(super) async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let mut paused = 0;
    for project in state.store.list_projects().await? {
        paused += state
            .store
            .list_syncs(project.id)
            .await?
            .iter()
            .filter(|s| s.status == "paused")
            .count() as i64;
    }
    let metrics = state.engine.metrics();
    metrics.paused_syncs.set(paused);
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics.render(),
    ))
}
