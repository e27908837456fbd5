//! Data Management → Integrations → Braze: the project's connections with their status, the
//! Connect form, reconnect, rename and disconnect. Only owners and admins reach these pages.
//! Data Import Keys go to the admin API's handlers and are never rendered back.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::json;

use super::{api_error_page, format_ms, page, redirect, UiForm, UiUser, PROJECT_ID};
use crate::accounts::Action;
use crate::api::extract::{ApiJson, ApiPath};
use crate::api::{admin, lifecycle, ApiError, AppState};
use crate::braze::instances;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui/integrations/braze", get(show).post(connect))
        .route(
            "/ui/integrations/braze/{connection}/reconnect",
            post(reconnect),
        )
        .route("/ui/integrations/braze/{connection}/rename", post(rename))
        .route(
            "/ui/integrations/braze/{connection}/disconnect",
            post(disconnect),
        )
}

/// What the Connect form showed, so a failed attempt can show it again with the error.
#[derive(Deserialize, Default)]
struct ConnectForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    instance: String,
    #[serde(default)]
    base_url: String,
    #[serde(default)]
    data_import_key: String,
    #[serde(default)]
    user_id_property: String,
}

/// An error shown beside the form field it is about.
struct FieldError {
    field: &'static str,
    message: String,
}

/// Picks the form field an admin API error is about: Braze's rejection concerns the key.
fn field_of(message: &str) -> &'static str {
    if message.contains("Braze rejected") || message.contains("data_import_key") {
        "data_import_key"
    } else if message.contains("`instance`") {
        "instance"
    } else if message.contains("base URL") || message.contains("`base_url`") {
        "base_url"
    } else if message.contains("`user_id_property`") {
        "user_id_property"
    } else {
        "name"
    }
}

async fn show(State(state): State<AppState>, user: UiUser) -> Response {
    if let Err(denied) = user.require(Action::ManageConnections) {
        return denied;
    }
    render(
        &state,
        &user,
        &ConnectForm::default(),
        None,
        None,
        StatusCode::OK,
    )
    .await
}

fn field_error(error: Option<&FieldError>, field: &str) -> Markup {
    html! {
        @if let Some(error) = error.filter(|e| e.field == field) {
            p.field-error role="alert" id={ (field) "-error" } { (error.message) }
        }
    }
}

async fn render(
    state: &AppState,
    user: &UiUser,
    form: &ConnectForm,
    error: Option<FieldError>,
    reconnect_error: Option<(i64, String)>,
    status: StatusCode,
) -> Response {
    let connections = match state.store.list_connections(PROJECT_ID).await {
        Ok(list) => list,
        Err(e) => return api_error_page(e.into(), Some(user)),
    };
    let error = error.as_ref();
    let content = html! {
        p.crumbs { "Data Management → Integrations → Braze" }
        section aria-labelledby="connections-heading" {
            h2 id="connections-heading" { "Connections" }
            @if connections.is_empty() {
                p { "No Braze connection yet. Connect one below." }
            }
            ul.connections {
                @for connection in &connections {
                    @let connected = connection.disconnected_at_ms.is_none();
                    li.card data-connection=(connection.name) {
                        div.row {
                            strong { (connection.name) }
                            span class={ "status " @if connected { "ok" } @else { "off" } } {
                                @if connected { "Connected" } @else { "Disconnected" }
                            }
                        }
                        p.meta {
                            "Instance " (connection.instance) " · " (connection.base_url)
                            " · user id property " code { (connection.user_id_property) }
                            " · added " (format_ms(Some(connection.created_at_ms)))
                        }
                        @if let Some((id, message)) = reconnect_error.as_ref().filter(|(id, _)| *id == connection.id) {
                            p.field-error role="alert" id={ "reconnect-error-" (id) } { (message) }
                        }
                        details.menu {
                            summary { "Actions ▾" }
                            form method="post" action={ "/ui/integrations/braze/" (connection.id) "/reconnect" } {
                                (user.csrf_field())
                                label for={ "reconnect-key-" (connection.id) } { "New Data Import Key" }
                                input id={ "reconnect-key-" (connection.id) } name="data_import_key" type="password" autocomplete="off" required;
                                button type="submit" { "Reconnect" }
                            }
                            form method="post" action={ "/ui/integrations/braze/" (connection.id) "/rename" } {
                                (user.csrf_field())
                                label for={ "rename-" (connection.id) } { "New name" }
                                input id={ "rename-" (connection.id) } name="name" required value=(connection.name);
                                button type="submit" { "Rename" }
                            }
                            @if connected {
                                form method="post" action={ "/ui/integrations/braze/" (connection.id) "/disconnect" } {
                                    (user.csrf_field())
                                    button.danger type="submit" { "Disconnect" }
                                }
                            }
                            a.add href="#connect" { "+ Add Connection" }
                        }
                    }
                }
            }
        }
        section id="connect" aria-labelledby="connect-heading" {
            h2 id="connect-heading" { "Connect Braze" }
            form.card method="post" action="/ui/integrations/braze" {
                (user.csrf_field())
                label for="name" { "Connection name" }
                input id="name" name="name" required value=(form.name);
                (field_error(error, "name"))
                label for="instance" { "Braze instance" }
                select id="instance" name="instance" {
                    @for id in instances::instance_ids() {
                        option value=(id) selected[form.instance == id] { (id) }
                    }
                    @if state.allow_custom_braze_url {
                        option value="custom" selected[form.instance == "custom"] { "Custom URL" }
                    }
                }
                (field_error(error, "instance"))
                @if state.allow_custom_braze_url {
                    label for="base_url" { "Custom base URL (optional; this server allows one)" }
                    input id="base_url" name="base_url" type="url" value=(form.base_url);
                    (field_error(error, "base_url"))
                }
                label for="data_import_key" { "Data Import Key" }
                input id="data_import_key" name="data_import_key" type="password" autocomplete="off" required;
                (field_error(error, "data_import_key"))
                label for="user_id_property" { "User id property" }
                input id="user_id_property" name="user_id_property"
                    value=(if form.user_id_property.is_empty() { admin::DEFAULT_USER_ID_PROPERTY } else { &form.user_id_property });
                (field_error(error, "user_id_property"))
                button type="submit" { "Connect" }
            }
        }
    };
    (status, page("Braze", Some(user), content)).into_response()
}

async fn connect(
    State(state): State<AppState>,
    UiForm { user, form }: UiForm<ConnectForm>,
) -> Response {
    if let Err(denied) = user.require(Action::ManageConnections) {
        return denied;
    }
    let base_url = Some(form.base_url.trim()).filter(|u| !u.is_empty());
    // "custom" stands for no instance: the base URL alone names the workspace.
    let instance = Some(form.instance.as_str()).filter(|i| !i.is_empty() && *i != "custom");
    let body = json!({
        "name": form.name,
        "instance": instance,
        "base_url": base_url,
        "data_import_key": form.data_import_key,
        "user_id_property": Some(form.user_id_property.trim()).filter(|p| !p.is_empty()),
    });
    let body = match serde_json::from_value(body) {
        Ok(body) => body,
        Err(e) => return api_error_page(ApiError::BadRequest(e.to_string()), Some(&user)),
    };
    match admin::create_connection(State(state.clone()), ApiPath(PROJECT_ID), ApiJson(body)).await {
        Ok(_) => redirect("/ui/integrations/braze"),
        Err(e) => {
            let status = e.status();
            let message = e.to_string();
            let error = FieldError {
                field: field_of(&message),
                message,
            };
            render(&state, &user, &form, Some(error), None, status).await
        }
    }
}

#[derive(Deserialize)]
struct ReconnectForm {
    #[serde(default)]
    data_import_key: String,
}

async fn reconnect(
    State(state): State<AppState>,
    Path(connection): Path<i64>,
    UiForm { user, form }: UiForm<ReconnectForm>,
) -> Response {
    if let Err(denied) = user.require(Action::ManageConnections) {
        return denied;
    }
    let body = match serde_json::from_value(
        json!({"data_import_key": form.data_import_key, "rest_api_key": form.data_import_key}),
    ) {
        Ok(body) => body,
        Err(e) => return api_error_page(ApiError::BadRequest(e.to_string()), Some(&user)),
    };
    let path = Path((PROJECT_ID, connection.to_string()));
    match lifecycle::reconnect(State(state.clone()), path, Json(body)).await {
        Ok(_) => redirect("/ui/integrations/braze"),
        Err(e) => {
            let status = e.status();
            render(
                &state,
                &user,
                &ConnectForm::default(),
                None,
                Some((connection, e.to_string())),
                status,
            )
            .await
        }
    }
}

#[derive(Deserialize)]
struct RenameForm {
    #[serde(default)]
    name: String,
}

async fn rename(
    State(state): State<AppState>,
    Path(connection): Path<i64>,
    UiForm { user, form }: UiForm<RenameForm>,
) -> Response {
    if let Err(denied) = user.require(Action::ManageConnections) {
        return denied;
    }
    let body = match serde_json::from_value(json!({"name": form.name})) {
        Ok(body) => body,
        Err(e) => return api_error_page(ApiError::BadRequest(e.to_string()), Some(&user)),
    };
    match lifecycle::rename_connection(
        State(state.clone()),
        Path((PROJECT_ID, connection.to_string())),
        Json(body),
    )
    .await
    {
        Ok(_) => redirect("/ui/integrations/braze"),
        Err(e) => {
            let status = e.status();
            render(
                &state,
                &user,
                &ConnectForm::default(),
                None,
                Some((connection, e.to_string())),
                status,
            )
            .await
        }
    }
}

#[derive(Deserialize)]
struct Empty {}

async fn disconnect(
    State(state): State<AppState>,
    Path(connection): Path<i64>,
    form: UiForm<Empty>,
) -> Response {
    let user = form.user;
    if let Err(denied) = user.require(Action::ManageConnections) {
        return denied;
    }
    match lifecycle::disconnect(
        State(state.clone()),
        Path((PROJECT_ID, connection.to_string())),
    )
    .await
    {
        Ok(_) => redirect("/ui/integrations/braze"),
        Err(e) => api_error_page(e, Some(&user)),
    }
}
