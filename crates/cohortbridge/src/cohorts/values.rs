//! Comparison of profile property values against a rule's value.
//!
//! Numbers compare numerically and datetimes as instants, never as strings. A datetime without
//! an offset is read as UTC; a bare date is its UTC midnight.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde_json::Value;

use super::definition::{ProfileOp, PropertyFilter, ValueType};

/// Parses an RFC 3339 datetime, a datetime without offset, or a date, to epoch milliseconds.
pub fn parse_datetime(text: &str) -> Option<i64> {
    if let Ok(parsed) = DateTime::parse_from_rfc3339(text) {
        return Some(parsed.timestamp_millis());
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(text, format) {
            return Some(naive.and_utc().timestamp_millis());
        }
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|date| date.and_hms_opt(0, 0, 0))
        .map(|naive| DateTime::<Utc>::from_naive_utc_and_offset(naive, Utc).timestamp_millis())
}

/// A borrowed property value: a view of a `serde_json::Value` or of a value that the cohort
/// engine stores without one. Scalars are held by value or as borrowed text, so a store of
/// millions of profiles needs no `Value` per property.
#[derive(Debug, Clone, Copy)]
pub enum ValueRef<'a> {
    Null,
    Bool(bool),
    /// A number as its JSON text, as `serde_json::Number::as_str` returns it.
    Number(&'a str),
    String(&'a str),
    /// An array or an object.
    Composite(&'a Value),
}

impl<'a> From<&'a Value> for ValueRef<'a> {
    fn from(value: &'a Value) -> Self {
        match value {
            Value::Null => ValueRef::Null,
            Value::Bool(b) => ValueRef::Bool(*b),
            Value::Number(n) => ValueRef::Number(n.as_str()),
            Value::String(s) => ValueRef::String(s),
            Value::Array(_) | Value::Object(_) => ValueRef::Composite(value),
        }
    }
}

impl<'a> ValueRef<'a> {
    /// Converts the view into an owned `Value`.
    pub fn to_value(self) -> Value {
        match self {
            ValueRef::Null => Value::Null,
            ValueRef::Bool(b) => Value::Bool(b),
            ValueRef::Number(text) => Value::Number(
                text.parse()
                    .expect("a stored number is the text of a parsed JSON number"),
            ),
            ValueRef::String(s) => Value::String(s.to_owned()),
            ValueRef::Composite(value) => value.clone(),
        }
    }

    fn is_null(self) -> bool {
        matches!(self, ValueRef::Null)
    }

    /// Returns the number as `f64`, or `None` for other values and for numbers outside the
    /// finite range of `f64`, as `serde_json::Number::as_f64` does.
    fn as_f64(self) -> Option<f64> {
        match self {
            ValueRef::Number(text) => number_as_f64(text),
            _ => None,
        }
    }

    fn as_array(self) -> Option<&'a [Value]> {
        match self {
            ValueRef::Composite(Value::Array(items)) => Some(items),
            _ => None,
        }
    }
}

/// Parses a JSON number's text as `serde_json::Number::as_f64` does with the
/// `arbitrary_precision` feature: `None` unless the value is finite.
fn number_as_f64(text: &str) -> Option<f64> {
    text.parse::<f64>().ok().filter(|n| n.is_finite())
}

/// Checks whether a property's value (`None` when unset) satisfies `filter`, as of `now_ms`
/// (used only by `within_last`).
pub fn matches_filter(actual: Option<&Value>, filter: &PropertyFilter, now_ms: i64) -> bool {
    matches_filter_ref(actual.map(ValueRef::from), filter, now_ms)
}

/// Checks like [`matches_filter`], on a borrowed view of the value.
pub fn matches_filter_ref(
    actual: Option<ValueRef<'_>>,
    filter: &PropertyFilter,
    now_ms: i64,
) -> bool {
    let actual = actual.filter(|v| !v.is_null());
    if let (Some(value), Some(value_type)) = (actual, filter.value_type) {
        if !has_type_ref(value, value_type) {
            return false;
        }
    }
    let datetime = filter.value_type == Some(ValueType::Datetime);
    matches_op(actual, filter.op, filter.value.as_ref(), datetime, now_ms)
}

/// Checks whether a property's value (`None` when unset) satisfies `op expected`, for a filter
/// without a declared type.
pub fn matches(actual: Option<&Value>, op: ProfileOp, expected: Option<&Value>) -> bool {
    let actual = actual.map(ValueRef::from).filter(|v| !v.is_null());
    matches_op(actual, op, expected, false, 0)
}

fn matches_op(
    actual: Option<ValueRef<'_>>,
    op: ProfileOp,
    expected: Option<&Value>,
    datetime: bool,
    now_ms: i64,
) -> bool {
    let equal = |a: ValueRef<'_>, e: &Value| {
        if datetime {
            instant(a)
                .zip(instant(ValueRef::from(e)))
                .is_some_and(|(a, e)| a == e)
        } else {
            equal(a, e)
        }
    };
    match op {
        ProfileOp::Set => actual.is_some(),
        ProfileOp::NotSet => actual.is_none(),
        ProfileOp::Eq => actual.zip(expected).is_some_and(|(a, e)| equal(a, e)),
        ProfileOp::Neq => !actual.zip(expected).is_some_and(|(a, e)| equal(a, e)),
        ProfileOp::Contains => actual.zip(expected).is_some_and(|(a, e)| contains(a, e)),
        ProfileOp::NotContains => !actual.zip(expected).is_some_and(|(a, e)| contains(a, e)),
        ProfileOp::Includes => actual.zip(expected).is_some_and(|(a, e)| {
            a.as_array()
                .is_some_and(|items| items.iter().any(|i| equal(ValueRef::from(i), e)))
        }),
        ProfileOp::In => actual.zip(expected).is_some_and(|(a, e)| {
            e.as_array()
                .is_some_and(|options| options.iter().any(|option| equal(a, option)))
        }),
        ProfileOp::Between => actual.zip(expected).is_some_and(|(a, e)| {
            let Some([low, high]) = e.as_array().map(Vec::as_slice) else {
                return false;
            };
            compare(a, low).is_some_and(|o| o.is_ge())
                && compare(a, high).is_some_and(|o| o.is_le())
        }),
        ProfileOp::Before | ProfileOp::After => {
            let Some((a, e)) = actual
                .and_then(instant)
                .zip(expected.map(ValueRef::from).and_then(instant))
            else {
                return false;
            };
            if op == ProfileOp::Before {
                a < e
            } else {
                a > e
            }
        }
        ProfileOp::WithinLast => {
            let Some((a, days)) = actual
                .and_then(instant)
                .zip(expected.and_then(Value::as_f64))
            else {
                return false;
            };
            let since = now_ms - (days * 86_400_000.0) as i64;
            since <= a && a <= now_ms
        }
        ProfileOp::Gt | ProfileOp::Gte | ProfileOp::Lt | ProfileOp::Lte => {
            let Some(ordering) = actual.zip(expected).and_then(|(a, e)| compare(a, e)) else {
                return false;
            };
            match op {
                ProfileOp::Gt => ordering.is_gt(),
                ProfileOp::Gte => ordering.is_ge(),
                ProfileOp::Lt => ordering.is_lt(),
                _ => ordering.is_le(),
            }
        }
    }
}

/// Whether a value has the declared type; a datetime is a string that parses as one.
pub fn has_type(value: &Value, value_type: ValueType) -> bool {
    has_type_ref(ValueRef::from(value), value_type)
}

fn has_type_ref(value: ValueRef<'_>, value_type: ValueType) -> bool {
    match value_type {
        ValueType::String => matches!(value, ValueRef::String(_)),
        ValueType::Number => matches!(value, ValueRef::Number(_)),
        ValueType::Boolean => matches!(value, ValueRef::Bool(_)),
        ValueType::Datetime => instant(value).is_some(),
        ValueType::List => value.as_array().is_some(),
    }
}

/// A datetime string as epoch milliseconds.
fn instant(value: ValueRef<'_>) -> Option<i64> {
    match value {
        ValueRef::String(text) => parse_datetime(text),
        _ => None,
    }
}

/// Compares like `Value`'s equality, except that numbers are equal when their `f64` values
/// are, so `2.0` equals `2`. Inside arrays and objects, numbers compare as `Value` does.
fn equal(actual: ValueRef<'_>, expected: &Value) -> bool {
    match (actual, expected) {
        (ValueRef::Number(_), Value::Number(b)) => actual.as_f64() == b.as_f64(),
        (ValueRef::Null, Value::Null) => true,
        (ValueRef::Bool(a), Value::Bool(b)) => a == *b,
        (ValueRef::String(a), Value::String(b)) => a == b,
        (ValueRef::Composite(a), _) => a == expected,
        _ => false,
    }
}

fn contains(actual: ValueRef<'_>, expected: &Value) -> bool {
    match (actual, expected) {
        (ValueRef::String(a), Value::String(e)) => a.contains(e.as_str()),
        (ValueRef::Composite(Value::Array(items)), _) => items
            .iter()
            .any(|item| equal(ValueRef::from(item), expected)),
        _ => false,
    }
}

/// Orders two values as numbers or as datetimes; any other pairing has no order.
fn compare(actual: ValueRef<'_>, expected: &Value) -> Option<std::cmp::Ordering> {
    match (actual, expected) {
        (ValueRef::Number(_), Value::Number(e)) => actual.as_f64()?.partial_cmp(&e.as_f64()?),
        (ValueRef::String(a), Value::String(e)) => {
            Some(parse_datetime(a)?.cmp(&parse_datetime(e)?))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn datetimes_compare_as_instants() {
        let birthdate = json!("1961-04-14T00:00:00.000Z");
        assert!(matches(
            Some(&birthdate),
            ProfileOp::Lt,
            Some(&json!("1970-01-01"))
        ));
        // As strings, "2014-08-21T10:00:00+02:00" sorts after "2014-08-21T09:30:00Z", but it is
        // the earlier instant.
        let local = json!("2014-08-21T10:00:00+02:00");
        assert!(matches(
            Some(&local),
            ProfileOp::Lt,
            Some(&json!("2014-08-21T09:30:00Z"))
        ));
    }

    #[test]
    fn naive_datetime_is_utc() {
        assert_eq!(
            parse_datetime("2014-08-21T10:00:00"),
            parse_datetime("2014-08-21T10:00:00Z")
        );
        assert_eq!(
            parse_datetime("1961-04-14T00:00:00.000Z"),
            Some(-275_097_600_000)
        );
    }

    #[test]
    fn numbers_compare_numerically() {
        assert!(matches(Some(&json!(10)), ProfileOp::Gt, Some(&json!(9.5))));
        assert!(matches(Some(&json!(2.0)), ProfileOp::Eq, Some(&json!(2))));
        assert!(!matches(Some(&json!("10")), ProfileOp::Gt, Some(&json!(9))));
    }

    #[test]
    fn unparseable_never_matches_ordering() {
        assert!(!matches(
            Some(&json!("soon")),
            ProfileOp::Lt,
            Some(&json!("2020-01-01"))
        ));
        assert!(!matches(None, ProfileOp::Gte, Some(&json!(1))));
    }

    #[test]
    fn neq_includes_unset() {
        assert!(matches(None, ProfileOp::Neq, Some(&json!("pro"))));
        assert!(matches(
            Some(&json!("free")),
            ProfileOp::Neq,
            Some(&json!("pro"))
        ));
        assert!(!matches(
            Some(&json!("pro")),
            ProfileOp::Neq,
            Some(&json!("pro"))
        ));
    }

    #[test]
    fn contains_strings_and_lists() {
        assert!(matches(
            Some(&json!("pro-annual")),
            ProfileOp::Contains,
            Some(&json!("pro"))
        ));
        assert!(matches(
            Some(&json!(["a", "b"])),
            ProfileOp::Contains,
            Some(&json!("b"))
        ));
        assert!(!matches(
            Some(&json!(12)),
            ProfileOp::Contains,
            Some(&json!("1"))
        ));
    }

    #[test]
    fn set_and_not_set_treat_null_as_unset() {
        assert!(matches(Some(&Value::Null), ProfileOp::NotSet, None));
        assert!(!matches(Some(&Value::Null), ProfileOp::Set, None));
        assert!(matches(Some(&json!(false)), ProfileOp::Set, None));
    }

    /// A filter on the property `p`.
    fn filter(
        op: ProfileOp,
        value: Option<Value>,
        value_type: Option<ValueType>,
    ) -> PropertyFilter {
        PropertyFilter {
            property: "p".into(),
            op,
            value,
            value_type,
        }
    }

    /// The property's value, the operator, its value, the declared type and the expected result.
    type Case = (
        Option<Value>,
        ProfileOp,
        Option<Value>,
        Option<ValueType>,
        bool,
    );

    #[test]
    fn operators_table() {
        const NOW: i64 = 1_775_000_000_000; // 2026-03-31T23:33:20Z
        let cases: Vec<Case> = vec![
            (
                Some(json!("pro")),
                ProfileOp::NotContains,
                Some(json!("x")),
                None,
                true,
            ),
            (
                Some(json!("pro")),
                ProfileOp::NotContains,
                Some(json!("r")),
                None,
                false,
            ),
            (None, ProfileOp::NotContains, Some(json!("r")), None, true),
            (
                Some(json!(5)),
                ProfileOp::Between,
                Some(json!([5, 10])),
                None,
                true,
            ),
            (
                Some(json!(10)),
                ProfileOp::Between,
                Some(json!([5, 10])),
                None,
                true,
            ),
            (
                Some(json!(10.5)),
                ProfileOp::Between,
                Some(json!([5, 10])),
                None,
                false,
            ),
            (
                Some(json!("5")),
                ProfileOp::Between,
                Some(json!([5, 10])),
                None,
                false,
            ),
            (
                Some(json!("2026-01-15T00:00:00+01:00")),
                ProfileOp::Between,
                Some(json!(["2026-01-01", "2026-01-31"])),
                None,
                true,
            ),
            (
                Some(json!("b")),
                ProfileOp::In,
                Some(json!(["a", "b"])),
                None,
                true,
            ),
            (
                Some(json!(2.0)),
                ProfileOp::In,
                Some(json!([1, 2])),
                None,
                true,
            ),
            (
                Some(json!("c")),
                ProfileOp::In,
                Some(json!(["a", "b"])),
                None,
                false,
            ),
            (None, ProfileOp::In, Some(json!(["a"])), None, false),
            (
                Some(json!("2026-01-01T00:00:00Z")),
                ProfileOp::Before,
                Some(json!("2026-01-01T00:00:01Z")),
                None,
                true,
            ),
            (
                Some(json!("2026-01-01T00:00:00Z")),
                ProfileOp::Before,
                Some(json!("2026-01-01T00:00:00Z")),
                None,
                false,
            ),
            (
                Some(json!("2026-01-01T02:00:00+01:00")),
                ProfileOp::After,
                Some(json!("2026-01-01T00:30:00Z")),
                None,
                true,
            ),
            (
                Some(json!("soon")),
                ProfileOp::After,
                Some(json!("2020-01-01")),
                None,
                false,
            ),
            (
                Some(json!("2026-03-24T23:33:20Z")),
                ProfileOp::WithinLast,
                Some(json!(7)),
                None,
                true,
            ),
            (
                Some(json!("2026-03-24T23:33:19.999Z")),
                ProfileOp::WithinLast,
                Some(json!(7)),
                None,
                false,
            ),
            (
                Some(json!("2026-04-01T00:00:00Z")),
                ProfileOp::WithinLast,
                Some(json!(7)),
                None,
                false,
            ),
            (
                Some(json!(["a", "b"])),
                ProfileOp::Includes,
                Some(json!("a")),
                None,
                true,
            ),
            (
                Some(json!("abc")),
                ProfileOp::Includes,
                Some(json!("a")),
                None,
                false,
            ),
            (
                Some(json!(3)),
                ProfileOp::Eq,
                Some(json!(3)),
                Some(ValueType::String),
                false,
            ),
            (
                Some(json!("3")),
                ProfileOp::Eq,
                Some(json!("3")),
                Some(ValueType::String),
                true,
            ),
            (
                Some(json!(3)),
                ProfileOp::Neq,
                Some(json!(4)),
                Some(ValueType::String),
                false,
            ),
            (
                Some(json!(true)),
                ProfileOp::Eq,
                Some(json!(true)),
                Some(ValueType::Boolean),
                true,
            ),
            (
                Some(json!(["a"])),
                ProfileOp::Set,
                None,
                Some(ValueType::List),
                true,
            ),
            (
                Some(json!("a")),
                ProfileOp::Set,
                None,
                Some(ValueType::List),
                false,
            ),
            (
                Some(json!("2026-01-01T01:00:00+01:00")),
                ProfileOp::Eq,
                Some(json!("2026-01-01T00:00:00Z")),
                Some(ValueType::Datetime),
                true,
            ),
            (
                Some(json!("2026-01-01T01:00:00+01:00")),
                ProfileOp::Eq,
                Some(json!("2026-01-01T00:00:00Z")),
                None,
                false,
            ),
        ];
        for (actual, op, value, value_type, expected) in cases {
            let rule = filter(op, value.clone(), value_type);
            assert_eq!(
                matches_filter(actual.as_ref(), &rule, NOW),
                expected,
                "{actual:?} {op:?} {value:?} typed {value_type:?}"
            );
        }
    }
}
