//! Original ID Merge: `$identify`, `$create_alias` and `$merge` events merge clusters of
//! distinct ids. A project uses it instead of Simplified ID Merge when its identity mode is
//! `original`.
//!
//! This module turns one event into the merge it asks for, or into the reason it cannot ask
//! for one. The store applies merges inside the transaction that stores the events, because
//! whether a merge may happen depends on the clusters as they are at that moment.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ingest::event::Endpoint;
use crate::store::{IdentityFailure, MergeKind, MergeRequest, NewEvent};

/// Mixpanel's limit on the number of distinct ids in one cluster under Original ID Merge.
pub const MAX_CLUSTER_SIZE: i64 = 500;

/// The rule set that resolves a project's distinct ids to users, chosen per project and fixed
/// once the project has events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityMode {
    /// `$user_id` and `$device_id` on events link devices to users.
    #[default]
    Simplified,
    /// `$identify`, `$create_alias` and `$merge` events merge clusters of ids.
    Original,
}

impl IdentityMode {
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityMode::Simplified => "simplified",
            IdentityMode::Original => "original",
        }
    }

    /// Parses a mode name as the admin API and the CLI accept it.
    pub fn parse(name: &str) -> Result<Self, String> {
        match name {
            "simplified" => Ok(IdentityMode::Simplified),
            "original" => Ok(IdentityMode::Original),
            other => Err(format!(
                "identity mode {other:?} is invalid; expected \"simplified\" or \"original\""
            )),
        }
    }

    /// Returns the settings key under which a project's mode is stored.
    pub fn setting_key(project_id: i64) -> String {
        format!("identity_mode.{project_id}")
    }
}

/// Checks that `id` is a UUID version 4 in its hyphenated text form, in either case.
pub fn is_uuid_v4(id: &str) -> bool {
    let bytes = id.as_bytes();
    if bytes.len() != 36 {
        return false;
    }
    let hyphens_in_place = bytes
        .iter()
        .enumerate()
        .all(|(i, b)| matches!(i, 8 | 13 | 18 | 23) == (*b == b'-'));
    let hex_elsewhere = bytes
        .iter()
        .enumerate()
        .filter(|(i, _)| !matches!(i, 8 | 13 | 18 | 23))
        .all(|(_, b)| b.is_ascii_hexdigit());
    hyphens_in_place && hex_elsewhere && bytes[14] == b'4' && b"89abAB".contains(&bytes[19])
}

fn text_property<'a>(event: &'a NewEvent, name: &str) -> Option<&'a str> {
    event
        .properties
        .get(name)
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
}

/// Reads the merge that an event requests. Returns `None` for events that merge nothing, and a
/// failure for a merge event that is invalid or arrived through an endpoint that may not merge.
pub fn merge_request(
    event: &NewEvent,
    endpoint: Endpoint,
) -> Option<Result<MergeRequest, IdentityFailure>> {
    let fail = |reason: String| IdentityFailure {
        event: event.event.clone(),
        insert_id: event.insert_id.clone(),
        distinct_id: event.distinct_id.clone(),
        reason,
    };
    let request = |kind, from: &str, into: &str| MergeRequest {
        event: event.event.clone(),
        insert_id: event.insert_id.clone(),
        distinct_id: event.distinct_id.clone(),
        kind,
        from: from.to_owned(),
        into: into.to_owned(),
    };
    let result = match event.event.as_str() {
        "$identify" => {
            let into = text_property(event, "$identified_id").unwrap_or(&event.distinct_id);
            match (
                text_property(event, "$anon_id"),
                text_property(event, "$anon_distinct_id"),
            ) {
                _ if into.is_empty() => Err(fail(
                    "$identify has no $identified_id and no distinct_id".into(),
                )),
                (Some(anon), _) if !is_uuid_v4(anon) => Err(fail(format!(
                    "$anon_id {anon:?} is not a UUID v4, so it is not merged"
                ))),
                (Some(anon), _) | (None, Some(anon)) => {
                    Ok(request(MergeKind::Identify, anon, into))
                }
                (None, None) => Err(fail(
                    "$identify has neither $anon_id nor $anon_distinct_id".into(),
                )),
            }
        }
        "$create_alias" => match text_property(event, "alias") {
            _ if event.distinct_id.is_empty() => {
                Err(fail("$create_alias has no distinct_id".into()))
            }
            Some(alias) => Ok(request(MergeKind::CreateAlias, alias, &event.distinct_id)),
            None => Err(fail("$create_alias has no alias property".into())),
        },
        "$merge" => {
            let ids: Vec<&str> = event
                .properties
                .get("$distinct_ids")
                .and_then(Value::as_array)
                .map(|list| list.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            match ids.as_slice() {
                _ if endpoint != Endpoint::Import => Err(fail(
                    "$merge is accepted only through /import with the API secret".into(),
                )),
                [into, from] if !into.is_empty() && !from.is_empty() => {
                    Ok(request(MergeKind::Merge, from, into))
                }
                _ => Err(fail(
                    "$merge needs $distinct_ids with exactly two non-empty ids".into(),
                )),
            }
        }
        _ => return None,
    };
    let result = result.and_then(|merge| {
        if merge.from.contains('\0') || merge.into.contains('\0') {
            return Err(fail(
                "the ids to merge contain the NUL character U+0000, which cannot be stored".into(),
            ));
        }
        Ok(merge)
    });
    Some(result)
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Map};

    use super::*;

    fn event(name: &str, distinct_id: &str, properties: Value) -> NewEvent {
        let properties: Map<String, Value> = properties.as_object().unwrap().clone();
        NewEvent {
            event: name.into(),
            distinct_id: distinct_id.into(),
            time_ms: 1_700_000_000_000,
            insert_id: "i".into(),
            properties,
        }
    }

    #[test]
    fn uuid_v4_rules() {
        assert!(is_uuid_v4("c0ffee00-1111-4aaa-8bbb-000000000001"));
        assert!(is_uuid_v4("C0FFEE00-1111-4AAA-BBBB-000000000001"));
        for bad in [
            "device-123",
            "c0ffee00-1111-1aaa-8bbb-000000000001",
            "c0ffee00-1111-4aaa-7bbb-000000000001",
            "c0ffee00111114aaa8bbb000000000001",
            "c0ffee00-1111-4aaa-8bbb-00000000000g",
        ] {
            assert!(!is_uuid_v4(bad), "{bad}");
        }
    }

    #[test]
    fn identify_reads_both_forms() {
        let anon = "c0ffee00-1111-4aaa-8bbb-000000000001";
        let identify = event(
            "$identify",
            "u",
            json!({"$identified_id": "u", "$anon_id": anon}),
        );
        let merge = merge_request(&identify, Endpoint::Track).unwrap().unwrap();
        assert_eq!((merge.from.as_str(), merge.into.as_str()), (anon, "u"));

        let js = event("$identify", "u", json!({"$anon_distinct_id": "17a-js-id"}));
        let merge = merge_request(&js, Endpoint::Track).unwrap().unwrap();
        assert_eq!(merge.from, "17a-js-id");
        assert_eq!(merge.kind, MergeKind::Identify);
    }

    #[test]
    fn invalid_merges_give_reasons() {
        let cases = [
            (
                event("$identify", "u", json!({"$anon_id": "device-123"})),
                Endpoint::Import,
                "UUID v4",
            ),
            (
                event("$identify", "u", json!({})),
                Endpoint::Import,
                "neither",
            ),
            (
                event("$create_alias", "u", json!({})),
                Endpoint::Import,
                "alias",
            ),
            (
                event("$merge", "", json!({"$distinct_ids": ["a", "b"]})),
                Endpoint::Track,
                "/import",
            ),
            (
                event("$merge", "", json!({"$distinct_ids": ["a"]})),
                Endpoint::Import,
                "exactly two",
            ),
        ];
        for (record, endpoint, expected) in cases {
            let failure = merge_request(&record, endpoint).unwrap().unwrap_err();
            assert!(failure.reason.contains(expected), "{}", failure.reason);
        }
        assert!(merge_request(&event("Viewed", "u", json!({})), Endpoint::Import).is_none());
    }
}
