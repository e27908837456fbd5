//! Injected faults: queued responses that replace normal processing of partner
//! requests, for retry and timeout tests.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

/// The body of `POST /_emulator/faults`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FaultSpec {
    /// Status of the injected response. Without it the request is delayed by
    /// `delay_ms` and then processed normally.
    pub status: Option<u16>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Response body, sent as is (JSON, HTML or plain text).
    #[serde(default)]
    pub body: String,
    /// Number of partner requests the fault applies to (default 1).
    pub times: Option<u32>,
    /// Delay in milliseconds before the response is sent.
    pub delay_ms: Option<u64>,
    /// Close the connection after the delay without sending any response.
    #[serde(default)]
    pub drop_connection: bool,
}

/// A validated fault with the number of requests it still applies to.
#[derive(Debug, Clone)]
pub(crate) struct Fault {
    response: Option<FaultResponse>,
    delay: Duration,
    drop_connection: bool,
    remaining: u32,
}

/// A canned response of an injected fault.
#[derive(Debug, Clone)]
pub(crate) struct FaultResponse {
    pub status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl IntoResponse for FaultResponse {
    fn into_response(self) -> Response {
        (self.status, self.headers, self.body).into_response()
    }
}

/// The delay and response the fault queue assigns to the next partner request.
#[derive(Debug, Clone)]
pub(crate) struct FaultAction {
    pub delay: Duration,
    /// `None` when the fault only delays the request.
    pub response: Option<FaultResponse>,
    /// Whether to close the connection without a response.
    pub drop_connection: bool,
}

impl FaultSpec {
    /// Validates the spec. The error text names the invalid field and value.
    pub(crate) fn into_fault(self) -> Result<Fault, String> {
        let times = self.times.unwrap_or(1);
        if times == 0 {
            return Err("times must be at least 1".to_owned());
        }
        if self.drop_connection && self.status.is_some() {
            return Err(
                "a fault with drop_connection sends no response, so it takes no status".to_owned(),
            );
        }
        if self.status.is_none() && self.delay_ms.is_none() && !self.drop_connection {
            return Err(
                "a fault needs a status, a delay_ms, drop_connection, or a combination".to_owned(),
            );
        }
        let delay = Duration::from_millis(self.delay_ms.unwrap_or(0));
        let response = match self.status {
            None => None,
            Some(code) => Some(build_response(code, &self.headers, self.body)?),
        };
        Ok(Fault {
            response,
            delay,
            drop_connection: self.drop_connection,
            remaining: times,
        })
    }
}

fn build_response(
    code: u16,
    header_fields: &BTreeMap<String, String>,
    body: String,
) -> Result<FaultResponse, String> {
    // 1xx codes are excluded because they are not final responses.
    let status = StatusCode::from_u16(code)
        .ok()
        .filter(|status| (200..600).contains(&status.as_u16()))
        .ok_or_else(|| format!("status {code} is invalid; use a code from 200 to 599"))?;

    let mut headers = HeaderMap::new();
    for (name, value) in header_fields {
        let header_name = HeaderName::try_from(name.as_str())
            .map_err(|_| format!("header name {name:?} is invalid"))?;
        let header_value = HeaderValue::try_from(value.as_str())
            .map_err(|_| format!("value {value:?} of header {name:?} is invalid"))?;
        headers.append(header_name, header_value);
    }
    if !body.is_empty() && !headers.contains_key(CONTENT_TYPE) {
        let content_type = if serde_json::from_str::<serde_json::Value>(&body).is_ok() {
            "application/json"
        } else {
            "text/plain; charset=utf-8"
        };
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    Ok(FaultResponse {
        status,
        headers,
        body,
    })
}

/// Faults in the order they were queued.
#[derive(Debug, Default)]
pub(crate) struct FaultQueue {
    faults: VecDeque<Fault>,
}

impl FaultQueue {
    pub fn push(&mut self, fault: Fault) {
        self.faults.push_back(fault);
    }

    pub fn clear(&mut self) {
        self.faults.clear();
    }

    /// Returns the number of partner requests that will still receive a fault.
    pub fn pending_requests(&self) -> u64 {
        self.faults
            .iter()
            .map(|fault| u64::from(fault.remaining))
            .sum()
    }

    /// Takes the action for the next partner request, consuming one use of the
    /// oldest fault.
    pub fn take_next(&mut self) -> Option<FaultAction> {
        let front = self.faults.front_mut()?;
        let action = FaultAction {
            delay: front.delay,
            response: front.response.clone(),
            drop_connection: front.drop_connection,
        };
        front.remaining -= 1;
        if front.remaining == 0 {
            self.faults.pop_front();
        }
        Some(action)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(status: Option<u16>, times: Option<u32>, delay_ms: Option<u64>) -> FaultSpec {
        FaultSpec {
            status,
            headers: BTreeMap::new(),
            body: String::new(),
            times,
            delay_ms,
            drop_connection: false,
        }
    }

    #[test]
    fn into_fault_rejects_zero_times() {
        let error = spec(Some(503), Some(0), None).into_fault().unwrap_err();
        assert_eq!(error, "times must be at least 1");
    }

    #[test]
    fn into_fault_rejects_informational_status() {
        let error = spec(Some(101), None, None).into_fault().unwrap_err();
        assert_eq!(error, "status 101 is invalid; use a code from 200 to 599");
    }

    #[test]
    fn into_fault_rejects_empty_spec() {
        assert!(spec(None, None, None).into_fault().is_err());
    }

    #[test]
    fn into_fault_rejects_bad_header_name() {
        let mut bad = spec(Some(429), None, None);
        bad.headers.insert("bad header".into(), "1".into());
        let error = bad.into_fault().unwrap_err();
        assert_eq!(error, "header name \"bad header\" is invalid");
    }

    #[test]
    fn queue_serves_each_fault_times_then_next() {
        let mut queue = FaultQueue::default();
        queue.push(spec(Some(429), Some(2), None).into_fault().unwrap());
        queue.push(spec(Some(503), None, None).into_fault().unwrap());
        assert_eq!(queue.pending_requests(), 3);

        let statuses: Vec<Option<u16>> = (0..4)
            .map(|_| {
                queue
                    .take_next()
                    .map(|action| action.response.map_or(0, |r| r.status.as_u16()))
            })
            .collect();
        assert_eq!(statuses, [Some(429), Some(429), Some(503), None]);
    }

    #[test]
    fn delay_only_fault_has_no_response() {
        let mut queue = FaultQueue::default();
        queue.push(spec(None, None, Some(250)).into_fault().unwrap());
        let action = queue.take_next().expect("one fault queued");
        assert!(action.response.is_none());
        assert_eq!(action.delay, Duration::from_millis(250));
    }
}
