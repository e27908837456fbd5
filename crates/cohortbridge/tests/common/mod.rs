//! Test harness: the real server and the Braze emulator, each started in-process on port 0.
//!
//! The server uses the SQLite file in its data folder, or PostgreSQL when
//! `COHORTBRIDGE_TEST_DATABASE_URL` names a database: each server then gets a schema of its own
//! in that database, dropped when the test ends.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use braze_emulator::{Config as EmulatorConfig, Emulator};
use cohortbridge::config::ServeConfig;
use cohortbridge::server::{self, RunningServer};
use serde_json::{json, Value};

pub const ADMIN_KEY: &str = "test-admin-key-0123456789abcdef";
/// The installation id of every test server, so that Braze cohort ids are known in advance:
/// cohort C of project P is `cohortbridge-test-P-C`.
pub const INSTALLATION_ID: &str = "test";
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
    pub database: TestDatabase,
    running: Option<RunningServer>,
}

/// A stopped server's data folder and database, kept until dropped.
pub struct StoppedServer {
    pub data_dir: tempfile::TempDir,
    pub database: TestDatabase,
}

/// The environment variable that points the tests at a PostgreSQL database.
pub const TEST_DATABASE_URL_VAR: &str = "COHORTBRIDGE_TEST_DATABASE_URL";

/// The database of one test server: the SQLite file in its data folder, or a schema of its own
/// in the PostgreSQL database named by `COHORTBRIDGE_TEST_DATABASE_URL`.
pub struct TestDatabase {
    sqlite_path: PathBuf,
    postgres: Option<PostgresSchema>,
}

struct PostgresSchema {
    /// The database URL as configured, without a schema.
    base_url: String,
    schema: String,
}

impl TestDatabase {
    /// Uses the SQLite file in `data_dir`, or creates a fresh PostgreSQL schema.
    pub async fn create(data_dir: &Path) -> Self {
        let sqlite_path = data_dir.join("cohortbridge.db");
        let Ok(base_url) = std::env::var(TEST_DATABASE_URL_VAR) else {
            return Self {
                sqlite_path,
                postgres: None,
            };
        };
        let schema = format!("t_{}", cohortbridge::secrets::random_token(8));
        let client = postgres_client(&base_url).await;
        client
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .await
            .unwrap_or_else(|e| panic!("cannot create the test schema {schema}: {e}"));
        Self {
            sqlite_path,
            postgres: Some(PostgresSchema { base_url, schema }),
        }
    }

    pub fn is_postgres(&self) -> bool {
        self.postgres.is_some()
    }

    /// The `--database-url` a server needs for this database; `None` for SQLite.
    pub fn url(&self) -> Option<String> {
        self.postgres.as_ref().map(|pg| {
            let separator = if pg.base_url.contains('?') { '&' } else { '?' };
            format!(
                "{}{separator}options=-c%20search_path%3D{}",
                pg.base_url, pg.schema
            )
        })
    }

    /// The environment that points a spawned `cohortbridge serve` at this database, with the
    /// installation id that the tests' Braze cohort ids carry.
    pub fn envs(&self) -> Vec<(&'static str, String)> {
        let mut envs = vec![("COHORTBRIDGE_INSTALLATION_ID", INSTALLATION_ID.to_owned())];
        envs.extend(self.url().map(|url| ("COHORTBRIDGE_DATABASE_URL", url)));
        envs
    }

    /// Runs SQL statements directly on the database, behind the server's back.
    pub async fn execute(&self, sql: &str) {
        match &self.postgres {
            Some(pg) => {
                let client = postgres_client(&pg.base_url).await;
                client
                    .batch_execute(&format!("SET search_path TO {}; {sql}", pg.schema))
                    .await
                    .unwrap();
            }
            None => {
                let db = rusqlite::Connection::open(&self.sqlite_path).unwrap();
                db.execute_batch(sql).unwrap();
            }
        }
    }

    /// Returns the first column of a query's rows as text.
    pub async fn query_strings(&self, sql: &str) -> Vec<String> {
        match &self.postgres {
            Some(pg) => {
                let client = postgres_client(&pg.base_url).await;
                client
                    .batch_execute(&format!("SET search_path TO {}", pg.schema))
                    .await
                    .unwrap();
                let rows = client.query(sql, &[]).await.unwrap();
                rows.iter().map(|row| row.get::<_, String>(0)).collect()
            }
            None => {
                let db = rusqlite::Connection::open(&self.sqlite_path).unwrap();
                let mut statement = db.prepare(sql).unwrap();
                let rows = statement.query_map([], |row| row.get(0)).unwrap();
                rows.map(Result::unwrap).collect()
            }
        }
    }

    /// Opens the store directly, as the server does.
    pub async fn open_store(&self) -> Arc<dyn cohortbridge::store::Store> {
        let database = match self.url() {
            Some(url) => cohortbridge::store::Database::Postgres {
                url,
                max_connections: 2,
            },
            None => cohortbridge::store::Database::Sqlite {
                path: self.sqlite_path.clone(),
            },
        };
        cohortbridge::store::open(&database).await.unwrap()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some(pg) = self.postgres.take() else {
            return;
        };
        // Drop runs inside the test's runtime, which cannot block on a future, so the schema is
        // dropped from a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let client = postgres_client(&pg.base_url).await;
                let drop = format!(
                    "SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS {} CASCADE",
                    pg.schema
                );
                if let Err(e) = client.batch_execute(&drop).await {
                    eprintln!("cannot drop the test schema {}: {e}", pg.schema);
                }
            });
        })
        .join();
    }
}

async fn postgres_client(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {TEST_DATABASE_URL_VAR}: {e}"));
    tokio::spawn(connection);
    client
}

/// Builds the config the tests use: quick retries, a short scheduler tick, custom Braze URLs allowed.
pub fn test_config(data_dir: PathBuf) -> ServeConfig {
    let mut config = ServeConfig::for_data_dir(data_dir, "127.0.0.1:0".parse().unwrap());
    config.admin_key = Some(ADMIN_KEY.into());
    config.installation_id = Some(INSTALLATION_ID.into());
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
        let database = TestDatabase::create(data_dir.path()).await;
        let mut config = test_config(data_dir.path().to_path_buf());
        config.database.database_url = database.url();
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
            database,
            running: Some(running),
        };
        let project = server.admin_get("").await;
        server.token = project["token"].as_str().unwrap().to_owned();
        // The server shows a project's secrets only when it generates them.
        let (status, reply) = server.admin_post("/api-secret", &json!({})).await;
        assert_eq!(status, 200, "{reply}");
        server.api_secret = reply["api_secret"].as_str().unwrap().to_owned();
        let (status, reply) = server.admin_post("/currents-token", &json!({})).await;
        assert_eq!(status, 200, "{reply}");
        server.currents_token = reply["currents_token"].as_str().unwrap().to_owned();
        server
    }

    pub async fn stop(self) {
        drop(self.stop_keeping_data().await);
    }

    /// Stops the server and hands back its data folder and database, deleted when dropped.
    pub async fn stop_keeping_data(mut self) -> StoppedServer {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
        StoppedServer {
            data_dir: self.data_dir,
            database: self.database,
        }
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
