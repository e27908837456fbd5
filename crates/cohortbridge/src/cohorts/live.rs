//! A cohort kept current incrementally. New events, profile updates and identity links
//! re-evaluate only the users they touch. The passing of time re-evaluates a user when one of
//! the user's events or profile datetimes can cross a window edge.
//!
//! A `LiveCohort` starts from a full evaluation and afterwards never rescans history. Each
//! change returns the members added and removed, which is what a dynamic sync sends.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::{Days, TimeZone};
use chrono_tz::Tz;
use serde_json::{Map, Value};

use super::data::{CohortData, EventRow};
use super::definition::{Definition, EventRule, ProfileOp};
use super::engine::{rule_holds, Engine};
use super::eval::EvalError;
use super::values::{matches_filter, parse_datetime};
use super::window::{resolve_local, Window};

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// Members added and removed by one change.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MembershipChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

/// One cohort's membership, kept current as data arrives and time passes.
pub struct LiveCohort {
    definition: Definition,
    cohorts: HashMap<i64, Definition>,
    tz: Tz,
    data: CohortData,
    /// (time, event row index) per canonical user and event name, sorted by time, so that
    /// window searches read one contiguous slice.
    index: HashMap<String, HashMap<String, Vec<(i64, usize)>>>,
    /// Event row indexes per stored distinct id, so an identity link can move them.
    rows_by_distinct_id: HashMap<String, Vec<usize>>,
    /// The `$device:` ids linked to each user.
    devices: HashMap<String, Vec<String>>,
    members: BTreeSet<String>,
    /// Instants at which a user's membership can change with no new data.
    wakeups: BTreeMap<i64, HashSet<String>>,
    now_ms: i64,
}

impl LiveCohort {
    /// Evaluates the cohort in full as of `now_ms` and prepares incremental updates.
    pub fn new(
        data: CohortData,
        definition: Definition,
        cohorts: HashMap<i64, Definition>,
        tz: Tz,
        now_ms: i64,
    ) -> Result<Self, EvalError> {
        let mut data = data;
        // Room for new events up front, so that appending a batch rarely moves every stored
        // row. NOTE: once the room is used up, one append pays for moving all rows.
        data.events.reserve(data.events.len() / 4 + 65_536);

        let members = Engine::build(&data)
            .evaluate(&definition, &cohorts, tz, now_ms)?
            .members;
        let mut live = Self {
            definition,
            cohorts,
            tz,
            data,
            index: HashMap::new(),
            rows_by_distinct_id: HashMap::new(),
            devices: HashMap::new(),
            members,
            wakeups: BTreeMap::new(),
            now_ms,
        };

        for i in 0..live.data.events.len() {
            let distinct_id = live.data.events[i].distinct_id.clone();
            live.rows_by_distinct_id
                .entry(distinct_id)
                .or_default()
                .push(i);
        }
        for (device, user) in &live.data.links {
            live.devices
                .entry(user.clone())
                .or_default()
                .push(device.clone());
        }

        let users: Vec<String> = live.data.users().into_iter().collect();
        for user in &users {
            live.reindex(user);
        }
        for user in &users {
            live.schedule(user);
        }
        Ok(live)
    }

    /// Returns the current members' canonical ids, sorted.
    pub fn members(&self) -> &BTreeSet<String> {
        &self.members
    }

    /// Returns the data the cohort was built from, with every change applied since.
    pub fn data(&self) -> &CohortData {
        &self.data
    }

    /// Adds new events and brings membership up to `now_ms`.
    pub fn apply_events(
        &mut self,
        events: Vec<EventRow>,
        now_ms: i64,
    ) -> Result<MembershipChanges, EvalError> {
        let mut touched = HashSet::new();
        let first_new = self.data.events.len();
        for row in events {
            if row.distinct_id.is_empty() {
                continue;
            }
            let i = self.data.events.len();
            // Look up before inserting, so that known ids cost no string copy.
            if !self.data.event_distinct_ids.contains(&row.distinct_id) {
                self.data.event_distinct_ids.insert(row.distinct_id.clone());
            }
            match self.rows_by_distinct_id.get_mut(&row.distinct_id) {
                Some(rows) => rows.push(i),
                None => {
                    self.rows_by_distinct_id
                        .insert(row.distinct_id.clone(), vec![i]);
                }
            }
            let user = self.data.canonical(&row.distinct_id);
            if !touched.contains(user) {
                touched.insert(user.to_owned());
            }
            self.data.events.push(row);
        }
        for i in first_new..self.data.events.len() {
            self.insert_into_index(i);
        }
        self.update(touched, now_ms)
    }

    /// Adds a newly appended event row to its user's index, keeping time order.
    fn insert_into_index(&mut self, i: usize) {
        let row = &self.data.events[i];
        let user = self.data.canonical(&row.distinct_id);
        if !self.index.contains_key(user) {
            self.index.insert(user.to_owned(), HashMap::new());
        }
        let names = self.index.get_mut(user).expect("inserted above");
        let rows = match names.get_mut(&row.event) {
            Some(rows) => rows,
            None => names.entry(row.event.clone()).or_default(),
        };
        // The new row has the largest index, so it goes after every row at the same time. New
        // events are usually the latest, which makes the common case a push.
        let entry = (row.time_ms, i);
        if rows.last().is_none_or(|last| last.0 <= row.time_ms) {
            rows.push(entry);
        } else {
            let position = rows.partition_point(|&(time_ms, _)| time_ms <= row.time_ms);
            rows.insert(position, entry);
        }
    }

    /// Replaces the stored properties of profiles, by the distinct id they are stored under,
    /// and brings membership up to `now_ms`.
    pub fn apply_profiles(
        &mut self,
        profiles: Vec<(String, Map<String, Value>)>,
        now_ms: i64,
    ) -> Result<MembershipChanges, EvalError> {
        let mut touched = HashSet::new();
        for (distinct_id, properties) in profiles {
            touched.insert(self.data.canonical(&distinct_id).to_owned());
            self.data.profiles.insert(distinct_id, properties);
        }
        self.update(touched, now_ms)
    }

    /// Records identity links (a `$device:` id merged into a user), moving the device's events
    /// to the user, and brings membership up to `now_ms`.
    pub fn apply_links(
        &mut self,
        links: Vec<(String, String)>,
        now_ms: i64,
    ) -> Result<MembershipChanges, EvalError> {
        let mut touched = HashSet::new();
        for (device, user) in links {
            if self.data.links.contains_key(&device) {
                continue;
            }
            touched.insert(self.data.canonical(&device).to_owned());
            self.data.links.insert(device.clone(), user.clone());
            self.devices
                .entry(user.clone())
                .or_default()
                .push(device.clone());
            touched.insert(user);
            self.index.remove(&device);
        }
        for user in &touched {
            self.reindex(user);
        }
        self.update(touched, now_ms)
    }

    /// Brings membership up to `now_ms` when no data arrived: windows slide past events.
    pub fn advance(&mut self, now_ms: i64) -> Result<MembershipChanges, EvalError> {
        self.update(HashSet::new(), now_ms)
    }

    /// Re-evaluates the touched users and every user with a wakeup due by `now_ms`.
    fn update(
        &mut self,
        mut touched: HashSet<String>,
        now_ms: i64,
    ) -> Result<MembershipChanges, EvalError> {
        // Cohorts referenced through in_cohort can change for any user, so re-evaluate all.
        let everyone = !self.cohorts.is_empty() && !self.definition.cohort_references().is_empty();
        self.now_ms = now_ms;
        let due: Vec<i64> = self.wakeups.range(..=now_ms).map(|(t, _)| *t).collect();
        for instant in due {
            touched.extend(self.wakeups.remove(&instant).unwrap_or_default());
        }
        if everyone {
            touched.extend(self.data.users());
        }

        let mut changes = MembershipChanges::default();
        let mut results = Vec::new();
        for user in &touched {
            let member =
                self.is_user(user) && self.user_holds(&self.definition, user, &mut Vec::new())?;
            results.push((user.clone(), member));
        }
        // Membership changes only after every touched user evaluated without error.
        for (user, member) in results {
            if member && self.members.insert(user.clone()) {
                changes.added.push(user.clone());
            } else if !member && self.members.remove(&user) {
                changes.removed.push(user.clone());
            }
            self.schedule(&user);
        }
        changes.added.sort();
        changes.removed.sort();
        Ok(changes)
    }

    /// Rebuilds the per-name index of one canonical user from the distinct ids resolving to it.
    fn reindex(&mut self, user: &str) {
        let mut by_name: HashMap<String, Vec<(i64, usize)>> = HashMap::new();
        let mut sources = vec![user.to_owned()];
        sources.extend(self.devices.get(user).into_iter().flatten().cloned());
        for source in sources {
            if self.data.canonical(&source) != user {
                continue;
            }
            for &i in self.rows_by_distinct_id.get(&source).into_iter().flatten() {
                let row = &self.data.events[i];
                match by_name.get_mut(&row.event) {
                    Some(rows) => rows.push((row.time_ms, i)),
                    None => {
                        by_name.insert(row.event.clone(), vec![(row.time_ms, i)]);
                    }
                }
            }
        }
        for rows in by_name.values_mut() {
            rows.sort_unstable();
        }
        self.index.insert(user.to_owned(), by_name);
    }

    fn user_holds(
        &self,
        definition: &Definition,
        user: &str,
        visiting: &mut Vec<i64>,
    ) -> Result<bool, EvalError> {
        Ok(match definition {
            Definition::All(items) => {
                for item in items {
                    if !self.user_holds(item, user, visiting)? {
                        return Ok(false);
                    }
                }
                true
            }
            Definition::Any(items) => {
                for item in items {
                    if self.user_holds(item, user, visiting)? {
                        return Ok(true);
                    }
                }
                false
            }
            Definition::Not(inner) => !self.user_holds(inner, user, visiting)?,
            Definition::Profile(filter) => {
                let actual = self.profile(user).and_then(|p| p.get(&filter.property));
                matches_filter(actual, filter, self.now_ms)
            }
            Definition::Event(rule) => {
                let rows = self
                    .index
                    .get(user)
                    .and_then(|names| names.get(&rule.event))
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                let bounds = rule.within.bounds(self.now_ms, self.tz);
                rule_holds(rule, rows, &self.data.events, bounds, self.tz, self.now_ms)
            }
            Definition::InCohort(id) => {
                if visiting.contains(id) {
                    return Err(EvalError::CohortCycle {
                        cohort_id: *id,
                        path: visiting.clone(),
                    });
                }
                let referenced = self
                    .cohorts
                    .get(id)
                    .ok_or(EvalError::CohortNotFound { cohort_id: *id })?;
                visiting.push(*id);
                let result = self.user_holds(referenced, user, visiting);
                visiting.pop();
                result?
            }
        })
    }

    /// Checks whether a canonical id is one of the project's users: it has an event, directly or
    /// through a linked device, or a profile.
    fn is_user(&self, user: &str) -> bool {
        if self.data.links.contains_key(user) {
            return false;
        }
        if self.data.profiles.contains_key(user) || self.data.event_distinct_ids.contains(user) {
            return true;
        }
        self.devices
            .get(user)
            .into_iter()
            .flatten()
            .any(|device| self.data.event_distinct_ids.contains(device))
    }

    /// Returns the profile of a canonical user. A profile stored under a linked device id is an
    /// orphan and matches for no user.
    fn profile(&self, user: &str) -> Option<&Map<String, Value>> {
        if self.data.links.contains_key(user) {
            return None;
        }
        self.data.profiles.get(user)
    }

    /// Records the next instant after `now` at which the user's membership can change.
    fn schedule(&mut self, user: &str) {
        let mut next = NextInstant {
            after_ms: self.now_ms,
            earliest: None,
        };
        self.collect_instants(&self.definition, user, &mut next);
        for definition in self.cohorts.values() {
            self.collect_instants(definition, user, &mut next);
        }
        if let Some(instant) = next.earliest {
            self.wakeups
                .entry(instant)
                .or_default()
                .insert(user.to_owned());
        }
    }

    fn collect_instants(&self, definition: &Definition, user: &str, out: &mut NextInstant) {
        match definition {
            Definition::All(items) | Definition::Any(items) => items
                .iter()
                .for_each(|item| self.collect_instants(item, user, out)),
            Definition::Not(inner) => self.collect_instants(inner, user, out),
            Definition::InCohort(_) => {}
            Definition::Profile(filter) => {
                if filter.op != ProfileOp::WithinLast {
                    return;
                }
                let actual = self.profile(user).and_then(|p| p.get(&filter.property));
                let instant = actual.and_then(Value::as_str).and_then(parse_datetime);
                let days = filter.value.as_ref().and_then(Value::as_f64);
                if let Some((instant, days)) = instant.zip(days) {
                    out.consider(instant);
                    out.consider(instant + (days * DAY_MS as f64) as i64 + 1);
                }
            }
            Definition::Event(rule) => {
                let Some(rows) = self
                    .index
                    .get(user)
                    .and_then(|names| names.get(&rule.event))
                else {
                    return;
                };
                let events = &self.data.events;
                let time = |row: &(i64, usize)| row.0;

                // A `within_last` filter on an event property changes with the clock too, at
                // the property's instant and when it falls out of the range. NOTE: this scans
                // all of the user's events of the name, unlike the window search below.
                for filter in rule
                    .filters
                    .iter()
                    .filter(|f| f.op == ProfileOp::WithinLast)
                {
                    let days = filter.value.as_ref().and_then(Value::as_f64);
                    for &(_, i) in rows {
                        let value = events[i].properties.get(&filter.property);
                        let instant = value.and_then(Value::as_str).and_then(parse_datetime);
                        if let Some((instant, days)) = instant.zip(days) {
                            out.consider(instant);
                            out.consider(instant + (days * DAY_MS as f64) as i64 + 1);
                        }
                    }
                }

                // An event later than `now` enters the windows when the clock reaches it.
                let first_future = rows.partition_point(|row| time(row) <= self.now_ms);
                if let Some(row) = rows.get(first_future) {
                    out.consider(time(row));
                }

                // Only events whose exit lies near `now` or just after it can give the next
                // exit; three hours of margin cover any clock change.
                let span = match rule.within {
                    Window::LastHours(hours) => i64::from(hours) * HOUR_MS,
                    Window::LastDays(days) => i64::from(days) * DAY_MS,
                    Window::AllTime | Window::Since(_) | Window::Between(_, _) => return,
                };
                let margin = 3 * HOUR_MS;
                let from = rows.partition_point(|row| time(row) + span + margin < self.now_ms);
                let to = rows.partition_point(|row| time(row) + span - margin <= self.now_ms);
                let to = (to + 2).min(rows.len()).max(from);
                for row in &rows[from..to] {
                    exit_instants(rule, time(row), self.tz, out);
                }
            }
        }
    }
}

/// The earliest instant after `after_ms` seen so far.
struct NextInstant {
    after_ms: i64,
    earliest: Option<i64>,
}

impl NextInstant {
    fn consider(&mut self, instant: i64) {
        if instant > self.after_ms && self.earliest.is_none_or(|e| instant < e) {
            self.earliest = Some(instant);
        }
    }
}

/// Considers the instants at which an event at `time_ms` leaves the rule's window as `now`
/// advances.
fn exit_instants(rule: &EventRule, time_ms: i64, tz: Tz, out: &mut NextInstant) {
    match rule.within {
        Window::AllTime | Window::Since(_) | Window::Between(_, _) => {}
        Window::LastHours(hours) => {
            out.consider(time_ms + i64::from(hours) * HOUR_MS + 1);
        }
        Window::LastDays(days) => {
            // The window starts at the same wall-clock time `days` days back, so the event
            // leaves it once the local clock passes its own wall-clock time plus `days` days.
            let local = tz.timestamp_millis_opt(time_ms).unwrap().naive_local();
            if let Some(later) = local.checked_add_days(Days::new(u64::from(days))) {
                let exit = resolve_local(tz, later);
                // NOTE: around a clock change the exact exit can be up to an hour away from the
                // resolved wall time, so the neighbouring hours are re-evaluated too.
                for candidate in [exit - HOUR_MS, exit, exit + HOUR_MS] {
                    out.consider(candidate + 1);
                }
            }
        }
    }
}
