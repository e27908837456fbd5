//! Client of Braze's partner cohort import API, with the retry rules of a good Braze citizen.
//!
//! - 2xx (including 202 `queued`): success.
//! - 429: wait until `x-ratelimit-reset` (UTC epoch seconds) or `Retry-After` (seconds or an
//!   HTTP date), never less than the rate-limit floor, plus jitter; then resend the same body.
//! - 5xx, 423, timeouts and connection errors: exponential backoff with full jitter.
//! - Any other status (400, 401, 403, 404, ...): no retry; the caller pauses the sync.
//!
//! Both retry kinds stop after `RetryPolicy::max_attempts`. Secrets never reach a log or an
//! error message: Braze echoes the client secret in some 401 messages, so messages are redacted.

use std::time::Duration;

use rand::Rng;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde::Serialize;
use serde_json::{json, Value};

/// Braze accepts at most this many ids in one `cohorts/users` request.
pub const MAX_IDS_PER_REQUEST: usize = 1000;

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// Minimum wait after a 429, whatever its headers request.
    pub rate_limit_floor: Duration,
    /// Maximum wait a 429 may impose on one request. A longer wait ends the request with
    /// `BrazeError::RateLimited`, so the run gives its connection back and a later run retries.
    pub max_rate_limit_wait: Duration,
    pub request_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(60),
            rate_limit_floor: Duration::from_secs(1),
            max_rate_limit_wait: Duration::from_secs(300),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// The secrets of one request: the operator's partner credentials and the connection's key.
#[derive(Clone)]
pub struct Credentials {
    pub partner_name: String,
    pub partner_api_key: String,
    pub data_import_key: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("partner_name", &self.partner_name)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BrazeError {
    /// Braze refused the request; resending it unchanged cannot succeed.
    #[error("Braze rejected the request with HTTP {status}: {message}")]
    Rejected { status: u16, message: String },
    /// Braze asked for a wait longer than `RetryPolicy::max_rate_limit_wait`.
    #[error("Braze rate-limited the request for {wait_secs} s, longer than this client waits; a later run retries")]
    RateLimited { wait_secs: u64 },
    /// Every attempt failed with a retryable error.
    #[error("Braze did not accept the request after {attempts} attempts; last error: {last}")]
    GaveUp { attempts: u32, last: String },
}

/// Maximum time a credentials check waits for a TCP (and TLS) connection to Braze.
pub const PROBE_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone)]
pub struct BrazeClient {
    http: reqwest::Client,
    /// The client of credentials checks, with a connect timeout of `PROBE_CONNECT_TIMEOUT`.
    probe_http: reqwest::Client,
    policy: RetryPolicy,
    metrics: Option<std::sync::Arc<crate::sync::SyncMetrics>>,
}

enum Attempt {
    /// Success, with the response body.
    Done(String),
    Fatal(BrazeError),
    Retry {
        delay: Duration,
        reason: String,
    },
}

impl BrazeClient {
    pub fn new(policy: RetryPolicy) -> Self {
        let builder = || {
            reqwest::Client::builder()
                .timeout(policy.request_timeout)
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("cohortbridge/", env!("CARGO_PKG_VERSION")))
        };
        let http = builder()
            .build()
            .expect("a client with a timeout and no redirects builds");
        let probe_http = builder()
            .connect_timeout(PROBE_CONNECT_TIMEOUT)
            .build()
            .expect("a client with timeouts and no redirects builds");
        Self {
            http,
            probe_http,
            policy,
            metrics: None,
        }
    }

    /// Makes the client count its requests and retries in `metrics`.
    pub fn with_metrics(mut self, metrics: std::sync::Arc<crate::sync::SyncMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn count_request(&self, url: &str, status: &str) {
        if let Some(metrics) = &self.metrics {
            let endpoint = if url.ends_with("/cohorts/users") {
                "cohorts/users"
            } else if url.ends_with("/cohorts") {
                "cohorts"
            } else if url.ends_with("/users/track") {
                "users/track"
            } else {
                "other"
            };
            metrics
                .braze_requests
                .with_label_values(&[endpoint, status])
                .inc();
        }
    }

    /// Creates the cohort, or renames it when it exists. Returns how many times the request
    /// was resent after a retryable failure.
    pub async fn create_cohort(
        &self,
        base_url: &str,
        credentials: &Credentials,
        cohort_id: &str,
        name: &str,
        created_at: &str,
    ) -> Result<u32, BrazeError> {
        let body = json!({
            "partner_api_key": credentials.partner_api_key,
            "client_secret": credentials.data_import_key,
            "cohort_id": cohort_id,
            "name": name,
            "created_at": created_at,
        });
        self.post(
            &endpoint(base_url, credentials, "cohorts"),
            body,
            credentials,
        )
        .await
    }

    /// Sends one batch of membership changes: adds and removes as separate `cohort_changes`
    /// objects, at most `MAX_IDS_PER_REQUEST` ids in total. Returns how many times the request
    /// was resent after a retryable failure.
    ///
    /// # Panics
    ///
    /// When the batch is over the limit, or an id appears twice in it (in one list, or in both),
    /// because Braze would apply such a request in an order the caller did not choose.
    pub async fn update_members(
        &self,
        base_url: &str,
        credentials: &Credentials,
        cohort_id: &str,
        added: &[&str],
        removed: &[&str],
    ) -> Result<u32, BrazeError> {
        let body = cohort_changes_body(credentials, cohort_id, added, removed);
        self.post_bytes(
            &endpoint(base_url, credentials, "cohorts/users"),
            body,
            credentials,
            None,
        )
        .await
        .map(|(retries, _)| retries)
    }

    /// Checks credentials with an empty `cohort_changes`, which Braze accepts without effect.
    /// The check is one attempt, and connecting may take at most `PROBE_CONNECT_TIMEOUT`, so
    /// that an unreachable URL fails fast while an operator waits for the reply.
    pub async fn probe(&self, base_url: &str, credentials: &Credentials) -> Result<(), BrazeError> {
        let body = cohort_changes_body(credentials, "cohortbridge-credentials-check", &[], &[]);
        let url = endpoint(base_url, credentials, "cohorts/users");
        self.probe_once(&url, body, credentials, None).await
    }

    /// Sends one probe request with the probe's connect timeout and no retry.
    pub(crate) async fn probe_once(
        &self,
        url: &str,
        body: Vec<u8>,
        credentials: &Credentials,
        bearer: Option<&str>,
    ) -> Result<(), BrazeError> {
        let request = self.probe_http.post(url);
        match self
            .attempt_with(request, url, body, credentials, bearer, 1)
            .await
        {
            Attempt::Done(_) => Ok(()),
            Attempt::Fatal(error) => Err(error),
            Attempt::Retry { reason, .. } => Err(BrazeError::GaveUp {
                attempts: 1,
                last: reason,
            }),
        }
    }

    async fn post(
        &self,
        url: &str,
        body: Value,
        credentials: &Credentials,
    ) -> Result<u32, BrazeError> {
        self.post_with(url, body, credentials, None)
            .await
            .map(|(retries, _)| retries)
    }

    /// Sends `body` with the retry rules, optionally with `Authorization: Bearer <bearer>`.
    /// Returns the retries made and the body of the successful response.
    pub(crate) async fn post_with(
        &self,
        url: &str,
        body: Value,
        credentials: &Credentials,
        bearer: Option<&str>,
    ) -> Result<(u32, String), BrazeError> {
        let body = serde_json::to_vec(&body).expect("a JSON value serializes");
        self.post_bytes(url, body, credentials, bearer).await
    }

    /// Sends a serialized JSON `body` with the retry rules; see `post_with`.
    async fn post_bytes(
        &self,
        url: &str,
        body: Vec<u8>,
        credentials: &Credentials,
        bearer: Option<&str>,
    ) -> Result<(u32, String), BrazeError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let request = self.http.post(url);
            let sent = self
                .attempt_with(request, url, body.clone(), credentials, bearer, attempt)
                .await;
            match sent {
                Attempt::Done(text) => return Ok((attempt - 1, text)),
                Attempt::Fatal(error) => return Err(error),
                Attempt::Retry { reason, .. } if attempt >= self.policy.max_attempts => {
                    return Err(BrazeError::GaveUp {
                        attempts: attempt,
                        last: reason,
                    });
                }
                Attempt::Retry { delay, reason } => {
                    if let Some(metrics) = &self.metrics {
                        metrics.retries.inc();
                    }
                    tracing::warn!(
                        url,
                        attempt,
                        delay_ms = delay.as_millis() as u64,
                        reason,
                        "Braze request failed; retrying"
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn attempt_with(
        &self,
        request: reqwest::RequestBuilder,
        url: &str,
        body: Vec<u8>,
        credentials: &Credentials,
        bearer: Option<&str>,
        attempt: u32,
    ) -> Attempt {
        let mut request = request
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => {
                let kind = if e.is_connect() && e.is_timeout() {
                    self.count_request(url, "timeout");
                    "timed out while connecting"
                } else if e.is_timeout() {
                    self.count_request(url, "timeout");
                    "timed out"
                } else {
                    self.count_request(url, "connection_error");
                    "connection failed"
                };
                return Attempt::Retry {
                    delay: self.backoff(attempt),
                    reason: format!("request {kind}: {}", redact(&e.to_string(), credentials)),
                };
            }
        };
        let status = response.status();
        self.count_request(url, status.as_str());
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        if status.is_success() {
            return Attempt::Done(text);
        }
        let message = redact(&braze_message(&text), credentials);
        if status == StatusCode::TOO_MANY_REQUESTS {
            let wait = rate_limit_wait(&headers, chrono::Utc::now().timestamp_millis())
                .unwrap_or_else(|| self.backoff(attempt));
            if wait > self.policy.max_rate_limit_wait {
                return Attempt::Fatal(BrazeError::RateLimited {
                    wait_secs: wait.as_secs(),
                });
            }
            let jitter =
                rand::thread_rng().gen_range(0..=self.policy.base_delay.as_millis() as u64);
            return Attempt::Retry {
                delay: wait.max(self.policy.rate_limit_floor) + Duration::from_millis(jitter),
                reason: format!("HTTP 429: {message}"),
            };
        }
        if status.is_server_error() || status == StatusCode::LOCKED {
            return Attempt::Retry {
                delay: self.backoff(attempt),
                reason: format!("HTTP {}: {message}", status.as_u16()),
            };
        }
        Attempt::Fatal(BrazeError::Rejected {
            status: status.as_u16(),
            message,
        })
    }

    /// Exponential backoff with full jitter: a random delay up to `base * 2^(attempt-1)`.
    fn backoff(&self, attempt: u32) -> Duration {
        let cap = self
            .policy
            .base_delay
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
            .min(self.policy.max_delay);
        Duration::from_millis(rand::thread_rng().gen_range(0..=cap.as_millis() as u64))
    }
}

/// Panics when an id appears twice among `added` and `removed` together.
fn assert_distinct_ids(added: &[&str], removed: &[&str]) {
    let mut seen = std::collections::HashSet::with_capacity(added.len() + removed.len());
    for id in added.iter().chain(removed) {
        assert!(
            seen.insert(*id),
            "external id {id:?} appears twice in one cohort_changes request"
        );
    }
}

/// Body of a `cohorts/users` request, serialized straight from the borrowed ids.
#[derive(Serialize)]
struct CohortChangesBody<'a> {
    partner_api_key: &'a str,
    client_secret: &'a str,
    cohort_id: &'a str,
    cohort_changes: Vec<CohortChange<'a>>,
}

#[derive(Serialize)]
struct CohortChange<'a> {
    user_ids: &'a [&'a str],
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    should_remove: bool,
}

/// Serializes one batch of membership changes: adds and removes as separate `cohort_changes`
/// objects, at most `MAX_IDS_PER_REQUEST` ids in total.
///
/// # Panics
///
/// When the batch is over the limit, or an id appears twice in it (in one list, or in both),
/// because Braze would apply such a request in an order the caller did not choose.
fn cohort_changes_body(
    credentials: &Credentials,
    cohort_id: &str,
    added: &[&str],
    removed: &[&str],
) -> Vec<u8> {
    assert!(
        added.len() + removed.len() <= MAX_IDS_PER_REQUEST,
        "callers split changes into requests of at most {MAX_IDS_PER_REQUEST} ids"
    );
    assert_distinct_ids(added, removed);
    let mut cohort_changes = Vec::with_capacity(2);
    if !added.is_empty() {
        cohort_changes.push(CohortChange {
            user_ids: added,
            should_remove: false,
        });
    }
    if !removed.is_empty() {
        cohort_changes.push(CohortChange {
            user_ids: removed,
            should_remove: true,
        });
    }
    let body = CohortChangesBody {
        partner_api_key: &credentials.partner_api_key,
        client_secret: &credentials.data_import_key,
        cohort_id,
        cohort_changes,
    };
    serde_json::to_vec(&body).expect("strings serialize")
}

fn endpoint(base_url: &str, credentials: &Credentials, path: &str) -> String {
    format!(
        "{}/partners/{}/{path}",
        base_url.trim_end_matches('/'),
        credentials.partner_name
    )
}

/// Extracts the `message` of a JSON error body, or a short excerpt of any other body (Braze's 5xx
/// replies may be HTML).
fn braze_message(text: &str) -> String {
    if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(text) {
        if let Some(Value::String(message)) = map.get("message") {
            return message.clone();
        }
    }
    let excerpt: String = text.chars().take(200).collect();
    if excerpt.trim().is_empty() {
        "no message in the response".into()
    } else {
        excerpt
    }
}

/// The shortest part of a key that [`redact`] hides when it appears alone, as in a message
/// that quotes only the start or the end of a key.
const MIN_REDACTED_FRAGMENT: usize = 8;

/// Replaces every appearance of the credentials' keys in `text` with `<redacted>`: the whole
/// key, and any run of at least [`MIN_REDACTED_FRAGMENT`] of its characters, compared without
/// regard to ASCII case. A key shorter than that is hidden only where it appears whole.
fn redact(text: &str, credentials: &Credentials) -> String {
    let bytes = text.as_bytes();
    let mut hidden = vec![false; bytes.len()];
    for secret in [&credentials.data_import_key, &credentials.partner_api_key] {
        let secret = secret.as_bytes();
        if secret.is_empty() {
            continue;
        }
        let window = secret.len().min(MIN_REDACTED_FRAGMENT);
        for part in secret.windows(window) {
            for start in 0..bytes.len().saturating_sub(window - 1) {
                if bytes[start..start + window].eq_ignore_ascii_case(part) {
                    hidden[start..start + window].fill(true);
                }
            }
        }
    }
    if !hidden.contains(&true) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut start = 0;
    while start < bytes.len() {
        let end = start
            + hidden[start..]
                .iter()
                .position(|h| *h != hidden[start])
                .unwrap_or(bytes.len() - start);
        if hidden[start] {
            out.push_str("<redacted>");
        } else {
            // A hidden run matches ASCII key bytes, so its ends fall on character boundaries.
            out.push_str(&text[start..end]);
        }
        start = end;
    }
    out
}

/// Returns the wait a 429 requests: `x-ratelimit-reset` (epoch seconds) first, then
/// `Retry-After` (seconds or an HTTP date). Header names match in any case.
pub fn rate_limit_wait(headers: &HeaderMap, now_ms: i64) -> Option<Duration> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(reset) = header("x-ratelimit-reset").and_then(|v| v.parse::<f64>().ok()) {
        let wait_ms = (reset * 1000.0) as i64 - now_ms;
        return Some(Duration::from_millis(wait_ms.max(0) as u64));
    }
    let retry_after = header("retry-after")?;
    if let Ok(seconds) = retry_after.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(retry_after).ok()?;
    let when_ms = when.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as i64;
    Some(Duration::from_millis((when_ms - now_ms).max(0) as u64))
}

#[cfg(test)]
mod tests {
    use reqwest::header::{HeaderName, HeaderValue};

    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    const NOW_MS: i64 = 1_700_000_000_000;

    #[test]
    fn ratelimit_reset_is_epoch_seconds() {
        let wait = rate_limit_wait(&headers(&[("X-RateLimit-Reset", "1700003600")]), NOW_MS);
        assert_eq!(wait, Some(Duration::from_secs(3600)));
    }

    #[test]
    fn reset_in_the_past_waits_zero() {
        let wait = rate_limit_wait(&headers(&[("x-ratelimit-reset", "1699999000")]), NOW_MS);
        assert_eq!(wait, Some(Duration::ZERO));
    }

    #[test]
    fn retry_after_seconds_and_date() {
        assert_eq!(
            rate_limit_wait(&headers(&[("retry-after", "7")]), NOW_MS),
            Some(Duration::from_secs(7))
        );
        // 2023-11-14T22:13:30Z is ten seconds after NOW_MS.
        let date = headers(&[("Retry-After", "Tue, 14 Nov 2023 22:13:30 GMT")]);
        assert_eq!(
            rate_limit_wait(&date, NOW_MS),
            Some(Duration::from_secs(10))
        );
    }

    #[test]
    fn no_headers_means_no_hint() {
        assert_eq!(rate_limit_wait(&headers(&[]), NOW_MS), None);
        assert_eq!(
            rate_limit_wait(&headers(&[("retry-after", "soon")]), NOW_MS),
            None
        );
    }

    #[test]
    fn secrets_are_redacted_from_messages() {
        let credentials = Credentials {
            partner_name: "p".into(),
            partner_api_key: "pk-1".into(),
            data_import_key: "dik-SECRET".into(),
        };
        let message = braze_message(
            r#"{"message":"Partner not enabled for client with client secret: dik-SECRET"}"#,
        );
        assert_eq!(
            redact(&message, &credentials),
            "Partner not enabled for client with client secret: <redacted>"
        );
        assert!(!format!("{credentials:?}").contains("dik-SECRET"));
    }

    #[test]
    fn key_fragments_redacted() {
        let credentials = Credentials {
            partner_name: "p".into(),
            partner_api_key: "pk-1".into(),
            data_import_key: "0123abcd-4567-89ef-aaaa-bbbbccccdddd".into(),
        };
        let cases = [
            (
                "key 0123ABCD-4567-89EF-AAAA-BBBBCCCCDDDD is wrong",
                "key <redacted> is wrong",
            ),
            (
                "key starting 0123abcd-45… is wrong",
                "key starting <redacted>… is wrong",
            ),
            ("ends in …ccccdddd.", "ends in …<redacted>."),
            ("short 0123abc stays", "short 0123abc stays"),
            ("partner pk-1 and é", "partner <redacted> and é"),
        ];
        for (text, expected) in cases {
            assert_eq!(redact(text, &credentials), expected, "{text}");
        }
    }

    #[test]
    fn html_bodies_become_excerpts() {
        assert_eq!(
            braze_message("<html>upstream unavailable</html>"),
            "<html>upstream unavailable</html>"
        );
        assert_eq!(braze_message(""), "no message in the response");
    }

    #[test]
    #[should_panic(expected = "appears twice")]
    fn id_in_add_and_remove_panics() {
        assert_distinct_ids(&["a", "b"], &["b"]);
    }

    #[test]
    fn distinct_ids_pass() {
        assert_distinct_ids(&["a", "b"], &["c"]);
    }

    #[test]
    fn backoff_is_capped() {
        let client = BrazeClient::new(RetryPolicy {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(300),
            ..RetryPolicy::default()
        });
        for attempt in 1..20 {
            assert!(client.backoff(attempt) <= Duration::from_millis(300));
        }
    }
}
