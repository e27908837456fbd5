//! Test harness: the real server and the Braze emulator, each started in-process on port 0.
#![allow(dead_code)]

use std::path::PathBuf;

use base64::Engine;
use braze_emulator::{Config as EmulatorConfig, Emulator};
use cohortbridge::config::ServeConfig;
use cohortbridge::server::{self, RunningServer};
use serde_json::{json, Value};

pub const ADMIN_KEY: &str = "test-admin-key-0123456789abcdef";
pub const PARTNER_NAME: &str = "cohortbridge";
pub const PARTNER_API_KEY: &str = "pk-test";
pub const DATA_IMPORT_KEY: &str = "dik-test-secret";

pub struct TestServer {
    pub base: String,
    pub http: reqwest::Client,
    pub token: String,
    pub api_secret: String,
    pub currents_token: String,
    pub data_dir: tempfile::TempDir,
    running: Option<RunningServer>,
}

/// Builds the config the tests use: quick retries, a short scheduler tick, custom Braze URLs allowed.
pub fn test_config(data_dir: PathBuf) -> ServeConfig {
    let mut config = ServeConfig::for_data_dir(data_dir, "127.0.0.1:0".parse().unwrap());
    config.admin_key = Some(ADMIN_KEY.into());
    config.braze_partner_name = PARTNER_NAME.into();
    config.braze_partner_api_key = Some(PARTNER_API_KEY.into());
    config.allow_custom_braze_url = true;
    config.min_sync_interval_secs = 1;
    config.scheduler_tick_ms = 100;
    config.braze_max_attempts = 3;
    config.braze_retry_base_ms = 10;
    config.braze_rate_limit_floor_ms = 10;
    config.braze_timeout_secs = 2;
    config.braze_max_rate_limit_wait_secs = 5;
    config
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut ServeConfig)) -> Self {
        let data_dir = tempfile::tempdir().unwrap();
        let mut config = test_config(data_dir.path().to_path_buf());
        adjust(&mut config);
        let running = server::start(config).await.expect("server starts");
        let base = format!("http://{}", running.addr);
        let http = reqwest::Client::new();
        let mut server = Self {
            base,
            http,
            token: String::new(),
            api_secret: String::new(),
            currents_token: String::new(),
            data_dir,
            running: Some(running),
        };
        let project = server.admin_get("").await;
        server.token = project["token"].as_str().unwrap().to_owned();
        server.api_secret = project["api_secret"].as_str().unwrap().to_owned();
        server.currents_token = project["currents_token"].as_str().unwrap().to_owned();
        server
    }

    pub async fn stop(self) {
        drop(self.stop_keeping_data().await);
    }

    /// Stops the server and hands back its data folder, which is deleted when dropped.
    pub async fn stop_keeping_data(mut self) -> tempfile::TempDir {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
        self.data_dir
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn admin_url(&self, path: &str) -> String {
        format!("{}/api/v1/projects/1{path}", self.base)
    }

    /// GET an admin path under project 1 and return the JSON, asserting a 2xx.
    pub async fn admin_get(&self, path: &str) -> Value {
        let (status, body) = self.admin_get_status(path).await;
        assert!(status.is_success(), "GET {path}: HTTP {status}: {body}");
        body
    }

    pub async fn admin_get_status(&self, path: &str) -> (reqwest::StatusCode, Value) {
        let response = self
            .http
            .get(self.admin_url(path))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn admin_post(&self, path: &str, body: &Value) -> (reqwest::StatusCode, Value) {
        let response = self
            .http
            .post(self.admin_url(path))
            .bearer_auth(ADMIN_KEY)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn admin_delete(&self, path: &str) -> (reqwest::StatusCode, Value) {
        let response = self
            .http
            .delete(self.admin_url(path))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Waits until sync `sync_id` is neither running nor due, so that a manual run cannot
    /// collide with one the scheduler starts.
    pub async fn wait_until_idle(&self, sync_id: i64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let shown = self.admin_get(&format!("/syncs/{sync_id}")).await;
            let now_ms = chrono::Utc::now().timestamp_millis();
            let due = shown["sync"]["next_run_at_ms"]
                .as_i64()
                .is_some_and(|at| at <= now_ms);
            let running = shown["runs"]
                .as_array()
                .unwrap()
                .iter()
                .any(|run| run["status"] == "running");
            if !due && !running {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "sync {sync_id} never became idle: {shown}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// POST a raw body to `/import` with the API secret, returning status and JSON.
    pub async fn import_raw(
        &self,
        query: &str,
        body: impl Into<reqwest::Body>,
    ) -> (reqwest::StatusCode, Value) {
        let response = self
            .http
            .post(self.url(&format!("/import{query}")))
            .basic_auth(&self.api_secret, Some(""))
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn import_records(&self, records: &[Value]) -> (reqwest::StatusCode, Value) {
        let body: String = records.iter().map(|r| format!("{r}\n")).collect();
        self.import_raw("?strict=1", body).await
    }

    /// POST `/track` as a form with base64 `data`, the way mixpanel-browser sends it.
    pub async fn track(&self, events: &[Value]) -> (reqwest::StatusCode, String) {
        let data = base64::engine::general_purpose::STANDARD
            .encode(Value::Array(events.to_vec()).to_string());
        let response = self
            .http
            .post(self.url("/track?verbose=1"))
            .form(&[("data", data)])
            .send()
            .await
            .unwrap();
        (response.status(), response.text().await.unwrap())
    }

    pub async fn engage(&self, updates: &[Value]) -> (reqwest::StatusCode, String) {
        let data = Value::Array(updates.to_vec()).to_string();
        let response = self
            .http
            .post(self.url("/engage?verbose=1"))
            .form(&[("data", data)])
            .send()
            .await
            .unwrap();
        (response.status(), response.text().await.unwrap())
    }

    pub async fn event_count(&self) -> i64 {
        self.admin_get("/stats").await["events"].as_i64().unwrap()
    }

    pub async fn create_cohort(&self, name: &str, definition: Value) -> i64 {
        let (status, body) = self
            .admin_post("/cohorts", &json!({"name": name, "definition": definition}))
            .await;
        assert_eq!(status, 201, "create cohort: {body}");
        body["id"].as_i64().unwrap()
    }

    pub async fn members(&self, cohort_id: i64) -> Vec<String> {
        let body = self
            .admin_get(&format!("/cohorts/{cohort_id}/members"))
            .await;
        body["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    }

    /// Reads an edge-case fixture as JSON lines.
    pub fn fixture_lines(name: &str) -> Vec<Value> {
        let path = fixture_path(&format!("edge-cases/{name}"));
        std::fs::read_to_string(&path)
            .unwrap()
            .split('\n')
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A browser-like client of the web UI: keeps the session cookie and the CSRF token, and does
/// not follow redirects, so tests see each `303` and its `Set-Cookie`.
pub struct UiClient {
    pub base: String,
    pub http: reqwest::Client,
    pub session: String,
    pub csrf: String,
}

/// Reads the value of the first `name="csrf"` hidden field of a page.
pub fn csrf_of(html: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let start = html.find(marker).expect("the page has a CSRF field") + marker.len();
    html[start..].split('"').next().unwrap().to_owned()
}

/// Returns the value of cookie `name` set by a response.
pub fn set_cookie_value(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| v.to_owned())
}

impl UiClient {
    fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    }

    /// Logs in through the login form and returns the login reply's status with the client.
    pub async fn login(base: &str, email: &str, password: &str) -> (reqwest::StatusCode, Self) {
        let http = Self::client();
        let page = http.get(format!("{base}/ui/login")).send().await.unwrap();
        let login_cookie = set_cookie_value(&page, "cb_login_csrf").unwrap();
        let login_cookie = login_cookie.split(';').next().unwrap().to_owned();
        let csrf = csrf_of(&page.text().await.unwrap());
        let reply = http
            .post(format!("{base}/ui/login"))
            .header("cookie", login_cookie)
            .form(&[
                ("csrf", csrf.as_str()),
                ("email", email),
                ("password", password),
            ])
            .send()
            .await
            .unwrap();
        let status = reply.status();
        let session = set_cookie_value(&reply, "cb_session")
            .map(|c| c.split(';').next().unwrap().to_owned())
            .unwrap_or_default();
        let mut client = Self {
            base: base.to_owned(),
            http,
            session,
            csrf: String::new(),
        };
        if status == reqwest::StatusCode::SEE_OTHER {
            let (_, html) = client.get("/ui/cohorts").await;
            client.csrf = csrf_of(&html);
        }
        (status, client)
    }

    pub async fn get(&self, path: &str) -> (reqwest::StatusCode, String) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .header("cookie", &self.session)
            .send()
            .await
            .unwrap();
        (response.status(), response.text().await.unwrap())
    }

    /// Posts a form with the session's CSRF token added.
    pub async fn post(&self, path: &str, fields: &[(&str, &str)]) -> (reqwest::StatusCode, String) {
        let mut form: Vec<(&str, &str)> = vec![("csrf", &self.csrf)];
        form.extend_from_slice(fields);
        self.post_raw(path, &form).await
    }

    /// Posts a form exactly as given, without adding the CSRF token.
    pub async fn post_raw(
        &self,
        path: &str,
        fields: &[(&str, &str)],
    ) -> (reqwest::StatusCode, String) {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .header("cookie", &self.session)
            .form(fields)
            .send()
            .await
            .unwrap();
        (response.status(), response.text().await.unwrap())
    }
}

/// A running Braze emulator and a handle to read its state.
pub struct TestEmulator {
    pub base: String,
    pub emulator: Emulator,
}

impl TestEmulator {
    pub async fn start() -> Self {
        let emulator = Emulator::new(EmulatorConfig {
            partner_name: PARTNER_NAME.into(),
            partner_api_keys: vec![PARTNER_API_KEY.into()],
            data_import_keys: vec![DATA_IMPORT_KEY.into()],
        });
        let addr = emulator
            .clone()
            .spawn("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        Self {
            base: format!("http://{addr}"),
            emulator,
        }
    }

    pub async fn get(&self, path: &str) -> Value {
        reqwest::get(format!("{}{path}", self.base))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn members(&self, braze_cohort_id: &str) -> Vec<String> {
        let value = self
            .get(&format!("/_emulator/cohorts/{braze_cohort_id}/members"))
            .await;
        value
            .as_array()
            .map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default()
    }

    pub async fn inject(&self, fault: Value) {
        let response = reqwest::Client::new()
            .post(format!("{}/_emulator/faults", self.base))
            .json(&fault)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "fault rejected: {}",
            response.text().await.unwrap()
        );
    }
}

pub fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}
