//! Ingestion through the real HTTP server: the shared edge-case fixtures, Mixpanel's reply
//! shapes, authentication, limits and identity merge.

mod common;

use std::io::Write;

use base64::Engine;
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
async fn dedupe_fixture_stores_five_events() {
    let server = TestServer::start().await;
    let lines = TestServer::fixture_lines("import_dedupe.ndjson");
    let (status, body) = server.import_records(&lines).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["num_records_imported"], 8);
    assert_eq!(server.event_count().await, 5);

    // Lines 1, 2, 3 and 7 are one event; line 7 was ingested last, so its properties won.
    let played_at_base: Vec<Value> = events_of(&server, "u-1001")
        .await
        .into_iter()
        .filter(|e| e["event"] == "Song Played" && e["time_ms"] == 1_700_000_000_000_i64)
        .collect();
    assert_eq!(played_at_base.len(), 1);
    assert_eq!(played_at_base[0]["properties"]["song"], "Track A");

    // Sending line 3 again makes it the last one ingested.
    let (status, _) = server.import_records(&lines[2..3]).await;
    assert_eq!(status, 200);
    assert_eq!(server.event_count().await, 5);
    let edited = events_of(&server, "u-1001").await;
    let edited = edited
        .iter()
        .find(|e| e["event"] == "Song Played" && e["time_ms"] == 1_700_000_000_000_i64)
        .unwrap();
    assert_eq!(edited["properties"]["song"], "Track A (edited)");
    server.stop().await;
}

#[tokio::test]
async fn concurrent_duplicates_are_stored_once() {
    let server = TestServer::start().await;
    let line = TestServer::fixture_lines("import_dedupe.ndjson").remove(0);
    let pair = [line.clone(), line.clone()];
    let (first, second, third) = tokio::join!(
        server.import_records(&pair),
        server.import_records(&pair),
        server.import_records(&pair)
    );
    for (status, body) in [first, second, third] {
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(server.event_count().await, 1);
    server.stop().await;
}

#[tokio::test]
async fn time_units_fixture() {
    let server = TestServer::start().await;
    let lines = TestServer::fixture_lines("import_time_units.ndjson");
    let (status, body) = server.import_records(&lines).await;
    assert_eq!(status, 400, "strict mode reports failures: {body}");
    assert_eq!(body["num_records_imported"], 4);
    let failed = body["failed_records"].as_array().unwrap();
    let indexes: Vec<u64> = failed
        .iter()
        .map(|f| f["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, vec![3, 4, 5, 6, 7, 8]);
    for failure in failed {
        assert_eq!(failure["field"], "properties.time", "{failure}");
        assert!(failure["$insert_id"].is_string(), "{failure}");
        assert!(
            failure["message"]
                .as_str()
                .unwrap()
                .contains("properties.time"),
            "{failure}"
        );
    }

    let mut stored: Vec<(String, i64)> = events_of(&server, "u-time-01")
        .await
        .iter()
        .map(|e| {
            (
                e["properties"]["variant"].as_str().unwrap().to_owned(),
                e["time_ms"].as_i64().unwrap(),
            )
        })
        .collect();
    stored.sort();
    assert_eq!(
        stored,
        vec![
            ("ms-int".to_owned(), 1_700_000_000_123),
            ("ms-looks-like-s-1973".to_owned(), 100_000_000_000),
            ("s-float".to_owned(), 1_700_000_000_123),
            ("s-int".to_owned(), 1_700_000_000_000),
        ]
    );
    server.stop().await;
}

#[tokio::test]
async fn odd_distinct_ids_fixture() {
    let server = TestServer::start().await;
    let lines = TestServer::fixture_lines("import_odd_distinct_ids.ndjson");
    let (status, body) = server.import_records(&lines).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["num_records_imported"], 8);
    let failed = body["failed_records"].as_array().unwrap();
    let indexes: Vec<u64> = failed
        .iter()
        .map(|f| f["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, vec![1, 2, 3, 4, 5, 6, 7, 8, 11, 14, 15, 16]);
    assert!(
        failed
            .iter()
            .all(|f| f["field"] == "properties.distinct_id"),
        "{failed:?}"
    );

    // Integers become their decimal string; the empty id belongs to no user.
    assert_eq!(events_of(&server, "12345").await.len(), 2);
    let cohort = server
        .create_cohort("viewers", json!({"event": "Page Viewed"}))
        .await;
    let members = server.members(cohort).await;
    assert_eq!(
        members,
        vec![
            "  u-pad  ",
            "12345",
            "NaN",
            "U-CASE",
            "[object Object]",
            "u-case"
        ]
    );

    let mtu = server.admin_get("/mtu?month=2023-11").await;
    assert_eq!(mtu["users"], 6);
    server.stop().await;
}

/// Parses the Fivetran connector's `YYYY-MM-DD HH:MM:SS` UTC time to epoch seconds.
fn fivetran_time(text: &str) -> i64 {
    chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S")
        .unwrap()
        .and_utc()
        .timestamp()
}

#[tokio::test]
async fn fivetran_seed_yields_five_events() {
    let server = TestServer::start().await;
    let mut reader = csv::Reader::from_path(common::fixture_path("fivetran/event.csv")).unwrap();
    let mut records = Vec::new();
    for row in reader.deserialize::<std::collections::HashMap<String, String>>() {
        let row = row.unwrap();
        let mut properties: serde_json::Map<String, Value> =
            serde_json::from_str(&row["properties"]).unwrap();
        properties.insert("time".into(), json!(fivetran_time(&row["time"])));
        properties.insert("distinct_id".into(), json!(row["distinct_id"]));
        properties.insert("$insert_id".into(), json!(row["insert_id"]));
        records.push(json!({"event": row["name"], "properties": properties}));
    }
    assert_eq!(records.len(), 5);
    let (status, body) = server.import_records(&records).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.event_count().await, 5);
    server.stop().await;
}

#[tokio::test]
async fn import_requires_credentials() {
    let server = TestServer::start().await;
    let record = json!({"event": "e", "properties": {"time": 1700000000, "distinct_id": "u", "$insert_id": "i1"}});
    let url = server.url("/import");

    let response = server
        .http
        .post(&url)
        .body(record.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], 0);
    assert!(body["error"].as_str().unwrap().contains("Basic"));

    let response = server
        .http
        .post(&url)
        .basic_auth("wrong-secret", Some(""))
        .body(record.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    // The token as user with an empty password is accepted; with a password it is not.
    let response = server
        .http
        .post(&url)
        .basic_auth(&server.token, Some(""))
        .body(record.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = server
        .http
        .post(&url)
        .basic_auth(&server.token, Some("x"))
        .body(record.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(server.event_count().await, 1);
    server.stop().await;
}

#[tokio::test]
async fn import_non_strict_drops_and_counts() {
    let server = TestServer::start().await;
    let body = "{\"event\":\"e\",\"properties\":{\"time\":1700000000,\"distinct_id\":\"u\"}}\n{\"event\":\"e\",\"properties\":{\"time\":\"soon\",\"distinct_id\":\"u\"}}\n";
    let (status, reply) = server.import_raw("", body).await;
    assert_eq!(status, 200);
    assert_eq!(reply["status"], 1);
    assert_eq!(reply["num_records_imported"], 1);
    assert_eq!(reply["num_records_dropped"], 1);
    server.stop().await;
}

#[tokio::test]
async fn import_limits() {
    let server = TestServer::start().await;
    let too_many: String = (0..2001)
        .map(|i| format!("{{\"event\":\"e\",\"properties\":{{\"time\":1700000000,\"distinct_id\":\"u\",\"$insert_id\":\"i{i}\"}}}}\n"))
        .collect();
    let (status, body) = server.import_raw("", too_many).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("2001"), "{body}");

    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(&vec![b' '; 11 * 1024 * 1024]).unwrap();
    let bomb = encoder.finish().unwrap();
    let response = server
        .http
        .post(server.url("/import"))
        .basic_auth(&server.api_secret, Some(""))
        .header("content-encoding", "gzip")
        .body(bomb)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(server.event_count().await, 0);

    let response = server
        .http
        .post(server.url("/import"))
        .basic_auth(&server.api_secret, Some(""))
        .header("content-encoding", "br")
        .body(r#"[{"event":"e","properties":{"time":1700000000,"distinct_id":"u","$insert_id":"b1"}}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    let reply: Value = response.json().await.unwrap();
    assert!(reply["error"].as_str().unwrap().contains("`br`"), "{reply}");
    assert_eq!(server.event_count().await, 0);
    server.stop().await;
}

#[tokio::test]
async fn track_replies_like_mixpanel() {
    let server = TestServer::start().await;
    let event = json!({"event": "Opened", "properties": {"token": server.token, "distinct_id": "u1", "time": now_secs()}});
    let encoded = base64::engine::general_purpose::STANDARD.encode(event.to_string());

    // GET with base64 in the query, with and without a trailing slash.
    for path in ["/track", "/track/"] {
        let response = server
            .http
            .get(server.url(path))
            .query(&[("data", &encoded)])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.text().await.unwrap(), "1", "{path}");
    }
    let (status, text) = server.track(std::slice::from_ref(&event)).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json!({"status": 1, "error": null})
    );
    assert_eq!(
        server.event_count().await,
        1,
        "same insert-less event deduplicates by content"
    );

    // A gzip-compressed JSON body.
    let second =
        json!({"event": "Second", "properties": {"token": server.token, "distinct_id": "u1"}});
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(second.to_string().as_bytes()).unwrap();
    let response = server
        .http
        .post(server.url("/track"))
        .header("content-encoding", "gzip")
        .body(encoder.finish().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(server.event_count().await, 2);
    server.stop().await;
}

#[tokio::test]
async fn track_rejects_bad_token_and_old_events() {
    let server = TestServer::start().await;
    let bad_token = json!({"event": "e", "properties": {"token": "nope", "distinct_id": "u"}});
    let (status, text) = server.track(&[bad_token]).await;
    assert_eq!(status, 401);
    let reply: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(reply["status"], 0);
    assert!(
        reply["error"].as_str().unwrap().contains("token"),
        "{reply}"
    );

    let old = json!({"event": "e", "properties": {"token": server.token, "distinct_id": "u", "time": now_secs() - 6 * 86_400}});
    let fresh = json!({"event": "e", "properties": {"token": server.token, "distinct_id": "u", "time": now_secs()}});
    let (status, text) = server.track(&[old, fresh]).await;
    assert_eq!(status, 400);
    assert!(text.contains("/import"), "{text}");
    assert_eq!(
        server.event_count().await,
        1,
        "the valid event of the batch is stored"
    );

    let response = server
        .http
        .post(server.url("/track"))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(response.text().await.unwrap(), "0");
    server.stop().await;
}

#[tokio::test]
async fn simplified_id_merge_shared_device() {
    let server = TestServer::start().await;
    let lines = TestServer::fixture_lines("identity_simplified_shared_device.ndjson");
    let (status, body) = server.import_records(&lines).await;
    assert_eq!(status, 200, "{body}");
    let purchased = server
        .create_cohort("purchased", json!({"event": "Purchased"}))
        .await;
    assert_eq!(server.members(purchased).await, vec!["u-bob"]);
    let opened = server
        .create_cohort("opened", json!({"event": "App Opened", "count": {"eq": 3}}))
        .await;
    assert_eq!(
        server.members(opened).await,
        vec!["u-alice"],
        "lines 1, 6 and 7 all resolve to u-alice"
    );
    let logged_in = server
        .create_cohort("logged in", json!({"event": "Logged In"}))
        .await;
    assert_eq!(
        server.members(logged_in).await,
        vec!["u-alice", "u-bob"],
        "two user ids are never merged"
    );
    server.stop().await;
}

async fn profile(server: &TestServer, id: &str) -> Value {
    let path = format!("/profiles/{}", id.replace('$', "%24").replace(':', "%3A"));
    server.admin_get(&path).await["properties"].clone()
}

#[tokio::test]
async fn engage_profile_sequence_fixture() {
    let server = TestServer::start().await;
    let updates: Vec<Value> = TestServer::fixture_lines("engage_profile_sequence.ndjson")
        .into_iter()
        .map(|mut update| {
            update["$token"] = json!(server.token);
            update
        })
        .collect();

    let (status, text) = server.engage(&updates[0..2]).await;
    assert_eq!(status, 200, "{text}");
    let erin = profile(&server, "u-erin").await;
    assert_eq!(erin["$initial_referrer"], "https://a.example.org/");
    assert_eq!(erin["plan"], "free");

    server.engage(&updates[2..3]).await;
    let erin = profile(&server, "u-erin").await;
    assert_eq!(erin["plan"], "pro");
    let last_seen = erin["$last_seen"].clone();
    assert!(last_seen.is_string());

    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    server.engage(&updates[3..4]).await;
    let erin = profile(&server, "u-erin").await;
    assert_eq!(erin["crm_segment"], "B");
    assert_eq!(
        erin["$last_seen"], last_seen,
        "$ignore_time keeps $last_seen"
    );

    let born_before_1970 = server
        .create_cohort(
            "born before 1970",
            json!({"profile": "birthdate", "op": "lt", "value": "1970-01-01"}),
        )
        .await;
    assert_eq!(server.members(born_before_1970).await, vec!["u-erin"]);

    let (status, _) = server.engage(&updates[4..7]).await;
    assert_eq!(status, 200);
    let erin = profile(&server, "u-erin").await;
    assert!(
        erin.get("crm_segment").is_none(),
        "$unset removed crm_segment"
    );
    assert_eq!(erin["$braze_external_id"], "Cust:0042");

    // Linking the device to a user leaves the device's profile an orphan.
    let link = json!({"event": "Logged In", "properties": {"time": 1700000000, "$user_id": "u-frank",
        "$device_id": "c0ffee00-2222-4aaa-8bbb-000000000002", "$insert_id": "link-1"}});
    server.import_records(&[link]).await;
    let with_braze_id = server
        .create_cohort(
            "has braze id",
            json!({"profile": "$braze_external_id", "op": "set"}),
        )
        .await;
    assert_eq!(server.members(with_braze_id).await, vec!["u-erin"]);
    let frank = server.admin_get_status("/profiles/u-frank").await;
    assert_eq!(frank.0, 404, "u-frank does not inherit the device profile");
    server.stop().await;
}

#[tokio::test]
async fn unicode_separators_fixture_round_trips() {
    let server = TestServer::start().await;
    let raw = std::fs::read(common::fixture_path(
        "edge-cases/import_unicode_separators.ndjson",
    ))
    .unwrap();
    let (status, body) = server.import_raw("?strict=1", raw.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["num_records_imported"], 7);
    assert_eq!(server.event_count().await, 7);
    server.stop().await;
}

#[tokio::test]
async fn admin_api_requires_the_admin_key() {
    let server = TestServer::start().await;
    for key in [None, Some("wrong"), Some(common::PARTNER_API_KEY)] {
        let mut request = server.http.get(server.url("/api/v1/projects/1"));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{key:?}");
    }
    server.stop().await;
}

#[tokio::test]
async fn engage_names_extra_operations() {
    let server = TestServer::start().await;
    let update = json!({"$token": server.token, "$distinct_id": "u-two-ops",
        "$set": {"plan": "pro"}, "$unset": ["trial"]});
    let (status, text) = server.engage(&[update]).await;
    assert_eq!(status, 400, "{text}");
    let reply: Value = serde_json::from_str(&text).unwrap();
    let failure = &reply["failed_records"][0];
    assert_eq!(failure["field"], "$set, $unset", "{reply}");
    assert!(
        failure["message"]
            .as_str()
            .unwrap()
            .contains("$set, $unset"),
        "{reply}"
    );
    server.stop().await;
}

/// A body over the limit before any decompression gets the same reply as a gzip body that
/// decompresses past it.
#[tokio::test]
async fn oversized_plain_body_replies_in_json() {
    let server = TestServer::start().await;
    let oversized = vec![b' '; 10 * 1024 * 1024 + 128 * 1024];
    let expected_error = "payload is larger than 10485760 bytes uncompressed";

    let (status, reply) = server.import_raw("", oversized.clone()).await;
    assert_eq!(status, 413);
    assert_eq!(
        reply,
        json!({"code": 413, "error": expected_error, "status": 0})
    );

    let response = server
        .http
        .post(server.url("/track?verbose=1"))
        .header("content-type", "application/json")
        .body(oversized)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let reply: Value = response.json().await.unwrap();
    assert_eq!(reply, json!({"status": 0, "error": expected_error}));
    assert_eq!(server.event_count().await, 0);
    server.stop().await;
}

#[tokio::test]
async fn json_array_import_mixes_text_and_general_paths() {
    let server = TestServer::start().await;
    let t = now_secs();
    let token = &server.token;
    // Record 0 takes the text path; 1 (no `$insert_id`), 3 (a repeated key) and 4 (a server
    // property) take the general path; 2 is invalid.
    let body = format!(
        r#"[
        {{"event":"Typical","properties":{{"time":{t},"distinct_id":"u1","$insert_id":"mix-0",
          "b":2,"token":"{token}","a":"x","n":1e3,"s":"\u00e9"}}}},
        {{"event":"No insert id","properties":{{"time":{t},"distinct_id":"u2","k":1}}}},
        {{"event":"Bad time","properties":{{"time":"yesterday","distinct_id":"u3","$insert_id":"mix-2"}}}},
        {{"event":"Repeated","properties":{{"time":{t},"distinct_id":"u4","$insert_id":"mix-3","k":1,"k":2}}}},
        {{"event":"Server set","properties":{{"time":{t},"distinct_id":"u5","$insert_id":"mix-4","$import":false}}}}
    ]"#
    );
    let (status, reply) = server.import_raw("?strict=1", body).await;
    assert_eq!(status, 400, "{reply}");
    assert_eq!(reply["num_records_imported"], 4, "{reply}");
    let failed = reply["failed_records"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{reply}");
    assert_eq!(failed[0]["index"], 2);
    assert_eq!(failed[0]["$insert_id"], "mix-2");
    assert_eq!(failed[0]["field"], "properties.time");

    let stored = |id: &'static str| {
        let server = &server;
        async move {
            let events = server.admin_get(&format!("/events?distinct_id={id}")).await;
            assert_eq!(events.as_array().unwrap().len(), 1, "{id}: {events}");
            events[0].clone()
        }
    };
    let typical = stored("u1").await;
    assert_eq!(typical["insert_id"], "mix-0");
    let properties = typical["properties"].as_object().unwrap();
    let keys: Vec<&str> = properties.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "b",
            "a",
            "n",
            "s",
            "$mp_api_endpoint",
            "$mp_api_timestamp_ms",
            "mp_processing_time_ms",
            "$import"
        ]
    );
    assert_eq!(properties["n"].as_f64(), Some(1000.0));
    assert_eq!(properties["s"], "é");
    assert_eq!(properties["$import"], true);

    let derived = stored("u2").await;
    assert_eq!(derived["insert_id"].as_str().unwrap().len(), 32);
    assert_eq!(stored("u4").await["properties"]["k"], 2);
    assert_eq!(
        stored("u5").await["properties"]["$import"],
        true,
        "the server's value replaces the client's"
    );
    server.stop().await;
}

#[tokio::test]
async fn unstorable_records_fail_alone() {
    let server = TestServer::start().await;
    let t = now_secs();
    let nested = |depth: usize| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
    let record = |id: &str, distinct_id: &str, extra: &str| {
        format!(
            r#"{{"event":"e","properties":{{"time":{t},"distinct_id":"{distinct_id}","$insert_id":"{id}"{extra}}}}}"#
        )
    };
    let body = format!(
        "[{},{},{},{},{},{}]",
        record("ok-0", "u-ok", ""),
        record("deep-1", "u-deep", &format!(r#","d":{}"#, nested(101))),
        record("deep-2", "u-deeper", &format!(r#","d":{}"#, nested(127))),
        record("nul-3", "bad\\u0000id", ""),
        r#"{"event":"bad\u0000name","properties":{"time":1,"distinct_id":"u","$insert_id":"nul-4"}}"#
            .replace("\"time\":1", &format!("\"time\":{t}")),
        record("ok-5", "u-ok", &format!(r#","d":{}"#, nested(100))),
    );
    let (status, reply) = server.import_raw("?strict=1", body).await;
    assert_eq!(status, 400, "{reply}");
    assert_eq!(reply["num_records_imported"], 2, "{reply}");
    let failed: Vec<(u64, String)> = reply["failed_records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["index"].as_u64().unwrap(),
                f["field"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        failed,
        [
            (1, "properties.d".to_owned()),
            (2, String::new()),
            (3, "properties.distinct_id".to_owned()),
            (4, "event".to_owned()),
        ],
        "{reply}"
    );
    assert!(
        reply["failed_records"][0]["message"]
            .as_str()
            .unwrap()
            .contains("101 levels deep; at most 100"),
        "{reply}"
    );
    assert!(
        reply["failed_records"][2]["message"]
            .as_str()
            .unwrap()
            .contains("NUL"),
        "{reply}"
    );

    // What was stored can be read back.
    let stored = server.admin_get("/events?distinct_id=u-ok").await;
    assert_eq!(stored.as_array().unwrap().len(), 2, "{stored}");
    server.stop().await;
}
