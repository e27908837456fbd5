//! Events in the form a store writes them: the columns, the two facts that the MTU rollup reads
//! from the properties, and the properties as JSON text.
//!
//! A batch keeps the texts of all its events in one buffer, so encoding a batch allocates once
//! instead of once per event. Encoding happens before a store takes its write lock, so that
//! concurrent requests do this work in parallel.

use serde_json::Value;

use super::{NewEvent, StoreError, StoreResult};

/// The columns of one encoded event.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedEvent {
    pub event: String,
    pub distinct_id: String,
    pub time_ms: i64,
    pub insert_id: String,
    /// The `$partner_id` property, which marks events that a partner such as Braze sent.
    pub partner_id: Option<String>,
    /// Whether the `$import` property is `true`, as on events that came through `/import`.
    pub imported: bool,
}

impl EncodedEvent {
    /// Takes the columns of `event`, reading `$partner_id` and `$import` from its properties.
    pub fn columns_of(event: &NewEvent) -> Self {
        Self {
            event: event.event.clone(),
            distinct_id: event.distinct_id.clone(),
            time_ms: event.time_ms,
            insert_id: event.insert_id.clone(),
            partner_id: event.partner_id().map(str::to_owned),
            imported: event
                .properties
                .get("$import")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        }
    }
}

/// Encoded events of one batch, in order, with their properties' texts in one buffer.
#[derive(Debug, Default)]
pub struct EncodedEvents {
    events: Vec<EncodedEvent>,
    text: String,
    /// The end offset of each event's text in `text`.
    ends: Vec<usize>,
}

impl EncodedEvents {
    /// Encodes `events`, serialising each one's properties.
    pub fn encode(events: &[NewEvent]) -> StoreResult<Self> {
        // Most events of the SDKs serialise to a few hundred bytes.
        let mut builder = EncodedEventsBuilder::with_capacity(events.len(), events.len() * 512);
        for event in events {
            builder.push_event(event)?;
        }
        builder.finish()
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Returns the event at `index` and its properties as JSON text.
    pub fn get(&self, index: usize) -> (&EncodedEvent, &str) {
        let start = index.checked_sub(1).map_or(0, |before| self.ends[before]);
        (&self.events[index], &self.text[start..self.ends[index]])
    }

    /// Iterates over the events in order, each with its properties as JSON text.
    pub fn iter(&self) -> impl Iterator<Item = (&EncodedEvent, &str)> {
        (0..self.len()).map(|index| self.get(index))
    }
}

/// Builds [`EncodedEvents`] one event at a time.
#[derive(Debug, Default)]
pub struct EncodedEventsBuilder {
    events: Vec<EncodedEvent>,
    buffer: Vec<u8>,
    ends: Vec<usize>,
}

impl EncodedEventsBuilder {
    pub fn with_capacity(events: usize, text_bytes: usize) -> Self {
        Self {
            events: Vec::with_capacity(events),
            buffer: Vec::with_capacity(text_bytes),
            ends: Vec::with_capacity(events),
        }
    }

    /// Appends an event: `write` appends its properties to the buffer as one JSON object and
    /// returns its columns. When `write` fails, whatever it appended is removed and its error
    /// is returned.
    pub fn push_with<E>(
        &mut self,
        write: impl FnOnce(&mut Vec<u8>) -> Result<EncodedEvent, E>,
    ) -> Result<(), E> {
        let start = self.buffer.len();
        match write(&mut self.buffer) {
            Ok(event) => {
                self.events.push(event);
                self.ends.push(self.buffer.len());
                Ok(())
            }
            Err(error) => {
                self.buffer.truncate(start);
                Err(error)
            }
        }
    }

    /// Appends `event`, serialising its properties.
    pub fn push_event(&mut self, event: &NewEvent) -> StoreResult<()> {
        self.push_with(|buffer| {
            serde_json::to_writer(buffer, &event.properties)?;
            Ok(EncodedEvent::columns_of(event))
        })
    }

    /// Checks once that the whole buffer is UTF-8 and returns the batch.
    pub fn finish(self) -> StoreResult<EncodedEvents> {
        let text = String::from_utf8(self.buffer)
            .map_err(|e| StoreError::Task(format!("serialised properties are not UTF-8: {e}")))?;
        Ok(EncodedEvents {
            events: self.events,
            text,
            ends: self.ends,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn event(properties: Value) -> NewEvent {
        NewEvent {
            event: "e".into(),
            distinct_id: "u".into(),
            time_ms: 0,
            insert_id: "i".into(),
            properties: properties.as_object().unwrap().clone(),
        }
    }

    #[test]
    fn encoded_texts_hold_each_event_apart() {
        let events = [
            event(json!({"a": 1, "text": "é"})),
            event(json!({})),
            event(json!({"b": [true, null], "$partner_id": "braze", "$import": true})),
        ];
        let encoded = EncodedEvents::encode(&events).unwrap();
        assert_eq!(encoded.len(), 3);
        assert_eq!(encoded.get(0).1, r#"{"a":1,"text":"é"}"#);
        assert_eq!(encoded.get(1).1, "{}");
        assert_eq!(
            encoded.get(2).1,
            r#"{"b":[true,null],"$partner_id":"braze","$import":true}"#
        );
        assert_eq!(encoded.get(0).0.partner_id, None);
        assert!(!encoded.get(0).0.imported);
        assert_eq!(encoded.get(2).0.partner_id.as_deref(), Some("braze"));
        assert!(encoded.get(2).0.imported);
    }

    #[test]
    fn failed_write_leaves_no_text() {
        let mut builder = EncodedEventsBuilder::default();
        let columns = EncodedEvent::columns_of(&event(json!({})));
        let write = |text: &'static [u8], ok: bool| {
            let columns = columns.clone();
            move |buffer: &mut Vec<u8>| {
                buffer.extend_from_slice(text);
                if ok {
                    Ok(columns)
                } else {
                    Err(())
                }
            }
        };
        builder.push_with(write(b"{\"a\":1}", true)).unwrap();
        assert!(builder.push_with(write(b"{\"half", false)).is_err());
        builder.push_with(write(b"{}", true)).unwrap();
        let encoded = builder.finish().unwrap();
        assert_eq!(encoded.len(), 2);
        assert_eq!(encoded.get(0).1, r#"{"a":1}"#);
        assert_eq!(encoded.get(1).1, "{}");
    }
}
