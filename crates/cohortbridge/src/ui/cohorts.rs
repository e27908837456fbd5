//! Data Management → Cohorts: the list with member counts, the cohort builder with its live
//! count, a cohort's page with the export buttons, and the export flow (mode, preview of adds
//! and removes, Begin Sync).

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{api_error_page, error_page, now_ms, page, redirect, UiForm, UiUser, PROJECT_ID};
use crate::accounts::{self, Action};
use crate::api::extract::{ApiJson, ApiPath};
use crate::api::{admin, ApiError, AppState};
use crate::cohorts;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui/cohorts", get(list).post(create))
        .route("/ui/cohorts/new", get(new_cohort))
        .route("/ui/cohorts/count", post(live_count))
        .route("/ui/cohorts/{cohort}", get(show).post(update))
        .route(
            "/ui/cohorts/{cohort}/export",
            get(export_page).post(begin_sync),
        )
}

/// Members and exportable members (those a sync would send) of a definition.
async fn counts(
    state: &AppState,
    definition: &Value,
    property: &str,
) -> Result<(usize, usize), ApiError> {
    let parsed = cohorts::parse(definition)
        .map_err(|e| ApiError::BadRequest(format!("invalid cohort definition: {e}")))?;
    let evaluated = cohorts::evaluate_with_properties(
        state.store.as_ref(),
        PROJECT_ID,
        &parsed,
        &[property.to_owned()],
        now_ms(),
    )
    .await
    .map_err(crate::api::cohorts::eval_error)?;
    let exportable = crate::sync::exportable_count(&evaluated, property);
    Ok((evaluated.members.len(), exportable))
}

async fn list(State(state): State<AppState>, user: UiUser) -> Response {
    let cohorts = match state.store.list_cohorts(PROJECT_ID).await {
        Ok(list) => list,
        Err(e) => return api_error_page(e.into(), Some(&user)),
    };
    // NOTE: each cohort is evaluated in full on every load of this page, which is slow for
    // large projects; the engine keeps no cached counts yet.
    let mut rows = Vec::new();
    for cohort in cohorts {
        let count = match counts(&state, &cohort.definition, admin::DEFAULT_USER_ID_PROPERTY).await
        {
            Ok((count, _)) => count.to_string(),
            Err(e) => format!("error: {e}"),
        };
        rows.push((cohort, count));
    }
    let content = html! {
        @if user.can(Action::EditCohorts) {
            p { a.button href="/ui/cohorts/new" { "+ New cohort" } }
        }
        table {
            thead { tr { th { "Id" } th { "Name" } th { "Members" } } }
            tbody {
                @for (cohort, count) in &rows {
                    tr {
                        td { (cohort.id) }
                        td { a href={ "/ui/cohorts/" (cohort.id) } { (cohort.name) } }
                        td.count { (count) }
                    }
                }
            }
        }
    };
    page("Cohorts", Some(&user), content).into_response()
}

/// The builder: rows and groups that write the definition into the `definition` field, which
/// the form posts. The raw definition stays editable for forms the builder does not offer.
fn builder(
    user: &UiUser,
    name: &str,
    definition: &str,
    error: Option<&str>,
    action: &str,
) -> Markup {
    html! {
        form.card #cohort-form method="post" action=(action) {
            (user.csrf_field())
            label for="cohort-name" { "Name" }
            input id="cohort-name" name="name" required value=(name);
            div #builder data-csrf=(user.csrf) {
                fieldset {
                    legend { "Users who match" }
                    label for="top-combinator" { "Combine groups with" }
                    select id="top-combinator" {
                        option value="all" { "AND (all groups)" }
                        option value="any" { "OR (any group)" }
                    }
                    div #groups {}
                    button type="button" #add-group { "+ Group" }
                }
            }
            p.live aria-live="polite" {
                "Live count: " strong #live-count { "—" }
                " · exportable: " strong #live-exportable { "—" }
            }
            details open[error.is_some()] {
                summary { "Definition (JSON)" }
                label for="definition" { "Definition" }
                textarea id="definition" name="definition" rows="8" { (definition) }
            }
            @if let Some(error) = error {
                p.field-error role="alert" #definition-error { (error) }
            }
            button type="submit" #save-cohort { "Save cohort" }
        }
        script src="/ui/static/builder.js" {}
    }
}

async fn new_cohort(user: UiUser) -> Response {
    if let Err(denied) = user.require(Action::EditCohorts) {
        return denied;
    }
    page(
        "New cohort",
        Some(&user),
        builder(&user, "", "", None, "/ui/cohorts"),
    )
    .into_response()
}

#[derive(Deserialize)]
struct CohortForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    definition: String,
}

fn parse_definition(text: &str) -> Result<Value, ApiError> {
    serde_json::from_str(text)
        .map_err(|e| ApiError::BadRequest(format!("field `definition` is not JSON: {e}")))
}

async fn create(
    State(state): State<AppState>,
    UiForm { user, form }: UiForm<CohortForm>,
) -> Response {
    if let Err(denied) = user.require(Action::EditCohorts) {
        return denied;
    }
    let result = async {
        let definition = parse_definition(&form.definition)?;
        let body = serde_json::from_value(json!({"name": form.name, "definition": definition}))
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        admin::create_cohort(State(state.clone()), ApiPath(PROJECT_ID), ApiJson(body)).await
    }
    .await;
    match result {
        Ok((_, Json(cohort))) => redirect(&format!("/ui/cohorts/{}", cohort["id"])),
        Err(e) => (
            e.status(),
            page(
                "New cohort",
                Some(&user),
                builder(
                    &user,
                    &form.name,
                    &form.definition,
                    Some(&e.to_string()),
                    "/ui/cohorts",
                ),
            ),
        )
            .into_response(),
    }
}

async fn update(
    State(state): State<AppState>,
    Path(cohort_id): Path<i64>,
    UiForm { user, form }: UiForm<CohortForm>,
) -> Response {
    if let Err(denied) = user.require(Action::EditCohorts) {
        return denied;
    }
    let result = async {
        let definition = parse_definition(&form.definition)?;
        let body = serde_json::from_value(json!({"name": form.name, "definition": definition}))
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        crate::api::cohorts::update_cohort(
            State(state.clone()),
            Path((PROJECT_ID, cohort_id)),
            Json(body),
        )
        .await
    }
    .await;
    match result {
        Ok(_) => redirect(&format!("/ui/cohorts/{cohort_id}")),
        Err(e) => {
            let action = format!("/ui/cohorts/{cohort_id}");
            (
                e.status(),
                page(
                    "Edit cohort",
                    Some(&user),
                    builder(
                        &user,
                        &form.name,
                        &form.definition,
                        Some(&e.to_string()),
                        &action,
                    ),
                ),
            )
                .into_response()
        }
    }
}

#[derive(Deserialize)]
struct CountBody {
    definition: Value,
    #[serde(default)]
    user_id_property: Option<String>,
}

/// The builder's live count. The script sends the CSRF token in `X-CSRF-Token`.
async fn live_count(
    State(state): State<AppState>,
    user: UiUser,
    headers: HeaderMap,
    Json(body): Json<CountBody>,
) -> Response {
    let sent = headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !accounts::constant_time_eq(sent.as_bytes(), user.csrf.as_bytes()) {
        return (
            StatusCode::FORBIDDEN,
            Json(json!({"error": "the CSRF token is missing or wrong"})),
        )
            .into_response();
    }
    if !user.can(Action::EditCohorts) {
        return ApiError::Forbidden(format!(
            "role {} may not {}",
            user.role().as_str(),
            Action::EditCohorts.phrase()
        ))
        .into_response();
    }
    let property = body
        .user_id_property
        .unwrap_or_else(|| admin::DEFAULT_USER_ID_PROPERTY.to_owned());
    match counts(&state, &body.definition, &property).await {
        Ok((count, exportable)) => {
            Json(json!({"count": count, "exportable": exportable})).into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn show(State(state): State<AppState>, Path(cohort_id): Path<i64>, user: UiUser) -> Response {
    let cohort = match state.store.cohort(PROJECT_ID, cohort_id).await {
        Ok(Some(cohort)) => cohort,
        Ok(None) => {
            return error_page(
                StatusCode::NOT_FOUND,
                &format!("Cohort {cohort_id} not found."),
                Some(&user),
            )
        }
        Err(e) => return api_error_page(e.into(), Some(&user)),
    };
    let connections = match state.store.list_connections(PROJECT_ID).await {
        Ok(list) => list,
        Err(e) => return api_error_page(e.into(), Some(&user)),
    };
    let (count, exportable) =
        match counts(&state, &cohort.definition, admin::DEFAULT_USER_ID_PROPERTY).await {
            Ok(counts) => counts,
            Err(e) => return api_error_page(e, Some(&user)),
        };
    let pretty = serde_json::to_string_pretty(&cohort.definition).unwrap_or_default();
    let action = format!("/ui/cohorts/{cohort_id}");
    let content = html! {
        p.live {
            "Members: " strong #member-count { (count) }
            " · exportable (with " code { (admin::DEFAULT_USER_ID_PROPERTY) } "): " strong #exportable-count { (exportable) }
        }
        @if user.can(Action::Export) {
            section aria-labelledby="export-heading" {
                h2 #export-heading { "Export" }
                @if connections.iter().all(|c| c.disconnected_at_ms.is_some()) {
                    p { "No connected Braze workspace. An owner or admin connects one under Integrations." }
                }
                div.exports {
                    @for connection in connections.iter().filter(|c| c.disconnected_at_ms.is_none()) {
                        a.button href={ "/ui/cohorts/" (cohort_id) "/export?connection=" (urlencode(&connection.name)) } {
                            "Export to Braze (" (connection.name) ")"
                        }
                    }
                }
            }
        }
        @if user.can(Action::EditCohorts) {
            h2 { "Edit" }
            (builder(&user, &cohort.name, &pretty, None, &action))
        } @else {
            h2 { "Definition" }
            pre { (pretty) }
        }
    };
    page(&cohort.name, Some(&user), content).into_response()
}

fn urlencode(text: &str) -> String {
    serde_urlencoded::to_string([("v", text)])
        .unwrap_or_default()
        .trim_start_matches("v=")
        .to_owned()
}

#[derive(Deserialize)]
struct ExportQuery {
    connection: Option<String>,
}

/// The export flow's page: the preview of adds and removes, the mode and the Begin Sync button.
async fn export_page(
    State(state): State<AppState>,
    Path(cohort_id): Path<i64>,
    Query(query): Query<ExportQuery>,
    user: UiUser,
) -> Response {
    if let Err(denied) = user.require(Action::Export) {
        return denied;
    }
    let Some(connection) = query.connection.filter(|c| !c.is_empty()) else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "Query parameter `connection` is missing.",
            Some(&user),
        );
    };
    let body = serde_json::from_value(
        json!({"cohort_id": cohort_id, "connection": connection, "dry_run": true}),
    )
    .expect("the dry-run body is well-formed");
    let plan = match admin::create_export(State(state.clone()), ApiPath(PROJECT_ID), ApiJson(body))
        .await
    {
        Ok((_, Json(plan))) => plan,
        Err(e) => return api_error_page(e, Some(&user)),
    };
    let ids = |key: &str| -> Vec<String> {
        plan[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (adds, removes) = (ids("add"), ids("remove"));
    let min_minutes = state.min_sync_interval.as_secs().div_ceil(60).max(1);
    let content = html! {
        p { "Cohort " (cohort_id) " to the Braze connection " strong { (connection) } "." }
        section aria-labelledby="preview-heading" {
            h2 #preview-heading { "Preview" }
            p #preview-summary {
                "Members: " (plan["members"]) " · will be added: " span #preview-adds { (adds.len()) }
                " · will be removed: " span #preview-removes { (removes.len()) }
                " · skipped (no user id): " (plan["skipped"]) " · unchanged: " (plan["unchanged"])
            }
            @if !adds.is_empty() {
                details { summary { "Adds" } ul { @for id in adds.iter().take(100) { li { (id) } } } }
            }
            @if !removes.is_empty() {
                details { summary { "Removes" } ul { @for id in removes.iter().take(100) { li { (id) } } } }
            }
        }
        form.card method="post" action={ "/ui/cohorts/" (cohort_id) "/export" } {
            (user.csrf_field())
            input type="hidden" name="connection" value=(connection);
            fieldset {
                legend { "Mode" }
                label { input type="radio" name="mode" value="once" checked; " One-time export" }
                label { input type="radio" name="mode" value="dynamic"; " Dynamic sync" }
            }
            label for="every_minutes" { "Dynamic sync cadence, in minutes (at least " (min_minutes) ")" }
            input id="every_minutes" name="every_minutes" type="number" min="1" value="15";
            button type="submit" #begin-sync { "Begin Sync" }
        }
    };
    page("Export to Braze", Some(&user), content).into_response()
}

#[derive(Deserialize)]
struct BeginSyncForm {
    #[serde(default)]
    connection: String,
    #[serde(default)]
    mode: String,
    #[serde(default)]
    every_minutes: String,
}

async fn begin_sync(
    State(state): State<AppState>,
    Path(cohort_id): Path<i64>,
    UiForm { user, form }: UiForm<BeginSyncForm>,
) -> Response {
    if let Err(denied) = user.require(Action::Export) {
        return denied;
    }
    let every_secs = if form.mode == "dynamic" {
        match form.every_minutes.trim().parse::<i64>() {
            Ok(minutes) if minutes > 0 => Some(minutes * 60),
            _ => {
                let message = format!(
                    "Field `every_minutes` {:?} is not a whole number of minutes above 0.",
                    form.every_minutes
                );
                return error_page(StatusCode::BAD_REQUEST, &message, Some(&user));
            }
        }
    } else {
        None
    };
    let body = json!({"cohort_id": cohort_id, "connection": form.connection, "mode": form.mode, "every_secs": every_secs});
    let body = serde_json::from_value(body).expect("the export body is well-formed");
    match admin::create_export(State(state.clone()), ApiPath(PROJECT_ID), ApiJson(body)).await {
        Ok((_, Json(reply))) => redirect(&format!("/ui/syncs/{}", reply["sync"]["id"])),
        Err(e) => api_error_page(e, Some(&user)),
    }
}
