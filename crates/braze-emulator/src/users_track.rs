//! `POST /users/track` for custom attributes, authenticated with a workspace's REST API key
//! (`Authorization: Bearer`).
//!
//! It follows Braze's "User track" page for what cohortbridge sends: at most 75 attribute
//! objects per request, each naming its user by `external_id`; array attributes set whole, or
//! changed with `{"add": [...], "remove": [...]}`. A request with a bad object still succeeds
//! for the other objects, and its `errors` array names each rejected object by index. Events
//! and purchases are accepted and counted but not stored.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};
use tracing::info;

use crate::Emulator;

/// Braze accepts at most this many attribute objects in one request.
pub const MAX_ATTRIBUTE_OBJECTS: usize = 75;

/// Custom attributes per workspace and external id.
#[derive(Debug, Default)]
pub(crate) struct UserAttributes {
    users: HashMap<(usize, String), BTreeMap<String, Value>>,
}

impl UserAttributes {
    pub fn clear(&mut self) {
        self.users.clear();
    }

    /// External ids whose array attribute `attribute` contains `value`, sorted.
    pub fn holders(&self, workspace: usize, attribute: &str, value: &str) -> Vec<String> {
        let mut ids: Vec<String> = self
            .users
            .iter()
            .filter(|((ws, _), attrs)| {
                *ws == workspace
                    && attrs
                        .get(attribute)
                        .and_then(Value::as_array)
                        .is_some_and(|items| items.iter().any(|v| v == value))
            })
            .map(|((_, id), _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// Applies one attribute object; returns why it was rejected, if it was.
    fn apply(
        &mut self,
        workspace: usize,
        object: &Value,
        known_users: Option<&BTreeSet<String>>,
    ) -> Result<(), String> {
        let object = object
            .as_object()
            .ok_or("attribute object is not a JSON object")?;
        let external_id = object
            .get("external_id")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty())
            .ok_or("attribute object has no external_id string")?;
        let update_existing_only = object
            .get("_update_existing_only")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let key = (workspace, external_id.to_owned());
        let exists = match known_users {
            Some(users) => users.contains(external_id),
            None => true,
        };
        if !exists && update_existing_only {
            // NOTE: Braze skips unknown users silently when only existing users may be
            // updated; the emulator does the same and reports no error.
            return Ok(());
        }
        let attributes = self.users.entry(key).or_default();
        for (name, value) in object {
            if name == "external_id" || name.starts_with('_') {
                continue;
            }
            apply_attribute(attributes, name, value)?;
        }
        Ok(())
    }
}

fn apply_attribute(
    attributes: &mut BTreeMap<String, Value>,
    name: &str,
    value: &Value,
) -> Result<(), String> {
    let Value::Object(change) = value else {
        attributes.insert(name.to_owned(), value.clone());
        return Ok(());
    };
    if change.keys().any(|k| k != "add" && k != "remove") {
        return Err(format!(
            "attribute {name:?} must be a value or an object with only add and remove arrays"
        ));
    }
    let strings = |key: &str| -> Result<Vec<String>, String> {
        match change.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| {
                    item.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| format!("{name}.{key} must contain only strings"))
                })
                .collect(),
            Some(_) => Err(format!("{name}.{key} must be an array")),
        }
    };
    let (add, remove) = (strings("add")?, strings("remove")?);
    let mut items: Vec<Value> = attributes
        .get(name)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for item in add {
        if !items.iter().any(|v| v == &item) {
            items.push(Value::String(item));
        }
    }
    items.retain(|v| !remove.iter().any(|r| v == r));
    attributes.insert(name.to_owned(), Value::Array(items));
    Ok(())
}

fn message(status: StatusCode, text: &str) -> Response {
    (status, Json(json!({ "message": text }))).into_response()
}

/// Handles `POST /users/track`: an injected fault first, then auth, then the body.
pub(crate) async fn post_users_track(
    State(emulator): State<Emulator>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(response) = emulator.apply_fault("/users/track").await {
        return response;
    }

    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(workspace) = presented.and_then(|key| emulator.rest_workspace_of(key)) else {
        return message(StatusCode::UNAUTHORIZED, "Invalid API key");
    };
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(e) => {
            return message(
                StatusCode::BAD_REQUEST,
                &format!("request body is not valid JSON: {e}"),
            )
        }
    };
    let Some(request) = parsed.as_object() else {
        return message(
            StatusCode::BAD_REQUEST,
            "request body must be a JSON object",
        );
    };
    let attributes = array_field(request, "attributes");
    for field in ["attributes", "events", "purchases"] {
        if array_field(request, field).len() > MAX_ATTRIBUTE_OBJECTS {
            return message(
                StatusCode::BAD_REQUEST,
                &format!("{field} may contain at most {MAX_ATTRIBUTE_OBJECTS} objects"),
            );
        }
    }

    let mut errors = Vec::new();
    let mut processed = 0;
    emulator.with_attributes(|state, known_users| {
        for (index, object) in attributes.iter().enumerate() {
            match state.apply(workspace, object, known_users) {
                Ok(()) => processed += 1,
                Err(reason) => errors
                    .push(json!({"type": reason, "input_array": "attributes", "index": index})),
            }
        }
    });
    info!(
        workspace,
        processed,
        rejected = errors.len(),
        "users/track request applied"
    );
    let mut reply = json!({"message": "success", "attributes_processed": processed});
    if !errors.is_empty() {
        reply["errors"] = Value::Array(errors);
    }
    (StatusCode::CREATED, Json(reply)).into_response()
}

fn array_field<'a>(request: &'a Map<String, Value>, name: &str) -> &'a [Value] {
    request
        .get(name)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_and_remove_change_an_array() {
        let mut state = UserAttributes::default();
        let add = json!({"external_id": "u1", "cohorts": {"add": ["A", "B"]}});
        state.apply(0, &add, None).unwrap();
        let change = json!({"external_id": "u1", "cohorts": {"add": ["C"], "remove": ["A"]}});
        state.apply(0, &change, None).unwrap();
        assert!(state.holders(0, "cohorts", "A").is_empty());
        assert_eq!(state.holders(0, "cohorts", "B"), ["u1"]);
        assert_eq!(state.holders(0, "cohorts", "C"), ["u1"]);
    }

    #[test]
    fn unknown_users_are_skipped_with_a_users_list() {
        let mut state = UserAttributes::default();
        let known = BTreeSet::from(["u1".to_owned()]);
        let object = json!({"external_id": "stranger", "cohorts": {"add": ["A"]}});
        state.apply(0, &object, Some(&known)).unwrap();
        assert!(state.holders(0, "cohorts", "A").is_empty());
    }

    #[test]
    fn bad_objects_name_the_problem() {
        let mut state = UserAttributes::default();
        let error = state
            .apply(0, &json!({"cohorts": {"add": ["A"]}}), None)
            .unwrap_err();
        assert!(error.contains("external_id"), "{error}");
        let error = state
            .apply(
                0,
                &json!({"external_id": "u", "cohorts": {"add": [1]}}),
                None,
            )
            .unwrap_err();
        assert!(error.contains("only strings"), "{error}");
    }
}
