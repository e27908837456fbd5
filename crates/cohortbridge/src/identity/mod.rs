//! Identity under Simplified ID Merge: which distinct id an event belongs to, which `$device:`
//! ids merge into which `$user_id`, and how a stored distinct id resolves to its user.
//!
//! An event with both `$user_id` and `$device_id` links `$device:<device_id>` to the user. The
//! first link of a device wins, so two `$user_id`s are never merged: a later login of another
//! user on the same device keeps its events on that user and changes no link.

pub mod original;

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::store::IdentityLink;

/// Prefix Mixpanel's SDKs put before a device id to form an anonymous distinct id.
pub const DEVICE_PREFIX: &str = "$device:";

/// Values that Mixpanel treats as a missing id, compared without regard to ASCII case.
const PLACEHOLDER_IDS: &[&str] = &[
    "anon",
    "anonymous",
    "nil",
    "none",
    "null",
    "n/a",
    "na",
    "undefined",
    "unknown",
    "<nil>",
    "0",
    "-1",
    "true",
    "false",
    "[]",
    "{}",
    "00000000-0000-0000-0000-000000000000",
];

/// A problem with one field of a record, named as the record's JSON path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

pub fn is_placeholder(id: &str) -> bool {
    PLACEHOLDER_IDS.iter().any(|p| p.eq_ignore_ascii_case(id))
}

/// Rejects an id or name that contains U+0000. PostgreSQL cannot store that character in a text
/// column, so both stores refuse it up front, record by record, instead of failing a whole batch.
pub fn reject_nul(text: &str, field: &str) -> Result<(), FieldError> {
    if text.contains('\0') {
        return Err(FieldError::new(
            field,
            format!("{field} {text:?} contains the NUL character U+0000, which cannot be stored"),
        ));
    }
    Ok(())
}

/// Turns a JSON number sent as an id into its decimal string. Whole numbers are accepted in any
/// notation (`1000`, `1e3`, `1000.0`). A fraction, or a whole number too large for a double to
/// hold exactly, is rejected with a message that names what to send instead.
pub fn number_id(n: &serde_json::Number, field: &str) -> Result<String, FieldError> {
    if let Some(i) = n.as_i64() {
        return Ok(i.to_string());
    }
    if let Some(u) = n.as_u64() {
        return Ok(u.to_string());
    }
    match n.as_f64() {
        Some(f) if f.fract() != 0.0 => Err(FieldError::new(
            field,
            format!("{field} {n} is a fraction; an id must be a string or a whole number"),
        )),
        Some(f) if f.abs() < 9.0e15 => Ok(format!("{}", f as i64)),
        _ => Err(FieldError::new(
            field,
            format!(
                "{field} {n} is too large to be kept exactly as a number; send the id as a string"
            ),
        )),
    }
}

/// Reads an id field. Strings are kept byte-exact (no trimming, no case folding); whole numbers
/// become their decimal string; `null` counts as absent (`Ok(None)`). Placeholders, fractions,
/// objects, arrays and booleans are errors.
pub fn read_id(value: Option<&Value>, field: &str) -> Result<Option<String>, FieldError> {
    let id = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => number_id(n, field)?,
        Some(other) => {
            return Err(FieldError::new(
                field,
                format!(
                    "{field} must be a string or a whole number, found {}",
                    crate::ingest::decode::json_type(other)
                ),
            ))
        }
    };
    if is_placeholder(&id) {
        return Err(FieldError::new(
            field,
            format!("{field} {id:?} is a placeholder value that Mixpanel rejects as an id"),
        ));
    }
    reject_nul(&id, field)?;
    Ok(Some(id))
}

/// The identity of one event: its distinct id and the merge link it creates, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventIdentity {
    /// The empty string when the event belongs to no user.
    pub distinct_id: String,
    pub link: Option<IdentityLink>,
}

/// Works out an event's identity from its properties. Without `distinct_id`, the id is
/// `$user_id`, else `$device:<$device_id>`. When none is present, the event belongs to no user
/// if `require_distinct_id` is false, and is rejected otherwise.
pub fn event_identity(
    properties: &Map<String, Value>,
    require_distinct_id: bool,
) -> Result<EventIdentity, FieldError> {
    // An empty `$user_id` or `$device_id` names no user, so it counts as absent.
    let user_id =
        read_id(properties.get("$user_id"), "properties.$user_id")?.filter(|id| !id.is_empty());
    let device_id =
        read_id(properties.get("$device_id"), "properties.$device_id")?.filter(|id| !id.is_empty());
    let explicit = read_id(properties.get("distinct_id"), "properties.distinct_id")?;

    let distinct_id =
        match (explicit, &user_id, &device_id) {
            (Some(id), _, _) => id,
            (None, Some(user), _) => user.clone(),
            (None, None, Some(device)) => format!("{DEVICE_PREFIX}{device}"),
            (None, None, None) if require_distinct_id => return Err(FieldError::new(
                "properties.distinct_id",
                "properties.distinct_id is missing; send \"\" for an event that belongs to no user",
            )),
            (None, None, None) => String::new(),
        };

    let link = match (user_id, device_id) {
        (Some(user), Some(device)) if !user.is_empty() && !device.is_empty() => {
            Some(IdentityLink {
                distinct_id: format!("{DEVICE_PREFIX}{device}"),
                canonical_id: user,
            })
        }
        _ => None,
    };
    Ok(EventIdentity { distinct_id, link })
}

/// Resolves a stored distinct id to the user it belongs to.
pub fn canonical<'a>(links: &'a HashMap<String, String>, distinct_id: &'a str) -> &'a str {
    links
        .get(distinct_id)
        .map(String::as_str)
        .unwrap_or(distinct_id)
}

/// Checks whether a canonical id is an anonymous device that no user has claimed.
pub fn is_anonymous_device(canonical_id: &str) -> bool {
    canonical_id.starts_with(DEVICE_PREFIX)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn number_ids_name_what_is_wrong() {
        let id = |text: &str| number_id(&serde_json::from_str(text).unwrap(), "distinct_id");
        assert_eq!(id("1000").unwrap(), "1000");
        assert_eq!(id("1e3").unwrap(), "1000");
        assert_eq!(id("1000.0").unwrap(), "1000");
        assert_eq!(id("18446744073709551615").unwrap(), "18446744073709551615");
        let fraction = id("1.5").unwrap_err();
        assert_eq!(fraction.field, "distinct_id");
        assert!(
            fraction.message.contains("1.5 is a fraction"),
            "{}",
            fraction.message
        );
        let large = id("1e20").unwrap_err();
        assert!(large.message.contains("too large"), "{}", large.message);
        assert!(large.message.contains("as a string"), "{}", large.message);
    }

    fn props(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn placeholders_are_rejected_in_any_case() {
        for id in [
            "null",
            "NULL",
            "None",
            "undefined",
            "0",
            "-1",
            "[]",
            "<nil>",
        ] {
            let err = read_id(Some(&json!(id)), "properties.distinct_id").unwrap_err();
            assert_eq!(err.field, "properties.distinct_id");
            assert!(err.message.contains(id), "{}", err.message);
        }
    }

    #[test]
    fn ids_are_kept_byte_exact() {
        assert_eq!(
            read_id(Some(&json!("  u-pad  ")), "f").unwrap().unwrap(),
            "  u-pad  "
        );
        assert_eq!(
            read_id(Some(&json!("U-CASE")), "f").unwrap().unwrap(),
            "U-CASE"
        );
        assert_eq!(read_id(Some(&json!("NaN")), "f").unwrap().unwrap(), "NaN");
    }

    #[test]
    fn whole_numbers_become_strings() {
        assert_eq!(read_id(Some(&json!(12345)), "f").unwrap().unwrap(), "12345");
        assert_eq!(
            read_id(Some(&json!(12345.0)), "f").unwrap().unwrap(),
            "12345"
        );
        assert!(read_id(Some(&json!(1.5)), "f").is_err());
    }

    #[test]
    fn objects_and_arrays_are_rejected() {
        assert!(read_id(Some(&json!({"id": 7})), "f")
            .unwrap_err()
            .message
            .contains("an object"));
        assert!(read_id(Some(&json!(["x"])), "f")
            .unwrap_err()
            .message
            .contains("an array"));
    }

    #[test]
    fn null_is_absent() {
        assert_eq!(read_id(Some(&Value::Null), "f").unwrap(), None);
    }

    #[test]
    fn user_and_device_create_link() {
        let identity = event_identity(
            &props(json!({"$user_id": "u-alice", "$device_id": "D1"})),
            true,
        )
        .unwrap();
        assert_eq!(identity.distinct_id, "u-alice");
        assert_eq!(
            identity.link,
            Some(IdentityLink {
                distinct_id: "$device:D1".into(),
                canonical_id: "u-alice".into()
            })
        );
    }

    #[test]
    fn empty_device_id_is_absent() {
        let identity = event_identity(&props(json!({"$device_id": ""})), false).unwrap();
        assert_eq!(identity.distinct_id, "");
        let err = event_identity(&props(json!({"$device_id": ""})), true).unwrap_err();
        assert_eq!(err.field, "properties.distinct_id");
    }

    #[test]
    fn device_alone_is_anonymous() {
        let identity = event_identity(&props(json!({"$device_id": "D1"})), true).unwrap();
        assert_eq!(identity.distinct_id, "$device:D1");
        assert_eq!(identity.link, None);
    }

    #[test]
    fn missing_id_depends_on_endpoint() {
        assert_eq!(
            event_identity(&props(json!({})), false)
                .unwrap()
                .distinct_id,
            ""
        );
        let err = event_identity(&props(json!({"distinct_id": null})), true).unwrap_err();
        assert_eq!(err.field, "properties.distinct_id");
    }

    #[test]
    fn placeholder_user_id_never_links() {
        let err = event_identity(
            &props(json!({"$user_id": "null", "$device_id": "D1"})),
            true,
        )
        .unwrap_err();
        assert_eq!(err.field, "properties.$user_id");
    }
}
