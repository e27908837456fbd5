//! The account page: who is logged in, with which role, and a form that creates an admin API
//! key for that person. The key acts with the person's role and is shown only once.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use maud::{html, Markup};
use serde::Deserialize;

use super::{api_error_page, now_ms, page, UiForm, UiUser};
use crate::api::AppState;
use crate::secrets;

pub fn routes() -> Router<AppState> {
    Router::new().route("/ui/account", get(show).post(create_key))
}

fn content(user: &UiUser, new_key: Option<&str>) -> Markup {
    html! {
        dl.facts { dt { "E-mail" } dd { (user.email) } dt { "Role" } dd #role { (user.role().as_str()) } }
        h2 { "API keys" }
        p { "An API key authenticates the admin API and the CLI (" code { "Authorization: Bearer <key>" } ") with your role." }
        @if let Some(key) = new_key {
            p.card role="status" { "New key, shown only now: " code #new-api-key { (key) } }
        }
        form.card method="post" action="/ui/account" {
            (user.csrf_field())
            label for="key-name" { "Key name" }
            input id="key-name" name="name" required;
            button type="submit" { "Create API key" }
        }
    }
}

async fn show(user: UiUser) -> Response {
    page("Account", Some(&user), content(&user, None)).into_response()
}

#[derive(Deserialize)]
struct NewKeyForm {
    #[serde(default)]
    name: String,
}

async fn create_key(
    State(state): State<AppState>,
    UiForm { user, form }: UiForm<NewKeyForm>,
) -> Response {
    let name = form.name.trim();
    if name.is_empty() {
        let message = "Field `name` is empty. Name the key after the place that uses it.";
        return super::error_page(StatusCode::BAD_REQUEST, message, Some(&user));
    }
    let Some(person) = &user.principal.user else {
        return super::error_page(
            StatusCode::FORBIDDEN,
            "Only a logged-in person has an account.",
            Some(&user),
        );
    };
    let key = secrets::random_token(24);
    match state
        .store
        .create_user_api_key(person.id, name, &secrets::hash(&key), now_ms())
        .await
    {
        Ok(stored) => {
            tracing::info!(
                user_id = person.id,
                api_key_id = stored.id,
                "user created an API key in the web UI"
            );
            page("Account", Some(&user), content(&user, Some(&key))).into_response()
        }
        Err(e) => api_error_page(e.into(), Some(&user)),
    }
}
