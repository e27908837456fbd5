//! A cohort kept current incrementally. New events, profile updates and identity links
//! re-evaluate only the users they touch. The passing of time re-evaluates a user when one of
//! the user's events or profile datetimes can cross a window edge.
//!
//! A `LiveCohort` starts from a full evaluation and afterwards never rescans history. Each
//! change returns the members added and removed, which is what a dynamic sync sends.
//!
//! Distinct ids are interned as numbers, and only the events whose names the definitions read
//! are kept, each as a time and the event properties the definitions read. Per distinct id and
//! event name the events are sorted by time, so that a window is two binary searches. An event
//! costs one hash lookup of its distinct id and a comparison with the few names the cohort
//! reads.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};

use chrono::{Days, TimeZone};
use chrono_tz::Tz;
use serde_json::{Map, Value};

use super::data::{CohortData, EventRow};
use super::definition::{Definition, EventRule, Measure, ProfileOp};
use super::engine::measure_of_nothing;
use super::eval::EvalError;
use super::interner::{prefetch_read, Interner};
use super::rows::{row_value, PropertyNames, PropertyRow, Selection};
use super::values::{matches_filter, parse_datetime};
use super::window::{local_day, resolve_local, Bounds, Window};

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// Marks an event that keeps no property values.
const NO_VALUES: u32 = u32::MAX;

/// How many events ahead `apply_events` prefetches the memory that an event will read.
/// Far enough for a main-memory read to complete, near enough that the lines stay cached.
const PREFETCH_DISTANCE: usize = 16;

/// Resolved windows of the event rules, by the rule's address.
type RuleBounds = HashMap<*const EventRule, Bounds, foldhash::fast::RandomState>;

/// Members added and removed by one change.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MembershipChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

/// An event name the definitions read, with the event properties kept for it.
struct Slot {
    name: String,
    properties: Vec<String>,
}

/// An event's slot and distinct id number, looked up before the event is stored.
#[derive(Debug, Clone, Copy)]
struct Resolved {
    /// The slot of the event's name, or `None` when the definitions do not read the name.
    slot: Option<usize>,
    /// The hash of the distinct id, as `Interner::hash` returns it.
    hash: u64,
    /// The distinct id's number, or `None` when the id had none at lookup.
    number: Option<u32>,
}

/// One kept event.
#[derive(Debug, Clone, Copy)]
struct LiveEvent {
    time_ms: i64,
    /// Arrival order, which orders events of equal time.
    sequence: u32,
    /// Index into `LiveCohort::event_values`, or `NO_VALUES`.
    values: u32,
}

/// One cohort's membership, kept current as data arrives and time passes.
pub struct LiveCohort {
    definition: Definition,
    cohorts: HashMap<i64, Definition>,
    tz: Tz,
    /// Whether the definition reads other cohorts, whose members any change can move.
    reads_cohorts: bool,
    slots: Vec<Slot>,
    /// Profile properties that the definitions read; others are not kept.
    profile_properties: BTreeSet<String>,
    ids: Interner,
    /// The state of each distinct id, by number. One struct per id keeps what an event or an
    /// evaluation reads about the id in one place in memory.
    states: Vec<IdState>,
    /// One bit per distinct id number: whether the id has at least one event of any name. A
    /// bit set this small stays in cache, so an event of a name the definitions do not read
    /// costs only the lookup of its id.
    has_events: Vec<u64>,
    property_names: PropertyNames,
    /// Kept property values of events, in the order of their slot's `properties`.
    event_values: Vec<Box<[Value]>>,
    next_sequence: u32,
    /// The `$device:` id numbers linked to each user number.
    devices: HashMap<u32, Vec<u32>>,
    members: BTreeSet<String>,
    /// Instants at which a user's membership can change with no new data, with the user
    /// number to re-evaluate then, earliest first. An entry made stale by a later change only
    /// costs one extra evaluation.
    wakeups: BinaryHeap<Reverse<(i64, u32)>>,
    now_ms: i64,
    /// Buffers that `apply_events` and `update` clear and refill, kept between calls so that
    /// a batch does not allocate and free buffers of its own size. With glibc's allocator such
    /// frees ran `malloc_consolidate` over its free lists, which showed in profiles of a batch.
    scratch: Scratch,
}

/// Reused buffers of `LiveCohort`, empty between calls.
#[derive(Default)]
struct Scratch {
    resolved: Vec<Resolved>,
    touched: Vec<u32>,
    results: Vec<bool>,
}

/// The state a live cohort stores about one distinct id.
#[derive(Default)]
struct IdState {
    /// The number the id resolves to: its own unless it is linked.
    canonical: u32,
    /// Whether the id is a `$device:` id merged into a user.
    linked: bool,
    /// Whether devices are linked to the id.
    has_devices: bool,
    is_member: bool,
    /// The kept properties of the profile stored under the id.
    profile: Option<PropertyRow>,
    /// Per slot, the id's events of the slot's name, sorted by time.
    events: Vec<Vec<LiveEvent>>,
}

/// Collects the rows of a `LiveCohort` before its first full evaluation, one row at a time.
pub struct LiveBuilder {
    cohort: LiveCohort,
}

impl LiveBuilder {
    /// Records that `device` was merged into `user`.
    pub fn add_link(&mut self, device: &str, user: &str) {
        self.cohort.link(device, user);
    }

    /// Records a distinct id that has at least one event. The empty id belongs to no user.
    pub fn add_event_distinct_id(&mut self, distinct_id: &str) {
        if !distinct_id.is_empty() {
            let number = self.cohort.number(distinct_id);
            self.cohort.mark_has_events(number);
        }
    }

    /// Sets the profile stored under `distinct_id`.
    pub fn add_profile(&mut self, distinct_id: &str, properties: Map<String, Value>) {
        self.cohort.set_profile(distinct_id, properties);
    }

    /// Adds one event; only its time and the properties the definitions read are kept.
    pub fn add_event(
        &mut self,
        name: &str,
        distinct_id: &str,
        time_ms: i64,
        properties: &Map<String, Value>,
    ) {
        self.cohort
            .insert_event(name, distinct_id, time_ms, properties, false);
    }

    /// Evaluates every user as of `now_ms` and returns the live cohort.
    pub fn start(self, now_ms: i64) -> Result<LiveCohort, EvalError> {
        let mut cohort = self.cohort;
        for state in &mut cohort.states {
            for events in &mut state.events {
                events.sort_by_key(|e| (e.time_ms, e.sequence));
            }
        }
        let users: Vec<u32> = (0..cohort.states.len() as u32).collect();
        cohort.update(users, now_ms)?;
        Ok(cohort)
    }
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
        let mut builder = Self::builder(definition, cohorts, tz);
        for (device, user) in &data.links {
            builder.add_link(device, user);
        }
        for id in &data.event_distinct_ids {
            builder.add_event_distinct_id(id);
        }
        for (id, properties) in data.profiles {
            builder.add_profile(&id, properties);
        }
        for row in &data.events {
            builder.add_event(&row.event, &row.distinct_id, row.time_ms, &row.properties);
        }
        builder.start(now_ms)
    }

    /// Returns a builder that collects the cohort's rows before its first evaluation.
    pub fn builder(
        definition: Definition,
        cohorts: HashMap<i64, Definition>,
        tz: Tz,
    ) -> LiveBuilder {
        let reads_cohorts = !cohorts.is_empty() && !definition.cohort_references().is_empty();
        let selection = Selection::for_definitions(
            std::iter::once(&definition).chain(cohorts.values()),
            Some(&[]),
        );
        let slots = selection
            .events
            .into_iter()
            .map(|(name, properties)| Slot {
                name,
                properties: properties.into_iter().collect(),
            })
            .collect();
        LiveBuilder {
            cohort: Self {
                definition,
                cohorts,
                tz,
                reads_cohorts,
                slots,
                profile_properties: selection.profile_properties.unwrap_or_default(),
                ids: Interner::default(),
                states: Vec::new(),
                has_events: Vec::new(),
                property_names: PropertyNames::default(),
                event_values: Vec::new(),
                next_sequence: 0,
                devices: HashMap::new(),
                members: BTreeSet::new(),
                wakeups: BinaryHeap::new(),
                now_ms: i64::MIN,
                scratch: Scratch::default(),
            },
        }
    }

    /// Returns the current members' canonical ids, sorted.
    pub fn members(&self) -> &BTreeSet<String> {
        &self.members
    }

    /// Returns the number of `id`, numbering it and growing the per-id columns if it is new.
    fn number(&mut self, id: &str) -> u32 {
        self.number_hashed(id, self.ids.hash(id))
    }

    /// Works as `number` for an id whose hash is `hash`.
    fn number_hashed(&mut self, id: &str, hash: u64) -> u32 {
        let number = self.ids.intern_hashed(id, hash);
        if self.states.len() <= number as usize {
            self.states.push(IdState {
                canonical: number,
                ..IdState::default()
            });
        }
        number
    }

    fn has_events(&self, number: u32) -> bool {
        self.has_events
            .get(number as usize / 64)
            .is_some_and(|word| word & (1 << (number % 64)) != 0)
    }

    /// Records that the id has an event, and returns whether it had none before.
    fn mark_has_events(&mut self, number: u32) -> bool {
        let word = number as usize / 64;
        if self.has_events.len() <= word {
            self.has_events.resize(word + 1, 0);
        }
        let bit = 1 << (number % 64);
        let first = self.has_events[word] & bit == 0;
        self.has_events[word] |= bit;
        first
    }

    fn link(&mut self, device: &str, user: &str) -> Option<(u32, u32)> {
        let device = self.number(device);
        if self.states[device as usize].linked {
            return None;
        }
        let user = self.number(user);
        self.states[device as usize].canonical = user;
        self.states[device as usize].linked = true;
        self.states[user as usize].has_devices = true;
        self.devices.entry(user).or_default().push(device);
        Some((device, user))
    }

    fn set_profile(&mut self, distinct_id: &str, properties: Map<String, Value>) -> u32 {
        let number = self.number(distinct_id);
        let mut row = Vec::new();
        for (name, value) in properties {
            if self.profile_properties.contains(&name) {
                row.push((self.property_names.intern(&name), value));
            }
        }
        self.states[number as usize].profile = Some(row.into_boxed_slice());
        number
    }

    /// Stores one event and returns the number of the user whose membership it can change:
    /// `None` for the empty distinct id, and for an event of a name the definitions do not
    /// read from an id that already had events. With `in_order`, the event is inserted at its
    /// place in time; otherwise it is appended and `LiveBuilder::start` sorts.
    fn insert_event(
        &mut self,
        name: &str,
        distinct_id: &str,
        time_ms: i64,
        properties: &Map<String, Value>,
        in_order: bool,
    ) -> Option<u32> {
        let hash = self.ids.hash(distinct_id);
        let resolved = Resolved {
            slot: self.slot_of(name),
            hash,
            number: self.ids.get_hashed(distinct_id, hash),
        };
        self.store_event(distinct_id, resolved, time_ms, properties, in_order)
    }

    /// Returns the slot of event name `name`, or `None` when the definitions do not read it.
    fn slot_of(&self, name: &str) -> Option<usize> {
        self.slots.iter().position(|s| s.name == name)
    }

    /// Stores one event whose name and distinct id `resolved` looked up, as `insert_event`
    /// describes.
    fn store_event(
        &mut self,
        distinct_id: &str,
        resolved: Resolved,
        time_ms: i64,
        properties: &Map<String, Value>,
        in_order: bool,
    ) -> Option<u32> {
        if distinct_id.is_empty() {
            return None;
        }
        let Resolved { slot, hash, number } = resolved;
        if slot.is_none() && number.is_some_and(|number| self.has_events(number)) {
            return None;
        }
        // An id first seen in this batch has no number from the lookup but may have one now.
        let number = match number {
            Some(number) => number,
            None => self.number_hashed(distinct_id, hash),
        };
        let first_event = self.mark_has_events(number);
        let user = self.states[number as usize].canonical;
        let Some(slot) = slot else {
            // The user's first event makes the user one of the project's users.
            return first_event.then_some(user);
        };

        let values = if self.slots[slot].properties.is_empty() {
            NO_VALUES
        } else {
            let row: Box<[Value]> = self.slots[slot]
                .properties
                .iter()
                .map(|p| properties.get(p).cloned().unwrap_or(Value::Null))
                .collect();
            self.event_values.push(row);
            (self.event_values.len() - 1) as u32
        };
        let event = LiveEvent {
            time_ms,
            sequence: self.next_sequence,
            values,
        };
        self.next_sequence += 1;

        let per_slot = &mut self.states[number as usize].events;
        if per_slot.len() < self.slots.len() {
            per_slot.resize_with(self.slots.len(), Vec::new);
        }
        let events = &mut per_slot[slot];
        // New events are usually the latest, which makes the common case a push. An event goes
        // after every event of the same time, as its sequence is the largest.
        if !in_order || events.last().is_none_or(|last| last.time_ms <= time_ms) {
            events.push(event);
        } else {
            let position = events.partition_point(|e| e.time_ms <= time_ms);
            events.insert(position, event);
        }
        Some(user)
    }

    /// Adds new events and brings membership up to `now_ms`.
    pub fn apply_events(
        &mut self,
        events: Vec<EventRow>,
        now_ms: i64,
    ) -> Result<MembershipChanges, EvalError> {
        // Look every distinct id up before storing any event. The lookups read a table far
        // larger than the CPU caches, so each one first prefetches the table slot of the id
        // `PREFETCH_DISTANCE` events ahead, and the reads of several lookups overlap.
        let mut resolved = std::mem::take(&mut self.scratch.resolved);
        resolved.clear();
        resolved.extend(events.iter().map(|row| Resolved {
            slot: self.slot_of(&row.event),
            hash: self.ids.hash(&row.distinct_id),
            number: None,
        }));
        for i in 0..resolved.len() {
            if let Some(ahead) = resolved.get(i + PREFETCH_DISTANCE) {
                self.ids.prefetch(ahead.hash);
            }
            if let Some(ahead) = resolved.get(i + PREFETCH_DISTANCE / 2) {
                self.ids.prefetch_text(ahead.hash);
            }
            resolved[i].number = self
                .ids
                .get_hashed(&events[i].distinct_id, resolved[i].hash);
        }

        // Store the events in arrival order, which orders events of equal time. The same
        // look-ahead prefetches the state of the ids whose events are kept.
        let mut touched = std::mem::take(&mut self.scratch.touched);
        touched.clear();
        for (i, row) in events.iter().enumerate() {
            if let Some(ahead) = resolved.get(i + PREFETCH_DISTANCE) {
                if let (Some(_), Some(number)) = (ahead.slot, ahead.number) {
                    prefetch_read(&self.states[number as usize]);
                }
            }
            if let Some(ahead) = resolved.get(i + PREFETCH_DISTANCE / 2) {
                if let (Some(_), Some(number)) = (ahead.slot, ahead.number) {
                    prefetch_read(self.states[number as usize].events.as_slice());
                }
            }
            let user = self.store_event(
                &row.distinct_id,
                resolved[i],
                row.time_ms,
                &row.properties,
                true,
            );
            touched.extend(user);
        }
        self.scratch.resolved = resolved;
        self.update(touched, now_ms)
    }

    /// Replaces the stored properties of profiles, by the distinct id they are stored under,
    /// and brings membership up to `now_ms`.
    pub fn apply_profiles(
        &mut self,
        profiles: Vec<(String, Map<String, Value>)>,
        now_ms: i64,
    ) -> Result<MembershipChanges, EvalError> {
        let mut touched = Vec::new();
        for (distinct_id, properties) in profiles {
            let number = self.set_profile(&distinct_id, properties);
            touched.push(self.states[number as usize].canonical);
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
        let mut touched = Vec::new();
        for (device, user) in links {
            if let Some((device, user)) = self.link(&device, &user) {
                touched.push(device);
                touched.push(user);
            }
        }
        self.update(touched, now_ms)
    }

    /// Brings membership up to `now_ms` when no data arrived: windows slide past events.
    pub fn advance(&mut self, now_ms: i64) -> Result<MembershipChanges, EvalError> {
        self.update(Vec::new(), now_ms)
    }

    /// Re-evaluates the touched users and every user with a wakeup due by `now_ms`.
    fn update(
        &mut self,
        mut touched: Vec<u32>,
        now_ms: i64,
    ) -> Result<MembershipChanges, EvalError> {
        self.now_ms = now_ms;
        while let Some(&Reverse((instant, user))) = self.wakeups.peek() {
            if instant > now_ms {
                break;
            }
            self.wakeups.pop();
            touched.push(user);
        }
        if self.reads_cohorts {
            touched = (0..self.states.len() as u32).collect();
        }
        touched.sort_unstable();
        touched.dedup();

        let bounds = self.bounds();
        let mut results = std::mem::take(&mut self.scratch.results);
        results.clear();
        for (i, &user) in touched.iter().enumerate() {
            if let Some(&ahead) = touched.get(i + PREFETCH_DISTANCE) {
                prefetch_read(&self.states[ahead as usize]);
            }
            if let Some(&ahead) = touched.get(i + PREFETCH_DISTANCE / 2) {
                prefetch_read(self.states[ahead as usize].events.as_slice());
            }
            let member = self.is_user(user)
                && self.user_holds(&self.definition, user, &bounds, &mut Vec::new())?;
            results.push(member);
        }

        // Membership changes only after every touched user evaluated without error.
        let mut changes = MembershipChanges::default();
        for (&user, &member) in touched.iter().zip(&results) {
            let was = std::mem::replace(&mut self.states[user as usize].is_member, member);
            if member && !was {
                let id = self.ids.text(user).to_owned();
                self.members.insert(id.clone());
                changes.added.push(id);
            } else if !member && was {
                let id = self.ids.text(user).to_owned();
                self.members.remove(&id);
                changes.removed.push(id);
            }
            self.schedule(user);
        }
        touched.clear();
        results.clear();
        self.scratch.touched = touched;
        self.scratch.results = results;
        changes.added.sort();
        changes.removed.sort();
        Ok(changes)
    }

    /// Resolves the window of every event rule as of `now_ms`, keyed by the rule's address,
    /// so that each user's evaluation reads them instead of recomputing them.
    fn bounds(&self) -> RuleBounds {
        let mut bounds = RuleBounds::default();
        let mut stack: Vec<&Definition> = vec![&self.definition];
        stack.extend(self.cohorts.values());
        while let Some(definition) = stack.pop() {
            match definition {
                Definition::All(items) | Definition::Any(items) => stack.extend(items),
                Definition::Not(inner) => stack.push(inner),
                Definition::Event(rule) => {
                    bounds.insert(
                        rule as *const EventRule,
                        rule.within.bounds(self.now_ms, self.tz),
                    );
                }
                Definition::Profile(_) | Definition::InCohort(_) => {}
            }
        }
        bounds
    }

    /// Returns a user's events of one slot, sorted by time, including those of the devices
    /// linked to the user.
    fn user_events(&self, user: u32, slot: usize) -> Cow<'_, [LiveEvent]> {
        let state = &self.states[user as usize];
        let own = state
            .events
            .get(slot)
            .map(Vec::as_slice)
            .unwrap_or_default();
        if !state.has_devices {
            return Cow::Borrowed(own);
        }
        let devices = &self.devices[&user];
        let mut all = own.to_vec();
        for &device in devices {
            let device = &self.states[device as usize];
            if device.canonical != user {
                continue;
            }
            if let Some(events) = device.events.get(slot) {
                all.extend_from_slice(events);
            }
        }
        all.sort_by_key(|e| (e.time_ms, e.sequence));
        Cow::Owned(all)
    }

    fn slot(&self, name: &str) -> usize {
        self.slots
            .iter()
            .position(|s| s.name == name)
            .expect("every event name of the definitions has a slot")
    }

    fn user_holds(
        &self,
        definition: &Definition,
        user: u32,
        bounds: &RuleBounds,
        visiting: &mut Vec<i64>,
    ) -> Result<bool, EvalError> {
        Ok(match definition {
            Definition::All(items) => {
                for item in items {
                    if !self.user_holds(item, user, bounds, visiting)? {
                        return Ok(false);
                    }
                }
                true
            }
            Definition::Any(items) => {
                for item in items {
                    if self.user_holds(item, user, bounds, visiting)? {
                        return Ok(true);
                    }
                }
                false
            }
            Definition::Not(inner) => !self.user_holds(inner, user, bounds, visiting)?,
            Definition::Profile(filter) => matches_filter(
                self.profile_value(user, &filter.property),
                filter,
                self.now_ms,
            ),
            Definition::Event(rule) => {
                let slot = self.slot(&rule.event);
                let events = self.user_events(user, slot);
                let bounds = bounds[&(rule as *const EventRule)];
                self.rule_holds(rule, slot, &events, bounds)
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
                let result = self.user_holds(referenced, user, bounds, visiting);
                visiting.pop();
                result?
            }
        })
    }

    /// Returns the value of property `property` of event `event` of slot `slot`, if kept.
    fn event_value(&self, slot: usize, event: &LiveEvent, property: &str) -> Option<&Value> {
        if event.values == NO_VALUES {
            return None;
        }
        let position = self.slots[slot]
            .properties
            .iter()
            .position(|p| p == property)?;
        Some(&self.event_values[event.values as usize][position])
    }

    /// Checks whether `rule` holds for one user whose events of the rule's name are `events`,
    /// sorted by time.
    fn rule_holds(
        &self,
        rule: &EventRule,
        slot: usize,
        events: &[LiveEvent],
        bounds: Bounds,
    ) -> bool {
        let now_ms = self.now_ms;
        let passes = |event: &LiveEvent| {
            rule.filters.iter().all(|filter| {
                matches_filter(
                    self.event_value(slot, event, &filter.property),
                    filter,
                    now_ms,
                )
            })
        };
        if rule.first_time {
            let first = events
                .iter()
                .take_while(|e| e.time_ms <= now_ms)
                .find(|e| passes(e));
            return first.is_some_and(|e| bounds.contains(e.time_ms));
        }
        if bounds.start_ms > bounds.end_ms {
            return measure_of_nothing(rule).is_some_and(|v| rule.comparison.matches(v));
        }

        let low = events.partition_point(|e| e.time_ms < bounds.start_ms);
        let high = events.partition_point(|e| e.time_ms <= bounds.end_ms);
        let in_window = &events[low..high];
        if rule.filters.is_empty() && rule.measure == Measure::Count {
            return rule.comparison.matches(in_window.len() as f64);
        }
        let matching = in_window.iter().filter(|e| passes(e));
        let numbers = |property: &str| {
            let property = property.to_owned();
            in_window
                .iter()
                .filter(|e| passes(e))
                .filter_map(move |e| self.event_value(slot, e, &property).and_then(Value::as_f64))
        };
        let measured = match &rule.measure {
            Measure::Count => Some(matching.count() as f64),
            Measure::DistinctDays => {
                let mut days: Vec<i64> = matching.map(|e| local_day(e.time_ms, self.tz)).collect();
                days.sort_unstable();
                days.dedup();
                Some(days.len() as f64)
            }
            Measure::Sum(property) => Some(numbers(property).sum()),
            Measure::Min(property) => numbers(property).reduce(f64::min),
            Measure::Max(property) => numbers(property).reduce(f64::max),
            Measure::Average(property) => {
                let (sum, n) = numbers(property).fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
                (n > 0).then(|| sum / n as f64)
            }
        };
        measured.is_some_and(|v| rule.comparison.matches(v))
    }

    /// Checks whether a distinct id number is one of the project's users: it is not a linked
    /// device, and it has an event, directly or through a linked device, or a profile.
    fn is_user(&self, user: u32) -> bool {
        let state = &self.states[user as usize];
        if state.linked {
            return false;
        }
        if state.profile.is_some() || self.has_events(user) {
            return true;
        }
        state.has_devices
            && self.devices[&user]
                .iter()
                .any(|&device| self.has_events(device))
    }

    /// Returns a profile property of a canonical user. A profile stored under a linked device
    /// id is an orphan and matches for no user.
    fn profile_value(&self, user: u32, property: &str) -> Option<&Value> {
        let state = &self.states[user as usize];
        if state.linked {
            return None;
        }
        let row = state.profile.as_deref()?;
        row_value(row, self.property_names.get(property)?)
    }

    /// Records the next instant after `now` at which the user's membership can change.
    fn schedule(&mut self, user: u32) {
        let mut next = NextInstant {
            after_ms: self.now_ms,
            earliest: None,
        };
        self.collect_instants(&self.definition, user, &mut next);
        for definition in self.cohorts.values() {
            self.collect_instants(definition, user, &mut next);
        }
        if let Some(instant) = next.earliest {
            self.wakeups.push(Reverse((instant, user)));
        }
    }

    fn collect_instants(&self, definition: &Definition, user: u32, out: &mut NextInstant) {
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
                let actual = self.profile_value(user, &filter.property);
                let instant = actual.and_then(Value::as_str).and_then(parse_datetime);
                let days = filter.value.as_ref().and_then(Value::as_f64);
                if let Some((instant, days)) = instant.zip(days) {
                    out.consider(instant);
                    out.consider(instant + (days * DAY_MS as f64) as i64 + 1);
                }
            }
            Definition::Event(rule) => {
                let slot = self.slot(&rule.event);
                let events = self.user_events(user, slot);
                if events.is_empty() {
                    return;
                }

                // A `within_last` filter on an event property changes with the clock too, at
                // the property's instant and when it falls out of the range. NOTE: this scans
                // all of the user's events of the name, unlike the window search below.
                for filter in rule
                    .filters
                    .iter()
                    .filter(|f| f.op == ProfileOp::WithinLast)
                {
                    let days = filter.value.as_ref().and_then(Value::as_f64);
                    for event in events.iter() {
                        let value = self.event_value(slot, event, &filter.property);
                        let instant = value.and_then(Value::as_str).and_then(parse_datetime);
                        if let Some((instant, days)) = instant.zip(days) {
                            out.consider(instant);
                            out.consider(instant + (days * DAY_MS as f64) as i64 + 1);
                        }
                    }
                }

                // An event later than `now` enters the windows when the clock reaches it.
                let first_future = events.partition_point(|e| e.time_ms <= self.now_ms);
                if let Some(event) = events.get(first_future) {
                    out.consider(event.time_ms);
                }

                // Only events whose exit lies near `now` or just after it can give the next
                // exit; three hours of margin cover any clock change.
                let span = match rule.within {
                    Window::LastHours(hours) => i64::from(hours) * HOUR_MS,
                    Window::LastDays(days) => i64::from(days) * DAY_MS,
                    Window::AllTime | Window::Since(_) | Window::Between(_, _) => return,
                };
                let margin = 3 * HOUR_MS;
                let from = events.partition_point(|e| e.time_ms + span + margin < self.now_ms);
                let to = events.partition_point(|e| e.time_ms + span - margin <= self.now_ms);
                let to = (to + 2).min(events.len()).max(from);
                for event in &events[from..to] {
                    exit_instants(rule, event.time_ms, self.tz, out);
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
