//! `/groups`: updates of group profiles, replying as `/engage` does. Each record names its
//! project by `$token`, and the reply is `1` or `0`, or `{"status": 1, "error": null}` with
//! `verbose=1`. A success is sent after the store has committed the updates.

use std::collections::HashMap;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::Value;

use super::ingest::{
    decode_request, projects_by_token, rejection_reply, status_reply, storage_unavailable,
    wants_verbose, RequestBody,
};
use super::AppState;
use crate::identity::FieldError;
use crate::ingest::{engage, groups, RecordFailure};

pub(super) async fn receive(
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
        match groups::parse_update(record) {
            Ok(update) => by_project.entry(project.id).or_default().push(update),
            Err(error) => failures.push(RecordFailure::new(index, record, error)),
        }
    }
    for (project_id, updates) in by_project {
        if let Err(e) = state
            .store
            .apply_group_updates(project_id, updates, now)
            .await
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
        "groups request had invalid records"
    );
    let status = if bad_token {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::BAD_REQUEST
    };
    rejection_reply(status, verbose, &failures, decoded.records.len())
}
