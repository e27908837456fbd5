//! The two partner endpoints: success paths, state changes and every documented error.

mod common;

use common::*;
use serde_json::{json, Value};

const CHANGES_MESSAGE: &str = "cohort_changes must be an array of objects each with key user_ids and/or device_ids mapping to an array of strings, or an aliases object";

// ---- cohort name endpoint ----

#[tokio::test]
async fn name_cohort_returns_201_success() {
    let h = start().await;
    let reply = h.name_cohort(IMPORT_KEY_A, "c1", "Power users").await;
    assert_eq!(reply.status, 201);
    assert_eq!(reply.body, json!({ "message": "success" }));
}

#[tokio::test]
async fn name_cohort_lists_cohort() {
    let h = start().await;
    h.name_cohort(IMPORT_KEY_A, "c1", "Power users").await;
    let reply = h.get("/_emulator/cohorts").await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.body,
        json!([{
            "workspace": 0,
            "cohort_id": "c1",
            "name": "Power users",
            "created_at": CREATED_AT,
            "member_count": 0,
            "user_id_count": 0,
            "device_id_count": 0,
            "alias_count": 0,
        }])
    );
}

#[tokio::test]
async fn second_name_call_renames_cohort() {
    let h = start().await;
    h.name_cohort(IMPORT_KEY_A, "c1", "Old name").await;
    h.change_cohort(IMPORT_KEY_A, "c1", json!([{ "user_ids": ["u1"] }]))
        .await;

    let mut body = name_body();
    body["name"] = json!("New name");
    body["created_at"] = json!("2024-05-01T00:00:00Z");
    let reply = h.post_json(&names_path(), &body).await;
    assert_eq!(reply.status, 201);

    let cohorts = h.emulator.cohorts();
    assert_eq!(cohorts.len(), 1);
    assert_eq!(cohorts[0].name, "New name");
    assert_eq!(
        cohorts[0].created_at, CREATED_AT,
        "created_at keeps the first value"
    );
    assert_eq!(h.members("c1").await, ["u1"], "rename keeps members");
}

// ---- user cohort endpoint ----

#[tokio::test]
async fn add_users_returns_201_success() {
    let h = start().await;
    h.name_cohort(IMPORT_KEY_A, "c1", "Power users").await;
    let reply = h
        .change_cohort(IMPORT_KEY_A, "c1", json!([{ "user_ids": ["u1"] }]))
        .await;
    assert_eq!(reply.status, 201);
    assert_eq!(reply.body, json!({ "message": "success" }));
}

#[tokio::test]
async fn members_are_sorted_bytewise() {
    let h = start().await;
    h.name_cohort(IMPORT_KEY_A, "c1", "Power users").await;
    h.change_cohort(
        IMPORT_KEY_A,
        "c1",
        json!([{ "user_ids": ["b", "B", "a", "é", "10", "9"] }]),
    )
    .await;
    assert_eq!(h.members("c1").await, ["10", "9", "B", "a", "b", "é"]);
}

#[tokio::test]
async fn adding_present_id_is_noop() {
    let h = start().await;
    h.name_cohort(IMPORT_KEY_A, "c1", "Power users").await;
    h.change_cohort(IMPORT_KEY_A, "c1", json!([{ "user_ids": ["u1", "u2"] }]))
        .await;
    let reply = h
        .change_cohort(IMPORT_KEY_A, "c1", json!([{ "user_ids": ["u1", "u1"] }]))
        .await;
    assert_eq!(reply.status, 201);
    assert_eq!(h.members("c1").await, ["u1", "u2"]);
}

#[tokio::test]
async fn removing_absent_id_is_noop() {
    let h = start().await;
    h.name_cohort(IMPORT_KEY_A, "c1", "Power users").await;
    h.change_cohort(IMPORT_KEY_A, "c1", json!([{ "user_ids": ["u1"] }]))
        .await;
    let reply = h
        .change_cohort(
            IMPORT_KEY_A,
            "c1",
            json!([{ "user_ids": ["u9"], "should_remove": true }]),
        )
        .await;
    assert_eq!(reply.status, 201);
    assert_eq!(h.members("c1").await, ["u1"]);
}

#[tokio::test]
async fn should_remove_removes_present_id() {
    let h = start().await;
    h.name_cohort(IMPORT_KEY_A, "c1", "Power users").await;
    h.change_cohort(IMPORT_KEY_A, "c1", json!([{ "user_ids": ["u1", "u2"] }]))
        .await;
    h.change_cohort(
        IMPORT_KEY_A,
        "c1",
        json!([{ "user_ids": ["u1"], "should_remove": true }]),
    )
    .await;
    assert_eq!(h.members("c1").await, ["u2"]);
}

#[tokio::test]
async fn should_remove_false_adds() {
    let h = start().await;
    h.name_cohort(IMPORT_KEY_A, "c1", "Power users").await;
    h.change_cohort(
        IMPORT_KEY_A,
        "c1",
        json!([{ "user_ids": ["u1"], "should_remove": false }]),
    )
    .await;
    assert_eq!(h.members("c1").await, ["u1"]);
}

#[tokio::test]
async fn changes_apply_in_request_order() {
    let h = start().await;
    h.name_cohort(IMPORT_KEY_A, "c1", "Power users").await;
    h.change_cohort(
        IMPORT_KEY_A,
        "c1",
        json!([
            { "user_ids": ["u1", "u2"] },
            { "user_ids": ["u1"], "should_remove": true },
            { "user_ids": ["u3"] },
        ]),
    )
    .await;
    assert_eq!(h.members("c1").await, ["u2", "u3"]);
}

#[tokio::test]
async fn device_ids_and_aliases_are_stored() {
    let h = start().await;
    h.name_cohort(IMPORT_KEY_A, "c1", "Power users").await;
    let reply = h
        .change_cohort(
            IMPORT_KEY_A,
            "c1",
            json!([{
                "user_ids": ["u1"],
                "device_ids": ["d2", "d1"],
                "aliases": [{ "alias_name": "a@example.com", "alias_label": "email" }],
            }]),
        )
        .await;
    assert_eq!(reply.status, 201);

    let devices = h.get("/_emulator/cohorts/c1/members?kind=device_ids").await;
    assert_eq!(devices.body, json!(["d1", "d2"]));
    let aliases = h.get("/_emulator/cohorts/c1/members?kind=aliases").await;
    assert_eq!(
        aliases.body,
        json!([{ "alias_name": "a@example.com", "alias_label": "email" }])
    );
    assert_eq!(h.members("c1").await, ["u1"]);
    assert_eq!(h.emulator.cohorts()[0].member_count, 4);
}

#[tokio::test]
async fn exactly_1000_ids_are_accepted() {
    let h = start().await;
    h.name_cohort(IMPORT_KEY_A, "c1", "Power users").await;
    let changes = json!([
        { "user_ids": ids("u", 600) },
        { "user_ids": ids("r", 300), "should_remove": true },
        { "device_ids": ids("d", 100) },
    ]);
    let reply = h.change_cohort(IMPORT_KEY_A, "c1", changes).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(h.members("c1").await.len(), 600);
}

#[tokio::test]
async fn ids_over_1000_are_rejected() {
    let h = start().await;
    h.name_cohort(IMPORT_KEY_A, "c1", "Power users").await;
    let changes = json!([
        { "user_ids": ids("u", 600) },
        { "user_ids": ids("r", 300), "should_remove": true },
        { "aliases": [{ "alias_name": "x", "alias_label": "y" }] },
        { "device_ids": ids("d", 100) },
    ]);
    let reply = h.change_cohort(IMPORT_KEY_A, "c1", changes).await;
    assert_eq!(reply.status, 400);
    assert_eq!(
        reply.message(),
        "Only 1,000 user_ids, device_ids, and aliases are allowed per request"
    );
    assert!(
        h.members("c1").await.is_empty(),
        "a rejected request changes nothing"
    );
}

#[tokio::test]
async fn empty_changes_probe_succeeds() {
    let h = start().await;
    h.name_cohort(IMPORT_KEY_A, "c1", "Power users").await;
    h.change_cohort(IMPORT_KEY_A, "c1", json!([{ "user_ids": ["u1"] }]))
        .await;
    let reply = h.change_cohort(IMPORT_KEY_A, "c1", json!([])).await;
    assert_eq!(reply.status, 201);
    assert_eq!(reply.message(), "success");
    assert_eq!(h.members("c1").await, ["u1"]);
}

#[tokio::test]
async fn empty_changes_probe_succeeds_for_unknown_cohort() {
    let h = start().await;
    let reply = h.change_cohort(IMPORT_KEY_A, "probe", json!([])).await;
    assert_eq!(reply.status, 201);
    assert!(h.emulator.cohorts().is_empty(), "a probe creates no cohort");
}

#[tokio::test]
async fn users_for_unknown_cohort_are_rejected() {
    let h = start().await;
    let reply = h
        .change_cohort(IMPORT_KEY_A, "never-named", json!([{ "user_ids": ["u1"] }]))
        .await;
    assert_eq!(reply.status, 400);
    assert!(
        reply
            .message()
            .starts_with("cohort_id \"never-named\" does not exist"),
        "{}",
        reply.message()
    );
}

// ---- workspaces and keys ----

#[tokio::test]
async fn same_cohort_id_in_two_workspaces_is_two_cohorts() {
    let h = start().await;
    h.name_cohort(IMPORT_KEY_A, "c1", "In A").await;
    h.name_cohort(IMPORT_KEY_B, "c1", "In B").await;
    h.change_cohort(IMPORT_KEY_A, "c1", json!([{ "user_ids": ["a1"] }]))
        .await;
    h.change_cohort(IMPORT_KEY_B, "c1", json!([{ "user_ids": ["b1", "b2"] }]))
        .await;

    let cohorts = h.get("/_emulator/cohorts").await.body;
    let listed: Vec<(u64, &str, u64)> = cohorts
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["workspace"].as_u64().unwrap(),
                c["name"].as_str().unwrap(),
                c["member_count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(listed, [(0, "In A", 1), (1, "In B", 2)]);
    assert_eq!(h.members("c1").await, ["a1"]);
    let b = h.get("/_emulator/cohorts/c1/members?workspace=1").await;
    assert_eq!(b.body, json!(["b1", "b2"]));
}

#[tokio::test]
async fn cohort_in_other_workspace_is_unknown() {
    let h = start().await;
    h.name_cohort(IMPORT_KEY_A, "c1", "In A").await;
    let reply = h
        .change_cohort(IMPORT_KEY_B, "c1", json!([{ "user_ids": ["u1"] }]))
        .await;
    assert_eq!(reply.status, 400);
    assert!(
        reply.message().contains("does not exist"),
        "{}",
        reply.message()
    );
}

#[tokio::test]
async fn second_partner_api_key_is_accepted() {
    let h = start().await;
    let mut body = name_body();
    body["partner_api_key"] = json!(PARTNER_KEY_EU);
    let reply = h.post_json(&names_path(), &body).await;
    assert_eq!(reply.status, 201);
}

// ---- documented errors, one per condition ----

async fn assert_error(path: &str, body: Value, status: u16, message: &str) {
    let h = start().await;
    let reply = h.post_json(path, &body).await;
    assert_eq!(reply.status, status, "body: {}", reply.body);
    assert_eq!(reply.message(), message);
}

fn without(mut body: Value, key: &str) -> Value {
    body.as_object_mut().unwrap().remove(key);
    body
}

fn with(mut body: Value, key: &str, value: Value) -> Value {
    body[key] = value;
    body
}

#[tokio::test]
async fn wrong_partner_name_is_401() {
    let path = "/partners/someone-else/cohorts";
    assert_error(path, name_body(), 401, "Invalid Partner API key").await;
}

#[tokio::test]
async fn wrong_partner_name_on_users_is_401() {
    let path = "/partners/someone-else/cohorts/users";
    assert_error(path, users_body(), 401, "Invalid Partner API key").await;
}

#[tokio::test]
async fn unknown_partner_api_key_is_401() {
    let body = with(name_body(), "partner_api_key", json!("not-a-key"));
    assert_error(&names_path(), body, 401, "Invalid Partner API key").await;
}

#[tokio::test]
async fn missing_partner_api_key_is_401() {
    let body = without(users_body(), "partner_api_key");
    assert_error(&users_path(), body, 401, "Invalid Partner API key").await;
}

#[tokio::test]
async fn unknown_client_secret_is_401() {
    let body = with(users_body(), "client_secret", json!("not-a-key"));
    assert_error(&users_path(), body, 401, "Invalid client secret").await;
}

#[tokio::test]
async fn missing_client_secret_is_401() {
    let body = without(name_body(), "client_secret");
    assert_error(&names_path(), body, 401, "Invalid client secret").await;
}

#[tokio::test]
async fn partner_key_as_client_secret_is_401() {
    let body = with(name_body(), "client_secret", json!(PARTNER_KEY));
    assert_error(&names_path(), body, 401, "Invalid client secret").await;
}

#[tokio::test]
async fn missing_cohort_id_is_400() {
    let body = without(name_body(), "cohort_id");
    assert_error(&names_path(), body, 400, "cohort_id must be a valid string").await;
}

#[tokio::test]
async fn numeric_cohort_id_is_400() {
    let body = with(users_body(), "cohort_id", json!(42));
    assert_error(&users_path(), body, 400, "cohort_id must be a valid string").await;
}

#[tokio::test]
async fn empty_cohort_id_is_400() {
    let body = with(name_body(), "cohort_id", json!(""));
    assert_error(&names_path(), body, 400, "cohort_id must be a valid string").await;
}

#[tokio::test]
async fn missing_cohort_changes_is_400() {
    let body = without(users_body(), "cohort_changes");
    assert_error(&users_path(), body, 400, CHANGES_MESSAGE).await;
}

#[tokio::test]
async fn cohort_changes_as_string_is_400() {
    let body = with(
        users_body(),
        "cohort_changes",
        json!("[{\"user_ids\":[\"u1\"]}]"),
    );
    assert_error(&users_path(), body, 400, CHANGES_MESSAGE).await;
}

#[tokio::test]
async fn cohort_changes_element_not_object_is_400() {
    let body = with(users_body(), "cohort_changes", json!(["u1"]));
    assert_error(&users_path(), body, 400, CHANGES_MESSAGE).await;
}

#[tokio::test]
async fn user_ids_not_array_is_400() {
    let body = with(
        users_body(),
        "cohort_changes",
        json!([{ "user_ids": "u1" }]),
    );
    assert_error(&users_path(), body, 400, CHANGES_MESSAGE).await;
}

#[tokio::test]
async fn user_id_not_string_is_400() {
    let body = with(users_body(), "cohort_changes", json!([{ "user_ids": [1] }]));
    assert_error(&users_path(), body, 400, CHANGES_MESSAGE).await;
}

#[tokio::test]
async fn unknown_change_key_is_400() {
    let changes = json!([{ "user_ids": ["u1"], "external_ids": ["u2"] }]);
    let body = with(users_body(), "cohort_changes", changes);
    assert_error(&users_path(), body, 400, CHANGES_MESSAGE).await;
}

#[tokio::test]
async fn should_remove_not_boolean_is_400() {
    let changes = json!([{ "user_ids": ["u1"], "should_remove": "yes" }]);
    let body = with(users_body(), "cohort_changes", changes);
    assert_error(&users_path(), body, 400, CHANGES_MESSAGE).await;
}

#[tokio::test]
async fn malformed_alias_is_400() {
    let changes = json!([{ "aliases": [{ "alias_name": "a" }] }]);
    let body = with(users_body(), "cohort_changes", changes);
    assert_error(&users_path(), body, 400, CHANGES_MESSAGE).await;
}

#[tokio::test]
async fn cohort_changes_error_names_the_element() {
    let h = start().await;
    let changes = json!([{ "user_ids": ["u1"] }, { "user_ids": ["u2", 7] }]);
    let reply = h
        .post_json(
            &users_path(),
            &with(users_body(), "cohort_changes", changes),
        )
        .await;
    assert_eq!(
        reply.body["errors"],
        json!(["cohort_changes[1].user_ids[1] is a number, expected a string"])
    );
}

#[tokio::test]
async fn missing_name_is_400() {
    let body = without(name_body(), "name");
    assert_error(&names_path(), body, 400, "name must be a non-empty string").await;
}

#[tokio::test]
async fn empty_name_is_400() {
    let body = with(name_body(), "name", json!(""));
    assert_error(&names_path(), body, 400, "name must be a non-empty string").await;
}

#[tokio::test]
async fn missing_created_at_is_400() {
    let body = without(name_body(), "created_at");
    let message = "created_at must be a valid time as an ISO-8601 string";
    assert_error(&names_path(), body, 400, message).await;
}

#[tokio::test]
async fn non_iso8601_created_at_is_400() {
    let body = with(name_body(), "created_at", json!("Jan 21 2021"));
    let message = "created_at must be a valid time as an ISO-8601 string";
    assert_error(&names_path(), body, 400, message).await;
}

#[tokio::test]
async fn non_json_body_is_400() {
    let h = start().await;
    let reply = h.post_raw(&names_path(), "partner_api_key=x").await;
    assert_eq!(reply.status, 400);
    assert!(
        reply
            .message()
            .starts_with("request body is not valid JSON"),
        "{}",
        reply.message()
    );
}

#[tokio::test]
async fn json_array_body_is_400() {
    let h = start().await;
    let reply = h.post_raw(&users_path(), "[]").await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.message(), "request body must be a JSON object");
}

#[tokio::test]
async fn rejected_name_request_creates_nothing() {
    let h = start().await;
    let body = with(name_body(), "created_at", json!("soon"));
    h.post_json(&names_path(), &body).await;
    assert!(h.emulator.cohorts().is_empty());
}
