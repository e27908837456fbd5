//! Errors of the two partner endpoints and their HTTP responses.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// A rejected partner request.
///
/// The `Display` text is the `message` field of the response body. Where Braze's
/// partner cohort import page lists a message, the text is copied verbatim because
/// partners may match on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    // NOTE: Braze documents no message for an unparsable body, so this one is our choice.
    #[error("request body is not valid JSON: {0}")]
    InvalidJson(String),

    // NOTE: Braze documents no message for a body that is JSON but not an object.
    #[error("request body must be a JSON object")]
    BodyNotObject,

    #[error("Invalid Partner API key")]
    InvalidPartnerApiKey,

    #[error("Invalid client secret")]
    InvalidClientSecret,

    #[error("cohort_id must be a valid string")]
    InvalidCohortId,

    /// The payload breaks the documented `cohort_changes` shape. The detail names
    /// the offending element and goes into the `errors` array.
    #[error("cohort_changes must be an array of objects each with key user_ids and/or device_ids mapping to an array of strings, or an aliases object")]
    InvalidCohortChanges { detail: String },

    /// More than [`crate::MAX_IDS_PER_REQUEST`] ids across all change objects.
    #[error("Only 1,000 user_ids, device_ids, and aliases are allowed per request")]
    TooManyIds { count: usize },

    #[error("name must be a non-empty string")]
    InvalidName,

    #[error("created_at must be a valid time as an ISO-8601 string")]
    InvalidCreatedAt { detail: String },

    // NOTE: Braze's docs do not say what happens to users sent for a cohort that
    // was never named. The emulator rejects them, so a missing name call shows up.
    #[error("cohort_id {0:?} does not exist in this workspace; create it with POST /partners/<partner_name>/cohorts first")]
    UnknownCohort(String),
}

impl ApiError {
    /// Returns the HTTP status Braze documents for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidPartnerApiKey | ApiError::InvalidClientSecret => {
                StatusCode::UNAUTHORIZED
            }
            ApiError::InvalidJson(_)
            | ApiError::BodyNotObject
            | ApiError::InvalidCohortId
            | ApiError::InvalidCohortChanges { .. }
            | ApiError::TooManyIds { .. }
            | ApiError::InvalidName
            | ApiError::InvalidCreatedAt { .. }
            | ApiError::UnknownCohort(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// Returns the detail for the `errors` array, if the fixed message hides it.
    fn detail(&self) -> Option<String> {
        match self {
            ApiError::InvalidCohortChanges { detail } | ApiError::InvalidCreatedAt { detail } => {
                Some(detail.clone())
            }
            ApiError::TooManyIds { count } => Some(format!(
                "the request contains {count} ids; split it into requests of at most 1000"
            )),
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // Braze's general error shape is {"message": <fatal>, "errors": [<minor>]}.
        // NOTE: whether the cohort endpoints fill `errors` is undocumented. The
        // emulator adds it only to name the offending value.
        let body = match self.detail() {
            Some(detail) => json!({ "message": self.to_string(), "errors": [detail] }),
            None => json!({ "message": self.to_string() }),
        };
        (self.status(), Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_errors_map_to_401() {
        assert_eq!(
            ApiError::InvalidPartnerApiKey.status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            ApiError::InvalidClientSecret.status(),
            StatusCode::UNAUTHORIZED
        );
    }

    #[test]
    fn validation_errors_map_to_400() {
        let errors = [
            ApiError::InvalidJson("x".into()),
            ApiError::BodyNotObject,
            ApiError::InvalidCohortId,
            ApiError::InvalidCohortChanges { detail: "x".into() },
            ApiError::TooManyIds { count: 1001 },
            ApiError::InvalidName,
            ApiError::InvalidCreatedAt { detail: "x".into() },
            ApiError::UnknownCohort("c".into()),
        ];
        for error in errors {
            assert_eq!(error.status(), StatusCode::BAD_REQUEST, "{error:?}");
        }
    }
}
