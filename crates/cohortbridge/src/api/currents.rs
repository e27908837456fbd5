//! `POST /currents`: Braze Currents HTTP connector batches.
//!
//! Our status codes drive Braze's retries, so a 2xx is sent only after the batch is durably
//! stored. An event that cannot be mapped is quarantined (kept whole with the reason) while
//! the batch still gets a 2xx, because a 400 would make Braze split the batch and then drop
//! events.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::AppState;
use crate::braze::currents;
use crate::identity;
use crate::ingest::decode::{self, DecodeError};
use crate::ingest::event;
use crate::secrets;
use crate::store::NewEvent;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/currents", post(receive))
        .route("/currents/", post(receive))
}

fn reply(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

fn unavailable(error: impl std::fmt::Display) -> Response {
    tracing::error!(error = %error, "Currents batch not stored; Braze will retry");
    let mut response = reply(
        StatusCode::SERVICE_UNAVAILABLE,
        json!({"error": "storage is unavailable; retry later"}),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("30"));
    response
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Applies the rules every stored event follows: a time from 1971 to one hour ahead of `now`,
/// and a distinct id that is empty (unattributed) or a real id, not blank or a placeholder.
/// `sent_time` is the event's `time` as Braze sent it, for the error message.
fn check_mapped(
    mapped: currents::MappedEvent,
    sent_time: Option<&Value>,
    now_ms: i64,
) -> Result<NewEvent, String> {
    if mapped.name.chars().count() > event::MAX_EVENT_NAME_LEN {
        return Err(format!(
            "event name is longer than {} characters",
            event::MAX_EVENT_NAME_LEN
        ));
    }
    if mapped.time_ms < event::MIN_EVENT_TIME_MS || mapped.time_ms > now_ms + event::MAX_FUTURE_MS {
        let sent = sent_time.map_or_else(|| mapped.time_ms.to_string(), Value::to_string);
        return Err(format!(
            "time {sent} is not between 1971-01-01 and one hour from now. \
             The time is expected in seconds since the Unix epoch, not in milliseconds"
        ));
    }
    if let Err(error) = identity::reject_nul(&mapped.name, "event name")
        .and_then(|()| identity::reject_nul(&mapped.distinct_id, "user.external_user_id"))
    {
        return Err(error.message);
    }
    // The empty id marks an unattributed event; a blank or placeholder id is a bad one.
    let blank = !mapped.distinct_id.is_empty() && mapped.distinct_id.trim().is_empty();
    if blank || identity::is_placeholder(&mapped.distinct_id) {
        return Err(format!(
            "user.external_user_id {:?} is blank or a placeholder value",
            mapped.distinct_id
        ));
    }
    Ok(NewEvent {
        event: mapped.name,
        distinct_id: mapped.distinct_id,
        time_ms: mapped.time_ms,
        insert_id: mapped.insert_id,
        properties: mapped.properties,
    })
}

async fn receive(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(token) = bearer(&headers) else {
        return reply(
            StatusCode::UNAUTHORIZED,
            json!({"error": "missing `Authorization: Bearer <Currents token>`"}),
        );
    };
    let project = match state
        .store
        .project_by_currents_token_hash(&secrets::hash(token))
        .await
    {
        Ok(Some(project)) => project,
        Ok(None) => {
            return reply(
                StatusCode::UNAUTHORIZED,
                json!({"error": "the bearer token is not the Currents token of any project"}),
            )
        }
        Err(e) => return unavailable(e),
    };

    let content_encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok());
    let records = match decode::decode(None, Some("application/json"), content_encoding, &body) {
        Ok(decoded) => decoded.records,
        Err(DecodeError::TooLarge { limit }) => {
            return reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": format!("batch is larger than {limit} bytes uncompressed")}),
            )
        }
        Err(DecodeError::Empty) => Vec::new(),
        Err(e @ DecodeError::UnsupportedEncoding { .. }) => {
            return reply(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                json!({"error": e.to_string()}),
            )
        }
        Err(e) => {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({"error": format!("batch is not valid JSON: {e}")}),
            )
        }
    };
    if body.trim_ascii_start().starts_with(b"[") {
        return reply(
            StatusCode::BAD_REQUEST,
            json!({"error": "batch must be an object with an `events` array, not an array"}),
        );
    }
    let events = match records.as_slice() {
        [] => Vec::new(),
        [batch] => match batch.get("events") {
            Some(Value::Array(events)) => events.clone(),
            _ => {
                return reply(
                    StatusCode::BAD_REQUEST,
                    json!({"error": "batch must be an object with an `events` array"}),
                )
            }
        },
        _ => {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({"error": "batch must be one object with an `events` array"}),
            )
        }
    };

    let now = chrono::Utc::now().timestamp_millis();
    let mut stored = Vec::new();
    let mut quarantined = Vec::new();
    for raw in &events {
        let mapped = currents::map_event(raw)
            .map_err(|e| e.to_string())
            .and_then(|mapped| check_mapped(mapped, raw.get("time"), now));
        match mapped {
            Ok(event) => stored.push(event),
            Err(reason) => quarantined.push((raw.to_string(), reason)),
        }
    }
    let (accepted, rejected) = (stored.len(), quarantined.len());
    if !stored.is_empty() {
        if let Err(e) = state
            .store
            .write_events(project.id, stored, Vec::new(), now)
            .await
        {
            return unavailable(e);
        }
    }
    if !quarantined.is_empty() {
        tracing::warn!(project_id = project.id, quarantined = rejected, first_error = %quarantined[0].1, "Currents events quarantined");
        if let Err(e) = state
            .store
            .quarantine_currents(project.id, quarantined, now)
            .await
        {
            return unavailable(e);
        }
    }
    reply(
        StatusCode::OK,
        json!({"accepted": accepted, "quarantined": rejected}),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn time_in_milliseconds_is_shown_as_sent() {
        let event = json!({"event_type": "users.messages.email.Open", "id": "ms-1",
            "time": 1_796_410_861_000_i64, "user": {"external_user_id": "u-a"}, "properties": {}});
        let mapped = currents::map_event(&event).unwrap();
        let now_ms = 1_796_410_861_000;

        let reason = check_mapped(mapped, event.get("time"), now_ms).unwrap_err();

        assert!(
            reason.starts_with("time 1796410861000 is not between"),
            "{reason}"
        );
        assert!(reason.contains("in seconds"), "{reason}");
        assert!(!reason.contains("1796410861000000"), "{reason}");
    }
}
