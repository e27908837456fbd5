//! The cohort definition language: parsing JSON into a typed tree, with errors that name the
//! JSON path of the problem. `docs/cohorts.md` documents the language for users.

use serde_json::Value;

/// A parsed cohort definition.
#[derive(Debug, Clone, PartialEq)]
pub enum Definition {
    All(Vec<Definition>),
    Any(Vec<Definition>),
    Not(Box<Definition>),
    Event(EventRule),
    Profile(ProfileRule),
}

/// "Did `event` a number of times that satisfies `count`, within `within`".
#[derive(Debug, Clone, PartialEq)]
pub struct EventRule {
    pub event: String,
    pub count: CountRule,
    pub within: Window,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountRule {
    pub op: CountOp,
    pub value: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountOp {
    Gte,
    Gt,
    Eq,
    Lte,
    Lt,
}

impl CountRule {
    pub fn matches(&self, count: i64) -> bool {
        match self.op {
            CountOp::Gte => count >= self.value,
            CountOp::Gt => count > self.value,
            CountOp::Eq => count == self.value,
            CountOp::Lte => count <= self.value,
            CountOp::Lt => count < self.value,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    AllTime,
    /// The `days * 24` hours up to and including the evaluation instant.
    LastDays(u32),
}

impl Window {
    /// The first instant inside the window, or `None` for all time.
    pub fn since_ms(&self, now_ms: i64) -> Option<i64> {
        match self {
            Window::AllTime => None,
            Window::LastDays(days) => Some(now_ms - i64::from(*days) * 86_400_000),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProfileRule {
    pub property: String,
    pub op: ProfileOp,
    /// Absent for `set` and `not_set`.
    pub value: Option<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileOp {
    Eq,
    Neq,
    Gt,
    Gte,
    Lt,
    Lte,
    Contains,
    Set,
    NotSet,
}

const PROFILE_OPS: &[(&str, ProfileOp)] = &[
    ("eq", ProfileOp::Eq),
    ("neq", ProfileOp::Neq),
    ("gt", ProfileOp::Gt),
    ("gte", ProfileOp::Gte),
    ("lt", ProfileOp::Lt),
    ("lte", ProfileOp::Lte),
    ("contains", ProfileOp::Contains),
    ("set", ProfileOp::Set),
    ("not_set", ProfileOp::NotSet),
];

const COUNT_OPS: &[(&str, CountOp)] = &[
    ("gte", CountOp::Gte),
    ("gt", CountOp::Gt),
    ("eq", CountOp::Eq),
    ("lte", CountOp::Lte),
    ("lt", CountOp::Lt),
];

/// The deepest nesting accepted, so a hostile definition cannot exhaust the stack.
const MAX_DEPTH: usize = 32;
/// The widest window accepted, about 100 years.
const MAX_WINDOW_DAYS: u64 = 36_600;

/// A problem in a definition, at a JSON path such as `all[1].op`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct DefinitionError {
    pub path: String,
    pub message: String,
}

fn error(path: &str, message: impl Into<String>) -> DefinitionError {
    DefinitionError {
        path: if path.is_empty() {
            "definition".into()
        } else {
            path.into()
        },
        message: message.into(),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Parses and validates a definition.
pub fn parse(value: &Value) -> Result<Definition, DefinitionError> {
    parse_at(value, "", 0)
}

fn parse_at(value: &Value, path: &str, depth: usize) -> Result<Definition, DefinitionError> {
    if depth > MAX_DEPTH {
        return Err(error(
            path,
            format!("nested deeper than {MAX_DEPTH} levels"),
        ));
    }
    let object = value
        .as_object()
        .ok_or_else(|| error(path, format!("expected an object, found {value}")))?;

    for group in ["all", "any"] {
        if let Some(children) = object.get(group) {
            expect_only(object, &[group], path)?;
            let group_path = join(path, group);
            let items = children
                .as_array()
                .ok_or_else(|| error(&group_path, "expected a list of conditions"))?;
            if items.is_empty() {
                return Err(error(&group_path, "list of conditions is empty"));
            }
            let parsed = items
                .iter()
                .enumerate()
                .map(|(i, item)| parse_at(item, &format!("{group_path}[{i}]"), depth + 1))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(if group == "all" {
                Definition::All(parsed)
            } else {
                Definition::Any(parsed)
            });
        }
    }
    if let Some(inner) = object.get("not") {
        expect_only(object, &["not"], path)?;
        return Ok(Definition::Not(Box::new(parse_at(
            inner,
            &join(path, "not"),
            depth + 1,
        )?)));
    }
    if object.contains_key("event") {
        return parse_event(object, path).map(Definition::Event);
    }
    if object.contains_key("profile") {
        return parse_profile(object, path).map(Definition::Profile);
    }
    let keys: Vec<&str> = object.keys().map(String::as_str).collect();
    Err(error(
        path,
        format!(
            "unknown condition with keys {keys:?}; expected one of \"all\", \"any\", \"not\", \"event\", \"profile\""
        ),
    ))
}

fn expect_only(
    object: &serde_json::Map<String, Value>,
    allowed: &[&str],
    path: &str,
) -> Result<(), DefinitionError> {
    match object.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(extra) => Err(error(
            &join(path, extra),
            format!("unexpected key; this condition accepts only {allowed:?}"),
        )),
        None => Ok(()),
    }
}

fn parse_event(
    object: &serde_json::Map<String, Value>,
    path: &str,
) -> Result<EventRule, DefinitionError> {
    expect_only(object, &["event", "count", "within"], path)?;
    let event = match &object["event"] {
        Value::String(name) if !name.is_empty() => name.clone(),
        other => {
            return Err(error(
                &join(path, "event"),
                format!("expected a non-empty event name, found {other}"),
            ))
        }
    };

    let count = match object.get("count") {
        None => CountRule {
            op: CountOp::Gte,
            value: 1,
        },
        Some(value) => {
            let count_path = join(path, "count");
            let map = value.as_object().ok_or_else(|| {
                error(
                    &count_path,
                    format!("expected an object such as {{\"gte\": 2}}, found {value}"),
                )
            })?;
            if map.len() != 1 {
                return Err(error(
                    &count_path,
                    "expected exactly one comparison such as {\"gte\": 2}",
                ));
            }
            let (name, number) = map.iter().next().expect("one entry");
            let op = COUNT_OPS
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, op)| *op)
                .ok_or_else(|| {
                    error(
                        &join(&count_path, name),
                        format!("unknown comparison; expected one of {:?}", names(COUNT_OPS)),
                    )
                })?;
            let value = number.as_i64().filter(|n| *n >= 0).ok_or_else(|| {
                error(
                    &join(&count_path, name),
                    format!("expected a whole number of at least 0, found {number}"),
                )
            })?;
            CountRule { op, value }
        }
    };

    let within = match object.get("within") {
        None => Window::AllTime,
        Some(value) => {
            let within_path = join(path, "within");
            let map = value.as_object().ok_or_else(|| {
                error(
                    &within_path,
                    format!("expected an object such as {{\"last_days\": 30}}, found {value}"),
                )
            })?;
            expect_only(map, &["last_days"], &within_path)?;
            let days = map
                .get("last_days")
                .ok_or_else(|| error(&within_path, "missing \"last_days\""))?;
            let days = days
                .as_u64()
                .filter(|d| (1..=MAX_WINDOW_DAYS).contains(d))
                .ok_or_else(|| {
                    error(&join(&within_path, "last_days"), format!("expected a whole number of days from 1 to {MAX_WINDOW_DAYS}, found {days}"))
                })?;
            Window::LastDays(days as u32)
        }
    };
    Ok(EventRule {
        event,
        count,
        within,
    })
}

fn parse_profile(
    object: &serde_json::Map<String, Value>,
    path: &str,
) -> Result<ProfileRule, DefinitionError> {
    expect_only(object, &["profile", "op", "value"], path)?;
    let property = match &object["profile"] {
        Value::String(name) if !name.is_empty() => name.clone(),
        other => {
            return Err(error(
                &join(path, "profile"),
                format!("expected a non-empty property name, found {other}"),
            ))
        }
    };
    let op_path = join(path, "op");
    let op_name = object.get("op").ok_or_else(|| {
        error(
            &op_path,
            format!("missing; expected one of {:?}", names(PROFILE_OPS)),
        )
    })?;
    let op = op_name
        .as_str()
        .and_then(|name| PROFILE_OPS.iter().find(|(n, _)| *n == name))
        .map(|(_, op)| *op)
        .ok_or_else(|| {
            error(
                &op_path,
                format!(
                    "unknown operator {op_name}; expected one of {:?}",
                    names(PROFILE_OPS)
                ),
            )
        })?;

    let value_path = join(path, "value");
    let value = object.get("value").cloned();
    match op {
        ProfileOp::Set | ProfileOp::NotSet => {
            if value.is_some() {
                return Err(error(
                    &value_path,
                    format!("operator {op_name} takes no value"),
                ));
            }
        }
        ProfileOp::Gt | ProfileOp::Gte | ProfileOp::Lt | ProfileOp::Lte => match &value {
            Some(Value::Number(_)) => {}
            Some(Value::String(s)) if super::values::parse_datetime(s).is_some() => {}
            Some(other) => {
                return Err(error(
                    &value_path,
                    format!("operator {op_name} compares numbers or datetimes, found {other}"),
                ))
            }
            None => {
                return Err(error(
                    &value_path,
                    format!("missing; operator {op_name} needs a value"),
                ))
            }
        },
        ProfileOp::Eq | ProfileOp::Neq | ProfileOp::Contains => match &value {
            None => {
                return Err(error(
                    &value_path,
                    format!("missing; operator {op_name} needs a value"),
                ))
            }
            Some(Value::Object(_)) | Some(Value::Array(_)) | Some(Value::Null) => {
                return Err(error(&value_path, "expected a string, number or boolean"))
            }
            Some(_) => {}
        },
    }
    Ok(ProfileRule {
        property,
        op,
        value,
    })
}

fn names<T>(table: &[(&'static str, T)]) -> Vec<&'static str> {
    table.iter().map(|(n, _)| *n).collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn issue_example_parses() {
        let definition = parse(&json!({"all": [
            {"event": "Purchase", "count": {"gte": 2}, "within": {"last_days": 30}},
            {"profile": "plan", "op": "eq", "value": "pro"},
            {"not": {"event": "Churned"}}
        ]}))
        .unwrap();
        let Definition::All(items) = definition else {
            panic!("expected all")
        };
        assert_eq!(
            items[0],
            Definition::Event(EventRule {
                event: "Purchase".into(),
                count: CountRule {
                    op: CountOp::Gte,
                    value: 2
                },
                within: Window::LastDays(30)
            })
        );
        assert_eq!(
            items[2],
            Definition::Not(Box::new(Definition::Event(EventRule {
                event: "Churned".into(),
                count: CountRule {
                    op: CountOp::Gte,
                    value: 1
                },
                within: Window::AllTime
            })))
        );
    }

    #[test]
    fn errors_name_the_path() {
        let cases = [
            (
                json!({"all": [{"event": "A"}, {"profile": "p", "op": "like", "value": 1}]}),
                "all[1].op",
            ),
            (json!({"any": []}), "any"),
            (
                json!({"not": {"event": "A", "count": {"most": 2}}}),
                "not.count.most",
            ),
            (
                json!({"event": "A", "within": {"last_days": 0}}),
                "within.last_days",
            ),
            (
                json!({"event": "A", "within": {"last_weeks": 2}}),
                "within.last_weeks",
            ),
            (
                json!({"profile": "p", "op": "gt", "value": "soon"}),
                "value",
            ),
            (json!({"profile": "p", "op": "set", "value": 1}), "value"),
            (json!({"profile": "p", "op": "eq"}), "value"),
            (json!({"event": ""}), "event"),
            (json!({"all": [{"event": "A"}], "any": []}), "any"),
            (json!({"cohort": 3}), "definition"),
            (json!([1]), "definition"),
        ];
        for (definition, path) in cases {
            let err = parse(&definition).unwrap_err();
            assert_eq!(err.path, path, "{definition}: {err}");
        }
    }

    #[test]
    fn depth_is_bounded() {
        let mut definition = json!({"event": "A"});
        for _ in 0..40 {
            definition = json!({"not": definition});
        }
        assert!(parse(&definition)
            .unwrap_err()
            .message
            .contains("nested deeper"));
    }

    #[test]
    fn count_rule_comparisons() {
        let rule = |op, value| CountRule { op, value };
        assert!(rule(CountOp::Gte, 2).matches(2));
        assert!(!rule(CountOp::Gte, 2).matches(1));
        assert!(rule(CountOp::Lte, 2).matches(0));
        assert!(!rule(CountOp::Lt, 2).matches(2));
        assert!(rule(CountOp::Eq, 0).matches(0));
        assert!(!rule(CountOp::Gt, 2).matches(2));
    }
}
