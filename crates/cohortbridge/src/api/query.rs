//! `POST /api/query/engage` (GET too): Mixpanel's profile query, authenticated with the API
//! secret like the raw export. Parameters come from the form body or the query string:
//! `distinct_id`, `distinct_ids` (a JSON array), `where` (the subset of Mixpanel's expression
//! language in `query_where`), `output_properties` (a JSON array of names), `page` and
//! `session_id`, and `filter_by_cohort` (`{"id": N}`, the members of a saved cohort evaluated
//! now) with `include_all_users`. By default members without a profile are listed with empty
//! properties, and `include_all_users=false` lists only members with a profile. Replies have
//! Mixpanel's shape:
//! `{"page", "page_size", "session_id", "status": "ok", "total", "results": [{"$distinct_id",
//! "$properties"}]}`.
//!
//! Pages hold 1000 profiles in distinct id order. The `session_id` is derived from the query's
//! filters, so a client passes it back with the next `page`, and one from another query is
//! rejected. Distinct ids are resolved through the identity links, so a merged id finds its
//! user's profile.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::export::secret_project;
use super::query_where::{self, Expr};
use super::AppState;
use crate::store::CohortInputs;
use crate::{cohorts, identity};

/// Mixpanel's page size for engage queries.
const PAGE_SIZE: usize = 1000;

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/query/engage", get(engage_query).post(engage_query))
}

fn error(status: StatusCode, message: String) -> Response {
    let mut response = (status, Json(json!({"error": message, "status": "error"}))).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    response
}

/// A validated engage query.
#[derive(Debug)]
struct EngageQuery {
    distinct_ids: Option<Vec<String>>,
    filter: Option<Expr>,
    output_properties: Option<Vec<String>>,
    page: usize,
    session_id: Option<String>,
    /// The saved cohort whose members the query is limited to.
    cohort_id: Option<i64>,
    include_all_users: bool,
    /// Identifies the filters, so that pages of one query share it.
    fingerprint: String,
}

fn parse_params(query: Option<&str>, body: &[u8]) -> Result<EngageQuery, String> {
    let mut params: BTreeMap<String, String> = BTreeMap::new();
    for source in [query.unwrap_or_default().as_bytes(), body] {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(source)
            .map_err(|e| format!("parameters are not URL-encoded: {e}"))?;
        params.extend(pairs);
    }
    let json_list = |name: &str| -> Result<Option<Vec<String>>, String> {
        params
            .get(name)
            .map(|text| {
                serde_json::from_str::<Vec<String>>(text).map_err(|_| {
                    format!("parameter `{name}` {text:?} is not a JSON array of strings")
                })
            })
            .transpose()
    };
    let mut distinct_ids = json_list("distinct_ids")?;
    if let Some(one) = params.get("distinct_id") {
        distinct_ids.get_or_insert_with(Vec::new).push(one.clone());
    }
    let output_properties = json_list("output_properties")?;
    let filter = params
        .get("where")
        .filter(|text| !text.trim().is_empty())
        .map(|text| query_where::parse(text))
        .transpose()
        .map_err(|e| e.to_string())?;
    let page = match params.get("page") {
        None => 0,
        Some(text) => text
            .parse()
            .map_err(|_| format!("parameter `page` {text:?} is not a whole number from 0"))?,
    };
    let cohort_id = params
        .get("filter_by_cohort")
        .map(|text| {
            let invalid = || {
                format!("parameter `filter_by_cohort` {text:?} is not a JSON object with a numeric `id`, for example {{\"id\": 12}}")
            };
            let value: Value = serde_json::from_str(text).map_err(|_| invalid())?;
            match &value["id"] {
                Value::Number(n) => n.as_i64().ok_or_else(invalid),
                Value::String(s) => s.parse().map_err(|_| invalid()),
                _ => Err(invalid()),
            }
        })
        .transpose()?;
    let include_all_users = match params.get("include_all_users").map(String::as_str) {
        None | Some("true") => true,
        Some("false") => false,
        Some(other) => {
            return Err(format!(
                "parameter `include_all_users` {other:?} is not `true` or `false`"
            ))
        }
    };
    let mut hasher = Sha256::new();
    for name in [
        "distinct_id",
        "distinct_ids",
        "where",
        "output_properties",
        "filter_by_cohort",
        "include_all_users",
    ] {
        let value = params.get(name).map(String::as_str).unwrap_or_default();
        hasher.update((value.len() as u64).to_be_bytes());
        hasher.update(value.as_bytes());
    }
    Ok(EngageQuery {
        distinct_ids,
        filter,
        output_properties,
        page,
        session_id: params.get("session_id").cloned(),
        cohort_id,
        include_all_users,
        fingerprint: hex::encode(&hasher.finalize()[..12]),
    })
}

/// Applies a query to a project's profiles, limited to `cohort` when the query filters by one,
/// and returns how many match and the requested page.
fn select_profiles(
    mut inputs: CohortInputs,
    cohort: Option<BTreeSet<String>>,
    params: &EngageQuery,
) -> (usize, Vec<Value>) {
    if let Some(members) = cohort {
        let mut profiles = HashMap::with_capacity(members.len());
        for member in members {
            match inputs.profiles.remove(&member) {
                Some(properties) => {
                    profiles.insert(member, properties);
                }
                None if params.include_all_users => {
                    profiles.insert(member, Map::new());
                }
                None => {}
            }
        }
        inputs.profiles = profiles;
    }
    let mut profiles: Vec<(String, Map<String, Value>)> = match &params.distinct_ids {
        Some(ids) => {
            let mut found = BTreeMap::new();
            for id in ids {
                let canonical = identity::canonical(&inputs.links, id).to_owned();
                if let Some(properties) = inputs.profiles.get(&canonical) {
                    found.insert(canonical, properties.clone());
                }
            }
            found.into_iter().collect()
        }
        None => inputs.profiles.into_iter().collect(),
    };
    profiles.retain(|(_, properties)| {
        params
            .filter
            .as_ref()
            .is_none_or(|filter| query_where::matches(filter, properties))
    });
    profiles.sort_by(|a, b| a.0.cmp(&b.0));
    let total = profiles.len();
    let results: Vec<Value> = profiles
        .into_iter()
        .skip(params.page.saturating_mul(PAGE_SIZE))
        .take(PAGE_SIZE)
        .map(|(distinct_id, mut properties)| {
            if let Some(names) = &params.output_properties {
                properties.retain(|name, _| names.contains(name));
            }
            json!({"$distinct_id": distinct_id, "$properties": properties})
        })
        .collect();
    (total, results)
}

async fn engage_query(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
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
            tracing::error!(error = %e, "engage query could not look up credentials");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage is unavailable; retry later".into(),
            );
        }
    };
    let params = match parse_params(query.as_deref(), &body) {
        Ok(params) => params,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    if let Some(session_id) = &params.session_id {
        if *session_id != params.fingerprint {
            return error(
                StatusCode::BAD_REQUEST,
                format!("session_id {session_id:?} belongs to another query; start again from page 0 without session_id"),
            );
        }
    }
    // NOTE: every profile of the project is loaded to build one page.
    let inputs = match state.store.cohort_inputs(project.id).await {
        Ok(inputs) => inputs,
        Err(e) => {
            tracing::error!(project_id = project.id, error = %e, "engage query failed to read profiles");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage is unavailable; retry later".into(),
            );
        }
    };
    let cohort = match params.cohort_id {
        None => None,
        Some(cohort_id) => {
            let now_ms = chrono::Utc::now().timestamp_millis();
            match cohorts::eval::evaluate_cohort(state.store.as_ref(), project.id, cohort_id, now_ms).await {
                Ok(Some(evaluated)) => Some(evaluated.members),
                Ok(None) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("parameter `filter_by_cohort`: cohort {cohort_id} not found in this project"),
                    )
                }
                Err(e) => {
                    tracing::error!(project_id = project.id, cohort_id, error = %e, "engage query could not evaluate the cohort");
                    return error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("cohort {cohort_id} could not be evaluated: {e}; retry later"),
                    );
                }
            }
        }
    };
    let (total, results) = select_profiles(inputs, cohort, &params);
    Json(json!({
        "page": params.page,
        "page_size": PAGE_SIZE,
        "session_id": params.fingerprint,
        "status": "ok",
        "total": total,
        "results": results,
    }))
    .into_response()
}
