//! Client of Braze's `POST /users/track` for the attribute delivery mode: cohort membership
//! written as an array custom attribute with a customer REST API key, for workspaces without a
//! partner cohort import integration.
//!
//! Each user is one attribute object, `{"external_id": ID, "_update_existing_only": true,
//! ATTRIBUTE: {"add": [...], "remove": [...]}}`, so no user is created. Braze accepts at most 75
//! attribute objects per request. A 2xx reply may still reject single objects; its `errors`
//! array names them by `index`.

use serde_json::{json, Value};

use super::client::{BrazeClient, BrazeError, Credentials};

/// Braze accepts at most this many attribute objects in one `/users/track` request.
pub const MAX_ATTRIBUTE_OBJECTS: usize = 75;

/// The outcome of one accepted request.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TrackOutcome {
    pub retries: u32,
    /// Positions of the objects Braze rejected, each with its reason.
    pub rejected: Vec<(usize, String)>,
}

/// Builds the attribute object that adds `add` to and removes `remove` from `attribute`.
pub fn attribute_object(
    external_id: &str,
    attribute: &str,
    add: &[&str],
    remove: &[&str],
) -> Value {
    let mut change = serde_json::Map::new();
    if !add.is_empty() {
        change.insert("add".into(), json!(add));
    }
    if !remove.is_empty() {
        change.insert("remove".into(), json!(remove));
    }
    json!({
        "external_id": external_id,
        "_update_existing_only": true,
        attribute: change,
    })
}

impl BrazeClient {
    /// Sends attribute objects in one request with the REST API key in `credentials`
    /// (`data_import_key` contains it in this mode).
    ///
    /// # Panics
    ///
    /// When there are more than `MAX_ATTRIBUTE_OBJECTS` objects; callers split them.
    pub async fn track_attributes(
        &self,
        base_url: &str,
        credentials: &Credentials,
        objects: Vec<Value>,
    ) -> Result<TrackOutcome, BrazeError> {
        assert!(
            objects.len() <= MAX_ATTRIBUTE_OBJECTS,
            "callers split attribute objects into requests of at most {MAX_ATTRIBUTE_OBJECTS}"
        );
        let url = format!("{}/users/track", base_url.trim_end_matches('/'));
        let body = json!({"attributes": objects});
        let (retries, text) = self
            .post_with(&url, body, credentials, Some(&credentials.data_import_key))
            .await?;
        Ok(TrackOutcome {
            retries,
            rejected: rejected_objects(&text),
        })
    }

    /// Checks a REST API key with an empty `attributes` array, which changes nothing. Like
    /// `probe`, it is one attempt with a short connect timeout.
    pub async fn probe_users_track(
        &self,
        base_url: &str,
        credentials: &Credentials,
    ) -> Result<(), BrazeError> {
        let url = format!("{}/users/track", base_url.trim_end_matches('/'));
        let body = br#"{"attributes":[]}"#.to_vec();
        self.probe_once(&url, body, credentials, Some(&credentials.data_import_key))
            .await
    }
}

/// Extracts the `attributes` entries of a reply's `errors` array, as (index, reason).
fn rejected_objects(text: &str) -> Vec<(usize, String)> {
    let Ok(reply) = serde_json::from_str::<Value>(text) else {
        return Vec::new();
    };
    let Some(errors) = reply.get("errors").and_then(Value::as_array) else {
        return Vec::new();
    };
    errors
        .iter()
        .filter(|e| e.get("input_array").and_then(Value::as_str) == Some("attributes"))
        .filter_map(|e| {
            let index = e.get("index")?.as_u64()? as usize;
            let reason = e
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("rejected")
                .to_owned();
            Some((index, reason))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_carries_add_and_remove() {
        let object = attribute_object("u1", "cohorts", &["New"], &["Old"]);
        assert_eq!(
            object,
            json!({"external_id": "u1", "_update_existing_only": true,
                "cohorts": {"add": ["New"], "remove": ["Old"]}})
        );
        let object = attribute_object("u2", "cohorts", &[], &["Gone"]);
        assert_eq!(object["cohorts"], json!({"remove": ["Gone"]}));
    }

    #[test]
    fn errors_array_names_rejected_objects() {
        let text = r#"{"message":"success","errors":[
            {"type":"bad","input_array":"attributes","index":3},
            {"type":"other","input_array":"events","index":0}]}"#;
        assert_eq!(rejected_objects(text), vec![(3, "bad".to_owned())]);
        assert!(rejected_objects(r#"{"message":"success"}"#).is_empty());
        assert!(rejected_objects("<html>").is_empty());
    }
}
