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

#[tokio::test]
async fn engage_query_filters_by_cohort() {
    let server = TestServer::start().await;
    let updates = [
        json!({"$token": server.token, "$distinct_id": "buyer-1", "$set": {"plan": "pro"}}),
        json!({"$token": server.token, "$distinct_id": "browser-1", "$set": {"plan": "free"}}),
    ];
    let (status, text) = server.engage(&updates).await;
    assert_eq!(status, 200, "{text}");
    // buyer-2 has no profile, only an event.
    let now = common::now_secs();
    let events: Vec<Value> = ["buyer-1", "buyer-2"]
        .iter()
        .enumerate()
        .map(|(i, id)| {
            json!({"event": "Purchase", "properties": {"token": server.token, "distinct_id": id,
                "time": now - 60, "$insert_id": format!("p-{i}")}})
        })
        .collect();
    let (status, text) = server.track(&events).await;
    assert_eq!(status, 200, "{text}");
    let cohort = server
        .create_cohort("Buyers", json!({"event": "Purchase"}))
        .await;
    let filter = format!(r#"{{"id": {cohort}}}"#);

    let (status, all) = query(&server, &[("filter_by_cohort", &filter)]).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(
        ids(&all),
        vec!["buyer-1", "buyer-2"],
        "members without a profile are listed by default"
    );
    assert_eq!(all["results"][1]["$properties"], json!({}));
    assert_eq!(all["results"][0]["$properties"]["plan"], "pro");

    let (status, with_profile) = query(
        &server,
        &[
            ("filter_by_cohort", &filter),
            ("include_all_users", "false"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{with_profile}");
    assert_eq!(ids(&with_profile), vec!["buyer-1"]);
    assert_ne!(
        with_profile["session_id"], all["session_id"],
        "include_all_users is part of the query"
    );

    let (status, filtered) = query(
        &server,
        &[
            ("filter_by_cohort", &filter),
            ("where", r#"properties["plan"] == "free""#),
        ],
    )
    .await;
    assert_eq!(status, 200, "{filtered}");
    assert_eq!(
        filtered["total"], 0,
        "browser-1 is on the free plan but not a buyer"
    );

    let (status, missing) = query(&server, &[("filter_by_cohort", r#"{"id": 999}"#)]).await;
    assert_eq!(status, 400);
    assert!(
        missing["error"].as_str().unwrap().contains("999"),
        "{missing}"
    );
    for bad in ["12", r#"{"id": "x"}"#, "{"] {
        let (status, reply) = query(&server, &[("filter_by_cohort", bad)]).await;
        assert_eq!(status, 400, "{bad}: {reply}");
        assert!(
            reply["error"]
                .as_str()
                .unwrap()
                .contains("filter_by_cohort"),
            "{reply}"
        );
    }
    let (status, reply) = query(&server, &[("include_all_users", "yes")]).await;
    assert_eq!(status, 400);
    assert!(
        reply["error"].as_str().unwrap().contains("\"yes\""),
        "{reply}"
    );
    server.stop().await;
}
