//! A local emulator of Braze's partner cohort import API.
//!
//! It serves the two partner endpoints, `POST /partners/{partner_name}/cohorts`
//! and `POST /partners/{partner_name}/cohorts/users`, with the validation and
//! messages of Braze's "Partner cohort import integration" page, and keeps all
//! state in memory. Endpoints under `/_emulator/` let tests read the state,
//! inject faults and reset everything.
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use braze_emulator::{Config, Emulator};
//!
//! let emulator = Emulator::new(Config {
//!     partner_name: "cohortbridge".into(),
//!     partner_api_keys: vec!["partner-key".into()],
//!     data_import_keys: vec!["workspace-0-key".into()],
//! });
//! let addr = emulator.clone().spawn("127.0.0.1:0".parse().unwrap()).await?;
//! println!("emulator at http://{addr}, cohorts: {:?}", emulator.cohorts());
//! # Ok(())
//! # }
//! ```

mod error;
mod faults;
mod inspect;
mod rate_limit;
mod state;
mod users_track;
mod validate;

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;
use tracing::{error, info, warn};

pub use error::ApiError;
pub use state::{CohortSummary, MemberKind, Members, RecordedRequest};
pub use users_track::MAX_ATTRIBUTE_OBJECTS;
pub use validate::{UserAlias, MAX_IDS_PER_REQUEST};

use faults::FaultQueue;
use rate_limit::RateLimiter;
use state::{Cohort, Store};
use validate::JsonObject;

/// Credentials the emulator accepts.
#[derive(Clone)]
pub struct Config {
    /// The `{partner_name}` path segment of both partner endpoints.
    pub partner_name: String,
    /// Accepted values of the `partner_api_key` body field.
    pub partner_api_keys: Vec<String>,
    /// Accepted values of the `client_secret` body field. Each key is a separate
    /// workspace, numbered by its position in this list.
    pub data_import_keys: Vec<String>,
}

impl Config {
    /// Returns the workspace index of a data import key.
    fn workspace_of(&self, client_secret: &str) -> Option<usize> {
        self.data_import_keys
            .iter()
            .position(|key| key == client_secret)
    }
}

/// Shows the key counts but never the keys, so a `{:?}` in a log leaks nothing.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("partner_name", &self.partner_name)
            .field("partner_api_keys", &self.partner_api_keys.len())
            .field("data_import_keys", &self.data_import_keys.len())
            .finish()
    }
}

/// The emulator: configuration plus shared in-memory state.
///
/// Clones share the same state, so a test can keep a clone to read the state
/// after passing another to [`Emulator::spawn`].
#[derive(Clone, Debug)]
pub struct Emulator {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: Config,
    shared: Mutex<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    store: Store,
    faults: FaultQueue,
    rate_limiter: Option<RateLimiter>,
    attributes: users_track::UserAttributes,
    /// REST API keys for `/users/track`; each is the workspace of the same position.
    rest_api_keys: Vec<String>,
    /// External ids that exist in every workspace; `None` means every id exists.
    known_users: Option<BTreeSet<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    CohortName,
    CohortUsers,
}

impl Emulator {
    pub fn new(config: Config) -> Self {
        Emulator {
            inner: Arc::new(Inner {
                config,
                shared: Mutex::new(Shared::default()),
            }),
        }
    }

    /// Enables the rate limit: at most `limit` partner requests per UTC minute,
    /// across all workspaces. Further requests receive 429.
    pub fn with_rate_limit_per_minute(self, limit: u32) -> Self {
        self.lock().rate_limiter = Some(RateLimiter::new(limit));
        self
    }

    /// Accepts `keys` as REST API keys of `/users/track`; key `i` belongs to workspace `i`.
    pub fn with_rest_api_keys(self, keys: Vec<String>) -> Self {
        self.lock().rest_api_keys = keys;
        self
    }

    /// Makes only `users` exist in every workspace. Other ids in cohort changes and in
    /// `/users/track` objects are ignored without an error, as Braze does.
    pub fn with_known_users(self, users: BTreeSet<String>) -> Self {
        self.lock().known_users = Some(users);
        self
    }

    /// External ids whose array attribute `attribute` contains `value`, sorted.
    pub fn attribute_holders(&self, workspace: usize, attribute: &str, value: &str) -> Vec<String> {
        self.lock().attributes.holders(workspace, attribute, value)
    }

    fn rest_workspace_of(&self, key: &str) -> Option<usize> {
        self.lock().rest_api_keys.iter().position(|k| k == key)
    }

    fn with_attributes<T>(
        &self,
        f: impl FnOnce(&mut users_track::UserAttributes, Option<&BTreeSet<String>>) -> T,
    ) -> T {
        let mut shared = self.lock();
        let shared = &mut *shared;
        f(&mut shared.attributes, shared.known_users.as_ref())
    }

    /// Applies the next queued fault to a request that is not a partner request: waits its
    /// delay, then drops the connection or returns its response. `None` means the request
    /// proceeds normally.
    async fn apply_fault(&self, path: &str) -> Option<Response> {
        let action = self.lock().faults.take_next()?;
        if !action.delay.is_zero() {
            tokio::time::sleep(action.delay).await;
        }
        if action.drop_connection {
            info!(path, "request dropped by injected fault");
            std::panic::resume_unwind(Box::new("injected dropped connection"));
        }
        let response = action.response?;
        info!(
            path,
            status = response.status.as_u16(),
            "request answered by injected fault"
        );
        Some(response.into_response())
    }

    /// Builds the router with the partner and `/_emulator/` endpoints.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/partners/{partner_name}/cohorts", post(post_cohort_name))
            .route(
                "/partners/{partner_name}/cohorts/users",
                post(post_cohort_users),
            )
            .route("/users/track", post(users_track::post_users_track))
            .merge(inspect::routes())
            .with_state(self.clone())
    }

    /// Binds, spawns the server on the current tokio runtime, returns the bound address.
    ///
    /// The server runs until the runtime shuts down.
    pub async fn spawn(self, listen: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let router = self.router();
        tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, router).await {
                error!(%addr, error = %err, "braze emulator server failed");
            }
        });
        info!(%addr, "braze emulator listening");
        Ok(addr)
    }

    /// Returns all cohorts, sorted by workspace, then by cohort id.
    pub fn cohorts(&self) -> Vec<CohortSummary> {
        self.lock().store.cohort_summaries()
    }

    /// Returns a cohort's members of one kind, or `None` if the cohort does not exist.
    pub fn members(&self, workspace: usize, cohort_id: &str, kind: MemberKind) -> Option<Members> {
        self.lock().store.members(workspace, cohort_id, kind)
    }

    /// Returns every partner request received since start or the last reset.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().store.requests().to_vec()
    }

    /// Clears cohorts, recorded requests, queued faults and the rate-limit window.
    pub fn reset(&self) {
        let mut shared = self.lock();
        shared.store.clear();
        shared.faults.clear();
        shared.attributes.clear();
        if let Some(limiter) = shared.rate_limiter.as_mut() {
            limiter.reset();
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic in another handler must not take the emulator down with it.
        self.inner
            .shared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Handles one partner request: an injected fault first, then the rate limit,
    /// then normal processing. Every request is recorded.
    async fn handle_partner_request(
        &self,
        endpoint: Endpoint,
        partner_name: &str,
        path: &str,
        body: &[u8],
    ) -> Response {
        let config = &self.inner.config;
        let parsed = validate::parse_body(body);

        let fault = self.lock().faults.take_next();
        if let Some(action) = fault {
            if !action.delay.is_zero() {
                tokio::time::sleep(action.delay).await;
            }
            if action.drop_connection {
                // Status 0 in the log marks a request that got no response.
                let mut entry = describe_request(config, path, StatusCode::OK, &parsed);
                entry.status = 0;
                entry.injected = true;
                info!(path, "partner request dropped by injected fault");
                self.lock().store.record(entry);
                // Unwinding out of the handler ends the connection's task, so the socket is
                // closed without a byte of response. `resume_unwind` skips the panic hook, so
                // nothing is printed.
                std::panic::resume_unwind(Box::new("injected dropped connection"));
            }
            if let Some(response) = action.response {
                let mut entry = describe_request(config, path, response.status, &parsed);
                entry.injected = true;
                info!(
                    path,
                    status = entry.status,
                    "partner request answered by injected fault"
                );
                self.lock().store.record(entry);
                return response.into_response();
            }
        }

        let mut shared = self.lock();
        let rate = shared
            .rate_limiter
            .as_mut()
            .map(|limiter| limiter.check(chrono::Utc::now().timestamp()));

        let outcome = match rate {
            Some(status) if !status.allowed => None,
            _ => Some(shared.process(config, endpoint, partner_name, &parsed)),
        };
        let status = match &outcome {
            None => StatusCode::TOO_MANY_REQUESTS,
            // NOTE: Braze's cohort import page gives no success status. 201 is our
            // choice, and Segment's braze-cohorts destination tests expect it too.
            Some(Ok(())) => StatusCode::CREATED,
            Some(Err(err)) => err.status(),
        };

        let mut entry = describe_request(config, path, status, &parsed);
        entry.applied = matches!(outcome, Some(Ok(())));
        log_partner_request(&entry, &outcome);
        shared.store.record(entry);
        drop(shared);

        let mut response = match outcome {
            // NOTE: Braze documents no body for its 429, so the message is our choice.
            None => (
                status,
                Json(json!({ "message": "Rate limit exceeded; retry after x-ratelimit-reset" })),
            )
                .into_response(),
            Some(Ok(())) => (status, Json(json!({ "message": "success" }))).into_response(),
            Some(Err(err)) => err.into_response(),
        };
        if let Some(rate) = rate {
            rate.write_headers(response.headers_mut());
        }
        response
    }
}

impl Shared {
    /// Validates a partner request and applies it. Checks run in this order:
    /// partner name and `partner_api_key`, `client_secret`, then the fields.
    fn process(
        &mut self,
        config: &Config,
        endpoint: Endpoint,
        partner_name: &str,
        parsed: &Result<JsonObject, ApiError>,
    ) -> Result<(), ApiError> {
        if partner_name != config.partner_name {
            return Err(ApiError::InvalidPartnerApiKey);
        }
        let body = parsed.as_ref().map_err(Clone::clone)?;
        let partner_key = validate::string_field(body, "partner_api_key");
        if !partner_key.is_some_and(|key| config.partner_api_keys.iter().any(|k| k == key)) {
            return Err(ApiError::InvalidPartnerApiKey);
        }
        let workspace = validate::string_field(body, "client_secret")
            .and_then(|secret| config.workspace_of(secret))
            .ok_or(ApiError::InvalidClientSecret)?;
        let cohort_id = validate::cohort_id(body)?;

        match endpoint {
            Endpoint::CohortName => {
                let name = validate::cohort_name(body)?;
                let created_at = validate::created_at(body)?;
                // NOTE: a repeated call renames the cohort but keeps the first
                // created_at, because Braze's docs only say the call sets the name.
                self.store
                    .cohorts
                    .entry((workspace, cohort_id))
                    .and_modify(|cohort| cohort.name.clone_from(&name))
                    .or_insert_with(|| Cohort {
                        name,
                        created_at,
                        ..Cohort::default()
                    });
            }
            Endpoint::CohortUsers => {
                let changes = validate::cohort_changes(body)?;
                validate::check_id_count(&changes)?;
                // NOTE: an empty change list succeeds even for an unknown cohort,
                // because a partner may send it to test credentials before any cohort exists.
                if changes.is_empty() {
                    return Ok(());
                }
                let cohort = self
                    .store
                    .cohorts
                    .get_mut(&(workspace, cohort_id.clone()))
                    .ok_or(ApiError::UnknownCohort(cohort_id))?;
                for change in &changes {
                    match &self.known_users {
                        Some(users) => {
                            let mut known = change.clone();
                            known.user_ids.retain(|id| users.contains(id));
                            cohort.apply(&known);
                        }
                        None => cohort.apply(change),
                    }
                }
            }
        }
        Ok(())
    }
}

/// Builds the log entry from whatever the body carried, valid or not.
fn describe_request(
    config: &Config,
    path: &str,
    status: StatusCode,
    parsed: &Result<JsonObject, ApiError>,
) -> RecordedRequest {
    let mut entry = RecordedRequest::new(path.to_owned(), status.as_u16());
    let Ok(body) = parsed else {
        return entry;
    };
    entry.workspace = validate::string_field(body, "client_secret")
        .and_then(|secret| config.workspace_of(secret));
    entry.cohort_id = validate::string_field(body, "cohort_id").map(str::to_owned);
    entry.name = validate::string_field(body, "name").map(str::to_owned);
    if let Ok(changes) = validate::cohort_changes(body) {
        entry.record_changes(&changes);
    }
    entry
}

fn log_partner_request(entry: &RecordedRequest, outcome: &Option<Result<(), ApiError>>) {
    let cohort_id = entry.cohort_id.as_deref().unwrap_or("");
    match outcome {
        Some(Ok(())) => info!(
            path = %entry.path,
            status = entry.status,
            workspace = ?entry.workspace,
            cohort_id,
            added = entry.added,
            removed = entry.removed,
            "partner request applied"
        ),
        Some(Err(err)) => warn!(
            path = %entry.path,
            status = entry.status,
            workspace = ?entry.workspace,
            cohort_id,
            error = %err,
            "partner request rejected"
        ),
        None => warn!(path = %entry.path, "partner request rejected by the rate limit"),
    }
}

async fn post_cohort_name(
    State(emulator): State<Emulator>,
    Path(partner_name): Path<String>,
    uri: Uri,
    body: Bytes,
) -> Response {
    emulator
        .handle_partner_request(Endpoint::CohortName, &partner_name, uri.path(), &body)
        .await
}

async fn post_cohort_users(
    State(emulator): State<Emulator>,
    Path(partner_name): Path<String>,
    uri: Uri,
    body: Bytes,
) -> Response {
    emulator
        .handle_partner_request(Endpoint::CohortUsers, &partner_name, uri.path(), &body)
        .await
}
