//! Original ID Merge through the real HTTP server: the per-project identity mode, `$identify`,
//! `$create_alias` and `$merge`, recorded failures, and the cap of 500 ids per cluster.

mod common;

use common::{now_secs, TestServer};
use serde_json::{json, Value};

async fn set_mode(server: &TestServer, mode: &str) -> (reqwest::StatusCode, Value) {
    server
        .admin_post("/identity-mode", &json!({"identity_mode": mode}))
        .await
}

async fn failures(server: &TestServer) -> Vec<Value> {
    let body = server.admin_get("/identity-failures").await;
    body["failures"].as_array().unwrap().clone()
}

fn event(name: &str, distinct_id: &str, insert_id: &str) -> Value {
    json!({"event": name, "properties": {"time": 1700000000, "distinct_id": distinct_id,
        "$insert_id": insert_id}})
}

#[tokio::test]
async fn identity_mode_is_fixed_once_data_exists() {
    let server = TestServer::start().await;
    assert_eq!(
        server.admin_get("/identity-mode").await["identity_mode"],
        "simplified"
    );
    let (status, body) = set_mode(&server, "sideways").await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("sideways"));

    let (status, body) = set_mode(&server, "original").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["identity_mode"], "original");

    let (status, body) = server.import_records(&[event("e", "u", "fixed-1")]).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = set_mode(&server, "simplified").await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("1 events"),
        "{body}"
    );
    let (status, _) = set_mode(&server, "original").await;
    assert_eq!(status, 200, "setting the current mode again is accepted");
    server.stop().await;
}

#[tokio::test]
async fn original_api_fixture() {
    let server = TestServer::start().await;
    let (status, _) = set_mode(&server, "original").await;
    assert_eq!(status, 200);
    let anon = "c0ffee00-1111-4aaa-8bbb-000000000001";
    let earlier = vec![
        event("Viewed Item", anon, "before-1"),
        event("Purchase", "u-dave-old", "before-2"),
    ];
    let (status, body) = server.import_records(&earlier).await;
    assert_eq!(status, 200, "{body}");
    let viewers = server
        .create_cohort("viewers", json!({"event": "Viewed Item"}))
        .await;
    assert_eq!(server.members(viewers).await, vec![anon]);

    let lines = TestServer::fixture_lines("identity_original_api.ndjson");
    let (status, body) = server.import_records(&lines).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["num_records_imported"], 6, "every event is kept");
    assert_eq!(server.event_count().await, 8);

    // Line 1 merged the anonymous id into u-alice, so its earlier event moved with it. Line 4
    // aliased alice-crm-77 to u-alice, so line 6 lands on u-alice too.
    assert_eq!(server.members(viewers).await, vec!["u-alice"]);
    // Line 5 merged u-dave-old into u-dave.
    let buyers = server
        .create_cohort("buyers", json!({"event": "Purchase"}))
        .await;
    assert_eq!(server.members(buyers).await, vec!["u-dave"]);

    let recorded = failures(&server).await;
    let mut by_insert_id: Vec<(String, String)> = recorded
        .iter()
        .map(|f| {
            (
                f["insert_id"].as_str().unwrap().to_owned(),
                f["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    by_insert_id.sort();
    assert_eq!(by_insert_id.len(), 2, "{recorded:?}");
    assert_eq!(by_insert_id[0].0, "id-o-02");
    assert!(
        by_insert_id[0].1.contains("already merged"),
        "{by_insert_id:?}"
    );
    assert_eq!(by_insert_id[1].0, "id-o-03");
    assert!(by_insert_id[1].1.contains("UUID v4"), "{by_insert_id:?}");

    // Importing the same file again stores no copy of its events or of its failures.
    let (status, body) = server.import_records(&lines).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.event_count().await, 8);
    assert_eq!(failures(&server).await, recorded);

    // u-bob's failed $identify merged nothing: u-bob is still on his own.
    let identifiers = server
        .create_cohort("identified", json!({"event": "$identify"}))
        .await;
    assert_eq!(
        server.members(identifiers).await,
        vec!["u-alice", "u-bob", "u-carol"]
    );
    server.stop().await;
}

#[tokio::test]
async fn merge_only_through_import() {
    let server = TestServer::start().await;
    set_mode(&server, "original").await;
    let merge = json!({"event": "$merge", "properties": {"token": server.token,
        "time": now_secs(), "$distinct_ids": ["u-a", "u-b"], "$insert_id": "track-merge"}});
    let seen = json!({"event": "Seen", "properties": {"token": server.token, "time": now_secs(),
        "distinct_id": "u-b", "$insert_id": "seen-b"}});
    let (status, text) = server.track(&[merge, seen]).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(server.event_count().await, 2, "the $merge event is kept");

    let recorded = failures(&server).await;
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0]["insert_id"], "track-merge");
    assert!(recorded[0]["reason"].as_str().unwrap().contains("/import"));
    let seen_cohort = server.create_cohort("seen", json!({"event": "Seen"})).await;
    assert_eq!(server.members(seen_cohort).await, vec!["u-b"]);
    server.stop().await;
}

#[tokio::test]
async fn clusters_stop_at_500_ids() {
    let server = TestServer::start().await;
    set_mode(&server, "original").await;
    // u-big and 499 aliases make a cluster of 500.
    let aliases: Vec<Value> = (0..499)
        .map(|i| {
            json!({"event": "$create_alias", "properties": {"time": 1700000000,
                "distinct_id": "u-big", "alias": format!("alias-{i}"),
                "$insert_id": format!("alias-{i}")}})
        })
        .collect();
    let (status, body) = server.import_records(&aliases).await;
    assert_eq!(status, 200, "{body}");
    assert!(failures(&server).await.is_empty());

    let one_more = json!({"event": "$create_alias", "properties": {"time": 1700000000,
        "distinct_id": "u-big", "alias": "alias-499", "$insert_id": "alias-499"}});
    let merge = json!({"event": "$merge", "properties": {"time": 1700000000,
        "$distinct_ids": ["u-big", "u-other"], "$insert_id": "big-merge"}});
    let other = event("Seen", "u-other", "seen-other");
    let last_alias = event("Seen", "alias-498", "seen-alias");
    let (status, body) = server
        .import_records(&[one_more, merge, other, last_alias])
        .await;
    assert_eq!(status, 200, "{body}");

    let recorded = failures(&server).await;
    assert_eq!(recorded.len(), 2, "{recorded:?}");
    for failure in &recorded {
        let reason = failure["reason"].as_str().unwrap();
        assert!(reason.contains("501 ids"), "{reason}");
    }
    let seen = server.create_cohort("seen", json!({"event": "Seen"})).await;
    assert_eq!(server.members(seen).await, vec!["u-big", "u-other"]);
    server.stop().await;
}

#[tokio::test]
async fn merge_needs_a_secret_not_the_token() {
    let server = TestServer::start().await;
    set_mode(&server, "original").await;
    let merge = json!({"event": "$merge", "properties": {"time": 1700000000, "distinct_id": "u-a",
        "$distinct_ids": ["u-a", "u-b"], "$insert_id": "token-merge"}});
    let response = server
        .http
        .post(server.url("/import?strict=1"))
        .basic_auth(&server.token, Some(""))
        .body(format!("{merge}\n"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "the event itself is kept");
    let recorded = failures(&server).await;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert!(
        recorded[0]["reason"]
            .as_str()
            .unwrap()
            .contains("API secret"),
        "{recorded:?}"
    );

    let seen = json!({"event": "Seen", "properties": {"time": 1700000000, "distinct_id": "u-b", "$insert_id": "seen-b"}});
    server.import_records(&[seen]).await;
    let seen_cohort = server.create_cohort("seen", json!({"event": "Seen"})).await;
    assert_eq!(
        server.members(seen_cohort).await,
        vec!["u-b"],
        "u-b was not merged into u-a"
    );
    server.stop().await;
}

async fn profile(server: &TestServer, id: &str) -> Value {
    server.admin_get(&format!("/profiles/{id}")).await["properties"].clone()
}

#[tokio::test]
async fn merged_ids_update_canonical_profile() {
    let server = TestServer::start().await;
    set_mode(&server, "original").await;
    let (status, text) = server
        .engage(&[
            json!({"$token": server.token, "$distinct_id": "u-erin", "$set": {"plan": "free"}}),
            json!({"$token": server.token, "$distinct_id": "u-erin-old", "$set": {"city": "Lima"}}),
        ])
        .await;
    assert_eq!(status, 200, "{text}");

    let merge = json!({"event": "$merge", "properties": {"time": now_secs(),
        "$distinct_ids": ["u-erin", "u-erin-old"], "$insert_id": "merge-erin"}});
    let (status, body) = server.import_records(&[merge]).await;
    assert_eq!(status, 200, "{body}");
    assert!(failures(&server).await.is_empty());

    // An update sent with the merged id reaches the canonical id's profile.
    let (status, text) = server
        .engage(&[
            json!({"$token": server.token, "$distinct_id": "u-erin-old", "$set": {"plan": "pro"}}),
        ])
        .await;
    assert_eq!(status, 200, "{text}");
    let canonical = profile(&server, "u-erin").await;
    assert_eq!(canonical["plan"], "pro", "{canonical}");
    // As in Mixpanel, the merged id's own profile is not copied into the canonical one.
    assert!(canonical.get("city").is_none(), "{canonical}");
    server.stop().await;
}
