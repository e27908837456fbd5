//! `/track`, `/import` and `/engage`, replying as Mixpanel does. `/groups` lives in
//! `api::groups`. Every endpoint is also routed under any path prefix (`/mp/track`).
//!
//! - `/track` and `/engage` find the project by the token in each record and reply `1` or
//!   `0`, or `{"status": 1, "error": null}` with `verbose=1`.
//! - `/import` authenticates with HTTP Basic: the API secret as user, the project token as user
//!   with an empty password, or any user with the API secret as password, as service accounts
//!   send. It replies `{"code": 200, "num_records_imported": N, "status": 1}`.
//!   With `strict=1`, invalid records make a 400 that lists `failed_records`, and the valid
//!   ones are stored all the same. Without it, invalid records are dropped and counted.
//!
//! Every success is sent after the store has committed the records to disk.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::{groups, AppState};
use crate::identity::original::{self, IdentityMode};
use crate::identity::FieldError;
use crate::ingest::decode::{self, DecodeError, Decoded};
use crate::ingest::event::{self, Endpoint, Receipt};
use crate::ingest::import_text::{self, ImportContext};
use crate::ingest::{engage, RecordFailure};
use crate::secrets;
use crate::store::{
    EncodedEvents, EncodedEventsBuilder, IdentityLink, NewEvent, Project, StoreError,
};

/// Mixpanel's limit of records per request on all three endpoints.
pub const MAX_RECORDS_PER_REQUEST: usize = 2000;

/// A request body, or axum's rejection when it could not be read, such as a body over the size
/// limit. Ingestion handlers take it in place of `Bytes`, so that they reject such a body in
/// Mixpanel's reply shape instead of axum's plain text.
pub(super) type RequestBody = Result<Bytes, BytesRejection>;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/track", get(track).post(track))
        .route("/track/", get(track).post(track))
        .route("/engage", get(engage_handler).post(engage_handler))
        .route("/engage/", get(engage_handler).post(engage_handler))
        .route("/import", get(import).post(import))
        .route("/import/", get(import).post(import))
        .route("/groups", get(groups::receive).post(groups::receive))
        .route("/groups/", get(groups::receive).post(groups::receive))
        .fallback(prefixed)
        .layer(axum::middleware::from_fn(super::cors::allow_any_origin))
}

/// Routes `<any prefix>/track`, `/engage`, `/import` and `/groups` (with or without a trailing
/// slash) as the bare paths, so a reverse proxy may publish the endpoints under a prefix such as
/// `/mp`. Every other unknown path is a 404.
async fn prefixed(
    state: State<AppState>,
    method: Method,
    uri: Uri,
    query: RawQuery,
    headers: HeaderMap,
    body: RequestBody,
) -> Response {
    if method != Method::GET && method != Method::POST {
        return StatusCode::NOT_FOUND.into_response();
    }
    let path = uri.path().trim_end_matches('/');
    let last = path.rsplit('/').next().unwrap_or_default();
    match last {
        "track" => track(state, query, headers, body).await,
        "engage" => engage_handler(state, query, headers, body).await,
        "import" => import(state, query, headers, body).await,
        "groups" => groups::receive(state, query, headers, body).await,
        _ => (
            StatusCode::NOT_FOUND,
            format!("no route for {}", uri.path()),
        )
            .into_response(),
    }
}

/// Reads a project's identity mode; a project that never set one uses Simplified ID Merge.
pub(super) async fn identity_mode(
    state: &AppState,
    project_id: i64,
) -> Result<IdentityMode, StoreError> {
    let stored = state
        .store
        .get_setting(&IdentityMode::setting_key(project_id))
        .await?;
    Ok(stored
        .and_then(|name| IdentityMode::parse(&name).ok())
        .unwrap_or_default())
}

/// Stores one project's valid events under its identity mode. Under Original ID Merge the
/// Simplified links are ignored, and `$identify`, `$create_alias` and `$merge` events merge
/// clusters instead. A merge that fails is recorded, and its event is stored all the same.
async fn store_events(
    state: &AppState,
    project_id: i64,
    endpoint: Endpoint,
    events: Vec<NewEvent>,
    links: Vec<IdentityLink>,
    now: i64,
) -> Result<(), StoreError> {
    if identity_mode(state, project_id).await? == IdentityMode::Simplified {
        state
            .store
            .write_events(project_id, events, links, now)
            .await?;
        return Ok(());
    }
    let mut merges = Vec::new();
    let mut failures = Vec::new();
    for event in &events {
        match original::merge_request(event, endpoint) {
            Some(Ok(merge)) => merges.push(merge),
            Some(Err(failure)) => failures.push(failure),
            None => {}
        }
    }
    let recorded = state
        .store
        .write_events_with_merges(project_id, events, merges, failures, now)
        .await?;
    if let Some(first) = recorded.first() {
        tracing::info!(
            project_id,
            failures = recorded.len(),
            first_insert_id = %first.insert_id,
            first_reason = %first.reason,
            "identity merges failed; their events are stored and the failures recorded"
        );
    }
    Ok(())
}

/// Builds the receipt of a request: its `Host` header and the time it arrived.
pub(super) fn receipt(headers: &HeaderMap) -> Receipt {
    Receipt {
        endpoint_host: headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        received_ms: chrono::Utc::now().timestamp_millis(),
    }
}

/// Builds the status and message that reject a body axum could not read. A body over the size
/// limit gets the message of a body over the limit after decompression.
fn unreadable_body(rejection: &BytesRejection) -> (StatusCode, String) {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        let error = DecodeError::TooLarge {
            limit: decode::MAX_UNCOMPRESSED_BYTES,
        };
        return (StatusCode::PAYLOAD_TOO_LARGE, error.to_string());
    }
    (rejection.status(), rejection.body_text())
}

/// Decodes a request, or builds the response that rejects it.
pub(super) fn decode_request(
    query: Option<String>,
    headers: &HeaderMap,
    body: &RequestBody,
) -> Result<Decoded, (StatusCode, String)> {
    let payload = decode_payload_request(query, headers, body)?;
    let records = decode::parse_records(&payload.json).map_err(rejected_payload)?;
    check_record_count(records.len())?;
    Ok(Decoded {
        records,
        params: payload.params,
    })
}

/// Decodes a request up to the JSON text of its records, or builds the response that rejects
/// it.
fn decode_payload_request<'a>(
    query: Option<String>,
    headers: &HeaderMap,
    body: &'a RequestBody,
) -> Result<decode::Payload<'a>, (StatusCode, String)> {
    let body = body.as_ref().map_err(unreadable_body)?;
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    decode::decode_payload(
        query.as_deref(),
        header(header::CONTENT_TYPE),
        header(header::CONTENT_ENCODING),
        body,
    )
    .map_err(rejected_payload)
}

fn rejected_payload(error: DecodeError) -> (StatusCode, String) {
    let status = match error {
        DecodeError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        DecodeError::UnsupportedEncoding { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        _ => StatusCode::BAD_REQUEST,
    };
    (status, error.to_string())
}

fn check_record_count(count: usize) -> Result<(), (StatusCode, String)> {
    if count > MAX_RECORDS_PER_REQUEST {
        return Err((
            StatusCode::BAD_REQUEST,
            format!("request has {count} records; at most {MAX_RECORDS_PER_REQUEST} are accepted per request"),
        ));
    }
    Ok(())
}

/// Builds a `/track`-style reply: `1`/`0`, or JSON with `verbose=1`.
pub(super) fn status_reply(status: StatusCode, verbose: bool, error: Option<String>) -> Response {
    let ok = error.is_none();
    if verbose {
        (
            status,
            Json(json!({"status": u8::from(ok), "error": error})),
        )
            .into_response()
    } else {
        (status, if ok { "1" } else { "0" }).into_response()
    }
}

pub(super) fn storage_unavailable(error: StoreError, verbose: bool) -> Response {
    tracing::error!(error = %error, "ingestion failed to store records; the client should retry");
    let mut response = status_reply(
        StatusCode::SERVICE_UNAVAILABLE,
        verbose,
        Some("storage is unavailable; retry later".into()),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
    response
}

/// Looks up the projects of the given tokens.
pub(super) async fn projects_by_token(
    state: &AppState,
    tokens: impl Iterator<Item = String>,
) -> Result<HashMap<String, Project>, StoreError> {
    let mut projects = HashMap::new();
    for token in tokens {
        if projects.contains_key(&token) {
            continue;
        }
        if let Some(project) = state.store.project_by_token(&token).await? {
            projects.insert(token, project);
        }
    }
    Ok(projects)
}

/// Builds the reply to a `/track` or `/engage` request with rejected records. The valid records
/// are already stored. With `verbose=1`, the reply also lists every failure in
/// `failed_records`, as `/import` does, which Mixpanel's reply does not.
pub(super) fn rejection_reply(
    status: StatusCode,
    verbose: bool,
    failures: &[RecordFailure],
    total: usize,
) -> Response {
    let first = &failures[0];
    let summary = format!(
        "{} of {total} records rejected; the record at index {}: {}",
        failures.len(),
        first.index,
        first.message
    );
    if !verbose {
        return (status, "0").into_response();
    }
    let body = json!({"status": 0, "error": summary, "failed_records": failures});
    (status, Json(body)).into_response()
}

async fn track(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: RequestBody,
) -> Response {
    let receipt = receipt(&headers);
    let decoded = match decode_request(query.clone(), &headers, &body) {
        Ok(decoded) => decoded,
        Err((status, message)) => {
            let verbose = wants_verbose(query.as_deref(), &body);
            return status_reply(status, verbose, Some(message));
        }
    };
    let verbose = decoded.flag("verbose");
    let now = chrono::Utc::now().timestamp_millis();
    let token_of = |record: &Value| {
        record
            .pointer("/properties/token")
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let projects =
        match projects_by_token(&state, decoded.records.iter().filter_map(token_of)).await {
            Ok(projects) => projects,
            Err(e) => return storage_unavailable(e, verbose),
        };

    let mut failures = Vec::new();
    let mut bad_token = false;
    let mut by_project: HashMap<i64, (Vec<_>, Vec<_>)> = HashMap::new();
    for (index, record) in decoded.records.iter().enumerate() {
        let Some(project) = token_of(record).and_then(|t| projects.get(&t)) else {
            bad_token = true;
            let error = FieldError::new(
                "properties.token",
                "properties.token is missing or is not the token of any project",
            );
            failures.push(RecordFailure::new(index, record, error));
            continue;
        };
        match event::validate(record, Endpoint::Track, now) {
            Ok(mut valid) => {
                event::add_server_properties(&mut valid.event, Endpoint::Track, &receipt, now);
                let entry = by_project.entry(project.id).or_default();
                entry.0.push(valid.event);
                entry.1.extend(valid.link);
            }
            Err(error) => failures.push(RecordFailure::new(index, record, error)),
        }
    }
    for (project_id, (events, links)) in by_project {
        if let Err(e) = store_events(&state, project_id, Endpoint::Track, events, links, now).await
        {
            return storage_unavailable(e, verbose);
        }
    }
    if failures.is_empty() {
        return status_reply(StatusCode::OK, verbose, None);
    }
    tracing::debug!(
        rejected = failures.len(),
        total = decoded.records.len(),
        "track request had invalid records"
    );
    let status = if bad_token {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::BAD_REQUEST
    };
    rejection_reply(status, verbose, &failures, decoded.records.len())
}

async fn engage_handler(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: RequestBody,
) -> Response {
    let decoded = match decode_request(query.clone(), &headers, &body) {
        Ok(decoded) => decoded,
        Err((status, message)) => {
            let verbose = wants_verbose(query.as_deref(), &body);
            return status_reply(status, verbose, Some(message));
        }
    };
    let verbose = decoded.flag("verbose");
    let now = chrono::Utc::now().timestamp_millis();
    let token_of = |record: &Value| engage::token_of(record).map(str::to_owned);
    let projects =
        match projects_by_token(&state, decoded.records.iter().filter_map(token_of)).await {
            Ok(projects) => projects,
            Err(e) => return storage_unavailable(e, verbose),
        };

    let mut failures = Vec::new();
    let mut bad_token = false;
    let mut by_project: HashMap<i64, Vec<_>> = HashMap::new();
    for (index, record) in decoded.records.iter().enumerate() {
        let Some(project) = token_of(record).and_then(|t| projects.get(&t)) else {
            bad_token = true;
            let error = FieldError::new(
                "$token",
                "$token is missing or is not the token of any project",
            );
            failures.push(RecordFailure::new(index, record, error));
            continue;
        };
        match engage::parse_update(record, now) {
            Ok(update) => by_project.entry(project.id).or_default().push(update),
            Err(error) => failures.push(RecordFailure::new(index, record, error)),
        }
    }
    for (project_id, updates) in by_project {
        if let Err(e) = state
            .store
            .apply_profile_updates(project_id, updates, now)
            .await
        {
            return storage_unavailable(e, verbose);
        }
    }
    if failures.is_empty() {
        return status_reply(StatusCode::OK, verbose, None);
    }
    let status = if bad_token {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::BAD_REQUEST
    };
    rejection_reply(status, verbose, &failures, decoded.records.len())
}

/// Checks whether a request that failed to decode asked for a verbose reply in its query or form.
pub(super) fn wants_verbose(query: Option<&str>, body: &RequestBody) -> bool {
    let body = body.as_deref().unwrap_or_default();
    let head = String::from_utf8_lossy(&body[..body.len().min(4096)]);
    query
        .into_iter()
        .chain(std::iter::once(head.as_ref()))
        .flat_map(|text| text.split('&'))
        .any(|pair| pair == "verbose=1")
}

/// Builds an `/import` reply in Mixpanel's JSON shape.
fn import_reply(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

fn import_error(status: StatusCode, message: impl Into<String>) -> Response {
    let message = message.into();
    import_reply(
        status,
        json!({"code": status.as_u16(), "error": message, "status": 0}),
    )
}

/// The project an `/import` request writes to, and what its credential allows.
struct ImportAuth {
    project: Project,
    /// Set on every event, for a credential marked as a partner's (such as Braze Currents).
    partner_id: Option<String>,
    /// Whether a secret authenticated the request, not the public project token. Only then may
    /// it carry `$merge` events, since the token is embedded in every client.
    by_secret: bool,
}

/// Finds the project of an `/import` request from its HTTP Basic credentials, and the partner
/// id that an extra credential (such as one marked "Braze Currents") puts on every event. The
/// credentials are the API secret as user, an extra credential's secret as user, the token as
/// user with an empty password, or any user name with the API secret as password, which is the
/// shape of a Mixpanel service account. A `project_id` query parameter, which service-account
/// clients send, must then name the project found.
async fn import_project(
    state: &AppState,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Option<ImportAuth>, StoreError> {
    let Some((user, password)) = basic_credentials(headers) else {
        return Ok(None);
    };
    let user_hash = secrets::hash(&user);
    let (project, partner_id, by_secret) =
        if let Some(project) = state.store.project_by_api_secret_hash(&user_hash).await? {
            (Some(project), None, true)
        } else if let Some(credential) = state.store.import_credential_by_hash(&user_hash).await? {
            let project = state.store.project(credential.project_id).await?;
            (project, credential.partner_id, true)
        } else if password.is_empty() {
            (state.store.project_by_token(&user).await?, None, false)
        } else {
            let hash = secrets::hash(&password);
            (
                state.store.project_by_api_secret_hash(&hash).await?,
                None,
                true,
            )
        };
    let requested_id = query
        .map(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(q).unwrap_or_default())
        .unwrap_or_default()
        .into_iter()
        .find_map(|(name, value)| (name == "project_id").then_some(value));
    match (project, requested_id) {
        (Some(project), Some(id)) if id != project.id.to_string() => Ok(None),
        (project, _) => Ok(project.map(|project| ImportAuth {
            project,
            partner_id,
            by_secret,
        })),
    }
}

pub(super) fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':').unwrap_or((&text, ""));
    Some((user.to_owned(), password.to_owned()))
}

/// Handles `/import`. A request that sets `verbose=0`, as the Mixpanel Node library does, gets
/// the terse reply of Mixpanel's form-based `/import`: `1` on success, `0` otherwise, with the
/// same status code and headers as the JSON reply.
async fn import(
    state: State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: RequestBody,
) -> Response {
    let terse = asks_terse_reply(query.as_deref(), body.as_deref().unwrap_or_default());
    let response = import_json(state, RawQuery(query), headers, body).await;
    if !terse {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    let text = if parts.status.is_success() { "1" } else { "0" };
    parts.headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(text))
}

/// Checks whether a request sets `verbose=0` in its query or form body.
fn asks_terse_reply(query: Option<&str>, body: &[u8]) -> bool {
    let head = String::from_utf8_lossy(&body[..body.len().min(4096)]);
    query
        .into_iter()
        .chain(std::iter::once(head.as_ref()))
        .flat_map(|text| text.split('&'))
        .any(|pair| pair == "verbose=0")
}

/// Validates and encodes `/import` records from their JSON texts: each on the text path when it
/// can, else on the general path. Returns the events, their identity links and the records
/// rejected.
fn encode_record_texts(
    texts: &[&RawValue],
    context: &ImportContext<'_>,
) -> Result<(EncodedEvents, Vec<IdentityLink>, Vec<RecordFailure>), StoreError> {
    // The stored text is about the record's text plus the server's properties.
    let text_bytes = texts.iter().map(|text| text.get().len() + 128).sum();
    let mut events = EncodedEventsBuilder::with_capacity(texts.len(), text_bytes);
    let mut links = Vec::new();
    let mut failures = Vec::new();
    for (index, text) in texts.iter().enumerate() {
        let encoded = events.push_with(|buffer| {
            let (event, link) = import_text::encode_import_record(text.get(), context, buffer)?;
            links.extend(link);
            Ok::<_, import_text::Fallback>(event)
        });
        if encoded.is_ok() {
            continue;
        }
        // Splitting the body checks nesting more loosely than parsing a record, so a record
        // nested more than serde_json's 128 levels can still fail here.
        let record: Value = match serde_json::from_str(text.get()) {
            Ok(record) => record,
            Err(e) => {
                failures.push(RecordFailure {
                    index,
                    insert_id: None,
                    field: String::new(),
                    message: format!("record cannot be read: {e}"),
                });
                continue;
            }
        };
        match import_text::validate_import_record(record, index, context) {
            Ok((event, link)) => {
                events.push_event(&event)?;
                links.extend(link);
            }
            Err(failure) => failures.push(failure),
        }
    }
    Ok((events.finish()?, links, failures))
}

/// Builds the 503 reply of an `/import` whose records could not be stored, and logs why.
fn import_unavailable(project_id: i64, error: &StoreError) -> Response {
    tracing::error!(project_id, error = %error, "import failed to store records; the client should retry");
    let mut response = import_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "storage is unavailable; retry later",
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
    response
}

async fn import_json(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: RequestBody,
) -> Response {
    let receipt = receipt(&headers);
    let ImportAuth {
        project,
        partner_id,
        by_secret,
    } = match import_project(&state, &headers, query.as_deref()).await {
        Ok(Some(found)) => found,
        Ok(None) => {
            return import_error(
                StatusCode::UNAUTHORIZED,
                "authenticate with HTTP Basic: the project's API secret as user or as password, or its token as user with an empty password",
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "import could not look up credentials");
            let mut response = import_error(StatusCode::SERVICE_UNAVAILABLE, "storage is unavailable; retry later");
            response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
            return response;
        }
    };
    let payload = match decode_payload_request(query, &headers, &body) {
        Ok(payload) => payload,
        Err((status, message)) => return import_error(status, message),
    };
    let strict = decode::flag(&payload.params, "strict");
    let now = chrono::Utc::now().timestamp_millis();
    let mode = match identity_mode(&state, project.id).await {
        Ok(mode) => mode,
        Err(e) => return import_unavailable(project.id, &e),
    };
    let context = ImportContext {
        receipt: &receipt,
        now_ms: now,
        partner_id: partner_id.as_deref(),
    };

    // Under Simplified ID Merge a JSON array or object is validated from its text; NDJSON,
    // Original ID Merge and anything unusual take the general path.
    let texts = (mode == IdentityMode::Simplified)
        .then(|| decode::record_texts(&payload.json))
        .flatten();
    let (stored, failures) = if let Some(texts) = texts {
        if let Err((status, message)) = check_record_count(texts.len()) {
            return import_error(status, message);
        }
        let (events, links, failures) = match encode_record_texts(&texts, &context) {
            Ok(encoded) => encoded,
            Err(e) => return import_unavailable(project.id, &e),
        };
        let count = events.len();
        let stored = if events.is_empty() {
            Ok(0)
        } else {
            state
                .store
                .write_encoded_events(project.id, events, links, now)
                .await
                .map(|_| count)
        };
        (stored, failures)
    } else {
        let records = match decode::parse_records(&payload.json) {
            Ok(records) => records,
            Err(e) => {
                let (status, message) = rejected_payload(e);
                return import_error(status, message);
            }
        };
        if let Err((status, message)) = check_record_count(records.len()) {
            return import_error(status, message);
        }
        let mut events = Vec::with_capacity(records.len());
        let mut links = Vec::new();
        let mut failures = Vec::new();
        for (index, record) in records.into_iter().enumerate() {
            match import_text::validate_import_record(record, index, &context) {
                Ok((event, link)) => {
                    events.push(event);
                    links.extend(link);
                }
                Err(failure) => failures.push(failure),
            }
        }
        let count = events.len();
        let stored = if events.is_empty() {
            Ok(0)
        } else {
            // `$merge` needs a secret: with only the public token, merges are judged as on
            // `/track`, where they are recorded as failures.
            let merge_endpoint = if by_secret {
                Endpoint::Import
            } else {
                Endpoint::Track
            };
            store_events(&state, project.id, merge_endpoint, events, links, now)
                .await
                .map(|()| count)
        };
        (stored, failures)
    };
    let imported = match stored {
        Ok(imported) => imported,
        Err(e) => return import_unavailable(project.id, &e),
    };
    if !failures.is_empty() {
        tracing::debug!(
            project_id = project.id,
            rejected = failures.len(),
            imported,
            "import request had invalid records"
        );
    }
    if strict && !failures.is_empty() {
        return import_reply(
            StatusCode::BAD_REQUEST,
            json!({
                "code": 400,
                "error": "some data points in the request failed validation",
                "failed_records": failures,
                "num_records_imported": imported,
                "status": 0,
            }),
        );
    }
    import_reply(
        StatusCode::OK,
        json!({
            "code": 200,
            "num_records_imported": imported,
            "num_records_dropped": failures.len(),
            "status": 1,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_replies_carry_retry_after() {
        for verbose in [false, true] {
            let response = storage_unavailable(StoreError::Task("disk full".into()), verbose);
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(response.headers()[header::RETRY_AFTER], "5");
        }
    }

    #[test]
    fn terse_reply_is_asked_by_verbose_zero() {
        assert!(asks_terse_reply(Some("verbose=0"), b""));
        assert!(asks_terse_reply(None, b"data=e30%3D&verbose=0"));
        assert!(!asks_terse_reply(Some("verbose=1"), b""));
        assert!(!asks_terse_reply(None, b"[{\"event\":\"verbose=0\"}]"));
    }
}
