//! Authentication and role checks of the admin API, and its routes for people and their API
//! keys. A request carries `Authorization: Bearer <key>`: the server's admin key acts as an
//! owner, and a per-user API key acts with its person's role. Each route needs the action that
//! `required_action` gives it, and a route missing from that table needs the owner's
//! `ManageUsers`, so a new route is closed until it is listed.

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::admin::now_ms;
use super::extract::{ApiJson, ApiPath};
use super::{ApiError, AppState};
use crate::accounts::{self, Action, Role};
use crate::secrets;
use crate::store::{NewUser, User};

/// Who sent an authenticated request; handlers read it from the request's extensions.
#[derive(Debug, Clone)]
pub struct Principal {
    pub role: Role,
    /// The person behind a per-user key or a session; `None` for the server's admin key.
    pub user: Option<User>,
}

impl Principal {
    pub fn require(&self, action: Action) -> Result<(), ApiError> {
        if self.role.allows(action) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "role {} may not {}",
                self.role.as_str(),
                action.phrase()
            )))
        }
    }
}

/// The action a route of the admin API needs, by method and route pattern below `/api/v1`.
pub fn required_action(method: &Method, route: &str) -> Action {
    let route = route.strip_prefix("/api/v1").unwrap_or(route);
    let tail = route.strip_prefix("/projects/{project}").unwrap_or(route);
    let read = *method == Method::GET;
    match tail {
        "/users" | "/users/{email}/api-keys" => Action::ManageUsers,
        "" if route.starts_with("/projects/{project}") && read => Action::View,
        "" if route.starts_with("/projects/{project}") => Action::ManageProject,
        "/credentials" | "/timezone" | "/api-secret" | "/currents-token" => Action::ManageProject,
        "/identity-mode" if !read => Action::ManageProject,
        "/connections"
        | "/connections/{connection}/reconnect"
        | "/connections/{connection}/disconnect"
        | "/connections/{connection}/rename"
            if !read =>
        {
            Action::ManageConnections
        }
        "/cohorts" | "/cohorts/{cohort}" | "/cohorts/{cohort}/rename" if !read => {
            Action::EditCohorts
        }
        // A dry run needs only `View`. The handler checks `Export` for other exports, because
        // only the body distinguishes the two.
        "/exports" if !read => Action::View,
        "/syncs/{sync}" | "/syncs/{sync}/run" | "/syncs/{sync}/pause" | "/syncs/{sync}/resume"
            if !read =>
        {
            Action::Export
        }
        _ if read => Action::View,
        _ => Action::ManageUsers,
    }
}

/// Authenticates a request to the admin API and checks its role against the route's action.
pub async fn require_role(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| secrets::hash(key.trim()));
    let Some(hash) = presented else {
        return ApiError::Unauthorized.into_response();
    };
    let principal = if accounts::constant_time_eq(hash.as_bytes(), state.admin_key_hash.as_bytes())
    {
        Principal {
            role: Role::Owner,
            user: None,
        }
    } else {
        match state.store.user_by_api_key_hash(&hash).await {
            Ok(Some(user)) => match Role::parse(&user.role) {
                Ok(role) => Principal {
                    role,
                    user: Some(user),
                },
                Err(_) => return ApiError::Unauthorized.into_response(),
            },
            Ok(None) => return ApiError::Unauthorized.into_response(),
            Err(e) => return ApiError::Storage(e).into_response(),
        }
    };
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let action = required_action(request.method(), &route);
    if let Err(e) = principal.require(action) {
        tracing::info!(
            role = principal.role.as_str(),
            route = %route,
            method = %request.method(),
            "admin request denied by role"
        );
        return e.into_response();
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/users", get(list_users).post(create_user))
        .route("/users/{email}/api-keys", post(create_api_key))
}

fn user_json(user: &User) -> Value {
    json!({
        "id": user.id,
        "email": user.email,
        "role": user.role,
        "created_at_ms": user.created_at_ms,
    })
}

async fn list_users(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let users = state.store.list_users().await?;
    Ok(Json(json!(users.iter().map(user_json).collect::<Vec<_>>())))
}

#[derive(Deserialize)]
pub(crate) struct NewUserBody {
    email: Option<String>,
    password: Option<String>,
    role: Option<String>,
}

/// Checks and stores a new person; shared by the API route and the first-owner bootstrap.
pub async fn add_user(
    state_store: &dyn crate::store::Store,
    email: &str,
    password: &str,
    role: &str,
) -> Result<User, ApiError> {
    let email = accounts::normalize_email(email).map_err(ApiError::BadRequest)?;
    let role = Role::parse(role).map_err(|e| ApiError::BadRequest(format!("field `role`: {e}")))?;
    accounts::check_password(password).map_err(ApiError::BadRequest)?;
    let password_hash = accounts::hash_password(password);
    let user = state_store
        .create_user(
            NewUser {
                email,
                password_hash,
                role: role.as_str().to_owned(),
            },
            now_ms(),
        )
        .await?;
    tracing::info!(user_id = user.id, role = %user.role, "user created");
    Ok(user)
}

async fn create_user(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<NewUserBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let missing = |field: &str| ApiError::BadRequest(format!("field `{field}` is missing"));
    let email = body.email.ok_or_else(|| missing("email"))?;
    let password = body.password.ok_or_else(|| missing("password"))?;
    let role = body.role.ok_or_else(|| missing("role"))?;
    let user = add_user(state.store.as_ref(), &email, &password, &role).await?;
    Ok((StatusCode::CREATED, Json(user_json(&user))))
}

#[derive(Deserialize)]
pub(crate) struct NewApiKeyBody {
    name: Option<String>,
}

/// Creates an admin API key for a person and returns it; it is shown only here.
async fn create_api_key(
    State(state): State<AppState>,
    ApiPath(email): ApiPath<String>,
    ApiJson(body): ApiJson<NewApiKeyBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let email = accounts::normalize_email(&email).map_err(ApiError::BadRequest)?;
    let user = state
        .store
        .user_by_email(&email)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("user {email:?} not found")))?;
    let name = body.name.unwrap_or_else(|| "api key".to_owned());
    let key = secrets::random_token(24);
    let stored = state
        .store
        .create_user_api_key(user.id, &name, &secrets::hash(&key), now_ms())
        .await?;
    tracing::info!(
        user_id = user.id,
        api_key_id = stored.id,
        "user API key created"
    );
    Ok((
        StatusCode::CREATED,
        Json(json!({"api_key": stored, "key": key, "role": user.role})),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_map_to_actions() {
        let cases = [
            (Method::GET, "/api/v1/projects", Action::View),
            (Method::GET, "/api/v1/projects/{project}", Action::View),
            (
                Method::POST,
                "/api/v1/projects/{project}/api-secret",
                Action::ManageProject,
            ),
            (
                Method::POST,
                "/api/v1/projects/{project}/currents-token",
                Action::ManageProject,
            ),
            (
                Method::GET,
                "/api/v1/projects/{project}/cohorts",
                Action::View,
            ),
            (
                Method::POST,
                "/api/v1/projects/{project}/cohorts",
                Action::EditCohorts,
            ),
            (
                Method::DELETE,
                "/api/v1/projects/{project}/cohorts/{cohort}",
                Action::EditCohorts,
            ),
            (
                Method::GET,
                "/api/v1/projects/{project}/connections",
                Action::View,
            ),
            (
                Method::POST,
                "/api/v1/projects/{project}/connections",
                Action::ManageConnections,
            ),
            (
                Method::POST,
                "/api/v1/projects/{project}/exports",
                Action::View,
            ),
            (
                Method::DELETE,
                "/api/v1/projects/{project}/syncs/{sync}",
                Action::Export,
            ),
            (
                Method::GET,
                "/api/v1/projects/{project}/credentials",
                Action::ManageProject,
            ),
            (Method::POST, "/api/v1/users", Action::ManageUsers),
            (
                Method::POST,
                "/api/v1/projects/{project}/unlisted",
                Action::ManageUsers,
            ),
        ];
        for (method, route, expected) in cases {
            assert_eq!(
                required_action(&method, route),
                expected,
                "{method} {route}"
            );
        }
    }
}
