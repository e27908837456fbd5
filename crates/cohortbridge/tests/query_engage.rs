//! `POST /api/query/engage` through the real server: authentication, filters, output
//! properties, identity resolution and paging.

mod common;

use common::TestServer;
use serde_json::{json, Value};

async fn query(server: &TestServer, form: &[(&str, &str)]) -> (u16, Value) {
    let response = server
        .http
        .post(server.url("/api/query/engage"))
        .basic_auth(&server.api_secret, Some(""))
        .form(form)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn ids(reply: &Value) -> Vec<String> {
    reply["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["$distinct_id"].as_str().unwrap().to_owned())
        .collect()
}

async fn seed(server: &TestServer) {
    let updates: Vec<Value> = (0..1005)
        .map(|i| {
            json!({"$token": server.token, "$distinct_id": format!("u-{i:04}"),
                "$set": {"plan": if i % 5 == 0 { "pro" } else { "free" }, "seats": i % 10,
                    "$braze_external_id": format!("ext-{i}")}})
        })
        .collect();
    let (status, text) = server.engage(&updates).await;
    assert_eq!(status, 200, "{text}");
}

#[tokio::test]
async fn engage_query_filters_and_pages() {
    let server = TestServer::start().await;
    seed(&server).await;

    let (status, first) = query(&server, &[]).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["status"], "ok");
    assert_eq!(first["total"], 1005);
    assert_eq!(first["page_size"], 1000);
    assert_eq!(ids(&first).len(), 1000);
    assert_eq!(ids(&first)[0], "u-0000");
    let session_id = first["session_id"].as_str().unwrap().to_owned();
    let (status, second) = query(&server, &[("page", "1"), ("session_id", &session_id)]).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(
        ids(&second),
        vec!["u-1000", "u-1001", "u-1002", "u-1003", "u-1004"]
    );

    let filter = r#"properties["plan"] == "pro" and properties["seats"] >= 5"#;
    let (status, pros) = query(&server, &[("where", filter)]).await;
    assert_eq!(status, 200, "{pros}");
    // i % 5 == 0 and i % 10 >= 5 hold together exactly when i % 10 == 5.
    let expected = (0..1005).filter(|i| i % 10 == 5).count();
    assert_eq!(pros["total"], expected);
    assert!(ids(&pros).iter().all(|id| id.ends_with('5')));

    let (status, other_session) = query(
        &server,
        &[
            ("where", filter),
            ("page", "1"),
            ("session_id", &session_id),
        ],
    )
    .await;
    assert_eq!(status, 400, "{other_session}");

    let (status, picked) = query(
        &server,
        &[
            ("distinct_ids", r#"["u-0003", "u-0001", "nobody"]"#),
            ("output_properties", r#"["plan"]"#),
        ],
    )
    .await;
    assert_eq!(status, 200, "{picked}");
    assert_eq!(ids(&picked), vec!["u-0001", "u-0003"]);
    assert_eq!(picked["results"][0]["$properties"], json!({"plan": "free"}));

    let (status, bad) = query(&server, &[("where", r#"properties["plan"] ~ "pro""#)]).await;
    assert_eq!(status, 400);
    assert!(
        bad["error"].as_str().unwrap().contains("character"),
        "{bad}"
    );
    server.stop().await;
}

#[tokio::test]
async fn engage_query_resolves_merged_ids() {
    let server = TestServer::start().await;
    let link = json!({"event": "Logged In", "properties": {"time": 1700000000,
        "$user_id": "u-alice", "$device_id": "D9", "$insert_id": "q-link"}});
    server.import_records(&[link]).await;
    let set = json!({"$token": server.token, "$distinct_id": "u-alice", "$set": {"plan": "pro"}});
    server.engage(&[set]).await;

    let (status, reply) = query(&server, &[("distinct_id", "$device:D9")]).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(ids(&reply), vec!["u-alice"]);

    let response = server
        .http
        .post(server.url("/api/query/engage"))
        .basic_auth(&server.token, Some(""))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    server.stop().await;
}
