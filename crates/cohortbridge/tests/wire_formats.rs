//! One row per body encoding that Mixpanel clients send, each posted to the real server and
//! checked by reading back the stored events. The shapes follow the public sources of
//! mixpanel-browser (base64 form, `ip`/`verbose`/`_` parameters, sendBeacon `text/plain`
//! bodies), mixpanel-android (a whole form body gzip-compressed) and mixpanel-swift (a raw JSON
//! array body, and base64 wrapped at 64 characters in older releases).

mod common;

use std::io::Write;

use base64::Engine;
use common::{now_secs, TestServer};
use serde_json::{json, Value};

const FORM: &str = "application/x-www-form-urlencoded";

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Percent-escapes a `data` field as a form encoder does.
fn escaped_field(value: &str) -> String {
    serde_urlencoded::to_string([("data", value)]).unwrap()
}

/// One encoding: how the payload is placed in the request.
struct Row {
    name: &'static str,
    method: reqwest::Method,
    query: String,
    content_type: Option<&'static str>,
    content_encoding: Option<&'static str>,
    body: Vec<u8>,
}

/// Wraps base64 at 64 characters with `%0D%0A`, as a percent-encoded CRLF line break.
fn wrapped_base64(text: &str) -> String {
    let lines: Vec<&str> = text
        .as_bytes()
        .chunks(64)
        .map(|chunk| std::str::from_utf8(chunk).unwrap())
        .collect();
    lines.join("%0D%0A")
}

/// Checks that base64 text has the three characters that form encoding can mangle.
fn has_base64_symbols(text: &str) -> bool {
    text.contains('+') && text.contains('/') && text.ends_with('=')
}

/// Pads the last record of a batch with an ignored top-level `pad` field until the batch's
/// base64 contains `+`, `/` and `=`.
fn padded(mut batch: Value) -> Value {
    for length in 0..64 {
        let last = batch.as_array_mut().unwrap().last_mut().unwrap();
        last["pad"] = json!("?".repeat(length));
        if has_base64_symbols(&base64(batch.to_string().as_bytes())) {
            return batch;
        }
    }
    panic!("no padding gives base64 with '+', '/' and '=': {batch}");
}

/// Builds the rows for one payload. `single` is one record, `batch` the same record and a second.
fn rows(single: &Value, batch: &Value) -> Vec<Row> {
    let batch_json = batch.to_string();
    let single_json = single.to_string();
    let batch_b64 = base64(batch_json.as_bytes());
    let post = reqwest::Method::POST;
    let get = reqwest::Method::GET;
    vec![
        Row {
            name: "raw json array body",
            method: post.clone(),
            query: String::new(),
            content_type: Some("application/json"),
            content_encoding: None,
            body: batch_json.clone().into(),
        },
        Row {
            name: "raw json single object body",
            method: post.clone(),
            query: String::new(),
            content_type: Some("application/json"),
            content_encoding: None,
            body: single_json.clone().into(),
        },
        Row {
            name: "ndjson body",
            method: post.clone(),
            query: String::new(),
            content_type: Some("application/x-ndjson"),
            content_encoding: None,
            body: batch
                .as_array()
                .unwrap()
                .iter()
                .map(|r| format!("{r}\n"))
                .collect::<String>()
                .into(),
        },
        Row {
            name: "form raw json",
            method: post.clone(),
            query: String::new(),
            content_type: Some(FORM),
            content_encoding: None,
            body: escaped_field(&batch_json).into(),
        },
        Row {
            name: "form base64 escaped",
            method: post.clone(),
            query: String::new(),
            content_type: Some(FORM),
            content_encoding: None,
            body: escaped_field(&batch_b64).into(),
        },
        Row {
            name: "form base64 unescaped",
            method: post.clone(),
            query: String::new(),
            content_type: Some(FORM),
            content_encoding: None,
            body: format!("data={batch_b64}").into(),
        },
        Row {
            name: "query base64 single object",
            method: get.clone(),
            query: escaped_field(&base64(single_json.as_bytes())),
            content_type: None,
            content_encoding: None,
            body: Vec::new(),
        },
        Row {
            name: "query raw json array",
            method: get.clone(),
            query: escaped_field(&batch_json),
            content_type: None,
            content_encoding: None,
            body: Vec::new(),
        },
        Row {
            name: "gzip json with header",
            method: post.clone(),
            query: String::new(),
            content_type: Some("application/json"),
            content_encoding: Some("gzip"),
            body: gzip(batch_json.as_bytes()),
        },
        Row {
            name: "gzip json without header",
            method: post.clone(),
            query: String::new(),
            content_type: Some("application/json"),
            content_encoding: None,
            body: gzip(batch_json.as_bytes()),
        },
        Row {
            name: "browser form with ip verbose and _",
            method: post.clone(),
            query: format!("ip=1&verbose=1&_={}", now_secs() * 1000),
            content_type: Some(FORM),
            content_encoding: None,
            body: escaped_field(&batch_b64).into(),
        },
        Row {
            name: "browser sendBeacon text/plain",
            method: post.clone(),
            query: "ip=1&_=1".into(),
            content_type: Some("text/plain;charset=UTF-8"),
            content_encoding: None,
            body: escaped_field(&batch_b64).into(),
        },
        Row {
            name: "android whole form gzip",
            method: post.clone(),
            query: String::new(),
            content_type: Some(FORM),
            content_encoding: Some("gzip"),
            body: gzip(escaped_field(&batch_b64).as_bytes()),
        },
        Row {
            name: "swift raw json array",
            method: post.clone(),
            query: "ip=1".into(),
            content_type: Some("application/json"),
            content_encoding: None,
            body: batch_json.clone().into(),
        },
        Row {
            // Older mixpanel-swift releases wrap the base64 at 64 characters with CRLF and
            // percent-encode only what a query may not contain, so `+`, `/` and `=` stay raw.
            name: "swift legacy wrapped base64 form",
            method: post.clone(),
            query: "ip=1".into(),
            content_type: Some(FORM),
            content_encoding: None,
            body: format!("data={}", wrapped_base64(&batch_b64)).into(),
        },
        Row {
            name: "base64 of gzip in form",
            method: post,
            query: String::new(),
            content_type: Some(FORM),
            content_encoding: None,
            body: escaped_field(&base64(&gzip(batch_json.as_bytes()))).into(),
        },
    ]
}

async fn send(server: &TestServer, path: &str, row: &Row, basic: bool) -> (u16, String) {
    let separator = if row.query.is_empty() { "" } else { "?" };
    let url = server.url(&format!("{path}{separator}{}", row.query));
    let mut request = server.http.request(row.method.clone(), url);
    if let Some(value) = row.content_type {
        request = request.header("content-type", value);
    }
    if let Some(value) = row.content_encoding {
        request = request.header("content-encoding", value);
    }
    if basic {
        request = request.basic_auth(&server.api_secret, Some(""));
    }
    let response = request.body(row.body.clone()).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

async fn stored_names(server: &TestServer, distinct_id: &str) -> Vec<String> {
    let query = serde_urlencoded::to_string([("distinct_id", distinct_id)]).unwrap();
    let events = server.admin_get(&format!("/events?{query}")).await;
    let mut names: Vec<String> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

fn event(name: &str, distinct_id: &str, properties: Value) -> Value {
    let mut record = json!({"event": name, "properties": properties});
    record["properties"]["distinct_id"] = json!(distinct_id);
    record["properties"]["note"] = json!("<<??>>~");
    record
}

#[tokio::test]
async fn track_accepts_every_encoding() {
    let server = TestServer::start().await;
    let count = rows(&json!({}), &json!([])).len();
    for index in 0..count {
        let distinct_id = format!("wire-track-{index}");
        let properties = json!({"token": server.token, "time": now_secs()});
        let first = event("A", &distinct_id, properties.clone());
        let batch = padded(json!([first.clone(), event("B", &distinct_id, properties)]));
        assert!(has_base64_symbols(&base64(batch.to_string().as_bytes())));
        let row = rows(&first, &batch).remove(index);

        let (status, text) = send(&server, "/track", &row, false).await;
        assert_eq!(status, 200, "{}: {text}", row.name);
        let expected = if row.name.contains("single") {
            vec!["A"]
        } else {
            vec!["A", "B"]
        };
        assert_eq!(
            stored_names(&server, &distinct_id).await,
            expected,
            "{}",
            row.name
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn import_accepts_every_encoding() {
    let server = TestServer::start().await;
    let count = rows(&json!({}), &json!([])).len();
    for index in 0..count {
        let distinct_id = format!("wire-import-{index}");
        let first = event(
            "A",
            &distinct_id,
            json!({"time": 1700000000, "$insert_id": "a"}),
        );
        let second = event(
            "B",
            &distinct_id,
            json!({"time": 1700000000, "$insert_id": "b"}),
        );
        let row = rows(&first, &padded(json!([first.clone(), second]))).remove(index);

        let (status, text) = send(&server, "/import", &row, true).await;
        assert_eq!(status, 200, "{}: {text}", row.name);
        let reply: Value = serde_json::from_str(&text).unwrap();
        let expected = if row.name.contains("single") { 1 } else { 2 };
        assert_eq!(reply["num_records_imported"], expected, "{}", row.name);
        assert_eq!(
            stored_names(&server, &distinct_id).await.len(),
            expected,
            "{}",
            row.name
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn engage_accepts_every_encoding() {
    let server = TestServer::start().await;
    let count = rows(&json!({}), &json!([])).len();
    for index in 0..count {
        let distinct_id = format!("wire-engage-{index}");
        let set = json!({"$token": server.token, "$distinct_id": distinct_id,
            "$set": {"note": "<<??>>~", "row": index}});
        let add = json!({"$token": server.token, "$distinct_id": distinct_id,
            "$add": {"visits": 1}});
        let row = rows(&set, &padded(json!([set.clone(), add]))).remove(index);

        let (status, text) = send(&server, "/engage", &row, false).await;
        assert_eq!(status, 200, "{}: {text}", row.name);
        let profile = server.admin_get(&format!("/profiles/{distinct_id}")).await;
        assert_eq!(profile["properties"]["row"], index, "{}", row.name);
        assert_eq!(profile["properties"]["note"], "<<??>>~", "{}", row.name);
        if !row.name.contains("single") {
            assert_eq!(profile["properties"]["visits"], 1, "{}", row.name);
        }
    }
    server.stop().await;
}

/// Bodies that decode to no records name what they contain, on `/import` and on `/track`.
#[tokio::test]
async fn bodies_without_records_are_named() {
    let server = TestServer::start().await;
    let record = event("Opened", "u-none", json!({"token": server.token}));
    let rows = [
        (
            "json number as form",
            Some(FORM),
            None,
            b"42".to_vec(),
            "payload is a JSON number",
        ),
        (
            "json number",
            Some("application/json"),
            None,
            b"42".to_vec(),
            "payload is a JSON number",
        ),
        (
            "gzip of gzip",
            Some("application/json"),
            Some("gzip"),
            gzip(&gzip(record.to_string().as_bytes())),
            "still gzip-compressed",
        ),
    ];
    for (name, content_type, content_encoding, body, expected) in rows {
        let row = Row {
            name,
            method: reqwest::Method::POST,
            query: String::new(),
            content_type,
            content_encoding,
            body,
        };
        let (status, text) = send(&server, "/import", &row, true).await;
        assert_eq!(status, 400, "{name}: {text}");
        let reply: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(reply["code"], 400, "{name}: {reply}");
        assert_eq!(reply["status"], 0, "{name}: {reply}");
        let error = reply["error"].as_str().unwrap();
        assert!(error.contains(expected), "{name}: {error}");
        assert!(!error.contains("no payload"), "{name}: {error}");

        let verbose = Row {
            query: "verbose=1".into(),
            ..row
        };
        let (status, text) = send(&server, "/track", &verbose, false).await;
        assert_eq!(status, 400, "{name}: {text}");
        let reply: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(reply["status"], 0, "{name}: {reply}");
        assert!(
            reply["error"].as_str().unwrap().contains(expected),
            "{name}: {reply}"
        );
    }
    assert_eq!(server.event_count().await, 0);
    server.stop().await;
}
