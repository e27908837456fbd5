//! The web UI under `/ui`: server-rendered pages for the people who connect Braze, build and
//! export cohorts, and watch syncs. Pages are `maud` templates compiled into the binary, with one
//! stylesheet and one small script for the cohort builder.
//!
//! Every page needs a session (`UiUser`), and every form post goes through `UiForm`, which also
//! checks the session's CSRF token. Each handler checks the role's action before it acts, and
//! changes go through the admin API's own handlers, so the UI and the API share their rules.

// Page helpers return a finished response as their error, the way axum's rejections do.
#![allow(clippy::result_large_err)]

mod account;
mod cohorts;
mod integrations;
mod login;
mod reports;
mod syncs;
mod users;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use maud::{html, Markup, DOCTYPE};
use serde::de::DeserializeOwned;

use crate::accounts::{self, Action, Role};
use crate::api::auth::Principal;
use crate::api::{ApiError, AppState};
use crate::secrets;

/// The project the UI shows. The server creates it on first start.
pub(crate) const PROJECT_ID: i64 = 1;
const SESSION_COOKIE: &str = "cb_session";
/// How long a session lasts after login: 12 hours.
const SESSION_TTL_MS: i64 = 12 * 60 * 60 * 1000;
/// Largest form body the UI reads.
const MAX_FORM_BYTES: usize = 1 << 20;

const STYLE: &str = include_str!("static/style.css");
const BUILDER_JS: &str = include_str!("static/builder.js");

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/cohorts") }))
        .route("/ui/static/style.css", get(style))
        .route("/ui/static/builder.js", get(builder_js))
        .merge(login::routes())
        .merge(account::routes())
        .merge(integrations::routes())
        .merge(cohorts::routes())
        .merge(syncs::routes())
        .merge(users::routes())
        .merge(reports::routes())
        .layer(axum::middleware::map_response(protect_page))
}

/// Adds the headers that every UI page carries.
///
/// No other site may frame a page, against clickjacking. No page is stored in a cache: a page
/// may show a secret once, such as a new API key or Currents token, and a browser's back
/// button must not show it again.
async fn protect_page(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("frame-ancestors 'none'"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

async fn style() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE)
}

async fn builder_js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        BUILDER_JS,
    )
}

/// The person behind a page request, from the session cookie.
pub struct UiUser {
    pub principal: Principal,
    pub email: String,
    /// The session's CSRF token, which every form sends back.
    pub csrf: String,
}

impl UiUser {
    pub fn role(&self) -> Role {
        self.principal.role
    }

    pub fn can(&self, action: Action) -> bool {
        self.principal.role.allows(action)
    }

    /// Returns a 403 page unless the role allows `action`.
    pub fn require(&self, action: Action) -> Result<(), Response> {
        if self.can(action) {
            return Ok(());
        }
        tracing::info!(role = self.role().as_str(), action = ?action, "web UI action denied by role");
        Err(error_page(
            StatusCode::FORBIDDEN,
            &format!(
                "Your role ({}) may not {}. Ask an owner or admin.",
                self.role().as_str(),
                action.phrase()
            ),
            Some(self),
        ))
    }

    /// A hidden form field with the CSRF token.
    pub fn csrf_field(&self) -> Markup {
        html! { input type="hidden" name="csrf" value=(self.csrf); }
    }
}

/// Reads one cookie from the request headers.
pub(crate) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}

impl FromRequestParts<AppState> for UiUser {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let to_login = || Redirect::to("/ui/login").into_response();
        let token = cookie(&parts.headers, SESSION_COOKIE).ok_or_else(to_login)?;
        let found = state
            .store
            .session(&secrets::hash(&token), now_ms())
            .await
            .map_err(|e| api_error_page(ApiError::Storage(e), None))?;
        let (user, csrf) = found.ok_or_else(to_login)?;
        let role = Role::parse(&user.role).map_err(|_| to_login())?;
        Ok(UiUser {
            email: user.email.clone(),
            principal: Principal {
                role,
                user: Some(user),
            },
            csrf,
        })
    }
}

/// A posted form of a logged-in person whose CSRF token matched.
pub struct UiForm<T> {
    pub user: UiUser,
    pub form: T,
}

impl<T: DeserializeOwned> FromRequest<AppState> for UiForm<T> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Response> {
        let (mut parts, body) = request.into_parts();
        let user = UiUser::from_request_parts(&mut parts, state).await?;
        let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES)
            .await
            .map_err(|_| {
                error_page(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "The form is too large.",
                    Some(&user),
                )
            })?;
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&bytes).unwrap_or_default();
        let sent = pairs
            .iter()
            .find(|(key, _)| key == "csrf")
            .map(|(_, value)| value.as_str())
            .unwrap_or_default();
        if !accounts::constant_time_eq(sent.as_bytes(), user.csrf.as_bytes()) {
            tracing::info!("web UI form rejected: CSRF token missing or wrong");
            return Err(error_page(
                StatusCode::FORBIDDEN,
                "The form's CSRF token is missing or wrong. Reload the page and try again.",
                Some(&user),
            ));
        }
        let form = serde_urlencoded::from_bytes(&bytes).map_err(|e| {
            error_page(
                StatusCode::BAD_REQUEST,
                &format!("The form is invalid: {e}"),
                Some(&user),
            )
        })?;
        Ok(UiForm { user, form })
    }
}

pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub(crate) fn format_ms(ms: Option<i64>) -> String {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| "—".to_owned())
}

/// Whether the request came over HTTPS, directly or through a proxy that reports it in `X-Forwarded-Proto`.
pub(crate) fn is_https(state: &AppState, headers: &HeaderMap) -> bool {
    state.secure_cookies
        || headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

/// Builds a `Set-Cookie` value: HttpOnly and SameSite=Lax always, Secure behind TLS.
pub(crate) fn set_cookie(
    name: &str,
    value: &str,
    path: &str,
    max_age_secs: i64,
    secure: bool,
) -> HeaderValue {
    let mut text =
        format!("{name}={value}; Path={path}; Max-Age={max_age_secs}; HttpOnly; SameSite=Lax");
    if secure {
        text.push_str("; Secure");
    }
    HeaderValue::from_str(&text).expect("cookie values are URL-safe tokens")
}

/// The page frame: header with navigation for the role, then `content`.
pub(crate) fn page(title: &str, user: Option<&UiUser>, content: Markup) -> Html<String> {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · cohortbridge" }
                link rel="stylesheet" href="/ui/static/style.css";
            }
            body {
                header.top {
                    a.brand href="/ui" { "cohortbridge" }
                    @if let Some(user) = user {
                        nav aria-label="Main" {
                            span.section { "Data Management" }
                            @if user.can(Action::ManageConnections) {
                                a href="/ui/integrations/braze" { "Integrations" }
                            }
                            a href="/ui/cohorts" { "Cohorts" }
                            a href="/ui/syncs" { "Syncs" }
                            a href="/ui/users" { "Users" }
                            a href="/ui/mtu" { "MTU" }
                            a href="/ui/setup" { "Setup" }
                        }
                        form.logout method="post" action="/ui/logout" {
                            (user.csrf_field())
                            a.who href="/ui/account" { (user.email) " (" (user.role().as_str()) ")" }
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main { h1 { (title) } (content) }
            }
        }
    };
    Html(markup.into_string())
}

pub(crate) fn error_page(status: StatusCode, message: &str, user: Option<&UiUser>) -> Response {
    let title = if status == StatusCode::FORBIDDEN {
        "Not allowed"
    } else {
        "Something went wrong"
    };
    (
        status,
        page(title, user, html! { p.error role="alert" { (message) } }),
    )
        .into_response()
}

/// Shows an admin API error as a page with the same status.
pub(crate) fn api_error_page(error: ApiError, user: Option<&UiUser>) -> Response {
    let status = error.status();
    error_page(status, &error.to_string(), user)
}

pub(crate) fn redirect(to: &str) -> Response {
    Redirect::to(to).into_response()
}
