//! The MTU page (a server-rendered SVG bar chart of counted and exempt-only users per month,
//! and the breakdown by source) and the setup page (project token, SDK snippets with this
//! server's address, Braze Currents settings).

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::{Datelike, Months};
use maud::{html, Markup};
use serde::Deserialize;

use super::{api_error_page, page, UiForm, UiUser, PROJECT_ID};
use crate::accounts::Action;
use crate::api::{ApiError, AppState};
use crate::mtu::{self, MtuReport};
use crate::store::ProjectSecret;

/// Months shown in the chart, ending with the selected month.
const CHART_MONTHS: u32 = 6;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui/mtu", get(mtu_page))
        .route("/ui/setup", get(setup_page))
        .route("/ui/setup/currents-token", post(replace_currents_token))
}

#[derive(Deserialize)]
struct MtuQuery {
    month: Option<String>,
}

async fn mtu_page(
    State(state): State<AppState>,
    Query(query): Query<MtuQuery>,
    user: UiUser,
) -> Response {
    let month = query
        .month
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| chrono::Utc::now().format("%Y-%m").to_string());
    let Ok(first) = chrono::NaiveDate::parse_from_str(&format!("{month}-01"), "%Y-%m-%d") else {
        let error = ApiError::BadRequest(format!(
            "query parameter `month` {month:?} is not a month as YYYY-MM"
        ));
        return api_error_page(error, Some(&user));
    };
    let mut reports = Vec::new();
    for back in (0..CHART_MONTHS).rev() {
        let Some(day) = first.checked_sub_months(Months::new(back)) else {
            continue;
        };
        let name = format!("{:04}-{:02}", day.year(), day.month());
        match mtu::monthly_tracked_users(state.store.as_ref(), PROJECT_ID, &name, &state.mtu_rules)
            .await
        {
            Ok(report) => reports.push(report),
            Err(mtu::MtuError::Store(e)) => return api_error_page(e.into(), Some(&user)),
            Err(e) => return api_error_page(ApiError::BadRequest(e.to_string()), Some(&user)),
        }
    }
    let selected = reports
        .last()
        .expect("the selected month is always reported");
    let content = html! {
        form.card method="get" action="/ui/mtu" {
            label for="month" { "Month" }
            input id="month" name="month" type="month" value=(month);
            button type="submit" { "Show" }
        }
        p #mtu-figure { "Monthly Tracked Users in " (selected.month) ": " strong { (selected.users) }
            " · exempt only: " (selected.exempt_only_users) " · billable: " (selected.billable_users) }
        (chart(&reports))
        h2 { "By source" }
        table #by-source {
            thead { tr { th { "Source" } th { "Counted events" } th { "Exempt events" } } }
            tbody {
                @for (source, counts) in &selected.by_source {
                    tr { td { (serde_json::to_value(source).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()) } td { (counts.counted_events) } td { (counts.exempt_events) } }
                }
            }
        }
    };
    page("MTU", Some(&user), content).into_response()
}

/// A bar chart with two bars per month: counted users and users seen only through exempt events.
fn chart(reports: &[MtuReport]) -> Markup {
    let (width, height, top, bottom) = (600.0_f64, 220.0_f64, 20.0_f64, 30.0_f64);
    let max = reports
        .iter()
        .map(|r| r.users.max(r.exempt_only_users))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let slot = width / reports.len().max(1) as f64;
    let bar = slot * 0.35;
    let scale = |value: usize| (value as f64 / max) * (height - top - bottom);
    html! {
        svg #mtu-chart viewBox={ "0 0 " (width) " " (height) } role="img" aria-labelledby="chart-title" {
            title #chart-title { "Counted and exempt-only users per month" }
            @for (i, report) in reports.iter().enumerate() {
                @let x = i as f64 * slot + slot * 0.1;
                @let counted = scale(report.users);
                @let exempt = scale(report.exempt_only_users);
                rect.counted x=(x) y=(height - bottom - counted) width=(bar) height=(counted) data-month=(report.month) data-users=(report.users) {}
                rect.exempt x=(x + bar) y=(height - bottom - exempt) width=(bar) height=(exempt) {}
                text x=(x) y=(height - bottom - counted - 4.0) { (report.users) }
                text x=(x) y=(height - 10.0) { (report.month) }
            }
        }
        p.legend { span.key.counted {} " counted users " span.key.exempt {} " exempt-only users" }
    }
}

/// This server's base URL as the browser reached it.
fn base_url(state: &AppState, headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1:8080");
    let scheme = if super::is_https(state, headers) {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{host}")
}

async fn setup_page(State(state): State<AppState>, headers: HeaderMap, user: UiUser) -> Response {
    setup(&state, &headers, &user, None).await
}

/// A form with no fields but the CSRF token.
#[derive(Deserialize)]
struct EmptyForm {}

/// Generates a new Currents token and shows it once, on the setup page this request returns.
async fn replace_currents_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    UiForm {
        user,
        form: EmptyForm {},
    }: UiForm<EmptyForm>,
) -> Response {
    if let Err(denied) = user.require(Action::ManageProject) {
        return denied;
    }
    match crate::api::admin::replace_secret(&state, PROJECT_ID, ProjectSecret::CurrentsToken).await
    {
        Ok(token) => setup(&state, &headers, &user, Some(&token)).await,
        Err(e) => api_error_page(e, Some(&user)),
    }
}

/// Renders the setup page; `new_token` is a Currents token generated by this request.
async fn setup(
    state: &AppState,
    headers: &HeaderMap,
    user: &UiUser,
    new_token: Option<&str>,
) -> Response {
    let project = match crate::api::admin::project_or_404(state, PROJECT_ID).await {
        Ok(project) => project,
        Err(e) => return api_error_page(e, Some(user)),
    };
    let base = base_url(state, headers);
    let token = &project.token;
    let js = format!("import mixpanel from \"mixpanel-browser\";\nmixpanel.init(\"{token}\", {{ api_host: \"{base}\" }});\nmixpanel.track(\"Sign Up\");");
    let python = format!("from mixpanel import Mixpanel, Consumer\nbase = \"{base}\"\nmp = Mixpanel(\"{token}\", consumer=Consumer(events_url=f\"{{base}}/track\",\n    people_url=f\"{{base}}/engage\", import_url=f\"{{base}}/import\"))");
    let host = base.split("://").nth(1).unwrap_or_default();
    let (host_name, port) = host.rsplit_once(':').unwrap_or((host, "80"));
    let protocol = if base.starts_with("https") {
        "https"
    } else {
        "http"
    };
    let node = format!("const Mixpanel = require(\"mixpanel\");\nconst mp = Mixpanel.init(\"{token}\", {{\n  host: \"{host_name}\", port: {port}, protocol: \"{protocol}\",\n}});");
    let content = html! {
        dl.facts { dt { "Project" } dd { (project.name) } dt { "Project token" } dd { code #project-token { (token) } } }
        h2 { "JavaScript (mixpanel-browser)" } pre { code { (js) } }
        h2 { "Python (mixpanel)" } pre { code { (python) } }
        h2 { "Node (mixpanel)" } pre { code { (node) } }
        h2 { "Braze Currents" }
        p { "In Braze, add a Currents connector of type Custom HTTP and point it at:" }
        pre { code { (base) "/currents" } }
        p { "with the project's Currents token as the bearer token (" code { "Authorization: Bearer <token>" } ")." }
        @if let Some(token) = new_token {
            p.card role="status" { "New Currents token, shown only now: " code #currents-token { (token) } }
        }
        @if user.can(Action::ManageProject) {
            p { "The token is stored encrypted and is shown only when generated. Generating a new one stops the previous one, so update the Braze connector with it." }
            form.card method="post" action="/ui/setup/currents-token" {
                (user.csrf_field())
                button type="submit" { "Generate a new Currents token" }
            }
        } @else {
            p { "An owner or admin can generate the token that Braze must send." }
        }
    };
    page("Setup", Some(user), content).into_response()
}
