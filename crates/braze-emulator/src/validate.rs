//! Validation of partner request bodies against Braze's partner cohort import
//! documentation.
//!
//! Each function checks one field and returns the [`ApiError`] Braze documents for
//! it, so handlers decide only the order of the checks.

use chrono::{DateTime, NaiveDate, NaiveDateTime};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::ApiError;

/// Maximum number of ids (`user_ids`, `device_ids` and `aliases` together) in one
/// user cohort request, as Braze documents it.
pub const MAX_IDS_PER_REQUEST: usize = 1000;

/// A parsed JSON request body.
pub type JsonObject = Map<String, Value>;

/// A Braze user alias: a name unique within its label.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct UserAlias {
    pub alias_name: String,
    pub alias_label: String,
}

/// One element of `cohort_changes`: ids to add, or to remove when `should_remove`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CohortChange {
    /// External ids.
    pub user_ids: Vec<String>,
    pub device_ids: Vec<String>,
    pub aliases: Vec<UserAlias>,
    pub should_remove: bool,
}

impl CohortChange {
    /// Returns the number of ids of all kinds in this change.
    pub fn id_count(&self) -> usize {
        self.user_ids.len() + self.device_ids.len() + self.aliases.len()
    }
}

const CHANGE_KEYS: [&str; 4] = ["user_ids", "device_ids", "aliases", "should_remove"];

/// Parses a request body that must be a JSON object.
pub fn parse_body(bytes: &[u8]) -> Result<JsonObject, ApiError> {
    // NOTE: the Content-Type header is not checked, because Braze's docs do not
    // state whether a JSON body sent with another content type is accepted.
    let value: Value =
        serde_json::from_slice(bytes).map_err(|err| ApiError::InvalidJson(err.to_string()))?;
    match value {
        Value::Object(object) => Ok(object),
        _ => Err(ApiError::BodyNotObject),
    }
}

/// Returns the field as a string slice, or `None` when it is missing or not a string.
pub fn string_field<'a>(body: &'a JsonObject, key: &str) -> Option<&'a str> {
    body.get(key).and_then(Value::as_str)
}

/// Validates `cohort_id`: a present, non-empty string.
pub fn cohort_id(body: &JsonObject) -> Result<String, ApiError> {
    match string_field(body, "cohort_id") {
        Some(id) if !id.is_empty() => Ok(id.to_owned()),
        _ => Err(ApiError::InvalidCohortId),
    }
}

/// Validates `name`: a present string with at least one non-whitespace character.
pub fn cohort_name(body: &JsonObject) -> Result<String, ApiError> {
    // NOTE: Braze only requires "non-empty". A whitespace-only name is rejected too
    // because it would show as a blank entry in the dashboard's cohort filter.
    match string_field(body, "name") {
        Some(name) if !name.trim().is_empty() => Ok(name.to_owned()),
        _ => Err(ApiError::InvalidName),
    }
}

/// Validates `created_at` as an ISO-8601 string and returns it unchanged.
pub fn created_at(body: &JsonObject) -> Result<String, ApiError> {
    let text = match body.get("created_at") {
        None | Some(Value::Null) => {
            return Err(ApiError::InvalidCreatedAt {
                detail: "created_at is missing".to_owned(),
            })
        }
        Some(Value::String(text)) => text,
        Some(other) => {
            return Err(ApiError::InvalidCreatedAt {
                detail: format!("created_at is {}, expected a string", json_type(other)),
            })
        }
    };
    if is_iso8601(text) {
        Ok(text.clone())
    } else {
        Err(ApiError::InvalidCreatedAt {
            detail: format!(
                "created_at {text:?} is not an ISO-8601 date-time; send e.g. 2021-01-21T19:20:30+05:00"
            ),
        })
    }
}

/// Returns whether `text` is an ISO-8601 date-time (with or without offset) or
/// calendar date in extended format.
// NOTE: Braze does not list which ISO-8601 forms it accepts. The emulator takes
// the extended forms and rejects basic ones such as 20210121T192030Z.
fn is_iso8601(text: &str) -> bool {
    const NAIVE_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.f";
    DateTime::parse_from_rfc3339(text).is_ok()
        || DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f%z").is_ok()
        || NaiveDateTime::parse_from_str(text, NAIVE_FORMAT).is_ok()
        || NaiveDate::parse_from_str(text, "%Y-%m-%d").is_ok()
}

/// Parses `cohort_changes` into changes, checking the documented shape but not
/// the id limit (see [`check_id_count`]).
///
/// Accepted shape: an array of objects, each with at least one of `user_ids` and
/// `device_ids` (arrays of strings) and `aliases` (an array of
/// `{"alias_name": string, "alias_label": string}`), plus an optional boolean
/// `should_remove`. Any other key is rejected.
pub fn cohort_changes(body: &JsonObject) -> Result<Vec<CohortChange>, ApiError> {
    let invalid = |detail: String| ApiError::InvalidCohortChanges { detail };
    let items = match body.get("cohort_changes") {
        None => return Err(invalid("cohort_changes is missing".to_owned())),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(invalid(format!(
                "cohort_changes is {}, expected an array of objects",
                json_type(other)
            )))
        }
    };
    items
        .iter()
        .enumerate()
        .map(|(index, item)| parse_change(&format!("cohort_changes[{index}]"), item))
        .collect::<Result<Vec<_>, String>>()
        .map_err(invalid)
}

/// Rejects changes that together hold more than [`MAX_IDS_PER_REQUEST`] ids.
pub fn check_id_count(changes: &[CohortChange]) -> Result<(), ApiError> {
    let count: usize = changes.iter().map(CohortChange::id_count).sum();
    if count > MAX_IDS_PER_REQUEST {
        Err(ApiError::TooManyIds { count })
    } else {
        Ok(())
    }
}

fn parse_change(path: &str, item: &Value) -> Result<CohortChange, String> {
    let Value::Object(object) = item else {
        return Err(format!("{path} is {}, expected an object", json_type(item)));
    };
    if let Some(key) = object
        .keys()
        .find(|key| !CHANGE_KEYS.contains(&key.as_str()))
    {
        return Err(format!(
            "{path} has unknown key {key:?}; allowed keys are user_ids, device_ids, aliases and should_remove"
        ));
    }
    if !["user_ids", "device_ids", "aliases"]
        .iter()
        .any(|key| object.contains_key(*key))
    {
        return Err(format!(
            "{path} has none of the keys user_ids, device_ids and aliases"
        ));
    }

    let should_remove = match object.get("should_remove") {
        None => false,
        Some(Value::Bool(flag)) => *flag,
        // NOTE: null is rejected like any other non-boolean, although Braze's
        // docs only say the field is an optional boolean.
        Some(other) => {
            return Err(format!(
                "{path}.should_remove is {}, expected a boolean",
                json_type(other)
            ))
        }
    };

    Ok(CohortChange {
        user_ids: string_array(&format!("{path}.user_ids"), object.get("user_ids"))?,
        device_ids: string_array(&format!("{path}.device_ids"), object.get("device_ids"))?,
        aliases: alias_array(&format!("{path}.aliases"), object.get("aliases"))?,
        should_remove,
    })
}

/// Parses an optional array of strings. A missing key is an empty array.
// NOTE: empty strings are accepted, because Braze ignores ids that match no user
// rather than rejecting the request.
fn string_array(path: &str, value: Option<&Value>) -> Result<Vec<String>, String> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    let Value::Array(items) = value else {
        return Err(format!(
            "{path} is {}, expected an array of strings",
            json_type(value)
        ));
    };
    items
        .iter()
        .enumerate()
        .map(|(index, item)| match item {
            Value::String(text) => Ok(text.clone()),
            other => Err(format!(
                "{path}[{index}] is {}, expected a string",
                json_type(other)
            )),
        })
        .collect()
}

/// Parses an optional array of user alias objects. A missing key is an empty array.
fn alias_array(path: &str, value: Option<&Value>) -> Result<Vec<UserAlias>, String> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    let Value::Array(items) = value else {
        return Err(format!(
            "{path} is {}, expected an array of alias objects",
            json_type(value)
        ));
    };
    items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            parse_alias(item).ok_or_else(|| {
                format!(
                    "{path}[{index}] must be an object with exactly the string keys alias_name and alias_label"
                )
            })
        })
        .collect()
}

fn parse_alias(item: &Value) -> Option<UserAlias> {
    let object = item.as_object()?;
    if object.len() != 2 {
        return None;
    }
    Some(UserAlias {
        alias_name: object.get("alias_name")?.as_str()?.to_owned(),
        alias_label: object.get("alias_label")?.as_str()?.to_owned(),
    })
}

/// Returns the JSON type of `value` with its article, for error details.
fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: Value) -> JsonObject {
        match value {
            Value::Object(object) => object,
            other => panic!("test body must be an object, got {other}"),
        }
    }

    fn changes_error(changes: Value) -> String {
        match cohort_changes(&object(json!({ "cohort_changes": changes }))) {
            Err(ApiError::InvalidCohortChanges { detail }) => detail,
            other => panic!("expected InvalidCohortChanges, got {other:?}"),
        }
    }

    #[test]
    fn parse_body_rejects_non_json() {
        assert!(matches!(
            parse_body(b"not json"),
            Err(ApiError::InvalidJson(_))
        ));
    }

    #[test]
    fn parse_body_rejects_json_array() {
        assert_eq!(parse_body(b"[1, 2]"), Err(ApiError::BodyNotObject));
    }

    #[test]
    fn cohort_id_rejects_missing() {
        assert_eq!(
            cohort_id(&object(json!({}))),
            Err(ApiError::InvalidCohortId)
        );
    }

    #[test]
    fn cohort_id_rejects_number() {
        let body = object(json!({ "cohort_id": 7 }));
        assert_eq!(cohort_id(&body), Err(ApiError::InvalidCohortId));
    }

    #[test]
    fn cohort_id_rejects_empty_string() {
        let body = object(json!({ "cohort_id": "" }));
        assert_eq!(cohort_id(&body), Err(ApiError::InvalidCohortId));
    }

    #[test]
    fn cohort_id_accepts_string() {
        let body = object(json!({ "cohort_id": "c-1" }));
        assert_eq!(cohort_id(&body), Ok("c-1".to_owned()));
    }

    #[test]
    fn cohort_name_rejects_missing_empty_and_blank() {
        for body in [json!({}), json!({ "name": "" }), json!({ "name": "  " })] {
            assert_eq!(
                cohort_name(&object(body.clone())),
                Err(ApiError::InvalidName),
                "{body}"
            );
        }
    }

    #[test]
    fn cohort_name_rejects_non_string() {
        let body = object(json!({ "name": ["a"] }));
        assert_eq!(cohort_name(&body), Err(ApiError::InvalidName));
    }

    #[test]
    fn created_at_accepts_iso8601_forms() {
        for text in [
            "2021-01-21T19:20:30+05:00",
            "2021-01-21T19:20:30Z",
            "2021-01-21T19:20:30.123Z",
            "2021-01-21T19:20:30+0500",
            "2021-01-21T19:20:30",
            "2021-01-21",
        ] {
            let body = object(json!({ "created_at": text }));
            assert_eq!(created_at(&body), Ok(text.to_owned()), "{text}");
        }
    }

    #[test]
    fn created_at_rejects_non_iso8601() {
        for text in ["yesterday", "21/01/2021", "2021-13-01T00:00:00Z", ""] {
            let body = object(json!({ "created_at": text }));
            assert!(
                matches!(created_at(&body), Err(ApiError::InvalidCreatedAt { .. })),
                "{text}"
            );
        }
    }

    #[test]
    fn created_at_rejects_missing() {
        let detail = match created_at(&object(json!({}))) {
            Err(ApiError::InvalidCreatedAt { detail }) => detail,
            other => panic!("expected InvalidCreatedAt, got {other:?}"),
        };
        assert_eq!(detail, "created_at is missing");
    }

    #[test]
    fn created_at_rejects_number() {
        let body = object(json!({ "created_at": 1_700_000_000 }));
        assert!(matches!(
            created_at(&body),
            Err(ApiError::InvalidCreatedAt { .. })
        ));
    }

    #[test]
    fn cohort_changes_parses_all_kinds() {
        let body = object(json!({ "cohort_changes": [
            { "user_ids": ["u1", "u2"] },
            { "device_ids": ["d1"], "should_remove": true },
            { "aliases": [{ "alias_name": "a@x", "alias_label": "email" }], "should_remove": false },
        ]}));
        let changes = cohort_changes(&body).expect("valid changes");
        assert_eq!(changes.len(), 3);
        assert_eq!(changes[0].user_ids, ["u1", "u2"]);
        assert!(!changes[0].should_remove);
        assert_eq!(changes[1].device_ids, ["d1"]);
        assert!(changes[1].should_remove);
        assert_eq!(
            changes[2].aliases,
            [UserAlias {
                alias_name: "a@x".into(),
                alias_label: "email".into()
            }]
        );
        assert!(!changes[2].should_remove);
    }

    #[test]
    fn cohort_changes_accepts_empty_array() {
        let body = object(json!({ "cohort_changes": [] }));
        assert_eq!(cohort_changes(&body), Ok(Vec::new()));
    }

    #[test]
    fn cohort_changes_rejects_missing() {
        assert!(matches!(
            cohort_changes(&object(json!({}))),
            Err(ApiError::InvalidCohortChanges { .. })
        ));
    }

    #[test]
    fn cohort_changes_rejects_string() {
        let detail = changes_error(json!("[{\"user_ids\": [\"u1\"]}]"));
        assert_eq!(
            detail,
            "cohort_changes is a string, expected an array of objects"
        );
    }

    #[test]
    fn cohort_changes_rejects_non_object_element() {
        assert_eq!(
            changes_error(json!(["u1"])),
            "cohort_changes[0] is a string, expected an object"
        );
    }

    #[test]
    fn cohort_changes_rejects_unknown_key() {
        let detail = changes_error(json!([{ "user_ids": [], "users": ["u1"] }]));
        assert!(
            detail.starts_with("cohort_changes[0] has unknown key \"users\""),
            "{detail}"
        );
    }

    #[test]
    fn cohort_changes_rejects_object_without_ids() {
        assert_eq!(
            changes_error(json!([{ "should_remove": true }])),
            "cohort_changes[0] has none of the keys user_ids, device_ids and aliases"
        );
    }

    #[test]
    fn cohort_changes_rejects_ids_not_array() {
        assert_eq!(
            changes_error(json!([{ "user_ids": "u1" }])),
            "cohort_changes[0].user_ids is a string, expected an array of strings"
        );
    }

    #[test]
    fn cohort_changes_rejects_non_string_id() {
        assert_eq!(
            changes_error(json!([{ "user_ids": ["u1"] }, { "device_ids": ["d1", 2] }])),
            "cohort_changes[1].device_ids[1] is a number, expected a string"
        );
    }

    #[test]
    fn cohort_changes_rejects_null_ids() {
        assert_eq!(
            changes_error(json!([{ "user_ids": null }])),
            "cohort_changes[0].user_ids is null, expected an array of strings"
        );
    }

    #[test]
    fn cohort_changes_rejects_aliases_object() {
        let detail =
            changes_error(json!([{ "aliases": { "alias_name": "a", "alias_label": "b" } }]));
        assert_eq!(
            detail,
            "cohort_changes[0].aliases is an object, expected an array of alias objects"
        );
    }

    #[test]
    fn cohort_changes_rejects_incomplete_alias() {
        let detail = changes_error(json!([{ "aliases": [{ "alias_name": "a" }] }]));
        assert!(
            detail.starts_with("cohort_changes[0].aliases[0] must be"),
            "{detail}"
        );
    }

    #[test]
    fn cohort_changes_rejects_alias_extra_key() {
        let alias = json!({ "alias_name": "a", "alias_label": "b", "x": 1 });
        let detail = changes_error(json!([{ "aliases": [alias] }]));
        assert!(
            detail.starts_with("cohort_changes[0].aliases[0] must be"),
            "{detail}"
        );
    }

    #[test]
    fn cohort_changes_rejects_string_should_remove() {
        assert_eq!(
            changes_error(json!([{ "user_ids": ["u1"], "should_remove": "true" }])),
            "cohort_changes[0].should_remove is a string, expected a boolean"
        );
    }

    #[test]
    fn cohort_changes_rejects_null_should_remove() {
        assert_eq!(
            changes_error(json!([{ "user_ids": ["u1"], "should_remove": null }])),
            "cohort_changes[0].should_remove is null, expected a boolean"
        );
    }

    fn change_with(user_ids: usize, device_ids: usize, aliases: usize) -> CohortChange {
        CohortChange {
            user_ids: (0..user_ids).map(|i| format!("u{i}")).collect(),
            device_ids: (0..device_ids).map(|i| format!("d{i}")).collect(),
            aliases: (0..aliases)
                .map(|i| UserAlias {
                    alias_name: format!("a{i}"),
                    alias_label: "label".into(),
                })
                .collect(),
            should_remove: false,
        }
    }

    #[test]
    fn id_count_allows_exactly_1000() {
        let changes = [change_with(500, 0, 0), change_with(200, 200, 100)];
        assert_eq!(check_id_count(&changes), Ok(()));
    }

    #[test]
    fn id_count_rejects_1001_across_kinds() {
        let changes = [change_with(500, 0, 0), change_with(200, 200, 101)];
        assert_eq!(
            check_id_count(&changes),
            Err(ApiError::TooManyIds { count: 1001 })
        );
    }
}
