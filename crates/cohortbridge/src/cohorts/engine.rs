//! The cohort engine: an in-memory index over the loaded data, and set-at-a-time evaluation.
//!
//! Users are numbered in sorted order of their canonical ids, so a set of users is a
//! `RoaringBitmap`. Per event name the index keeps, for each user, that user's events sorted
//! by time, so a window is two binary searches and a plain count never reads a property.
//! Groups combine bitmaps (`all` intersects, `any` unites, `not` complements within the
//! project's users). Evaluation is a pure function of the data, the definitions, the time
//! zone and `now`.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use chrono_tz::Tz;
use roaring::RoaringBitmap;
use serde_json::{Map, Value};

use super::data::{CohortData, EventRow};
use super::definition::{Definition, EventRule, Measure, PropertyFilter, MAX_DEPTH};
use super::eval::{CohortMembers, EvalError};
use super::values::matches_filter;
use super::window::{local_day, Bounds};

/// The events of one name, grouped by user and sorted by time within each user, stored as
/// columns so that a window scan reads contiguous memory.
struct NameIndex {
    /// User numbers with at least one event of the name, ascending.
    users: Vec<u32>,
    /// `users[k]`'s events occupy positions `offsets[k]..offsets[k + 1]` of the columns below.
    offsets: Vec<usize>,
    times: Vec<i64>,
    /// Indexes into `CohortData::events`.
    rows: Vec<usize>,
    /// Event property columns in the same order, extracted on first use (`null` when unset).
    columns: Mutex<HashMap<String, Arc<Vec<Value>>>>,
}

impl NameIndex {
    fn column(&self, property: &str, events: &[EventRow]) -> Arc<Vec<Value>> {
        let mut columns = self.columns.lock().unwrap_or_else(|p| p.into_inner());
        columns
            .entry(property.to_owned())
            .or_insert_with(|| {
                Arc::new(
                    self.rows
                        .iter()
                        .map(|&i| {
                            events[i]
                                .properties
                                .get(property)
                                .cloned()
                                .unwrap_or(Value::Null)
                        })
                        .collect(),
                )
            })
            .clone()
    }
}

/// An index over one `CohortData`, built once and evaluated against many definitions.
pub struct Engine<'a> {
    data: &'a CohortData,
    users: Vec<String>,
    user_numbers: HashMap<String, u32>,
    profiles: Vec<Option<&'a Map<String, Value>>>,
    by_name: HashMap<&'a str, NameIndex>,
    everyone: RoaringBitmap,
}

impl<'a> Engine<'a> {
    /// Numbers the users and indexes every loaded event by name and user.
    pub fn build(data: &'a CohortData) -> Self {
        let users: Vec<String> = data.users().into_iter().collect();
        let user_numbers: HashMap<String, u32> = users
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), i as u32))
            .collect();
        let user_profiles = data.user_profiles();
        let profiles = users
            .iter()
            .map(|id| user_profiles.get(id.as_str()).copied())
            .collect();

        let mut grouped: HashMap<&str, Vec<(u32, i64, usize)>> = HashMap::new();
        for (i, row) in data.events.iter().enumerate() {
            if row.distinct_id.is_empty() {
                continue;
            }
            let Some(&user) = user_numbers.get(data.canonical(&row.distinct_id)) else {
                continue;
            };
            grouped
                .entry(row.event.as_str())
                .or_default()
                .push((user, row.time_ms, i));
        }
        let mut by_name = HashMap::new();
        for (name, mut entries) in grouped {
            entries.sort_unstable();
            let mut index = NameIndex {
                users: Vec::new(),
                offsets: Vec::new(),
                times: Vec::with_capacity(entries.len()),
                rows: Vec::with_capacity(entries.len()),
                columns: Mutex::new(HashMap::new()),
            };
            for (position, (user, time_ms, row)) in entries.into_iter().enumerate() {
                if index.users.last() != Some(&user) {
                    index.users.push(user);
                    index.offsets.push(position);
                }
                index.times.push(time_ms);
                index.rows.push(row);
            }
            index.offsets.push(index.times.len());
            by_name.insert(name, index);
        }

        let everyone = (0..users.len() as u32).collect();
        Self {
            data,
            users,
            user_numbers,
            profiles,
            by_name,
            everyone,
        }
    }

    /// Evaluates `definition` as of `now_ms`; `cohorts` holds every cohort that `in_cohort`
    /// may reference, by id.
    pub fn evaluate(
        &self,
        definition: &Definition,
        cohorts: &HashMap<i64, Definition>,
        tz: Tz,
        now_ms: i64,
    ) -> Result<CohortMembers, EvalError> {
        let context = Context {
            engine: self,
            cohorts,
            tz,
            now_ms,
        };
        let set = context.set(definition, &mut Vec::new(), 0)?;
        Ok(self.members(&set))
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
        let context = Context {
            engine: self,
            cohorts,
            tz,
            now_ms,
        };
        let set = context.set(definition, &mut Vec::new(), 0)?;
        Ok(set
            .iter()
            .map(|user| self.users[user as usize].as_str())
            .collect())
    }

    fn members(&self, set: &RoaringBitmap) -> CohortMembers {
        let mut members = BTreeSet::new();
        let mut profiles = HashMap::new();
        for user in set {
            let id = &self.users[user as usize];
            members.insert(id.clone());
            if let Some(properties) = self.profiles[user as usize] {
                profiles.insert(id.clone(), properties.clone());
            }
        }
        CohortMembers { members, profiles }
    }

    /// Returns the number of a canonical user, if the user exists.
    pub fn user_number(&self, canonical_id: &str) -> Option<u32> {
        self.user_numbers.get(canonical_id).copied()
    }
}

struct Context<'e, 'a> {
    engine: &'e Engine<'a>,
    cohorts: &'e HashMap<i64, Definition>,
    tz: Tz,
    now_ms: i64,
}

impl Context<'_, '_> {
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
        for (user, profile) in self.engine.profiles.iter().enumerate() {
            let actual = profile.and_then(|p| p.get(&filter.property));
            if matches_filter(actual, filter, self.now_ms) {
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
        let events = &self.engine.data.events;
        let filters: Vec<(&PropertyFilter, Arc<Vec<Value>>)> = rule
            .filters
            .iter()
            .map(|filter| (filter, index.column(&filter.property, events)))
            .collect();
        let measured = rule.measure.property().map(|p| index.column(p, events));
        let scan = Scan {
            rule,
            filters: &filters,
            measured: measured.as_deref().map(Vec::as_slice),
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
    filters: &'s [(&'s PropertyFilter, Arc<Vec<Value>>)],
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
                matches_filter(Some(&column[position]), filter, self.now_ms)
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

/// Checks whether `rule` holds for one user whose events of the rule's name are `rows`, pairs
/// of time and index into `events`, sorted by time.
pub(crate) fn rule_holds(
    rule: &EventRule,
    rows: &[(i64, usize)],
    events: &[EventRow],
    bounds: Bounds,
    tz: Tz,
    now_ms: i64,
) -> bool {
    let passes = |row: &EventRow| {
        rule.filters
            .iter()
            .all(|filter| matches_filter(row.properties.get(&filter.property), filter, now_ms))
    };
    if rule.first_time {
        let first = rows
            .iter()
            .map(|&(_, i)| &events[i])
            .take_while(|row| row.time_ms <= now_ms)
            .find(|row| passes(row));
        return first.is_some_and(|row| bounds.contains(row.time_ms));
    }
    if bounds.start_ms > bounds.end_ms {
        return measure_of_nothing(rule).is_some_and(|v| rule.comparison.matches(v));
    }

    let low = rows.partition_point(|&(time_ms, _)| time_ms < bounds.start_ms);
    let high = rows.partition_point(|&(time_ms, _)| time_ms <= bounds.end_ms);
    let in_window = &rows[low..high];
    if rule.filters.is_empty() && rule.measure == Measure::Count {
        return rule.comparison.matches(in_window.len() as f64);
    }
    let matching = in_window
        .iter()
        .map(|&(_, i)| &events[i])
        .filter(|row| passes(row));
    let measured = match &rule.measure {
        Measure::Count => Some(matching.count() as f64),
        Measure::DistinctDays => {
            let mut days: Vec<i64> = matching.map(|row| local_day(row.time_ms, tz)).collect();
            days.sort_unstable();
            days.dedup();
            Some(days.len() as f64)
        }
        Measure::Sum(property) => Some(numbers(matching, property).sum()),
        Measure::Min(property) => numbers(matching, property).reduce(f64::min),
        Measure::Max(property) => numbers(matching, property).reduce(f64::max),
        Measure::Average(property) => {
            let (sum, n) =
                numbers(matching, property).fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
            (n > 0).then(|| sum / n as f64)
        }
    };
    measured.is_some_and(|v| rule.comparison.matches(v))
}

/// Returns the numeric values of `property` among `rows`, skipping rows without a number.
fn numbers<'r>(
    rows: impl Iterator<Item = &'r EventRow> + 'r,
    property: &'r str,
) -> impl Iterator<Item = f64> + 'r {
    rows.filter_map(move |row| row.properties.get(property).and_then(Value::as_f64))
}
