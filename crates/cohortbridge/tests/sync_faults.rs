//! Each kind of Braze failure injected through the emulator, one table row per fault: which are
//! retried and then succeed, which count as success, and which pause the sync.

mod common;

use common::{TestEmulator, TestServer, DATA_IMPORT_KEY};
use serde_json::{json, Value};

const BRAZE_COHORT: &str = "cohortbridge-test-1-1";

/// A server with a 1 s Braze timeout, a connection to `emulator` and a dynamic sync of a
/// two-member cohort whose first run already succeeded.
async fn synced_server(emulator: &TestEmulator) -> (TestServer, i64) {
    let server = TestServer::start_with(|c| c.braze_timeout_secs = 1).await;
    let (status, body) = server
        .admin_post(
            "/connections",
            &json!({"name": "emu", "base_url": emulator.base, "data_import_key": DATA_IMPORT_KEY}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    for user in ["ann", "bob"] {
        let (status, _) = server
            .engage(&[json!({"$token": server.token, "$distinct_id": user,
                "$set": {"plan": "pro", "$braze_external_id": format!("ext-{user}")}})])
            .await;
        assert_eq!(status, 200);
    }
    let cohort = server
        .create_cohort(
            "Pro",
            json!({"profile": "plan", "op": "eq", "value": "pro"}),
        )
        .await;
    let (status, body) = server
        .admin_post(
            "/exports",
            &json!({"cohort_id": cohort, "connection": "emu", "mode": "dynamic", "every_secs": 3600}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["run"]["status"], "succeeded", "{body}");
    (server, body["sync"]["id"].as_i64().unwrap())
}

/// Adds a member, so that the next run sends one `cohorts/users` request.
async fn add_member(server: &TestServer, user: &str) {
    let (status, _) = server
        .engage(&[json!({"$token": server.token, "$distinct_id": user,
            "$set": {"plan": "pro", "$braze_external_id": format!("ext-{user}")}})])
        .await;
    assert_eq!(status, 200);
}

async fn run(server: &TestServer, sync_id: i64) -> Value {
    let (status, body) = server
        .admin_post(&format!("/syncs/{sync_id}/run"), &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test]
async fn retryable_faults_are_resent() {
    let past_date = "Tue, 14 Nov 2023 22:13:30 GMT";
    let reset_now = common::now_secs().to_string();
    let cases: Vec<(&str, Value)> = vec![
        (
            "429 with X-RateLimit-Reset",
            json!({"status": 429, "headers": {"X-RateLimit-Reset": reset_now}, "body": "{\"message\":\"slow down\"}"}),
        ),
        (
            "429 with Retry-After seconds",
            json!({"status": 429, "headers": {"Retry-After": "0"}}),
        ),
        (
            "429 with Retry-After date",
            json!({"status": 429, "headers": {"retry-after": past_date}}),
        ),
        ("429 without headers", json!({"status": 429})),
        (
            "423 locked",
            json!({"status": 423, "body": "{\"message\":\"Resource locked\"}"}),
        ),
        (
            "500 with HTML",
            json!({"status": 500, "body": "<html><body>Internal Server Error</body></html>"}),
        ),
        (
            "502 with HTML",
            json!({"status": 502, "body": "<html>Bad Gateway</html>"}),
        ),
        ("503 empty", json!({"status": 503})),
        ("504 gateway timeout", json!({"status": 504})),
        ("timeout", json!({"delay_ms": 1500})),
        ("dropped connection", json!({"drop_connection": true})),
    ];
    for (index, (name, fault)) in cases.into_iter().enumerate() {
        let emulator = TestEmulator::start().await;
        let (server, sync_id) = synced_server(&emulator).await;
        let user = format!("new{index}");
        add_member(&server, &user).await;
        emulator.inject(fault).await;
        let body = run(&server, sync_id).await;
        assert_eq!(body["status"], "succeeded", "{name}: {body}");
        assert_eq!(body["retries"], 1, "{name}: {body}");
        assert_eq!(body["added"], 1, "{name}: {body}");
        assert_eq!(
            emulator.members(BRAZE_COHORT).await,
            vec![
                "ext-ann".to_owned(),
                "ext-bob".to_owned(),
                format!("ext-{user}")
            ],
            "{name}"
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn queued_202_counts_as_success() {
    let emulator = TestEmulator::start().await;
    let (server, sync_id) = synced_server(&emulator).await;
    add_member(&server, "cid").await;
    emulator
        .inject(json!({"status": 202, "body": "{\"message\":\"queued\"}"}))
        .await;
    let body = run(&server, sync_id).await;
    assert_eq!(body["status"], "succeeded", "{body}");
    assert_eq!(body["retries"], 0, "{body}");
    assert_eq!(body["added"], 1, "{body}");
    let body = run(&server, sync_id).await;
    assert_eq!(
        body["requests"], 0,
        "the queued add counts as acknowledged: {body}"
    );
    server.stop().await;
}

#[tokio::test]
async fn exhausted_retries_fail_the_run_only() {
    let emulator = TestEmulator::start().await;
    let (server, sync_id) = synced_server(&emulator).await;
    add_member(&server, "cid").await;
    emulator
        .inject(json!({"drop_connection": true, "times": 3}))
        .await;
    let body = run(&server, sync_id).await;
    assert_eq!(body["status"], "failed", "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("after 3 attempts"), "{error}");
    assert!(error.contains("connection failed"), "{error}");
    assert_eq!(body["retries"], 2, "two resends before giving up: {body}");
    let shown = server.admin_get(&format!("/syncs/{sync_id}")).await;
    assert_eq!(shown["sync"]["status"], "active", "the next run retries");

    let body = run(&server, sync_id).await;
    assert_eq!(body["status"], "succeeded", "{body}");
    assert_eq!(body["added"], 1, "{body}");
    assert_eq!(
        emulator.members(BRAZE_COHORT).await,
        vec!["ext-ann", "ext-bob", "ext-cid"]
    );
    server.stop().await;
}

#[tokio::test]
async fn client_errors_pause_with_reason() {
    let cases = [
        (
            400,
            "cohort_changes must be an array",
            "cohort still exists in Braze",
        ),
        (403, "Forbidden", "Data Import Key"),
        (404, "Not Found", "instance"),
    ];
    for (status, message, advice) in cases {
        let emulator = TestEmulator::start().await;
        let (server, sync_id) = synced_server(&emulator).await;
        add_member(&server, "cid").await;
        emulator
            .inject(json!({"status": status, "body": json!({"message": message}).to_string()}))
            .await;
        let body = run(&server, sync_id).await;
        assert_eq!(body["status"], "failed", "{status}: {body}");
        assert_eq!(body["retries"], 0, "{status}: no retry: {body}");
        let shown = server.admin_get(&format!("/syncs/{sync_id}")).await;
        let sync = &shown["sync"];
        assert_eq!(sync["status"], "paused", "{status}: {shown}");
        assert_eq!(sync["paused_by"], "error");
        let reason = sync["status_reason"].as_str().unwrap();
        assert!(reason.contains(&format!("HTTP {status}")), "{reason}");
        assert!(reason.contains(message), "{reason}");
        assert!(reason.contains(advice), "{reason}");
        assert!(shown["next_run_at"].is_null());

        let (code, _) = server
            .admin_post(&format!("/syncs/{sync_id}/resume"), &json!({}))
            .await;
        assert_eq!(code, 200);
        // The resumed sync is due at once, so the scheduler runs it.
        server.wait_until_idle(sync_id).await;
        let shown = server.admin_get(&format!("/syncs/{sync_id}")).await;
        let last = shown["runs"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["status"], "succeeded", "{status}: {shown}");
        assert_eq!(last["trigger"], "schedule", "{status}: {shown}");
        assert_eq!(
            emulator.members(BRAZE_COHORT).await,
            vec!["ext-ann", "ext-bob", "ext-cid"],
            "{status}"
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn unreachable_connection_fails_fast() {
    // The server's default retry settings, under which a retried probe took seconds.
    let server = TestServer::start_with(|c| {
        c.braze_max_attempts = 6;
        c.braze_retry_base_ms = 500;
    })
    .await;

    // A port that was just free on loopback, so that connecting to it is refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();

    let started = std::time::Instant::now();
    let (status, body) = server
        .admin_post(
            "/connections",
            &json!({"name": "gone", "base_url": format!("http://127.0.0.1:{port}"),
                "data_import_key": DATA_IMPORT_KEY}),
        )
        .await;
    let elapsed = started.elapsed();

    assert_eq!(status, 502, "{body}");
    assert!(
        elapsed < std::time::Duration::from_secs(3),
        "the check took {elapsed:?}"
    );
    let message = body["error"].as_str().unwrap();
    assert!(message.contains("at most 3 s to connect"), "{message}");
    assert!(!message.contains(DATA_IMPORT_KEY), "{message}");
    assert!(server
        .admin_get("/connections")
        .await
        .as_array()
        .unwrap()
        .is_empty());
    server.stop().await;
}
