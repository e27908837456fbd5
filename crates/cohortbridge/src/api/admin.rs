//! The admin API under `/api/v1`, authenticated with `Authorization: Bearer <key>`: the admin
//! key, or a person's API key limited by their role (see `auth`). The CLI's admin commands are
//! clients of these routes. No route returns a Data Import Key.

use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::middleware;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Principal;
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::{identity, ApiError, AppState};
use crate::accounts::Action;
use crate::braze::client::{BrazeError, PROBE_CONNECT_TIMEOUT};
use crate::braze::instances;
use crate::cohorts;
use crate::secrets;
use crate::store::{Connection, NewConnection, Project, ProjectSecret, SyncMode};
use crate::sync::{SyncError, Trigger};

/// The user-id property a connection uses when none is given.
pub const DEFAULT_USER_ID_PROPERTY: &str = "$braze_external_id";
/// The cadence of a dynamic sync when none is given: 15 minutes.
pub const DEFAULT_SYNC_INTERVAL_SECS: i64 = 15 * 60;
/// Maximum cadence of a dynamic sync: 366 days.
pub const MAX_SYNC_INTERVAL_SECS: i64 = 366 * 24 * 60 * 60;
const MAX_NAME_LEN: usize = 255;

pub fn routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/projects", get(list_projects))
        .route("/projects/{project}", get(show_project))
        .route("/projects/{project}/stats", get(project_stats))
        .route("/projects/{project}/api-secret", post(replace_api_secret))
        .route(
            "/projects/{project}/currents-token",
            post(replace_currents_token),
        )
        .route(
            "/projects/{project}/credentials",
            get(list_credentials).post(create_credential),
        )
        .route(
            "/projects/{project}/profiles/{distinct_id}",
            get(show_profile),
        )
        .route(
            "/projects/{project}/groups/{group_key}/{group_id}",
            get(show_group_profile),
        )
        .route(
            "/projects/{project}/identity-mode",
            get(identity::show_mode)
                .put(identity::set_mode)
                .post(identity::set_mode),
        )
        .route(
            "/projects/{project}/identity-failures",
            get(identity::list_failures),
        )
        .route("/projects/{project}/events", get(list_events))
        .route(
            "/projects/{project}/cohorts",
            get(list_cohorts).post(create_cohort),
        )
        .route("/projects/{project}/cohorts/{cohort}", get(show_cohort))
        .route(
            "/projects/{project}/cohorts/{cohort}/members",
            get(cohort_members),
        )
        .route(
            "/projects/{project}/connections",
            get(list_connections).post(create_connection),
        )
        .route("/projects/{project}/exports", post(create_export_route))
        .route("/projects/{project}/syncs", get(list_syncs))
        .route("/projects/{project}/syncs/{sync}", get(show_sync))
        .route("/projects/{project}/syncs/{sync}/run", post(run_sync))
        .route("/projects/{project}/mtu", get(mtu))
        .route("/mtu", get(mtu_default_project))
        .merge(super::lifecycle::routes())
        .merge(super::cohorts::admin_routes())
        .merge(super::auth::routes())
        .route_layer(middleware::from_fn_with_state(
            state,
            super::auth::require_role,
        ))
}

pub(crate) async fn project_or_404(state: &AppState, id: i64) -> Result<Project, ApiError> {
    state
        .store
        .project(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("project {id} not found")))
}

async fn list_projects(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let projects = state.store.list_projects().await?;
    let list: Vec<Value> = projects
        .iter()
        .map(|p| json!({"id": p.id, "name": p.name, "token": p.token}))
        .collect();
    Ok(Json(json!(list)))
}

/// Returns the project with its public token. Its API secret and Currents token are never
/// returned here: the server keeps them encrypted and hashed, and shows a new one once, in the
/// reply of the request that generates it.
async fn show_project(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<Value>, ApiError> {
    let project = project_or_404(&state, id).await?;
    Ok(Json(json!({
        "id": project.id,
        "name": project.name,
        "token": project.token,
        "created_at": iso(project.created_at_ms),
        "timezone": state.store.project_timezone(id).await?,
        "identity_mode": super::ingest::identity_mode(&state, id).await?.as_str(),
    })))
}

/// Generates a new credential of `kind` for the project, stores it encrypted and hashed, and
/// returns it. The earlier one stops working at once.
pub(crate) async fn replace_secret(
    state: &AppState,
    project_id: i64,
    kind: ProjectSecret,
) -> Result<String, ApiError> {
    project_or_404(state, project_id).await?;
    let value = match kind {
        ProjectSecret::ApiSecret => crate::secrets::random_token(16),
        ProjectSecret::CurrentsToken => crate::secrets::random_token(32),
    };
    state
        .store
        .replace_project_secret(
            project_id,
            kind,
            state.secrets.encrypt(&value),
            crate::secrets::hash(&value),
        )
        .await?;
    tracing::info!(project_id, credential = ?kind, "replaced a project credential");
    Ok(value)
}

/// `POST /projects/{id}/api-secret`: a new API secret, returned only in this reply.
async fn replace_api_secret(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<axum::response::Response, ApiError> {
    let secret = replace_secret(&state, id, ProjectSecret::ApiSecret).await?;
    Ok(no_store(json!({
        "api_secret": secret,
        "note": "shown only now; the previous API secret no longer works",
    })))
}

/// Returns a JSON reply that carries a secret shown once, marked so that no cache stores it.
fn no_store(body: Value) -> axum::response::Response {
    use axum::response::IntoResponse;

    (
        [(
            axum::http::header::CACHE_CONTROL,
            axum::http::HeaderValue::from_static("no-store"),
        )],
        Json(body),
    )
        .into_response()
}

/// `POST /projects/{id}/currents-token`: a new Currents token, returned only in this reply.
async fn replace_currents_token(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<axum::response::Response, ApiError> {
    let token = replace_secret(&state, id, ProjectSecret::CurrentsToken).await?;
    Ok(no_store(json!({
        "currents_token": token,
        "note": "shown only now; the previous Currents token no longer works",
    })))
}

async fn project_stats(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<Value>, ApiError> {
    project_or_404(&state, id).await?;
    Ok(Json(json!({
        "events": state.store.count_events(id).await?,
        "currents_quarantined": state.store.count_quarantined(id).await?,
    })))
}

pub(crate) async fn show_profile(
    State(state): State<AppState>,
    ApiPath((id, distinct_id)): ApiPath<(i64, String)>,
) -> Result<Json<Value>, ApiError> {
    project_or_404(&state, id).await?;
    let profile = state
        .store
        .profile(id, &distinct_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no profile for distinct id {distinct_id:?}")))?;
    Ok(Json(
        json!({"distinct_id": distinct_id, "properties": profile}),
    ))
}

async fn show_group_profile(
    State(state): State<AppState>,
    ApiPath((id, group_key, group_id)): ApiPath<(i64, String, String)>,
) -> Result<Json<Value>, ApiError> {
    project_or_404(&state, id).await?;
    let profile = state
        .store
        .group_profile(id, &group_key, &group_id)
        .await?
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "no group profile for group key {group_key:?} and group id {group_id:?}"
            ))
        })?;
    Ok(Json(json!({
        "group_key": group_key,
        "group_id": group_id,
        "properties": profile,
    })))
}

#[derive(Deserialize)]
struct NewCredentialBody {
    name: Option<String>,
    /// Marks every event imported with the credential as Braze's (`$partner_id` = `braze`).
    #[serde(default)]
    braze_currents: bool,
}

/// Creates an extra `/import` credential and returns its secret, which is shown only here.
async fn create_credential(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<NewCredentialBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    project_or_404(&state, id).await?;
    let name = required_name(body.name, "name")?;
    let secret = secrets::random_token(16);
    let partner_id = body
        .braze_currents
        .then(|| crate::braze::currents::PARTNER_ID.to_owned());
    let credential = state
        .store
        .create_import_credential(
            id,
            crate::store::NewImportCredential {
                name,
                secret_hash: secrets::hash(&secret),
                partner_id,
            },
            now_ms(),
        )
        .await?;
    tracing::info!(
        project_id = id,
        credential_id = credential.id,
        "import credential created"
    );
    Ok((
        StatusCode::CREATED,
        Json(json!({"credential": credential, "secret": secret})),
    ))
}

async fn list_credentials(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<Value>, ApiError> {
    project_or_404(&state, id).await?;
    Ok(Json(json!(state.store.list_import_credentials(id).await?)))
}

#[derive(Deserialize)]
pub(crate) struct EventsQuery {
    distinct_id: Option<String>,
    limit: Option<i64>,
}

/// Events stored under one distinct id, oldest first (at most `limit`, default 1000).
pub(crate) async fn list_events(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> Result<Json<Value>, ApiError> {
    project_or_404(&state, id).await?;
    let distinct_id = query
        .distinct_id
        .ok_or_else(|| ApiError::BadRequest("query parameter `distinct_id` is missing".into()))?;
    let limit = query.limit.unwrap_or(1000).clamp(1, 10_000);
    let events = state.store.events_of(id, &distinct_id, limit).await?;
    let list: Vec<Value> = events
        .into_iter()
        .map(|e| {
            json!({
                "event": e.event,
                "distinct_id": e.distinct_id,
                "time_ms": e.time_ms,
                "insert_id": e.insert_id,
                "properties": e.properties,
            })
        })
        .collect();
    Ok(Json(json!(list)))
}

#[derive(Deserialize)]
pub(crate) struct NewCohortBody {
    name: Option<String>,
    definition: Option<Value>,
}

pub(crate) async fn create_cohort(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<NewCohortBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    project_or_404(&state, id).await?;
    let name = required_name(body.name, "name")?;
    let definition = body
        .definition
        .ok_or_else(|| ApiError::BadRequest("field `definition` is missing".into()))?;
    let parsed = cohorts::parse(&definition)
        .map_err(|e| ApiError::BadRequest(format!("invalid cohort definition: {e}")))?;
    let saving = super::cohorts::check_saved_references(&state, id, None, &parsed).await?;
    let cohort = state
        .store
        .create_cohort(id, &name, &definition, now_ms())
        .await?;
    drop(saving);
    tracing::info!(project_id = id, cohort_id = cohort.id, "cohort created");
    Ok((StatusCode::CREATED, Json(json!(cohort))))
}

pub(super) fn required_name(value: Option<String>, field: &str) -> Result<String, ApiError> {
    let name = value.ok_or_else(|| ApiError::BadRequest(format!("field `{field}` is missing")))?;
    if name.trim().is_empty() {
        return Err(ApiError::BadRequest(format!("field `{field}` is empty")));
    }
    if name.chars().count() > MAX_NAME_LEN {
        return Err(ApiError::BadRequest(format!(
            "field `{field}` is longer than {MAX_NAME_LEN} characters"
        )));
    }
    Ok(name)
}

/// Checks a connection name: a name of digits only would be read as a connection id.
pub(super) fn connection_name(value: Option<String>) -> Result<String, ApiError> {
    let name = required_name(value, "name")?;
    if name.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::BadRequest(format!(
            "field `name` {name:?} is a number, which commands read as a connection id; use a name with a letter"
        )));
    }
    Ok(name)
}

pub(crate) async fn list_cohorts(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<Value>, ApiError> {
    project_or_404(&state, id).await?;
    Ok(Json(json!(state.store.list_cohorts(id).await?)))
}

async fn show_cohort(
    State(state): State<AppState>,
    ApiPath((id, cohort)): ApiPath<(i64, i64)>,
) -> Result<Json<Value>, ApiError> {
    let cohort =
        state.store.cohort(id, cohort).await?.ok_or_else(|| {
            ApiError::NotFound(format!("cohort {cohort} not found in project {id}"))
        })?;
    Ok(Json(json!(cohort)))
}

/// Evaluates the cohort now and returns its members as sorted canonical distinct ids.
async fn cohort_members(
    State(state): State<AppState>,
    ApiPath((id, cohort_id)): ApiPath<(i64, i64)>,
) -> Result<Json<Value>, ApiError> {
    let cohort = state.store.cohort(id, cohort_id).await?.ok_or_else(|| {
        ApiError::NotFound(format!("cohort {cohort_id} not found in project {id}"))
    })?;
    let definition = cohorts::parse(&cohort.definition)
        .map_err(|e| ApiError::Conflict(format!("stored definition is invalid: {e}")))?;
    let evaluated =
        cohorts::evaluate_with_properties(state.store.as_ref(), id, &definition, &[], now_ms())
            .await
            .map_err(eval_error)?;
    Ok(Json(
        json!({"cohort_id": cohort_id, "count": evaluated.members.len(), "members": evaluated.members}),
    ))
}

fn eval_error(error: cohorts::EvalError) -> ApiError {
    super::cohorts::eval_error(error)
}

pub(super) fn connection_json(connection: &Connection) -> Value {
    json!({
        "id": connection.id,
        "name": connection.name,
        "instance": connection.instance,
        "base_url": connection.base_url,
        "user_id_property": connection.user_id_property,
        "created_at": iso(connection.created_at_ms),
        "status": if connection.disconnected_at_ms.is_some() { "disconnected" } else { "connected" },
        "export_menu_name": format!("Braze ({})", connection.name),
        "delivery": connection.delivery,
        "attribute_name": connection.attribute_name,
    })
}

#[derive(Deserialize)]
pub(crate) struct NewConnectionBody {
    name: Option<String>,
    instance: Option<String>,
    base_url: Option<String>,
    data_import_key: Option<String>,
    user_id_property: Option<String>,
    /// `cohort_import` (default) or `attributes`.
    delivery: Option<String>,
    /// The customer REST API key, required in `attributes` mode.
    rest_api_key: Option<String>,
    /// The array custom attribute in `attributes` mode (default `mixpanel_cohorts`).
    attribute_name: Option<String>,
}

/// The array custom attribute of cohort names when a connection names none.
pub const DEFAULT_ATTRIBUTE_NAME: &str = "mixpanel_cohorts";

/// Adds a connection after Braze accepts its credentials.
pub(crate) async fn create_connection(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<NewConnectionBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    project_or_404(&state, id).await?;
    let name = connection_name(body.name)?;
    if state.store.connection_by_name(id, &name).await?.is_some() {
        return Err(ApiError::Conflict(format!(
            "a connection named {name:?} already exists"
        )));
    }
    let (instance, base_url) = resolve_instance(&state, body.instance, body.base_url)?;
    let delivery = body.delivery.unwrap_or_else(|| "cohort_import".into());
    let (key_field, key, attribute_name) = match delivery.as_str() {
        "cohort_import" => ("data_import_key", body.data_import_key, None),
        "attributes" => {
            let attribute = body
                .attribute_name
                .unwrap_or_else(|| DEFAULT_ATTRIBUTE_NAME.to_owned());
            if attribute.trim().is_empty() || attribute.starts_with('$') {
                return Err(ApiError::BadRequest(format!(
                    "field `attribute_name` {attribute:?} is invalid; expected a custom attribute name not starting with $"
                )));
            }
            ("rest_api_key", body.rest_api_key, Some(attribute))
        }
        other => {
            return Err(ApiError::BadRequest(format!(
            "field `delivery` {other:?} is invalid; expected \"cohort_import\" or \"attributes\""
        )))
        }
    };
    let data_import_key = key
        .filter(|k| !k.trim().is_empty())
        .ok_or_else(|| ApiError::BadRequest(format!("field `{key_field}` is missing or empty")))?;
    let user_id_property = match body.user_id_property {
        None => DEFAULT_USER_ID_PROPERTY.to_owned(),
        Some(p) if p.trim().is_empty() => {
            return Err(ApiError::BadRequest(
                "field `user_id_property` is empty".into(),
            ))
        }
        Some(p) => p,
    };

    let probe_connection = Connection {
        id: 0,
        project_id: id,
        name: name.clone(),
        instance: instance.clone(),
        base_url: base_url.clone(),
        data_import_key_enc: state.secrets.encrypt(&data_import_key),
        user_id_property: user_id_property.clone(),
        created_at_ms: 0,
        disconnected_at_ms: None,
        delivery: delivery.clone(),
        attribute_name: attribute_name.clone(),
    };
    probe_credentials(&state, &probe_connection).await?;

    let connection = state
        .store
        .create_connection(
            id,
            NewConnection {
                name,
                instance,
                base_url,
                data_import_key_enc: probe_connection.data_import_key_enc,
                user_id_property,
                delivery,
                attribute_name,
            },
            now_ms(),
        )
        .await?;
    tracing::info!(project_id = id, connection_id = connection.id, instance = %connection.instance, "Braze connection added");
    Ok((StatusCode::CREATED, Json(connection_json(&connection))))
}

/// Checks a connection's credentials with Braze through an empty `cohort_changes` request.
pub(super) async fn probe_credentials(
    state: &AppState,
    connection: &Connection,
) -> Result<(), ApiError> {
    let base_url = &connection.base_url;
    let credentials = state
        .engine
        .credentials(connection)
        .map_err(ApiError::Conflict)?;
    let probe = if connection.delivery == "attributes" {
        state.braze.probe_users_track(base_url, &credentials).await
    } else {
        state.braze.probe(base_url, &credentials).await
    };
    match probe {
        Ok(()) => Ok(()),
        Err(BrazeError::Rejected { status, message }) => Err(ApiError::BadRequest(format!(
            "Braze rejected the credentials (HTTP {status}: {message}); check the {} and the instance",
            if connection.delivery == "attributes" { "REST API key" } else { "Data Import Key" }
        ))),
        Err(BrazeError::GaveUp { last, .. }) => Err(ApiError::Upstream(format!(
            "could not check the credentials with Braze at {base_url}: {last}; the check is one \
             attempt that waits at most {} s to connect, so check the URL and the network, then \
             try again",
            PROBE_CONNECT_TIMEOUT.as_secs()
        ))),
        Err(e @ BrazeError::RateLimited { .. }) => Err(ApiError::Upstream(format!(
            "could not check the credentials with Braze at {base_url}: {e}"
        ))),
    }
}

/// Resolves the instance name and base URL of a new connection. A base URL outside Braze's instance
/// table is accepted only when the operator allowed it at start.
fn unknown_instance(instance: &str) -> ApiError {
    ApiError::BadRequest(format!(
        "field `instance` {instance:?} is not a Braze instance; expected one of {}",
        instances::instance_ids().join(", ")
    ))
}

fn resolve_instance(
    state: &AppState,
    instance: Option<String>,
    base_url: Option<String>,
) -> Result<(String, String), ApiError> {
    match (instance, base_url) {
        (instance, Some(url)) => {
            if !state.allow_custom_braze_url {
                return Err(ApiError::BadRequest(
                    "a custom Braze base URL is not allowed; the operator must start the server with --allow-custom-braze-url".into(),
                ));
            }
            let parsed = reqwest::Url::parse(&url).map_err(|e| {
                ApiError::BadRequest(format!("field `base_url` {url:?} is not a URL: {e}"))
            })?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
                return Err(ApiError::BadRequest(format!(
                    "field `base_url` {url:?} must be an http or https URL with a host"
                )));
            }
            if !parsed.username().is_empty() || parsed.password().is_some() {
                return Err(ApiError::BadRequest(
                    "field `base_url` must not contain a user name or password; Braze's credentials go in `data_import_key`".into(),
                ));
            }
            // A custom URL may stand for a known instance (a proxy, or the emulator playing
            // one), whose region then picks the partner API key.
            let instance = match instance {
                Some(instance) => {
                    instances::base_url(&instance).ok_or_else(|| unknown_instance(&instance))?;
                    instance.to_ascii_uppercase()
                }
                None => instances::CUSTOM_INSTANCE.to_owned(),
            };
            Ok((instance, url.trim_end_matches('/').to_owned()))
        }
        (Some(instance), None) => {
            let url = instances::base_url(&instance).ok_or_else(|| unknown_instance(&instance))?;
            Ok((instance.to_ascii_uppercase(), url.to_owned()))
        }
        (None, None) => Err(ApiError::BadRequest(format!(
            "field `instance` is missing; expected one of {}",
            instances::instance_ids().join(", ")
        ))),
    }
}

pub(crate) async fn list_connections(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<Value>, ApiError> {
    project_or_404(&state, id).await?;
    let connections = state.store.list_connections(id).await?;
    Ok(Json(json!(connections
        .iter()
        .map(connection_json)
        .collect::<Vec<_>>())))
}

#[derive(Deserialize)]
pub(crate) struct NewExportBody {
    cohort_id: Option<i64>,
    connection: Option<String>,
    mode: Option<String>,
    every_secs: Option<i64>,
    /// Return what the next run would add and remove, without creating or sending anything.
    #[serde(default)]
    dry_run: bool,
}

/// Checks the role against the body, then creates the export. A dry run is a read-only preview
/// that any role may request, and any other export needs the export permission.
async fn create_export_route(
    state: State<AppState>,
    Extension(principal): Extension<Principal>,
    id: ApiPath<i64>,
    ApiJson(body): ApiJson<NewExportBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let action = if body.dry_run {
        Action::View
    } else {
        Action::Export
    };
    principal.require(action)?;
    create_export(state, id, ApiJson(body)).await
}

/// Creates a one-time export or a dynamic sync, runs it once now and returns the run.
pub(crate) async fn create_export(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<NewExportBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    project_or_404(&state, id).await?;
    let cohort_id = body
        .cohort_id
        .ok_or_else(|| ApiError::BadRequest("field `cohort_id` is missing".into()))?;
    let cohort = state.store.cohort(id, cohort_id).await?.ok_or_else(|| {
        ApiError::NotFound(format!("cohort {cohort_id} not found in project {id}"))
    })?;
    let connection_name = body
        .connection
        .ok_or_else(|| ApiError::BadRequest("field `connection` is missing".into()))?;
    let connection = state
        .store
        .connection_by_name(id, &connection_name)
        .await?
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "connection {connection_name:?} not found in project {id}"
            ))
        })?;
    if body.dry_run {
        let plan = state
            .engine
            .preview(id, &cohort, &connection)
            .await
            .map_err(ApiError::Conflict)?;
        return Ok((
            StatusCode::OK,
            Json(super::lifecycle::plan_json(&cohort, &connection, plan)),
        ));
    }
    if connection.disconnected_at_ms.is_some() {
        return Err(ApiError::Conflict(format!(
            "connection {connection_name:?} is disconnected; reconnect it before exporting"
        )));
    }
    let (mode, interval) = match body.mode.as_deref() {
        Some("once") => (SyncMode::Once, None),
        Some("dynamic") => {
            let every = body.every_secs.unwrap_or(DEFAULT_SYNC_INTERVAL_SECS);
            let min = state.min_sync_interval.as_secs() as i64;
            if every < min {
                return Err(ApiError::BadRequest(format!(
                    "field `every_secs` {every} is shorter than the minimum of {min} seconds"
                )));
            }
            if every > MAX_SYNC_INTERVAL_SECS {
                return Err(ApiError::BadRequest(format!(
                    "field `every_secs` {every} is longer than the maximum of {MAX_SYNC_INTERVAL_SECS} seconds (366 days)"
                )));
            }
            let limit = state.engine.limits().max_dynamic_syncs_per_project;
            let dynamic = state
                .store
                .list_syncs(id)
                .await?
                .into_iter()
                .filter(|s| s.mode == SyncMode::Dynamic && s.status != "removed")
                .count();
            if dynamic >= limit {
                return Err(ApiError::Conflict(format!(
                    "project {id} already has {dynamic} dynamic syncs, the limit is {limit} \
                     (serve flag --max-dynamic-syncs-per-project); remove one with `syncs remove` first"
                )));
            }
            (SyncMode::Dynamic, Some(every))
        }
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "field `mode` {other:?} is invalid; expected \"once\" or \"dynamic\""
            )))
        }
        None => {
            return Err(ApiError::BadRequest(
                "field `mode` is missing; expected \"once\" or \"dynamic\"".into(),
            ))
        }
    };
    // Creating the sync and its first run happen in one task, so a client that disconnects
    // cannot leave a sync that was created but never run.
    let store = state.store.clone();
    let engine = state.engine.clone();
    let (cohort_id, connection_id) = (cohort.id, connection.id);
    let task = tokio::spawn(async move {
        let sync = store
            .create_sync(id, cohort_id, connection_id, mode, interval, now_ms())
            .await?;
        tracing::info!(
            project_id = id,
            cohort_id,
            sync_id = sync.id,
            mode = mode.as_str(),
            "export created"
        );
        let run = engine
            .run_triggered(sync.id, Trigger::Export)
            .await
            .map_err(sync_error)?;
        let sync = store.sync(sync.id).await?.unwrap_or(sync);
        Ok::<_, ApiError>(json!({"sync": sync, "run": run}))
    });
    let reply = task
        .await
        .map_err(|e| ApiError::Conflict(format!("export task failed: {e}")))??;
    Ok((StatusCode::CREATED, Json(reply)))
}

/// Runs a sync in its own task and waits for it. A client that disconnects drops only the
/// wait, so the run still finishes and is recorded.
async fn run_detached(state: &AppState, sync_id: i64) -> Result<crate::store::SyncRun, ApiError> {
    let engine = state.engine.clone();
    tokio::spawn(async move { engine.run(sync_id).await })
        .await
        .map_err(|e| ApiError::Conflict(format!("sync {sync_id} run task failed: {e}")))?
        .map_err(sync_error)
}

pub(super) fn sync_error(error: SyncError) -> ApiError {
    match error {
        SyncError::Store(e) => ApiError::Storage(e),
        SyncError::NotFound(id) => ApiError::NotFound(format!("sync {id} not found")),
        e @ (SyncError::AlreadyRunning(_)
        | SyncError::RunningElsewhere(_)
        | SyncError::NotActive { .. }) => ApiError::Conflict(e.to_string()),
        e @ SyncError::Removal { .. } => ApiError::Upstream(e.to_string()),
    }
}

/// Hides error messages from a role that may not see sync errors: the error of each run, and
/// the reason of a sync that an error paused or failed.
pub(crate) fn redact_sync_errors(
    principal: &Principal,
    sync: &mut crate::store::Sync,
    runs: &mut [crate::store::SyncRun],
) {
    if principal.role.allows(Action::ViewSyncErrors) {
        return;
    }
    let hidden = || Some("hidden: only owners and admins see sync errors".to_owned());
    for run in runs {
        if run.error.is_some() {
            run.error = hidden();
        }
    }
    if sync.paused_by.as_deref() == Some("error") || sync.status == "failed" {
        sync.status_reason = hidden();
    }
}

pub(crate) async fn list_syncs(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<Value>, ApiError> {
    project_or_404(&state, id).await?;
    let mut list = Vec::new();
    for mut sync in state.store.list_syncs(id).await? {
        let mut runs = state.store.list_runs(sync.id).await?;
        redact_sync_errors(&principal, &mut sync, &mut runs);
        let last_run = runs.pop();
        list.push(json!({"sync": sync, "last_run": last_run}));
    }
    Ok(Json(json!(list)))
}

pub(super) async fn sync_in_project(
    state: &AppState,
    id: i64,
    sync_id: i64,
) -> Result<crate::store::Sync, ApiError> {
    state
        .store
        .sync(sync_id)
        .await?
        .filter(|s| s.project_id == id)
        .ok_or_else(|| ApiError::NotFound(format!("sync {sync_id} not found in project {id}")))
}

pub(crate) async fn show_sync(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath((id, sync_id)): ApiPath<(i64, i64)>,
) -> Result<Json<Value>, ApiError> {
    let mut sync = sync_in_project(&state, id, sync_id).await?;
    let mut runs = state.store.list_runs(sync_id).await?;
    redact_sync_errors(&principal, &mut sync, &mut runs);
    let last_run_at = runs.last().map(|r| iso(r.started_at_ms));
    Ok(Json(json!({
        "sync": sync,
        "cadence_secs": sync.interval_secs,
        "last_run_at": last_run_at,
        "next_run_at": sync.next_run_at_ms.map(iso),
        "runs": runs,
    })))
}

pub(crate) async fn run_sync(
    State(state): State<AppState>,
    ApiPath((id, sync_id)): ApiPath<(i64, i64)>,
) -> Result<Json<Value>, ApiError> {
    sync_in_project(&state, id, sync_id).await?;
    let run = run_detached(&state, sync_id).await?;
    Ok(Json(json!(run)))
}

#[derive(Deserialize)]
pub(crate) struct MtuQuery {
    month: Option<String>,
    /// A distinct id whose standing to explain instead of the month's report.
    explain: Option<String>,
    /// The project, for the project-less route `/api/v1/mtu`; default 1.
    project: Option<i64>,
}

/// Returns the MTU report of a month, or with `explain=DISTINCT_ID` why that user counts.
async fn mtu(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(query): ApiQuery<MtuQuery>,
) -> Result<Json<Value>, ApiError> {
    mtu_for_project(&state, id, query).await
}

async fn mtu_default_project(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<MtuQuery>,
) -> Result<Json<Value>, ApiError> {
    let id = query.project.unwrap_or(1);
    mtu_for_project(&state, id, query).await
}

pub(crate) async fn mtu_for_project(
    state: &AppState,
    id: i64,
    query: MtuQuery,
) -> Result<Json<Value>, ApiError> {
    project_or_404(state, id).await?;
    let month = query.month.ok_or_else(|| {
        ApiError::BadRequest("query parameter `month` (YYYY-MM) is missing".into())
    })?;
    let to_api = |e: crate::mtu::MtuError| match e {
        crate::mtu::MtuError::InvalidMonth(_) => ApiError::BadRequest(e.to_string()),
        crate::mtu::MtuError::Store(e) => ApiError::Storage(e),
    };
    let store = state.store.as_ref();
    let rules = state.mtu_rules.as_ref();
    let body = match query.explain {
        Some(distinct_id) => json!(crate::mtu::explain(store, id, &month, &distinct_id, rules)
            .await
            .map_err(to_api)?),
        None => json!(crate::mtu::monthly_tracked_users(store, id, &month, rules)
            .await
            .map_err(to_api)?),
    };
    Ok(Json(body))
}

pub(super) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub(super) fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}
