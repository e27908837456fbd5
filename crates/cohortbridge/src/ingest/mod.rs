//! Mixpanel-compatible ingestion: request decoding, event validation and profile updates.
//! The HTTP handlers live in `api::ingest`; this module has no I/O.

pub mod decode;
pub mod engage;
pub mod event;
pub mod groups;
pub mod import_text;
pub mod local_time;
pub mod ndjson;

use serde::Serialize;

use crate::identity::FieldError;

/// One rejected record, reported as Mixpanel's `/import` reports it in `failed_records`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RecordFailure {
    pub index: usize,
    #[serde(rename = "$insert_id", skip_serializing_if = "Option::is_none")]
    pub insert_id: Option<String>,
    pub field: String,
    pub message: String,
}

impl RecordFailure {
    pub fn new(index: usize, record: &serde_json::Value, error: FieldError) -> Self {
        let insert_id = record
            .pointer("/properties/$insert_id")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned);
        Self {
            index,
            insert_id,
            field: error.field,
            message: error.message,
        }
    }
}
