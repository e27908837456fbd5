//! HTTP routers: Mixpanel-compatible ingestion, the Braze Currents receiver, and the admin API.

pub(crate) mod admin;
pub mod auth;
pub(crate) mod cohorts;
mod cors;
mod currents;
mod error;
mod export;
pub(crate) mod extract;
mod groups;
mod identity;
mod ingest;
pub(crate) mod lifecycle;
mod query;
mod query_where;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::Router;
use tower_http::trace::TraceLayer;

pub use error::ApiError;

use crate::braze::client::BrazeClient;
use crate::ingest::decode::MAX_UNCOMPRESSED_BYTES;
use crate::secrets::SecretBox;
use crate::store::Store;
use crate::sync::SyncEngine;

/// State shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub secrets: SecretBox,
    pub engine: Arc<SyncEngine>,
    pub braze: BrazeClient,
    /// SHA-256 hex of the admin key.
    pub admin_key_hash: Arc<str>,
    /// Whether connections may name a base URL outside Braze's instance table.
    pub allow_custom_braze_url: bool,
    /// The shortest cadence a dynamic sync may have.
    pub min_sync_interval: std::time::Duration,
    /// Rules for the events that do not count towards Monthly Tracked Users.
    pub mtu_rules: Arc<crate::mtu::ExemptionRules>,
    /// Failed web UI logins, for the login rate limit.
    pub login_limiter: Arc<crate::accounts::LoginLimiter>,
    /// Whether session cookies carry `Secure` even when no proxy reports HTTPS.
    pub secure_cookies: bool,
    /// Held from the `in_cohort` cycle check until the cohort is saved, so that two concurrent
    /// saves cannot each pass the check and close a cycle together.
    pub cohort_saves: Arc<tokio::sync::Mutex<()>>,
}

pub fn router(state: AppState) -> Router {
    // Compressed bodies are smaller than the uncompressed limit, which the decoder enforces
    // while decompressing; this bound only stops bodies that could never be valid.
    let body_limit = DefaultBodyLimit::max(MAX_UNCOMPRESSED_BYTES + 64 * 1024);
    Router::new()
        .merge(ingest::routes())
        .merge(currents::routes())
        .merge(export::routes())
        .merge(query::routes())
        .merge(cohorts::query_routes())
        .merge(crate::ui::routes())
        .nest("/api/v1", admin::routes(state.clone()))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(lifecycle::metrics))
        .layer(body_limit)
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
