//! `GET /api/2.0/export`: Mixpanel's raw event export, one JSON event per line, authenticated
//! with HTTP Basic like `/import`. The output is what `cohortbridge import events` and `/import`
//! read, so exporting and importing again reproduces the events.
//!
//! Parameters: `from_date` and `to_date` (`YYYY-MM-DD`, both days included, in UTC), `event`
//! (a JSON array of event names), `limit` (at most 100,000), and `time_in_ms=true` for `time`
//! in integer milliseconds. Without it `time` is in seconds, with a fraction only when the
//! stored time has milliseconds, so no precision is lost. The body is gzip-compressed when the
//! request's `Accept-Encoding` allows gzip.

use std::io::Write;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::NaiveDate;
use flate2::write::GzEncoder;
use serde_json::{Map, Value};

use super::ingest::basic_credentials;
use super::AppState;
use crate::secrets;
use crate::store::{NewEvent, Project, StoreError};

/// Mixpanel's maximum for `limit`.
const MAX_LIMIT: i64 = 100_000;
const DAY_MS: i64 = 86_400_000;

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/2.0/export", get(export))
}

/// Finds the project whose API secret is the user or the password of the request's HTTP Basic
/// credentials. The project token, which is public, never reads data.
pub(super) async fn secret_project(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<Project>, StoreError> {
    let Some((user, password)) = basic_credentials(headers) else {
        return Ok(None);
    };
    for candidate in [user, password] {
        if candidate.is_empty() {
            continue;
        }
        let found = state
            .store
            .project_by_api_secret_hash(&secrets::hash(&candidate))
            .await?;
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(None)
}

fn error(status: StatusCode, message: String) -> Response {
    (status, message).into_response()
}

/// Parameters of one export request, validated.
#[derive(Debug, PartialEq)]
struct ExportQuery {
    from_ms: i64,
    to_ms: i64,
    names: Option<Vec<String>>,
    limit: Option<i64>,
    time_in_ms: bool,
}

fn parse_query(query: Option<&str>) -> Result<ExportQuery, String> {
    let pairs: Vec<(String, String)> = query
        .map(serde_urlencoded::from_str)
        .transpose()
        .map_err(|e| format!("query string is not URL-encoded: {e}"))?
        .unwrap_or_default();
    let param = |name: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    let date = |name: &str| -> Result<i64, String> {
        let text = param(name).ok_or_else(|| format!("parameter `{name}` is missing"))?;
        let day = NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .map_err(|_| format!("parameter `{name}` {text:?} is not a date as YYYY-MM-DD"))?;
        Ok(day
            .and_hms_opt(0, 0, 0)
            .expect("midnight exists")
            .and_utc()
            .timestamp_millis())
    };
    let from_ms = date("from_date")?;
    let to_ms = date("to_date")? + DAY_MS;
    if to_ms <= from_ms {
        return Err("parameter `to_date` is before `from_date`".into());
    }
    let names = match param("event") {
        None => None,
        Some(text) => Some(serde_json::from_str::<Vec<String>>(text).map_err(|_| {
            format!("parameter `event` {text:?} is not a JSON array of event names")
        })?),
    };
    let limit = match param("limit") {
        None => None,
        Some(text) => match text.parse::<i64>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Some(n),
            _ => {
                return Err(format!(
                    "parameter `limit` {text:?} is not a whole number from 1 to {MAX_LIMIT}"
                ))
            }
        },
    };
    let time_in_ms = matches!(param("time_in_ms"), Some("true" | "1"));
    Ok(ExportQuery {
        from_ms,
        to_ms,
        names,
        limit,
        time_in_ms,
    })
}

/// Builds one export line: the event with `time`, `distinct_id` and `$insert_id` put back
/// among its properties.
fn export_line(event: NewEvent, time_in_ms: bool) -> Vec<u8> {
    let time = if time_in_ms {
        Value::from(event.time_ms)
    } else if event.time_ms % 1000 == 0 {
        Value::from(event.time_ms / 1000)
    } else {
        Value::from(event.time_ms as f64 / 1000.0)
    };
    let mut properties = Map::with_capacity(event.properties.len() + 3);
    properties.insert("time".into(), time);
    properties.insert("distinct_id".into(), Value::from(event.distinct_id));
    properties.insert("$insert_id".into(), Value::from(event.insert_id));
    properties.extend(event.properties);
    let mut record = Map::with_capacity(2);
    record.insert("event".into(), Value::from(event.event));
    record.insert("properties".into(), Value::Object(properties));
    // serde_json escapes control characters, so no record contains a raw line break.
    let mut line = crate::ingest::ndjson::line(&record).expect("a JSON value serialises");
    line.push(b'\n');
    line
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|coding| {
            let mut parts = coding.trim().split(';');
            let name = parts.next().unwrap_or_default().trim();
            let rejected = parts.any(|p| matches!(p.trim(), "q=0" | "q=0.0" | "q=0.00"));
            name.eq_ignore_ascii_case("gzip") && !rejected
        })
}

async fn export(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let project = match secret_project(&state, &headers).await {
        Ok(Some(project)) => project,
        Ok(None) => {
            return error(
                StatusCode::UNAUTHORIZED,
                "authenticate with HTTP Basic: the project's API secret as user or as password"
                    .into(),
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "export could not look up credentials");
            let mut response = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage is unavailable; retry later".into(),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            return response;
        }
    };
    let params = match parse_query(query.as_deref()) {
        Ok(params) => params,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    // NOTE: the whole result is held in memory; `limit` bounds it, a missing `limit` does not.
    let events = match state
        .store
        .export_events(
            project.id,
            params.from_ms,
            params.to_ms,
            params.names,
            params.limit,
        )
        .await
    {
        Ok(events) => events,
        Err(e) => {
            tracing::error!(project_id = project.id, error = %e, "export failed to read events");
            let mut response = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage is unavailable; retry later".into(),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            return response;
        }
    };
    let mut body = Vec::new();
    for event in events {
        body.extend(export_line(event, params.time_in_ms));
    }
    let mut response_headers = HeaderMap::new();
    response_headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    if accepts_gzip(&headers) {
        let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let compressed = encoder
            .write_all(&body)
            .and_then(|()| encoder.finish())
            .expect("writing to memory cannot fail");
        response_headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        return (StatusCode::OK, response_headers, Bytes::from(compressed)).into_response();
    }
    (StatusCode::OK, response_headers, Bytes::from(body)).into_response()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn query_is_validated() {
        let query = parse_query(Some(
            "from_date=2023-11-14&to_date=2023-11-15&event=%5B%22a%22%5D&limit=5",
        ))
        .unwrap();
        assert_eq!(query.from_ms, 1_699_920_000_000);
        assert_eq!(query.to_ms, 1_699_920_000_000 + 2 * DAY_MS);
        assert_eq!(query.names, Some(vec!["a".to_owned()]));
        assert_eq!(query.limit, Some(5));
        for (text, expected) in [
            ("to_date=2023-11-15", "from_date"),
            ("from_date=2023-13-01&to_date=2023-11-15", "from_date"),
            ("from_date=2023-11-15&to_date=2023-11-14", "before"),
            ("from_date=2023-11-14&to_date=2023-11-15&event=a", "event"),
            ("from_date=2023-11-14&to_date=2023-11-15&limit=0", "limit"),
        ] {
            let message = parse_query(Some(text)).unwrap_err();
            assert!(message.contains(expected), "{text}: {message}");
        }
    }

    #[test]
    fn export_line_keeps_milliseconds() {
        let event = NewEvent {
            event: "e".into(),
            distinct_id: "u".into(),
            time_ms: 1_700_000_000_123,
            insert_id: "i".into(),
            properties: json!({"k": "a\u{2028}b"}).as_object().unwrap().clone(),
        };
        let line = export_line(event.clone(), false);
        let text = String::from_utf8(line).unwrap();
        assert!(text.ends_with('\n'));
        assert_eq!(text.matches('\n').count(), 1);
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["properties"]["time"], 1_700_000_000.123);
        assert_eq!(value["properties"]["k"], "a\u{2028}b");
        let value: Value = serde_json::from_slice(&export_line(event, true)).unwrap();
        assert_eq!(value["properties"]["time"], 1_700_000_000_123_i64);
    }

    #[test]
    fn gzip_follows_accept_encoding() {
        let mut headers = HeaderMap::new();
        assert!(!accepts_gzip(&headers));
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("br, gzip;q=0.8"),
        );
        assert!(accepts_gzip(&headers));
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip;q=0"),
        );
        assert!(!accepts_gzip(&headers));
    }
}
