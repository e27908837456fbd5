//! Users: find a user by distinct id or Braze id, and show the profile, recent events (Braze's
//! marked), the identity cluster, and for each cohort whether the user is a member, why, and
//! whether Braze has them through each sync.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use maud::html;
use serde::Deserialize;
use serde_json::Value;

use super::{api_error_page, format_ms, now_ms, page, UiUser, PROJECT_ID};
use crate::api::{ApiError, AppState};
use crate::cohorts;

/// Events read for the "recent events" list; the newest `RECENT_EVENTS` of them are shown.
const EVENTS_READ: i64 = 10_000;
const RECENT_EVENTS: usize = 50;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui/users", get(search))
        .route("/ui/users/{distinct_id}", get(show_path))
}

#[derive(Deserialize)]
struct SearchQuery {
    q: Option<String>,
}

async fn search(
    State(state): State<AppState>,
    Query(query): Query<SearchQuery>,
    user: UiUser,
) -> Response {
    let q = query.q.unwrap_or_default().trim().to_owned();
    if q.is_empty() {
        return page("Users", Some(&user), search_form("", None)).into_response();
    }
    match find(&state, &q).await {
        Ok(Some(distinct_id)) => show(State(state), distinct_id, user).await,
        Ok(None) => page(
            "Users",
            Some(&user),
            search_form(
                &q,
                Some(&format!("No user with distinct id or Braze id {q:?}.")),
            ),
        )
        .into_response(),
        Err(e) => api_error_page(e, Some(&user)),
    }
}

fn search_form(q: &str, message: Option<&str>) -> maud::Markup {
    html! {
        form.card method="get" action="/ui/users" role="search" {
            label for="q" { "Distinct id or Braze id" }
            input id="q" name="q" value=(q) required;
            button type="submit" { "Find" }
        }
        @if let Some(message) = message { p.error role="alert" { (message) } }
    }
}

/// Resolves a search to a canonical distinct id: a known distinct id first, else the user whose
/// profile carries the id in a connection's user-id property.
async fn find(state: &AppState, q: &str) -> Result<Option<String>, ApiError> {
    // NOTE: this reads every profile of the project, which is slow for millions of profiles.
    let inputs = state.store.cohort_inputs(PROJECT_ID).await?;
    let canonical = inputs.links.get(q).cloned().unwrap_or_else(|| q.to_owned());
    if inputs.event_distinct_ids.contains(q) || inputs.profiles.contains_key(&canonical) {
        return Ok(Some(canonical));
    }
    let mut properties = vec![crate::api::admin::DEFAULT_USER_ID_PROPERTY.to_owned()];
    for connection in state.store.list_connections(PROJECT_ID).await? {
        properties.push(connection.user_id_property);
    }
    Ok(inputs
        .profiles
        .iter()
        .find(|(_, profile)| {
            properties
                .iter()
                .any(|p| profile.get(p).and_then(Value::as_str) == Some(q))
        })
        .map(|(id, _)| id.clone()))
}

async fn show_path(
    state: State<AppState>,
    Path(distinct_id): Path<String>,
    user: UiUser,
) -> Response {
    show(state, distinct_id, user).await
}

async fn show(State(state): State<AppState>, distinct_id: String, user: UiUser) -> Response {
    match render(&state, &distinct_id, &user).await {
        Ok(response) => response,
        Err(e) => api_error_page(e, Some(&user)),
    }
}

async fn render(state: &AppState, distinct_id: &str, user: &UiUser) -> Result<Response, ApiError> {
    let store = state.store.as_ref();
    let profile = store
        .profile(PROJECT_ID, distinct_id)
        .await?
        .unwrap_or_default();
    let inputs = store.cohort_inputs(PROJECT_ID).await?;
    let mut cluster: Vec<&String> = inputs
        .links
        .iter()
        .filter(|(_, canonical)| canonical.as_str() == distinct_id)
        .map(|(id, _)| id)
        .collect();
    cluster.sort();
    let mut events = store
        .events_of(PROJECT_ID, distinct_id, EVENTS_READ)
        .await?;
    for id in &cluster {
        events.extend(store.events_of(PROJECT_ID, id, EVENTS_READ).await?);
    }
    events.sort_by_key(|e| std::cmp::Reverse(e.time_ms));
    events.truncate(RECENT_EVENTS);

    let now = now_ms();
    let mut memberships = Vec::new();
    let syncs = store.list_syncs(PROJECT_ID).await?;
    for cohort in store.list_cohorts(PROJECT_ID).await? {
        let definition = cohorts::parse(&cohort.definition).map_err(|e| {
            ApiError::Conflict(format!(
                "cohort {}: stored definition is invalid: {e}",
                cohort.id
            ))
        })?;
        let loaded = cohorts::eval::load(store, PROJECT_ID, &definition, now)
            .await
            .map_err(crate::api::cohorts::eval_error)?;
        let report = cohorts::explain::explain(&loaded, &definition, now, distinct_id)
            .map_err(crate::api::cohorts::eval_error)?;
        let mut sent = Vec::new();
        for sync in syncs
            .iter()
            .filter(|s| s.cohort_id == cohort.id && s.status != "removed")
        {
            let Some(connection) = store.connection(sync.connection_id).await? else {
                continue;
            };
            let external = profile
                .get(&connection.user_id_property)
                .and_then(Value::as_str)
                .map(str::to_owned);
            let in_braze = match &external {
                Some(id) => store
                    .braze_members(connection.id, cohort.id)
                    .await?
                    .contains(id),
                None => false,
            };
            let last_run = match store.list_runs(sync.id).await?.pop() {
                Some(run) => {
                    let operations = store.run_operations(run.id).await?;
                    let found = operations.into_iter().find(|op| {
                        op.distinct_id.as_deref() == Some(distinct_id)
                            || (op.distinct_id.is_none() && op.external_id == external)
                    });
                    Some(match found {
                        Some(op) => match op.reason {
                            Some(reason) => format!("run #{}: {} ({reason})", run.id, op.operation),
                            None => format!("run #{}: {}", run.id, op.operation),
                        },
                        None => format!("run #{}: not part of it", run.id),
                    })
                }
                None => None,
            };
            sent.push((sync.id, connection.name, external, in_braze, last_run));
        }
        memberships.push((cohort, report, sent));
    }

    let content = html! {
        (search_form(distinct_id, None))
        h2 { "Profile" }
        @if profile.is_empty() { p { "No profile." } }
        table #profile {
            tbody { @for (key, value) in &profile { tr { th { (key) } td { (display(value)) } } } }
        }
        h2 { "Identity cluster" }
        ul #cluster {
            li { (distinct_id) " (canonical)" }
            @for id in &cluster { li { (id) } }
        }
        h2 { "Recent events" }
        table #events {
            thead { tr { th { "Time" } th { "Event" } th { "Source" } } }
            tbody {
                @for event in &events {
                    @let braze = event.partner_id().is_some_and(|p| p.eq_ignore_ascii_case(crate::braze::currents::PARTNER_ID));
                    tr { td { (format_ms(Some(event.time_ms))) } td { (event.event) } td { @if braze { span.badge { "Braze" } } @else { "SDK or import" } } }
                }
            }
        }
        h2 { "Cohorts" }
        ul #memberships {
            @for (cohort, report, sent) in &memberships {
                li.card data-cohort=(cohort.id) {
                    strong { (cohort.name) } " — "
                    span.member { @if report.member { "member" } @else { "not a member" } }
                    @for (sync_id, connection, external, in_braze, last_run) in sent {
                        p.meta {
                            "Sync #" (sync_id) " to " (connection) ": "
                            @match external {
                                Some(id) => { @if *in_braze { "sent to Braze as " (id) } @else { "not in Braze (" (id) ")" } },
                                None => { "no user id, so not sent" },
                            }
                            @if let Some(last_run) = last_run { " · last " span.last-run { (last_run) } }
                        }
                    }
                    details {
                        summary { "Why" }
                        ul { @for condition in &report.conditions {
                            li { (if condition.holds { "✓ " } else { "✗ " }) code { (condition.condition) } " — " (condition.reason) }
                        } }
                    }
                }
            }
        }
    };
    Ok(page(&format!("User {distinct_id}"), Some(user), content).into_response())
}

fn display(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
