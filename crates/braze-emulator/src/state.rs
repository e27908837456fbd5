//! In-memory state: cohorts per workspace and the log of partner requests.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::validate::{CohortChange, UserAlias};

/// One cohort in one workspace.
#[derive(Debug, Clone, Default)]
pub(crate) struct Cohort {
    pub name: String,
    /// The `created_at` string of the request that created the cohort.
    pub created_at: String,
    pub user_ids: BTreeSet<String>,
    pub device_ids: BTreeSet<String>,
    pub aliases: BTreeSet<UserAlias>,
}

impl Cohort {
    /// Applies one change. Adding a present id or removing an absent id does nothing.
    pub fn apply(&mut self, change: &CohortChange) {
        if change.should_remove {
            for id in &change.user_ids {
                self.user_ids.remove(id);
            }
            for id in &change.device_ids {
                self.device_ids.remove(id);
            }
            for alias in &change.aliases {
                self.aliases.remove(alias);
            }
        } else {
            self.user_ids.extend(change.user_ids.iter().cloned());
            self.device_ids.extend(change.device_ids.iter().cloned());
            self.aliases.extend(change.aliases.iter().cloned());
        }
    }

    fn summary(&self, workspace: usize, cohort_id: &str) -> CohortSummary {
        CohortSummary {
            workspace,
            cohort_id: cohort_id.to_owned(),
            name: self.name.clone(),
            created_at: self.created_at.clone(),
            member_count: self.user_ids.len() + self.device_ids.len() + self.aliases.len(),
            user_id_count: self.user_ids.len(),
            device_id_count: self.device_ids.len(),
            alias_count: self.aliases.len(),
        }
    }
}

/// A cohort as `GET /_emulator/cohorts` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CohortSummary {
    /// Index of the cohort's data import key in [`crate::Config::data_import_keys`].
    pub workspace: usize,
    pub cohort_id: String,
    pub name: String,
    pub created_at: String,
    /// Members of all kinds: external ids, device ids and aliases.
    pub member_count: usize,
    pub user_id_count: usize,
    pub device_id_count: usize,
    pub alias_count: usize,
}

/// Members of a cohort of one id kind, sorted byte-wise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Members {
    UserIds(Vec<String>),
    DeviceIds(Vec<String>),
    Aliases(Vec<UserAlias>),
}

/// The id kind that `GET /_emulator/cohorts/{cohort_id}/members?kind=` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberKind {
    UserIds,
    DeviceIds,
    Aliases,
}

impl MemberKind {
    /// Parses the `kind` query value, returning `None` for an unknown kind.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "user_ids" => Some(MemberKind::UserIds),
            "device_ids" => Some(MemberKind::DeviceIds),
            "aliases" => Some(MemberKind::Aliases),
            _ => None,
        }
    }
}

/// One request to a partner endpoint, as `GET /_emulator/requests` lists it.
///
/// The id fields describe what the request carried, also when it was rejected or
/// handled by an injected fault. They are empty when `cohort_changes` did not
/// have the documented shape. `applied` tells whether the state changed.
/// The partner API key and client secret are never recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordedRequest {
    /// 1-based position since start or the last reset.
    pub seq: u64,
    pub path: String,
    pub status: u16,
    /// Whether the request changed the state, as opposed to being rejected or
    /// handled by an injected fault or the rate limit.
    pub applied: bool,
    /// Whether an injected fault produced the response.
    pub injected: bool,
    /// Index of the data import key, when `client_secret` matched one.
    pub workspace: Option<usize>,
    pub cohort_id: Option<String>,
    /// The `name` field of a cohort name request.
    pub name: Option<String>,
    /// Number of ids of all kinds in change objects without `should_remove: true`.
    pub added: usize,
    /// Number of ids of all kinds in change objects with `should_remove: true`.
    pub removed: usize,
    /// External ids sent for adding, in request order.
    pub ids_added: Vec<String>,
    /// External ids sent for removal, in request order.
    pub ids_removed: Vec<String>,
    pub device_ids_added: Vec<String>,
    pub device_ids_removed: Vec<String>,
    pub aliases_added: Vec<UserAlias>,
    pub aliases_removed: Vec<UserAlias>,
}

impl RecordedRequest {
    /// Creates an entry with no ids. The caller fills in what the body carried.
    pub(crate) fn new(path: String, status: u16) -> Self {
        RecordedRequest {
            seq: 0,
            path,
            status,
            applied: false,
            injected: false,
            workspace: None,
            cohort_id: None,
            name: None,
            added: 0,
            removed: 0,
            ids_added: Vec::new(),
            ids_removed: Vec::new(),
            device_ids_added: Vec::new(),
            device_ids_removed: Vec::new(),
            aliases_added: Vec::new(),
            aliases_removed: Vec::new(),
        }
    }

    /// Copies the ids of `changes` into the added and removed fields.
    pub(crate) fn record_changes(&mut self, changes: &[CohortChange]) {
        for change in changes {
            if change.should_remove {
                self.removed += change.id_count();
                self.ids_removed.extend(change.user_ids.iter().cloned());
                self.device_ids_removed
                    .extend(change.device_ids.iter().cloned());
                self.aliases_removed.extend(change.aliases.iter().cloned());
            } else {
                self.added += change.id_count();
                self.ids_added.extend(change.user_ids.iter().cloned());
                self.device_ids_added
                    .extend(change.device_ids.iter().cloned());
                self.aliases_added.extend(change.aliases.iter().cloned());
            }
        }
    }
}

/// Cohorts keyed by (workspace, cohort_id), so iteration is sorted by both.
#[derive(Debug, Default)]
pub(crate) struct Store {
    pub cohorts: BTreeMap<(usize, String), Cohort>,
    requests: Vec<RecordedRequest>,
}

impl Store {
    /// Appends a request to the log and assigns its sequence number.
    pub fn record(&mut self, mut request: RecordedRequest) {
        request.seq = self.requests.len() as u64 + 1;
        self.requests.push(request);
    }

    pub fn requests(&self) -> &[RecordedRequest] {
        &self.requests
    }

    pub fn cohort_summaries(&self) -> Vec<CohortSummary> {
        self.cohorts
            .iter()
            .map(|((workspace, cohort_id), cohort)| cohort.summary(*workspace, cohort_id))
            .collect()
    }

    /// Returns the members of one kind, or `None` if the cohort does not exist.
    pub fn members(&self, workspace: usize, cohort_id: &str, kind: MemberKind) -> Option<Members> {
        let cohort = self.cohorts.get(&(workspace, cohort_id.to_owned()))?;
        Some(match kind {
            MemberKind::UserIds => Members::UserIds(cohort.user_ids.iter().cloned().collect()),
            MemberKind::DeviceIds => {
                Members::DeviceIds(cohort.device_ids.iter().cloned().collect())
            }
            MemberKind::Aliases => Members::Aliases(cohort.aliases.iter().cloned().collect()),
        })
    }

    pub fn clear(&mut self) {
        self.cohorts.clear();
        self.requests.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(ids: &[&str]) -> CohortChange {
        CohortChange {
            user_ids: ids.iter().map(|id| id.to_string()).collect(),
            ..CohortChange::default()
        }
    }

    fn remove(ids: &[&str]) -> CohortChange {
        CohortChange {
            should_remove: true,
            ..add(ids)
        }
    }

    #[test]
    fn apply_add_twice_keeps_one_member() {
        let mut cohort = Cohort::default();
        cohort.apply(&add(&["u1"]));
        cohort.apply(&add(&["u1"]));
        assert_eq!(cohort.user_ids.len(), 1);
    }

    #[test]
    fn apply_remove_absent_is_noop() {
        let mut cohort = Cohort::default();
        cohort.apply(&add(&["u1"]));
        cohort.apply(&remove(&["u2"]));
        assert_eq!(cohort.user_ids.iter().collect::<Vec<_>>(), ["u1"]);
    }

    #[test]
    fn apply_in_order_add_then_remove() {
        let mut cohort = Cohort::default();
        cohort.apply(&add(&["u1", "u2"]));
        cohort.apply(&remove(&["u1"]));
        assert_eq!(cohort.user_ids.iter().collect::<Vec<_>>(), ["u2"]);
    }

    #[test]
    fn record_changes_splits_adds_and_removes() {
        let mut request = RecordedRequest::new("/p".into(), 201);
        request.record_changes(&[add(&["u1", "u2"]), remove(&["u3"])]);
        assert_eq!(request.added, 2);
        assert_eq!(request.removed, 1);
        assert_eq!(request.ids_added, ["u1", "u2"]);
        assert_eq!(request.ids_removed, ["u3"]);
    }

    #[test]
    fn record_assigns_sequence_numbers() {
        let mut store = Store::default();
        store.record(RecordedRequest::new("/a".into(), 201));
        store.record(RecordedRequest::new("/b".into(), 400));
        let seqs: Vec<u64> = store.requests().iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [1, 2]);
    }
}
