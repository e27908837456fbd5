//! The plan of one run: which Braze ids to add and remove, and what happens to each member.
//!
//! The diff is keyed by the Braze id value, not by the distinct id. A member whose id changed is
//! one remove of the old id and one add of the new, and two members sharing one id keep it in
//! the cohort while either qualifies. Ids are compared and sent byte-exact.
//!
//! Ids whose last request was never acknowledged (pending) have an unknown state in Braze, so
//! each is sent again: an add when it is desired, a remove when it is not. Both are no-ops in
//! Braze when they repeat what it already did.

use serde_json::Value;

use crate::cohorts::CohortMembers;
use crate::identity;
use crate::store::{IdSet, RunCounts, RunOperation};

/// Adds and removes of one run, disjoint and each in byte order. The operation of each member
/// comes from [`plan_operations`], so that a run never keeps all of them in memory at once.
#[derive(Debug, Default)]
pub struct Plan {
    pub adds: IdSet,
    pub removes: IdSet,
    /// For each remove, by position, the distinct id that last held the id, when a stored run
    /// lists it. `plan_changes` leaves it empty; the run fills it from the store.
    pub remove_holders: Vec<Option<String>>,
    /// `members`, `skipped` and `unchanged` are set; the rest stay zero.
    pub counts: RunCounts,
}

/// The Braze id of one member, or why the member cannot be sent.
pub fn member_braze_id<'a>(
    evaluated: &'a CohortMembers,
    member: &str,
    user_id_property: &str,
) -> Result<&'a str, String> {
    if identity::is_anonymous_device(member) {
        return Err("anonymous device id without a merged user".into());
    }
    let profile = evaluated
        .profiles
        .get(member)
        .ok_or_else(|| "no profile".to_owned())?;
    match profile.get(user_id_property) {
        None | Some(Value::Null) => Err(format!("profile has no {user_id_property} property")),
        Some(Value::String(id)) if id.is_empty() => Err(format!("{user_id_property} is empty")),
        Some(Value::String(id)) => Ok(id),
        Some(other) => Err(format!(
            "{user_id_property} is a {}, not a string",
            json_type(other)
        )),
    }
}

/// Counts the members that a sync would send: those [`member_braze_id`] finds an id for.
/// Previews count with this, so that they agree with the run.
pub fn exportable_count(evaluated: &CohortMembers, user_id_property: &str) -> usize {
    evaluated
        .members
        .iter()
        .filter(|member| member_braze_id(evaluated, member, user_id_property).is_ok())
        .count()
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Diffs the cohort's members against the ids Braze acknowledged and the pending ids.
pub fn plan_changes(
    evaluated: &CohortMembers,
    user_id_property: &str,
    acknowledged: &IdSet,
    pending: &IdSet,
) -> Plan {
    let mut plan = Plan::default();
    plan.counts.members = evaluated.members.len() as i64;

    let mut desired: Vec<&str> = Vec::with_capacity(evaluated.members.len());
    for member in &evaluated.members {
        match member_braze_id(evaluated, member, user_id_property) {
            Ok(id) => desired.push(id),
            Err(_) => plan.counts.skipped += 1,
        }
    }
    desired.sort_unstable();
    desired.dedup();

    plan.adds = desired
        .iter()
        .filter(|id| !acknowledged.contains(id) || pending.contains(id))
        .collect();
    plan.removes = acknowledged
        .union(pending)
        .iter()
        .filter(|id| desired.binary_search(id).is_err())
        .collect();
    plan.counts.unchanged = (desired.len() - plan.adds.len()) as i64;
    plan
}

/// Lists the operations of a planned run: one per member, in member order, then one per
/// removed id.
pub fn plan_operations<'a>(
    evaluated: &'a CohortMembers,
    user_id_property: &'a str,
    plan: &'a Plan,
) -> impl Iterator<Item = RunOperation> + 'a {
    let members = evaluated.members.iter().map(move |member| {
        match member_braze_id(evaluated, member, user_id_property) {
            Ok(id) => RunOperation {
                distinct_id: Some(member.clone()),
                external_id: Some(id.to_owned()),
                operation: if plan.adds.contains(id) {
                    "add"
                } else {
                    "no-op"
                }
                .into(),
                reason: None,
            },
            Err(reason) => RunOperation {
                distinct_id: Some(member.clone()),
                external_id: None,
                operation: "skipped".into(),
                reason: Some(reason),
            },
        }
    });
    let removes = plan.removes.iter().enumerate().map(|(i, id)| RunOperation {
        distinct_id: plan.remove_holders.get(i).cloned().flatten(),
        external_id: Some(id.to_owned()),
        operation: "remove".into(),
        reason: None,
    });
    members.chain(removes)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn set(ids: &[&str]) -> IdSet {
        IdSet::from_ids(ids)
    }

    fn members(rows: &[(&str, Value)]) -> CohortMembers {
        let mut evaluated = CohortMembers::default();
        for (member, profile) in rows {
            evaluated.members.insert((*member).into());
            if let Value::Object(map) = profile {
                evaluated.profiles.insert((*member).into(), map.clone());
            }
        }
        evaluated
    }

    #[test]
    fn changed_id_is_one_remove_and_one_add() {
        let evaluated = members(&[("u1", json!({"$braze_external_id": "new"}))]);
        let acknowledged = set(&["old"]);
        let plan = plan_changes(
            &evaluated,
            "$braze_external_id",
            &acknowledged,
            &IdSet::default(),
        );
        assert_eq!(plan.adds, ["new"]);
        assert_eq!(plan.removes, ["old"]);
        assert_eq!(plan.counts.unchanged, 0);
    }

    #[test]
    fn shared_id_stays_while_one_member_qualifies() {
        let evaluated = members(&[
            ("u1", json!({"$braze_external_id": "shared"})),
            ("u2", json!({"$braze_external_id": "shared"})),
        ]);
        let acknowledged = set(&["shared"]);
        let plan = plan_changes(
            &evaluated,
            "$braze_external_id",
            &acknowledged,
            &IdSet::default(),
        );
        assert!(plan.adds.is_empty());
        assert!(plan.removes.is_empty());
        assert_eq!(plan.counts.unchanged, 1);
        let operations: Vec<_> = plan_operations(&evaluated, "$braze_external_id", &plan).collect();
        assert_eq!(operations.len(), 2);
        assert!(operations.iter().all(|op| op.operation == "no-op"));
    }

    #[test]
    fn adds_and_removes_are_disjoint_and_unique() {
        let evaluated = members(&[
            ("a", json!({"$braze_external_id": "X"})),
            ("b", json!({"$braze_external_id": "X"})),
            ("c", json!({"$braze_external_id": "Y"})),
        ]);
        let acknowledged = set(&["Y", "Z"]);
        let plan = plan_changes(
            &evaluated,
            "$braze_external_id",
            &acknowledged,
            &IdSet::default(),
        );
        assert_eq!(plan.adds, ["X"]);
        assert_eq!(plan.removes, ["Z"]);
        assert!(plan.removes.iter().all(|id| !plan.adds.contains(id)));
    }

    #[test]
    fn pending_ids_are_sent_again() {
        let evaluated = members(&[
            ("a", json!({"$braze_external_id": "kept"})),
            ("b", json!({"$braze_external_id": "in-doubt-member"})),
        ]);
        let acknowledged = set(&["kept", "in-doubt-member"]);
        let pending = set(&["in-doubt-member", "in-doubt-gone"]);
        let plan = plan_changes(&evaluated, "$braze_external_id", &acknowledged, &pending);
        assert_eq!(plan.adds, ["in-doubt-member"]);
        assert_eq!(plan.removes, ["in-doubt-gone"]);
        assert_eq!(plan.counts.unchanged, 1);
    }

    #[test]
    fn skip_reasons_name_the_problem() {
        let evaluated = members(&[
            ("empty", json!({"$braze_external_id": ""})),
            ("number", json!({"$braze_external_id": 7})),
            ("missing", json!({"name": "n"})),
            ("$device:d", json!({"$braze_external_id": "D"})),
            ("no-profile", Value::Null),
            ("ok", json!({"$braze_external_id": " Ok "})),
        ]);
        let plan = plan_changes(
            &evaluated,
            "$braze_external_id",
            &IdSet::default(),
            &IdSet::default(),
        );
        assert_eq!(plan.adds, [" Ok "]);
        assert_eq!(plan.counts.skipped, 5);
        let operations: Vec<_> = plan_operations(&evaluated, "$braze_external_id", &plan).collect();
        let reason = |member: &str| {
            operations
                .iter()
                .find(|op| op.distinct_id.as_deref() == Some(member))
                .and_then(|op| op.reason.clone())
                .unwrap_or_default()
        };
        assert_eq!(reason("empty"), "$braze_external_id is empty");
        assert_eq!(
            reason("number"),
            "$braze_external_id is a number, not a string"
        );
        assert_eq!(
            reason("missing"),
            "profile has no $braze_external_id property"
        );
        assert_eq!(reason("no-profile"), "no profile");
        assert!(reason("$device:d").contains("anonymous"));
    }
}
