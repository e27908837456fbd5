//! Comparison of profile property values against a rule's value.
//!
//! Numbers compare numerically and datetimes as instants, never as strings. A datetime without
//! an offset is read as UTC; a bare date is its UTC midnight.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde_json::Value;

use super::definition::ProfileOp;

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

/// Whether a profile's value of a property (`None` when unset) satisfies `op value`.
pub fn matches(actual: Option<&Value>, op: ProfileOp, expected: Option<&Value>) -> bool {
    let actual = actual.filter(|v| !v.is_null());
    match op {
        ProfileOp::Set => actual.is_some(),
        ProfileOp::NotSet => actual.is_none(),
        ProfileOp::Eq => actual.zip(expected).is_some_and(|(a, e)| equal(a, e)),
        ProfileOp::Neq => !actual.zip(expected).is_some_and(|(a, e)| equal(a, e)),
        ProfileOp::Contains => actual.zip(expected).is_some_and(|(a, e)| contains(a, e)),
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

fn equal(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        _ => actual == expected,
    }
}

fn contains(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::String(a), Value::String(e)) => a.contains(e.as_str()),
        (Value::Array(items), _) => items.iter().any(|item| equal(item, expected)),
        _ => false,
    }
}

/// Orders two values as numbers or as datetimes; any other pairing has no order.
fn compare(actual: &Value, expected: &Value) -> Option<std::cmp::Ordering> {
    match (actual, expected) {
        (Value::Number(a), Value::Number(e)) => a.as_f64()?.partial_cmp(&e.as_f64()?),
        (Value::String(a), Value::String(e)) => Some(parse_datetime(a)?.cmp(&parse_datetime(e)?)),
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
}
