//! Validation of one event record against Mixpanel's rules, producing the event to store.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::identity::{self, FieldError};
use crate::store::{IdentityLink, NewEvent};

/// 1971-01-01T00:00:00Z: Mixpanel rejects events before it.
pub const MIN_EVENT_TIME_MS: i64 = 31_536_000_000;
/// How far ahead of the server's clock an event may be.
pub const MAX_FUTURE_MS: i64 = 60 * 60 * 1000;
/// Maximum age of an event sent to `/track`. Older events belong on `/import`.
pub const TRACK_MAX_AGE_MS: i64 = 5 * 24 * 60 * 60 * 1000;
/// A numeric `time` at or above this is read as milliseconds, below it as seconds. As seconds it
/// would be past the year 5000; as milliseconds it is 1973-03-03.
const MILLISECONDS_THRESHOLD: f64 = 100_000_000_000.0;
const MAX_INSERT_ID_LEN: usize = 36;
pub const MAX_EVENT_NAME_LEN: usize = 255;
/// Mixpanel's limit on the length of a string property value, in characters. Longer strings,
/// at any depth inside lists and objects, are cut to this length.
pub const MAX_STRING_CHARS: usize = 255;
/// The maximum nesting of lists and objects in one property value. serde_json reads at most 128
/// levels, and a stored event adds its own, so a deeper value could be stored but not read
/// back. Mixpanel documents no such limit; its reports read nested objects a few levels deep.
pub const MAX_PROPERTY_DEPTH: usize = 100;
/// Mixpanel's limit on the number of properties of one event. A record with more is rejected,
/// counted after the column properties (`time`, `distinct_id`, `$insert_id`, `token`) leave.
pub const MAX_PROPERTIES: usize = 255;

/// Properties that become columns of the stored event and leave the property map.
const COLUMN_PROPERTIES: &[&str] = &["time", "distinct_id", "$insert_id", "token"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// Recent events from client SDKs: `time` may be omitted and is then the server's clock.
    Track,
    /// Historical events: `time` and `distinct_id` are required.
    Import,
}

/// An event that passed validation, with the identity link it creates.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidEvent {
    pub event: NewEvent,
    pub link: Option<IdentityLink>,
}

/// Validates a record `{"event": ..., "properties": {...}}` received at `now_ms`.
pub fn validate(record: &Value, endpoint: Endpoint, now_ms: i64) -> Result<ValidEvent, FieldError> {
    validate_inner(record, None, endpoint, now_ms)
}

/// Validates a record like [`validate`], taking ownership so that its properties are moved into
/// the event instead of copied.
pub fn validate_owned(
    mut record: Value,
    endpoint: Endpoint,
    now_ms: i64,
) -> Result<ValidEvent, FieldError> {
    let taken = match record.get_mut("properties") {
        Some(Value::Object(map)) => Some(std::mem::take(map)),
        _ => None,
    };
    validate_inner(&record, taken, endpoint, now_ms)
}

/// Validates `record`, using `taken` as its properties when the caller already moved them out.
fn validate_inner(
    record: &Value,
    taken: Option<Map<String, Value>>,
    endpoint: Endpoint,
    now_ms: i64,
) -> Result<ValidEvent, FieldError> {
    let object = record
        .as_object()
        .ok_or_else(|| FieldError::new("", "record must be a JSON object"))?;
    let name = match object.get("event") {
        Some(Value::String(name)) if !name.is_empty() => name.clone(),
        Some(Value::String(_)) => return Err(FieldError::new("event", "event name is empty")),
        None | Some(Value::Null) => return Err(FieldError::new("event", "event name is missing")),
        Some(other) => {
            return Err(FieldError::new(
                "event",
                format!("event name must be a string, found {other}"),
            ))
        }
    };
    if name.chars().count() > MAX_EVENT_NAME_LEN {
        return Err(FieldError::new(
            "event",
            format!("event name is longer than {MAX_EVENT_NAME_LEN} characters"),
        ));
    }
    identity::reject_nul(&name, "event")?;
    let mut properties: Map<String, Value> = match (taken, object.get("properties")) {
        (Some(map), _) => map,
        (None, Some(Value::Object(map))) => map.clone(),
        (None, None | Some(Value::Null)) => Map::new(),
        (None, Some(other)) => {
            return Err(FieldError::new(
                "properties",
                format!("properties must be an object, found {other}"),
            ))
        }
    };

    // A `$merge` event names its ids in `$distinct_ids` and often carries no `distinct_id`; it
    // is stored under the first of them, the id whose cluster remains.
    if name == "$merge" && !properties.contains_key("distinct_id") {
        let first = properties
            .get("$distinct_ids")
            .and_then(|ids| ids.get(0))
            .filter(|id| id.is_string())
            .cloned();
        if let Some(first) = first {
            properties.insert("distinct_id".into(), first);
        }
    }
    // Mixpanel's SDKs send `$merge` without `time` (mixpanel-python 4.10 does), so a missing
    // time on a `$merge` is the arrival time, on `/import` too.
    let time_ms = match properties.get("time") {
        None | Some(Value::Null) if name == "$merge" => now_ms,
        time => event_time_ms(time, endpoint, now_ms)?,
    };
    let identity = identity::event_identity(&properties, endpoint == Endpoint::Import)?;
    let insert_id = match properties.get("$insert_id") {
        None | Some(Value::Null) => None,
        Some(value) => Some(validate_insert_id(value)?),
    };
    // `shift_remove` keeps the other properties in the order they were sent.
    for key in COLUMN_PROPERTIES {
        properties.shift_remove(*key);
    }
    if properties.len() > MAX_PROPERTIES {
        return Err(FieldError::new(
            "properties",
            format!(
                "event has {} properties; at most {MAX_PROPERTIES} are accepted",
                properties.len()
            ),
        ));
    }
    for (key, value) in properties.iter_mut() {
        check_depth(key, value)?;
        truncate_strings(value);
    }
    let insert_id = insert_id
        .unwrap_or_else(|| derived_insert_id(&name, &identity.distinct_id, time_ms, &properties));

    Ok(ValidEvent {
        event: NewEvent {
            event: name,
            distinct_id: identity.distinct_id,
            time_ms,
            insert_id,
            properties,
        },
        link: identity.link,
    })
}

/// Rejects a property value with lists and objects nested more than [`MAX_PROPERTY_DEPTH`]
/// levels deep.
pub fn check_depth(key: &str, value: &Value) -> Result<(), FieldError> {
    let depth = nesting_depth(value);
    if depth > MAX_PROPERTY_DEPTH {
        return Err(FieldError::new(
            format!("properties.{key}"),
            format!(
                "properties.{key} nests lists and objects {depth} levels deep; at most {MAX_PROPERTY_DEPTH} are accepted"
            ),
        ));
    }
    Ok(())
}

/// Counts the levels of lists and objects in `value`: 0 for a scalar, 1 for `[1]`.
fn nesting_depth(value: &Value) -> usize {
    let deepest = |values: &mut dyn Iterator<Item = &Value>| values.map(nesting_depth).max();
    match value {
        Value::Array(items) => 1 + deepest(&mut items.iter()).unwrap_or(0),
        Value::Object(map) => 1 + deepest(&mut map.values()).unwrap_or(0),
        _ => 0,
    }
}

/// Cuts every string inside `value` to [`MAX_STRING_CHARS`] characters.
pub fn truncate_strings(value: &mut Value) {
    match value {
        // A string of at most MAX_STRING_CHARS bytes has at most that many characters.
        Value::String(text) if text.len() > MAX_STRING_CHARS => {
            if let Some((cut, _)) = text.char_indices().nth(MAX_STRING_CHARS) {
                text.truncate(cut);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(truncate_strings),
        Value::Object(map) => map.values_mut().for_each(truncate_strings),
        _ => {}
    }
}

/// Facts about the request that carried an event, recorded when it arrived.
#[derive(Debug, Clone)]
pub struct Receipt {
    /// The `Host` header of the request, reported as `$mp_api_endpoint`.
    pub endpoint_host: Option<String>,
    /// When the request arrived, in milliseconds since the epoch.
    pub received_ms: i64,
}

/// Adds the properties Mixpanel's servers add to every event: `$mp_api_endpoint` (the host the
/// request was sent to), `$mp_api_timestamp_ms` (arrival time), `mp_processing_time_ms`
/// (processing time), and `$import: true` on `/import`. They replace values the client sent.
pub fn add_server_properties(
    event: &mut NewEvent,
    endpoint: Endpoint,
    receipt: &Receipt,
    processed_ms: i64,
) {
    let properties = &mut event.properties;
    if let Some(host) = &receipt.endpoint_host {
        properties.insert("$mp_api_endpoint".into(), Value::from(host.as_str()));
    }
    properties.insert(
        "$mp_api_timestamp_ms".into(),
        Value::from(receipt.received_ms),
    );
    properties.insert("mp_processing_time_ms".into(), Value::from(processed_ms));
    if endpoint == Endpoint::Import {
        properties.insert("$import".into(), Value::Bool(true));
    }
}

/// Reads `properties.time` as integer milliseconds. Seconds, milliseconds and fractional
/// seconds are accepted; strings are not. A bad time is an error, never replaced by the clock.
pub fn event_time_ms(
    value: Option<&Value>,
    endpoint: Endpoint,
    now_ms: i64,
) -> Result<i64, FieldError> {
    const FIELD: &str = "properties.time";
    let number = match value {
        None | Some(Value::Null) if endpoint == Endpoint::Track => return Ok(now_ms),
        None | Some(Value::Null) => return Err(FieldError::new(FIELD, "properties.time is missing")),
        Some(Value::Number(n)) => n,
        Some(other) => {
            return Err(FieldError::new(
                FIELD,
                format!("properties.time must be a number of seconds or milliseconds since the epoch, found {other}"),
            ))
        }
    };
    let time_ms = if let Some(i) = number.as_i64() {
        if (i as f64) >= MILLISECONDS_THRESHOLD {
            i
        } else {
            i.saturating_mul(1000)
        }
    } else {
        let f = number.as_f64().unwrap_or(f64::NAN);
        if !f.is_finite() {
            return Err(FieldError::new(
                FIELD,
                format!("properties.time {number} is not finite"),
            ));
        }
        let ms = if f >= MILLISECONDS_THRESHOLD {
            f
        } else {
            f * 1000.0
        };
        ms.round() as i64
    };
    if time_ms < MIN_EVENT_TIME_MS {
        return Err(FieldError::new(
            FIELD,
            format!("properties.time {number} is before 1971-01-01T00:00:00Z"),
        ));
    }
    if time_ms > now_ms + MAX_FUTURE_MS {
        return Err(FieldError::new(
            FIELD,
            format!("properties.time {number} is more than 1 hour in the future"),
        ));
    }
    if endpoint == Endpoint::Track && time_ms < now_ms - TRACK_MAX_AGE_MS {
        return Err(FieldError::new(
            FIELD,
            format!("properties.time {number} is more than 5 days old; send it to /import"),
        ));
    }
    Ok(time_ms)
}

pub(crate) fn validate_insert_id(value: &Value) -> Result<String, FieldError> {
    const FIELD: &str = "properties.$insert_id";
    let Value::String(id) = value else {
        return Err(FieldError::new(
            FIELD,
            format!("$insert_id must be a string, found {value}"),
        ));
    };
    let valid = !id.is_empty()
        && id.len() <= MAX_INSERT_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !valid {
        return Err(FieldError::new(
            FIELD,
            format!("$insert_id {id:?} must be 1 to 36 ASCII letters, digits or '-'"),
        ));
    }
    Ok(id.clone())
}

/// Derives an insert id for an event that was sent without one, from a hash of its content, so that
/// importing the same file twice stores each event once.
fn derived_insert_id(
    name: &str,
    distinct_id: &str,
    time_ms: i64,
    properties: &Map<String, Value>,
) -> String {
    let mut hasher = Sha256::new();
    for part in [
        name.as_bytes(),
        distinct_id.as_bytes(),
        &time_ms.to_be_bytes(),
    ] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hasher.update(Value::Object(properties.clone()).to_string().as_bytes());
    hex::encode(&hasher.finalize()[..16])
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const NOW: i64 = 1_700_000_000_000 + 10 * 86_400_000;

    fn time(value: Value) -> Result<i64, FieldError> {
        event_time_ms(Some(&value), Endpoint::Import, NOW)
    }

    #[test]
    fn time_units_normalise_to_milliseconds() {
        assert_eq!(time(json!(1700000000)).unwrap(), 1_700_000_000_000);
        assert_eq!(time(json!(1700000000123_i64)).unwrap(), 1_700_000_000_123);
        assert_eq!(time(json!(1700000000.123)).unwrap(), 1_700_000_000_123);
        assert_eq!(time(json!(100000000000_i64)).unwrap(), 100_000_000_000);
    }

    #[test]
    fn time_strings_are_rejected() {
        for value in [json!("1700000000"), json!("2023-11-14T22:13:20Z")] {
            let err = time(value).unwrap_err();
            assert_eq!(err.field, "properties.time");
        }
    }

    #[test]
    fn time_before_1971_is_rejected() {
        for value in [json!(31535999), json!(0), json!(-1)] {
            let err = time(value.clone()).unwrap_err();
            assert!(
                err.message.contains("before 1971"),
                "{value}: {}",
                err.message
            );
        }
        assert!(time(json!(31536000)).is_ok());
    }

    #[test]
    fn time_more_than_an_hour_ahead_is_rejected() {
        let now_s = NOW / 1000;
        assert!(time(json!(now_s + 3600)).is_ok());
        assert!(time(json!(now_s + 3601))
            .unwrap_err()
            .message
            .contains("future"));
    }

    #[test]
    fn track_rejects_old_events_and_fills_missing_time() {
        let old = json!(NOW / 1000 - 6 * 86_400);
        let err = event_time_ms(Some(&old), Endpoint::Track, NOW).unwrap_err();
        assert!(err.message.contains("/import"));
        assert_eq!(event_time_ms(None, Endpoint::Track, NOW).unwrap(), NOW);
        assert!(event_time_ms(None, Endpoint::Import, NOW).is_err());
    }

    #[test]
    fn insert_id_rules() {
        let record = |id: Value| json!({"event": "e", "properties": {"time": 1700000000, "distinct_id": "u", "$insert_id": id}});
        assert!(validate(&record(json!("a1b2-C3")), Endpoint::Import, NOW).is_ok());
        for bad in [
            json!("has space"),
            json!("x".repeat(37)),
            json!(""),
            json!(5),
        ] {
            let err = validate(&record(bad.clone()), Endpoint::Import, NOW).unwrap_err();
            assert_eq!(err.field, "properties.$insert_id", "{bad}");
        }
    }

    #[test]
    fn missing_insert_id_is_derived_from_content() {
        let record =
            json!({"event": "e", "properties": {"time": 1700000000, "distinct_id": "u", "k": 1}});
        let first = validate(&record, Endpoint::Import, NOW).unwrap();
        let second = validate(&record, Endpoint::Import, NOW).unwrap();
        assert_eq!(first.event.insert_id, second.event.insert_id);
        assert_eq!(first.event.insert_id.len(), 32);
        let other =
            json!({"event": "e", "properties": {"time": 1700000000, "distinct_id": "u", "k": 2}});
        assert_ne!(
            validate(&other, Endpoint::Import, NOW)
                .unwrap()
                .event
                .insert_id,
            first.event.insert_id
        );
    }

    #[test]
    fn column_properties_leave_the_map() {
        let record = json!({"event": "e", "properties": {"time": 1700000000, "distinct_id": "u", "$insert_id": "i", "token": "t", "k": 1}});
        let valid = validate(&record, Endpoint::Import, NOW).unwrap();
        assert_eq!(Value::Object(valid.event.properties), json!({"k": 1}));
    }

    #[test]
    fn long_strings_are_truncated() {
        let long = "é".repeat(300);
        let record = json!({"event": "e", "properties": {"time": 1700000000, "distinct_id": "u",
            "s": long, "list": [long], "nested": {"s": long}, "short": "ok"}});
        let valid = validate(&record, Endpoint::Import, NOW).unwrap();
        let properties = Value::Object(valid.event.properties);
        let cut = "é".repeat(MAX_STRING_CHARS);
        assert_eq!(properties["s"], cut.as_str());
        assert_eq!(properties["list"][0], cut.as_str());
        assert_eq!(properties["nested"]["s"], cut.as_str());
        assert_eq!(properties["short"], "ok");
    }

    #[test]
    fn too_many_properties_are_rejected() {
        let mut properties: Map<String, Value> = (0..MAX_PROPERTIES)
            .map(|i| (format!("p{i}"), Value::from(i)))
            .collect();
        properties.insert("time".into(), json!(1700000000));
        properties.insert("distinct_id".into(), json!("u"));
        let record = json!({"event": "e", "properties": properties});
        assert!(validate(&record, Endpoint::Import, NOW).is_ok());

        properties.insert("one_more".into(), json!(1));
        let record = json!({"event": "e", "properties": properties});
        let err = validate(&record, Endpoint::Import, NOW).unwrap_err();
        assert_eq!(err.field, "properties");
        assert!(err.message.contains("256 properties"), "{}", err.message);
    }

    #[test]
    fn server_properties_are_added() {
        let record = json!({"event": "e", "properties": {"time": NOW / 1000, "distinct_id": "u",
            "$import": false, "mp_processing_time_ms": 1}});
        let receipt = Receipt {
            endpoint_host: Some("ingest.example.com".into()),
            received_ms: NOW - 5,
        };
        let mut imported = validate(&record, Endpoint::Import, NOW).unwrap().event;
        add_server_properties(&mut imported, Endpoint::Import, &receipt, NOW);
        assert_eq!(
            imported.properties["$mp_api_endpoint"],
            "ingest.example.com"
        );
        assert_eq!(imported.properties["$mp_api_timestamp_ms"], NOW - 5);
        assert_eq!(imported.properties["mp_processing_time_ms"], NOW);
        assert_eq!(imported.properties["$import"], true);

        let mut tracked = validate(&record, Endpoint::Track, NOW).unwrap().event;
        add_server_properties(&mut tracked, Endpoint::Track, &receipt, NOW);
        assert_eq!(tracked.properties["$import"], false);
    }

    #[test]
    fn owned_validation_matches_borrowed() {
        let records = [
            json!({"event": "e", "properties": {"time": 1700000000, "distinct_id": "u", "k": [1]}}),
            json!({"event": "e", "properties": {"time": "soon", "distinct_id": "u"}}),
            json!({"event": "e", "properties": 5}),
        ];
        for record in records {
            assert_eq!(
                validate_owned(record.clone(), Endpoint::Import, NOW),
                validate(&record, Endpoint::Import, NOW),
                "{record}"
            );
        }
    }

    #[test]
    fn merge_without_time_gets_arrival_time() {
        let merge = json!({"event": "$merge", "properties": {"$distinct_ids": ["a", "b"]}});
        let valid = validate(&merge, Endpoint::Import, NOW).unwrap();
        assert_eq!(valid.event.time_ms, NOW);
        assert_eq!(valid.event.distinct_id, "a");
        let other = json!({"event": "Viewed", "properties": {"distinct_id": "a"}});
        let err = validate(&other, Endpoint::Import, NOW).unwrap_err();
        assert_eq!(err.field, "properties.time");
    }

    #[test]
    fn event_name_is_required() {
        for record in [
            json!({"properties": {}}),
            json!({"event": "", "properties": {}}),
            json!({"event": 3}),
        ] {
            assert_eq!(
                validate(&record, Endpoint::Track, NOW).unwrap_err().field,
                "event"
            );
        }
    }
}
