//! Sync leases: a run whose lease another node takes over stops sending before its next Braze
//! request, and the next run resumes from what Braze acknowledged.

mod common;

use std::time::{Duration, Instant};

use common::{TestEmulator, TestServer, DATA_IMPORT_KEY};
use serde_json::{json, Value};

const MEMBERS: usize = 5_000;

#[tokio::test]
async fn taken_over_lease_stops_the_run() {
    let emulator = TestEmulator::start().await;
    // Each partner request waits, so the run of five member requests lasts over a second.
    emulator
        .inject(json!({"delay_ms": 300, "times": 100_000}))
        .await;
    let server = TestServer::start_with(|config| config.sync_lease_secs = 1).await;
    let updates: Vec<Value> = (0..MEMBERS)
        .map(|n| {
            json!({"$token": server.token, "$distinct_id": format!("u{n}"),
                "$set": {"plan": "pro", "$braze_external_id": format!("ext-{n}")}})
        })
        .collect();
    for chunk in updates.chunks(2000) {
        let (status, body) = server.engage(chunk).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = server
        .admin_post(
            "/connections",
            &json!({"name": "emu", "base_url": emulator.base, "data_import_key": DATA_IMPORT_KEY}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let cohort = server
        .create_cohort(
            "Pro",
            json!({"profile": "plan", "op": "eq", "value": "pro"}),
        )
        .await;

    let export =
        json!({"cohort_id": cohort, "connection": "emu", "mode": "dynamic", "every_secs": 3600});
    let (http, url) = (
        server.http.clone(),
        server.url("/api/v1/projects/1/exports"),
    );
    let request = tokio::spawn(async move {
        let response = http
            .post(url)
            .bearer_auth(common::ADMIN_KEY)
            .json(&export)
            .send()
            .await
            .unwrap();
        response.json::<Value>().await.unwrap()
    });

    // Once the run has sent a request, another node "takes over" the lease.
    let deadline = Instant::now() + Duration::from_secs(20);
    while emulator.emulator.requests().len() < 2 {
        assert!(Instant::now() < deadline, "the run never sent a request");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server
        .database
        .execute(
            "UPDATE syncs SET lease_owner = 'another-node', lease_expires_at_ms = 9000000000000",
        )
        .await;

    let body = request.await.unwrap();
    let run = &body["run"];
    assert_eq!(run["status"], "failed", "{body}");
    assert!(
        run["error"]
            .as_str()
            .unwrap_or("")
            .contains("another node took over"),
        "{body}"
    );
    let sent = run["requests"].as_i64().unwrap();
    assert!(
        sent < 6,
        "the run kept sending after it lost its lease: {sent} requests"
    );
    let braze_after_stop = emulator
        .members(&format!("cohortbridge-test-1-{cohort}"))
        .await;
    assert!(
        braze_after_stop.len() < MEMBERS,
        "{}",
        braze_after_stop.len()
    );

    // While the other node holds the lease, this node neither runs nor removes the sync.
    let sync_id = body["sync"]["id"].as_i64().unwrap();
    let (status, refused) = server
        .admin_post(&format!("/syncs/{sync_id}/run"), &json!({}))
        .await;
    assert_eq!(status, 409, "{refused}");
    assert!(refused.to_string().contains("another node"), "{refused}");
    let (status, refused) = server
        .admin_delete(&format!("/syncs/{sync_id}?remove_members=true"))
        .await;
    assert_eq!(status, 409, "{refused}");
    let shown = server.admin_get(&format!("/syncs/{sync_id}")).await;
    assert_eq!(shown["sync"]["status"], "active", "{shown}");

    // Once the lease is free again, the next run resumes and completes the cohort.
    server
        .database
        .execute("UPDATE syncs SET lease_owner = NULL, lease_expires_at_ms = NULL")
        .await;
    let (status, resumed) = server
        .admin_post(&format!("/syncs/{sync_id}/run"), &json!({}))
        .await;
    assert_eq!(status, 200, "{resumed}");
    assert_eq!(resumed["status"], "succeeded", "{resumed}");
    let mut braze = emulator
        .members(&format!("cohortbridge-test-1-{cohort}"))
        .await;
    braze.sort();
    let mut expected: Vec<String> = (0..MEMBERS).map(|n| format!("ext-{n}")).collect();
    expected.sort();
    assert_eq!(braze.len(), MEMBERS);
    assert_eq!(braze, expected);
    server.stop().await;
}
