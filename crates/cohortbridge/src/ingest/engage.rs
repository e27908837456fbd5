//! `/engage` profile updates: parsing one update record and applying its operation to a
//! profile's properties.

use chrono::{TimeZone, Utc};
use serde_json::{Map, Value};

use crate::identity::{self, FieldError};
use crate::ingest::decode::json_type;
use crate::store::{ProfileOperation, ProfileUpdate};

const OPERATIONS: &[&str] = &[
    "$set",
    "$set_once",
    "$add",
    "$append",
    "$union",
    "$remove",
    "$unset",
    "$delete",
];

/// Reads the project token of an update (`$token`, or `token` as some clients send it).
pub fn token_of(record: &Value) -> Option<&str> {
    record
        .get("$token")
        .or_else(|| record.get("token"))
        .and_then(Value::as_str)
}

/// Validates one update record received at `now_ms`.
pub fn parse_update(record: &Value, now_ms: i64) -> Result<ProfileUpdate, FieldError> {
    let object = record
        .as_object()
        .ok_or_else(|| FieldError::new("", "update must be a JSON object"))?;
    let distinct_id = identity::read_id(object.get("$distinct_id"), "$distinct_id")?
        .ok_or_else(|| FieldError::new("$distinct_id", "$distinct_id is missing"))?;
    if distinct_id.is_empty() {
        return Err(FieldError::new("$distinct_id", "$distinct_id is empty"));
    }

    let present: Vec<&str> = OPERATIONS
        .iter()
        .copied()
        .filter(|op| object.contains_key(*op))
        .collect();
    let op = match present.as_slice() {
        [op] => *op,
        [] => {
            let keys: Vec<&str> = object.keys().map(String::as_str).collect();
            return Err(FieldError::new(
                "operation",
                format!(
                    "update has no operation (its keys: {}); expected one of {}",
                    if keys.is_empty() {
                        "none".to_owned()
                    } else {
                        keys.join(", ")
                    },
                    OPERATIONS.join(", ")
                ),
            ));
        }
        many => {
            return Err(FieldError::new(
                many.join(", "),
                format!(
                    "update has {} operations ({}); send one operation per update",
                    many.len(),
                    many.join(", ")
                ),
            ))
        }
    };
    let value = &object[op];
    let operation = match op {
        "$set" => ProfileOperation::Set(object_arg(op, value)?),
        "$set_once" => ProfileOperation::SetOnce(object_arg(op, value)?),
        "$add" => {
            let map = object_arg(op, value)?;
            if let Some((key, bad)) = map.iter().find(|(_, v)| !v.is_number()) {
                return Err(FieldError::new(
                    format!("$add.{key}"),
                    format!("$add.{key} must be a number, found {}", json_type(bad)),
                ));
            }
            ProfileOperation::Add(map)
        }
        "$append" => ProfileOperation::Append(object_arg(op, value)?),
        "$union" => {
            let map = object_arg(op, value)?;
            if let Some((key, bad)) = map.iter().find(|(_, v)| !v.is_array()) {
                return Err(FieldError::new(
                    format!("$union.{key}"),
                    format!("$union.{key} must be a list, found {}", json_type(bad)),
                ));
            }
            ProfileOperation::Union(map)
        }
        "$remove" => ProfileOperation::Remove(object_arg(op, value)?),
        "$unset" => {
            let names = value.as_array().ok_or_else(|| {
                FieldError::new(
                    "$unset",
                    format!(
                        "$unset must be a list of property names, found {}",
                        json_type(value)
                    ),
                )
            })?;
            let names = names
                .iter()
                .map(|n| n.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    FieldError::new("$unset", "$unset must list property names as strings")
                })?;
            ProfileOperation::Unset(names)
        }
        _ => ProfileOperation::Delete,
    };

    let last_seen_ms = if modifier_flag(object, "$ignore_time")? {
        None
    } else {
        Some(update_time_ms(object.get("$time"), now_ms)?)
    };
    let ignore_alias = modifier_flag(object, "$ignore_alias")?;
    // Mixpanel uses `$ip` only to geolocate the profile. cohortbridge never geolocates, so the
    // value is checked for its type and otherwise ignored.
    match object.get("$ip") {
        None | Some(Value::Null | Value::String(_) | Value::Number(_)) => {}
        Some(other) => {
            return Err(FieldError::new(
                "$ip",
                format!(
                    "$ip must be an IP address string, found {}",
                    json_type(other)
                ),
            ))
        }
    }
    Ok(ProfileUpdate {
        distinct_id,
        operation,
        last_seen_ms,
        ignore_alias,
    })
}

/// Reads a boolean modifier such as `$ignore_time`: `true`/`false`, or the strings `"true"` and
/// `"false"` that some SDKs send. Absent or `null` is false.
fn modifier_flag(object: &Map<String, Value>, name: &str) -> Result<bool, FieldError> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(flag)) => Ok(*flag),
        Some(Value::String(text)) if text == "true" => Ok(true),
        Some(Value::String(text)) if text == "false" => Ok(false),
        Some(other) => Err(FieldError::new(
            name,
            format!("{name} must be true or false, found {other}"),
        )),
    }
}

fn object_arg(op: &str, value: &Value) -> Result<Map<String, Value>, FieldError> {
    value.as_object().cloned().ok_or_else(|| {
        FieldError::new(
            op,
            format!(
                "{op} must be an object of properties, found {}",
                json_type(value)
            ),
        )
    })
}

/// `$time` of an update in milliseconds; SDKs send seconds (possibly fractional) or
/// milliseconds. Absent means now.
fn update_time_ms(value: Option<&Value>, now_ms: i64) -> Result<i64, FieldError> {
    match value {
        None | Some(Value::Null) => Ok(now_ms),
        Some(Value::Number(n)) => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            let ms = if f >= 100_000_000_000.0 {
                f.round()
            } else {
                (f * 1000.0).round()
            };
            let latest = (now_ms + crate::ingest::event::MAX_FUTURE_MS) as f64;
            let earliest = crate::ingest::event::MIN_EVENT_TIME_MS as f64;
            if !ms.is_finite() || ms < earliest || ms > latest {
                return Err(FieldError::new(
                    "$time",
                    format!("$time {n} is not between 1971-01-01 and one hour from now"),
                ));
            }
            Ok(ms as i64)
        }
        Some(other) => Err(FieldError::new(
            "$time",
            format!("$time must be a number, found {}", json_type(other)),
        )),
    }
}

/// The result of applying an operation to a profile.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Updated,
    Deleted,
}

/// Applies one operation to a profile's properties.
pub fn apply(properties: &mut Map<String, Value>, operation: &ProfileOperation) -> Outcome {
    match operation {
        ProfileOperation::Set(values) => {
            for (key, value) in values {
                properties.insert(key.clone(), value.clone());
            }
        }
        ProfileOperation::SetOnce(values) => {
            for (key, value) in values {
                properties
                    .entry(key.clone())
                    .or_insert_with(|| value.clone());
            }
        }
        ProfileOperation::Add(values) => {
            for (key, delta) in values {
                // Integers add exactly, also above 2^53 where an f64 would round.
                let current = properties.get(key);
                let exact = match (current.map_or(Some(0), Value::as_i64), delta.as_i64()) {
                    (Some(a), Some(b)) => a.checked_add(b),
                    _ => None,
                };
                if let Some(sum) = exact {
                    properties.insert(key.clone(), Value::from(sum));
                    continue;
                }
                let sum =
                    current.and_then(Value::as_f64).unwrap_or(0.0) + delta.as_f64().unwrap_or(0.0);
                if !sum.is_finite() {
                    // JSON has no infinity: the property keeps its value rather than turn null.
                    tracing::warn!(property = %key, "$add overflowed a 64-bit float; the property keeps its value");
                    continue;
                }
                properties.insert(key.clone(), Value::from(sum));
            }
        }
        ProfileOperation::Append(values) => {
            for (key, item) in values {
                list_entry(properties, key).push(item.clone());
            }
        }
        ProfileOperation::Union(values) => {
            for (key, items) in values {
                let list = list_entry(properties, key);
                for item in items.as_array().into_iter().flatten() {
                    if !list.contains(item) {
                        list.push(item.clone());
                    }
                }
            }
        }
        ProfileOperation::Remove(values) => {
            for (key, item) in values {
                if let Some(Value::Array(list)) = properties.get_mut(key) {
                    list.retain(|existing| existing != item);
                }
            }
        }
        ProfileOperation::Unset(names) => {
            for name in names {
                properties.remove(name);
            }
        }
        ProfileOperation::Delete => return Outcome::Deleted,
    }
    Outcome::Updated
}

/// Returns the list stored under `key`, created when absent. A scalar already there becomes the first item.
fn list_entry<'a>(properties: &'a mut Map<String, Value>, key: &str) -> &'a mut Vec<Value> {
    let slot = properties
        .entry(key.to_owned())
        .or_insert_with(|| Value::Array(Vec::new()));
    if !slot.is_array() {
        let previous = slot.take();
        *slot = Value::Array(vec![previous]);
    }
    slot.as_array_mut().expect("slot was just made an array")
}

/// Sets `$last_seen` to `ms` as an ISO-8601 UTC string, unless it is already later.
pub fn touch_last_seen(properties: &mut Map<String, Value>, ms: i64) {
    let Some(when) = Utc.timestamp_millis_opt(ms).single() else {
        return;
    };
    let text = when.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let later_already = properties
        .get("$last_seen")
        .and_then(Value::as_str)
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .is_some_and(|existing| existing.timestamp_millis() >= ms);
    if !later_already {
        properties.insert("$last_seen".into(), Value::String(text));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn run(updates: &[Value]) -> Map<String, Value> {
        let mut properties = Map::new();
        for update in updates {
            let parsed = parse_update(update, NOW).unwrap();
            if apply(&mut properties, &parsed.operation) == Outcome::Deleted {
                properties.clear();
            }
        }
        properties
    }

    #[test]
    fn set_once_keeps_first_value() {
        let properties = run(&[
            json!({"$distinct_id": "u", "$set_once": {"plan": "free"}}),
            json!({"$distinct_id": "u", "$set_once": {"plan": "pro"}}),
        ]);
        assert_eq!(properties["plan"], "free");
    }

    #[test]
    fn set_overwrites_and_unset_removes() {
        let properties = run(&[
            json!({"$distinct_id": "u", "$set": {"plan": "free", "x": 1}}),
            json!({"$distinct_id": "u", "$set": {"plan": "pro"}}),
            json!({"$distinct_id": "u", "$unset": ["x"]}),
        ]);
        assert_eq!(Value::Object(properties), json!({"plan": "pro"}));
    }

    #[test]
    fn add_stays_exact_and_finite() {
        let properties = run(&[
            json!({"$distinct_id": "u", "$add": {"big": 9_007_199_254_740_993_i64}}),
            json!({"$distinct_id": "u", "$add": {"big": 1}}),
            json!({"$distinct_id": "u", "$add": {"huge": 1.7976931348623157e308}}),
            json!({"$distinct_id": "u", "$add": {"huge": 1.7976931348623157e308}}),
        ]);
        assert_eq!(properties["big"].as_i64(), Some(9_007_199_254_740_994));
        assert_eq!(properties["huge"].as_f64(), Some(1.7976931348623157e308));
    }

    #[test]
    fn list_operations() {
        let properties = run(&[
            json!({"$distinct_id": "u", "$append": {"tags": "a"}}),
            json!({"$distinct_id": "u", "$union": {"tags": ["a", "b"]}}),
            json!({"$distinct_id": "u", "$remove": {"tags": "a"}}),
            json!({"$distinct_id": "u", "$add": {"n": 2}}),
            json!({"$distinct_id": "u", "$add": {"n": 3}}),
        ]);
        assert_eq!(properties["tags"], json!(["b"]));
        assert_eq!(properties["n"], json!(5));
    }

    #[test]
    fn delete_reports_deleted() {
        let update = parse_update(&json!({"$distinct_id": "u", "$delete": ""}), NOW).unwrap();
        assert_eq!(apply(&mut Map::new(), &update.operation), Outcome::Deleted);
    }

    #[test]
    fn ignore_time_skips_last_seen() {
        let update = parse_update(
            &json!({"$distinct_id": "u", "$ignore_time": true, "$set": {}}),
            NOW,
        )
        .unwrap();
        assert_eq!(update.last_seen_ms, None);
        let update = parse_update(
            &json!({"$distinct_id": "u", "$time": 1700000001.5, "$set": {}}),
            NOW,
        )
        .unwrap();
        assert_eq!(update.last_seen_ms, Some(1_700_000_001_500));
    }

    #[test]
    fn invalid_updates_name_the_field() {
        let cases = [
            (
                json!({"$distinct_id": "u", "$time": 1e300, "$set": {}}),
                "$time",
            ),
            (
                json!({"$distinct_id": "u", "$time": 5, "$set": {}}),
                "$time",
            ),
            (
                json!({"$distinct_id": "u", "$time": -5, "$set": {}}),
                "$time",
            ),
            (
                json!({"$distinct_id": "u", "$time": 1e300, "$set": {}}),
                "$time",
            ),
            (
                json!({"$distinct_id": "u", "$time": 5, "$set": {}}),
                "$time",
            ),
            (
                json!({"$distinct_id": "u", "$time": -5, "$set": {}}),
                "$time",
            ),
            (json!({"$set": {}}), "$distinct_id"),
            (json!({"$distinct_id": "null", "$set": {}}), "$distinct_id"),
            (json!({"$distinct_id": "u", "$set": [1]}), "$set"),
            (json!({"$distinct_id": "u", "$unset": "x"}), "$unset"),
            (json!({"$distinct_id": "u", "$add": {"n": "x"}}), "$add.n"),
            (json!({"$distinct_id": "u"}), "operation"),
            (
                json!({"$distinct_id": "u", "$set": {}, "$unset": []}),
                "$set, $unset",
            ),
        ];
        for (record, field) in cases {
            let err = parse_update(&record, NOW).unwrap_err();
            assert_eq!(err.field, field, "{record}: {}", err.message);
        }
    }

    #[test]
    fn modifiers_are_read() {
        let update = parse_update(
            &json!({"$distinct_id": "u", "$ignore_alias": true, "$ip": "0", "$set": {}}),
            NOW,
        )
        .unwrap();
        assert!(update.ignore_alias);
        let update = parse_update(&json!({"$distinct_id": "u", "$set": {}}), NOW).unwrap();
        assert!(!update.ignore_alias);
        for (record, field) in [
            (
                json!({"$distinct_id": "u", "$ignore_alias": 1, "$set": {}}),
                "$ignore_alias",
            ),
            (
                json!({"$distinct_id": "u", "$ignore_time": "yes", "$set": {}}),
                "$ignore_time",
            ),
            (
                json!({"$distinct_id": "u", "$ip": ["1.2.3.4"], "$set": {}}),
                "$ip",
            ),
        ] {
            let err = parse_update(&record, NOW).unwrap_err();
            assert_eq!(err.field, field, "{record}: {}", err.message);
        }
    }

    #[test]
    fn numeric_distinct_id_becomes_string() {
        let update = parse_update(&json!({"$distinct_id": 12345, "$set": {}}), NOW).unwrap();
        assert_eq!(update.distinct_id, "12345");
    }

    #[test]
    fn last_seen_never_moves_back() {
        let mut properties = Map::new();
        touch_last_seen(&mut properties, NOW);
        touch_last_seen(&mut properties, NOW - 86_400_000);
        assert_eq!(properties["$last_seen"], "2023-11-14T22:13:20Z");
    }
}
