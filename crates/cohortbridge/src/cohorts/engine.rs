//! The cohort engine: an in-memory index over the rows of one evaluation, and set-at-a-time
//! evaluation.
//!
//! Users are numbered in sorted order of their canonical ids, so a set of users is a
//! `RoaringBitmap`. Per event name the index keeps, for each user, that user's event times
//! sorted, so a window is two binary searches and a plain count never reads a property. The
//! event properties a definition reads are columns beside the times. Groups combine bitmaps
//! (`all` intersects, `any` unites, `not` complements within the project's users). Evaluation
//! is a pure function of the data, the definitions, the time zone and `now`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono_tz::Tz;
use roaring::RoaringBitmap;
use serde_json::Value;

use super::compact_interner::IdTexts;
use super::data::CohortData;
use super::definition::{Definition, EventRule, Measure, PropertyFilter, MAX_DEPTH};
use super::eval::{CohortMembers, EvalError};
use super::profiles::{ProfileRow, ProfileValues};
use super::rows::{IndexBuilder, PropertyNames, Selection};
use super::values::{matches_filter, matches_filter_ref, ValueRef};
use super::window::{local_day, Bounds};

/// The events of one name, grouped by user and sorted by time within each user, stored as
/// columns so that a window scan reads contiguous memory.
struct NameIndex {
    /// User numbers with at least one event of the name, ascending.
    users: Vec<u32>,
    /// `users[k]`'s events occupy positions `offsets[k]..offsets[k + 1]` of the columns below.
    offsets: Vec<usize>,
    times: Vec<i64>,
    /// The event properties kept, in the order of `columns`.
    properties: Vec<String>,
    /// One column per kept property, in the same order as `times` (`null` when unset).
    columns: Vec<Vec<Value>>,
}

impl NameIndex {
    /// Returns the column of `property`, or `None` when it was not kept, which reads as unset.
    fn column(&self, property: &str) -> Option<&[Value]> {
        let position = self.properties.iter().position(|p| p == property)?;
        Some(&self.columns[position])
    }
}

/// Receives the members of an evaluation from [`Engine::for_each_member_value`].
pub trait MemberSink {
    /// Receives, before the first member, the number of members and the total length in bytes
    /// of their canonical ids, so that buffers can be sized once.
    fn reserve(&mut self, members: usize, id_bytes: usize);

    /// Receives the next member, in byte order of canonical ids, with its profile's value of
    /// the property: `None` when the member has no profile, `Some(None)` when the profile
    /// lacks the property.
    fn push(&mut self, member: &str, profile: Option<Option<ValueRef<'_>>>);
}

/// An index over the rows of one evaluation, built once and evaluated against many
/// definitions. It owns only the distinct ids, their kept profile properties and the kept
/// columns of the selected events.
pub struct Engine {
    /// The texts of the distinct ids read, by distinct id number.
    ids: IdTexts,
    /// The distinct id number of each user's canonical id, in byte order of the canonical
    /// ids. A user's number is its position.
    users: Vec<u32>,
    property_names: PropertyNames,
    profile_values: ProfileValues,
    /// Kept profile properties by user number, `ProfileRow::NONE` for users without one.
    profiles: Vec<ProfileRow>,
    by_name: HashMap<String, NameIndex>,
    everyone: RoaringBitmap,
}

impl Engine {
    /// Indexes every event and every profile property of `data`.
    pub fn build(data: &CohortData) -> Self {
        let mut events: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for row in &data.events {
            events
                .entry(row.event.clone())
                .or_default()
                .extend(row.properties.keys().cloned());
        }
        let mut builder = IndexBuilder::new(Selection {
            events,
            profile_properties: None,
        });
        for (device, user) in &data.links {
            builder.add_link(device, user);
        }
        for id in &data.event_distinct_ids {
            builder.add_event_distinct_id(id);
        }
        for (id, properties) in &data.profiles {
            builder.add_profile(id, properties.clone());
        }
        for row in &data.events {
            builder.add_event(
                &row.event,
                &row.distinct_id,
                row.time_ms,
                Some(&row.properties),
            );
        }
        Self::from_rows(builder)
    }

    /// Numbers the users in sorted order of their canonical ids and indexes the builder's
    /// events by name and user, consuming the builder's rows one name at a time.
    pub fn from_rows(builder: IndexBuilder) -> Self {
        let IndexBuilder {
            ids,
            links,
            has_events,
            property_names,
            profile_values,
            profiles,
            names,
            ..
        } = builder;
        // Only the texts are read from here on; the table goes before anything else is built.
        let ids = ids.into_texts();
        let canonical = |id: u32| links.get(&id).copied().unwrap_or(id);

        // The users: canonical ids of ids with events, and ids with a profile that are not
        // linked devices (such a profile is an orphan).
        let mut is_user = vec![false; ids.len()];
        for (id, has) in has_events.iter().enumerate() {
            if *has {
                is_user[canonical(id as u32) as usize] = true;
            }
        }
        drop(has_events);
        for (id, row) in profiles.iter().enumerate() {
            if !row.is_none() && !links.contains_key(&(id as u32)) {
                is_user[id] = true;
            }
        }
        let mut users: Vec<u32> = (0..ids.len() as u32)
            .filter(|id| is_user[*id as usize])
            .collect();
        drop(is_user);
        sort_by_text(&mut users, &ids);
        let mut user_of_id = vec![u32::MAX; ids.len()];
        for (user, id) in users.iter().enumerate() {
            user_of_id[*id as usize] = user as u32;
        }
        let user_profiles = users
            .iter()
            .map(|id| {
                if links.contains_key(id) {
                    ProfileRow::NONE
                } else {
                    profiles[*id as usize]
                }
            })
            .collect();
        drop(profiles);

        let mut by_name = HashMap::new();
        for (name, rows) in names {
            let user_of_row: Vec<u32> = rows
                .ids
                .iter()
                .map(|id| user_of_id[canonical(*id) as usize])
                .collect();
            by_name.insert(
                name,
                index_name(
                    rows.times,
                    rows.properties,
                    rows.columns,
                    user_of_row,
                    users.len(),
                ),
            );
        }

        let everyone = (0..users.len() as u32).collect();
        Self {
            ids,
            users,
            property_names,
            profile_values,
            profiles: user_profiles,
            by_name,
            everyone,
        }
    }

    /// Evaluates `definition` as of `now_ms`; `cohorts` holds every cohort that `in_cohort`
    /// may reference, by id. The members' profiles carry every kept property.
    pub fn evaluate(
        &self,
        definition: &Definition,
        cohorts: &HashMap<i64, Definition>,
        tz: Tz,
        now_ms: i64,
    ) -> Result<CohortMembers, EvalError> {
        self.evaluate_with_properties(definition, cohorts, tz, now_ms, None)
    }

    /// Evaluates `definition` like `evaluate`, with the members' profiles carrying only the
    /// `output` properties when given.
    pub fn evaluate_with_properties(
        &self,
        definition: &Definition,
        cohorts: &HashMap<i64, Definition>,
        tz: Tz,
        now_ms: i64,
        output: Option<&[String]>,
    ) -> Result<CohortMembers, EvalError> {
        let set = self.member_set(definition, cohorts, tz, now_ms)?;
        Ok(self.members(&set, output))
    }

    /// Evaluates `definition` like `evaluate` but returns only the members' canonical ids,
    /// without copying their profiles.
    pub fn member_ids(
        &self,
        definition: &Definition,
        cohorts: &HashMap<i64, Definition>,
        tz: Tz,
        now_ms: i64,
    ) -> Result<Vec<&str>, EvalError> {
        let set = self.member_set(definition, cohorts, tz, now_ms)?;
        Ok(set.iter().map(|user| self.user_id(user)).collect())
    }

    /// Returns the canonical id of user `user`.
    fn user_id(&self, user: u32) -> &str {
        self.ids.get(self.users[user as usize])
    }

    /// Evaluates `definition` like `evaluate` and passes each member to `sink`, in byte order
    /// of canonical ids, with its profile's value of `property`. Nothing is copied per member.
    pub fn for_each_member_value(
        &self,
        definition: &Definition,
        cohorts: &HashMap<i64, Definition>,
        tz: Tz,
        now_ms: i64,
        property: &str,
        sink: &mut impl MemberSink,
    ) -> Result<(), EvalError> {
        let set = self.member_set(definition, cohorts, tz, now_ms)?;
        let id_bytes = set.iter().map(|user| self.user_id(user).len()).sum();
        sink.reserve(set.len() as usize, id_bytes);
        let number = self.property_names.get(property);
        for user in &set {
            let row = self.profiles[user as usize];
            let profile = (!row.is_none())
                .then(|| number.and_then(|number| self.profile_values.get(row, number)));
            sink.push(self.user_id(user), profile);
        }
        Ok(())
    }

    fn member_set(
        &self,
        definition: &Definition,
        cohorts: &HashMap<i64, Definition>,
        tz: Tz,
        now_ms: i64,
    ) -> Result<RoaringBitmap, EvalError> {
        let context = Context {
            engine: self,
            cohorts,
            tz,
            now_ms,
        };
        context.set(definition, &mut Vec::new(), 0)
    }

    fn members(&self, set: &RoaringBitmap, output: Option<&[String]>) -> CohortMembers {
        let mut members = BTreeSet::new();
        let mut profiles = HashMap::new();
        for user in set {
            let id = self.user_id(user).to_owned();
            let row = self.profiles[user as usize];
            if !row.is_none() {
                let properties = self
                    .profile_values
                    .to_map(row, &self.property_names, output);
                profiles.insert(id.clone(), properties);
            }
            members.insert(id);
        }
        CohortMembers { members, profiles }
    }
}

/// Sorts distinct id numbers in byte order of their texts. The first eight bytes of each text
/// are compared as one integer, so only ids sharing them compare their texts. Numbers already
/// in order, as when a store reads profiles in order of their distinct ids, are left as they
/// are without the sort's extra buffer.
fn sort_by_text(numbers: &mut [u32], ids: &IdTexts) {
    if numbers
        .windows(2)
        .all(|pair| ids.get(pair[0]) <= ids.get(pair[1]))
    {
        return;
    }
    let prefix = |number: u32| {
        let text = ids.get(number).as_bytes();
        let mut bytes = [0u8; 8];
        let len = text.len().min(8);
        bytes[..len].copy_from_slice(&text[..len]);
        u64::from_be_bytes(bytes)
    };
    let mut keyed: Vec<(u64, u32)> = numbers.iter().map(|&n| (prefix(n), n)).collect();
    keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| ids.get(a.1).cmp(ids.get(b.1))));
    for (slot, (_, number)) in numbers.iter_mut().zip(keyed) {
        *slot = number;
    }
}

/// Groups one name's events by user and sorts each user's events by time (storage order
/// among equal times), permuting the columns to match.
fn index_name(
    times: Vec<i64>,
    properties: Vec<String>,
    columns: Vec<Vec<Value>>,
    user_of_row: Vec<u32>,
    user_count: usize,
) -> NameIndex {
    // Counting sort by user, then a sort by time within each user's run.
    let mut starts = vec![0usize; user_count + 1];
    for &user in &user_of_row {
        starts[user as usize + 1] += 1;
    }
    for i in 1..starts.len() {
        starts[i] += starts[i - 1];
    }
    let mut order = vec![0u32; user_of_row.len()];
    let mut next = starts.clone();
    for (row, &user) in user_of_row.iter().enumerate() {
        order[next[user as usize]] = row as u32;
        next[user as usize] += 1;
    }
    drop(next);

    let mut index = NameIndex {
        users: Vec::new(),
        offsets: Vec::new(),
        times: Vec::with_capacity(times.len()),
        properties,
        columns: Vec::new(),
    };
    for user in 0..user_count {
        let run = &mut order[starts[user]..starts[user + 1]];
        if run.is_empty() {
            continue;
        }
        run.sort_unstable_by_key(|&row| (times[row as usize], row));
        index.users.push(user as u32);
        index.offsets.push(starts[user]);
    }
    index.offsets.push(order.len());
    drop(starts);
    index
        .times
        .extend(order.iter().map(|&row| times[row as usize]));
    drop(times);
    index.columns = columns
        .into_iter()
        .map(|column| {
            order
                .iter()
                .map(|&row| column[row as usize].clone())
                .collect()
        })
        .collect();
    index
}

struct Context<'e> {
    engine: &'e Engine,
    cohorts: &'e HashMap<i64, Definition>,
    tz: Tz,
    now_ms: i64,
}

impl Context<'_> {
    fn set(
        &self,
        definition: &Definition,
        visiting: &mut Vec<i64>,
        depth: usize,
    ) -> Result<RoaringBitmap, EvalError> {
        match definition {
            Definition::All(items) => {
                let mut result = self.engine.everyone.clone();
                for item in items {
                    result &= self.set(item, visiting, depth)?;
                }
                Ok(result)
            }
            Definition::Any(items) => {
                let mut result = RoaringBitmap::new();
                for item in items {
                    result |= self.set(item, visiting, depth)?;
                }
                Ok(result)
            }
            Definition::Not(inner) => {
                Ok(&self.engine.everyone - &self.set(inner, visiting, depth)?)
            }
            Definition::Profile(filter) => Ok(self.profile_set(filter)),
            Definition::Event(rule) => Ok(self.event_set(rule)),
            Definition::InCohort(id) => {
                if visiting.contains(id) || depth >= MAX_DEPTH {
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
                let result = self.set(referenced, visiting, depth + 1);
                visiting.pop();
                result
            }
        }
    }

    fn profile_set(&self, filter: &PropertyFilter) -> RoaringBitmap {
        let mut result = RoaringBitmap::new();
        let number = self.engine.property_names.get(&filter.property);
        let values = &self.engine.profile_values;
        for (user, row) in self.engine.profiles.iter().enumerate() {
            let actual = number.and_then(|number| values.get(*row, number));
            if matches_filter_ref(actual, filter, self.now_ms) {
                result.insert(user as u32);
            }
        }
        result
    }

    fn event_set(&self, rule: &EventRule) -> RoaringBitmap {
        let bounds = rule.within.bounds(self.now_ms, self.tz);
        let zero_matches = !rule.first_time
            && measure_of_nothing(rule).is_some_and(|v| rule.comparison.matches(v));
        let Some(index) = self.engine.by_name.get(rule.event.as_str()) else {
            return if zero_matches {
                self.engine.everyone.clone()
            } else {
                RoaringBitmap::new()
            };
        };

        // Users without a single event of the name measure as if they had none in the window.
        let mut result = if zero_matches {
            let with_events = RoaringBitmap::from_sorted_iter(index.users.iter().copied())
                .expect("users are sorted");
            &self.engine.everyone - &with_events
        } else {
            RoaringBitmap::new()
        };
        let filters: Vec<(&PropertyFilter, Option<&[Value]>)> = rule
            .filters
            .iter()
            .map(|filter| (filter, index.column(&filter.property)))
            .collect();
        let measured = rule.measure.property().and_then(|p| index.column(p));
        let scan = Scan {
            rule,
            filters: &filters,
            measured,
            bounds,
            tz: self.tz,
            now_ms: self.now_ms,
        };
        for (k, &user) in index.users.iter().enumerate() {
            let range = index.offsets[k]..index.offsets[k + 1];
            if scan.holds(&index.times[range.clone()], range.start) {
                result.insert(user);
            }
        }
        result
    }
}

/// One event rule applied to the columns of a `NameIndex`.
struct Scan<'s> {
    rule: &'s EventRule,
    filters: &'s [(&'s PropertyFilter, Option<&'s [Value]>)],
    measured: Option<&'s [Value]>,
    bounds: Bounds,
    tz: Tz,
    now_ms: i64,
}

impl Scan<'_> {
    /// Checks the rule for one user whose event times are `times`, stored from column position
    /// `start` on.
    fn holds(&self, times: &[i64], start: usize) -> bool {
        let passes = |position: usize| {
            self.filters.iter().all(|(filter, column)| {
                matches_filter(column.map(|c| &c[position]), filter, self.now_ms)
            })
        };
        let rule = self.rule;
        if rule.first_time {
            let first = (0..times.len())
                .take_while(|&j| times[j] <= self.now_ms)
                .find(|&j| passes(start + j));
            return first.is_some_and(|j| self.bounds.contains(times[j]));
        }
        if self.bounds.start_ms > self.bounds.end_ms {
            return measure_of_nothing(rule).is_some_and(|v| rule.comparison.matches(v));
        }

        let low = times.partition_point(|&t| t < self.bounds.start_ms);
        let high = times.partition_point(|&t| t <= self.bounds.end_ms);
        if self.filters.is_empty() && rule.measure == Measure::Count {
            return rule.comparison.matches((high - low) as f64);
        }
        let matching = (low..high).filter(|&j| passes(start + j));
        let numbers = || {
            let column = self.measured.unwrap_or_default();
            (low..high)
                .filter(|&j| passes(start + j))
                .filter_map(move |j| column.get(start + j).and_then(Value::as_f64))
        };
        let measured = match &rule.measure {
            Measure::Count => Some(matching.count() as f64),
            Measure::DistinctDays => {
                let mut days: Vec<i64> = matching.map(|j| local_day(times[j], self.tz)).collect();
                days.dedup();
                days.sort_unstable();
                days.dedup();
                Some(days.len() as f64)
            }
            Measure::Sum(_) => Some(numbers().sum()),
            Measure::Min(_) => numbers().reduce(f64::min),
            Measure::Max(_) => numbers().reduce(f64::max),
            Measure::Average(_) => {
                let (sum, n) = numbers().fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
                (n > 0).then(|| sum / n as f64)
            }
        };
        measured.is_some_and(|v| rule.comparison.matches(v))
    }
}

/// Returns the measured value for a user with no matching event, or `None` when the measure
/// is undefined (min, max and average of nothing).
pub fn measure_of_nothing(rule: &EventRule) -> Option<f64> {
    match rule.measure {
        Measure::Count | Measure::DistinctDays | Measure::Sum(_) => Some(0.0),
        Measure::Min(_) | Measure::Max(_) | Measure::Average(_) => None,
    }
}
