//! Evaluation of a cohort definition as of an instant `now_ms`, which the caller passes in.
//!
//! Members are canonical users: every stored distinct id is first resolved through the
//! identity links. The users considered are those with at least one event (the empty distinct
//! id excluded) and those with a profile under their canonical id. A profile stored under a
//! `$device:` id that was later merged into a user is an orphan and belongs to nobody.
//! Evaluation either completes or returns an error; it never returns a partial membership.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde_json::{Map, Value};

use super::definition::{Definition, EventRule};
use super::values;
use crate::identity;
use crate::store::{CohortInputs, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("cohort evaluation failed to read the store: {0}")]
    Store(#[from] StoreError),
}

/// The result of one evaluation.
#[derive(Debug, Default)]
pub struct CohortMembers {
    /// Canonical ids of the members, sorted.
    pub members: BTreeSet<String>,
    /// Profiles by canonical id, for the members that have one.
    pub profiles: HashMap<String, Map<String, Value>>,
}

type CountKey = (String, Option<i64>);

/// Loads what `definition` needs from the store and evaluates it as of `now_ms`.
pub async fn evaluate(
    store: &dyn Store,
    project_id: i64,
    definition: &Definition,
    now_ms: i64,
) -> Result<CohortMembers, EvalError> {
    let inputs = store.cohort_inputs(project_id).await?;
    let mut rules = Vec::new();
    collect_event_rules(definition, &mut rules);

    let mut counts: HashMap<CountKey, HashMap<String, i64>> = HashMap::new();
    for rule in rules {
        let key = (rule.event.clone(), rule.within.since_ms(now_ms));
        if counts.contains_key(&key) {
            continue;
        }
        let raw = store
            .event_counts(project_id, &rule.event, key.1, now_ms)
            .await?;
        counts.insert(key, by_canonical(&inputs.links, raw));
    }
    Ok(evaluate_loaded(definition, inputs, &counts, now_ms))
}

fn collect_event_rules<'a>(definition: &'a Definition, out: &mut Vec<&'a EventRule>) {
    match definition {
        Definition::All(items) | Definition::Any(items) => {
            items.iter().for_each(|item| collect_event_rules(item, out))
        }
        Definition::Not(inner) => collect_event_rules(inner, out),
        Definition::Event(rule) => out.push(rule),
        Definition::Profile(_) => {}
    }
}

fn by_canonical(
    links: &HashMap<String, String>,
    raw: HashMap<String, i64>,
) -> HashMap<String, i64> {
    let mut counts = HashMap::new();
    for (distinct_id, count) in raw {
        *counts
            .entry(identity::canonical(links, &distinct_id).to_owned())
            .or_insert(0) += count;
    }
    counts
}

/// The pure part of evaluation: `counts` holds, per (event, window start), event counts by
/// canonical id.
fn evaluate_loaded(
    definition: &Definition,
    inputs: CohortInputs,
    counts: &HashMap<CountKey, HashMap<String, i64>>,
    now_ms: i64,
) -> CohortMembers {
    let CohortInputs {
        links,
        mut profiles,
        event_distinct_ids,
    } = inputs;
    // A profile stored under a linked `$device:` id is an orphan: its device now resolves to a
    // user, and the user does not inherit it.
    profiles.retain(|distinct_id, _| !links.contains_key(distinct_id));

    let mut users: HashSet<String> = event_distinct_ids
        .iter()
        .map(|id| identity::canonical(&links, id).to_owned())
        .collect();
    users.extend(profiles.keys().cloned());

    let context = Context {
        profiles: &profiles,
        counts,
        now_ms,
    };
    let members: BTreeSet<String> = users
        .into_iter()
        .filter(|user| context.matches(definition, user))
        .collect();
    let member_profiles = members
        .iter()
        .filter_map(|id| profiles.get(id).map(|p| (id.clone(), p.clone())))
        .collect();
    CohortMembers {
        members,
        profiles: member_profiles,
    }
}

struct Context<'a> {
    profiles: &'a HashMap<String, Map<String, Value>>,
    counts: &'a HashMap<CountKey, HashMap<String, i64>>,
    now_ms: i64,
}

impl Context<'_> {
    fn matches(&self, definition: &Definition, user: &str) -> bool {
        match definition {
            Definition::All(items) => items.iter().all(|item| self.matches(item, user)),
            Definition::Any(items) => items.iter().any(|item| self.matches(item, user)),
            Definition::Not(inner) => !self.matches(inner, user),
            Definition::Event(rule) => {
                let key = (rule.event.clone(), rule.within.since_ms(self.now_ms));
                let count = self
                    .counts
                    .get(&key)
                    .and_then(|by_user| by_user.get(user))
                    .copied()
                    .unwrap_or(0);
                rule.count.matches(count)
            }
            Definition::Profile(rule) => {
                let actual = self.profiles.get(user).and_then(|p| p.get(&rule.property));
                values::matches(actual, rule.op, rule.value.as_ref())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::cohorts::parse;

    const NOW: i64 = 1_800_000_000_000;
    const DAY: i64 = 86_400_000;

    /// Builds inputs from (distinct id, event, time) rows, profiles and links, and evaluates.
    fn run(
        definition: Value,
        events: &[(&str, &str, i64)],
        profiles: &[(&str, Value)],
        links: &[(&str, &str)],
    ) -> Vec<String> {
        let definition = parse(&definition).unwrap();
        let links: HashMap<String, String> = links
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let mut rules = Vec::new();
        collect_event_rules(&definition, &mut rules);
        let mut counts = HashMap::new();
        for rule in rules {
            let since = rule.within.since_ms(NOW);
            let mut raw = HashMap::new();
            for (id, name, time) in events {
                if *name == rule.event
                    && since.is_none_or(|s| *time >= s)
                    && *time <= NOW
                    && !id.is_empty()
                {
                    *raw.entry(id.to_string()).or_insert(0) += 1;
                }
            }
            counts.insert((rule.event.clone(), since), by_canonical(&links, raw));
        }
        let inputs = CohortInputs {
            links,
            profiles: profiles
                .iter()
                .map(|(id, p)| (id.to_string(), p.as_object().unwrap().clone()))
                .collect(),
            event_distinct_ids: events
                .iter()
                .filter(|e| !e.0.is_empty())
                .map(|e| e.0.to_string())
                .collect(),
        };
        evaluate_loaded(&definition, inputs, &counts, NOW)
            .members
            .into_iter()
            .collect()
    }

    fn issue_definition() -> Value {
        json!({"all": [
            {"event": "Purchase", "count": {"gte": 2}, "within": {"last_days": 30}},
            {"profile": "plan", "op": "eq", "value": "pro"},
            {"not": {"event": "Churned"}}
        ]})
    }

    #[test]
    fn issue_definition_selects_exactly() {
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
            run(issue_definition(), &events, &profiles, &[]),
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
}
