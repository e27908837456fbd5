//! Admin routes for identity: a project's identity mode, and the Original ID Merge failures
//! recorded for it. They sit behind the admin key with the other admin routes.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::ingest::identity_mode;
use super::{ApiError, AppState};
use crate::identity::original::IdentityMode;

async fn require_project(state: &AppState, id: i64) -> Result<(), ApiError> {
    match state.store.project(id).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::NotFound(format!("project {id} not found"))),
    }
}

pub(super) async fn show_mode(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<Value>, ApiError> {
    require_project(&state, id).await?;
    let mode = identity_mode(&state, id).await?;
    Ok(Json(json!({"identity_mode": mode.as_str()})))
}

#[derive(Deserialize)]
pub(super) struct ModeBody {
    identity_mode: Option<String>,
}

/// Sets the identity mode. The mode is fixed once the project has events, because events
/// already stored were resolved under the old mode.
pub(super) async fn set_mode(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<ModeBody>,
) -> Result<Json<Value>, ApiError> {
    require_project(&state, id).await?;
    let name = body
        .identity_mode
        .ok_or_else(|| ApiError::BadRequest("field `identity_mode` is missing".into()))?;
    let requested = IdentityMode::parse(&name).map_err(ApiError::BadRequest)?;
    let current = identity_mode(&state, id).await?;
    if requested == current {
        return Ok(Json(json!({"identity_mode": current.as_str()})));
    }
    // NOTE: an event stored between this count and the write below was resolved under the old
    // mode. The window is one round trip to the store.
    let events = state.store.count_events(id).await?;
    if events > 0 {
        return Err(ApiError::Conflict(format!(
            "project {id} already has {events} events, so its identity mode stays {}",
            current.as_str()
        )));
    }
    state
        .store
        .put_setting(&IdentityMode::setting_key(id), requested.as_str())
        .await?;
    tracing::info!(
        project_id = id,
        identity_mode = requested.as_str(),
        "identity mode set"
    );
    Ok(Json(json!({"identity_mode": requested.as_str()})))
}

#[derive(Deserialize)]
pub(super) struct FailuresQuery {
    limit: Option<i64>,
}

/// Lists recorded identity failures, newest first (at most `limit`, default 100).
pub(super) async fn list_failures(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(query): ApiQuery<FailuresQuery>,
) -> Result<Json<Value>, ApiError> {
    require_project(&state, id).await?;
    let limit = query.limit.unwrap_or(100).clamp(1, 10_000);
    let failures = state.store.identity_failures(id, limit).await?;
    Ok(Json(json!({"failures": failures})))
}
