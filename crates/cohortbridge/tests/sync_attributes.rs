//! The attribute delivery mode against the Braze emulator's `/users/track`: cohort names in an
//! array custom attribute, at most 75 objects per request, renames, removal, partial failures
//! and users unknown to the workspace.

mod common;

use std::collections::BTreeSet;

use braze_emulator::{Config as EmulatorConfig, Emulator};
use common::{TestEmulator, TestServer, PARTNER_API_KEY, PARTNER_NAME};
use serde_json::{json, Value};

const REST_API_KEY: &str = "rest-key-test-secret";
const ATTRIBUTE: &str = "mixpanel_cohorts";

async fn emulator_with(known_users: Option<BTreeSet<String>>) -> TestEmulator {
    let mut emulator = Emulator::new(EmulatorConfig {
        partner_name: PARTNER_NAME.into(),
        partner_api_keys: vec![PARTNER_API_KEY.into()],
        data_import_keys: vec!["unused-data-import-key".into()],
    })
    .with_rest_api_keys(vec![REST_API_KEY.into()]);
    if let Some(users) = known_users {
        emulator = emulator.with_known_users(users);
    }
    let addr = emulator
        .clone()
        .spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    TestEmulator {
        base: format!("http://{addr}"),
        emulator,
    }
}

async fn connect_attributes(server: &TestServer, emulator: &TestEmulator) {
    let (status, body) = server
        .admin_post(
            "/connections",
            &json!({"name": "attrs", "base_url": emulator.base, "delivery": "attributes",
                "rest_api_key": REST_API_KEY}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["delivery"], "attributes");
    assert_eq!(body["attribute_name"], ATTRIBUTE);
}

/// Gives users `range` the plan and the Braze id `ext-<n>`.
async fn set_plans(server: &TestServer, range: std::ops::Range<usize>, plan: &str) {
    let updates: Vec<Value> = range
        .map(|n| {
            json!({"$token": server.token, "$distinct_id": format!("u{n}"),
                "$set": {"plan": plan, "$braze_external_id": format!("ext-{n}")}})
        })
        .collect();
    let (status, text) = server.engage(&updates).await;
    assert_eq!(status, 200, "{text}");
}

fn ids(range: std::ops::Range<usize>) -> Vec<String> {
    let mut ids: Vec<String> = range.map(|n| format!("ext-{n}")).collect();
    ids.sort();
    ids
}

async fn run(server: &TestServer, sync_id: i64) -> Value {
    let (status, body) = server
        .admin_post(&format!("/syncs/{sync_id}/run"), &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test]
async fn attributes_follow_the_cohort() {
    let emulator = emulator_with(None).await;
    let server = TestServer::start_with(|c| c.braze_partner_api_key = None).await;
    connect_attributes(&server, &emulator).await;
    set_plans(&server, 0..80, "pro").await;
    let cohort = server
        .create_cohort(
            "Pro",
            json!({"profile": "plan", "op": "eq", "value": "pro"}),
        )
        .await;

    let (status, body) = server
        .admin_post(
            "/exports",
            &json!({"cohort_id": cohort, "connection": "attrs", "mode": "dynamic"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let run_body = &body["run"];
    assert_eq!(run_body["status"], "succeeded", "{body}");
    assert_eq!(run_body["added"], 80);
    assert_eq!(run_body["requests"], 2, "75 objects, then 5");
    assert_eq!(
        emulator.emulator.attribute_holders(0, ATTRIBUTE, "Pro"),
        ids(0..80)
    );
    let sync_id = body["sync"]["id"].as_i64().unwrap();

    set_plans(&server, 0..10, "free").await;
    set_plans(&server, 80..83, "pro").await;
    let body = run(&server, sync_id).await;
    assert_eq!(body["added"], 3, "{body}");
    assert_eq!(body["removed"], 10, "{body}");
    assert_eq!(body["requests"], 1, "{body}");
    assert_eq!(
        emulator.emulator.attribute_holders(0, ATTRIBUTE, "Pro"),
        ids(10..83)
    );

    let (status, _) = server
        .admin_post(
            &format!("/cohorts/{cohort}/rename"),
            &json!({"name": "Pro users"}),
        )
        .await;
    assert_eq!(status, 200);
    let body = run(&server, sync_id).await;
    assert_eq!(body["status"], "succeeded", "{body}");
    assert!(emulator
        .emulator
        .attribute_holders(0, ATTRIBUTE, "Pro")
        .is_empty());
    assert_eq!(
        emulator
            .emulator
            .attribute_holders(0, ATTRIBUTE, "Pro users"),
        ids(10..83)
    );
    let body = run(&server, sync_id).await;
    assert_eq!(body["requests"], 0, "the rename is done once: {body}");

    let (status, body) = server
        .admin_delete(&format!("/syncs/{sync_id}?remove_members=true"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(emulator
        .emulator
        .attribute_holders(0, ATTRIBUTE, "Pro users")
        .is_empty());
    server.stop().await;
}

#[tokio::test]
async fn attribute_connection_checks_its_key() {
    let emulator = emulator_with(None).await;
    let server = TestServer::start_with(|c| c.braze_partner_api_key = None).await;
    let (status, body) = server
        .admin_post(
            "/connections",
            &json!({"name": "attrs", "base_url": emulator.base, "delivery": "attributes",
                "rest_api_key": "wrong-key"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("HTTP 401"));

    let (status, body) = server
        .admin_post(
            "/connections",
            &json!({"name": "attrs", "base_url": emulator.base, "delivery": "attributes"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("`rest_api_key`"));

    let (status, body) = server
        .admin_post(
            "/connections",
            &json!({"name": "x", "base_url": emulator.base, "delivery": "email"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("\"email\""));
    server.stop().await;
}

#[tokio::test]
async fn rejected_objects_are_resent() {
    let emulator = emulator_with(None).await;
    let server = TestServer::start_with(|c| c.braze_partner_api_key = None).await;
    connect_attributes(&server, &emulator).await;
    set_plans(&server, 0..3, "pro").await;
    let cohort = server
        .create_cohort(
            "Pro",
            json!({"profile": "plan", "op": "eq", "value": "pro"}),
        )
        .await;
    let reply = json!({"message": "success", "errors": [
        {"type": "invalid external_id", "input_array": "attributes", "index": 1}]});
    emulator
        .inject(json!({"status": 201, "body": reply.to_string()}))
        .await;
    let (status, body) = server
        .admin_post(
            "/exports",
            &json!({"cohort_id": cohort, "connection": "attrs", "mode": "dynamic"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["run"]["added"], 2, "one object was rejected: {body}");
    let sync_id = body["sync"]["id"].as_i64().unwrap();

    let body = run(&server, sync_id).await;
    assert_eq!(body["added"], 1, "only the rejected id is resent: {body}");
    let operations = server
        .admin_get(&format!("/runs/{}/operations", body["id"]))
        .await;
    let added: Vec<&Value> = operations["operations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|op| op["operation"] == "add")
        .collect();
    assert_eq!(added.len(), 1);
    assert_eq!(added[0]["external_id"], "ext-1");
    server.stop().await;
}

#[tokio::test]
async fn unknown_users_are_ignored_by_braze() {
    let known = BTreeSet::from(["ext-0".to_owned(), "ext-1".to_owned()]);
    let emulator = emulator_with(Some(known)).await;
    let server = TestServer::start().await;
    connect_attributes(&server, &emulator).await;
    let (status, body) = server
        .admin_post(
            "/connections",
            &json!({"name": "partner", "base_url": emulator.base,
                "data_import_key": "unused-data-import-key"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    set_plans(&server, 0..4, "pro").await;
    let cohort = server
        .create_cohort(
            "Pro",
            json!({"profile": "plan", "op": "eq", "value": "pro"}),
        )
        .await;
    for connection in ["attrs", "partner"] {
        let (status, body) = server
            .admin_post(
                "/exports",
                &json!({"cohort_id": cohort, "connection": connection, "mode": "once"}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["run"]["status"], "succeeded", "{connection}: {body}");
    }
    assert_eq!(
        emulator.emulator.attribute_holders(0, ATTRIBUTE, "Pro"),
        ids(0..2)
    );
    assert_eq!(emulator.members("cohortbridge-test-1-1").await, ids(0..2));
    server.stop().await;
}
