//! The cohort definition language: parsing JSON into a typed tree, with errors that name the
//! JSON path of the problem. `docs/cohorts.md` documents the language for users and
//! `docs/cohort-definition.schema.json` describes it as a JSON Schema.

use serde_json::{Map, Value};

use super::values::parse_datetime;
use super::window::{parse_window, Window};

/// A parsed cohort definition.
#[derive(Debug, Clone, PartialEq)]
pub enum Definition {
    All(Vec<Definition>),
    Any(Vec<Definition>),
    Not(Box<Definition>),
    Event(EventRule),
    Profile(PropertyFilter),
    /// Membership of another cohort of the same project, evaluated at the same instant.
    InCohort(i64),
}

/// "Did `event` (matching every `filters`) so that `measure` satisfies `comparison`, within
/// `within`", or with `first_time`, "did `event` for the first time within `within`".
#[derive(Debug, Clone, PartialEq)]
pub struct EventRule {
    pub event: String,
    /// Event property filters (`where`); an event counts only when every filter matches.
    pub filters: Vec<PropertyFilter>,
    pub measure: Measure,
    pub comparison: Comparison,
    pub within: Window,
    /// The user's first matching event ever falls inside `within`.
    pub first_time: bool,
}

/// The quantity measured over a user's matching events inside the window.
#[derive(Debug, Clone, PartialEq)]
pub enum Measure {
    Count,
    /// Number of distinct calendar days, in the project's time zone.
    DistinctDays,
    Sum(String),
    Min(String),
    Max(String),
    Average(String),
}

impl Measure {
    /// Returns the numeric event property the measure reads, if any.
    pub fn property(&self) -> Option<&str> {
        match self {
            Measure::Count | Measure::DistinctDays => None,
            Measure::Sum(p) | Measure::Min(p) | Measure::Max(p) | Measure::Average(p) => Some(p),
        }
    }
}

/// One comparison of a measured number, such as `{"gte": 2}`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    pub op: CountOp,
    pub value: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountOp {
    Gte,
    Gt,
    Eq,
    Lte,
    Lt,
}

impl Comparison {
    pub fn matches(&self, measured: f64) -> bool {
        match self.op {
            CountOp::Gte => measured >= self.value,
            CountOp::Gt => measured > self.value,
            CountOp::Eq => measured == self.value,
            CountOp::Lte => measured <= self.value,
            CountOp::Lt => measured < self.value,
        }
    }
}

/// A filter on a profile property or, inside `where`, on an event property.
#[derive(Debug, Clone, PartialEq)]
pub struct PropertyFilter {
    pub property: String,
    pub op: ProfileOp,
    /// Absent for `set` and `not_set`.
    pub value: Option<Value>,
    /// The declared type of the property; a value that does not have it never matches.
    pub value_type: Option<ValueType>,
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
    NotContains,
    Between,
    In,
    Set,
    NotSet,
    Before,
    After,
    WithinLast,
    Includes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    String,
    Number,
    Boolean,
    Datetime,
    List,
}

const PROFILE_OPS: &[(&str, ProfileOp)] = &[
    ("eq", ProfileOp::Eq),
    ("neq", ProfileOp::Neq),
    ("gt", ProfileOp::Gt),
    ("gte", ProfileOp::Gte),
    ("lt", ProfileOp::Lt),
    ("lte", ProfileOp::Lte),
    ("contains", ProfileOp::Contains),
    ("not_contains", ProfileOp::NotContains),
    ("between", ProfileOp::Between),
    ("in", ProfileOp::In),
    ("set", ProfileOp::Set),
    ("not_set", ProfileOp::NotSet),
    ("before", ProfileOp::Before),
    ("after", ProfileOp::After),
    ("within_last", ProfileOp::WithinLast),
    ("includes", ProfileOp::Includes),
];

const VALUE_TYPES: &[(&str, ValueType)] = &[
    ("string", ValueType::String),
    ("number", ValueType::Number),
    ("boolean", ValueType::Boolean),
    ("datetime", ValueType::Datetime),
    ("list", ValueType::List),
];

const COUNT_OPS: &[(&str, CountOp)] = &[
    ("gte", CountOp::Gte),
    ("gt", CountOp::Gt),
    ("eq", CountOp::Eq),
    ("lte", CountOp::Lte),
    ("lt", CountOp::Lt),
];

/// The keys of an event condition that choose what is measured; at most one may appear.
const MEASURE_KEYS: &[&str] = &["count", "distinct_days", "sum", "min", "max", "average"];

/// The deepest nesting accepted, so a hostile definition cannot exhaust the stack.
pub const MAX_DEPTH: usize = 32;
/// The longest `within_last` accepted, about 100 years.
const MAX_WITHIN_LAST_DAYS: f64 = 36_600.0;

/// A problem in a definition, at a JSON path such as `all[1].op`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct DefinitionError {
    pub path: String,
    pub message: String,
}

pub(crate) fn error(path: &str, message: impl Into<String>) -> DefinitionError {
    DefinitionError {
        path: if path.is_empty() {
            "definition".into()
        } else {
            path.into()
        },
        message: message.into(),
    }
}

pub(crate) fn join(path: &str, key: &str) -> String {
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

impl Definition {
    /// Returns every cohort id referenced with `in_cohort`, in document order.
    pub fn cohort_references(&self) -> Vec<i64> {
        let mut out = Vec::new();
        self.collect_references(&mut out);
        out
    }

    fn collect_references(&self, out: &mut Vec<i64>) {
        match self {
            Definition::All(items) | Definition::Any(items) => {
                items.iter().for_each(|item| item.collect_references(out))
            }
            Definition::Not(inner) => inner.collect_references(out),
            Definition::InCohort(id) => out.push(*id),
            Definition::Event(_) | Definition::Profile(_) => {}
        }
    }
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
    if let Some(id) = object.get("in_cohort") {
        expect_only(object, &["in_cohort"], path)?;
        let id = whole_number(id).filter(|id| *id > 0).ok_or_else(|| {
            error(
                &join(path, "in_cohort"),
                format!("expected a cohort id (a whole number of at least 1), found {id}"),
            )
        })?;
        return Ok(Definition::InCohort(id));
    }
    if object.contains_key("event") {
        return parse_event(object, path).map(Definition::Event);
    }
    if object.contains_key("profile") {
        return parse_filter(object, path, "profile").map(Definition::Profile);
    }
    let keys: Vec<&str> = object.keys().map(String::as_str).collect();
    Err(error(
        path,
        format!(
            "unknown condition with keys {keys:?}; expected one of \"all\", \"any\", \"not\", \"event\", \"profile\", \"in_cohort\""
        ),
    ))
}

fn expect_only(
    object: &Map<String, Value>,
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

fn parse_event(object: &Map<String, Value>, path: &str) -> Result<EventRule, DefinitionError> {
    let mut allowed = vec!["event", "where", "within", "first_time"];
    allowed.extend_from_slice(MEASURE_KEYS);
    expect_only(object, &allowed, path)?;
    let event = match &object["event"] {
        Value::String(name) if !name.is_empty() => name.clone(),
        other => {
            return Err(error(
                &join(path, "event"),
                format!("expected a non-empty event name, found {other}"),
            ))
        }
    };

    let filters = match object.get("where") {
        None => Vec::new(),
        Some(value) => {
            let where_path = join(path, "where");
            let items = value.as_array().ok_or_else(|| {
                error(
                    &where_path,
                    format!("expected a list of property filters, found {value}"),
                )
            })?;
            items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let item_path = format!("{where_path}[{i}]");
                    let map = item.as_object().ok_or_else(|| {
                        error(&item_path, format!("expected an object, found {item}"))
                    })?;
                    if !map.contains_key("property") {
                        return Err(error(&join(&item_path, "property"), "missing"));
                    }
                    parse_filter(map, &item_path, "property")
                })
                .collect::<Result<Vec<_>, _>>()?
        }
    };

    let measures: Vec<&str> = MEASURE_KEYS
        .iter()
        .copied()
        .filter(|k| object.contains_key(*k))
        .collect();
    if measures.len() > 1 {
        return Err(error(
            &join(path, measures[1]),
            format!(
                "conflicts with {:?}; give at most one of {MEASURE_KEYS:?}",
                measures[0]
            ),
        ));
    }
    let (measure, comparison) = match measures.first() {
        None => (
            Measure::Count,
            Comparison {
                op: CountOp::Gte,
                value: 1.0,
            },
        ),
        Some(&key) => {
            let key_path = join(path, key);
            let map = object[key].as_object().ok_or_else(|| {
                error(
                    &key_path,
                    format!(
                        "expected an object such as {{\"gte\": 2}}, found {}",
                        object[key]
                    ),
                )
            })?;
            match key {
                "count" | "distinct_days" => {
                    let comparison = parse_comparison(map, &key_path, true)?;
                    let measure = if key == "count" {
                        Measure::Count
                    } else {
                        Measure::DistinctDays
                    };
                    (measure, comparison)
                }
                _ => {
                    let property = match map.get("property") {
                        Some(Value::String(p)) if !p.is_empty() => p.clone(),
                        Some(other) => {
                            return Err(error(
                                &join(&key_path, "property"),
                                format!("expected a non-empty property name, found {other}"),
                            ))
                        }
                        None => {
                            return Err(error(
                                &join(&key_path, "property"),
                                "missing; name the numeric event property to aggregate",
                            ))
                        }
                    };
                    let mut rest = map.clone();
                    rest.remove("property");
                    let comparison = parse_comparison(&rest, &key_path, false)?;
                    let measure = match key {
                        "sum" => Measure::Sum(property),
                        "min" => Measure::Min(property),
                        "max" => Measure::Max(property),
                        _ => Measure::Average(property),
                    };
                    (measure, comparison)
                }
            }
        }
    };

    let within = match object.get("within") {
        None => Window::AllTime,
        Some(value) => parse_window(value, &join(path, "within"))?,
    };

    let first_time = match object.get("first_time") {
        None | Some(Value::Bool(false)) => false,
        Some(Value::Bool(true)) => true,
        Some(other) => {
            return Err(error(
                &join(path, "first_time"),
                format!("expected true or false, found {other}"),
            ))
        }
    };
    if first_time {
        if let Some(key) = measures.first() {
            return Err(error(
                &join(path, key),
                "\"first_time\" cannot be combined with a measure",
            ));
        }
        if within == Window::AllTime {
            return Err(error(
                &join(path, "within"),
                "missing; \"first_time\" needs a window such as {\"last_days\": 7}",
            ));
        }
    }

    Ok(EventRule {
        event,
        filters,
        measure,
        comparison,
        within,
        first_time,
    })
}

/// Reads a whole number written in any JSON notation: `1000`, `1e3` and `1000.0` are all 1000.
/// A fraction, or a number beyond 2^53 that a double cannot hold exactly, is `None`.
pub(super) fn whole_number(value: &Value) -> Option<i64> {
    if let Some(n) = value.as_i64() {
        return Some(n);
    }
    let f = value.as_f64()?;
    (f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_992.0).then_some(f as i64)
}

/// Parses `{"gte": 2}`; `whole` requires a whole number of at least 0 (counts and days).
fn parse_comparison(
    map: &Map<String, Value>,
    path: &str,
    whole: bool,
) -> Result<Comparison, DefinitionError> {
    if map.len() != 1 {
        return Err(error(
            path,
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
                &join(path, name),
                format!("unknown comparison; expected one of {:?}", names(COUNT_OPS)),
            )
        })?;
    let value = if whole {
        whole_number(number).filter(|n| *n >= 0).map(|n| n as f64)
    } else {
        number.as_f64().filter(|n| n.is_finite())
    };
    let value = value.ok_or_else(|| {
        let expected = if whole {
            "a whole number of at least 0"
        } else {
            "a number"
        };
        error(
            &join(path, name),
            format!("expected {expected}, found {number}"),
        )
    })?;
    Ok(Comparison { op, value })
}

/// Parses a property filter whose property name sits under `name_key` (`profile` for a
/// profile condition, `property` inside `where`).
fn parse_filter(
    object: &Map<String, Value>,
    path: &str,
    name_key: &str,
) -> Result<PropertyFilter, DefinitionError> {
    expect_only(object, &[name_key, "op", "value", "type"], path)?;
    let property = match &object[name_key] {
        Value::String(name) if !name.is_empty() => name.clone(),
        other => {
            return Err(error(
                &join(path, name_key),
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

    let value_type = match object.get("type") {
        None => None,
        Some(name) => Some(
            name.as_str()
                .and_then(|n| VALUE_TYPES.iter().find(|(t, _)| *t == n))
                .map(|(_, t)| *t)
                .ok_or_else(|| {
                    error(
                        &join(path, "type"),
                        format!(
                            "unknown type {name}; expected one of {:?}",
                            names(VALUE_TYPES)
                        ),
                    )
                })?,
        ),
    };

    let value_path = join(path, "value");
    let value = object.get("value").cloned();
    check_value(op, op_name, value.as_ref(), value_type, &value_path)?;
    Ok(PropertyFilter {
        property,
        op,
        value,
        value_type,
    })
}

fn is_scalar(value: &Value) -> bool {
    matches!(value, Value::String(_) | Value::Number(_) | Value::Bool(_))
}

fn is_number_or_datetime(value: &Value) -> bool {
    match value {
        Value::Number(_) => true,
        Value::String(s) => parse_datetime(s).is_some(),
        _ => false,
    }
}

fn is_datetime(value: &Value) -> bool {
    value.as_str().and_then(parse_datetime).is_some()
}

/// Checks that an operator's value has the shape the operator needs.
fn check_value(
    op: ProfileOp,
    op_name: &Value,
    value: Option<&Value>,
    value_type: Option<ValueType>,
    path: &str,
) -> Result<(), DefinitionError> {
    let value = match (op, value) {
        (ProfileOp::Set | ProfileOp::NotSet, None) => return Ok(()),
        (ProfileOp::Set | ProfileOp::NotSet, Some(_)) => {
            return Err(error(path, format!("operator {op_name} takes no value")))
        }
        (_, None) => {
            return Err(error(
                path,
                format!("missing; operator {op_name} needs a value"),
            ))
        }
        (_, Some(value)) => value,
    };
    let fail = |expected: &str| {
        Err(error(
            path,
            format!("operator {op_name} expects {expected}, found {value}"),
        ))
    };
    // A number such as 1e400 parses, but is outside a double's range, so no comparison could
    // use it.
    let numbers = std::iter::once(value).chain(value.as_array().into_iter().flatten());
    if let Some(huge) = numbers
        .filter(|v| v.is_number())
        .find(|v| v.as_f64().is_none())
    {
        return Err(error(
            path,
            format!("number {huge} is outside the range of a 64-bit floating point number"),
        ));
    }
    match op {
        ProfileOp::Set | ProfileOp::NotSet => Ok(()),
        ProfileOp::Gt | ProfileOp::Gte | ProfileOp::Lt | ProfileOp::Lte => {
            if is_number_or_datetime(value) {
                Ok(())
            } else {
                fail("a number or a datetime")
            }
        }
        ProfileOp::Eq
        | ProfileOp::Neq
        | ProfileOp::Contains
        | ProfileOp::NotContains
        | ProfileOp::Includes => {
            if !is_scalar(value) {
                return fail("a string, number or boolean");
            }
            if value_type == Some(ValueType::Datetime) && !is_datetime(value) {
                return fail("a datetime, because the type is \"datetime\"");
            }
            Ok(())
        }
        ProfileOp::Between => {
            let reversed = match value.as_array().map(Vec::as_slice) {
                Some([low, high]) if low.is_number() && high.is_number() => {
                    low.as_f64() > high.as_f64()
                }
                Some([low, high]) if is_datetime(low) && is_datetime(high) => {
                    let instant = |v: &Value| v.as_str().and_then(parse_datetime);
                    instant(low) > instant(high)
                }
                _ => return fail("a list of two numbers or two datetimes, low then high"),
            };
            if reversed {
                return Err(error(
                    path,
                    format!("operator {op_name}: the low end of {value} is above the high end, so no value could match; give the low end first"),
                ));
            }
            Ok(())
        }
        ProfileOp::In => match value.as_array() {
            Some(items) if !items.is_empty() && items.iter().all(is_scalar) => Ok(()),
            _ => fail("a non-empty list of strings, numbers or booleans"),
        },
        ProfileOp::Before | ProfileOp::After => {
            if is_datetime(value) {
                Ok(())
            } else {
                fail("a datetime")
            }
        }
        ProfileOp::WithinLast => match value.as_f64() {
            Some(days) if days > 0.0 && days <= MAX_WITHIN_LAST_DAYS => Ok(()),
            _ => fail("a number of days greater than 0 and at most 36600"),
        },
    }
}

pub(crate) fn names<T>(table: &[(&'static str, T)]) -> Vec<&'static str> {
    table.iter().map(|(n, _)| *n).collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn count_rule(event: &str, op: CountOp, value: f64, within: Window) -> EventRule {
        EventRule {
            event: event.into(),
            filters: Vec::new(),
            measure: Measure::Count,
            comparison: Comparison { op, value },
            within,
            first_time: false,
        }
    }

    #[test]
    fn documented_example_parses() {
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
            Definition::Event(count_rule(
                "Purchase",
                CountOp::Gte,
                2.0,
                Window::LastDays(30)
            ))
        );
        assert_eq!(
            items[2],
            Definition::Not(Box::new(Definition::Event(count_rule(
                "Churned",
                CountOp::Gte,
                1.0,
                Window::AllTime
            ))))
        );
    }

    #[test]
    fn whole_numbers_in_any_notation() {
        let text =
            r#"{"event": "Purchase", "count": {"gte": 1e3}, "within": {"last_days": 3.0E1}}"#;
        let definition = parse(&serde_json::from_str(text).unwrap()).unwrap();
        assert_eq!(
            definition,
            Definition::Event(count_rule(
                "Purchase",
                CountOp::Gte,
                1000.0,
                Window::LastDays(30)
            ))
        );
        let cohort: Value = serde_json::from_str(r#"{"in_cohort": 4.0}"#).unwrap();
        assert_eq!(parse(&cohort).unwrap(), Definition::InCohort(4));
        let fraction: Value =
            serde_json::from_str(r#"{"event": "e", "count": {"gte": 1.5}}"#).unwrap();
        let error = parse(&fraction).unwrap_err().to_string();
        assert!(error.contains("whole number"), "{error}");
    }

    #[test]
    fn aggregates_and_filters_parse() {
        let definition = parse(&json!({"event": "Purchase",
            "where": [{"property": "currency", "op": "eq", "value": "EUR"}],
            "sum": {"property": "amount", "gte": 99.5},
            "within": {"last_hours": 12}}))
        .unwrap();
        let Definition::Event(rule) = definition else {
            panic!("expected an event rule")
        };
        assert_eq!(rule.measure, Measure::Sum("amount".into()));
        assert_eq!(rule.comparison.value, 99.5);
        assert_eq!(rule.filters.len(), 1);
        assert_eq!(rule.within, Window::LastHours(12));
    }

    #[test]
    fn in_cohort_is_collected() {
        let definition =
            parse(&json!({"any": [{"in_cohort": 4}, {"not": {"in_cohort": 7}}]})).unwrap();
        assert_eq!(definition.cohort_references(), vec![4, 7]);
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
            (
                json!({"event": "A", "where": [{"property": "x", "op": "in", "value": []}]}),
                "where[0].value",
            ),
            (
                json!({"event": "A", "where": [{"op": "set"}]}),
                "where[0].property",
            ),
            (
                json!({"event": "A", "count": {"gte": 1}, "sum": {"property": "x", "gte": 1}}),
                "sum",
            ),
            (json!({"event": "A", "sum": {"gte": 1}}), "sum.property"),
            (
                json!({"event": "A", "average": {"property": "x", "gte": "a"}}),
                "average.gte",
            ),
            (json!({"event": "A", "first_time": true}), "within"),
            (
                json!({"event": "A", "within": {"between": ["2026-02-01", "2026-01-01"]}}),
                "within.between",
            ),
            (
                json!({"event": "A", "within": {"since": "tomorrow"}}),
                "within.since",
            ),
            (json!({"in_cohort": "x"}), "in_cohort"),
            (
                json!({"profile": "p", "op": "between", "value": [1]}),
                "value",
            ),
            (
                json!({"profile": "p", "op": "within_last", "value": -1}),
                "value",
            ),
            (
                json!({"profile": "p", "op": "between", "value": [5, 1]}),
                "value",
            ),
            (
                serde_json::from_str(r#"{"profile": "p", "op": "between", "value": [1e400, 2]}"#)
                    .unwrap(),
                "value",
            ),
            (
                serde_json::from_str(r#"{"profile": "p", "op": "gt", "value": -1e400}"#).unwrap(),
                "value",
            ),
            (
                json!({"profile": "p", "op": "between",
                    "value": ["2026-02-01T00:00:00Z", "2026-01-01T00:00:00Z"]}),
                "value",
            ),
            (
                json!({"profile": "p", "op": "eq", "value": 1, "type": "money"}),
                "type",
            ),
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
    fn comparisons() {
        let rule = |op, value| Comparison { op, value };
        assert!(rule(CountOp::Gte, 2.0).matches(2.0));
        assert!(!rule(CountOp::Gte, 2.0).matches(1.0));
        assert!(rule(CountOp::Lte, 2.0).matches(0.0));
        assert!(!rule(CountOp::Lt, 2.0).matches(2.0));
        assert!(rule(CountOp::Eq, 0.0).matches(0.0));
        assert!(!rule(CountOp::Gt, 2.0).matches(2.0));
    }
}
