//! Property-based agreement: the cohort engine, and a live cohort kept current incrementally,
//! return the same members as the plain reference evaluator for random data, random
//! definitions, time zones and evaluation instants.
//!
//! On failure proptest prints the minimal failing input and stores its seed under
//! `tests/proptest-regressions/`, so the case replays on the next run. `PROPTEST_CASES` overrides
//! the number of cases.

use std::collections::HashMap;

use chrono_tz::Tz;
use cohortbridge::cohorts::data::{CohortData, EventRow};
use cohortbridge::cohorts::engine::Engine;
use cohortbridge::cohorts::live::LiveCohort;
use cohortbridge::cohorts::{parse, reference, Definition};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use serde_json::{json, Map, Value};

const NOW: i64 = 1_774_785_600_000; // 2026-03-29T12:00:00Z, the day Berlin moves clocks forward.
const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

const USERS: &[&str] = &["ann", "bob", "cid", "$device:d1", "$device:d2", "eve", ""];
const EVENTS: &[&str] = &["A", "B", "C"];
const ZONES: &[&str] = &["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"];

fn event_time() -> impl Strategy<Value = i64> {
    prop_oneof![
        // Whole days and hours back, which land exactly on window edges.
        (0i64..40).prop_map(|d| NOW - d * DAY),
        (0i64..72).prop_map(|h| NOW - h * HOUR),
        (0i64..40 * DAY).prop_map(|ms| NOW - ms),
        (1i64..DAY).prop_map(|ms| NOW + ms),
    ]
}

/// How far the evaluation instant lies from `NOW`: mostly exactly on it or whole hours away, so
/// that event times fall exactly on window edges.
fn evaluation_offset() -> impl Strategy<Value = i64> {
    prop_oneof![
        3 => Just(0i64),
        2 => (-72i64..72).prop_map(|h| h * HOUR),
        1 => -3 * DAY..3 * DAY,
    ]
}

fn property_value() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        (0i64..50).prop_map(|n| Some(json!(n))),
        prop::sample::select(vec!["pro", "free", "x"]).prop_map(|s| Some(json!(s))),
        Just(Some(json!(true))),
        Just(Some(Value::Null)),
        Just(Some(json!(["a", "b"]))),
        prop::sample::select(vec!["2026-03-01", "2026-03-28T10:00:00+01:00", "soon"])
            .prop_map(|s| Some(json!(s))),
    ]
}

fn properties() -> impl Strategy<Value = Map<String, Value>> {
    (property_value(), property_value()).prop_map(|(amount, plan)| {
        let mut map = Map::new();
        if let Some(v) = amount {
            map.insert("amount".into(), v);
        }
        if let Some(v) = plan {
            map.insert("plan".into(), v);
        }
        map
    })
}

fn event_row() -> impl Strategy<Value = EventRow> {
    (
        prop::sample::select(USERS),
        prop::sample::select(EVENTS),
        event_time(),
        properties(),
    )
        .prop_map(|(user, event, time_ms, properties)| EventRow {
            event: event.into(),
            distinct_id: user.into(),
            time_ms,
            properties,
        })
}

fn cohort_data() -> impl Strategy<Value = CohortData> {
    (
        prop::collection::vec(event_row(), 0..40),
        prop::collection::vec((prop::sample::select(USERS), properties()), 0..6),
        prop::collection::vec(
            (
                prop::sample::select(vec!["$device:d1", "$device:d2"]),
                prop::sample::select(vec!["ann", "bob"]),
            ),
            0..2,
        ),
    )
        .prop_map(|(events, profiles, links)| CohortData {
            links: links
                .into_iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            profiles: profiles
                .into_iter()
                .filter(|(id, _)| !id.is_empty())
                .map(|(id, p)| (id.to_string(), p))
                .collect(),
            event_distinct_ids: events
                .iter()
                .filter(|e| !e.distinct_id.is_empty())
                .map(|e| e.distinct_id.clone())
                .collect(),
            events,
        })
}

fn filter_json(name_key: &'static str) -> impl Strategy<Value = Value> {
    let property = prop::sample::select(vec!["amount", "plan"]);
    let op_value = prop_oneof![
        (0i64..50).prop_map(|n| ("gte", json!(n))),
        (0i64..50).prop_map(|n| ("lt", json!(n))),
        Just(("eq", json!("pro"))),
        Just(("neq", json!("pro"))),
        Just(("contains", json!("r"))),
        Just(("not_contains", json!("a"))),
        Just(("in", json!(["pro", 3, true]))),
        (0i64..25).prop_map(|n| ("between", json!([n, n + 20]))),
        Just(("set", Value::Null)),
        Just(("not_set", Value::Null)),
        Just(("before", json!("2026-03-15"))),
        Just(("after", json!("2026-03-01T00:00:00Z"))),
        (1i64..60).prop_map(|n| ("within_last", json!(n))),
        Just(("includes", json!("a"))),
    ];
    let value_type =
        prop::sample::select(vec![None, Some("string"), Some("number"), Some("datetime")]);
    (property, op_value, value_type).prop_map(move |(property, (op, value), value_type)| {
        let mut map = Map::new();
        map.insert(name_key.into(), json!(property));
        map.insert("op".into(), json!(op));
        if !value.is_null() {
            map.insert("value".into(), value);
        }
        // A datetime-typed equality needs a datetime value, which these ops do not carry.
        let needs_datetime_value = ["eq", "neq", "contains", "not_contains", "includes"];
        if let Some(t) =
            value_type.filter(|t| *t != "datetime" || !needs_datetime_value.contains(&op))
        {
            map.insert("type".into(), json!(t));
        }
        Value::Object(map)
    })
}

fn window_json() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        (1u32..40).prop_map(|d| Some(json!({"last_days": d}))),
        (1u32..80).prop_map(|h| Some(json!({"last_hours": h}))),
        Just(Some(json!({"between": ["2026-03-01", "2026-03-28"]}))),
        Just(Some(json!({"since": "2026-03-20"}))),
        Just(Some(json!({"all_time": true}))),
    ]
}

fn event_json() -> impl Strategy<Value = Value> {
    let measure = prop_oneof![
        Just(None),
        (
            prop::sample::select(vec!["gte", "gt", "eq", "lte", "lt"]),
            0i64..4
        )
            .prop_map(|(op, n)| Some(("count", json!({op: n})))),
        (prop::sample::select(vec!["gte", "lte"]), 0i64..4)
            .prop_map(|(op, n)| Some(("distinct_days", json!({op: n})))),
        (
            prop::sample::select(vec!["sum", "min", "max", "average"]),
            prop::sample::select(vec!["gte", "lt", "eq"]),
            0i64..60
        )
            .prop_map(|(f, op, n)| Some((f, json!({"property": "amount", op: n})))),
        Just(Some(("first_time", json!(true)))),
    ];
    (
        prop::sample::select(EVENTS),
        prop::collection::vec(filter_json("property"), 0..2),
        measure,
        window_json(),
    )
        .prop_map(|(event, filters, measure, window)| {
            let mut map = Map::new();
            map.insert("event".into(), json!(event));
            if !filters.is_empty() {
                map.insert("where".into(), Value::Array(filters));
            }
            let first_time = measure
                .as_ref()
                .is_some_and(|(key, _)| *key == "first_time");
            if let Some((key, value)) = measure {
                map.insert(key.into(), value);
            }
            // "first_time" needs a bounded window.
            let window = match window {
                Some(w) if first_time && w.get("all_time").is_some() => None,
                other => other,
            };
            match window {
                Some(window) => {
                    map.insert("within".into(), window);
                }
                None if first_time => {
                    map.insert("within".into(), json!({"last_days": 7}));
                }
                None => {}
            }
            Value::Object(map)
        })
}

fn definition_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        3 => event_json(),
        2 => filter_json("profile"),
        1 => prop::sample::select(vec![1i64, 2]).prop_map(|id| json!({"in_cohort": id})),
    ];
    leaf.prop_recursive(4, 24, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 1..4).prop_map(|items| json!({"all": items})),
            prop::collection::vec(inner.clone(), 1..4).prop_map(|items| json!({"any": items})),
            inner.prop_map(|item| json!({"not": item})),
        ]
    })
}

/// Cohorts 1 and 2, which random definitions may reference.
fn referenced_cohorts() -> HashMap<i64, Definition> {
    let mut cohorts = HashMap::new();
    cohorts.insert(
        1,
        parse(&json!({"event": "A", "count": {"gte": 2}, "within": {"last_days": 7}})).unwrap(),
    );
    cohorts.insert(
        2,
        parse(&json!({"any": [{"in_cohort": 1}, {"profile": "plan", "op": "eq", "value": "pro"}]}))
            .unwrap(),
    );
    cohorts
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 3000,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/proptest-regressions/cohort_agreement.txt",
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn engine_agrees_with_reference(
        data in cohort_data(),
        definition in definition_json(),
        zone in prop::sample::select(ZONES),
        offset in evaluation_offset(),
    ) {
        let tz: Tz = zone.parse().unwrap();
        let now_ms = NOW + offset;
        let parsed = match parse(&definition) {
            Ok(parsed) => parsed,
            Err(e) => panic!("generated an invalid definition {definition}: {e}"),
        };
        let cohorts = referenced_cohorts();
        let engine = Engine::build(&data)
            .evaluate(&parsed, &cohorts, tz, now_ms)
            .unwrap();
        let plain = reference::evaluate(&data, &parsed, &cohorts, tz, now_ms).unwrap();
        prop_assert_eq!(engine.members, plain, "definition {} in {} at {}", definition, zone, now_ms);
    }
}

/// Instants after the start at which a live cohort is brought up to date.
fn later_steps() -> impl Strategy<Value = Vec<i64>> {
    prop::collection::vec(
        prop_oneof![
            3 => (1i64..180).prop_map(|m| m * 60_000),
            2 => (1i64..72).prop_map(|h| h * HOUR),
            1 => 1i64..5 * DAY,
            1 => (1i64..10).prop_map(|d| d * DAY),
        ],
        1..10,
    )
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1500,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/proptest-regressions/live_cohort.txt",
        ))),
        ..ProptestConfig::default()
    })]

    /// A live cohort fed a batch of events, profile updates and links, then moved forward in
    /// time, has exactly the members the reference computes over the same data at each step.
    #[test]
    fn live_cohort_agrees_with_reference(
        data in cohort_data(),
        later_events in prop::collection::vec(event_row(), 0..15),
        later_profiles in prop::collection::vec((prop::sample::select(USERS), properties()), 0..3),
        link in prop::option::of((
            prop::sample::select(vec!["$device:d1", "$device:d2"]),
            prop::sample::select(vec!["cid", "eve"]),
        )),
        definition in definition_json(),
        zone in prop::sample::select(ZONES),
        start in evaluation_offset(),
        steps in later_steps(),
    ) {
        let tz: Tz = zone.parse().unwrap();
        let parsed = parse(&definition).unwrap();
        let cohorts = referenced_cohorts();
        let mut now_ms = NOW + start - 5 * DAY;
        // The reference reads `data`, to which every change is applied as the live cohort
        // receives it.
        let mut data = data;
        let mut live =
            LiveCohort::new(data.clone(), parsed.clone(), cohorts.clone(), tz, now_ms).unwrap();
        let expected = reference::evaluate(&data, &parsed, &cohorts, tz, now_ms).unwrap();
        prop_assert_eq!(live.members(), &expected, "at start {}", now_ms);

        for row in &later_events {
            if !row.distinct_id.is_empty() {
                data.event_distinct_ids.insert(row.distinct_id.clone());
                data.events.push(row.clone());
            }
        }
        live.apply_events(later_events, now_ms).unwrap();
        let expected = reference::evaluate(&data, &parsed, &cohorts, tz, now_ms).unwrap();
        prop_assert_eq!(live.members(), &expected, "after events at {}", now_ms);

        let profiles = later_profiles
            .into_iter()
            .filter(|(id, _)| !id.is_empty())
            .map(|(id, p)| (id.to_string(), p))
            .collect::<Vec<(String, _)>>();
        data.profiles.extend(profiles.iter().cloned());
        live.apply_profiles(profiles, now_ms).unwrap();
        let expected = reference::evaluate(&data, &parsed, &cohorts, tz, now_ms).unwrap();
        prop_assert_eq!(live.members(), &expected, "after profiles at {}", now_ms);

        if let Some((device, user)) = link {
            data.links.entry(device.to_string()).or_insert_with(|| user.to_string());
            live.apply_links(vec![(device.to_string(), user.to_string())], now_ms).unwrap();
            let expected = reference::evaluate(&data, &parsed, &cohorts, tz, now_ms).unwrap();
            prop_assert_eq!(live.members(), &expected, "after link at {}", now_ms);
        }

        for step in steps {
            now_ms += step;
            let changes = live.advance(now_ms).unwrap();
            let expected = reference::evaluate(&data, &parsed, &cohorts, tz, now_ms).unwrap();
            prop_assert_eq!(live.members(), &expected, "after advancing to {} ({:?})", now_ms, changes);
        }
    }
}

/// A long `$device:` id, longer than the ids the distinct id table stores inside its slots.
const LONG_DEVICE: &str = "$device:0f9d2c1e-5b7a-4c3e-9a1d-6e8f7b2c4d5a";

/// Distinct ids from a larger pool than `USERS`, with long ids among them, so that a batch
/// contains more ids than `LiveCohort::apply_events` looks ahead.
fn batch_distinct_id() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => prop::sample::select(USERS).prop_map(str::to_owned),
        2 => (0u32..40).prop_map(|n| format!("u{n}")),
        1 => (0u32..6).prop_map(|n| format!("$device:0f9d2c1e-5b7a-4c3e-9a1d-6e8f7b2c4d{n:02}")),
        1 => Just(LONG_DEVICE.to_owned()),
    ]
}

fn batch_event_row() -> impl Strategy<Value = EventRow> {
    (
        batch_distinct_id(),
        prop::sample::select(EVENTS),
        event_time(),
        properties(),
    )
        .prop_map(|(distinct_id, event, time_ms, properties)| EventRow {
            event: event.into(),
            distinct_id,
            time_ms,
            properties,
        })
}

/// One change a live cohort receives after it starts.
#[derive(Debug, Clone)]
enum Change {
    /// A batch of events, in arrival order and at any times, earlier ones included.
    Events(Vec<EventRow>),
    /// A `$device:` id merged into a user.
    Link(String, String),
    /// The clock moving forward with no new data.
    Advance(i64),
}

fn change() -> impl Strategy<Value = Change> {
    let step = prop_oneof![
        (1i64..180).prop_map(|m| m * 60_000),
        (1i64..72).prop_map(|h| h * HOUR),
        (1i64..10).prop_map(|d| d * DAY),
    ];
    prop_oneof![
        3 => prop::collection::vec(batch_event_row(), 0..60).prop_map(Change::Events),
        1 => (
            prop::sample::select(vec![LONG_DEVICE, "$device:d1", "$device:d2"]),
            prop::sample::select(vec!["ann", "bob", "u1", "u2"]),
        )
            .prop_map(|(device, user)| Change::Link(device.into(), user.into())),
        2 => step.prop_map(Change::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 800,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/proptest-regressions/live_cohort_batches.txt",
        ))),
        ..ProptestConfig::default()
    })]

    /// A live cohort fed several batches of events larger than its look-ahead, with events
    /// out of time order, identity merges and the clock moving past events between them, has
    /// exactly the members the reference computes after every change.
    #[test]
    fn live_cohort_agrees_across_batches(
        data in cohort_data(),
        changes in prop::collection::vec(change(), 1..8),
        definition in definition_json(),
        zone in prop::sample::select(ZONES),
        start in evaluation_offset(),
    ) {
        let tz: Tz = zone.parse().unwrap();
        let parsed = parse(&definition).unwrap();
        let cohorts = referenced_cohorts();
        let mut now_ms = NOW + start - 5 * DAY;
        let mut data = data;
        let mut live =
            LiveCohort::new(data.clone(), parsed.clone(), cohorts.clone(), tz, now_ms).unwrap();

        for (step, change) in changes.into_iter().enumerate() {
            match change {
                Change::Events(events) => {
                    for row in &events {
                        if !row.distinct_id.is_empty() {
                            data.event_distinct_ids.insert(row.distinct_id.clone());
                            data.events.push(row.clone());
                        }
                    }
                    live.apply_events(events, now_ms).unwrap();
                }
                Change::Link(device, user) => {
                    data.links.entry(device.clone()).or_insert_with(|| user.clone());
                    live.apply_links(vec![(device, user)], now_ms).unwrap();
                }
                Change::Advance(by) => {
                    now_ms += by;
                    live.advance(now_ms).unwrap();
                }
            }
            let expected = reference::evaluate(&data, &parsed, &cohorts, tz, now_ms).unwrap();
            prop_assert_eq!(live.members(), &expected, "after change {} at {}", step, now_ms);
        }
    }
}
