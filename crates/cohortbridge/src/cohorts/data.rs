//! The stored data a cohort evaluation reads, as whole rows, and the rules shared by every
//! evaluator: which canonical users exist and which profile belongs to whom. The reference
//! evaluator, `explain` and the tests read this form. Evaluation for members streams rows
//! through `rows::IndexBuilder` instead, which keeps far less per event.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde_json::{Map, Value};

use crate::identity;

/// One stored event, as the cohort evaluators read it.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    pub event: String,
    pub distinct_id: String,
    pub time_ms: i64,
    pub properties: Map<String, Value>,
}

/// Everything an evaluation reads.
#[derive(Debug, Clone, Default)]
pub struct CohortData {
    /// `$device:` id to the `$user_id` it was merged into.
    pub links: HashMap<String, String>,
    /// Profile properties by the distinct id they were stored under.
    pub profiles: HashMap<String, Map<String, Value>>,
    /// Every distinct id that has an event, except the empty id.
    pub event_distinct_ids: HashSet<String>,
    /// The events whose names the definition uses; other events may be absent.
    pub events: Vec<EventRow>,
}

impl CohortData {
    /// Returns the canonical id a distinct id resolves to.
    pub fn canonical<'a>(&'a self, distinct_id: &'a str) -> &'a str {
        identity::canonical(&self.links, distinct_id)
    }

    /// Profiles by canonical id. A profile stored under a linked `$device:` id is an orphan:
    /// its device now resolves to a user, and the user does not inherit it.
    pub fn user_profiles(&self) -> HashMap<&str, &Map<String, Value>> {
        self.profiles
            .iter()
            .filter(|(id, _)| !self.links.contains_key(id.as_str()))
            .map(|(id, properties)| (id.as_str(), properties))
            .collect()
    }

    /// Returns the users a cohort can contain, sorted: the canonical ids of every distinct id
    /// with an event, and every canonical id with a profile.
    pub fn users(&self) -> BTreeSet<String> {
        let mut users: BTreeSet<String> = self
            .event_distinct_ids
            .iter()
            .filter(|id| !id.is_empty())
            .map(|id| self.canonical(id).to_owned())
            .collect();
        users.extend(self.user_profiles().keys().map(|id| id.to_string()));
        users
    }
}
