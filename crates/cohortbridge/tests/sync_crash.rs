//! The real binary killed with SIGKILL in the middle of sync runs, against the Braze emulator:
//! after restarts, Braze holds exactly the cohort's exportable members, and no remove was ever
//! sent for a user who still qualified. Also checks that keys never reach the server's log.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{TestDatabase, TestEmulator, DATA_IMPORT_KEY, PARTNER_API_KEY, PARTNER_NAME};
use serde_json::{json, Value};

const ADMIN_KEY: &str = "crash-sync-admin-key-0123456789";
const BRAZE_COHORT: &str = "cohortbridge-test-1-1";

struct Server {
    child: Child,
    base: String,
    http: reqwest::Client,
}

impl Server {
    /// Starts the binary on port 0; its log goes to `log` when given.
    fn spawn(
        data_dir: &std::path::Path,
        database: &TestDatabase,
        log: Option<std::fs::File>,
    ) -> Self {
        let stderr = log.map_or_else(Stdio::null, Stdio::from);
        let mut child = Command::new(env!("CARGO_BIN_EXE_cohortbridge"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--allow-custom-braze-url",
            ])
            .args(["--braze-partner-name", PARTNER_NAME])
            .args(["--braze-partner-api-key", PARTNER_API_KEY])
            .args(["--braze-retry-base-ms", "10", "--braze-max-attempts", "3"])
            .args([
                "--braze-rate-limit-floor-ms",
                "10",
                "--braze-timeout-secs",
                "5",
            ])
            .arg("--data-dir")
            .arg(data_dir)
            .envs(database.envs())
            .env("COHORTBRIDGE_ADMIN_KEY", ADMIN_KEY)
            .env("COHORTBRIDGE_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("the cohortbridge binary starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let base = loop {
            let line = lines.next().expect("server printed its address").unwrap();
            if let Some(address) = line.strip_prefix("listening on ") {
                break address.to_owned();
            }
        };
        Self {
            child,
            base,
            http: reqwest::Client::new(),
        }
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    async fn post(&self, path: &str, body: &Value) -> reqwest::Result<(u16, Value)> {
        let response = self
            .http
            .post(format!("{}/api/v1/projects/1{path}", self.base))
            .bearer_auth(ADMIN_KEY)
            .json(body)
            .send()
            .await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    async fn get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}/api/v1/projects/1{path}", self.base))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Sets `plan` on users `range`, each with the Braze id `ext-<n>`.
    async fn set_plans(&self, token: &str, range: std::ops::Range<usize>, plan: &str) {
        let updates: Vec<Value> = range
            .map(|n| {
                json!({"$token": token, "$distinct_id": format!("u{n}"),
                    "$set": {"plan": plan, "$braze_external_id": format!("ext-{n}")}})
            })
            .collect();
        for chunk in updates.chunks(2000) {
            let response = self
                .http
                .post(format!("{}/engage", self.base))
                .form(&[("data", Value::Array(chunk.to_vec()).to_string())])
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
        }
    }
}

/// Waits until the emulator has received `count` partner requests in total.
async fn wait_for_requests(emulator: &TestEmulator, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while emulator.emulator.requests().len() < count {
        assert!(
            Instant::now() < deadline,
            "the emulator never received {count} requests"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Starts a sync run in the background and kills the server once the emulator has received
/// `extra` more requests.
async fn kill_during_run(
    server: Server,
    emulator: &TestEmulator,
    path: String,
    body: Value,
    extra: usize,
) {
    let target = emulator.emulator.requests().len() + extra;
    let http = server.http.clone();
    let url = format!("{}/api/v1/projects/1{path}", server.base);
    let request = tokio::spawn(async move {
        let _ = http
            .post(url)
            .bearer_auth(ADMIN_KEY)
            .json(&body)
            .send()
            .await;
    });
    wait_for_requests(emulator, target).await;
    server.kill();
    let _ = request.await;
}

/// Starts an emulator that delays every request, and a server with 6,000 users on the `pro`
/// plan, the emulator connected and cohort 1 created.
async fn six_thousand_pro_users() -> (TestEmulator, tempfile::TempDir, TestDatabase, Server) {
    let emulator = TestEmulator::start().await;
    emulator
        .inject(json!({"delay_ms": 20, "times": 100_000}))
        .await;
    let data_dir = tempfile::tempdir().unwrap();
    let database = TestDatabase::create(data_dir.path()).await;

    let server = Server::spawn(data_dir.path(), &database, None);
    let token = server.get("").await["token"].as_str().unwrap().to_owned();
    server.set_plans(&token, 0..6_000, "pro").await;
    connect_pro_cohort(&server, &emulator).await;
    (emulator, data_dir, database, server)
}

/// Waits until the restarted server has run sync 1 again on its own and that run succeeded,
/// and returns the sync's runs.
async fn wait_for_resumed_run(server: &Server) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let runs = server.get("/syncs/1").await["runs"].clone();
        if runs.as_array().unwrap().last().unwrap()["status"] == "succeeded" {
            return runs;
        }
        assert!(
            Instant::now() < deadline,
            "the interrupted sync did not run again: {runs}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Connects the emulator as `emu` and creates cohort 1 of the users whose plan is `pro`.
async fn connect_pro_cohort(server: &Server, emulator: &TestEmulator) {
    let (status, body) = server
        .post(
            "/connections",
            &json!({"name": "emu", "base_url": emulator.base, "data_import_key": DATA_IMPORT_KEY}),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    let (status, body) = server
        .post(
            "/cohorts",
            &json!({"name": "Pro", "definition": {"profile": "plan", "op": "eq", "value": "pro"}}),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
}

fn exportable(pro: &BTreeSet<usize>) -> Vec<String> {
    let mut ids: Vec<String> = pro.iter().map(|n| format!("ext-{n}")).collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn sigkill_during_runs_keeps_braze_exact() {
    let emulator = TestEmulator::start().await;
    // Every partner request waits, so that kills land in the middle of runs.
    emulator
        .inject(json!({"delay_ms": 20, "times": 100_000}))
        .await;
    let data_dir = tempfile::tempdir().unwrap();
    let database = TestDatabase::create(data_dir.path()).await;

    let server = Server::spawn(data_dir.path(), &database, None);
    let token = server.get("").await["token"].as_str().unwrap().to_owned();
    let mut pro: BTreeSet<usize> = (0..12_000).collect();
    server.set_plans(&token, 0..12_000, "pro").await;
    connect_pro_cohort(&server, &emulator).await;

    // Kill 1: during the first export, after the name call and four member requests.
    let export =
        json!({"cohort_id": 1, "connection": "emu", "mode": "dynamic", "every_secs": 3600});
    kill_during_run(server, &emulator, "/exports".into(), export, 5).await;

    // Kill 2: after churn (2,000 leave, 1,500 join), during the resumed run.
    let server = Server::spawn(data_dir.path(), &database, None);
    server.set_plans(&token, 0..2_000, "free").await;
    server.set_plans(&token, 12_000..13_500, "pro").await;
    pro.retain(|n| *n >= 2_000);
    pro.extend(12_000..13_500);
    kill_during_run(server, &emulator, "/syncs/1/run".into(), json!({}), 3).await;

    // Kill 3: more churn, killed after the first request of the run.
    let server = Server::spawn(data_dir.path(), &database, None);
    server.set_plans(&token, 5_000..6_000, "free").await;
    server.set_plans(&token, 0..500, "pro").await;
    pro.retain(|n| !(5_000..6_000).contains(n));
    pro.extend(0..500);
    kill_during_run(server, &emulator, "/syncs/1/run".into(), json!({}), 1).await;

    // Kill 4: no churn; killed while the first request of the run is in flight.
    let server = Server::spawn(data_dir.path(), &database, None);
    kill_during_run(server, &emulator, "/syncs/1/run".into(), json!({}), 0).await;

    // Restart: the server runs the interrupted sync again on its own; let that run finish.
    let server = Server::spawn(data_dir.path(), &database, None);
    let runs = wait_for_resumed_run(&server).await;
    let interrupted = runs
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["error"].as_str().unwrap_or("").starts_with("interrupted"))
        .count();
    assert!(
        interrupted >= 3,
        "the killed runs are recorded as interrupted: {runs}"
    );
    server.kill();

    let members = emulator.members(BRAZE_COHORT).await;
    assert_eq!(members.len(), pro.len());
    assert_eq!(members, exportable(&pro));

    let qualifying: BTreeSet<String> = exportable(&pro).into_iter().collect();
    for request in emulator.emulator.requests() {
        for id in &request.ids_removed {
            assert!(
                !qualifying.contains(id),
                "request {} removed {id}, who still qualifies",
                request.seq
            );
        }
    }
}

#[tokio::test]
async fn once_export_resumes_after_sigkill() {
    let (emulator, data_dir, database, server) = six_thousand_pro_users().await;

    // A one-time export killed after the name call and two member requests has no next run of
    // its own. The restarted server must finish it without being asked.
    let export = json!({"cohort_id": 1, "connection": "emu", "mode": "once"});
    kill_during_run(server, &emulator, "/exports".into(), export, 3).await;
    assert!(emulator.members(BRAZE_COHORT).await.len() < 6_000);

    let server = Server::spawn(data_dir.path(), &database, None);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let sync = server.get("/syncs/1").await;
        if sync["sync"]["status"] == "completed" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the interrupted once sync never completed: {sync}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.kill();
    let pro: BTreeSet<usize> = (0..6_000).collect();
    assert_eq!(emulator.members(BRAZE_COHORT).await, exportable(&pro));
}

#[tokio::test]
async fn keys_never_reach_the_log() {
    let emulator = TestEmulator::start().await;
    let data_dir = tempfile::tempdir().unwrap();
    let database = TestDatabase::create(data_dir.path()).await;
    let log_path = data_dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let server = Server::spawn(data_dir.path(), &database, Some(log));
    let token = server.get("").await["token"].as_str().unwrap().to_owned();
    server.set_plans(&token, 0..3, "pro").await;
    let (status, body) = server
        .post(
            "/connections",
            &json!({"name": "emu", "base_url": emulator.base, "data_import_key": DATA_IMPORT_KEY}),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    server
        .post(
            "/cohorts",
            &json!({"name": "Pro", "definition": {"profile": "plan", "op": "eq", "value": "pro"}}),
        )
        .await
        .unwrap();

    let echo = format!("<html>upstream echoed {DATA_IMPORT_KEY} and {PARTNER_API_KEY}</html>");
    emulator.inject(json!({"status": 502, "body": echo})).await;
    let message = format!(
        "{{\"message\":\"Partner not enabled for client with client secret: {DATA_IMPORT_KEY}\"}}"
    );
    emulator
        .inject(json!({"status": 401, "body": message}))
        .await;
    let (status, body) = server
        .post(
            "/exports",
            &json!({"cohort_id": 1, "connection": "emu", "mode": "dynamic"}),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["sync"]["status"], "paused", "{body}");
    let reason = body["sync"]["status_reason"].as_str().unwrap();
    assert!(reason.contains("<redacted>"), "{reason}");
    let shown = server.get("/syncs/1").await.to_string();
    server.kill();

    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("retrying"), "the log has the retry: {log}");
    for secret in [DATA_IMPORT_KEY, PARTNER_API_KEY] {
        assert!(!log.contains(secret), "{secret} is in the log");
        assert!(
            !body.to_string().contains(secret),
            "{secret} is in the reply"
        );
        assert!(!shown.contains(secret), "{secret} is in syncs show");
    }
}

#[tokio::test]
async fn dynamic_first_export_resumes_after_sigkill() {
    let (emulator, data_dir, database, server) = six_thousand_pro_users().await;

    // A dynamic sync's next run is an hour away; the restarted server must not leave Braze
    // with a partial cohort until then.
    let export =
        json!({"cohort_id": 1, "connection": "emu", "mode": "dynamic", "every_secs": 3600});
    kill_during_run(server, &emulator, "/exports".into(), export, 3).await;
    assert!(emulator.members(BRAZE_COHORT).await.len() < 6_000);

    let server = Server::spawn(data_dir.path(), &database, None);
    let runs = wait_for_resumed_run(&server).await;
    server.kill();
    let pro: BTreeSet<usize> = (0..6_000).collect();
    assert_eq!(emulator.members(BRAZE_COHORT).await, exportable(&pro));
    // Each id that Braze acknowledged is counted by exactly one run, the killed one included.
    let added: i64 = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|run| run["added"].as_i64().unwrap())
        .sum();
    assert_eq!(added, 6_000, "{runs}");
}
