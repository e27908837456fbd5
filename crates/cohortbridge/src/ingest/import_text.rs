//! Validation of `/import` records straight from their JSON text into encoded events.
//!
//! The general path parses a record into a `serde_json::Value`, validates it, adds the server's
//! properties and serialises the properties again. The common record is an event with a plain
//! name, `time`, `distinct_id` and `$insert_id`, and no property that the server sets. This
//! module handles it in one pass over the text. Property values are copied as they were sent,
//! and only the few properties that validation reads are parsed. The stored text is byte for
//! byte what the general path stores.
//!
//! Any record that this path does not handle exactly (an invalid one, a `$merge`, one without
//! `$insert_id`, one with a duplicate key, among others) returns [`Fallback`], and the caller
//! validates it on the general path, which also words every error.

use std::borrow::Cow;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::event::{self, Endpoint, Receipt, MAX_EVENT_NAME_LEN, MAX_PROPERTIES, MAX_STRING_CHARS};
use super::RecordFailure;
use crate::identity;
use crate::store::{EncodedEvent, IdentityLink, NewEvent};

/// The record must be validated on the general path instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fallback;

/// The request facts that the server adds to every event of one `/import` request.
#[derive(Debug, Clone, Copy)]
pub struct ImportContext<'a> {
    pub receipt: &'a Receipt,
    /// When the request is processed, in milliseconds since the epoch.
    pub now_ms: i64,
    /// The partner that sent the request, stored as `$partner_id`.
    pub partner_id: Option<&'a str>,
}

/// Properties that the server sets. A record that sends one goes to the general path, which
/// replaces the value in place.
const SERVER_PROPERTIES: &[&str] = &[
    "$mp_api_endpoint",
    "$mp_api_timestamp_ms",
    "mp_processing_time_ms",
    "$import",
    "$partner_id",
];

/// Validates the `/import` record `text` and appends its properties, with the server's, to
/// `buffer` as one JSON object. Returns the event's columns and the identity link it creates.
/// On [`Fallback`] the buffer may hold part of the record, which the caller removes.
pub fn encode_import_record(
    text: &str,
    context: &ImportContext<'_>,
    buffer: &mut Vec<u8>,
) -> Result<(EncodedEvent, Option<IdentityLink>), Fallback> {
    let mut record = Record::default();
    let mut deserializer = serde_json::Deserializer::from_str(text);
    RecordSeed {
        record: &mut record,
        buffer,
    }
    .deserialize(&mut deserializer)
    .map_err(|_| Fallback)?;
    deserializer.end().map_err(|_| Fallback)?;

    let Record {
        name: Some(name),
        columns,
        properties_seen: true,
        property_count,
    } = record
    else {
        return Err(Fallback);
    };
    if name.is_empty()
        || name == "$merge"
        || name.contains('\0')
        || name.chars().count() > MAX_EVENT_NAME_LEN
    {
        return Err(Fallback);
    }
    // The checks run in the general path's order, so a record that fails any of them fails
    // there with the same error.
    let time_ms = event::event_time_ms(columns.time.as_ref(), Endpoint::Import, context.now_ms)
        .map_err(|_| Fallback)?;
    let mut identity_properties = Map::new();
    for (key, value) in [
        ("distinct_id", columns.distinct_id),
        ("$user_id", columns.user_id),
        ("$device_id", columns.device_id),
    ] {
        if let Some(value) = value {
            identity_properties.insert(key.to_owned(), value);
        }
    }
    let identity = identity::event_identity(&identity_properties, true).map_err(|_| Fallback)?;
    let insert_id = match columns.insert_id {
        None | Some(Value::Null) => return Err(Fallback),
        Some(value) => event::validate_insert_id(&value).map_err(|_| Fallback)?,
    };
    if property_count > MAX_PROPERTIES {
        return Err(Fallback);
    }

    let mut entries = property_count;
    let mut append = |key: &str, value: &Value| {
        buffer.push(if entries == 0 { b'{' } else { b',' });
        entries += 1;
        write_entry(buffer, key, value);
    };
    if let Some(host) = &context.receipt.endpoint_host {
        append("$mp_api_endpoint", &Value::from(host.as_str()));
    }
    append(
        "$mp_api_timestamp_ms",
        &Value::from(context.receipt.received_ms),
    );
    append("mp_processing_time_ms", &Value::from(context.now_ms));
    append("$import", &Value::Bool(true));
    if let Some(partner) = context.partner_id {
        append("$partner_id", &Value::from(partner));
    }
    buffer.push(b'}');

    let event = EncodedEvent {
        event: name.into_owned(),
        distinct_id: identity.distinct_id,
        time_ms,
        insert_id,
        partner_id: context.partner_id.map(str::to_owned),
        imported: true,
    };
    Ok((event, identity.link))
}

/// Validates one `/import` record on the general path, from its parsed value, and adds the
/// server's properties. A rejected record is reported at `index`.
pub fn validate_import_record(
    record: Value,
    index: usize,
    context: &ImportContext<'_>,
) -> Result<(NewEvent, Option<IdentityLink>), RecordFailure> {
    let insert_id = record
        .pointer("/properties/$insert_id")
        .and_then(Value::as_str)
        .map(str::to_owned);
    match event::validate_owned(record, Endpoint::Import, context.now_ms) {
        Ok(mut valid) => {
            event::add_server_properties(
                &mut valid.event,
                Endpoint::Import,
                context.receipt,
                context.now_ms,
            );
            if let Some(partner) = context.partner_id {
                valid
                    .event
                    .properties
                    .insert("$partner_id".into(), Value::from(partner));
            }
            Ok((valid.event, valid.link))
        }
        Err(error) => Err(RecordFailure {
            index,
            insert_id,
            field: error.field,
            message: error.message,
        }),
    }
}

fn write_entry(buffer: &mut Vec<u8>, key: &str, value: &Value) {
    serde_json::to_writer(&mut *buffer, key).expect("writing to a Vec cannot fail");
    buffer.push(b':');
    serde_json::to_writer(&mut *buffer, value).expect("writing to a Vec cannot fail");
}

/// The properties that validation reads, taken out of the record as values.
#[derive(Debug, Default)]
struct Columns {
    time: Option<Value>,
    distinct_id: Option<Value>,
    insert_id: Option<Value>,
    token: Option<Value>,
    /// Read for the identity and also kept among the properties, like `device_id`.
    user_id: Option<Value>,
    device_id: Option<Value>,
}

#[derive(Debug, Default)]
struct Record<'de> {
    name: Option<Cow<'de, str>>,
    columns: Columns,
    properties_seen: bool,
    /// Properties written to the buffer, the columns not included.
    property_count: usize,
}

/// Reads a record object: `event` and `properties`, any other key ignored as on the general
/// path.
struct RecordSeed<'r, 'de> {
    record: &'r mut Record<'de>,
    buffer: &'r mut Vec<u8>,
}

impl<'de> DeserializeSeed<'de> for RecordSeed<'_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RecordSeed<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an event record")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(Key(key)) = map.next_key()? {
            match key.as_ref() {
                "event" if self.record.name.is_none() => {
                    let Name(name) = map.next_value()?;
                    self.record.name = Some(name);
                }
                "properties" if !self.record.properties_seen => {
                    self.record.properties_seen = true;
                    map.next_value_seed(PropertiesSeed {
                        record: &mut *self.record,
                        buffer: &mut *self.buffer,
                    })?;
                }
                "event" | "properties" => return Err(serde::de::Error::custom("duplicate key")),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// Reads the properties object, writing every property but the columns to the buffer.
struct PropertiesSeed<'r, 'de> {
    record: &'r mut Record<'de>,
    buffer: &'r mut Vec<u8>,
}

impl<'de> DeserializeSeed<'de> for PropertiesSeed<'_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for PropertiesSeed<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object of properties")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // The start and end in the buffer of each key written, to find a repeated key.
        let mut keys: Vec<(usize, usize)> = Vec::new();
        let columns = &mut self.record.columns;
        while let Some(Key(key)) = map.next_key()? {
            let column = match key.as_ref() {
                "time" => Some(&mut columns.time),
                "distinct_id" => Some(&mut columns.distinct_id),
                "$insert_id" => Some(&mut columns.insert_id),
                "token" => Some(&mut columns.token),
                _ => None,
            };
            if let Some(slot) = column {
                if slot.is_some() {
                    return Err(serde::de::Error::custom("duplicate key"));
                }
                *slot = Some(map.next_value()?);
                continue;
            }
            if SERVER_PROPERTIES.contains(&key.as_ref()) {
                return Err(serde::de::Error::custom("server property"));
            }

            self.buffer.push(if keys.is_empty() { b'{' } else { b',' });
            let key_start = self.buffer.len();
            serde_json::to_writer(&mut *self.buffer, key.as_ref())
                .map_err(serde::de::Error::custom)?;
            let key_end = self.buffer.len();
            let written = &self.buffer[key_start..key_end];
            if keys
                .iter()
                .any(|&(start, end)| self.buffer[start..end] == *written)
            {
                return Err(serde::de::Error::custom("duplicate key"));
            }
            keys.push((key_start, key_end));
            self.buffer.push(b':');

            match key.as_ref() {
                "$user_id" | "$device_id" => {
                    let value: Value = map.next_value()?;
                    write_truncated(self.buffer, value.clone());
                    let slot = if key == "$user_id" {
                        &mut columns.user_id
                    } else {
                        &mut columns.device_id
                    };
                    *slot = Some(value);
                }
                _ => {
                    let raw: &'de RawValue = map.next_value()?;
                    write_raw(self.buffer, raw.get()).map_err(serde::de::Error::custom)?;
                }
            }
        }
        self.record.property_count = keys.len();
        Ok(())
    }
}

/// Appends a property value as the general path serialises it after cutting its strings to
/// [`MAX_STRING_CHARS`] characters. Booleans, `null`, numbers without an exponent and short
/// strings without escapes serialise to the text that was sent, so they are copied. serde_json
/// (with `arbitrary_precision`) writes an exponent with its sign, `1e9` as `1e+9`.
fn write_raw(buffer: &mut Vec<u8>, raw: &str) -> serde_json::Result<()> {
    let bytes = raw.as_bytes();
    let copied = match bytes.first() {
        // A string of at most MAX_STRING_CHARS bytes has at most that many characters.
        Some(b'"') => bytes.len() <= MAX_STRING_CHARS + 2 && !bytes.contains(&b'\\'),
        Some(b'{' | b'[') | None => false,
        Some(b't' | b'f' | b'n') => true,
        Some(_) => !bytes.iter().any(|b| matches!(b, b'e' | b'E')),
    };
    if copied {
        buffer.extend_from_slice(bytes);
        return Ok(());
    }
    let value: Value = serde_json::from_str(raw)?;
    if event::check_depth("", &value).is_err() {
        return Err(serde::de::Error::custom("nested too deep"));
    }
    write_truncated(buffer, value);
    Ok(())
}

fn write_truncated(buffer: &mut Vec<u8>, mut value: Value) {
    event::truncate_strings(&mut value);
    serde_json::to_writer(&mut *buffer, &value).expect("writing to a Vec cannot fail");
}

/// A key, borrowed from the text unless it contains escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(TextVisitor).map(Key)
    }
}

/// An event name: a string, borrowed unless it contains escapes. Any other JSON type fails,
/// which sends the record to the general path.
struct Name<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(TextVisitor).map(Name)
    }
}

struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(text))
    }

    fn visit_str<E>(self, text: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(text.to_owned()))
    }

    fn visit_string<E>(self, text: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(text))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::store::EncodedEvents;

    /// 2023-11-14T22:13:20Z plus a day, in milliseconds.
    const NOW: i64 = 1_700_000_000_000 + 86_400_000;

    fn receipt() -> Receipt {
        Receipt {
            endpoint_host: Some("api.example.test".into()),
            received_ms: NOW - 5,
        }
    }

    type Encoded = (EncodedEvent, String, Option<IdentityLink>);

    fn fast(text: &str, context: &ImportContext<'_>) -> Result<Encoded, Fallback> {
        let mut buffer = Vec::new();
        let (event, link) = encode_import_record(text, context, &mut buffer)?;
        Ok((event, String::from_utf8(buffer).unwrap(), link))
    }

    /// Runs the general path on `text`: what it stores, or `None` when it rejects the record.
    fn general(text: &str, context: &ImportContext<'_>) -> Option<Encoded> {
        let record: Value = serde_json::from_str(text).ok()?;
        let (event, link) = validate_import_record(record, 0, context).ok()?;
        let encoded = EncodedEvents::encode(std::slice::from_ref(&event)).unwrap();
        let (columns, properties) = encoded.get(0);
        Some((columns.clone(), properties.to_owned(), link))
    }

    fn context(receipt: &Receipt) -> ImportContext<'_> {
        ImportContext {
            receipt,
            now_ms: NOW,
            partner_id: None,
        }
    }

    #[test]
    fn typical_record_takes_the_text_path() {
        let receipt = receipt();
        let context = context(&receipt);
        let text = r#"{"event": "Purchase", "properties": {"time": 1700000000, "distinct_id": "u1",
            "$insert_id": "a-1", "token": "t", "plan": "pro", "price": 9.90, "tags": ["x", "y"],
            "$device_id": "d1", "$user_id": "u1", "é": "\u00e9", "big": 1e400}}"#;
        let (event, properties, link) = fast(text, &context).unwrap();
        assert_eq!(event.event, "Purchase");
        assert_eq!(event.distinct_id, "u1");
        assert_eq!(event.time_ms, 1_700_000_000_000);
        assert_eq!(event.insert_id, "a-1");
        assert!(event.imported);
        assert_eq!(
            link,
            Some(IdentityLink {
                distinct_id: "$device:d1".into(),
                canonical_id: "u1".into()
            })
        );
        assert_eq!(
            properties,
            r#"{"plan":"pro","price":9.90,"tags":["x","y"],"$device_id":"d1","$user_id":"u1","é":"é","big":1e+400,"$mp_api_endpoint":"api.example.test","$mp_api_timestamp_ms":1700086399995,"mp_processing_time_ms":1700086400000,"$import":true}"#
        );
        assert_eq!(general(text, &context), Some((event, properties, link)));
    }

    #[test]
    fn partner_and_long_strings_match_the_general_path() {
        let receipt = receipt();
        let context = ImportContext {
            partner_id: Some("braze"),
            ..context(&receipt)
        };
        let long = "é".repeat(300);
        let text = format!(
            r#"{{"event":"Email Send","properties":{{"time":1700000000000,"distinct_id":"u1","$insert_id":"b","text":"{long}","nested":{{"deep":["{long}"]}}}}}}"#
        );
        let encoded = fast(&text, &context).unwrap();
        assert_eq!(encoded.0.partner_id.as_deref(), Some("braze"));
        assert!(encoded
            .1
            .ends_with(r#","$import":true,"$partner_id":"braze"}"#));
        assert!(
            !encoded.1.contains(&long),
            "strings are cut to 255 characters"
        );
        assert_eq!(general(&text, &context), Some(encoded));
    }

    #[test]
    fn unusual_records_fall_back() {
        let receipt = receipt();
        let context = context(&receipt);
        let base = r#""time":1700000000,"distinct_id":"u1","$insert_id":"a""#;
        for text in [
            format!(r#"{{"event":"$merge","properties":{{{base}}}}}"#),
            format!(r#"{{"event":"","properties":{{{base}}}}}"#),
            format!(r#"{{"event":"a\u0000b","properties":{{{base}}}}}"#),
            format!(
                r#"{{"event":"e","properties":{{{base},"d":{}1{}}}}}"#,
                "[".repeat(101),
                "]".repeat(101)
            ),
            format!(r#"{{"event":5,"properties":{{{base}}}}}"#),
            format!(r#"{{"properties":{{{base}}}}}"#),
            format!(r#"{{"event":"e","properties":{{{base},"k":1,"k":2}}}}"#),
            format!(r#"{{"event":"e","properties":{{{base},"k":1,"\u006b":2}}}}"#),
            format!(r#"{{"event":"e","properties":{{{base},"time":2}}}}"#),
            format!(r#"{{"event":"e","event":"f","properties":{{{base}}}}}"#),
            format!(r#"{{"event":"e","properties":{{{base},"$import":false}}}}"#),
            format!(r#"{{"event":"e","properties":{{{base},"$partner_id":"x"}}}}"#),
            r#"{"event":"e","properties":{"time":1700000000,"distinct_id":"u1"}}"#.to_owned(),
            r#"{"event":"e","properties":{"time":"1700000000","distinct_id":"u1","$insert_id":"a"}}"#.to_owned(),
            r#"{"event":"e","properties":{"time":1700000000,"distinct_id":"undefined","$insert_id":"a"}}"#.to_owned(),
            r#"{"event":"e","properties":{"time":1700000000,"distinct_id":"u1","$insert_id":"a b"}}"#.to_owned(),
            r#"{"event":"e","properties":null}"#.to_owned(),
            r#"{"event":"e","properties":{"time":1700000000,"distinct_id":"u1","$insert_id":"a"}} x"#.to_owned(),
            r#"[{"event":"e"}]"#.to_owned(),
        ] {
            assert_eq!(fast(&text, &context), Err(Fallback), "{text}");
        }
        let many: String = (0..=MAX_PROPERTIES)
            .map(|i| format!(r#","p{i}":1"#))
            .collect();
        let text = format!(r#"{{"event":"e","properties":{{{base}{many}}}}}"#);
        assert_eq!(fast(&text, &context), Err(Fallback));
    }

    /// Property names: mostly plain ones, sometimes one that validation reads, the server
    /// sets, or that is written with escapes.
    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            12 => "\"[a-z]{3,8}\"",
            1 => Just(r#""time""#.to_owned()),
            1 => Just(r#""distinct_id""#.to_owned()),
            1 => Just(r#""$insert_id""#.to_owned()),
            1 => Just(r#""token""#.to_owned()),
            1 => Just(r#""$user_id""#.to_owned()),
            1 => Just(r#""$device_id""#.to_owned()),
            1 => Just(r#""$import""#.to_owned()),
            1 => Just(r#""plan""#.to_owned()),
            1 => Just(r#""pl\u0061n""#.to_owned()),
            1 => Just(r#""quo\"te""#.to_owned()),
            1 => Just(r#""é""#.to_owned()),
        ]
    }

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("1700000000".to_owned()),
            Just("1700000000123".to_owned()),
            Just("1700000000.5".to_owned()),
            Just("1.70e9".to_owned()),
            Just("-0".to_owned()),
            Just("1e400".to_owned()),
            Just("12345678901234567890".to_owned()),
            Just("true".to_owned()),
            Just("null".to_owned()),
            Just(r#""""#.to_owned()),
            Just(r#""undefined""#.to_owned()),
            Just(r#""id-1""#.to_owned()),
            Just(r#""a b""#.to_owned()),
            Just(r#""line\nbreak \u00e9 \ud83d\ude00""#.to_owned()),
            Just(format!("\"{}\"", "x".repeat(255))),
            Just(format!("\"{}\"", "x".repeat(256))),
            Just(format!("\"{}\"", "é".repeat(200))),
            Just(format!("[1, \"{}\", {{\"k\" : null}}]", "y".repeat(300))),
            Just(r#"{ "n": 1.0 , "s": "\t" }"#.to_owned()),
            "\"[a-z0-9-]{0,40}\"",
            "-?[0-9]{1,5}(\\.[0-9]{1,3})?",
        ]
    }

    fn space() -> impl Strategy<Value = &'static str> {
        prop_oneof![Just(""), Just(" "), Just("\n\t")]
    }

    fn record() -> impl Strategy<Value = String> {
        let name = proptest::option::weighted(
            0.95,
            prop_oneof![
                12 => Just(r#""Purchase""#.to_owned()),
                1 => Just(r#""$merge""#.to_owned()),
                1 => Just(r#""Pur\u0063hase""#.to_owned()),
                1 => Just(r#""""#.to_owned()),
                1 => Just("7".to_owned()),
                1 => Just(format!("\"{}\"", "n".repeat(256))),
            ],
        );
        // Most records carry the columns that the text path needs, so that it is exercised.
        let usual = proptest::bool::weighted(0.9);
        let extra = proptest::collection::vec((key(), value(), space()), 0..10);
        (name, usual, extra, space(), any::<bool>()).prop_map(
            |(name, usual, extra, gap, other_key)| {
                let mut entries: Vec<String> = Vec::new();
                if usual {
                    entries.push(r#""time":1700000000"#.to_owned());
                    entries.push(r#""distinct_id":"u1""#.to_owned());
                    entries.push(r#""$insert_id":"i-1""#.to_owned());
                }
                for (k, v, s) in extra {
                    entries.push(format!("{k}{s}:{s}{v}"));
                }
                let properties = format!("{{{gap}{}{gap}}}", entries.join(","));
                let mut fields = Vec::new();
                if let Some(name) = name {
                    fields.push(format!(r#""event":{gap}{name}"#));
                }
                fields.push(format!(r#""properties":{properties}"#));
                if other_key {
                    fields.push(r#""extra":[1,2]"#.to_owned());
                }
                format!("{{{}}}", fields.join(&format!(",{gap}")))
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn text_path_stores_what_the_general_path_stores(text in record(), partner in any::<bool>()) {
            let receipt = receipt();
            let context = ImportContext {
                partner_id: partner.then_some("braze"),
                ..context(&receipt)
            };
            if let Ok(encoded) = fast(&text, &context) {
                prop_assert_eq!(general(&text, &context), Some(encoded), "{}", text);
            }
        }
    }
}
