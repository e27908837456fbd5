//! Explanations of why one user is or is not in a cohort: for each condition of the
//! definition, whether it holds and why, in sentences a marketer can read.
//!
//! Explanations use the reference evaluator, which works on one user at a time.

use serde::Serialize;
use serde_json::Value;

use super::data::CohortData;
use super::definition::{CountOp, Definition, EventRule, Measure, ProfileOp, PropertyFilter};
use super::eval::{EvalError, Loaded};
use super::reference;
use super::window::Window;

/// The explanation of one user's membership.
#[derive(Debug, Serialize)]
pub struct Explanation {
    /// The distinct id asked about.
    pub user: String,
    /// The canonical id it resolves to.
    pub canonical_id: String,
    /// Whether the user exists in the project (has an event or a profile).
    pub known: bool,
    pub member: bool,
    pub conditions: Vec<ConditionReport>,
}

/// One condition of the definition, at its JSON path.
#[derive(Debug, Serialize)]
pub struct ConditionReport {
    pub path: String,
    pub condition: String,
    pub holds: bool,
    pub reason: String,
}

/// Explains the definition for the user with `distinct_id`, as of `now_ms`.
pub fn explain(
    loaded: &Loaded,
    definition: &Definition,
    now_ms: i64,
    distinct_id: &str,
) -> Result<Explanation, EvalError> {
    let data = &loaded.data;
    let canonical_id = data.canonical(distinct_id).to_owned();
    let known = data.users().contains(&canonical_id);
    let mut conditions = Vec::new();
    let member = walk(
        loaded,
        definition,
        now_ms,
        &canonical_id,
        "",
        &mut conditions,
    )?;
    Ok(Explanation {
        user: distinct_id.to_owned(),
        canonical_id,
        known,
        member: member && known,
        conditions,
    })
}

fn walk(
    loaded: &Loaded,
    definition: &Definition,
    now_ms: i64,
    user: &str,
    path: &str,
    out: &mut Vec<ConditionReport>,
) -> Result<bool, EvalError> {
    let at = |suffix: &str| {
        if path.is_empty() {
            suffix.to_owned()
        } else if suffix.starts_with('[') {
            format!("{path}{suffix}")
        } else {
            format!("{path}.{suffix}")
        }
    };
    let holds = match definition {
        Definition::All(items) | Definition::Any(items) => {
            let key = if matches!(definition, Definition::All(_)) {
                "all"
            } else {
                "any"
            };
            // The group's report comes before its conditions, so it is filled in afterwards.
            let slot = out.len();
            out.push(placeholder());
            let mut results = Vec::new();
            for (i, item) in items.iter().enumerate() {
                results.push(walk(
                    loaded,
                    item,
                    now_ms,
                    user,
                    &at(&format!("{key}[{i}]")),
                    out,
                )?);
            }
            let holds = if key == "all" {
                results.iter().all(|r| *r)
            } else {
                results.iter().any(|r| *r)
            };
            let passed = results.iter().filter(|r| **r).count();
            out[slot] = ConditionReport {
                path: if path.is_empty() {
                    "definition".into()
                } else {
                    path.into()
                },
                condition: if key == "all" {
                    "all of the conditions below".into()
                } else {
                    "at least one of the conditions below".into()
                },
                holds,
                reason: format!("{passed} of {} conditions hold", results.len()),
            };
            holds
        }
        Definition::Not(inner) => {
            let slot = out.len();
            out.push(placeholder());
            let inner_holds = walk(loaded, inner, now_ms, user, &at("not"), out)?;
            out[slot] = ConditionReport {
                path: if path.is_empty() {
                    "definition".into()
                } else {
                    path.into()
                },
                condition: "the condition below does not hold".into(),
                holds: !inner_holds,
                reason: if inner_holds {
                    "the condition below holds".into()
                } else {
                    "the condition below does not hold".into()
                },
            };
            !inner_holds
        }
        Definition::Event(rule) => {
            let data = &loaded.data;
            let holds = reference::holds(
                data,
                definition,
                &loaded.cohorts,
                loaded.tz,
                now_ms,
                user,
                &mut Vec::new(),
            )?;
            out.push(ConditionReport {
                path: leaf_path(path),
                condition: describe_event(rule),
                holds,
                reason: event_reason(data, rule, loaded, now_ms, user),
            });
            holds
        }
        Definition::Profile(filter) => {
            let profiles = loaded.data.user_profiles();
            let actual = profiles.get(user).and_then(|p| p.get(&filter.property));
            let holds = reference::holds(
                &loaded.data,
                definition,
                &loaded.cohorts,
                loaded.tz,
                now_ms,
                user,
                &mut Vec::new(),
            )?;
            let reason = match actual.filter(|v| !v.is_null()) {
                Some(value) => format!("the profile's {:?} is {value}", filter.property),
                None if profiles.contains_key(user) => {
                    format!("the profile has no value for {:?}", filter.property)
                }
                None => "the user has no profile".into(),
            };
            out.push(ConditionReport {
                path: leaf_path(path),
                condition: describe_filter("profile property", filter),
                holds,
                reason,
            });
            holds
        }
        Definition::InCohort(id) => {
            let holds = reference::holds(
                &loaded.data,
                definition,
                &loaded.cohorts,
                loaded.tz,
                now_ms,
                user,
                &mut Vec::new(),
            )?;
            out.push(ConditionReport {
                path: leaf_path(path),
                condition: format!("is in cohort {id}"),
                holds,
                reason: if holds {
                    format!("the user is a member of cohort {id}")
                } else {
                    format!("the user is not a member of cohort {id}")
                },
            });
            holds
        }
    };
    Ok(holds)
}

fn placeholder() -> ConditionReport {
    ConditionReport {
        path: String::new(),
        condition: String::new(),
        holds: false,
        reason: String::new(),
    }
}

fn leaf_path(path: &str) -> String {
    if path.is_empty() {
        "definition".into()
    } else {
        path.into()
    }
}

fn comparison_words(op: CountOp, value: f64) -> String {
    let word = match op {
        CountOp::Gte => "at least",
        CountOp::Gt => "more than",
        CountOp::Eq => "exactly",
        CountOp::Lte => "at most",
        CountOp::Lt => "fewer than",
    };
    format!("{word} {value}")
}

/// Picks the singular for a count of exactly 1 and the plural for any other count.
fn singular_or_plural(count: f64, singular: &'static str, plural: &'static str) -> &'static str {
    if count == 1.0 {
        singular
    } else {
        plural
    }
}

fn window_words(window: &Window) -> String {
    match window {
        Window::AllTime => "ever".into(),
        Window::LastDays(d) => format!(
            "in the last {d} {}",
            singular_or_plural(f64::from(*d), "day", "days")
        ),
        Window::LastHours(h) => format!(
            "in the last {h} {}",
            singular_or_plural(f64::from(*h), "hour", "hours")
        ),
        Window::Between(from, to) => format!("between {from} and {to}"),
        Window::Since(from) => format!("since {from}"),
    }
}

fn describe_event(rule: &EventRule) -> String {
    let mut text = if rule.first_time {
        format!(
            "did {:?} for the first time {}",
            rule.event,
            window_words(&rule.within)
        )
    } else {
        let value = rule.comparison.value;
        let amount = comparison_words(rule.comparison.op, value);
        match &rule.measure {
            Measure::Count => format!(
                "did {:?} {amount} {} {}",
                rule.event,
                singular_or_plural(value, "time", "times"),
                window_words(&rule.within)
            ),
            Measure::DistinctDays => format!(
                "did {:?} on {amount} different {} {}",
                rule.event,
                singular_or_plural(value, "day", "days"),
                window_words(&rule.within)
            ),
            Measure::Sum(p) => format!(
                "{:?} of {:?} events adds up to {amount} {}",
                p,
                rule.event,
                window_words(&rule.within)
            ),
            Measure::Min(p) => format!(
                "the smallest {:?} of {:?} events is {amount} {}",
                p,
                rule.event,
                window_words(&rule.within)
            ),
            Measure::Max(p) => format!(
                "the largest {:?} of {:?} events is {amount} {}",
                p,
                rule.event,
                window_words(&rule.within)
            ),
            Measure::Average(p) => format!(
                "the average {:?} of {:?} events is {amount} {}",
                p,
                rule.event,
                window_words(&rule.within)
            ),
        }
    };
    for filter in &rule.filters {
        text.push_str(", counting only events where ");
        text.push_str(&describe_filter("property", filter));
    }
    text
}

fn describe_filter(kind: &str, filter: &PropertyFilter) -> String {
    let verb = match filter.op {
        ProfileOp::Eq => "equals",
        ProfileOp::Neq => "does not equal",
        ProfileOp::Gt => "is greater than",
        ProfileOp::Gte => "is at least",
        ProfileOp::Lt => "is less than",
        ProfileOp::Lte => "is at most",
        ProfileOp::Contains => "contains",
        ProfileOp::NotContains => "does not contain",
        ProfileOp::Between => "is between",
        ProfileOp::In => "is one of",
        ProfileOp::Set => "is set",
        ProfileOp::NotSet => "is not set",
        ProfileOp::Before => "is before",
        ProfileOp::After => "is after",
        ProfileOp::WithinLast => "is within the last (days)",
        ProfileOp::Includes => "is a list that includes",
    };
    match &filter.value {
        Some(value) => format!("{kind} {:?} {verb} {}", filter.property, render(value)),
        None => format!("{kind} {:?} {verb}", filter.property),
    }
}

fn render(value: &Value) -> String {
    match value {
        Value::Array(items) => items.iter().map(render).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

fn event_reason(
    data: &CohortData,
    rule: &EventRule,
    loaded: &Loaded,
    now_ms: i64,
    user: &str,
) -> String {
    let all = reference::matching_events(data, rule, now_ms, user);
    let bounds = rule.within.bounds(now_ms, loaded.tz);
    let in_window = all
        .iter()
        .filter(|row| bounds.contains(row.time_ms))
        .count();
    if rule.first_time {
        return match all.iter().map(|row| row.time_ms).min() {
            None => format!("the user never did {:?}", rule.event),
            Some(first) => format!("the user first did {:?} at {}", rule.event, iso(first)),
        };
    }
    let measured = reference::measure(data, rule, loaded.tz, now_ms, user);
    let counted = format!(
        "counted {in_window} matching {:?} {} {} ({} in all time)",
        rule.event,
        singular_or_plural(in_window as f64, "event", "events"),
        window_words(&rule.within),
        all.len()
    );
    match (&rule.measure, measured) {
        (Measure::Count, _) => counted,
        (Measure::DistinctDays, Some(days)) => format!(
            "{counted}, on {days} different {}",
            singular_or_plural(days, "day", "days")
        ),
        (_, Some(value)) => format!("{counted}; the measured value is {value}"),
        (_, None) => format!(
            "{counted}; none carries a number in {:?}",
            rule.measure.property().unwrap_or_default()
        ),
    }
}

fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::cohorts::definition;

    fn describe(definition: serde_json::Value) -> String {
        match definition::parse(&definition).unwrap() {
            Definition::Event(rule) => describe_event(&rule),
            other => panic!("expected an event rule, found {other:?}"),
        }
    }

    #[test]
    fn description_agrees_in_number() {
        let once =
            describe(json!({"event": "Buy", "count": {"gte": 1}, "within": {"last_days": 1}}));
        assert!(once.contains("at least 1 time in the last 1 day"), "{once}");

        let twice =
            describe(json!({"event": "Buy", "count": {"gte": 2}, "within": {"last_hours": 2}}));
        assert!(
            twice.contains("at least 2 times in the last 2 hours"),
            "{twice}"
        );

        let one_day = describe(json!({"event": "Buy", "distinct_days": {"gte": 1}}));
        assert!(
            one_day.contains("on at least 1 different day ever"),
            "{one_day}"
        );
    }
}
