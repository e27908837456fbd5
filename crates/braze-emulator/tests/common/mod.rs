//! Shared harness: an emulator on an ephemeral loopback port plus an HTTP client.

#![allow(dead_code)] // Each test binary uses a different subset of the helpers.

use braze_emulator::{Config, Emulator};
use serde_json::{json, Value};

pub const PARTNER: &str = "cohortbridge";
pub const PARTNER_KEY: &str = "partner-key-us";
pub const PARTNER_KEY_EU: &str = "partner-key-eu";
pub const IMPORT_KEY_A: &str = "import-key-workspace-a";
pub const IMPORT_KEY_B: &str = "import-key-workspace-b";
pub const CREATED_AT: &str = "2021-01-21T19:20:30+05:00";

pub fn config() -> Config {
    Config {
        partner_name: PARTNER.into(),
        partner_api_keys: vec![PARTNER_KEY.into(), PARTNER_KEY_EU.into()],
        data_import_keys: vec![IMPORT_KEY_A.into(), IMPORT_KEY_B.into()],
    }
}

pub struct Harness {
    pub base: String,
    pub client: reqwest::Client,
    pub emulator: Emulator,
}

/// A status code with the parsed JSON body (`Value::Null` if the body is not JSON).
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn message(&self) -> &str {
        self.body["message"].as_str().unwrap_or("<no message>")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }
}

pub async fn start() -> Harness {
    start_emulator(Emulator::new(config())).await
}

pub async fn start_emulator(emulator: Emulator) -> Harness {
    let addr = emulator
        .clone()
        .spawn("127.0.0.1:0".parse().unwrap())
        .await
        .expect("emulator binds a loopback port");
    Harness {
        base: format!("http://{addr}"),
        client: reqwest::Client::new(),
        emulator,
    }
}

pub async fn into_reply(response: reqwest::Response) -> Reply {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("response body is readable");
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        body,
    }
}

impl Harness {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Reply {
        let response = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request reaches the emulator");
        into_reply(response).await
    }

    pub async fn post_raw(&self, path: &str, body: &'static str) -> Reply {
        let response = self
            .client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request reaches the emulator");
        into_reply(response).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        let response = self
            .client
            .get(self.url(path))
            .send()
            .await
            .expect("request reaches the emulator");
        into_reply(response).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        let response = self
            .client
            .delete(self.url(path))
            .send()
            .await
            .expect("request reaches the emulator");
        into_reply(response).await
    }

    /// Sends a cohort name request with valid credentials for `import_key`.
    pub async fn name_cohort(&self, import_key: &str, cohort_id: &str, name: &str) -> Reply {
        let body = json!({
            "partner_api_key": PARTNER_KEY,
            "client_secret": import_key,
            "cohort_id": cohort_id,
            "name": name,
            "created_at": CREATED_AT,
        });
        self.post_json(&format!("/partners/{PARTNER}/cohorts"), &body)
            .await
    }

    /// Sends a user cohort request with valid credentials for `import_key`.
    pub async fn change_cohort(&self, import_key: &str, cohort_id: &str, changes: Value) -> Reply {
        let body = json!({
            "partner_api_key": PARTNER_KEY,
            "client_secret": import_key,
            "cohort_id": cohort_id,
            "cohort_changes": changes,
        });
        self.post_json(&format!("/partners/{PARTNER}/cohorts/users"), &body)
            .await
    }

    /// Returns the external-id members of a cohort in workspace 0.
    pub async fn members(&self, cohort_id: &str) -> Vec<String> {
        let reply = self
            .get(&format!("/_emulator/cohorts/{cohort_id}/members"))
            .await;
        assert_eq!(reply.status, 200, "members of {cohort_id}: {}", reply.body);
        serde_json::from_value(reply.body).expect("members are an array of strings")
    }

    pub async fn requests(&self) -> Vec<Value> {
        let reply = self.get("/_emulator/requests").await;
        assert_eq!(reply.status, 200);
        serde_json::from_value(reply.body).expect("requests are an array")
    }
}

/// A cohort name request body with valid credentials, for tests that break one field.
pub fn name_body() -> Value {
    json!({
        "partner_api_key": PARTNER_KEY,
        "client_secret": IMPORT_KEY_A,
        "cohort_id": "c1",
        "name": "Power users",
        "created_at": CREATED_AT,
    })
}

/// A user cohort request body with valid credentials, for tests that break one field.
pub fn users_body() -> Value {
    json!({
        "partner_api_key": PARTNER_KEY,
        "client_secret": IMPORT_KEY_A,
        "cohort_id": "c1",
        "cohort_changes": [{ "user_ids": ["u1"] }],
    })
}

pub fn names_path() -> String {
    format!("/partners/{PARTNER}/cohorts")
}

pub fn users_path() -> String {
    format!("/partners/{PARTNER}/cohorts/users")
}

/// Returns `count` distinct external ids.
pub fn ids(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}{i:05}")).collect()
}
