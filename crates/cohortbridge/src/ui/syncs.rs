//! Syncs: each sync's status (Active, Paused with its reason, View Error), cadence, last and
//! next run, the run history with counts and a CSV per run; pause, resume and remove. The error
//! text of runs is shown only to roles that may see sync errors.

use axum::extract::{Extension, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use maud::html;
use serde::Deserialize;
use serde_json::Value;

use super::{api_error_page, error_page, format_ms, page, redirect, UiForm, UiUser, PROJECT_ID};
use crate::accounts::Action;
use crate::api::extract::ApiPath;
use crate::api::{admin, lifecycle, AppState};
use crate::store::{Sync, SyncRun};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui/syncs", get(list))
        .route("/ui/syncs/{sync}", get(show))
        .route("/ui/syncs/{sync}/pause", post(pause))
        .route("/ui/syncs/{sync}/resume", post(resume))
        .route("/ui/syncs/{sync}/remove", post(remove))
        .route("/ui/runs/{run}/operations.csv", get(run_csv))
}

fn status_label(sync: &Sync) -> String {
    match sync.status.as_str() {
        "active" => "Active".to_owned(),
        "paused" => "Paused".to_owned(),
        "completed" => "Completed".to_owned(),
        "failed" => "Failed".to_owned(),
        "removed" => "Removed".to_owned(),
        other => other.to_owned(),
    }
}

fn cadence(sync: &Sync) -> String {
    match sync.interval_secs {
        Some(secs) if secs % 3600 == 0 => format!("every {} h", secs / 3600),
        Some(secs) if secs % 60 == 0 => format!("every {} min", secs / 60),
        Some(secs) => format!("every {secs} s"),
        None => "once".to_owned(),
    }
}

/// Loads a sync with its runs through the admin API's handler, which hides errors by role.
async fn load(
    state: &AppState,
    user: &UiUser,
    sync_id: i64,
) -> Result<(Sync, Vec<SyncRun>), Response> {
    let shown = admin::show_sync(
        State(state.clone()),
        Extension(user.principal.clone()),
        ApiPath((PROJECT_ID, sync_id)),
    )
    .await
    .map_err(|e| api_error_page(e, Some(user)))?
    .0;
    let parse = |value: &Value| serde_json::from_value::<SyncView>(value.clone());
    let sync = parse(&shown["sync"]).map_err(|e| {
        error_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            &e.to_string(),
            Some(user),
        )
    })?;
    let runs: Vec<RunView> = serde_json::from_value(shown["runs"].clone()).unwrap_or_default();
    Ok((sync.into(), runs.into_iter().map(Into::into).collect()))
}

/// The JSON shapes of the admin API's sync and run, read back into the store's types.
#[derive(Deserialize)]
struct SyncView {
    id: i64,
    project_id: i64,
    cohort_id: i64,
    connection_id: i64,
    mode: String,
    interval_secs: Option<i64>,
    status: String,
    status_reason: Option<String>,
    next_run_at_ms: Option<i64>,
    created_at_ms: i64,
    paused_by: Option<String>,
}

impl From<SyncView> for Sync {
    fn from(v: SyncView) -> Self {
        Sync {
            id: v.id,
            project_id: v.project_id,
            cohort_id: v.cohort_id,
            connection_id: v.connection_id,
            mode: if v.mode == "dynamic" {
                crate::store::SyncMode::Dynamic
            } else {
                crate::store::SyncMode::Once
            },
            interval_secs: v.interval_secs,
            status: v.status,
            status_reason: v.status_reason,
            next_run_at_ms: v.next_run_at_ms,
            created_at_ms: v.created_at_ms,
            paused_by: v.paused_by,
        }
    }
}

#[derive(Deserialize)]
struct RunView {
    id: i64,
    sync_id: i64,
    started_at_ms: i64,
    finished_at_ms: Option<i64>,
    status: String,
    #[serde(flatten)]
    counts: crate::store::RunCounts,
    error: Option<String>,
    trigger: String,
}

impl From<RunView> for SyncRun {
    fn from(v: RunView) -> Self {
        SyncRun {
            id: v.id,
            sync_id: v.sync_id,
            started_at_ms: v.started_at_ms,
            finished_at_ms: v.finished_at_ms,
            status: v.status,
            counts: v.counts,
            error: v.error,
            trigger: v.trigger,
        }
    }
}

async fn list(State(state): State<AppState>, user: UiUser) -> Response {
    let syncs = match state.store.list_syncs(PROJECT_ID).await {
        Ok(list) => list,
        Err(e) => return api_error_page(e.into(), Some(&user)),
    };
    let mut rows = Vec::new();
    for sync in syncs {
        let (sync, runs) = match load(&state, &user, sync.id).await {
            Ok(loaded) => loaded,
            Err(page) => return page,
        };
        let cohort = state
            .store
            .cohort(PROJECT_ID, sync.cohort_id)
            .await
            .ok()
            .flatten()
            .map(|c| c.name)
            .unwrap_or_else(|| format!("cohort {} (deleted)", sync.cohort_id));
        let connection = state
            .store
            .connection(sync.connection_id)
            .await
            .ok()
            .flatten()
            .map(|c| c.name)
            .unwrap_or_default();
        rows.push((sync, runs.last().cloned(), cohort, connection));
    }
    let content = html! {
        table {
            thead { tr { th { "Sync" } th { "Cohort" } th { "Connection" } th { "Status" } th { "Cadence" } th { "Last run" } th { "Next run" } } }
            tbody {
                @for (sync, last, cohort, connection) in &rows {
                    tr data-sync=(sync.id) {
                        td { a href={ "/ui/syncs/" (sync.id) } { "#" (sync.id) } }
                        td { (cohort) }
                        td { (connection) }
                        td.status { (status_label(sync)) @if let Some(reason) = &sync.status_reason { " — " (reason) } }
                        td { (cadence(sync)) }
                        td { (format_ms(last.as_ref().map(|r| r.started_at_ms))) }
                        td { (format_ms(sync.next_run_at_ms)) }
                    }
                }
            }
        }
    };
    page("Syncs", Some(&user), content).into_response()
}

async fn show(State(state): State<AppState>, Path(sync_id): Path<i64>, user: UiUser) -> Response {
    let (sync, runs) = match load(&state, &user, sync_id).await {
        Ok(loaded) => loaded,
        Err(page) => return page,
    };
    let can_change = user.can(Action::Export);
    let can_see_errors = user.can(Action::ViewSyncErrors);
    let content = html! {
        dl.facts {
            dt { "Status" } dd #sync-status { (status_label(&sync)) }
            @if let Some(reason) = &sync.status_reason { dt { "Reason" } dd #sync-reason { (reason) } }
            dt { "Cadence" } dd { (cadence(&sync)) }
            dt { "Last run" } dd { (format_ms(runs.last().map(|r| r.started_at_ms))) }
            dt { "Next run" } dd { (format_ms(sync.next_run_at_ms)) }
        }
        @if can_change {
            div.actions {
                @if sync.status == "active" && sync.interval_secs.is_some() {
                    form method="post" action={ "/ui/syncs/" (sync.id) "/pause" } { (user.csrf_field()) button type="submit" #pause { "Pause" } }
                }
                @if sync.status == "paused" {
                    form method="post" action={ "/ui/syncs/" (sync.id) "/resume" } { (user.csrf_field()) button type="submit" #resume { "Resume" } }
                }
                @if sync.status != "removed" {
                    form method="post" action={ "/ui/syncs/" (sync.id) "/remove" } {
                        (user.csrf_field())
                        label { input type="checkbox" name="remove_members" value="true"; " Remove its members from Braze first" }
                        button.danger type="submit" #remove { "Remove sync" }
                    }
                }
            }
        }
        h2 { "Runs" }
        table #runs {
            thead { tr { th { "Run" } th { "Started" } th { "Trigger" } th { "Status" } th { "Members" } th { "Added" } th { "Removed" } th { "Skipped" } th { "Unchanged" } th { "CSV" } } }
            tbody {
                @for run in runs.iter().rev() {
                    tr data-run=(run.id) {
                        td { (run.id) }
                        td { (format_ms(Some(run.started_at_ms))) }
                        td { (run.trigger) }
                        td {
                            (run.status)
                            @if let Some(error) = &run.error {
                                @if can_see_errors {
                                    details { summary { "View Error" } p.error { (error) } }
                                }
                            }
                        }
                        td.members { (run.counts.members) }
                        td.added { (run.counts.added) }
                        td.removed { (run.counts.removed) }
                        td { (run.counts.skipped) }
                        td { (run.counts.unchanged) }
                        td { a.csv href={ "/ui/runs/" (run.id) "/operations.csv" } download { "CSV" } }
                    }
                }
            }
        }
    };
    page(&format!("Sync #{}", sync.id), Some(&user), content).into_response()
}

#[derive(Deserialize)]
struct RemoveForm {
    #[serde(default)]
    remove_members: Option<String>,
}

async fn pause(
    State(state): State<AppState>,
    Path(sync_id): Path<i64>,
    form: UiForm<RemoveForm>,
) -> Response {
    change(&state, sync_id, form.user, "pause", false).await
}

async fn resume(
    State(state): State<AppState>,
    Path(sync_id): Path<i64>,
    form: UiForm<RemoveForm>,
) -> Response {
    change(&state, sync_id, form.user, "resume", false).await
}

async fn remove(
    State(state): State<AppState>,
    Path(sync_id): Path<i64>,
    UiForm { user, form }: UiForm<RemoveForm>,
) -> Response {
    let remove_members = form.remove_members.as_deref() == Some("true");
    change(&state, sync_id, user, "remove", remove_members).await
}

async fn change(
    state: &AppState,
    sync_id: i64,
    user: UiUser,
    what: &str,
    remove_members: bool,
) -> Response {
    if let Err(denied) = user.require(Action::Export) {
        return denied;
    }
    let path = Path((PROJECT_ID, sync_id));
    let state_arg = State(state.clone());
    let result = match what {
        "pause" => lifecycle::pause_sync(state_arg, path).await,
        "resume" => lifecycle::resume_sync(state_arg, path).await,
        _ => {
            let query =
                serde_json::from_value(serde_json::json!({"remove_members": remove_members}))
                    .expect("well-formed");
            lifecycle::remove_sync(state_arg, path, axum::extract::Query(query)).await
        }
    };
    match result {
        Ok(_) => redirect(&format!("/ui/syncs/{sync_id}")),
        Err(e) => api_error_page(e, Some(&user)),
    }
}

/// Prefixes a cell that a spreadsheet would read as a formula (one that starts with `=`, `+`,
/// `-`, `@`, a tab or a carriage return) with `'`, as OWASP advises for CSV downloads. Distinct
/// ids and Braze ids come from clients, so a crafted id must not run when the file is opened.
fn spreadsheet_safe(cell: String) -> String {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{cell}")
    } else {
        cell
    }
}

/// The operations of one run as CSV: distinct id, external id, operation and reason. Cells that
/// a spreadsheet would run as formulas are neutralised with [`spreadsheet_safe`].
async fn run_csv(State(state): State<AppState>, Path(run_id): Path<i64>, user: UiUser) -> Response {
    let reply =
        match lifecycle::run_operations(State(state.clone()), Path((PROJECT_ID, run_id))).await {
            Ok(Json(reply)) => reply,
            Err(e) => return api_error_page(e, Some(&user)),
        };
    let mut writer = csv::Writer::from_writer(Vec::new());
    let mut rows = vec![["distinct_id", "external_id", "operation", "reason"].map(str::to_owned)];
    for op in reply["operations"].as_array().into_iter().flatten() {
        let field = |key: &str| spreadsheet_safe(op[key].as_str().unwrap_or_default().to_owned());
        rows.push([
            field("distinct_id"),
            field("external_id"),
            field("operation"),
            field("reason"),
        ]);
    }
    for row in rows {
        if let Err(e) = writer.write_record(&row) {
            return error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("CSV failed: {e}"),
                Some(&user),
            );
        }
    }
    let body = writer.into_inner().unwrap_or_default();
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"run-{run_id}.csv\""),
            ),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::spreadsheet_safe;

    #[test]
    fn formula_cells_are_neutralised() {
        assert_eq!(
            spreadsheet_safe("=HYPERLINK(\"x\")".into()),
            "'=HYPERLINK(\"x\")"
        );
        assert_eq!(spreadsheet_safe("@SUM(A1)".into()), "'@SUM(A1)");
        assert_eq!(spreadsheet_safe("-2+3".into()), "'-2+3");
        assert_eq!(spreadsheet_safe("ext-1".into()), "ext-1");
        assert_eq!(spreadsheet_safe(String::new()), "");
    }
}
