//! The admin API's error type and its mapping to HTTP statuses. Every error body is
//! `{"error": "<message>"}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error(
        "missing or invalid admin key: send `Authorization: Bearer <admin key or user API key>`"
    )]
    Unauthorized,
    /// Authenticated, but the role does not allow the action.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// Missing or wrong HTTP Basic credentials on Mixpanel's query API.
    #[error("{0}")]
    BasicUnauthorized(String),
    #[error("{0}")]
    Conflict(String),
    /// Braze refused the connection's credentials or the request.
    #[error("{0}")]
    Upstream(String),
    #[error("{}", storage_message(.0))]
    Storage(#[from] StoreError),
}

/// The message of a storage error: conflicts and missing rows are the caller's problem, not
/// an outage.
fn storage_message(error: &StoreError) -> String {
    match error {
        StoreError::NotFound { .. } | StoreError::Conflict { .. } => error.to_string(),
        other => format!("storage is unavailable: {other}"),
    }
}

impl ApiError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BasicUnauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ApiError::Storage(StoreError::NotFound { .. }) => StatusCode::NOT_FOUND,
            ApiError::Storage(StoreError::Conflict { .. }) => StatusCode::CONFLICT,
            ApiError::Storage(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            tracing::error!(error = %self, "admin request failed on storage");
        }
        let mut response = (status, Json(json!({ "error": self.to_string() }))).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("5"));
        }
        response
    }
}
