//! A reference evaluator, written plainly so that it can be checked by reading: for every
//! user and every condition it scans all events. It shares no evaluation code with the engine
//! beyond the property comparisons in `values` and the window bounds in `window`, and the
//! property-based tests require both to return the same members.

use std::collections::{BTreeSet, HashMap};

use chrono_tz::Tz;
use serde_json::Value;

use super::data::{CohortData, EventRow};
use super::definition::{Definition, EventRule, Measure};
use super::eval::EvalError;
use super::values::matches_filter;
use super::window::local_day;

/// Evaluates `definition` over `data` as of `now_ms` in `tz`; returns the members' canonical
/// ids.
pub fn evaluate(
    data: &CohortData,
    definition: &Definition,
    cohorts: &HashMap<i64, Definition>,
    tz: Tz,
    now_ms: i64,
) -> Result<BTreeSet<String>, EvalError> {
    let mut members = BTreeSet::new();
    for user in data.users() {
        if holds(
            data,
            definition,
            cohorts,
            tz,
            now_ms,
            &user,
            &mut Vec::new(),
        )? {
            members.insert(user);
        }
    }
    Ok(members)
}

/// Checks whether `definition` holds for one canonical user.
pub fn holds(
    data: &CohortData,
    definition: &Definition,
    cohorts: &HashMap<i64, Definition>,
    tz: Tz,
    now_ms: i64,
    user: &str,
    visiting: &mut Vec<i64>,
) -> Result<bool, EvalError> {
    match definition {
        Definition::All(items) => {
            for item in items {
                if !holds(data, item, cohorts, tz, now_ms, user, visiting)? {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        Definition::Any(items) => {
            for item in items {
                if holds(data, item, cohorts, tz, now_ms, user, visiting)? {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        Definition::Not(inner) => Ok(!holds(data, inner, cohorts, tz, now_ms, user, visiting)?),
        Definition::Profile(filter) => {
            let profiles = data.user_profiles();
            let actual = profiles.get(user).and_then(|p| p.get(&filter.property));
            Ok(matches_filter(actual, filter, now_ms))
        }
        Definition::Event(rule) => Ok(event_rule_holds(data, rule, tz, now_ms, user)),
        Definition::InCohort(id) => {
            if visiting.contains(id) {
                return Err(EvalError::CohortCycle {
                    cohort_id: *id,
                    path: visiting.clone(),
                });
            }
            let referenced = cohorts
                .get(id)
                .ok_or(EvalError::CohortNotFound { cohort_id: *id })?;
            visiting.push(*id);
            let result = holds(data, referenced, cohorts, tz, now_ms, user, visiting);
            visiting.pop();
            result
        }
    }
}

/// Returns the user's events that match the rule's name and filters, up to `now_ms`, in any
/// order.
pub fn matching_events<'d>(
    data: &'d CohortData,
    rule: &EventRule,
    now_ms: i64,
    user: &str,
) -> Vec<&'d EventRow> {
    let mut found = Vec::new();
    for row in &data.events {
        if row.distinct_id.is_empty() || row.event != rule.event || row.time_ms > now_ms {
            continue;
        }
        if data.canonical(&row.distinct_id) != user {
            continue;
        }
        let mut passes = true;
        for filter in &rule.filters {
            if !matches_filter(row.properties.get(&filter.property), filter, now_ms) {
                passes = false;
            }
        }
        if passes {
            found.push(row);
        }
    }
    found
}

/// The measured value of the rule for one user, or `None` when it is undefined (min, max and
/// average without a numeric value); for `first_time`, 1 when the first event is inside the
/// window and 0 otherwise.
pub fn measure(
    data: &CohortData,
    rule: &EventRule,
    tz: Tz,
    now_ms: i64,
    user: &str,
) -> Option<f64> {
    let bounds = rule.within.bounds(now_ms, tz);
    let all = matching_events(data, rule, now_ms, user);
    if rule.first_time {
        let first = all.iter().map(|row| row.time_ms).min();
        let inside = first.is_some_and(|t| bounds.contains(t));
        return Some(if inside { 1.0 } else { 0.0 });
    }
    let in_window: Vec<&EventRow> = all
        .into_iter()
        .filter(|row| bounds.contains(row.time_ms))
        .collect();
    let numbers = |property: &str| -> Vec<f64> {
        in_window
            .iter()
            .filter_map(|row| row.properties.get(property).and_then(Value::as_f64))
            .collect()
    };
    match &rule.measure {
        Measure::Count => Some(in_window.len() as f64),
        Measure::DistinctDays => {
            let days: BTreeSet<i64> = in_window
                .iter()
                .map(|row| local_day(row.time_ms, tz))
                .collect();
            Some(days.len() as f64)
        }
        Measure::Sum(property) => Some(numbers(property).iter().sum()),
        Measure::Min(property) => numbers(property).into_iter().reduce(f64::min),
        Measure::Max(property) => numbers(property).into_iter().reduce(f64::max),
        Measure::Average(property) => {
            let values = numbers(property);
            if values.is_empty() {
                None
            } else {
                Some(values.iter().sum::<f64>() / values.len() as f64)
            }
        }
    }
}

fn event_rule_holds(data: &CohortData, rule: &EventRule, tz: Tz, now_ms: i64, user: &str) -> bool {
    let measured = measure(data, rule, tz, now_ms, user);
    if rule.first_time {
        return measured == Some(1.0);
    }
    measured.is_some_and(|v| rule.comparison.matches(v))
}
