//! Connections, cohorts and syncs after creation, against the Braze emulator. Covers
//! connection reconnect, disconnect and rename, cohort rename and deletion, sync pause, resume
//! and removal, both limits, dry runs, per-run operations and metrics.

mod common;

use common::{TestEmulator, TestServer, DATA_IMPORT_KEY};
use serde_json::{json, Value};

const BRAZE_COHORT: &str = "cohortbridge-test-1-1";

async fn connect(server: &TestServer, emulator: &TestEmulator, name: &str) {
    let (status, body) = server
        .admin_post(
            "/connections",
            &json!({"name": name, "base_url": emulator.base, "data_import_key": DATA_IMPORT_KEY}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

/// Sets `plan` and an optional Braze id on the profile of `user`.
async fn set_profile(server: &TestServer, user: &str, plan: &str, braze_id: Option<&str>) {
    let mut set = json!({"plan": plan});
    if let Some(id) = braze_id {
        set["$braze_external_id"] = json!(id);
    }
    let (status, text) = server
        .engage(&[json!({"$token": server.token, "$distinct_id": user, "$set": set})])
        .await;
    assert_eq!(status, 200, "{text}");
}

fn pro_definition() -> Value {
    json!({"profile": "plan", "op": "eq", "value": "pro"})
}

async fn export_dynamic(server: &TestServer, cohort: i64, connection: &str) -> Value {
    let (status, body) = server
        .admin_post(
            "/exports",
            &json!({"cohort_id": cohort, "connection": connection, "mode": "dynamic", "every_secs": 3600}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body
}

async fn run_sync(server: &TestServer, sync_id: i64) -> (reqwest::StatusCode, Value) {
    server
        .admin_post(&format!("/syncs/{sync_id}/run"), &json!({}))
        .await
}

async fn request_count(emulator: &TestEmulator) -> usize {
    emulator
        .get("/_emulator/requests")
        .await
        .as_array()
        .unwrap()
        .len()
}

#[tokio::test]
async fn disconnect_pauses_and_reconnect_resumes() {
    let emulator = TestEmulator::start().await;
    let server = TestServer::start().await;
    connect(&server, &emulator, "emu").await;
    set_profile(&server, "ann", "pro", Some("ext-ann")).await;
    let cohort = server.create_cohort("Pro", pro_definition()).await;
    let sync_id = export_dynamic(&server, cohort, "emu").await["sync"]["id"]
        .as_i64()
        .unwrap();

    let (status, body) = server
        .admin_post("/connections/emu/disconnect", &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "disconnected");
    let shown = server.admin_get(&format!("/syncs/{sync_id}")).await;
    assert_eq!(shown["sync"]["status"], "paused");
    assert_eq!(shown["sync"]["paused_by"], "connection");
    assert!(shown["sync"]["status_reason"]
        .as_str()
        .unwrap()
        .contains("disconnected"));
    let (status, body) = run_sync(&server, sync_id).await;
    assert_eq!(status, 409, "a paused sync does not run: {body}");
    let (status, body) = server
        .admin_post(&format!("/syncs/{sync_id}/resume"), &json!({}))
        .await;
    assert_eq!(status, 409, "resume needs a reconnect first: {body}");
    assert!(body["error"].as_str().unwrap().contains("reconnect"));

    let before = request_count(&emulator).await;
    let (status, body) = server
        .admin_post(
            "/connections/emu/reconnect",
            &json!({"data_import_key": "not-a-known-key"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("HTTP 401"));
    assert_eq!(
        request_count(&emulator).await,
        before + 1,
        "one probe was sent"
    );
    let connections = server.admin_get("/connections").await;
    assert_eq!(connections[0]["status"], "disconnected");

    let (status, body) = server
        .admin_post("/connections/emu/reconnect", &json!({}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("`data_import_key`"));

    let (status, body) = server
        .admin_post(
            "/connections/emu/reconnect",
            &json!({"data_import_key": DATA_IMPORT_KEY}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["connection"]["status"], "connected");
    assert_eq!(body["resumed_syncs"], json!([sync_id]));
    assert!(!body.to_string().contains(DATA_IMPORT_KEY));
    let shown = server.admin_get(&format!("/syncs/{sync_id}")).await;
    assert_eq!(shown["sync"]["status"], "active");
    assert!(shown["sync"]["paused_by"].is_null());

    set_profile(&server, "bob", "pro", Some("ext-bob")).await;
    // The reconnect made the sync due, so the scheduler may run it first.
    server.wait_until_idle(sync_id).await;
    let (status, run) = run_sync(&server, sync_id).await;
    assert_eq!(status, 200, "{run}");
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(
        emulator.members(BRAZE_COHORT).await,
        vec!["ext-ann", "ext-bob"],
        "bob was added by the scheduled run or by this one"
    );
    server.stop().await;
}

#[tokio::test]
async fn operator_pause_survives_reconnect() {
    let emulator = TestEmulator::start().await;
    let server = TestServer::start().await;
    connect(&server, &emulator, "emu").await;
    set_profile(&server, "ann", "pro", Some("ext-ann")).await;
    let cohort = server.create_cohort("Pro", pro_definition()).await;
    let sync_id = export_dynamic(&server, cohort, "emu").await["sync"]["id"]
        .as_i64()
        .unwrap();

    let (status, body) = server
        .admin_post(&format!("/syncs/{sync_id}/pause"), &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "paused");
    assert_eq!(body["paused_by"], "operator");
    let (status, _) = server
        .admin_post(&format!("/syncs/{sync_id}/pause"), &json!({}))
        .await;
    assert_eq!(status, 409, "pausing twice is a conflict");

    server
        .admin_post("/connections/emu/disconnect", &json!({}))
        .await;
    let (status, body) = server
        .admin_post(
            "/connections/emu/reconnect",
            &json!({"data_import_key": DATA_IMPORT_KEY}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["resumed_syncs"], json!([]));
    let shown = server.admin_get(&format!("/syncs/{sync_id}")).await;
    assert_eq!(shown["sync"]["status"], "paused");

    let (status, body) = server
        .admin_post(&format!("/syncs/{sync_id}/resume"), &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "active");
    assert!(body["next_run_at_ms"].is_i64(), "{body}");

    // The resumed sync is due at once, so the scheduler runs it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let last_trigger = loop {
        let shown = server.admin_get(&format!("/syncs/{sync_id}")).await;
        let runs = shown["runs"].as_array().unwrap().clone();
        if runs.len() > 1 && runs.last().unwrap()["status"] != "running" {
            break runs.last().unwrap()["trigger"].clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the scheduler never ran the resumed sync"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(last_trigger, "schedule");
    server.stop().await;
}

#[tokio::test]
async fn connection_rename_and_several_connections() {
    let emulator = TestEmulator::start().await;
    let server = TestServer::start().await;
    connect(&server, &emulator, "first").await;
    connect(&server, &emulator, "second").await;

    let (status, body) = server
        .admin_post("/connections/first/rename", &json!({"name": "renamed"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["name"], "renamed");
    assert_eq!(body["export_menu_name"], "Braze (renamed)");

    let (status, body) = server
        .admin_post("/connections/renamed/rename", &json!({"name": "second"}))
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("\"second\""));

    let (status, body) = server
        .admin_post("/connections/2/rename", &json!({"name": "  "}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("`name`"));

    let (status, _) = server
        .admin_post("/connections/missing/rename", &json!({"name": "x"}))
        .await;
    assert_eq!(status, 404);

    let names: Vec<Value> = server
        .admin_get("/connections")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("renamed"), json!("second")]);
    server.stop().await;
}

#[tokio::test]
async fn cohort_rename_sends_new_name() {
    let emulator = TestEmulator::start().await;
    let server = TestServer::start().await;
    connect(&server, &emulator, "emu").await;
    set_profile(&server, "ann", "pro", Some("ext-ann")).await;
    let cohort = server.create_cohort("Pro", pro_definition()).await;
    let sync_id = export_dynamic(&server, cohort, "emu").await["sync"]["id"]
        .as_i64()
        .unwrap();
    assert_eq!(emulator.get("/_emulator/cohorts").await[0]["name"], "Pro");

    let (status, body) = server
        .admin_post(
            &format!("/cohorts/{cohort}/rename"),
            &json!({"name": "Pro users"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["name"], "Pro users");
    let (_, run) = run_sync(&server, sync_id).await;
    assert_eq!(run["requests"], 1, "only the name call: {run}");
    let cohorts = emulator.get("/_emulator/cohorts").await;
    assert_eq!(cohorts[0]["name"], "Pro users");
    assert_eq!(cohorts[0]["member_count"], 1, "members are kept");

    let (_, run) = run_sync(&server, sync_id).await;
    assert_eq!(run["requests"], 0, "the name is sent once: {run}");
    server.stop().await;
}

#[tokio::test]
async fn cohort_delete_with_and_without_removal() {
    let emulator = TestEmulator::start().await;
    let server = TestServer::start().await;
    connect(&server, &emulator, "emu").await;
    set_profile(&server, "ann", "pro", Some("ext-ann")).await;
    set_profile(&server, "bob", "pro", Some("ext-bob")).await;
    let kept = server.create_cohort("Kept", pro_definition()).await;
    let cleared = server.create_cohort("Cleared", pro_definition()).await;
    let kept_sync = export_dynamic(&server, kept, "emu").await["sync"]["id"]
        .as_i64()
        .unwrap();
    let cleared_sync = export_dynamic(&server, cleared, "emu").await["sync"]["id"]
        .as_i64()
        .unwrap();
    let kept_braze = format!("cohortbridge-test-1-{kept}");
    let cleared_braze = format!("cohortbridge-test-1-{cleared}");
    assert_eq!(emulator.members(&kept_braze).await.len(), 2);
    assert_eq!(emulator.members(&cleared_braze).await.len(), 2);

    let (status, body) = server.admin_delete(&format!("/cohorts/{kept}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["removed_syncs"], json!([kept_sync]));
    assert_eq!(
        emulator.members(&kept_braze).await,
        vec!["ext-ann", "ext-bob"],
        "members stay in Braze without the option"
    );

    let (status, body) = server
        .admin_delete(&format!("/cohorts/{cleared}?remove_members=true"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(emulator.members(&cleared_braze).await.is_empty());

    for (cohort, sync_id) in [(kept, kept_sync), (cleared, cleared_sync)] {
        let (status, _) = server.admin_get_status(&format!("/cohorts/{cohort}")).await;
        assert_eq!(status, 404, "cohort {cohort} is gone");
        let shown = server.admin_get(&format!("/syncs/{sync_id}")).await;
        assert_eq!(shown["sync"]["status"], "removed");
        let (status, _) = run_sync(&server, sync_id).await;
        assert_eq!(status, 409, "a removed sync does not run");
    }
    let runs = server.admin_get(&format!("/syncs/{cleared_sync}")).await["runs"].clone();
    let removal = runs.as_array().unwrap().last().unwrap();
    assert_eq!(removal["trigger"], "removal");
    assert_eq!(removal["removed"], 2);
    server.stop().await;
}

#[tokio::test]
async fn sync_remove_failure_keeps_the_sync() {
    let emulator = TestEmulator::start().await;
    let server = TestServer::start().await;
    connect(&server, &emulator, "emu").await;
    set_profile(&server, "ann", "pro", Some("ext-ann")).await;
    let cohort = server.create_cohort("Pro", pro_definition()).await;
    let sync_id = export_dynamic(&server, cohort, "emu").await["sync"]["id"]
        .as_i64()
        .unwrap();

    emulator
        .inject(json!({"status": 401, "body": "{\"message\":\"Invalid client secret\"}"}))
        .await;
    let (status, body) = server
        .admin_delete(&format!("/syncs/{sync_id}?remove_members=true"))
        .await;
    assert_eq!(status, 502, "{body}");
    assert!(body["error"].as_str().unwrap().contains("HTTP 401"));
    let shown = server.admin_get(&format!("/syncs/{sync_id}")).await;
    assert_eq!(shown["sync"]["status"], "active", "the sync is kept");
    assert_eq!(emulator.members(BRAZE_COHORT).await, vec!["ext-ann"]);

    let (status, body) = server
        .admin_delete(&format!("/syncs/{sync_id}?remove_members=true"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "removed");
    assert!(emulator.members(BRAZE_COHORT).await.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn dynamic_sync_limit_is_enforced() {
    let emulator = TestEmulator::start().await;
    let server = TestServer::start_with(|c| c.max_dynamic_syncs_per_project = 2).await;
    connect(&server, &emulator, "emu").await;
    let cohort = server.create_cohort("Pro", pro_definition()).await;
    let first = export_dynamic(&server, cohort, "emu").await["sync"]["id"]
        .as_i64()
        .unwrap();
    export_dynamic(&server, cohort, "emu").await;
    let (status, body) = server
        .admin_post(
            "/exports",
            &json!({"cohort_id": cohort, "connection": "emu", "mode": "dynamic"}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(message.contains("limit is 2"), "{message}");
    assert!(
        message.contains("--max-dynamic-syncs-per-project"),
        "{message}"
    );

    let (status, _) = server
        .admin_post(
            "/exports",
            &json!({"cohort_id": cohort, "connection": "emu", "mode": "once"}),
        )
        .await;
    assert_eq!(status, 201, "one-time exports do not count");
    let (status, _) = server.admin_delete(&format!("/syncs/{first}")).await;
    assert_eq!(status, 200);
    export_dynamic(&server, cohort, "emu").await;
    server.stop().await;
}

#[tokio::test]
async fn member_limit_fails_without_sending() {
    let emulator = TestEmulator::start().await;
    let server = TestServer::start_with(|c| c.max_cohort_members = 2).await;
    connect(&server, &emulator, "emu").await;
    for user in ["ann", "bob", "cid"] {
        set_profile(&server, user, "pro", Some(&format!("ext-{user}"))).await;
    }
    let cohort = server.create_cohort("Pro", pro_definition()).await;
    let before = request_count(&emulator).await;
    let body = export_dynamic(&server, cohort, "emu").await;
    assert_eq!(body["run"]["status"], "failed", "{body}");
    let error = body["run"]["error"].as_str().unwrap();
    assert!(error.contains("3 members"), "{error}");
    assert!(error.contains("limit of 2"), "{error}");
    assert!(error.contains("--max-cohort-members"), "{error}");
    assert_eq!(request_count(&emulator).await, before, "nothing was sent");
    assert_eq!(body["sync"]["status"], "active", "the next run retries");
    server.stop().await;
}

#[tokio::test]
async fn dry_run_then_operations_match() {
    let emulator = TestEmulator::start().await;
    let server = TestServer::start().await;
    connect(&server, &emulator, "emu").await;
    set_profile(&server, "ann", "pro", Some("ext-ann")).await;
    set_profile(&server, "bob", "pro", Some("ext-bob")).await;
    set_profile(&server, "cid", "pro", None).await;
    set_profile(&server, "dee", "pro", Some("ext-ann")).await;
    let cohort = server.create_cohort("Pro", pro_definition()).await;

    let before = request_count(&emulator).await;
    let (status, plan) = server
        .admin_post(
            "/exports",
            &json!({"cohort_id": cohort, "connection": "emu", "dry_run": true}),
        )
        .await;
    assert_eq!(status, 200, "{plan}");
    assert_eq!(plan["add"], json!(["ext-ann", "ext-bob"]));
    assert_eq!(plan["remove"], json!([]));
    assert_eq!(plan["skipped"], 1);
    assert_eq!(
        request_count(&emulator).await,
        before,
        "a dry run sends nothing"
    );
    assert!(server
        .admin_get("/syncs")
        .await
        .as_array()
        .unwrap()
        .is_empty());

    let body = export_dynamic(&server, cohort, "emu").await;
    let sync_id = body["sync"]["id"].as_i64().unwrap();
    let run = &body["run"];
    assert_eq!(run["trigger"], "export");
    assert_eq!(run["added"], 2);
    assert_eq!(run["skipped"], 1);

    set_profile(&server, "bob", "free", Some("ext-bob")).await;
    let (_, plan) = server
        .admin_post(
            "/exports",
            &json!({"cohort_id": cohort, "connection": "emu", "dry_run": true}),
        )
        .await;
    assert_eq!(plan["add"], json!([]));
    assert_eq!(plan["remove"], json!(["ext-bob"]));
    assert_eq!(plan["unchanged"], 1);

    let (_, run) = run_sync(&server, sync_id).await;
    assert_eq!(run["trigger"], "manual");
    assert_eq!(run["removed"], 1);
    assert_eq!(run["unchanged"], 1);
    let run_id = run["id"].as_i64().unwrap();
    let reply = server
        .admin_get(&format!("/runs/{run_id}/operations"))
        .await;
    let operations: Vec<(Value, Value, Value)> = reply["operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|op| {
            (
                op["distinct_id"].clone(),
                op["external_id"].clone(),
                op["operation"].clone(),
            )
        })
        .collect();
    assert_eq!(
        operations,
        vec![
            (json!("ann"), json!("ext-ann"), json!("no-op")),
            (json!("cid"), Value::Null, json!("skipped")),
            (json!("dee"), json!("ext-ann"), json!("no-op")),
            (json!("bob"), json!("ext-bob"), json!("remove")),
        ]
    );
    let skipped = &reply["operations"][1];
    assert_eq!(
        skipped["reason"],
        "profile has no $braze_external_id property"
    );

    let (status, _) = server.admin_get_status("/runs/999/operations").await;
    assert_eq!(status, 404);
    server.stop().await;
}

#[tokio::test]
async fn metrics_count_requests_and_ids() {
    let emulator = TestEmulator::start().await;
    let server = TestServer::start().await;
    connect(&server, &emulator, "emu").await;
    set_profile(&server, "ann", "pro", Some("ext-ann")).await;
    let cohort = server.create_cohort("Pro", pro_definition()).await;
    emulator
        .inject(json!({"status": 503, "body": "<html>down</html>"}))
        .await;
    let body = export_dynamic(&server, cohort, "emu").await;
    assert_eq!(body["run"]["status"], "succeeded", "{body}");
    assert_eq!(body["run"]["retries"], 1, "{body}");
    let sync_id = body["sync"]["id"].as_i64().unwrap();
    server
        .admin_post(&format!("/syncs/{sync_id}/pause"), &json!({}))
        .await;

    let text = server
        .http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "cohortbridge_braze_requests_total{endpoint=\"cohorts\",status=\"503\"} 1",
        "cohortbridge_braze_requests_total{endpoint=\"cohorts\",status=\"201\"} 1",
        "cohortbridge_braze_requests_total{endpoint=\"cohorts/users\",status=\"201\"} 1",
        "cohortbridge_braze_ids_sent_total{operation=\"add\"} 1",
        "cohortbridge_braze_retries_total 1",
        "cohortbridge_sync_run_duration_seconds_count{outcome=\"succeeded\"} 1",
        "cohortbridge_paused_syncs 1",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    server.stop().await;
}

#[tokio::test]
async fn shared_id_stays_while_either_qualifies() {
    let emulator = TestEmulator::start().await;
    let server = TestServer::start().await;
    connect(&server, &emulator, "emu").await;
    set_profile(&server, "phone", "pro", Some("Shared-ID")).await;
    set_profile(&server, "laptop", "pro", Some("Shared-ID")).await;
    set_profile(&server, "other", "pro", Some(" shared-id ")).await;
    let cohort = server.create_cohort("Pro", pro_definition()).await;
    let body = export_dynamic(&server, cohort, "emu").await;
    assert_eq!(
        body["run"]["added"], 2,
        "one add per distinct id value: {body}"
    );
    let sync_id = body["sync"]["id"].as_i64().unwrap();
    assert_eq!(
        emulator.members(BRAZE_COHORT).await,
        vec![" shared-id ", "Shared-ID"],
        "ids are sent byte-exact"
    );

    set_profile(&server, "phone", "free", Some("Shared-ID")).await;
    let (_, run) = run_sync(&server, sync_id).await;
    assert_eq!(run["removed"], 0, "laptop still qualifies: {run}");
    assert_eq!(run["requests"], 0, "{run}");

    set_profile(&server, "laptop", "free", Some("Shared-ID")).await;
    let (_, run) = run_sync(&server, sync_id).await;
    assert_eq!(run["removed"], 1, "{run}");
    assert_eq!(emulator.members(BRAZE_COHORT).await, vec![" shared-id "]);
    server.stop().await;
}

#[tokio::test]
async fn older_runs_keep_only_their_counts() {
    let emulator = TestEmulator::start().await;
    let server = TestServer::start_with(|c| c.runs_with_operations = 2).await;
    connect(&server, &emulator, "emu").await;
    set_profile(&server, "ann", "pro", Some("ext-ann")).await;
    let cohort = server.create_cohort("Pro", pro_definition()).await;
    let body = export_dynamic(&server, cohort, "emu").await;
    let sync_id = body["sync"]["id"].as_i64().unwrap();
    let mut run_ids = vec![body["run"]["id"].as_i64().unwrap()];
    for _ in 0..2 {
        let (status, run) = run_sync(&server, sync_id).await;
        assert_eq!(status, 200, "{run}");
        run_ids.push(run["id"].as_i64().unwrap());
    }

    let operations = |run_id: i64| {
        let server = &server;
        async move {
            server
                .admin_get(&format!("/runs/{run_id}/operations"))
                .await
        }
    };
    let first = operations(run_ids[0]).await;
    assert_eq!(first["operations"], json!([]), "{first}");
    assert_eq!(first["operations_deleted"], true);
    assert_eq!(first["run"]["added"], 1, "the counts stay: {first}");
    for run_id in &run_ids[1..] {
        let retained = operations(*run_id).await;
        assert_eq!(retained["operations_deleted"], false, "{retained}");
        assert_eq!(
            retained["operations"].as_array().unwrap().len(),
            1,
            "{retained}"
        );
    }
    assert_eq!(emulator.members("cohortbridge-test-1-1").await, ["ext-ann"]);
    server.stop().await;
}

#[tokio::test]
async fn nul_in_a_braze_id_is_skipped() {
    let emulator = TestEmulator::start().await;
    let server = TestServer::start().await;
    connect(&server, &emulator, "emu").await;
    set_profile(&server, "ann", "pro", Some("ext-ann")).await;
    set_profile(&server, "nul", "pro", Some("ext\u{0}nul")).await;
    let cohort = server.create_cohort("Pro", pro_definition()).await;
    let body = export_dynamic(&server, cohort, "emu").await;
    assert_eq!(body["run"]["status"], "succeeded", "{body}");
    assert_eq!(body["run"]["added"], 1, "{body}");
    assert_eq!(body["run"]["skipped"], 1, "{body}");
    assert_eq!(emulator.members("cohortbridge-test-1-1").await, ["ext-ann"]);
    server.stop().await;
}
