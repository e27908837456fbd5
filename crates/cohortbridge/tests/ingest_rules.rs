//! Mixpanel's ingestion rules through the real HTTP server: string truncation, the property
//! limit, server-added properties, `/groups`, `/engage` modifiers, path prefixes and
//! deduplication under concurrency.

mod common;

use common::{now_secs, TestServer};
use serde_json::{json, Value};

async fn events_of(server: &TestServer, distinct_id: &str) -> Vec<Value> {
    let query = serde_urlencoded::to_string([("distinct_id", distinct_id)]).unwrap();
    server
        .admin_get(&format!("/events?{query}"))
        .await
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test]
async fn long_strings_are_truncated() {
    let server = TestServer::start().await;
    let long = "x".repeat(300);
    let record = json!({"event": "Long", "properties": {"time": 1700000000, "distinct_id": "u-long",
        "$insert_id": "long-1", "text": long, "tags": [long]}});
    let (status, body) = server.import_records(&[record]).await;
    assert_eq!(status, 200, "{body}");
    let stored = events_of(&server, "u-long").await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["properties"]["text"], "x".repeat(255));
    assert_eq!(stored[0]["properties"]["tags"][0], "x".repeat(255));
    server.stop().await;
}

#[tokio::test]
async fn too_many_properties_are_rejected() {
    let server = TestServer::start().await;
    let mut properties: serde_json::Map<String, Value> =
        (0..256).map(|i| (format!("p{i}"), json!(i))).collect();
    properties.insert("time".into(), json!(1700000000));
    properties.insert("distinct_id".into(), json!("u-wide"));
    properties.insert("$insert_id".into(), json!("wide-1"));
    let wide = json!({"event": "Wide", "properties": properties});
    let (status, body) = server.import_records(&[wide]).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["failed_records"][0]["field"], "properties");
    assert_eq!(body["failed_records"][0]["$insert_id"], "wide-1");
    assert_eq!(body["num_records_imported"], 0);
    assert_eq!(server.event_count().await, 0);
    server.stop().await;
}

#[tokio::test]
async fn server_properties_are_added() {
    let server = TestServer::start().await;
    let before = chrono::Utc::now().timestamp_millis();
    let imported = json!({"event": "Imported", "properties": {"time": 1700000000,
        "distinct_id": "u-server", "$insert_id": "server-1"}});
    let (status, body) = server.import_records(&[imported]).await;
    assert_eq!(status, 200, "{body}");
    let tracked = json!({"event": "Tracked", "properties": {"token": server.token,
        "distinct_id": "u-server", "time": now_secs()}});
    let (status, text) = server.track(&[tracked]).await;
    assert_eq!(status, 200, "{text}");
    let after = chrono::Utc::now().timestamp_millis();

    let stored = events_of(&server, "u-server").await;
    assert_eq!(stored.len(), 2);
    let host = server.base.trim_start_matches("http://");
    for event in &stored {
        let properties = &event["properties"];
        assert_eq!(properties["$mp_api_endpoint"], host, "{event}");
        let received = properties["$mp_api_timestamp_ms"].as_i64().unwrap();
        assert!((before..=after).contains(&received), "{event}");
        let processed = properties["mp_processing_time_ms"].as_i64().unwrap();
        assert!(processed >= received, "{event}");
    }
    let imported = stored.iter().find(|e| e["event"] == "Imported").unwrap();
    assert_eq!(imported["properties"]["$import"], true);
    let tracked = stored.iter().find(|e| e["event"] == "Tracked").unwrap();
    assert!(tracked["properties"].get("$import").is_none());
    server.stop().await;
}

async fn send_groups(server: &TestServer, path: &str, updates: &[Value]) -> (u16, String) {
    let data = Value::Array(updates.to_vec()).to_string();
    let response = server
        .http
        .post(server.url(path))
        .form(&[("data", data)])
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

async fn group_profile(server: &TestServer, key: &str, id: &str) -> (u16, Value) {
    let (status, body) = server
        .admin_get_status(&format!("/groups/{key}/{id}"))
        .await;
    (status.as_u16(), body["properties"].clone())
}

#[tokio::test]
async fn groups_apply_every_operation() {
    let server = TestServer::start().await;
    let update = |operation: &str, value: Value| {
        json!({"$token": server.token, "$group_key": "company", "$group_id": "acme",
            operation: value})
    };
    let steps = [
        update("$set", json!({"plan": "free", "seats": 5, "tags": ["a"]})),
        update("$set_once", json!({"plan": "pro", "founded": 1999})),
        update("$union", json!({"tags": ["a", "b"]})),
        update("$remove", json!({"tags": "a"})),
        update("$unset", json!(["seats"])),
    ];
    let (status, text) = send_groups(&server, "/groups?verbose=1", &steps).await;
    assert_eq!(status, 200, "{text}");
    let reply: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(reply, json!({"status": 1, "error": null}));
    let (status, acme) = group_profile(&server, "company", "acme").await;
    assert_eq!(status, 200);
    assert_eq!(
        acme,
        json!({"plan": "free", "tags": ["b"], "founded": 1999})
    );

    // Another group id under the same key is another profile.
    let other = json!({"$token": server.token, "$group_key": "company", "$group_id": 7,
        "$set": {"plan": "team"}});
    send_groups(&server, "/groups", &[other]).await;
    assert_eq!(
        group_profile(&server, "company", "7").await.1["plan"],
        "team"
    );

    let (status, _) = send_groups(&server, "/groups", &[update("$delete", json!(""))]).await;
    assert_eq!(status, 200);
    assert_eq!(group_profile(&server, "company", "acme").await.0, 404);
    server.stop().await;
}

#[tokio::test]
async fn groups_reject_bad_updates() {
    let server = TestServer::start().await;
    let bad_token = json!({"$token": "nope", "$group_key": "company", "$group_id": "acme",
        "$set": {"plan": "x"}});
    let (status, text) = send_groups(&server, "/groups?verbose=1", &[bad_token]).await;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("$token"), "{text}");

    let people_only = json!({"$token": server.token, "$group_key": "company",
        "$group_id": "acme", "$add": {"seats": 1}});
    let (status, text) = send_groups(&server, "/groups?verbose=1", &[people_only]).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("$add is not a group operation"), "{text}");

    let (status, text) = send_groups(
        &server,
        "/groups",
        &[json!({"$token": server.token,
        "$group_id": "acme", "$set": {}})],
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(text, "0");
    assert_eq!(group_profile(&server, "company", "acme").await.0, 404);
    server.stop().await;
}

#[tokio::test]
async fn path_prefix_routes_the_same() {
    let server = TestServer::start().await;
    let event = json!({"event": "Prefixed", "properties": {"token": server.token,
        "distinct_id": "u-prefix", "time": now_secs(), "$insert_id": "prefix-1"}});
    let data = Value::Array(vec![event]).to_string();
    let response = server
        .http
        .post(server.url("/mp/track/?verbose=1"))
        .form(&[("data", data)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let update = json!({"$token": server.token, "$distinct_id": "u-prefix",
        "$set": {"plan": "pro"}});
    let response = server
        .http
        .get(server.url("/anything/engage"))
        .query(&[("data", update.to_string())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "1");

    let imported = json!({"event": "Prefixed import", "properties": {"time": 1700000000,
        "distinct_id": "u-prefix", "$insert_id": "prefix-2"}});
    let response = server
        .http
        .post(server.url("/a/b/import?strict=1"))
        .basic_auth(&server.api_secret, Some(""))
        .json(&json!([imported]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let group = json!({"$token": server.token, "$group_key": "company", "$group_id": "p",
        "$set": {"plan": "pro"}});
    assert_eq!(send_groups(&server, "/proxy/groups", &[group]).await.0, 200);

    assert_eq!(events_of(&server, "u-prefix").await.len(), 2);
    let profile = server.admin_get("/profiles/u-prefix").await;
    assert_eq!(profile["properties"]["plan"], "pro");
    assert_eq!(group_profile(&server, "company", "p").await.0, 200);

    let response = server
        .http
        .post(server.url("/mp/unknown"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    server.stop().await;
}

#[tokio::test]
async fn engage_ignore_alias_targets_the_sent_id() {
    let server = TestServer::start().await;
    let device = "$device:D-alias";
    let link = json!({"event": "Logged In", "properties": {"time": 1700000000,
        "$user_id": "u-alias", "$device_id": "D-alias", "$insert_id": "alias-1"}});
    let (status, body) = server.import_records(&[link]).await;
    assert_eq!(status, 200, "{body}");

    let resolved = json!({"$token": server.token, "$distinct_id": device,
        "$set": {"via": "link"}});
    let ignored = json!({"$token": server.token, "$distinct_id": device,
        "$ignore_alias": true, "$ip": "0", "$set": {"via": "ignore_alias"}});
    let (status, text) = server.engage(&[resolved, ignored]).await;
    assert_eq!(status, 200, "{text}");

    let user = server.admin_get("/profiles/u-alias").await;
    assert_eq!(user["properties"]["via"], "link");
    let device_path = format!(
        "/profiles/{}",
        device.replace('$', "%24").replace(':', "%3A")
    );
    let orphan = server.admin_get(&device_path).await;
    assert_eq!(orphan["properties"]["via"], "ignore_alias");
    server.stop().await;
}

#[tokio::test]
async fn twenty_concurrent_copies_stored_once() {
    let server = TestServer::start().await;
    let batch: String = (0..200)
        .map(|i| {
            let record = json!({"event": "Copied", "properties": {"time": 1700000000 + i,
                "distinct_id": format!("u-{}", i % 7), "$insert_id": format!("copy-{i}")}});
            format!("{record}\n")
        })
        .collect();
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let request = server
            .http
            .post(server.url("/import?strict=1"))
            .basic_auth(&server.api_secret, Some(""))
            .body(batch.clone());
        requests.spawn(async move {
            let response = request.send().await.unwrap();
            (response.status(), response.json::<Value>().await.unwrap())
        });
    }
    let mut replies = 0;
    while let Some(reply) = requests.join_next().await {
        let (status, body) = reply.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["num_records_imported"], 200);
        replies += 1;
    }
    assert_eq!(replies, 20);
    assert_eq!(server.event_count().await, 200);
    server.stop().await;
}

#[tokio::test]
async fn import_accepts_service_account_auth() {
    let server = TestServer::start().await;
    let record = json!({"event": "e", "properties": {"time": 1700000000, "distinct_id": "u-sa",
        "$insert_id": "sa-1"}});
    let cases = [
        (
            "/import?project_id=1",
            "svc-user",
            server.api_secret.clone(),
            200,
        ),
        ("/import", "svc-user", server.api_secret.clone(), 200),
        (
            "/import?project_id=2",
            "svc-user",
            server.api_secret.clone(),
            401,
        ),
        (
            "/import?project_id=1",
            "svc-user",
            "wrong-secret".to_owned(),
            401,
        ),
    ];
    for (path, user, password, expected) in cases {
        let response = server
            .http
            .post(server.url(path))
            .basic_auth(user, Some(&password))
            .json(&record)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), expected, "{path} {user}");
    }
    assert_eq!(server.event_count().await, 1);
    server.stop().await;
}

#[tokio::test]
async fn import_verbose_zero_replies_tersely() {
    let server = TestServer::start().await;
    let record = json!({"event": "e", "properties": {"time": 1700000000, "distinct_id": "u-terse",
        "$insert_id": "terse-1"}});
    let (status, body) = server.import_raw("?verbose=0", record.to_string()).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!(1), "a bare 1 parses as the JSON number 1");

    let response = server
        .http
        .post(server.url("/import?verbose=0"))
        .basic_auth("wrong-secret", Some(""))
        .body(record.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.text().await.unwrap(), "0");

    let (status, body) = server.import_raw("?verbose=1", record.to_string()).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], 1);
    assert_eq!(body["num_records_imported"], 1);
    server.stop().await;
}
