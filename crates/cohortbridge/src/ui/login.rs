//! Login and logout. The login form carries its own CSRF token, paired with a short-lived
//! cookie, because no session exists yet. Failed logins count towards the rate limit per e-mail
//! address and per client address.

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use maud::html;
use serde::Deserialize;

use super::{
    cookie, is_https, now_ms, page, redirect, set_cookie, UiForm, SESSION_COOKIE, SESSION_TTL_MS,
};
use crate::accounts;
use crate::api::AppState;
use crate::secrets;
use crate::store::NewSession;

const LOGIN_CSRF_COOKIE: &str = "cb_login_csrf";

pub fn routes() -> axum::Router<AppState> {
    Router::new()
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
}

fn login_form(csrf: &str, email: &str, error: Option<&str>) -> maud::Markup {
    html! {
        form.card method="post" action="/ui/login" {
            input type="hidden" name="csrf" value=(csrf);
            @if let Some(error) = error {
                p.error role="alert" id="login-error" { (error) }
            }
            label for="email" { "E-mail" }
            input id="email" name="email" type="email" autocomplete="username" required value=(email);
            label for="password" { "Password" }
            input id="password" name="password" type="password" autocomplete="current-password" required;
            button type="submit" { "Log in" }
        }
    }
}

/// Renders the login form with a fresh login CSRF token in a cookie and a hidden field.
fn login_response(
    state: &AppState,
    headers: &HeaderMap,
    status: StatusCode,
    email: &str,
    error: Option<&str>,
) -> Response {
    let csrf = secrets::random_token(16);
    let secure = is_https(state, headers);
    let cookie = set_cookie(LOGIN_CSRF_COOKIE, &csrf, "/ui/login", 3600, secure);
    (
        status,
        [(header::SET_COOKIE, cookie)],
        page("Log in", None, login_form(&csrf, email, error)),
    )
        .into_response()
}

async fn login_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    login_response(&state, &headers, StatusCode::OK, "", None)
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
}

async fn login(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let expected = cookie(&headers, LOGIN_CSRF_COOKIE).unwrap_or_default();
    if expected.is_empty() || !accounts::constant_time_eq(expected.as_bytes(), form.csrf.as_bytes())
    {
        return login_response(
            &state,
            &headers,
            StatusCode::FORBIDDEN,
            &form.email,
            Some("The form expired. Log in again."),
        );
    }
    let email = form.email.trim().to_ascii_lowercase();
    let now = Instant::now();
    let ip = Some(client.ip());
    if let Some(wait) = state.login_limiter.retry_after(&email, ip, now) {
        let minutes = wait.as_secs().div_ceil(60);
        tracing::warn!(client = %client.ip(), "login rejected by the rate limit");
        return login_response(
            &state,
            &headers,
            StatusCode::TOO_MANY_REQUESTS,
            &form.email,
            Some(&format!(
                "Too many failed logins. Try again in {minutes} minutes."
            )),
        );
    }
    let user = match state.store.user_by_email(&email).await {
        Ok(user) => user,
        Err(e) => return super::api_error_page(e.into(), None),
    };
    // A missing account still costs one hash, so response time does not reveal which
    // addresses have accounts.
    let verified = match &user {
        Some(user) => accounts::verify_password(&form.password, &user.password_hash),
        None => {
            let _ = accounts::hash_password(&form.password);
            false
        }
    };
    let Some(user) = user.filter(|_| verified) else {
        state.login_limiter.record_failure(&email, ip, now);
        tracing::info!(client = %client.ip(), "login failed: wrong e-mail or password");
        return login_response(
            &state,
            &headers,
            StatusCode::UNAUTHORIZED,
            &form.email,
            Some("Wrong e-mail or password."),
        );
    };
    state.login_limiter.record_success(&email);

    let token = secrets::random_token(32);
    let created_at_ms = now_ms();
    let session = NewSession {
        token_hash: secrets::hash(&token),
        user_id: user.id,
        csrf_token: secrets::random_token(24),
        created_at_ms,
        expires_at_ms: created_at_ms + SESSION_TTL_MS,
    };
    if let Err(e) = state.store.create_session(session).await {
        return super::api_error_page(e.into(), None);
    }
    tracing::info!(user_id = user.id, "user logged in");
    let secure = is_https(&state, &headers);
    let mut response = redirect("/ui/cohorts");
    let cookies = response.headers_mut();
    cookies.append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, &token, "/ui", SESSION_TTL_MS / 1000, secure),
    );
    cookies.append(
        header::SET_COOKIE,
        set_cookie(LOGIN_CSRF_COOKIE, "", "/ui/login", 0, secure),
    );
    response
}

#[derive(Deserialize)]
struct Empty {}

async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: UiForm<Empty>,
) -> Response {
    let _ = form.form;
    if let Some(token) = cookie(&headers, SESSION_COOKIE) {
        if let Err(e) = state.store.delete_session(&secrets::hash(&token)).await {
            return super::api_error_page(e.into(), Some(&form.user));
        }
    }
    let mut response = redirect("/ui/login");
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, "", "/ui", 0, is_https(&state, &headers)),
    );
    response
}
