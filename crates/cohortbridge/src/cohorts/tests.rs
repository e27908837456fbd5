//! Tests of the engine and the reference evaluator on the same hand-written cases: every case
//! runs through both and requires the same members.

use std::collections::HashMap;

use chrono_tz::Tz;
use serde_json::{json, Map, Value};

use super::data::{CohortData, EventRow};
use super::engine::Engine;
use super::{parse, reference, Definition};

const NOW: i64 = 1_800_000_000_000;
const DAY: i64 = 86_400_000;

/// An event row with properties.
fn row(distinct_id: &str, event: &str, time_ms: i64, properties: Value) -> EventRow {
    EventRow {
        event: event.into(),
        distinct_id: distinct_id.into(),
        time_ms,
        properties: properties.as_object().cloned().unwrap_or_default(),
    }
}

fn data(events: Vec<EventRow>, profiles: &[(&str, Value)], links: &[(&str, &str)]) -> CohortData {
    CohortData {
        links: links
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
        profiles: profiles
            .iter()
            .map(|(id, p)| (id.to_string(), p.as_object().unwrap().clone()))
            .collect(),
        event_distinct_ids: events
            .iter()
            .filter(|e| !e.distinct_id.is_empty())
            .map(|e| e.distinct_id.clone())
            .collect(),
        events,
    }
}

/// Evaluates with the engine and the reference, requires both to agree, and returns the members.
fn evaluate_both(
    definition: &Value,
    data: &CohortData,
    cohorts: &HashMap<i64, Definition>,
    tz: Tz,
    now_ms: i64,
) -> Vec<String> {
    let definition = parse(definition).unwrap();
    let engine = Engine::build(data)
        .evaluate(&definition, cohorts, tz, now_ms)
        .unwrap();
    let plain = reference::evaluate(data, &definition, cohorts, tz, now_ms).unwrap();
    assert_eq!(engine.members, plain, "engine and reference disagree");
    engine.members.into_iter().collect()
}

/// Builds data from (distinct id, event, time) rows, profiles and links, and evaluates in UTC.
fn run(
    definition: Value,
    events: &[(&str, &str, i64)],
    profiles: &[(&str, Value)],
    links: &[(&str, &str)],
) -> Vec<String> {
    let rows = events
        .iter()
        .map(|(id, name, time)| row(id, name, *time, json!({})))
        .collect();
    evaluate_both(
        &definition,
        &data(rows, profiles, links),
        &HashMap::new(),
        Tz::UTC,
        NOW,
    )
}

fn with_properties(definition: Value, events: Vec<EventRow>) -> Vec<String> {
    evaluate_both(
        &definition,
        &data(events, &[], &[]),
        &HashMap::new(),
        Tz::UTC,
        NOW,
    )
}

fn documented_definition() -> Value {
    json!({"all": [
        {"event": "Purchase", "count": {"gte": 2}, "within": {"last_days": 30}},
        {"profile": "plan", "op": "eq", "value": "pro"},
        {"not": {"event": "Churned"}}
    ]})
}

#[test]
fn documented_definition_selects_exactly() {
    let events = [
        ("ann", "Purchase", NOW - DAY),
        ("ann", "Purchase", NOW - 2 * DAY),
        ("bob", "Purchase", NOW - DAY),
        ("bob", "Purchase", NOW - 40 * DAY),
        ("cid", "Purchase", NOW - DAY),
        ("cid", "Purchase", NOW - DAY),
        ("cid", "Churned", NOW - 100 * DAY),
        ("dee", "Purchase", NOW - DAY),
        ("dee", "Purchase", NOW - DAY),
    ];
    let profiles = [
        ("ann", json!({"plan": "pro"})),
        ("bob", json!({"plan": "pro"})),
        ("cid", json!({"plan": "pro"})),
        ("dee", json!({"plan": "free"})),
    ];
    assert_eq!(
        run(documented_definition(), &events, &profiles, &[]),
        vec!["ann"]
    );
}

#[test]
fn window_edge_is_inclusive() {
    let definition = json!({"event": "E", "within": {"last_days": 30}});
    let events = [
        ("at-edge", "E", NOW - 30 * DAY),
        ("outside", "E", NOW - 30 * DAY - 1),
    ];
    assert_eq!(run(definition, &events, &[], &[]), vec!["at-edge"]);
}

#[test]
fn future_events_are_not_counted() {
    let definition = json!({"event": "E"});
    assert!(run(definition, &[("later", "E", NOW + 1)], &[], &[]).is_empty());
}

#[test]
fn counts_merge_across_linked_ids() {
    let definition = json!({"event": "E", "count": {"gte": 2}});
    let events = [("$device:D1", "E", NOW - DAY), ("u-alice", "E", NOW - DAY)];
    let links = [("$device:D1", "u-alice")];
    assert_eq!(run(definition, &events, &[], &links), vec!["u-alice"]);
}

#[test]
fn not_covers_profile_only_users() {
    let definition = json!({"not": {"event": "E"}});
    let members = run(
        definition,
        &[("a", "E", NOW - DAY), ("b", "F", NOW - DAY)],
        &[("c", json!({}))],
        &[],
    );
    assert_eq!(members, vec!["b", "c"]);
}

#[test]
fn orphan_device_profile_is_nobody() {
    let definition = json!({"profile": "$braze_external_id", "op": "set"});
    let profiles = [
        ("$device:D2", json!({"$braze_external_id": "x"})),
        ("u-alice", json!({})),
    ];
    let links = [("$device:D2", "u-alice")];
    assert!(run(definition, &[], &profiles, &links).is_empty());
}

#[test]
fn empty_distinct_id_is_nobody() {
    assert!(run(json!({"event": "E"}), &[("", "E", NOW - DAY)], &[], &[]).is_empty());
}

#[test]
fn at_most_includes_zero() {
    let definition = json!({"event": "E", "count": {"lte": 1}});
    let events = [
        ("once", "E", NOW - DAY),
        ("twice", "E", NOW - DAY),
        ("twice", "E", NOW - DAY),
        ("never", "F", NOW),
    ];
    assert_eq!(run(definition, &events, &[], &[]), vec!["never", "once"]);
}

#[test]
fn any_is_a_union() {
    let definition =
        json!({"any": [{"event": "A"}, {"profile": "vip", "op": "eq", "value": true}]});
    let members = run(
        definition,
        &[("a", "A", NOW - DAY), ("b", "B", NOW)],
        &[("v", json!({"vip": true}))],
        &[],
    );
    assert_eq!(members, vec!["a", "v"]);
}

#[test]
fn where_filters_select_events() {
    let events = vec![
        row("eur", "Purchase", NOW - DAY, json!({"currency": "EUR"})),
        row("usd", "Purchase", NOW - DAY, json!({"currency": "USD"})),
        row("none", "Purchase", NOW - DAY, json!({})),
    ];
    let definition = json!({"event": "Purchase",
        "where": [{"property": "currency", "op": "eq", "value": "EUR"}]});
    assert_eq!(with_properties(definition, events), vec!["eur"]);
}

#[test]
fn sum_min_max_average() {
    let events = vec![
        row("a", "Purchase", NOW - DAY, json!({"amount": 10})),
        row("a", "Purchase", NOW - DAY, json!({"amount": 30})),
        row("a", "Purchase", NOW - DAY, json!({"amount": "n/a"})),
        row("b", "Purchase", NOW - DAY, json!({"amount": 5})),
        row("c", "Purchase", NOW - DAY, json!({})),
    ];
    let cases = [
        (
            json!({"event": "Purchase", "sum": {"property": "amount", "gte": 40}}),
            vec!["a"],
        ),
        (
            json!({"event": "Purchase", "sum": {"property": "amount", "lt": 6}}),
            vec!["b", "c"],
        ),
        (
            json!({"event": "Purchase", "min": {"property": "amount", "lte": 10}}),
            vec!["a", "b"],
        ),
        (
            json!({"event": "Purchase", "max": {"property": "amount", "gt": 10}}),
            vec!["a"],
        ),
        (
            json!({"event": "Purchase", "average": {"property": "amount", "eq": 20}}),
            vec!["a"],
        ),
        (
            json!({"event": "Purchase", "average": {"property": "amount", "lt": 100}}),
            vec!["a", "b"],
        ),
    ];
    for (definition, expected) in cases {
        assert_eq!(
            with_properties(definition.clone(), events.clone()),
            expected,
            "{definition}"
        );
    }
}

#[test]
fn distinct_days_use_time_zone() {
    // 23:30 and 00:30 UTC are two UTC days but one day in New York (18:30 and 19:30).
    let tz: Tz = "America/New_York".parse().unwrap();
    let now = 1_767_268_800_000; // 2026-01-01T12:00:00Z
    let events = vec![
        row("u", "Open", now - 12 * 3_600_000 - 30 * 60_000, json!({})),
        row("u", "Open", now - 11 * 3_600_000 - 30 * 60_000, json!({})),
    ];
    let definition = json!({"event": "Open", "distinct_days": {"gte": 2}});
    let data = data(events, &[], &[]);
    assert_eq!(
        evaluate_both(&definition, &data, &HashMap::new(), Tz::UTC, now),
        vec!["u"]
    );
    assert!(evaluate_both(&definition, &data, &HashMap::new(), tz, now).is_empty());
}

#[test]
fn first_time_in_window() {
    let events = vec![
        row("new", "Signup", NOW - DAY, json!({})),
        row("old", "Signup", NOW - 30 * DAY, json!({})),
        row("old", "Signup", NOW - DAY, json!({})),
    ];
    let definition = json!({"event": "Signup", "first_time": true, "within": {"last_days": 7}});
    assert_eq!(with_properties(definition, events), vec!["new"]);
}

#[test]
fn last_hours_window() {
    let events = vec![
        row("edge", "E", NOW - 6 * 3_600_000, json!({})),
        row("late", "E", NOW - 6 * 3_600_000 - 1, json!({})),
    ];
    let definition = json!({"event": "E", "within": {"last_hours": 6}});
    assert_eq!(with_properties(definition, events), vec!["edge"]);
}

#[test]
fn in_cohort_follows_references() {
    let data = data(
        vec![
            row("a", "E", NOW - DAY, json!({})),
            row("b", "F", NOW, json!({})),
        ],
        &[],
        &[],
    );
    let mut cohorts = HashMap::new();
    cohorts.insert(1, parse(&json!({"event": "E"})).unwrap());
    cohorts.insert(2, parse(&json!({"not": {"in_cohort": 1}})).unwrap());
    assert_eq!(
        evaluate_both(&json!({"in_cohort": 2}), &data, &cohorts, Tz::UTC, NOW),
        vec!["b"]
    );
}

#[test]
fn in_cohort_cycle_is_an_error() {
    let data = data(vec![row("a", "E", NOW, json!({}))], &[], &[]);
    let mut cohorts = HashMap::new();
    cohorts.insert(1, parse(&json!({"in_cohort": 2})).unwrap());
    cohorts.insert(2, parse(&json!({"in_cohort": 1})).unwrap());
    let definition = parse(&json!({"in_cohort": 1})).unwrap();
    let engine = Engine::build(&data).evaluate(&definition, &cohorts, Tz::UTC, NOW);
    assert!(matches!(engine, Err(super::EvalError::CohortCycle { .. })));
    let plain = reference::evaluate(&data, &definition, &cohorts, Tz::UTC, NOW);
    assert!(plain.is_err());
}

#[test]
fn missing_in_cohort_is_an_error() {
    let data = data(vec![row("a", "E", NOW, json!({}))], &[], &[]);
    let definition = parse(&json!({"in_cohort": 9})).unwrap();
    let result = Engine::build(&data).evaluate(&definition, &HashMap::new(), Tz::UTC, NOW);
    assert!(matches!(
        result,
        Err(super::EvalError::CohortNotFound { cohort_id: 9 })
    ));
}

#[test]
fn between_window_at_month_end_in_berlin() {
    let tz: Tz = "Europe/Berlin".parse().unwrap();
    // 2026-02-28T22:59:59.999Z is 23:59:59.999 in Berlin; one millisecond later is March.
    let last_ms = 1_772_319_599_999;
    let events = vec![
        row("inside", "E", last_ms, json!({})),
        row("outside", "E", last_ms + 1, json!({})),
    ];
    let definition = json!({"event": "E", "within": {"between": ["2026-02-01", "2026-02-28"]}});
    let data = data(events, &[], &[]);
    assert_eq!(
        evaluate_both(&definition, &data, &HashMap::new(), tz, NOW),
        vec!["inside"]
    );
}

#[test]
fn member_profiles_are_returned() {
    let data = data(Vec::new(), &[("p", json!({"plan": "pro"}))], &[]);
    let definition = parse(&json!({"profile": "plan", "op": "eq", "value": "pro"})).unwrap();
    let members = Engine::build(&data)
        .evaluate(&definition, &HashMap::new(), Tz::UTC, NOW)
        .unwrap();
    let expected: Map<String, Value> = json!({"plan": "pro"}).as_object().unwrap().clone();
    assert_eq!(members.profiles.get("p"), Some(&expected));
}

fn live_members(live: &super::live::LiveCohort) -> Vec<String> {
    live.members().iter().cloned().collect()
}

#[test]
fn live_cohort_drops_member_when_window_slides() {
    use super::live::LiveCohort;

    let hour = 3_600_000;
    let data = data(vec![row("u", "E", NOW - 23 * hour, json!({}))], &[], &[]);
    let definition = parse(&json!({"event": "E", "within": {"last_hours": 24}})).unwrap();
    let mut live = LiveCohort::new(data, definition, HashMap::new(), Tz::UTC, NOW).unwrap();
    assert_eq!(live_members(&live), vec!["u"]);

    let changes = live.advance(NOW + hour).unwrap();
    assert!(changes.removed.is_empty());
    assert_eq!(live_members(&live), vec!["u"]);

    let changes = live.advance(NOW + hour + 1).unwrap();
    assert_eq!(changes.removed, vec!["u"]);
    assert!(live_members(&live).is_empty());
}

#[test]
fn live_cohort_last_days_across_dst() {
    use super::live::LiveCohort;

    // Berlin moved clocks forward on 2026-03-29. An event at 12:00 local on 28 March leaves a
    // two-day window at 12:00 local on 30 March, 47 hours later.
    let tz: Tz = "Europe/Berlin".parse().unwrap();
    let event_ms = 1_774_695_600_000; // 2026-03-28T12:00:00+01:00
    let data = data(vec![row("u", "E", event_ms, json!({}))], &[], &[]);
    let definition = parse(&json!({"event": "E", "within": {"last_days": 2}})).unwrap();
    let mut live = LiveCohort::new(data, definition, HashMap::new(), tz, event_ms).unwrap();
    assert_eq!(live_members(&live), vec!["u"]);

    let exit_ms = event_ms + 47 * 3_600_000;
    live.advance(exit_ms).unwrap();
    assert_eq!(live_members(&live), vec!["u"]);
    live.advance(exit_ms + 1).unwrap();
    assert!(live_members(&live).is_empty());
}

#[test]
fn live_cohort_follows_new_events_and_merges() {
    use super::live::LiveCohort;

    let definition = parse(&json!({"event": "E", "count": {"gte": 2}})).unwrap();
    let data = data(vec![row("u", "E", NOW - DAY, json!({}))], &[], &[]);
    let mut live = LiveCohort::new(data, definition, HashMap::new(), Tz::UTC, NOW).unwrap();
    assert!(live_members(&live).is_empty());

    let changes = live
        .apply_events(vec![row("$device:d", "E", NOW, json!({}))], NOW)
        .unwrap();
    assert!(changes.added.is_empty());

    let changes = live
        .apply_links(vec![("$device:d".into(), "u".into())], NOW)
        .unwrap();
    assert_eq!(changes.added, vec!["u"]);
    assert_eq!(live_members(&live), vec!["u"]);
}
