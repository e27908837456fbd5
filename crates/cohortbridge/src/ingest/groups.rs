//! `/groups` group profile updates: parsing one update record. Group profiles are keyed by the
//! group key (the event property that names the group, such as `company`) and the group id.

use serde_json::{Map, Value};

use crate::identity::FieldError;
use crate::ingest::decode::json_type;
use crate::store::{GroupUpdate, ProfileOperation};

/// The operations Mixpanel's `/groups` endpoint accepts. `$add` and `$append` are people-only.
const OPERATIONS: &[&str] = &[
    "$set",
    "$set_once",
    "$unset",
    "$remove",
    "$union",
    "$delete",
];

/// Reads `$group_key` or `$group_id`: a non-empty string, or a whole number as its decimal string.
fn read_group_field(object: &Map<String, Value>, field: &str) -> Result<String, FieldError> {
    let text = match object.get(field) {
        None | Some(Value::Null) => {
            return Err(FieldError::new(field, format!("{field} is missing")))
        }
        Some(Value::String(text)) => text.clone(),
        Some(Value::Number(n)) => crate::identity::number_id(n, field)?,
        Some(other) => {
            return Err(FieldError::new(
                field,
                format!(
                    "{field} must be a string or a whole number, found {}",
                    json_type(other)
                ),
            ))
        }
    };
    if text.is_empty() {
        return Err(FieldError::new(field, format!("{field} is empty")));
    }
    crate::identity::reject_nul(&text, field)?;
    Ok(text)
}

/// Validates one `/groups` update record.
pub fn parse_update(record: &Value) -> Result<GroupUpdate, FieldError> {
    let object = record
        .as_object()
        .ok_or_else(|| FieldError::new("", "update must be a JSON object"))?;
    let group_key = read_group_field(object, "$group_key")?;
    let group_id = read_group_field(object, "$group_id")?;

    for people_only in ["$add", "$append"] {
        if object.contains_key(people_only) {
            return Err(FieldError::new(
                people_only,
                format!(
                    "{people_only} is not a group operation; expected one of {}",
                    OPERATIONS.join(", ")
                ),
            ));
        }
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
                "",
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
        "$remove" => ProfileOperation::Remove(object_arg(op, value)?),
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
        "$unset" => {
            let names = value
                .as_array()
                .and_then(|items| {
                    items
                        .iter()
                        .map(|n| n.as_str().map(str::to_owned))
                        .collect::<Option<Vec<_>>>()
                })
                .ok_or_else(|| {
                    FieldError::new(
                        "$unset",
                        format!(
                            "$unset must be a list of property names, found {}",
                            json_type(value)
                        ),
                    )
                })?;
            ProfileOperation::Unset(names)
        }
        _ => ProfileOperation::Delete,
    };
    Ok(GroupUpdate {
        group_key,
        group_id,
        operation,
    })
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn fractional_group_id_names_its_value() {
        let record = json!({"$token": "t", "$group_key": "company", "$group_id": 1.5,
            "$set": {"a": 1}});
        let error = parse_update(&record).unwrap_err();
        assert_eq!(error.field, "$group_id");
        assert!(
            error.message.contains("1.5 is a fraction"),
            "{}",
            error.message
        );
        let whole = json!({"$token": "t", "$group_key": "company", "$group_id": 1e3,
            "$set": {"a": 1}});
        assert_eq!(parse_update(&whole).unwrap().group_id, "1000");
    }

    #[test]
    fn update_without_operation_lists_its_keys() {
        let record = json!({"$token": "t", "$group_key": "company", "$group_id": "c"});
        let error = parse_update(&record).unwrap_err();
        assert_eq!(error.field, "operation");
        assert!(error.message.contains("$group_key"), "{}", error.message);
    }

    #[test]
    fn set_update_parses() {
        let update = parse_update(&json!({"$group_key": "company", "$group_id": 42,
            "$set": {"plan": "pro"}}))
        .unwrap();
        assert_eq!(update.group_key, "company");
        assert_eq!(update.group_id, "42");
        assert_eq!(
            update.operation,
            ProfileOperation::Set(json!({"plan": "pro"}).as_object().unwrap().clone())
        );
    }

    #[test]
    fn invalid_updates_name_the_field() {
        let cases = [
            (json!({"$group_id": "g", "$set": {}}), "$group_key"),
            (json!({"$group_key": "company", "$set": {}}), "$group_id"),
            (
                json!({"$group_key": "", "$group_id": "g", "$set": {}}),
                "$group_key",
            ),
            (
                json!({"$group_key": "c", "$group_id": ["g"], "$set": {}}),
                "$group_id",
            ),
            (
                json!({"$group_key": "c", "$group_id": "g", "$add": {"n": 1}}),
                "$add",
            ),
            (
                json!({"$group_key": "c", "$group_id": "g", "$append": {"n": 1}}),
                "$append",
            ),
            (
                json!({"$group_key": "c", "$group_id": "g", "$union": {"n": 1}}),
                "$union.n",
            ),
            (
                json!({"$group_key": "c", "$group_id": "g", "$unset": "x"}),
                "$unset",
            ),
            (json!({"$group_key": "c", "$group_id": "g"}), "operation"),
        ];
        for (record, field) in cases {
            let err = parse_update(&record).unwrap_err();
            assert_eq!(err.field, field, "{record}: {}", err.message);
        }
    }
}
