//! The `/_emulator/` endpoints: request log, members, fault injection, reset and
//! the opt-in rate limit.

mod common;

use std::time::{Duration, Instant};

use braze_emulator::Emulator;
use common::*;
use serde_json::json;

// ---- request log ----

#[tokio::test]
async fn requests_log_counts_adds_and_removes() {
    let h = start().await;
    h.name_cohort(IMPORT_KEY_A, "c1", "Power users").await;
    h.change_cohort(
        IMPORT_KEY_A,
        "c1",
        json!([
            { "user_ids": ["u1", "u2"] },
            { "user_ids": ["u3"], "should_remove": true },
        ]),
    )
    .await;

    let requests = h.requests().await;
    assert_eq!(requests.len(), 2);
    let first = &requests[0];
    assert_eq!(first["seq"], 1);
    assert_eq!(first["path"], "/partners/cohortbridge/cohorts");
    assert_eq!(first["status"], 201);
    assert_eq!(first["name"], "Power users");
    assert_eq!(first["added"], 0);

    let second = &requests[1];
    assert_eq!(second["seq"], 2);
    assert_eq!(second["path"], "/partners/cohortbridge/cohorts/users");
    assert_eq!(second["status"], 201);
    assert_eq!(second["applied"], true);
    assert_eq!(second["workspace"], 0);
    assert_eq!(second["cohort_id"], "c1");
    assert_eq!(second["added"], 2);
    assert_eq!(second["removed"], 1);
    assert_eq!(second["ids_added"], json!(["u1", "u2"]));
    assert_eq!(second["ids_removed"], json!(["u3"]));
}

#[tokio::test]
async fn requests_log_omits_secrets() {
    let h = start().await;
    h.name_cohort(IMPORT_KEY_A, "c1", "Power users").await;
    let mut bad = users_body();
    bad["client_secret"] = json!("wrong-secret-value");
    h.post_json(&users_path(), &bad).await;

    let text = h
        .client
        .get(h.url("/_emulator/requests"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for secret in [PARTNER_KEY, IMPORT_KEY_A, "wrong-secret-value"] {
        assert!(
            !text.contains(secret),
            "request log contains {secret:?}: {text}"
        );
    }
    assert!(!text.contains("partner_api_key"));
    assert!(!text.contains("client_secret"));
}

#[tokio::test]
async fn requests_log_records_rejections() {
    let h = start().await;
    let mut body = users_body();
    body["client_secret"] = json!("unknown");
    h.post_json(&users_path(), &body).await;

    let requests = h.requests().await;
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0]["status"], 401);
    assert_eq!(requests[0]["applied"], false);
    assert_eq!(requests[0]["workspace"], json!(null));
    assert_eq!(
        requests[0]["ids_added"],
        json!(["u1"]),
        "ids describe what was sent"
    );
}

// ---- members ----

#[tokio::test]
async fn members_of_unknown_cohort_is_404() {
    let h = start().await;
    let reply = h.get("/_emulator/cohorts/nope/members").await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.message(), "cohort \"nope\" not found in workspace 0");
}

#[tokio::test]
async fn members_with_unknown_kind_is_400() {
    let h = start().await;
    h.name_cohort(IMPORT_KEY_A, "c1", "Power users").await;
    let reply = h.get("/_emulator/cohorts/c1/members?kind=emails").await;
    assert_eq!(reply.status, 400);
    assert!(reply.message().starts_with("kind \"emails\" is invalid"));
}

#[tokio::test]
async fn members_with_bad_workspace_is_400() {
    let h = start().await;
    let reply = h.get("/_emulator/cohorts/c1/members?workspace=-1").await;
    assert_eq!(reply.status, 400);
    assert!(reply.message().starts_with("workspace \"-1\" is invalid"));
}

#[tokio::test]
async fn members_path_decodes_cohort_id() {
    let h = start().await;
    h.name_cohort(IMPORT_KEY_A, "a/b c", "Odd id").await;
    h.change_cohort(IMPORT_KEY_A, "a/b c", json!([{ "user_ids": ["u1"] }]))
        .await;
    let reply = h.get("/_emulator/cohorts/a%2Fb%20c/members").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, json!(["u1"]));
}

// ---- fault injection ----

#[tokio::test]
async fn fault_replaces_response_for_times_requests() {
    let h = start().await;
    h.name_cohort(IMPORT_KEY_A, "c1", "Power users").await;
    let queued = h
        .post_json(
            "/_emulator/faults",
            &json!({
                "status": 429,
                "headers": { "x-ratelimit-reset": "1700003600" },
                "body": "{\"message\":\"slow down\"}",
                "times": 2,
            }),
        )
        .await;
    assert_eq!(queued.status, 200);
    assert_eq!(queued.body["pending_requests"], 2);

    for attempt in 1..=2 {
        let reply = h
            .change_cohort(IMPORT_KEY_A, "c1", json!([{ "user_ids": ["u1"] }]))
            .await;
        assert_eq!(reply.status, 429, "attempt {attempt}");
        assert_eq!(reply.header("x-ratelimit-reset"), Some("1700003600"));
        assert_eq!(reply.message(), "slow down");
    }
    assert!(
        h.members("c1").await.is_empty(),
        "injected requests are not applied"
    );

    let third = h
        .change_cohort(IMPORT_KEY_A, "c1", json!([{ "user_ids": ["u1"] }]))
        .await;
    assert_eq!(third.status, 201);
    assert_eq!(h.members("c1").await, ["u1"]);
}

#[tokio::test]
async fn fault_is_recorded_with_injected_status() {
    let h = start().await;
    h.post_json("/_emulator/faults", &json!({ "status": 500 }))
        .await;
    h.name_cohort(IMPORT_KEY_A, "c1", "Power users").await;

    let requests = h.requests().await;
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0]["status"], 500);
    assert_eq!(requests[0]["injected"], true);
    assert_eq!(requests[0]["applied"], false);
    assert_eq!(requests[0]["cohort_id"], "c1");
    assert!(h.emulator.cohorts().is_empty());
}

#[tokio::test]
async fn fault_body_is_sent_verbatim() {
    let h = start().await;
    let html = "<html><body>503 Service Unavailable</body></html>";
    h.post_json(
        "/_emulator/faults",
        &json!({ "status": 503, "headers": { "content-type": "text/html" }, "body": html }),
    )
    .await;
    let response = h
        .client
        .post(h.url(&names_path()))
        .json(&name_body())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 503);
    assert_eq!(response.headers()["content-type"], "text/html");
    assert_eq!(response.text().await.unwrap(), html);
}

#[tokio::test]
async fn faults_apply_in_queue_order() {
    let h = start().await;
    h.post_json("/_emulator/faults", &json!({ "status": 502 }))
        .await;
    h.post_json("/_emulator/faults", &json!({ "status": 504 }))
        .await;
    let first = h.post_json(&names_path(), &name_body()).await;
    let second = h.post_json(&names_path(), &name_body()).await;
    let third = h.post_json(&names_path(), &name_body()).await;
    assert_eq!(first.status, 502);
    assert_eq!(second.status, 504);
    assert_eq!(third.status, 201);
}

#[tokio::test]
async fn delete_faults_clears_queue() {
    let h = start().await;
    h.post_json("/_emulator/faults", &json!({ "status": 503, "times": 5 }))
        .await;
    let cleared = h.delete("/_emulator/faults").await;
    assert_eq!(cleared.status, 200);
    let reply = h.name_cohort(IMPORT_KEY_A, "c1", "Power users").await;
    assert_eq!(reply.status, 201);
}

#[tokio::test]
async fn fault_delay_outlasts_client_timeout() {
    let h = start().await;
    h.post_json(
        "/_emulator/faults",
        &json!({ "status": 201, "body": "{\"message\":\"success\"}", "delay_ms": 2000 }),
    )
    .await;
    let result = h
        .client
        .post(h.url(&names_path()))
        .json(&name_body())
        .timeout(Duration::from_millis(200))
        .send()
        .await;
    let error = result.expect_err("the reply is slower than the timeout");
    assert!(error.is_timeout(), "{error}");
}

#[tokio::test]
async fn delay_only_fault_processes_request() {
    let h = start().await;
    h.post_json("/_emulator/faults", &json!({ "delay_ms": 300 }))
        .await;
    let started = Instant::now();
    let reply = h.name_cohort(IMPORT_KEY_A, "c1", "Power users").await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(reply.status, 201);
    assert_eq!(h.emulator.cohorts().len(), 1);
}

#[tokio::test]
async fn fault_with_unknown_field_is_400() {
    let h = start().await;
    let reply = h
        .post_json("/_emulator/faults", &json!({ "status": 503, "count": 2 }))
        .await;
    assert_eq!(reply.status, 400);
    assert!(
        reply
            .message()
            .starts_with("invalid fault: unknown field `count`"),
        "{}",
        reply.message()
    );
}

#[tokio::test]
async fn fault_with_zero_times_is_400() {
    let h = start().await;
    let reply = h
        .post_json("/_emulator/faults", &json!({ "status": 503, "times": 0 }))
        .await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.message(), "invalid fault: times must be at least 1");
}

#[tokio::test]
async fn fault_does_not_touch_emulator_endpoints() {
    let h = start().await;
    h.post_json("/_emulator/faults", &json!({ "status": 503 }))
        .await;
    assert_eq!(h.get("/_emulator/cohorts").await.status, 200);
    assert_eq!(h.get("/_emulator/requests").await.status, 200);
    let reply = h.name_cohort(IMPORT_KEY_A, "c1", "Power users").await;
    assert_eq!(
        reply.status, 503,
        "the fault is still queued for the partner endpoint"
    );
}

// ---- reset ----

#[tokio::test]
async fn reset_clears_cohorts_requests_and_faults() {
    let h = start().await;
    h.name_cohort(IMPORT_KEY_A, "c1", "Power users").await;
    h.post_json("/_emulator/faults", &json!({ "status": 503 }))
        .await;

    let reply = h.post_json("/_emulator/reset", &json!({})).await;
    assert_eq!(reply.status, 200);
    assert_eq!(h.get("/_emulator/cohorts").await.body, json!([]));
    assert_eq!(h.get("/_emulator/requests").await.body, json!([]));

    let after = h.name_cohort(IMPORT_KEY_A, "c2", "Fresh").await;
    assert_eq!(after.status, 201, "the fault was cleared");
    assert_eq!(h.requests().await[0]["seq"], 1, "sequence restarts");
}

// ---- rate limit ----

/// Waits until at least 5 s remain in the current UTC minute, so that a test's
/// requests fall into one rate-limit window.
async fn wait_for_fresh_window() {
    let second = chrono::Utc::now().timestamp().rem_euclid(60);
    if second >= 55 {
        tokio::time::sleep(Duration::from_secs((61 - second) as u64)).await;
    }
}

#[tokio::test]
async fn rate_limit_rejects_over_limit() {
    wait_for_fresh_window().await;
    let h = start_emulator(Emulator::new(config()).with_rate_limit_per_minute(2)).await;

    let first = h.name_cohort(IMPORT_KEY_A, "c1", "One").await;
    let second = h.name_cohort(IMPORT_KEY_A, "c2", "Two").await;
    let third = h.name_cohort(IMPORT_KEY_A, "c3", "Three").await;

    assert_eq!(first.status, 201);
    assert_eq!(first.header("x-ratelimit-limit"), Some("2"));
    assert_eq!(first.header("x-ratelimit-remaining"), Some("1"));
    assert_eq!(second.status, 201);
    assert_eq!(second.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(third.status, 429);
    assert_eq!(third.header("x-ratelimit-remaining"), Some("0"));

    let reset: i64 = third
        .header("x-ratelimit-reset")
        .expect("429 carries x-ratelimit-reset")
        .parse()
        .expect("reset is epoch seconds");
    let now = chrono::Utc::now().timestamp();
    assert_eq!(reset % 60, 0, "windows end on a minute boundary");
    assert!(reset > now, "reset {reset} is not after now {now}");
    assert!(
        reset <= now + 60,
        "reset {reset} is over 60 s after now {now}"
    );

    assert_eq!(
        h.emulator.cohorts().len(),
        2,
        "the rejected request is not applied"
    );
}

#[tokio::test]
async fn rate_limit_is_off_by_default() {
    let h = start().await;
    let reply = h.name_cohort(IMPORT_KEY_A, "c1", "One").await;
    assert_eq!(reply.status, 201);
    assert_eq!(reply.header("x-ratelimit-limit"), None);
}
