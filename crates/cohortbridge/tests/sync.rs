//! Braze connections and cohort syncs against the Braze emulator: one-time and dynamic exports,
//! diffs, batching, retries and pauses.

mod common;

use std::time::Duration;

use common::{now_secs, TestEmulator, TestServer, DATA_IMPORT_KEY};
use serde_json::{json, Value};

async fn connect(server: &TestServer, emulator: &TestEmulator) {
    let (status, body) = server
        .admin_post(
            "/connections",
            &json!({"name": "emu", "base_url": emulator.base, "data_import_key": DATA_IMPORT_KEY}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

/// Gives `user` a profile with `plan` and an optional Braze id, and `purchases` recent Purchases.
async fn seed_user(
    server: &TestServer,
    user: &str,
    plan: &str,
    braze_id: Option<&str>,
    purchases: usize,
) {
    let mut set = json!({"plan": plan});
    if let Some(id) = braze_id {
        set["$braze_external_id"] = json!(id);
    }
    let (status, text) = server
        .engage(&[json!({"$token": server.token, "$distinct_id": user, "$set": set})])
        .await;
    assert_eq!(status, 200, "{text}");
    let events: Vec<Value> = (0..purchases)
        .map(|i| {
            json!({"event": "Purchase", "properties": {"token": server.token, "distinct_id": user,
            "time": now_secs() - 60 * (i as i64 + 1), "$insert_id": format!("{user}-p{i}")}})
        })
        .collect();
    if !events.is_empty() {
        let (status, text) = server.track(&events).await;
        assert_eq!(status, 200, "{text}");
    }
}

fn issue_definition() -> Value {
    json!({"all": [
        {"event": "Purchase", "count": {"gte": 2}, "within": {"last_days": 30}},
        {"profile": "plan", "op": "eq", "value": "pro"},
        {"not": {"event": "Churned"}}
    ]})
}

async fn export(server: &TestServer, cohort: i64, mode: &str) -> Value {
    let (status, body) = server
        .admin_post(
            "/exports",
            &json!({"cohort_id": cohort, "connection": "emu", "mode": mode, "every_secs": 3600}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body
}

async fn run_sync(server: &TestServer, sync_id: i64) -> Value {
    let (status, body) = server
        .admin_post(&format!("/syncs/{sync_id}/run"), &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Collects the ids that applied `cohorts/users` requests after request number `after` carried.
async fn applied_changes(emulator: &TestEmulator, after: u64) -> (Vec<String>, Vec<String>) {
    let requests = emulator.get("/_emulator/requests").await;
    let (mut added, mut removed) = (Vec::new(), Vec::new());
    for request in requests.as_array().unwrap() {
        if request["seq"].as_u64().unwrap() <= after || request["applied"] != true {
            continue;
        }
        if !request["path"]
            .as_str()
            .unwrap()
            .ends_with("/cohorts/users")
        {
            continue;
        }
        for id in request["ids_added"].as_array().unwrap() {
            added.push(id.as_str().unwrap().to_owned());
        }
        for id in request["ids_removed"].as_array().unwrap() {
            removed.push(id.as_str().unwrap().to_owned());
        }
    }
    (added, removed)
}

async fn last_seq(emulator: &TestEmulator) -> u64 {
    let requests = emulator.get("/_emulator/requests").await;
    requests
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .max()
        .unwrap_or(0)
}

#[tokio::test]
async fn once_then_dynamic_sends_only_changes() {
    let emulator = TestEmulator::start().await;
    let server = TestServer::start().await;
    connect(&server, &emulator).await;
    seed_user(&server, "ann", "pro", Some("ext-ann"), 2).await;
    seed_user(&server, "bob", "pro", Some("ext-bob"), 3).await;
    seed_user(&server, "cid", "free", Some("ext-cid"), 2).await;
    seed_user(&server, "dee", "pro", None, 2).await;
    seed_user(&server, "eve", "pro", Some("ext-eve"), 1).await;

    let cohort = server.create_cohort("Pro buyers", issue_definition()).await;
    assert_eq!(server.members(cohort).await, vec!["ann", "bob", "dee"]);

    let once = export(&server, cohort, "once").await;
    let run = &once["run"];
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["members"], 3);
    assert_eq!(run["added"], 2);
    assert_eq!(run["skipped"], 1, "dee has no Braze id");
    assert_eq!(once["sync"]["status"], "completed");
    let braze_id = "cohortbridge-test-1-1";
    assert_eq!(emulator.members(braze_id).await, vec!["ext-ann", "ext-bob"]);
    let cohorts = emulator.get("/_emulator/cohorts").await;
    assert_eq!(cohorts[0]["name"], "Pro buyers");

    let dynamic = export(&server, cohort, "dynamic").await;
    assert_eq!(dynamic["run"]["added"], 0);
    assert_eq!(dynamic["run"]["removed"], 0);
    assert_eq!(
        dynamic["run"]["requests"], 0,
        "nothing changed, so nothing is sent"
    );
    let sync_id = dynamic["sync"]["id"].as_i64().unwrap();
    assert_eq!(dynamic["sync"]["status"], "active");
    assert!(dynamic["sync"]["next_run_at_ms"].is_i64());

    // ann churns and leaves; eve buys again and joins.
    server.track(&[json!({"event": "Churned", "properties": {"token": server.token, "distinct_id": "ann", "time": now_secs()}})]).await;
    seed_user(&server, "eve", "pro", Some("ext-eve"), 2).await;
    let before = last_seq(&emulator).await;
    let run = run_sync(&server, sync_id).await;
    assert_eq!(run["added"], 1, "{run}");
    assert_eq!(run["removed"], 1, "{run}");
    assert_eq!(run["requests"], 1, "one request carries both changes");
    assert_eq!(
        applied_changes(&emulator, before).await,
        (vec!["ext-eve".to_owned()], vec!["ext-ann".to_owned()])
    );
    assert_eq!(emulator.members(braze_id).await, vec!["ext-bob", "ext-eve"]);

    let run = run_sync(&server, sync_id).await;
    assert_eq!(
        (
            run["added"].as_i64(),
            run["removed"].as_i64(),
            run["requests"].as_i64()
        ),
        (Some(0), Some(0), Some(0))
    );

    let shown = server.admin_get(&format!("/syncs/{sync_id}")).await;
    assert_eq!(shown["runs"].as_array().unwrap().len(), 3);
    server.stop().await;
}

#[tokio::test]
async fn changed_braze_id_swaps_ids() {
    let emulator = TestEmulator::start().await;
    let server = TestServer::start().await;
    connect(&server, &emulator).await;
    seed_user(&server, "ann", "pro", Some("old-id"), 2).await;
    seed_user(&server, "twin", "pro", Some("shared"), 2).await;
    seed_user(&server, "twin2", "pro", Some("shared"), 2).await;
    let cohort = server.create_cohort("c", issue_definition()).await;
    let dynamic = export(&server, cohort, "dynamic").await;
    assert_eq!(
        dynamic["run"]["added"], 2,
        "two profiles sharing an id send it once"
    );
    let sync_id = dynamic["sync"]["id"].as_i64().unwrap();

    seed_user(&server, "ann", "pro", Some("new-id"), 0).await;
    // One of the twins leaves; the other still qualifies, so the shared id stays.
    seed_user(&server, "twin", "free", Some("shared"), 0).await;
    let before = last_seq(&emulator).await;
    let run = run_sync(&server, sync_id).await;
    assert_eq!(
        applied_changes(&emulator, before).await,
        (vec!["new-id".to_owned()], vec!["old-id".to_owned()]),
        "{run}"
    );
    assert_eq!(
        emulator.members("cohortbridge-test-1-1").await,
        vec!["new-id", "shared"]
    );
    server.stop().await;
}

#[tokio::test]
async fn large_cohort_is_sent_in_batches_of_1000() {
    let emulator = TestEmulator::start().await;
    let server = TestServer::start().await;
    connect(&server, &emulator).await;
    let updates: Vec<Value> = (0..2500)
        .map(|i| json!({"$token": server.token, "$distinct_id": format!("user-{i:04}"), "$set": {"$braze_external_id": format!("ext-{i:04}")}}))
        .collect();
    for chunk in updates.chunks(2000) {
        let (status, text) = server.engage(chunk).await;
        assert_eq!(status, 200, "{text}");
    }
    let cohort = server
        .create_cohort("all", json!({"profile": "$braze_external_id", "op": "set"}))
        .await;
    let once = export(&server, cohort, "once").await;
    assert_eq!(once["run"]["added"], 2500);
    assert_eq!(
        once["run"]["requests"], 4,
        "one create and three member requests"
    );
    let requests = emulator.get("/_emulator/requests").await;
    for request in requests.as_array().unwrap() {
        assert!(
            request["added"].as_u64().unwrap() + request["removed"].as_u64().unwrap() <= 1000,
            "{request}"
        );
    }
    let cohorts = emulator.get("/_emulator/cohorts").await;
    assert_eq!(cohorts[0]["member_count"], 2500);

    // Every member is listed once, in member order, with its own ids.
    let reply = server
        .admin_get(&format!("/runs/{}/operations", once["run"]["id"]))
        .await;
    let operations = reply["operations"].as_array().unwrap();
    assert_eq!(operations.len(), 2500);
    for (i, operation) in operations.iter().enumerate() {
        assert_eq!(
            operation["distinct_id"],
            format!("user-{i:04}"),
            "{operation}"
        );
        assert_eq!(
            operation["external_id"],
            format!("ext-{i:04}"),
            "{operation}"
        );
        assert_eq!(operation["operation"], "add", "{operation}");
    }
    server.stop().await;
}

#[tokio::test]
async fn rate_limit_waits_then_resends() {
    let emulator = TestEmulator::start().await;
    let server = TestServer::start().await;
    connect(&server, &emulator).await;
    seed_user(&server, "ann", "pro", Some("ext-ann"), 2).await;
    let cohort = server.create_cohort("c", issue_definition()).await;

    let reset = now_secs() + 2;
    emulator
        .inject(json!({"status": 429, "headers": {"x-ratelimit-reset": reset.to_string(), "x-ratelimit-remaining": "0"},
            "body": "{\"message\":\"Rate limit exceeded\"}", "times": 1}))
        .await;
    let started = std::time::Instant::now();
    let once = export(&server, cohort, "once").await;
    assert_eq!(once["run"]["status"], "succeeded", "{once}");
    let waited_until = chrono::Utc::now().timestamp();
    assert!(
        waited_until >= reset,
        "resent at {waited_until}, before the reset at {reset}"
    );
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(
        emulator.members("cohortbridge-test-1-1").await,
        vec!["ext-ann"]
    );
    server.stop().await;
}

#[tokio::test]
async fn server_errors_exhaust_retries_then_next_run_resumes() {
    let emulator = TestEmulator::start().await;
    let server = TestServer::start().await;
    connect(&server, &emulator).await;
    seed_user(&server, "ann", "pro", Some("ext-ann"), 2).await;
    let cohort = server.create_cohort("c", issue_definition()).await;

    emulator
        .inject(json!({"status": 503, "body": "<html>upstream unavailable</html>", "times": 3}))
        .await;
    let dynamic = export(&server, cohort, "dynamic").await;
    let run = &dynamic["run"];
    assert_eq!(run["status"], "failed");
    assert!(
        run["error"].as_str().unwrap().contains("after 3 attempts"),
        "{run}"
    );
    assert_eq!(
        dynamic["sync"]["status"], "active",
        "a transient failure does not pause the sync"
    );
    assert!(emulator.members("cohortbridge-test-1-1").await.is_empty());

    let sync_id = dynamic["sync"]["id"].as_i64().unwrap();
    let run = run_sync(&server, sync_id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["added"], 1);
    assert_eq!(
        emulator.members("cohortbridge-test-1-1").await,
        vec!["ext-ann"]
    );
    server.stop().await;
}

#[tokio::test]
async fn unauthorized_pauses_the_sync_with_reason() {
    let emulator = TestEmulator::start().await;
    let server = TestServer::start().await;
    connect(&server, &emulator).await;
    seed_user(&server, "ann", "pro", Some("ext-ann"), 2).await;
    let cohort = server.create_cohort("c", issue_definition()).await;

    emulator
        .inject(json!({"status": 401, "body": format!("{{\"message\":\"Partner not enabled for client with client secret: {DATA_IMPORT_KEY}\"}}"), "times": 1}))
        .await;
    let dynamic = export(&server, cohort, "dynamic").await;
    assert_eq!(dynamic["run"]["status"], "failed");
    assert_eq!(
        dynamic["run"]["requests"], 1,
        "the rejected request was sent: {dynamic}"
    );
    assert_eq!(dynamic["sync"]["status"], "paused");
    let reason = dynamic["sync"]["status_reason"].as_str().unwrap();
    assert!(reason.contains("HTTP 401"), "{reason}");
    assert!(
        !reason.contains(DATA_IMPORT_KEY),
        "the secret leaked into the reason: {reason}"
    );
    let requests = emulator.get("/_emulator/requests").await;
    assert_eq!(
        requests.as_array().unwrap().len(),
        2,
        "the probe and one request: no retry loop"
    );

    let sync_id = dynamic["sync"]["id"].as_i64().unwrap();
    let (status, body) = server
        .admin_post(&format!("/syncs/{sync_id}/run"), &json!({}))
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("paused"), "{body}");
    server.stop().await;
}

#[tokio::test]
async fn failed_evaluation_sends_nothing() {
    let emulator = TestEmulator::start().await;
    let server = TestServer::start().await;
    connect(&server, &emulator).await;
    seed_user(&server, "ann", "pro", Some("ext-ann"), 2).await;
    let cohort = server.create_cohort("c", issue_definition()).await;
    let dynamic = export(&server, cohort, "dynamic").await;
    assert_eq!(dynamic["run"]["added"], 1);
    let sync_id = dynamic["sync"]["id"].as_i64().unwrap();

    // Corrupt the stored definition behind the API's back, as a bad migration might.
    server
        .database
        .execute("UPDATE cohorts SET definition = '{\"bogus\": 1}'")
        .await;

    let before = last_seq(&emulator).await;
    let run = run_sync(&server, sync_id).await;
    assert_eq!(run["status"], "failed");
    assert!(
        run["error"]
            .as_str()
            .unwrap()
            .contains("cohort evaluation failed"),
        "{run}"
    );
    assert_eq!(last_seq(&emulator).await, before, "nothing was sent");
    assert_eq!(
        emulator.members("cohortbridge-test-1-1").await,
        vec!["ext-ann"],
        "members were not removed"
    );
    server.stop().await;
}

#[tokio::test]
async fn scheduler_runs_due_dynamic_syncs() {
    let emulator = TestEmulator::start().await;
    let server = TestServer::start().await;
    connect(&server, &emulator).await;
    seed_user(&server, "ann", "pro", Some("ext-ann"), 2).await;
    let cohort = server.create_cohort("c", issue_definition()).await;
    let (status, body) = server
        .admin_post(
            "/exports",
            &json!({"cohort_id": cohort, "connection": "emu", "mode": "dynamic", "every_secs": 1}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let sync_id = body["sync"]["id"].as_i64().unwrap();

    seed_user(&server, "bob", "pro", Some("ext-bob"), 2).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while emulator.members("cohortbridge-test-1-1").await.len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the scheduler did not run the sync within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let shown = server.admin_get(&format!("/syncs/{sync_id}")).await;
    assert!(shown["runs"].as_array().unwrap().len() >= 2);
    server.stop().await;
}

#[tokio::test]
async fn connection_add_validates_input_and_credentials() {
    let emulator = TestEmulator::start().await;
    let server = TestServer::start().await;
    let cases = [
        (
            json!({"name": "x", "base_url": emulator.base, "data_import_key": "wrong"}),
            400,
            "Invalid client secret",
        ),
        (
            json!({"name": "x", "instance": "US-99", "data_import_key": "k"}),
            400,
            "US-99",
        ),
        (
            json!({"name": "x", "data_import_key": "k"}),
            400,
            "instance",
        ),
        (
            json!({"name": "", "instance": "US-01", "data_import_key": "k"}),
            400,
            "name",
        ),
        (
            json!({"name": "x", "base_url": "ftp://h", "data_import_key": "k"}),
            400,
            "http",
        ),
        (
            json!({"name": "x", "base_url": "http://user:pass@127.0.0.1:9", "data_import_key": "k"}),
            400,
            "password",
        ),
        (
            json!({"name": "x", "base_url": emulator.base, "data_import_key": ""}),
            400,
            "data_import_key",
        ),
    ];
    for (body, status, needle) in cases {
        let (got, reply) = server.admin_post("/connections", &body).await;
        assert_eq!(got, status, "{body}: {reply}");
        assert!(
            reply["error"].as_str().unwrap().contains(needle),
            "{body}: {reply}"
        );
    }
    connect(&server, &emulator).await;
    let (status, reply) = server
        .admin_post(
            "/connections",
            &json!({"name": "emu", "base_url": emulator.base, "data_import_key": DATA_IMPORT_KEY}),
        )
        .await;
    assert_eq!(status, 409, "{reply}");
    server.stop().await;
}

#[tokio::test]
async fn custom_base_url_needs_operator_consent() {
    let emulator = TestEmulator::start().await;
    let server = TestServer::start_with(|config| config.allow_custom_braze_url = false).await;
    let (status, reply) = server
        .admin_post(
            "/connections",
            &json!({"name": "emu", "base_url": emulator.base, "data_import_key": DATA_IMPORT_KEY}),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("--allow-custom-braze-url"),
        "{reply}"
    );
    assert!(
        emulator
            .get("/_emulator/requests")
            .await
            .as_array()
            .unwrap()
            .is_empty(),
        "no request left the server"
    );
    server.stop().await;
}

#[tokio::test]
async fn data_import_key_never_leaves_the_server() {
    let emulator = TestEmulator::start().await;
    let server = TestServer::start().await;
    connect(&server, &emulator).await;
    let listed = server.admin_get("/connections").await;
    assert_eq!(listed[0]["name"], "emu");
    assert!(!listed.to_string().contains(DATA_IMPORT_KEY), "{listed}");
    let stopped = server.stop_keeping_data().await;
    for entry in std::fs::read_dir(stopped.data_dir.path()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        let found = bytes
            .windows(DATA_IMPORT_KEY.len())
            .any(|w| w == DATA_IMPORT_KEY.as_bytes());
        assert!(!found, "the Data Import Key is stored in plain text");
    }
    let stored_keys = stopped
        .database
        .query_strings("SELECT data_import_key_enc FROM connections")
        .await;
    assert_eq!(stored_keys.len(), 1);
    assert!(
        !stored_keys[0].contains(DATA_IMPORT_KEY),
        "the Data Import Key is stored in plain text: {}",
        stored_keys[0]
    );
}

#[tokio::test]
async fn rejected_one_time_export_ends_failed_not_paused() {
    let emulator = TestEmulator::start().await;
    let server = TestServer::start().await;
    connect(&server, &emulator).await;
    seed_user(&server, "ann", "pro", Some("ext-ann"), 2).await;
    let cohort = server.create_cohort("c", issue_definition()).await;
    emulator
        .inject(json!({"status": 400, "body": "{\"message\":\"bad\"}", "times": 1}))
        .await;
    let once = export(&server, cohort, "once").await;
    assert_eq!(once["run"]["status"], "failed");
    assert_eq!(once["sync"]["status"], "failed");
    assert!(
        once["sync"]["status_reason"]
            .as_str()
            .unwrap()
            .contains("HTTP 400: bad"),
        "{once}"
    );
    server.stop().await;
}

#[tokio::test]
async fn long_rate_limit_ends_run_for_later() {
    let emulator = TestEmulator::start().await;
    let server = TestServer::start().await;
    connect(&server, &emulator).await;
    seed_user(&server, "ann", "pro", Some("ext-ann"), 2).await;
    let cohort = server.create_cohort("c", issue_definition()).await;
    let reset = now_secs() + 3600;
    emulator
        .inject(
            json!({"status": 429, "headers": {"x-ratelimit-reset": reset.to_string()}, "times": 1}),
        )
        .await;
    let started = std::time::Instant::now();
    let dynamic = export(&server, cohort, "dynamic").await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the run did not wait an hour"
    );
    assert_eq!(dynamic["run"]["status"], "failed");
    assert!(
        dynamic["run"]["error"]
            .as_str()
            .unwrap()
            .contains("rate-limited"),
        "{dynamic}"
    );
    assert_eq!(dynamic["sync"]["status"], "active", "a later run retries");
    server.stop().await;
}

#[tokio::test]
async fn interval_bounds_are_enforced() {
    let emulator = TestEmulator::start().await;
    let server = TestServer::start().await;
    connect(&server, &emulator).await;
    let cohort = server.create_cohort("c", issue_definition()).await;
    for (every, needle) in [
        (0_i64, "shorter"),
        (9_223_372_036_854_775, "longer"),
        (366 * 86_400 + 1, "longer"),
    ] {
        let (status, body) = server
            .admin_post("/exports", &json!({"cohort_id": cohort, "connection": "emu", "mode": "dynamic", "every_secs": every}))
            .await;
        assert_eq!(status, 400, "{every}: {body}");
        assert!(body["error"].as_str().unwrap().contains(needle), "{body}");
    }
    let (status, body) = server
        .admin_post(
            "/exports",
            &json!({"cohort_id": cohort, "connection": "emu"}),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("`mode` is missing"),
        "{body}"
    );
    server.stop().await;
}

#[tokio::test]
async fn disconnected_client_does_not_cancel_run() {
    let emulator = TestEmulator::start().await;
    let server = TestServer::start().await;
    connect(&server, &emulator).await;
    seed_user(&server, "ann", "pro", Some("ext-ann"), 2).await;
    let cohort = server.create_cohort("c", issue_definition()).await;
    emulator.inject(json!({"delay_ms": 1500, "times": 1})).await;
    let result = server
        .http
        .post(server.url("/api/v1/projects/1/exports"))
        .bearer_auth(common::ADMIN_KEY)
        .json(&json!({"cohort_id": cohort, "connection": "emu", "mode": "once"}))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(
        result.is_err(),
        "the client gave up before the slow Braze reply"
    );

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let syncs = server.admin_get("/syncs").await;
        let last_run = &syncs[0]["last_run"];
        if last_run["status"] == "succeeded" {
            assert_eq!(last_run["added"], 1);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the run did not finish: {syncs}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        emulator.members("cohortbridge-test-1-1").await,
        vec!["ext-ann"]
    );
    server.stop().await;
}

#[tokio::test]
async fn admin_errors_are_json() {
    let server = TestServer::start().await;
    let response = server
        .http
        .post(server.url("/api/v1/projects/1/cohorts"))
        .bearer_auth(common::ADMIN_KEY)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("invalid JSON body"),
        "{body}"
    );

    let response = server
        .http
        .get(server.url("/api/v1/projects/abc"))
        .bearer_auth(common::ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("invalid path"),
        "{body}"
    );
    server.stop().await;
}

#[tokio::test]
async fn referenced_cohort_cannot_be_deleted() {
    let server = TestServer::start().await;
    let base = server
        .create_cohort("base", json!({"event": "Purchase"}))
        .await;
    let user = server
        .create_cohort(
            "user",
            json!({"all": [{"in_cohort": base}, {"profile": "plan", "op": "set"}]}),
        )
        .await;
    let (status, body) = server.admin_delete(&format!("/cohorts/{base}")).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains(&format!("cohort {user}")),
        "{body}"
    );
    let (status, body) = server.admin_delete(&format!("/cohorts/{user}")).await;
    assert!(status.is_success(), "{body}");
    let (status, body) = server.admin_delete(&format!("/cohorts/{base}")).await;
    assert!(status.is_success(), "once unused it can go: {body}");
    server.stop().await;
}

#[tokio::test]
async fn numeric_connection_names_are_rejected() {
    let emulator = TestEmulator::start().await;
    let server = TestServer::start().await;
    let (status, body) = server
        .admin_post(
            "/connections",
            &json!({"name": "12", "base_url": emulator.base, "data_import_key": DATA_IMPORT_KEY}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("connection id"),
        "{body}"
    );
    connect(&server, &emulator).await;
    let (status, body) = server
        .admin_post("/connections/emu/rename", &json!({"name": "1"}))
        .await;
    assert_eq!(status, 400, "{body}");
    server.stop().await;
}

#[tokio::test]
async fn dynamic_sync_scheduled_at_creation() {
    let emulator = TestEmulator::start().await;
    let server = TestServer::start().await;
    connect(&server, &emulator).await;
    seed_user(&server, "ann", "pro", Some("ext-ann"), 2).await;
    let cohort = server.create_cohort("c", issue_definition()).await;
    // The first run waits on a slow Braze. The sync must already be scheduled by then, so a
    // crash in that window cannot leave it without a next run.
    emulator.inject(json!({"delay_ms": 1500, "times": 1})).await;
    let request = server
        .http
        .post(server.url("/api/v1/projects/1/exports"))
        .bearer_auth(common::ADMIN_KEY)
        .json(&json!({"cohort_id": cohort, "connection": "emu", "mode": "dynamic", "every_secs": 3600}))
        .send();
    let check = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        server.admin_get("/syncs").await
    };
    let (response, during) = tokio::join!(request, check);
    assert_eq!(response.unwrap().status(), 201);
    let next_run = during[0]["sync"]["next_run_at_ms"].as_i64();
    assert!(
        next_run.is_some(),
        "no next run while the first run was in flight: {during}"
    );
    assert!(next_run.unwrap() > chrono::Utc::now().timestamp_millis() + 3_000_000);
    server.stop().await;
}

#[tokio::test]
async fn custom_eu_url_uses_eu_key() {
    let emulator = TestEmulator::start().await;
    // The emulator plays an EU workspace: it accepts only the EU partner key.
    let server = TestServer::start_with(|config| {
        config.braze_partner_api_key = Some("pk-for-us-hosts".into());
        config.braze_partner_api_key_eu = Some(common::PARTNER_API_KEY.into());
    })
    .await;
    let (status, body) = server
        .admin_post("/connections", &json!({"name": "as-us", "base_url": emulator.base, "data_import_key": DATA_IMPORT_KEY}))
        .await;
    assert_eq!(status, 400, "a plain custom URL takes the US key: {body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("Invalid Partner API key"),
        "{body}"
    );

    let (status, body) = server
        .admin_post(
            "/connections",
            &json!({"name": "as-eu", "base_url": emulator.base, "instance": "EU-01", "data_import_key": DATA_IMPORT_KEY}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["instance"], "EU-01");
    assert_eq!(body["base_url"], emulator.base);

    let (status, body) = server
        .admin_post("/connections", &json!({"name": "bad", "base_url": emulator.base, "instance": "EU-09", "data_import_key": "k"}))
        .await;
    assert_eq!(status, 400, "{body}");
    server.stop().await;
}

#[tokio::test]
async fn two_installations_keep_separate_braze_cohorts() {
    let emulator = TestEmulator::start().await;
    let staging = TestServer::start_with(|c| c.installation_id = Some("staging".into())).await;
    // No configured id: a random one is recorded on first start.
    let production = TestServer::start_with(|c| c.installation_id = None).await;
    for (server, user) in [(&staging, "stage-user"), (&production, "prod-user")] {
        connect(server, &emulator).await;
        seed_user(server, user, "pro", Some(&format!("ext-{user}")), 2).await;
        let cohort = server.create_cohort("Pro buyers", issue_definition()).await;
        assert_eq!(cohort, 1, "both installations number their first cohort 1");
        let once = export(server, cohort, "once").await;
        assert_eq!(once["run"]["status"], "succeeded", "{once}");
    }
    let cohorts = emulator.get("/_emulator/cohorts").await;
    let ids: Vec<&str> = cohorts
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["cohort_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "one Braze cohort per installation: {cohorts}");
    assert!(ids.contains(&"cohortbridge-staging-1-1"), "{ids:?}");
    assert_eq!(
        emulator.members("cohortbridge-staging-1-1").await,
        vec!["ext-stage-user"]
    );
    let production_id = ids
        .iter()
        .find(|id| **id != "cohortbridge-staging-1-1")
        .unwrap();
    assert_eq!(emulator.members(production_id).await, vec!["ext-prod-user"]);
    staging.stop().await;
    production.stop().await;
}
