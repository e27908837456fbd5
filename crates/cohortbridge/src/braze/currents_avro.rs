//! Reads Braze Currents storage files: Avro object container files, one event type per file,
//! as Braze writes them to S3, Google Cloud Storage or Azure.
//!
//! A storage record is flat: `id`, `time`, the user fields (`user_id`, `external_user_id`,
//! `device_id`, `timezone`) and the event's own fields side by side, with custom event and
//! purchase properties as a JSON-encoded string in `properties`. This module turns each record
//! into the shape of the Currents HTTP connector (`{"event_type", "id", "time", "user",
//! "properties"}`), so both ways in share one mapping in `braze::currents`.

use std::path::Path;

use apache_avro::schema::Schema;
use apache_avro::types::Value as AvroValue;
use apache_avro::Reader;
use serde_json::{Map, Number, Value};

use super::currents::CUSTOM_EVENT_TYPE;

/// Fields of a storage record that belong to the user, not to the event.
const USER_FIELDS: &[&str] = &["user_id", "external_user_id", "device_id", "timezone"];

#[derive(Debug, thiserror::Error)]
pub enum AvroFileError {
    #[error("{path}: cannot open: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a valid Avro object container file: {source}")]
    Invalid {
        path: String,
        source: Box<apache_avro::Error>,
    },
    #[error(
        "{path}: cannot tell the event type from the schema name {schema_name:?} or the folder"
    )]
    UnknownEventType { path: String, schema_name: String },
    #[error("{path}: record {index} is not an Avro record")]
    NotARecord { path: String, index: usize },
}

/// The events of one storage file, in the Currents HTTP shape.
#[derive(Debug)]
pub struct CurrentsFile {
    pub event_type: String,
    pub events: Vec<Value>,
}

/// Reads a whole storage file.
pub fn read_file(path: &Path) -> Result<CurrentsFile, AvroFileError> {
    let display = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| AvroFileError::Open {
        path: display.clone(),
        source,
    })?;
    let reader =
        Reader::new(std::io::BufReader::new(file)).map_err(|source| AvroFileError::Invalid {
            path: display.clone(),
            source: Box::new(source),
        })?;
    let schema_name = match reader.writer_schema() {
        Schema::Record(record) => record.name.fullname(None),
        other => format!("{other:?}"),
    };
    let event_type = event_type_from_path(path)
        .or_else(|| event_type_from_schema_name(&schema_name))
        .ok_or_else(|| AvroFileError::UnknownEventType {
            path: display.clone(),
            schema_name: schema_name.clone(),
        })?;

    let mut events = Vec::new();
    for (index, record) in reader.enumerate() {
        let record = record.map_err(|source| AvroFileError::Invalid {
            path: display.clone(),
            source: Box::new(source),
        })?;
        let AvroValue::Record(fields) = record else {
            return Err(AvroFileError::NotARecord {
                path: display,
                index,
            });
        };
        let fields: Map<String, Value> = fields
            .into_iter()
            .map(|(name, value)| (name, to_json(value)))
            .collect();
        events.push(to_http_event(&event_type, fields));
    }
    Ok(CurrentsFile { event_type, events })
}

/// Reads the event type from a folder `event_type=<type>` in Braze's storage layout.
pub fn event_type_from_path(path: &Path) -> Option<String> {
    path.ancestors()
        .filter_map(|dir| dir.file_name()?.to_str())
        .find_map(|name| name.strip_prefix("event_type=").map(str::to_owned))
}

/// Extracts the event type from a schema's full name, such as
/// `dataexport.S3.inner.users.messages.email.Send` for `users.messages.email.Send`.
pub fn event_type_from_schema_name(name: &str) -> Option<String> {
    let start = ["users.", "agentconsole."]
        .iter()
        .filter_map(|root| name.find(root))
        .min()?;
    Some(name[start..].to_owned())
}

/// Rebuilds the Currents HTTP shape from a flat storage record.
pub fn to_http_event(event_type: &str, mut fields: Map<String, Value>) -> Value {
    let id = fields.remove("id").unwrap_or(Value::Null);
    let time = fields.remove("time").unwrap_or(Value::Null);
    let mut user = Map::new();
    for name in USER_FIELDS {
        if let Some(value) = fields.remove(*name) {
            user.insert((*name).to_owned(), value);
        }
    }
    // Custom events and purchases carry their own properties as a JSON string in `properties`.
    if let Some(encoded) = fields.remove("properties") {
        let key = if event_type == CUSTOM_EVENT_TYPE {
            "custom_properties"
        } else {
            "purchase_properties"
        };
        fields.insert(key.to_owned(), encoded);
    }
    serde_json::json!({
        "event_type": event_type,
        "id": id,
        "time": time,
        "user": user,
        "properties": fields,
    })
}

/// Converts an Avro value to JSON. Floats keep the decimal value they were written with
/// (`9.99f32` stays `9.99`, not `9.989999771118164`), and a union is its chosen branch.
fn to_json(value: AvroValue) -> Value {
    match value {
        AvroValue::Null => Value::Null,
        AvroValue::Boolean(b) => Value::Bool(b),
        AvroValue::Int(i) | AvroValue::Date(i) | AvroValue::TimeMillis(i) => Value::from(i),
        AvroValue::Long(i)
        | AvroValue::TimeMicros(i)
        | AvroValue::TimestampMillis(i)
        | AvroValue::TimestampMicros(i)
        | AvroValue::TimestampNanos(i)
        | AvroValue::LocalTimestampMillis(i)
        | AvroValue::LocalTimestampMicros(i)
        | AvroValue::LocalTimestampNanos(i) => Value::from(i),
        AvroValue::Float(f) => f
            .to_string()
            .parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map_or(Value::Null, Value::Number),
        AvroValue::Double(f) => Number::from_f64(f).map_or(Value::Null, Value::Number),
        AvroValue::String(s) | AvroValue::Enum(_, s) => Value::String(s),
        AvroValue::Uuid(u) => Value::String(u.to_string()),
        AvroValue::Bytes(bytes) | AvroValue::Fixed(_, bytes) => {
            Value::String(String::from_utf8_lossy(&bytes).into_owned())
        }
        AvroValue::Union(_, inner) => to_json(*inner),
        AvroValue::Array(items) => Value::Array(items.into_iter().map(to_json).collect()),
        AvroValue::Map(map) => {
            Value::Object(map.into_iter().map(|(k, v)| (k, to_json(v))).collect())
        }
        AvroValue::Record(fields) => {
            Value::Object(fields.into_iter().map(|(k, v)| (k, to_json(v))).collect())
        }
        other => Value::String(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use serde_json::json;

    use super::*;

    #[test]
    fn event_type_from_folder_layout() {
        let path = PathBuf::from("/bucket/currents/dataexport.prod-01.S3.integration.abc/event_type=users.messages.email.Send/date=2024-01-02-03/5/file.avro");
        assert_eq!(
            event_type_from_path(&path).as_deref(),
            Some("users.messages.email.Send")
        );
        assert_eq!(event_type_from_path(Path::new("/data/file.avro")), None);
    }

    #[test]
    fn event_type_from_schema_names() {
        assert_eq!(
            event_type_from_schema_name("dataexport.S3.inner.users.messages.email.Send").as_deref(),
            Some("users.messages.email.Send")
        );
        assert_eq!(
            event_type_from_schema_name("dataexport.S3.inner.agentconsole.AgentExecuted")
                .as_deref(),
            Some("agentconsole.AgentExecuted")
        );
        assert_eq!(event_type_from_schema_name("com.example.Other"), None);
    }

    #[test]
    fn flat_record_becomes_http_shape() {
        let fields = json!({"id": "e1", "time": 1700000000, "user_id": "b1", "external_user_id": "u1",
            "timezone": "UTC", "name": "Played", "properties": "{\"level\":3}", "app_id": "a"});
        let event = to_http_event(CUSTOM_EVENT_TYPE, fields.as_object().unwrap().clone());
        assert_eq!(
            event,
            json!({"event_type": CUSTOM_EVENT_TYPE, "id": "e1", "time": 1700000000,
                "user": {"user_id": "b1", "external_user_id": "u1", "timezone": "UTC"},
                "properties": {"name": "Played", "custom_properties": "{\"level\":3}", "app_id": "a"}})
        );
        let purchase = to_http_event(
            "users.behaviors.Purchase",
            json!({"id": "p", "properties": "{}"})
                .as_object()
                .unwrap()
                .clone(),
        );
        assert_eq!(purchase["properties"]["purchase_properties"], "{}");
    }

    #[test]
    fn floats_keep_their_decimal_value() {
        assert_eq!(to_json(AvroValue::Float(9.99)), json!(9.99));
        assert_eq!(
            to_json(AvroValue::Union(1, Box::new(AvroValue::String("x".into())))),
            json!("x")
        );
        assert_eq!(
            to_json(AvroValue::Union(0, Box::new(AvroValue::Null))),
            Value::Null
        );
    }

    /// Maps every file of Braze's public sample repository `Appboy/currents-examples`, whose
    /// license forbids committing it. Run it locally with
    /// `CURRENTS_EXAMPLES_DIR=<clone>/sample-data/Avro cargo test -- --ignored braze_sample`.
    #[test]
    #[ignore = "needs a local copy of Braze's sample Avro files"]
    fn braze_sample_files_map() {
        let dir = std::env::var("CURRENTS_EXAMPLES_DIR").expect("set CURRENTS_EXAMPLES_DIR");
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(!files.is_empty());
        let mut raw_names = Vec::new();
        for path in files {
            let file = read_file(&path).unwrap_or_else(|e| panic!("{e}"));
            assert!(!file.events.is_empty(), "{}", path.display());
            for event in &file.events {
                let mapped = crate::braze::currents::map_event(event)
                    .unwrap_or_else(|e| panic!("{}: {e}: {event}", path.display()));
                if mapped.name == file.event_type {
                    raw_names.push(file.event_type.clone());
                }
                assert_eq!(mapped.insert_id.len(), 32);
            }
        }
        raw_names.dedup();
        println!("types without a documented name: {raw_names:?}");
    }
}
