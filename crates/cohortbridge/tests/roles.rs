//! Roles against every admin action, in the admin API (per-user API keys) and in the web UI
//! (sessions with CSRF tokens). Each request is built to pass the role check and then fail
//! validation or find nothing, so the matrix changes no state: an allowed role gets anything but
//! 401 and 403, a denied role gets 403.

mod common;

use cohortbridge::accounts::{Action, Role};
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const PASSWORD: &str = "correct horse battery staple";

/// Adds one person per role and returns (role, e-mail, API key).
async fn people(server: &TestServer) -> Vec<(Role, String, String)> {
    let mut people = Vec::new();
    for role in Role::ALL {
        let email = format!("{}@example.com", role.as_str());
        let response = server
            .http
            .post(server.url("/api/v1/users"))
            .bearer_auth(ADMIN_KEY)
            .json(&json!({"email": email, "password": PASSWORD, "role": role.as_str()}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
        let reply: Value = server
            .http
            .post(server.url(&format!("/api/v1/users/{email}/api-keys")))
            .bearer_auth(ADMIN_KEY)
            .json(&json!({"name": "test"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let key = reply["key"].as_str().unwrap().to_owned();
        people.push((role, email, key));
    }
    people
}

/// Lists every admin API route with the action it needs and a request that changes nothing.
fn api_matrix(cohort: i64) -> Vec<(Action, Method, String, Option<Value>)> {
    let p = "/api/v1/projects/1";
    let empty = Some(json!({}));
    vec![
        (Action::View, Method::GET, "/api/v1/projects".into(), None),
        (Action::View, Method::GET, format!("{p}/stats"), None),
        (Action::View, Method::GET, format!("{p}/cohorts"), None),
        (
            Action::View,
            Method::GET,
            format!("{p}/cohorts/{cohort}"),
            None,
        ),
        (
            Action::View,
            Method::GET,
            format!("{p}/cohorts/{cohort}/members"),
            None,
        ),
        (
            Action::View,
            Method::GET,
            format!("{p}/cohorts/{cohort}/preview"),
            None,
        ),
        (
            Action::View,
            Method::GET,
            format!("{p}/cohorts/{cohort}/explain?user=u1"),
            None,
        ),
        (Action::View, Method::GET, format!("{p}/connections"), None),
        (Action::View, Method::GET, format!("{p}/syncs"), None),
        (
            Action::View,
            Method::GET,
            format!("{p}/events?distinct_id=u1"),
            None,
        ),
        (
            Action::View,
            Method::GET,
            format!("{p}/mtu?month=2026-01"),
            None,
        ),
        (
            Action::View,
            Method::GET,
            format!("{p}/identity-mode"),
            None,
        ),
        (Action::View, Method::GET, p.into(), None),
        (
            Action::ManageProject,
            Method::POST,
            format!("{p}/api-secret"),
            empty.clone(),
        ),
        (
            Action::ManageProject,
            Method::POST,
            format!("{p}/currents-token"),
            empty.clone(),
        ),
        (
            Action::ManageProject,
            Method::GET,
            format!("{p}/credentials"),
            None,
        ),
        (
            Action::ManageProject,
            Method::POST,
            format!("{p}/credentials"),
            empty.clone(),
        ),
        (
            Action::ManageProject,
            Method::PUT,
            format!("{p}/timezone"),
            empty.clone(),
        ),
        (
            Action::ManageProject,
            Method::POST,
            format!("{p}/identity-mode"),
            empty.clone(),
        ),
        (
            Action::EditCohorts,
            Method::POST,
            format!("{p}/cohorts"),
            empty.clone(),
        ),
        (
            Action::EditCohorts,
            Method::PUT,
            format!("{p}/cohorts/{cohort}"),
            Some(json!({"name": ""})),
        ),
        (
            Action::EditCohorts,
            Method::POST,
            format!("{p}/cohorts/{cohort}/rename"),
            empty.clone(),
        ),
        (
            Action::EditCohorts,
            Method::DELETE,
            format!("{p}/cohorts/999"),
            None,
        ),
        (
            Action::ManageConnections,
            Method::POST,
            format!("{p}/connections"),
            empty.clone(),
        ),
        (
            Action::ManageConnections,
            Method::POST,
            format!("{p}/connections/emu/reconnect"),
            empty.clone(),
        ),
        (
            Action::ManageConnections,
            Method::POST,
            format!("{p}/connections/missing/disconnect"),
            None,
        ),
        (
            Action::ManageConnections,
            Method::POST,
            format!("{p}/connections/emu/rename"),
            empty.clone(),
        ),
        (
            Action::Export,
            Method::POST,
            format!("{p}/exports"),
            empty.clone(),
        ),
        (
            Action::Export,
            Method::POST,
            format!("{p}/syncs/999/run"),
            None,
        ),
        (
            Action::Export,
            Method::POST,
            format!("{p}/syncs/999/pause"),
            None,
        ),
        (
            Action::Export,
            Method::POST,
            format!("{p}/syncs/999/resume"),
            None,
        ),
        (
            Action::Export,
            Method::DELETE,
            format!("{p}/syncs/999"),
            None,
        ),
        (
            Action::ManageUsers,
            Method::GET,
            "/api/v1/users".into(),
            None,
        ),
        (
            Action::ManageUsers,
            Method::POST,
            "/api/v1/users".into(),
            empty.clone(),
        ),
        (
            Action::ManageUsers,
            Method::POST,
            "/api/v1/users/nobody@example.com/api-keys".into(),
            empty,
        ),
    ]
}

async fn setup() -> (TestServer, TestEmulator, i64) {
    let emulator = TestEmulator::start().await;
    let server = TestServer::start().await;
    let cohort = server
        .create_cohort("Buyers", json!({"event": "Purchase"}))
        .await;
    let (status, body) = server
        .admin_post(
            "/connections",
            &json!({"name": "emu", "base_url": emulator.base, "data_import_key": DATA_IMPORT_KEY}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    (server, emulator, cohort)
}

#[tokio::test]
async fn api_keys_act_with_their_role() {
    let (server, _emulator, cohort) = setup().await;
    let people = people(&server).await;
    let mut checked = 0;
    for (role, _, key) in &people {
        for (action, method, path, body) in api_matrix(cohort) {
            let mut request = server
                .http
                .request(method.clone(), server.url(&path))
                .bearer_auth(key);
            if let Some(body) = &body {
                request = request.json(body);
            }
            let response = request.send().await.unwrap();
            let status = response.status();
            let text = response.text().await.unwrap();
            if role.allows(action) {
                assert!(
                    status != StatusCode::FORBIDDEN && status != StatusCode::UNAUTHORIZED,
                    "{role:?} {method} {path}: expected allowed, got {status}: {text}"
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::FORBIDDEN,
                    "{role:?} {method} {path}: {text}"
                );
                assert!(
                    text.contains(role.as_str()),
                    "{role:?} {method} {path}: {text}"
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 4 * api_matrix(cohort).len());

    // The admin key still acts as an owner, and a wrong key is rejected.
    let (status, _) = server.admin_get_status("").await;
    assert_eq!(status, 200);
    let response = server
        .http
        .get(server.url("/api/v1/projects"))
        .bearer_auth("not-a-key-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    server.stop().await;
}

#[tokio::test]
async fn consumer_may_preview_an_export() {
    let (server, emulator, cohort) = setup().await;
    let people = people(&server).await;
    let token = server.token.clone();
    server
        .track(&[json!({"event": "Purchase", "properties": {"token": token, "distinct_id": "u1", "time": now_secs()}})])
        .await;
    server
        .engage(&[json!({"$token": token, "$distinct_id": "u1", "$set": {"$braze_external_id": "ext-u1"}})])
        .await;
    let consumer = &people
        .iter()
        .find(|(role, _, _)| *role == Role::Consumer)
        .unwrap()
        .2;
    let export = |body: Value| {
        server
            .http
            .post(server.url("/api/v1/projects/1/exports"))
            .bearer_auth(consumer)
            .json(&body)
            .send()
    };

    let response = export(json!({"cohort_id": cohort, "connection": "emu", "dry_run": true}))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let plan: Value = response.json().await.unwrap();
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["add"], json!(["ext-u1"]));

    let response = export(json!({"cohort_id": cohort, "connection": "emu", "mode": "once"}))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let text = response.text().await.unwrap();
    assert!(text.contains("consumer"), "{text}");
    assert!(
        server
            .admin_get("/syncs")
            .await
            .as_array()
            .unwrap()
            .is_empty(),
        "neither request created a sync"
    );
    assert!(
        emulator
            .members(&format!("cohortbridge-test-1-{cohort}"))
            .await
            .is_empty(),
        "nothing was sent to Braze"
    );
    server.stop().await;
}

#[tokio::test]
async fn sync_errors_are_hidden_from_analysts() {
    let (server, emulator, cohort) = setup().await;
    let people = people(&server).await;
    let token = server.token.clone();
    server
        .track(&[json!({"event": "Purchase", "properties": {"token": token, "distinct_id": "u1", "time": now_secs()}})])
        .await;
    server
        .engage(&[json!({"$token": token, "$distinct_id": "u1", "$set": {"$braze_external_id": "ext-u1"}})])
        .await;
    emulator
        .inject(json!({"status": 500, "body": "braze is down", "times": 100}))
        .await;
    let (status, body) = server
        .admin_post(
            "/exports",
            &json!({"cohort_id": cohort, "connection": "emu", "mode": "once"}),
        )
        .await;
    assert_ne!(status, StatusCode::FORBIDDEN, "{body}");
    let sync_id = server.admin_get("/syncs").await[0]["sync"]["id"]
        .as_i64()
        .unwrap();
    let mut seen = 0;
    for (role, _, key) in &people {
        let shown: Value = server
            .http
            .get(server.url(&format!("/api/v1/projects/1/syncs/{sync_id}")))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let errors: Vec<&Value> = shown["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| &r["error"])
            .filter(|e| !e.is_null())
            .collect();
        for error in errors {
            let hidden = error.as_str().unwrap().starts_with("hidden");
            assert_eq!(
                hidden,
                !role.allows(Action::ViewSyncErrors),
                "{role:?}: {error}"
            );
            seen += 1;
        }
    }
    assert_eq!(seen, 4, "each role sees one failed run");

    // The sync page of the web UI offers View Error only to roles that may see it.
    for (role, email, _) in &people {
        let (_, ui) = UiClient::login(&server.base, email, PASSWORD).await;
        let (status, html) = ui.get(&format!("/ui/syncs/{sync_id}")).await;
        assert_eq!(status, StatusCode::OK, "{role:?}");
        let shown = role.allows(Action::ViewSyncErrors);
        assert_eq!(html.contains("View Error"), shown, "{role:?}");
        assert_eq!(html.contains("braze is down"), shown, "{role:?}: {html}");
    }
    server.stop().await;
}

/// One web UI request: the action it needs, the method, the path and the form fields.
type UiCase = (
    Action,
    &'static str,
    String,
    Vec<(&'static str, &'static str)>,
);

/// Lists every web UI action with a request for it.
fn ui_matrix(cohort: i64) -> Vec<UiCase> {
    vec![
        (Action::View, "GET", "/ui/cohorts".into(), vec![]),
        (Action::View, "GET", format!("/ui/cohorts/{cohort}"), vec![]),
        (Action::View, "GET", "/ui/syncs".into(), vec![]),
        (Action::View, "GET", "/ui/users?q=u1".into(), vec![]),
        (Action::View, "GET", "/ui/mtu?month=2026-01".into(), vec![]),
        (Action::View, "GET", "/ui/setup".into(), vec![]),
        (
            Action::ManageProject,
            "POST",
            "/ui/setup/currents-token".into(),
            vec![],
        ),
        (Action::View, "GET", "/ui/account".into(), vec![]),
        (
            Action::ManageConnections,
            "GET",
            "/ui/integrations/braze".into(),
            vec![],
        ),
        (
            Action::ManageConnections,
            "POST",
            "/ui/integrations/braze".into(),
            vec![("name", "")],
        ),
        (
            Action::ManageConnections,
            "POST",
            "/ui/integrations/braze/999/reconnect".into(),
            vec![],
        ),
        (
            Action::ManageConnections,
            "POST",
            "/ui/integrations/braze/999/rename".into(),
            vec![],
        ),
        (
            Action::ManageConnections,
            "POST",
            "/ui/integrations/braze/999/disconnect".into(),
            vec![],
        ),
        (Action::EditCohorts, "GET", "/ui/cohorts/new".into(), vec![]),
        (
            Action::EditCohorts,
            "POST",
            "/ui/cohorts".into(),
            vec![("name", "x"), ("definition", "{")],
        ),
        (
            Action::EditCohorts,
            "POST",
            format!("/ui/cohorts/{cohort}"),
            vec![("name", ""), ("definition", "{")],
        ),
        (
            Action::Export,
            "GET",
            format!("/ui/cohorts/{cohort}/export?connection=missing"),
            vec![],
        ),
        (
            Action::Export,
            "POST",
            format!("/ui/cohorts/{cohort}/export"),
            vec![("connection", "missing"), ("mode", "once")],
        ),
        (Action::Export, "POST", "/ui/syncs/999/pause".into(), vec![]),
        (
            Action::Export,
            "POST",
            "/ui/syncs/999/resume".into(),
            vec![],
        ),
        (
            Action::Export,
            "POST",
            "/ui/syncs/999/remove".into(),
            vec![],
        ),
    ]
}

#[tokio::test]
async fn ui_sessions_act_with_their_role() {
    let (server, _emulator, cohort) = setup().await;
    let people = people(&server).await;
    for (role, email, _) in &people {
        let (status, ui) = UiClient::login(&server.base, email, PASSWORD).await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{role:?} login");
        for (action, method, path, fields) in ui_matrix(cohort) {
            let (status, html) = if method == "GET" {
                ui.get(&path).await
            } else {
                ui.post(&path, &fields).await
            };
            if role.allows(action) {
                assert_ne!(
                    status,
                    StatusCode::FORBIDDEN,
                    "{role:?} {method} {path}: {html}"
                );
                assert!(
                    status != StatusCode::SEE_OTHER || method == "POST",
                    "{role:?} {path}"
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::FORBIDDEN,
                    "{role:?} {method} {path}: {html}"
                );
                assert!(
                    html.contains(&format!("Your role ({})", role.as_str())),
                    "{html}"
                );
            }
        }
        // The live count of the builder.
        let response = ui
            .http
            .post(format!("{}/ui/cohorts/count", server.base))
            .header("cookie", &ui.session)
            .header("x-csrf-token", &ui.csrf)
            .json(&json!({"definition": {"event": "Purchase"}}))
            .send()
            .await
            .unwrap();
        let expected = if role.allows(Action::EditCohorts) {
            200
        } else {
            403
        };
        assert_eq!(response.status(), expected, "{role:?} live count");
        // Navigation shows Integrations only to roles that may open it.
        let (_, html) = ui.get("/ui/cohorts").await;
        assert_eq!(
            html.contains("href=\"/ui/integrations/braze\""),
            role.allows(Action::ManageConnections),
            "{role:?} navigation"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn forms_need_the_session_csrf_token() {
    let (server, _emulator, cohort) = setup().await;
    people(&server).await;
    let (_, ui) = UiClient::login(&server.base, "owner@example.com", PASSWORD).await;
    for token in ["", "wrong-token"] {
        let (status, html) = ui
            .post_raw(
                &format!("/ui/cohorts/{cohort}"),
                &[
                    ("csrf", token),
                    ("name", "Renamed"),
                    ("definition", "{\"event\": \"Purchase\"}"),
                ],
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{html}");
        assert!(html.contains("CSRF"), "{html}");
    }
    let response = ui
        .http
        .post(format!("{}/ui/cohorts/count", server.base))
        .header("cookie", &ui.session)
        .json(&json!({"definition": {"event": "Purchase"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(
        server.admin_get(&format!("/cohorts/{cohort}")).await["name"],
        "Buyers"
    );

    // With the token the same form works.
    let (status, _) = ui
        .post(
            &format!("/ui/cohorts/{cohort}"),
            &[
                ("name", "Renamed"),
                ("definition", "{\"event\": \"Purchase\"}"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(
        server.admin_get(&format!("/cohorts/{cohort}")).await["name"],
        "Renamed"
    );

    // A session's token does not work for another session.
    let (_, other) = UiClient::login(&server.base, "admin@example.com", PASSWORD).await;
    assert_ne!(other.csrf, ui.csrf);
    let (status, _) = other
        .post_raw("/ui/logout", &[("csrf", ui.csrf.as_str())])
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    server.stop().await;
}

#[tokio::test]
async fn session_cookie_flags_and_logout() {
    let server = TestServer::start().await;
    people(&server).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for (proto, secure) in [(None, false), (Some("https"), true)] {
        let mut request = http.get(server.url("/ui/login"));
        if let Some(proto) = proto {
            request = request.header("x-forwarded-proto", proto);
        }
        let page = request.send().await.unwrap();
        let login_cookie = set_cookie_value(&page, "cb_login_csrf").unwrap();
        let csrf = csrf_of(&page.text().await.unwrap());
        let mut request = http
            .post(server.url("/ui/login"))
            .header("cookie", login_cookie.split(';').next().unwrap())
            .form(&[
                ("csrf", csrf.as_str()),
                ("email", "owner@example.com"),
                ("password", PASSWORD),
            ]);
        if let Some(proto) = proto {
            request = request.header("x-forwarded-proto", proto);
        }
        let reply = request.send().await.unwrap();
        assert_eq!(reply.status(), 303);
        let cookie = set_cookie_value(&reply, "cb_session").unwrap();
        assert!(cookie.contains("HttpOnly"), "{cookie}");
        assert!(cookie.contains("SameSite=Lax"), "{cookie}");
        assert_eq!(cookie.contains("Secure"), secure, "{cookie}");
    }

    let (_, ui) = UiClient::login(&server.base, "owner@example.com", PASSWORD).await;
    let (status, _) = ui.get("/ui/syncs").await;
    assert_eq!(status, 200);
    let (status, _) = ui.post("/ui/logout", &[]).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (status, _) = ui.get("/ui/syncs").await;
    assert_eq!(
        status,
        StatusCode::SEE_OTHER,
        "the old session no longer works"
    );

    let anonymous = UiClient {
        base: server.base.clone(),
        http,
        session: String::new(),
        csrf: String::new(),
    };
    let (status, _) = anonymous.get("/ui/cohorts").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    server.stop().await;
}

#[tokio::test]
async fn logins_are_rate_limited() {
    let server = TestServer::start().await;
    people(&server).await;
    for attempt in 0..5 {
        let (status, ui) =
            UiClient::login(&server.base, "analyst@example.com", "wrong password 123").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "attempt {attempt}");
        assert!(ui.session.is_empty());
    }
    let (status, _) = UiClient::login(&server.base, "analyst@example.com", PASSWORD).await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "the right password is refused while limited"
    );
    server.stop().await;
}

#[tokio::test]
async fn secrets_are_never_rendered() {
    let (server, _emulator, _) = setup().await;
    people(&server).await;
    let (_, ui) = UiClient::login(&server.base, "owner@example.com", PASSWORD).await;
    let (_, html) = ui.get("/ui/integrations/braze").await;
    assert!(
        !html.contains(DATA_IMPORT_KEY),
        "the stored key is not shown"
    );
    let (status, html) = ui
        .post(
            "/ui/integrations/braze",
            &[
                ("name", "second"),
                ("instance", "custom"),
                ("base_url", "http://127.0.0.1:1"),
                ("data_import_key", "typed-secret-key"),
            ],
        )
        .await;
    assert!(
        status.is_client_error() || status.is_server_error(),
        "{status}"
    );
    assert!(
        !html.contains("typed-secret-key"),
        "a typed key is not rendered back"
    );
    assert!(!html.contains(PASSWORD));

    // Users created through the API never carry the password or its hash.
    let users = server
        .http
        .get(server.url("/api/v1/users"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(users.contains("owner@example.com"));
    assert!(!users.contains("argon2"), "{users}");

    // The setup page never shows the stored Currents token; generating one shows it once.
    let (_, html) = ui.get("/ui/setup").await;
    assert!(!html.contains(&server.currents_token), "{html}");
    let (status, html) = ui.post("/ui/setup/currents-token", &[]).await;
    assert_eq!(status, 200, "{html}");
    let marker = "id=\"currents-token\">";
    let start = html.find(marker).expect("the new token is shown") + marker.len();
    let token = &html[start..start + html[start..].find('<').unwrap()];
    assert_eq!(token.len(), 64, "{token}");
    assert_ne!(token, server.currents_token);
    let (_, html) = ui.get("/ui/setup").await;
    assert!(!html.contains(token), "the new token is shown only once");
    server.stop().await;
}

#[tokio::test]
async fn user_input_errors_name_the_field() {
    let server = TestServer::start().await;
    for (body, expected) in [
        (
            json!({"email": "not-an-email", "password": PASSWORD, "role": "owner"}),
            "field `email` \"not-an-email\"",
        ),
        (
            json!({"email": "a@b.io", "password": "short", "role": "owner"}),
            "field `password`",
        ),
        (
            json!({"email": "a@b.io", "password": PASSWORD, "role": "root"}),
            "\"root\"",
        ),
    ] {
        let response = server
            .http
            .post(server.url("/api/v1/users"))
            .bearer_auth(ADMIN_KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        let reply: Value = response.json().await.unwrap();
        let message = reply["error"].as_str().unwrap();
        assert!(message.contains(expected), "{message}");
    }
    server.stop().await;
}

#[tokio::test]
async fn account_page_creates_own_api_key() {
    let (server, _emulator, _) = setup().await;
    people(&server).await;
    let (_, ui) = UiClient::login(&server.base, "consumer@example.com", PASSWORD).await;
    let (status, html) = ui.post("/ui/account", &[("name", "notebook")]).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    let marker = "id=\"new-api-key\">";
    let start = html.find(marker).expect("the new key is shown") + marker.len();
    let key = html[start..].split('<').next().unwrap().to_owned();
    assert_eq!(key.len(), 48, "{key}");

    // The key acts with the consumer's role.
    let read = server
        .http
        .get(server.url("/api/v1/projects/1/cohorts"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    let write = server
        .http
        .post(server.url("/api/v1/projects/1/cohorts"))
        .bearer_auth(&key)
        .json(&json!({"name": "x", "definition": {"event": "Purchase"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(write.status(), 403);

    // Shown once: the account page does not show it again.
    let (_, html) = ui.get("/ui/account").await;
    assert!(!html.contains(&key));
    server.stop().await;
}

#[tokio::test]
async fn first_owner_is_created_on_start() {
    let server = TestServer::start_with(|config| {
        config.owner_email = Some("Boss@Example.com".into());
        config.owner_password = Some(PASSWORD.into());
    })
    .await;
    let (status, ui) = UiClient::login(&server.base, "boss@example.com", PASSWORD).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (status, _) = ui.get("/ui/integrations/braze").await;
    assert_eq!(status, 200);
    server.stop().await;
}
