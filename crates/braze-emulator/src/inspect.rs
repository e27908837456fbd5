//! Test endpoints under `/_emulator/`: read state, inject faults, reset.
//!
//! They need no credentials, which is why the emulator must only listen where
//! tests and trial users can reach it.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tracing::info;

use crate::faults::FaultSpec;
use crate::state::MemberKind;
use crate::Emulator;

pub(crate) fn routes() -> Router<Emulator> {
    Router::new()
        .route("/_emulator/cohorts", get(list_cohorts))
        .route("/_emulator/cohorts/{cohort_id}/members", get(list_members))
        .route("/_emulator/requests", get(list_requests))
        .route(
            "/_emulator/attributes/{attribute}/{value}",
            get(list_attribute_holders),
        )
        .route("/_emulator/faults", post(add_fault).delete(clear_faults))
        .route("/_emulator/reset", post(reset))
}

fn error_response(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "message": message }))).into_response()
}

/// Lists the external ids whose array attribute contains the value; query `workspace`
/// (default 0).
async fn list_attribute_holders(
    State(emulator): State<Emulator>,
    Path((attribute, value)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let workspace = match query.get("workspace").map(|w| w.parse::<usize>()) {
        None => 0,
        Some(Ok(workspace)) => workspace,
        Some(Err(_)) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                format!("workspace {:?} is not a number", query["workspace"]),
            )
        }
    };
    Json(emulator.attribute_holders(workspace, &attribute, &value)).into_response()
}

async fn list_cohorts(State(emulator): State<Emulator>) -> Response {
    Json(emulator.cohorts()).into_response()
}

/// Lists members; query `workspace` (default 0) and `kind` (default `user_ids`).
async fn list_members(
    State(emulator): State<Emulator>,
    Path(cohort_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let workspace = match query.get("workspace") {
        None => 0,
        Some(text) => match text.parse::<usize>() {
            Ok(workspace) => workspace,
            Err(_) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "workspace {text:?} is invalid; use the 0-based index of a data import key"
                    ),
                )
            }
        },
    };
    let kind = match query.get("kind") {
        None => MemberKind::UserIds,
        Some(text) => match MemberKind::parse(text) {
            Some(kind) => kind,
            None => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    format!("kind {text:?} is invalid; use user_ids, device_ids or aliases"),
                )
            }
        },
    };
    match emulator.members(workspace, &cohort_id, kind) {
        Some(members) => Json(members).into_response(),
        None => error_response(
            StatusCode::NOT_FOUND,
            format!("cohort {cohort_id:?} not found in workspace {workspace}"),
        ),
    }
}

async fn list_requests(State(emulator): State<Emulator>) -> Response {
    Json(emulator.requests()).into_response()
}

/// Queues a fault; the body is a [`FaultSpec`].
async fn add_fault(State(emulator): State<Emulator>, body: Bytes) -> Response {
    let spec: FaultSpec = match serde_json::from_slice(&body) {
        Ok(spec) => spec,
        Err(err) => {
            return error_response(StatusCode::BAD_REQUEST, format!("invalid fault: {err}"))
        }
    };
    let fault = match spec.into_fault() {
        Ok(fault) => fault,
        Err(message) => {
            return error_response(StatusCode::BAD_REQUEST, format!("invalid fault: {message}"))
        }
    };
    let mut shared = emulator.lock();
    shared.faults.push(fault);
    let pending = shared.faults.pending_requests();
    drop(shared);
    info!(pending_requests = pending, "fault queued");
    Json(json!({ "message": "fault queued", "pending_requests": pending })).into_response()
}

async fn clear_faults(State(emulator): State<Emulator>) -> Response {
    emulator.lock().faults.clear();
    info!("faults cleared");
    Json(json!({ "message": "faults cleared" })).into_response()
}

async fn reset(State(emulator): State<Emulator>) -> Response {
    emulator.reset();
    info!("emulator state reset");
    Json(json!({ "message": "reset" })).into_response()
}
