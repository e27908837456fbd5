//! Cohort routes beyond create and list: editing a definition, the project time zone, preview
//! and explain under the admin API, and Mixpanel's `POST /api/query/cohorts/list`, which
//! authenticates with HTTP Basic and the project's API secret as Mixpanel does.

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiError, AppState};
use crate::cohorts::{self, explain, EvalError};
use crate::secrets;
use crate::store::{Project, StoreError};

/// How many members a preview lists by default, and at most.
const DEFAULT_SAMPLE: usize = 10;
const MAX_SAMPLE: usize = 1000;

/// Routes nested under `/api/v1` behind the admin key.
pub fn admin_routes() -> Router<AppState> {
    Router::new()
        .route("/projects/{project}/timezone", put(set_timezone))
        .route("/projects/{project}/cohorts/{cohort}", put(update_cohort))
        .route(
            "/projects/{project}/cohorts/{cohort}/preview",
            get(preview_cohort),
        )
        .route(
            "/projects/{project}/cohorts/{cohort}/explain",
            get(explain_cohort),
        )
}

/// Mixpanel's query API routes.
pub fn query_routes() -> Router<AppState> {
    Router::new().route("/api/query/cohorts/list", post(list_cohorts_mixpanel))
}

/// Maps an evaluation failure to an API error; storage failures are 503, never an empty cohort.
pub fn eval_error(error: EvalError) -> ApiError {
    match error {
        EvalError::Store(e) => ApiError::Storage(e),
        other => ApiError::Conflict(format!("cohort evaluation failed: {other}")),
    }
}

/// Rejects a definition that references a missing cohort or would close a cycle. The returned
/// guard serialises cohort saves: the caller keeps it until the definition is stored.
pub async fn check_saved_references(
    state: &AppState,
    project_id: i64,
    cohort_id: Option<i64>,
    definition: &cohorts::Definition,
) -> Result<tokio::sync::OwnedMutexGuard<()>, ApiError> {
    let guard = state.cohort_saves.clone().lock_owned().await;
    cohorts::check_references(state.store.as_ref(), project_id, cohort_id, definition)
        .await
        .map_err(|e| match e {
            EvalError::Store(e) => ApiError::Storage(e),
            other => ApiError::BadRequest(format!("invalid cohort definition: in_cohort: {other}")),
        })?;
    Ok(guard)
}

async fn project_or_404(state: &AppState, id: i64) -> Result<Project, ApiError> {
    state
        .store
        .project(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("project {id} not found")))
}

#[derive(Deserialize)]
struct TimezoneBody {
    timezone: Option<String>,
}

async fn set_timezone(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Json(body): Json<TimezoneBody>,
) -> Result<Json<Value>, ApiError> {
    project_or_404(&state, id).await?;
    let name = body
        .timezone
        .ok_or_else(|| ApiError::BadRequest("field `timezone` is missing".into()))?;
    let tz = cohorts::window::parse_timezone(&name)
        .map_err(|e| ApiError::BadRequest(format!("field `timezone`: {e}")))?;
    state.store.set_project_timezone(id, tz.name()).await?;
    tracing::info!(
        project_id = id,
        timezone = tz.name(),
        "project time zone set; cohort windows use it from the next evaluation"
    );
    Ok(Json(json!({"id": id, "timezone": tz.name()})))
}

#[derive(Deserialize)]
pub(crate) struct CohortBody {
    name: Option<String>,
    definition: Option<Value>,
}

pub(crate) async fn update_cohort(
    State(state): State<AppState>,
    Path((id, cohort_id)): Path<(i64, i64)>,
    Json(body): Json<CohortBody>,
) -> Result<Json<Value>, ApiError> {
    let existing = state.store.cohort(id, cohort_id).await?.ok_or_else(|| {
        ApiError::NotFound(format!("cohort {cohort_id} not found in project {id}"))
    })?;
    let name = match body.name {
        Some(name) if name.trim().is_empty() => {
            return Err(ApiError::BadRequest("field `name` is empty".into()))
        }
        Some(name) => name,
        None => existing.name,
    };
    let definition = body.definition.unwrap_or(existing.definition);
    let parsed = cohorts::parse(&definition)
        .map_err(|e| ApiError::BadRequest(format!("invalid cohort definition: {e}")))?;
    let saving = check_saved_references(&state, id, Some(cohort_id), &parsed).await?;
    let cohort = state
        .store
        .update_cohort(id, cohort_id, &name, &definition, now_ms())
        .await?;
    drop(saving);
    tracing::info!(
        project_id = id,
        cohort_id,
        "cohort updated; syncs use the new definition from their next run"
    );
    Ok(Json(json!(cohort)))
}

#[derive(Deserialize)]
pub(crate) struct PreviewQuery {
    connection: Option<String>,
    sample: Option<usize>,
}

/// Counts the members, and how many carry the user-id property of a connection (default
/// `$braze_external_id`) as a non-empty string, so that a sync could export them.
pub(crate) async fn preview_cohort(
    State(state): State<AppState>,
    Path((id, cohort_id)): Path<(i64, i64)>,
    Query(query): Query<PreviewQuery>,
) -> Result<Json<Value>, ApiError> {
    let (definition, _) = stored_definition(&state, id, cohort_id).await?;
    let property = match &query.connection {
        None => super::admin::DEFAULT_USER_ID_PROPERTY.to_owned(),
        Some(name) => {
            state
                .store
                .connection_by_name(id, name)
                .await?
                .ok_or_else(|| {
                    ApiError::NotFound(format!("connection {name:?} not found in project {id}"))
                })?
                .user_id_property
        }
    };
    let sample_size = query.sample.unwrap_or(DEFAULT_SAMPLE).min(MAX_SAMPLE);
    let evaluated = cohorts::evaluate_with_properties(
        state.store.as_ref(),
        id,
        &definition,
        std::slice::from_ref(&property),
        now_ms(),
    )
    .await
    .map_err(eval_error)?;
    let exportable = crate::sync::exportable_count(&evaluated, &property);
    let sample: Vec<&String> = evaluated.members.iter().take(sample_size).collect();
    Ok(Json(json!({
        "cohort_id": cohort_id,
        "count": evaluated.members.len(),
        "user_id_property": property,
        "exportable": exportable,
        "not_exportable": evaluated.members.len() - exportable,
        "sample": sample,
    })))
}

#[derive(Deserialize)]
pub(crate) struct ExplainQuery {
    user: Option<String>,
}

pub(crate) async fn explain_cohort(
    State(state): State<AppState>,
    Path((id, cohort_id)): Path<(i64, i64)>,
    Query(query): Query<ExplainQuery>,
) -> Result<Json<Value>, ApiError> {
    let user = query
        .user
        .filter(|u| !u.is_empty())
        .ok_or_else(|| ApiError::BadRequest("query parameter `user` is missing".into()))?;
    let (definition, _) = stored_definition(&state, id, cohort_id).await?;
    let now = now_ms();
    let loaded = cohorts::eval::load(state.store.as_ref(), id, &definition, now)
        .await
        .map_err(eval_error)?;
    let report = explain::explain(&loaded, &definition, now, &user).map_err(eval_error)?;
    Ok(Json(json!(report)))
}

async fn stored_definition(
    state: &AppState,
    id: i64,
    cohort_id: i64,
) -> Result<(cohorts::Definition, crate::store::Cohort), ApiError> {
    let cohort = state.store.cohort(id, cohort_id).await?.ok_or_else(|| {
        ApiError::NotFound(format!("cohort {cohort_id} not found in project {id}"))
    })?;
    let definition = cohorts::parse(&cohort.definition)
        .map_err(|e| ApiError::Conflict(format!("stored definition is invalid: {e}")))?;
    Ok((definition, cohort))
}

/// Lists the project's cohorts in the shape of Mixpanel's `POST /api/query/cohorts/list`:
/// `id`, `name`, `count`, `description`, `created` (`YYYY-MM-DD HH:MM:SS`, UTC), `is_visible`
/// and `project_id`.
async fn list_cohorts_mixpanel(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let project = project_from_basic(&state, &headers).await?;
    let now = now_ms();
    let mut listed = Vec::new();
    for cohort in state.store.list_cohorts(project.id).await? {
        let definition = cohorts::parse(&cohort.definition).map_err(|e| {
            ApiError::Conflict(format!(
                "cohort {}: stored definition is invalid: {e}",
                cohort.id
            ))
        })?;
        let evaluated = cohorts::evaluate_with_properties(
            state.store.as_ref(),
            project.id,
            &definition,
            &[],
            now,
        )
        .await
        .map_err(eval_error)?;
        let created = chrono::DateTime::from_timestamp_millis(cohort.created_at_ms)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default();
        listed.push(json!({
            "id": cohort.id,
            "name": cohort.name,
            "count": evaluated.members.len(),
            "description": "",
            "created": created,
            "is_visible": 1,
            "project_id": project.id,
        }));
    }
    Ok(Json(Value::Array(listed)))
}

/// Finds the project whose API secret is the HTTP Basic user name.
async fn project_from_basic(state: &AppState, headers: &HeaderMap) -> Result<Project, ApiError> {
    let unauthorized = || {
        ApiError::BasicUnauthorized(
            "missing or invalid credentials: authenticate with HTTP Basic, the project's API secret as user name and an empty password".into(),
        )
    };
    let encoded = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .ok_or_else(unauthorized)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(unauthorized)?;
    let secret = decoded.split(':').next().unwrap_or_default();
    if secret.is_empty() {
        return Err(unauthorized());
    }
    match state
        .store
        .project_by_api_secret_hash(&secrets::hash(secret))
        .await
    {
        Ok(Some(project)) => Ok(project),
        Ok(None) | Err(StoreError::NotFound { .. }) => Err(unauthorized()),
        Err(e) => Err(ApiError::Storage(e)),
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
