//! Braze Currents batches through `POST /currents`, and the MTU figure they feed.

mod common;

use common::TestServer;
use serde_json::{json, Value};

/// Builds a Currents event for `user` at `time` (epoch seconds).
fn currents_event(event_type: &str, id: &str, user: &str, time: i64) -> Value {
    json!({
        "event_type": event_type,
        "id": id,
        "time": time,
        "user": {"user_id": format!("braze-{user}"), "external_user_id": user, "timezone": "Europe/Berlin"},
        "properties": {"campaign_name": "Winback", "dispatch_id": "d-1", "email_address": "someone@example.com"}
    })
}

async fn post_currents(
    server: &TestServer,
    token: &str,
    batch: &Value,
) -> (reqwest::StatusCode, Value) {
    let response = server
        .http
        .post(server.url("/currents"))
        .bearer_auth(token)
        .header("Braze-Currents-Version", "1")
        .json(batch)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// 2026-11-10T00:00:00Z, inside the month the MTU checks look at.
const NOVEMBER_10: i64 = 1_794_268_800;

#[tokio::test]
async fn email_open_counts_but_email_send_does_not() {
    let server = TestServer::start().await;
    let token = server.currents_token.clone();

    let send_only = json!({"events": [currents_event("users.messages.email.Send", "send-1", "u-mail", NOVEMBER_10)]});
    let (status, reply) = post_currents(&server, &token, &send_only).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["accepted"], 1);
    assert_eq!(
        server.admin_get("/mtu?month=2026-11").await["users"],
        0,
        "an Email Send alone is exempt"
    );

    let with_open = json!({"events": [
        currents_event("users.messages.email.Send", "send-1", "u-mail", NOVEMBER_10),
        currents_event("users.messages.email.Open", "open-1", "u-mail", NOVEMBER_10 + 60)
    ]});
    let (status, _) = post_currents(&server, &token, &with_open).await;
    assert_eq!(status, 200);
    assert_eq!(
        server.admin_get("/mtu?month=2026-11").await["users"],
        1,
        "the Email Open counts"
    );
    assert_eq!(
        server.event_count().await,
        2,
        "the resent Email Send was deduplicated"
    );

    let events = server.admin_get("/events?distinct_id=u-mail").await;
    let names: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["Email Send", "Email Open"]);
    for event in events.as_array().unwrap() {
        assert_eq!(event["properties"]["$partner_id"], "braze", "{event}");
    }
    server.stop().await;
}

#[tokio::test]
async fn identity_events_never_count() {
    let server = TestServer::start().await;
    let records = [
        json!({"event": "$identify", "properties": {"time": NOVEMBER_10, "distinct_id": "u-id", "$insert_id": "a"}}),
        json!({"event": "$create_alias", "properties": {"time": NOVEMBER_10, "distinct_id": "u-id", "$insert_id": "b"}}),
        json!({"event": "Canvas Entry", "properties": {"time": NOVEMBER_10, "distinct_id": "u-id", "$insert_id": "c", "$partner_id": "braze"}}),
        json!({"event": "Canvas Entry", "properties": {"time": NOVEMBER_10, "distinct_id": "u-own", "$insert_id": "d"}}),
    ];
    let (status, body) = server.import_records(&records).await;
    assert_eq!(status, 200, "{body}");
    // u-own's Canvas Entry carries no $partner_id, so it is the customer's own event and counts.
    assert_eq!(server.admin_get("/mtu?month=2026-11").await["users"], 1);
    let report = server.admin_get("/mtu?month=2026-11").await;
    assert_eq!(
        report["exempt_only_users"], 1,
        "u-id has only identity and outreach events"
    );
    let via_default_route = server
        .http
        .get(server.url("/api/v1/mtu?month=2026-11"))
        .bearer_auth(common::ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(via_default_route["users"], 1);
    assert_eq!(server.admin_get("/mtu?month=2026-10").await["users"], 0);
    let (status, reply) = server.admin_get_status("/mtu?month=2026-13").await;
    assert_eq!(status, 400);
    assert!(
        reply["error"].as_str().unwrap().contains("2026-13"),
        "{reply}"
    );
    server.stop().await;
}

#[tokio::test]
async fn invalid_events_are_quarantined_with_2xx() {
    let server = TestServer::start().await;
    let batch = json!({"events": [
        currents_event("users.messages.email.Click", "click-1", "u-a", NOVEMBER_10),
        currents_event("users.messages.email.Open", "placeholder", "undefined", NOVEMBER_10),
        currents_event("users.messages.email.Open", "blank", "   ", NOVEMBER_10),
        currents_event("users.messages.email.Open", "year-3000", "u-a", 32_503_680_000),
        currents_event("users.messages.email.Open", "epoch", "u-a", 0),
        {"event_type": "users.messages.email.Open", "id": "no-time", "user": {"external_user_id": "u-a"}},
        currents_event(&"x".repeat(300), "long-type", "u-a", NOVEMBER_10)
    ]});
    let (status, reply) = post_currents(&server, &server.currents_token, &batch).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["accepted"], 1);
    assert_eq!(reply["quarantined"], 6);
    let stats = server.admin_get("/stats").await;
    assert_eq!(stats["events"], 1);
    assert_eq!(stats["currents_quarantined"], 6);
    server.stop().await;
}

#[tokio::test]
async fn unknown_types_and_unattributed_events_are_stored() {
    let server = TestServer::start().await;
    let batch = json!({"events": [
        currents_event("users.messages.pigeon.Send", "pigeon-1", "u-a", NOVEMBER_10),
        {"event_type": "users.messages.email.Open", "id": "no-user", "time": NOVEMBER_10, "user": {"user_id": "b"}, "properties": {}},
        {"event_type": "users.behaviors.CustomEvent", "id": "custom-1", "time": NOVEMBER_10,
         "user": {"external_user_id": "u-a"}, "properties": {"name": "Played", "custom_properties": {"level": 3}}},
        {"event_type": "users.behaviors.Purchase", "id": "custom-1", "time": NOVEMBER_10,
         "user": {"external_user_id": "u-a"}, "properties": {"product_id": "p", "purchase_properties": "{\"size\": \"M\"}"}}
    ]});
    let (status, reply) = post_currents(&server, &server.currents_token, &batch).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["accepted"], 4, "{reply}");
    assert_eq!(
        server.event_count().await,
        4,
        "one id reused by two types gives two events"
    );

    let events = server.admin_get("/events?distinct_id=u-a").await;
    let by_name = |name: &str| {
        events
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["event"] == name)
            .cloned()
    };
    assert!(by_name("users.messages.pigeon.Send").is_some(), "{events}");
    let custom =
        by_name("[Braze Custom Event] Played").expect("custom event stored under its Braze name");
    assert_eq!(custom["properties"]["[Custom event property] level"], 3);
    let purchase = by_name("Purchase").unwrap();
    assert_eq!(purchase["properties"]["[Purchase property] size"], "M");

    // The unattributed Email Open is stored but belongs to no user.
    assert_eq!(
        server
            .admin_get("/events?distinct_id=")
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(server.admin_get("/mtu?month=2026-11").await["users"], 1);
    server.stop().await;
}

#[tokio::test]
async fn currents_authentication_and_shape() {
    let server = TestServer::start().await;
    let batch = json!({"events": []});
    let (status, _) = post_currents(&server, "wrong-token", &batch).await;
    assert_eq!(status, 401);
    let (status, _) = post_currents(&server, &server.token, &batch).await;
    assert_eq!(status, 401, "the project token is not the Currents token");
    let (status, reply) = post_currents(&server, &server.currents_token, &batch).await;
    assert_eq!(status, 200, "an empty batch with a good token is accepted");
    assert_eq!(reply["accepted"], 0);
    let (status, reply) =
        post_currents(&server, &server.currents_token, &json!({"data": []})).await;
    assert_eq!(status, 400);
    assert!(
        reply["error"].as_str().unwrap().contains("events"),
        "{reply}"
    );

    let response = server
        .http
        .post(server.url("/currents"))
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401, "no Authorization header");
    server.stop().await;
}

#[tokio::test]
async fn braze_currents_credential_marks_imported_events() {
    let server = TestServer::start().await;
    let (status, created) = server
        .admin_post(
            "/credentials",
            &json!({"name": "braze mixpanel connector", "braze_currents": true}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert_eq!(created["credential"]["partner_id"], "braze");

    // Braze's Mixpanel connector sends events already carrying their Mixpanel names.
    let body = [
        json!({"event": "Email Send", "properties": {"time": NOVEMBER_10, "distinct_id": "u-conn", "$insert_id": "c1"}}),
        json!({"event": "Email Send", "properties": {"time": NOVEMBER_10, "distinct_id": "u-own", "$insert_id": "c2"}}),
    ];
    let response = server
        .http
        .post(server.url("/import?strict=1"))
        .basic_auth(&secret, Some(""))
        .body(format!("{}\n", body[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // The same event name imported with the project's API secret carries no partner mark.
    let (status, _) = server.import_records(&body[1..]).await;
    assert_eq!(status, 200);

    let marked = server.admin_get("/events?distinct_id=u-conn").await;
    assert_eq!(marked[0]["properties"]["$partner_id"], "braze");
    let own = server.admin_get("/events?distinct_id=u-own").await;
    assert!(own[0]["properties"].get("$partner_id").is_none(), "{own}");
    assert_eq!(
        server.admin_get("/mtu?month=2026-11").await["users"],
        1,
        "only u-own counts"
    );

    let listed = server.admin_get("/credentials").await;
    assert_eq!(listed[0]["name"], "braze mixpanel connector");
    assert!(
        !listed.to_string().contains(&secret),
        "the secret is shown only at creation"
    );
    let (status, _) = server
        .admin_post("/credentials", &json!({"name": "braze mixpanel connector"}))
        .await;
    assert_eq!(status, 409);
    server.stop().await;
}

#[tokio::test]
async fn mtu_months_follow_project_time_zone() {
    let server = TestServer::start().await;
    // 2026-10-31T23:30:00Z is already November in Berlin (UTC+1).
    let late_october_utc = 1_793_489_400;
    let (status, body) = server
        .import_records(&[json!({"event": "Opened", "properties": {"time": late_october_utc, "distinct_id": "u-tz", "$insert_id": "tz1"}})])
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.admin_get("/mtu?month=2026-10").await["users"], 1);
    assert_eq!(server.admin_get("/mtu?month=2026-11").await["users"], 0);

    let response = server
        .http
        .put(server.url("/api/v1/projects/1/timezone"))
        .bearer_auth(common::ADMIN_KEY)
        .json(&json!({"timezone": "Europe/Berlin"}))
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{}",
        response.text().await.unwrap()
    );
    assert_eq!(server.admin_get("/mtu?month=2026-10").await["users"], 0);
    let november = server.admin_get("/mtu?month=2026-11").await;
    assert_eq!(november["users"], 1, "{november}");
    assert_eq!(
        november["by_source"]["import"]["counted_events"], 1,
        "{november}"
    );
    server.stop().await;
}

#[tokio::test]
async fn braze_events_land_on_an_aliased_user() {
    let server = TestServer::start().await;
    let (status, body) = server
        .admin_post("/identity-mode", &json!({"identity_mode": "original"}))
        .await;
    assert!(status.is_success(), "{body}");
    // Original ID Merge: the Braze external id is an alias of the Mixpanel distinct id.
    let alias = json!({"event": "$create_alias", "properties": {"time": NOVEMBER_10, "distinct_id": "u-alice",
        "alias": "braze-ext-alice", "$insert_id": "alias-1"}});
    let own = json!({"event": "Viewed", "properties": {"time": NOVEMBER_10, "distinct_id": "u-alice", "$insert_id": "v1"}});
    let (status, body) = server.import_records(&[alias, own]).await;
    assert_eq!(status, 200, "{body}");

    let batch = json!({"events": [currents_event("users.messages.email.Open", "open-alias", "braze-ext-alice", NOVEMBER_10 + 60)]});
    let (status, reply) = post_currents(&server, &server.currents_token, &batch).await;
    assert_eq!(status, 200, "{reply}");

    let opened = server
        .create_cohort("opened", json!({"event": "Email Open"}))
        .await;
    assert_eq!(
        server.members(opened).await,
        vec!["u-alice"],
        "the Braze event resolves to the aliased user"
    );
    let report = server.admin_get("/mtu?month=2026-11").await;
    assert_eq!(report["users"], 1, "one user, not two: {report}");
    server.stop().await;
}

#[tokio::test]
async fn numbers_keep_their_exact_values() {
    let server = TestServer::start().await;
    // Sent as text, so that nothing in the test rounds the numbers first. The purchase
    // properties arrive in the JSON string form that storage files use.
    let body = format!(
        r#"{{"events": [
        {{"event_type": "users.behaviors.CustomEvent", "id": "exact-1", "time": {NOVEMBER_10},
          "user": {{"external_user_id": "u-exact"}},
          "properties": {{"name": "Paid", "custom_properties": {{"amount": 0.1000000000000000055511151231257827,
             "big": 123456789012345678901234567890, "price": 19.90}}}}}},
        {{"event_type": "users.behaviors.Purchase", "id": "exact-2", "time": {NOVEMBER_10},
          "user": {{"external_user_id": "u-exact"}},
          "properties": {{"product_id": "p", "price": 1.10,
             "purchase_properties": "{{\"weight\": 2.675000000000000000001, \"count\": 18446744073709551617}}"}}}}
    ]}}"#
    );
    let response = server
        .http
        .post(server.url("/currents"))
        .bearer_auth(&server.currents_token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    // The workspace builds serde_json with arbitrary precision, so the reply is read back
    // digit for digit too.
    let stored = server
        .admin_get("/events?distinct_id=u-exact")
        .await
        .to_string();
    for exact in [
        r#""[Custom event property] amount":0.1000000000000000055511151231257827"#,
        r#""[Custom event property] big":123456789012345678901234567890"#,
        r#""[Custom event property] price":19.90"#,
        r#""[Purchase property] weight":2.675000000000000000001"#,
        r#""[Purchase property] count":18446744073709551617"#,
    ] {
        assert!(stored.contains(exact), "{exact} missing from {stored}");
    }
    server.stop().await;
}

#[tokio::test]
async fn unsupported_encoding_is_refused_by_name() {
    let server = TestServer::start().await;
    let response = server
        .http
        .post(server.url("/currents"))
        .bearer_auth(&server.currents_token)
        .header("content-encoding", "br")
        .header("content-type", "application/json")
        .body(r#"{"events":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    let reply: Value = response.json().await.unwrap();
    assert!(reply["error"].as_str().unwrap().contains("`br`"), "{reply}");
    server.stop().await;
}
