//! The plan of one run: which Braze ids to add and remove, and what happens to each member.
//!
//! The diff is keyed by the Braze id value, not by the distinct id. A member whose id changed is
//! one remove of the old id and one add of the new, and two members sharing one id keep it in
//! the cohort while either qualifies. Ids are compared and sent byte-exact.
//!
//! Ids whose last request was never acknowledged (pending) have an unknown state in Braze, so
//! each is sent again: an add when it is desired, a remove when it is not. Both are no-ops in
//! Braze when they repeat what it already did.

use super::members::{braze_id_of, SyncMembers};
use crate::cohorts::values::ValueRef;
use crate::cohorts::CohortMembers;
use crate::store::{IdSet, RunCounts, RunOperation};

/// Adds and removes of one run, disjoint and each in byte order. The operation of each member
/// comes from [`plan_operations`], so that a run never keeps all of them in memory at once.
#[derive(Debug, Default)]
pub struct Plan {
    pub adds: IdSet,
    pub removes: IdSet,
    /// For each remove, by position, the distinct id that last had the id, when a stored run
    /// lists it. `plan_changes` leaves it empty; the run fills it from the store.
    pub remove_holders: Vec<Option<String>>,
    /// `members`, `skipped` and `unchanged` are set; the rest stay zero.
    pub counts: RunCounts,
    /// Per member of the planned `SyncMembers`, by position, whether its Braze id is an add.
    pub(crate) member_adds: Vec<bool>,
}

/// Counts the members that a sync would send: those with a Braze id. Previews count with this,
/// so that they agree with the run.
pub fn exportable_count(evaluated: &CohortMembers, user_id_property: &str) -> usize {
    evaluated
        .members
        .iter()
        .filter(|member| {
            let profile = evaluated
                .profiles
                .get(*member)
                .map(|properties| properties.get(user_id_property).map(ValueRef::from));
            braze_id_of(member, profile).is_ok()
        })
        .count()
}

/// Diffs the members' Braze ids against the ids Braze acknowledged and the pending ids. The
/// members' ids are sorted once, and then the three sorted sequences are merged in one pass.
pub fn plan_changes(members: &SyncMembers, acknowledged: &IdSet, pending: &IdSet) -> Plan {
    let mut plan = Plan {
        member_adds: vec![false; members.len()],
        ..Plan::default()
    };
    plan.counts.members = members.len() as i64;

    // Positions of the members with a Braze id, sorted by that id.
    let id_of = |position: u32| {
        members
            .braze_id(position as usize)
            .expect("only members with a Braze id are sorted")
    };
    let mut order: Vec<u32> = (0..members.len() as u32)
        .filter(|&position| members.braze_id(position as usize).is_ok())
        .collect();
    plan.counts.skipped = (members.len() - order.len()) as i64;
    order.sort_unstable_by(|&a, &b| id_of(a).cmp(id_of(b)));

    // Braze has, or may have, every acknowledged id and every pending id.
    let in_braze = acknowledged.union(pending);
    let mut in_braze_ids = in_braze.iter().peekable();
    let mut pending_ids = pending.iter().peekable();
    let mut desired = 0;
    let mut start = 0;
    while start < order.len() {
        let id = id_of(order[start]);
        let mut end = start + 1;
        while end < order.len() && id_of(order[end]) == id {
            end += 1;
        }
        desired += 1;

        while let Some(left) = in_braze_ids.next_if(|known| *known < id) {
            push_next(&mut plan.removes, left);
        }
        let is_in_braze = in_braze_ids.next_if_eq(&id).is_some();
        while pending_ids.next_if(|pending| *pending < id).is_some() {}
        let is_pending = pending_ids.next_if_eq(&id).is_some();
        // An id in Braze that is not pending is acknowledged. A pending id is sent again.
        if !is_in_braze || is_pending {
            push_next(&mut plan.adds, id);
            for &position in &order[start..end] {
                plan.member_adds[position as usize] = true;
            }
        }
        start = end;
    }
    for left in in_braze_ids {
        push_next(&mut plan.removes, left);
    }
    plan.counts.unchanged = (desired - plan.adds.len()) as i64;
    plan
}

/// Appends `id`, which the merge in `plan_changes` yields in strictly increasing order.
fn push_next(set: &mut IdSet, id: &str) {
    let appended = set.push_ordered(id);
    debug_assert!(appended, "{id:?} repeats or is out of order");
}

/// Lists the operations of a run planned from `members`: one per member, in member order, then
/// one per removed id.
pub fn plan_operations<'a>(
    members: &'a SyncMembers,
    user_id_property: &'a str,
    plan: &'a Plan,
) -> impl Iterator<Item = RunOperation> + 'a {
    let member_operations = (0..members.len()).map(move |position| {
        let member = members.member(position);
        match members.braze_id(position) {
            Ok(id) => RunOperation {
                distinct_id: Some(member.to_owned()),
                external_id: Some(id.to_owned()),
                operation: if plan.member_adds[position] {
                    "add"
                } else {
                    "no-op"
                }
                .into(),
                reason: None,
            },
            Err(skip) => RunOperation {
                distinct_id: Some(member.to_owned()),
                external_id: None,
                operation: "skipped".into(),
                reason: Some(skip.reason(user_id_property)),
            },
        }
    });
    let removes = plan.removes.iter().enumerate().map(|(i, id)| RunOperation {
        distinct_id: plan.remove_holders.get(i).cloned().flatten(),
        external_id: Some(id.to_owned()),
        operation: "remove".into(),
        reason: None,
    });
    member_operations.chain(removes)
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn set(ids: &[&str]) -> IdSet {
        IdSet::from_ids(ids)
    }

    fn members(rows: &[(&str, Value)]) -> SyncMembers {
        let mut evaluated = CohortMembers::default();
        for (member, profile) in rows {
            evaluated.members.insert((*member).into());
            if let Value::Object(map) = profile {
                evaluated.profiles.insert((*member).into(), map.clone());
            }
        }
        SyncMembers::from_cohort_members(&evaluated, "$braze_external_id")
    }

    #[test]
    fn changed_id_is_one_remove_and_one_add() {
        let evaluated = members(&[("u1", json!({"$braze_external_id": "new"}))]);
        let acknowledged = set(&["old"]);
        let plan = plan_changes(&evaluated, &acknowledged, &IdSet::default());
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
        let plan = plan_changes(&evaluated, &acknowledged, &IdSet::default());
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
        let plan = plan_changes(&evaluated, &acknowledged, &IdSet::default());
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
        let plan = plan_changes(&evaluated, &acknowledged, &pending);
        assert_eq!(plan.adds, ["in-doubt-member"]);
        assert_eq!(plan.removes, ["in-doubt-gone"]);
        assert_eq!(plan.counts.unchanged, 1);
    }

    #[test]
    fn skip_reasons_name_the_problem() {
        let evaluated = members(&[
            ("empty", json!({"$braze_external_id": ""})),
            ("number", json!({"$braze_external_id": 7})),
            ("array", json!({"$braze_external_id": ["x"]})),
            ("nul", json!({"$braze_external_id": "a\u{0}b"})),
            ("missing", json!({"name": "n"})),
            ("$device:d", json!({"$braze_external_id": "D"})),
            ("no-profile", Value::Null),
            ("ok", json!({"$braze_external_id": " Ok "})),
        ]);
        let plan = plan_changes(&evaluated, &IdSet::default(), &IdSet::default());
        assert_eq!(plan.adds, [" Ok "]);
        assert_eq!(plan.counts.skipped, 7);
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
            reason("array"),
            "$braze_external_id is an array, not a string"
        );
        assert_eq!(
            reason("nul"),
            "$braze_external_id contains the NUL character U+0000"
        );
        assert_eq!(
            reason("missing"),
            "profile has no $braze_external_id property"
        );
        assert_eq!(reason("no-profile"), "no profile");
        assert!(reason("$device:d").contains("anonymous"));
    }

    mod merge {
        use std::collections::BTreeSet;

        use proptest::prelude::*;

        use super::*;

        /// Ids from a small alphabet, so that members share ids and the sets overlap.
        fn id() -> impl Strategy<Value = String> {
            "[ab]{0,3}"
        }

        proptest! {
            #[test]
            fn plan_agrees_with_set_arithmetic(
                rows in proptest::collection::btree_map("[a-z]{1,3}", proptest::option::of(id()), 0..12),
                acknowledged in proptest::collection::btree_set(id(), 0..8),
                pending in proptest::collection::btree_set(id(), 0..4),
            ) {
                let rows: Vec<(&str, Value)> = rows
                    .iter()
                    .map(|(member, id)| {
                        let profile = match id {
                            Some(id) => json!({ "$braze_external_id": id }),
                            None => json!({}),
                        };
                        (member.as_str(), profile)
                    })
                    .collect();
                let evaluated = members(&rows);
                let plan = plan_changes(
                    &evaluated,
                    &IdSet::from_ids(&acknowledged),
                    &IdSet::from_ids(&pending),
                );

                let desired: BTreeSet<String> = (0..evaluated.len())
                    .filter_map(|i| evaluated.braze_id(i).ok().map(str::to_owned))
                    .collect();
                let adds: Vec<&String> = desired
                    .iter()
                    .filter(|id| !acknowledged.contains(*id) || pending.contains(*id))
                    .collect();
                let removes: Vec<&String> = acknowledged
                    .union(&pending)
                    .filter(|id| !desired.contains(*id))
                    .collect();
                prop_assert_eq!(&plan.adds, &adds[..]);
                prop_assert_eq!(&plan.removes, &removes[..]);
                prop_assert_eq!(plan.counts.unchanged as usize, desired.len() - adds.len());
                prop_assert_eq!(
                    plan.counts.skipped as usize,
                    evaluated.len() - evaluated.exportable_count()
                );
                for operation in plan_operations(&evaluated, "$braze_external_id", &plan) {
                    let is_add = operation
                        .external_id
                        .as_ref()
                        .is_some_and(|id| adds.contains(&id));
                    match operation.operation.as_str() {
                        "add" => prop_assert!(is_add),
                        "no-op" => prop_assert!(!is_add),
                        "remove" => prop_assert!(operation
                            .external_id
                            .as_ref()
                            .is_some_and(|id| removes.contains(&id))),
                        _ => prop_assert!(operation.external_id.is_none()),
                    }
                }
            }
        }
    }
}
