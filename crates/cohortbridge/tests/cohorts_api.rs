//! Cohort routes against the real server: the project time zone, editing definitions with
//! `in_cohort` checks, preview, explain, Mixpanel's cohort list, and a storage failure during
//! a sync's evaluation.

mod common;

use common::{now_secs, TestEmulator, TestServer, ADMIN_KEY, DATA_IMPORT_KEY};
use serde_json::{json, Value};

async fn admin_put(server: &TestServer, path: &str, body: &Value) -> (reqwest::StatusCode, Value) {
    let response = server
        .http
        .put(server.url(&format!("/api/v1/projects/1{path}")))
        .bearer_auth(ADMIN_KEY)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Imports one event at an exact instant (RFC 3339) through `/import`.
async fn import_event(server: &TestServer, user: &str, event: &str, at: &str, properties: Value) {
    let time_ms = chrono::DateTime::parse_from_rfc3339(at)
        .unwrap()
        .timestamp_millis();
    let mut props = json!({"distinct_id": user, "time": time_ms, "$insert_id": format!("{user}-{event}-{time_ms}")});
    for (key, value) in properties.as_object().unwrap() {
        props[key] = value.clone();
    }
    let (status, body) = server
        .import_records(&[json!({"event": event, "properties": props})])
        .await;
    assert_eq!(status, 200, "{body}");
}

async fn set_profile(server: &TestServer, user: &str, set: Value) {
    let (status, text) = server
        .engage(&[json!({"$token": server.token, "$distinct_id": user, "$set": set})])
        .await;
    assert_eq!(status, 200, "{text}");
}

#[tokio::test]
async fn timezone_moves_day_windows() {
    let server = TestServer::start().await;
    assert_eq!(server.admin_get("").await["timezone"], "UTC");
    // 23:30 UTC on 31 January is 00:30 on 1 February in Berlin.
    import_event(
        &server,
        "late",
        "Purchase",
        "2026-01-31T23:30:00Z",
        json!({}),
    )
    .await;
    let cohort = server
        .create_cohort(
            "February buyers",
            json!({"event": "Purchase", "within": {"between": ["2026-02-01", "2026-02-28"]}}),
        )
        .await;
    assert!(server.members(cohort).await.is_empty());

    let (status, body) =
        admin_put(&server, "/timezone", &json!({"timezone": "Mars/Olympus"})).await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("Mars/Olympus"),
        "{body}"
    );

    let (status, body) =
        admin_put(&server, "/timezone", &json!({"timezone": "Europe/Berlin"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.admin_get("").await["timezone"], "Europe/Berlin");
    assert_eq!(server.members(cohort).await, vec!["late"]);
    server.stop().await;
}

#[tokio::test]
async fn in_cohort_references_are_checked_on_save() {
    let server = TestServer::start().await;
    let first = server.create_cohort("A doers", json!({"event": "A"})).await;
    let second = server
        .create_cohort("A doers again", json!({"in_cohort": first}))
        .await;

    let (status, body) = server
        .admin_post(
            "/cohorts",
            &json!({"name": "dangling", "definition": {"any": [{"in_cohort": 99}]}}),
        )
        .await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("99"), "{body}");

    let (status, body) = admin_put(
        &server,
        &format!("/cohorts/{first}"),
        &json!({"definition": {"not": {"in_cohort": second}}}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("itself"), "{body}");

    let (status, body) = admin_put(
        &server,
        &format!("/cohorts/{first}"),
        &json!({"definition": {"all": [{"event": "B"}, {"profile": "p", "op": "between", "value": [1]}]}}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("all[1].value"),
        "{body}"
    );

    // A valid edit takes effect at the next evaluation, also through the reference.
    import_event(&server, "b-user", "B", "2026-01-10T00:00:00Z", json!({})).await;
    let (status, body) = admin_put(
        &server,
        &format!("/cohorts/{first}"),
        &json!({"definition": {"event": "B"}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.members(second).await, vec!["b-user"]);
    server.stop().await;
}

#[tokio::test]
async fn explain_member_and_non_member() {
    let server = TestServer::start().await;
    let now = now_secs();
    let recent = |offset: i64| {
        chrono::DateTime::from_timestamp(now - offset, 0)
            .unwrap()
            .to_rfc3339()
    };
    import_event(
        &server,
        "ann",
        "Purchase",
        &recent(3600),
        json!({"amount": 30}),
    )
    .await;
    import_event(
        &server,
        "ann",
        "Purchase",
        &recent(7200),
        json!({"amount": 20}),
    )
    .await;
    import_event(
        &server,
        "bob",
        "Purchase",
        &recent(3600),
        json!({"amount": 5}),
    )
    .await;
    set_profile(&server, "ann", json!({"plan": "pro"})).await;
    set_profile(&server, "bob", json!({"plan": "free"})).await;
    let cohort = server
        .create_cohort(
            "Big spenders",
            json!({"all": [
                {"event": "Purchase", "sum": {"property": "amount", "gte": 40}, "within": {"last_days": 30}},
                {"profile": "plan", "op": "eq", "value": "pro"}
            ]}),
        )
        .await;

    let ann = server
        .admin_get(&format!("/cohorts/{cohort}/explain?user=ann"))
        .await;
    assert_eq!(ann["member"], true, "{ann}");
    let conditions = ann["conditions"].as_array().unwrap();
    assert_eq!(conditions.len(), 3, "{ann}");
    assert_eq!(conditions[1]["path"], "all[0]");
    assert!(
        conditions[1]["reason"]
            .as_str()
            .unwrap()
            .contains("counted 2"),
        "{ann}"
    );
    assert!(
        conditions[1]["reason"].as_str().unwrap().contains("50"),
        "{ann}"
    );
    assert_eq!(conditions[2]["holds"], true);

    let bob = server
        .admin_get(&format!("/cohorts/{cohort}/explain?user=bob"))
        .await;
    assert_eq!(bob["member"], false, "{bob}");
    let conditions = bob["conditions"].as_array().unwrap();
    assert_eq!(conditions[1]["holds"], false);
    assert_eq!(conditions[2]["holds"], false);
    assert!(
        conditions[2]["reason"]
            .as_str()
            .unwrap()
            .contains("\"free\""),
        "{bob}"
    );

    let (status, _) = server
        .admin_get_status(&format!("/cohorts/{cohort}/explain"))
        .await;
    assert_eq!(status, 400);
    server.stop().await;
}

#[tokio::test]
async fn preview_counts_exportable_members() {
    let server = TestServer::start().await;
    set_profile(
        &server,
        "with-id",
        json!({"plan": "pro", "$braze_external_id": "ext-1"}),
    )
    .await;
    set_profile(
        &server,
        "empty-id",
        json!({"plan": "pro", "$braze_external_id": ""}),
    )
    .await;
    set_profile(&server, "no-id", json!({"plan": "pro"})).await;
    set_profile(&server, "free", json!({"plan": "free"})).await;
    // A sync never sends an anonymous device that no user merged, whatever its profile holds,
    // so the preview does not count it as exportable either.
    set_profile(
        &server,
        "$device:d-1",
        json!({"plan": "pro", "$braze_external_id": "ext-device"}),
    )
    .await;
    let cohort = server
        .create_cohort(
            "Pro",
            json!({"profile": "plan", "op": "eq", "value": "pro"}),
        )
        .await;
    let preview = server
        .admin_get(&format!("/cohorts/{cohort}/preview?sample=2"))
        .await;
    assert_eq!(preview["count"], 4, "{preview}");
    assert_eq!(preview["exportable"], 1, "{preview}");
    assert_eq!(preview["not_exportable"], 3, "{preview}");
    assert_eq!(preview["sample"].as_array().unwrap().len(), 2, "{preview}");
    let (status, _) = server
        .admin_get_status(&format!("/cohorts/{cohort}/preview?connection=nope"))
        .await;
    assert_eq!(status, 404);
    server.stop().await;
}

#[tokio::test]
async fn mixpanel_cohort_list_shape() {
    let server = TestServer::start().await;
    set_profile(&server, "p1", json!({"plan": "pro"})).await;
    set_profile(&server, "p2", json!({"plan": "free"})).await;
    let cohort = server
        .create_cohort(
            "Pro",
            json!({"profile": "plan", "op": "eq", "value": "pro"}),
        )
        .await;

    let response = server
        .http
        .post(server.url("/api/query/cohorts/list"))
        .basic_auth(&server.api_secret, Some(""))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let list: Value = response.json().await.unwrap();
    let item = &list.as_array().unwrap()[0];
    assert_eq!(item["id"], cohort);
    assert_eq!(item["name"], "Pro");
    assert_eq!(item["count"], 1);
    assert_eq!(item["is_visible"], 1);
    assert_eq!(item["description"], "");
    assert!(item["created"].as_str().unwrap().len() == 19, "{item}");

    let response = server
        .http
        .post(server.url("/api/query/cohorts/list"))
        .basic_auth("wrong-secret", Some(""))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let response = server
        .http
        .post(server.url("/api/query/cohorts/list"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    server.stop().await;
}

#[tokio::test]
async fn storage_failure_keeps_previous_membership() {
    let emulator = TestEmulator::start().await;
    let server = TestServer::start().await;
    let (status, body) = server
        .admin_post(
            "/connections",
            &json!({"name": "emu", "base_url": emulator.base, "data_import_key": DATA_IMPORT_KEY}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    for (user, id) in [("ann", "ext-ann"), ("bob", "ext-bob")] {
        set_profile(&server, user, json!({"$braze_external_id": id})).await;
        let (status, text) = server
            .track(&[
                json!({"event": "Purchase", "properties": {"token": server.token,
                "distinct_id": user, "time": now_secs() - 60, "$insert_id": format!("{user}-1")}}),
            ])
            .await;
        assert_eq!(status, 200, "{text}");
    }
    let cohort = server
        .create_cohort(
            "Buyers",
            json!({"event": "Purchase", "within": {"last_days": 7}}),
        )
        .await;
    let (status, export) = server
        .admin_post(
            "/exports",
            &json!({"cohort_id": cohort, "connection": "emu", "mode": "dynamic", "every_secs": 3600}),
        )
        .await;
    assert_eq!(status, 201, "{export}");
    assert_eq!(export["run"]["status"], "succeeded", "{export}");
    let sync_id = export["sync"]["id"].as_i64().unwrap();
    let braze_cohort = format!("cohortbridge-test-1-{cohort}");
    let mut before = emulator.members(&braze_cohort).await;
    before.sort();
    assert_eq!(before, vec!["ext-ann", "ext-bob"]);

    // The events table disappears, so evaluation fails while reading it.
    server
        .database
        .execute("ALTER TABLE events RENAME TO events_hidden")
        .await;
    let (status, run) = server
        .admin_post(&format!("/syncs/{sync_id}/run"), &json!({}))
        .await;
    assert_eq!(status, 200, "{run}");
    assert_eq!(run["status"], "failed", "{run}");
    assert!(
        run["error"]
            .as_str()
            .unwrap()
            .contains("cohort evaluation failed"),
        "{run}"
    );
    let (status, _) = server
        .admin_get_status(&format!("/cohorts/{cohort}/members"))
        .await;
    assert_eq!(status, 503);
    let mut during = emulator.members(&braze_cohort).await;
    during.sort();
    assert_eq!(during, before);

    server
        .database
        .execute("ALTER TABLE events_hidden RENAME TO events")
        .await;
    let (status, run) = server
        .admin_post(&format!("/syncs/{sync_id}/run"), &json!({}))
        .await;
    assert_eq!(status, 200, "{run}");
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["added"], 0, "{run}");
    assert_eq!(run["removed"], 0, "{run}");
    server.stop().await;
}

#[tokio::test]
async fn evaluate_cohort_by_id() {
    use cohortbridge::store::Store;

    let server = TestServer::start().await;
    set_profile(&server, "p1", json!({"plan": "pro"})).await;
    let cohort = server
        .create_cohort(
            "Pro",
            json!({"profile": "plan", "op": "eq", "value": "pro"}),
        )
        .await;
    let stopped = server.stop_keeping_data().await;
    let store = stopped.database.open_store().await;
    let store: &dyn Store = store.as_ref();
    let now = chrono::Utc::now().timestamp_millis();
    let evaluated = cohortbridge::cohorts::evaluate_cohort(store, 1, cohort, now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        evaluated.members.into_iter().collect::<Vec<_>>(),
        vec!["p1"]
    );
    assert!(evaluated.profiles.contains_key("p1"));
    let missing = cohortbridge::cohorts::evaluate_cohort(store, 1, cohort + 1, now)
        .await
        .unwrap();
    assert!(missing.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_saves_never_close_cycle() {
    let server = TestServer::start().await;
    for round in 0..25 {
        let a = server
            .create_cohort(&format!("A{round}"), json!({"event": "x"}))
            .await;
        let b = server
            .create_cohort(&format!("B{round}"), json!({"event": "y"}))
            .await;
        let a_on_b = json!({"definition": {"in_cohort": b}});
        let b_on_a = json!({"definition": {"in_cohort": a}});
        let path_a = format!("/cohorts/{a}");
        let path_b = format!("/cohorts/{b}");
        let (first, second) = tokio::join!(
            admin_put(&server, &path_a, &a_on_b),
            admin_put(&server, &path_b, &b_on_a)
        );
        let saved = [first.0, second.0]
            .iter()
            .filter(|status| status.is_success())
            .count();
        assert_eq!(
            saved, 1,
            "round {round}: exactly one save may pass: {first:?} {second:?}"
        );
        let rejected = if first.0.is_success() {
            &second
        } else {
            &first
        };
        assert_eq!(rejected.0, 400, "round {round}: {rejected:?}");
        assert!(
            rejected.1["error"].as_str().unwrap().contains("in_cohort"),
            "{rejected:?}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn evaluation_keeps_only_requested_properties() {
    use cohortbridge::store::Store;

    let server = TestServer::start().await;
    let now = chrono::Utc::now();
    let at = |days: i64| (now - chrono::Duration::days(days)).to_rfc3339();
    import_event(
        &server,
        "big",
        "Purchase",
        &at(1),
        json!({"currency": "EUR", "amount": 80}),
    )
    .await;
    import_event(
        &server,
        "big",
        "Purchase",
        &at(2),
        json!({"currency": "EUR", "amount": 30}),
    )
    .await;
    import_event(
        &server,
        "small",
        "Purchase",
        &at(1),
        json!({"currency": "EUR", "amount": 50}),
    )
    .await;
    import_event(
        &server,
        "usd",
        "Purchase",
        &at(1),
        json!({"currency": "USD", "amount": 500}),
    )
    .await;
    import_event(
        &server,
        "old",
        "Purchase",
        &at(40),
        json!({"currency": "EUR", "amount": 500}),
    )
    .await;
    for user in ["big", "small", "usd", "old"] {
        set_profile(
            &server,
            user,
            json!({"plan": "pro", "$braze_external_id": format!("ext-{user}")}),
        )
        .await;
    }
    let stopped = server.stop_keeping_data().await;
    let store = stopped.database.open_store().await;
    let store: &dyn Store = store.as_ref();

    let definition = cohortbridge::cohorts::parse(&json!({"all": [
        {"profile": "plan", "op": "eq", "value": "pro"},
        {"event": "Purchase",
         "where": [{"property": "currency", "op": "eq", "value": "EUR"}],
         "sum": {"property": "amount", "gte": 100},
         "within": {"last_days": 30}}
    ]}))
    .unwrap();
    let now_ms = now.timestamp_millis();
    let requested = vec!["$braze_external_id".to_owned()];
    let kept =
        cohortbridge::cohorts::evaluate_with_properties(store, 1, &definition, &requested, now_ms)
            .await
            .unwrap();
    assert_eq!(kept.members.iter().collect::<Vec<_>>(), vec!["big"]);
    let profile = &kept.profiles["big"];
    assert_eq!(profile.get("$braze_external_id"), Some(&json!("ext-big")));
    assert!(profile.get("plan").is_none(), "{profile:?}");

    let full = cohortbridge::cohorts::evaluate(store, 1, &definition, now_ms)
        .await
        .unwrap();
    assert_eq!(full.members, kept.members);
    assert_eq!(full.profiles["big"].get("plan"), Some(&json!("pro")));
    assert_eq!(
        full.profiles["big"].get("$braze_external_id"),
        Some(&json!("ext-big"))
    );
}
