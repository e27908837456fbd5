//! `GET /api/2.0/export` through the real server: authentication, filters, gzip, and a round
//! trip that imports the export into a fresh server and finds the same events.

mod common;

use std::io::Read;

use common::TestServer;
use serde_json::{json, Value};

/// Properties the server adds on ingestion; a re-import sets them again to new values.
const SERVER_PROPERTIES: &[&str] = &[
    "$mp_api_endpoint",
    "$mp_api_timestamp_ms",
    "mp_processing_time_ms",
    "$import",
];

async fn export(server: &TestServer, query: &str, gzip: bool) -> reqwest::Response {
    let mut request = server
        .http
        .get(server.url(&format!("/api/2.0/export?{query}")))
        .basic_auth(&server.api_secret, Some(""));
    if gzip {
        request = request.header("accept-encoding", "gzip");
    }
    request.send().await.unwrap()
}

fn lines(bytes: &[u8]) -> Vec<Value> {
    bytes
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_slice(line).unwrap())
        .collect()
}

/// Reduces an exported event to what an import must preserve.
fn comparable(mut event: Value) -> Value {
    let properties = event["properties"].as_object_mut().unwrap();
    for name in SERVER_PROPERTIES {
        properties.remove(*name);
    }
    event
}

fn sample_events() -> Vec<Value> {
    let mut events: Vec<Value> = (0..30)
        .map(|i| {
            json!({"event": if i % 3 == 0 { "Purchase" } else { "Viewed" }, "properties": {
                "time": 1700000000 + i * 3600, "distinct_id": format!("u-{}", i % 4),
                "$insert_id": format!("rt-{i}"), "n": i, "tags": ["a", "b"]}})
        })
        .collect();
    events.push(
        json!({"event": "Precise", "properties": {"time": 1700000000123_i64,
        "distinct_id": "u-ms", "$insert_id": "rt-ms", "text": "line\u{2028}sep"}}),
    );
    events.push(json!({"event": "Nobody", "properties": {"time": 1700000001,
        "distinct_id": "", "$insert_id": "rt-empty"}}));
    events
}

#[tokio::test]
async fn export_requires_the_api_secret() {
    let server = TestServer::start().await;
    let query = "/api/2.0/export?from_date=2023-11-14&to_date=2023-11-15";
    for (user, password) in [
        (server.token.clone(), String::new()),
        ("wrong".to_owned(), String::new()),
    ] {
        let response = server
            .http
            .get(server.url(query))
            .basic_auth(user, Some(password))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
    }
    let response = server.http.get(server.url(query)).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let response = export(&server, "from_date=2023-11-14", false).await;
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("to_date"));
    server.stop().await;
}

#[tokio::test]
async fn export_filters_and_compresses() {
    let server = TestServer::start().await;
    let (status, body) = server.import_records(&sample_events()).await;
    assert_eq!(status, 200, "{body}");

    let response = export(&server, "from_date=2023-11-14&to_date=2023-11-16", false).await;
    assert_eq!(response.status(), 200);
    let all = lines(&response.bytes().await.unwrap());
    assert_eq!(all.len(), 32);
    let times: Vec<f64> = all
        .iter()
        .map(|e| e["properties"]["time"].as_f64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "oldest first");

    let query = "from_date=2023-11-14&to_date=2023-11-16&event=%5B%22Purchase%22%5D&limit=3";
    let response = export(&server, query, true).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-encoding"], "gzip");
    let compressed = response.bytes().await.unwrap();
    let mut text = Vec::new();
    flate2::read::GzDecoder::new(&compressed[..])
        .read_to_end(&mut text)
        .unwrap();
    let purchases = lines(&text);
    assert_eq!(purchases.len(), 3);
    assert!(purchases.iter().all(|e| e["event"] == "Purchase"));

    // 2023-11-14 covers 00:00 to 24:00 UTC; the first event is at 22:13:20.
    let response = export(&server, "from_date=2023-11-13&to_date=2023-11-13", false).await;
    assert!(lines(&response.bytes().await.unwrap()).is_empty());
    server.stop().await;
}

#[tokio::test]
async fn export_then_import_is_identity() {
    let source = TestServer::start().await;
    let (status, body) = source.import_records(&sample_events()).await;
    assert_eq!(status, 200, "{body}");
    let query = "from_date=2023-11-01&to_date=2023-11-30";
    let first = lines(&export(&source, query, false).await.bytes().await.unwrap());
    assert_eq!(first.len(), 32);

    let target = TestServer::start().await;
    let (status, body) = target.import_records(&first).await;
    assert_eq!(status, 200, "{body}");
    let second = lines(&export(&target, query, false).await.bytes().await.unwrap());

    let first: Vec<Value> = first.into_iter().map(comparable).collect();
    let second: Vec<Value> = second.into_iter().map(comparable).collect();
    assert_eq!(first, second);
    source.stop().await;
    target.stop().await;
}

#[tokio::test]
async fn export_escapes_unicode_line_separators() {
    let server = TestServer::start().await;
    let raw = std::fs::read(common::fixture_path(
        "edge-cases/import_unicode_separators.ndjson",
    ))
    .unwrap();
    let (status, body) = server.import_raw("?strict=1", raw).await;
    assert_eq!(status, 200, "{body}");
    let response = export(&server, "from_date=2023-11-01&to_date=2023-11-30", false).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    for separator in ['\u{2028}', '\u{2029}', '\u{85}'] {
        assert!(!text.contains(separator), "raw {separator:?} in the export");
    }
    assert_eq!(text.lines().count(), 7, "one line per event");
    server.stop().await;
}
