//! Evaluation of a cohort definition as of an instant `now_ms`, which the caller passes in.
//!
//! Members are canonical users: every stored distinct id is first resolved through the
//! identity links. The users considered are those with at least one event (the empty distinct
//! id excluded) and those with a profile under their canonical id. A profile stored under a
//! `$device:` id that was later merged into a user is an orphan and belongs to nobody.
//! Evaluation either completes or returns an error; it never returns a partial membership.

use std::collections::{BTreeSet, HashMap};

use chrono_tz::Tz;
use serde_json::{Map, Value};

use super::data::{CohortData, EventRow};
use super::definition::{parse, Definition};
use super::engine::{Engine, MemberSink};
use super::rows::{IndexBuilder, Selection};
use super::window::parse_timezone;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("cohort evaluation failed to read the store: {0}")]
    Store(#[from] StoreError),
    #[error("cohort {cohort_id} is referenced with in_cohort but does not exist in this project")]
    CohortNotFound { cohort_id: i64 },
    #[error("cohort {cohort_id} references itself through in_cohort (via cohorts {path:?})")]
    CohortCycle { cohort_id: i64, path: Vec<i64> },
    #[error("stored definition of cohort {cohort_id} is invalid: {message}")]
    InvalidStoredDefinition { cohort_id: i64, message: String },
    #[error("the project's stored time zone is invalid: {0}")]
    TimeZone(String),
}

/// The result of one evaluation.
#[derive(Debug, Default)]
pub struct CohortMembers {
    /// Canonical ids of the members, sorted.
    pub members: BTreeSet<String>,
    /// Profiles by canonical id, for the members that have one.
    pub profiles: HashMap<String, Map<String, Value>>,
}

/// The inputs of one evaluation besides the definition: the data, the referenced cohorts and
/// the project's time zone, read from the store.
pub struct Loaded {
    pub data: CohortData,
    pub cohorts: HashMap<i64, Definition>,
    pub tz: Tz,
}

/// Loads what `definition` needs from the store and evaluates it as of `now_ms` in the
/// project's time zone.
pub async fn evaluate(
    store: &dyn Store,
    project_id: i64,
    definition: &Definition,
    now_ms: i64,
) -> Result<CohortMembers, EvalError> {
    evaluate_members(store, project_id, definition, None, now_ms).await
}

/// Evaluates like [`evaluate`], but the members' profiles carry only `properties`, such as a
/// connection's user-id property, and no other profile property is kept in memory.
pub async fn evaluate_with_properties(
    store: &dyn Store,
    project_id: i64,
    definition: &Definition,
    properties: &[String],
    now_ms: i64,
) -> Result<CohortMembers, EvalError> {
    evaluate_members(store, project_id, definition, Some(properties), now_ms).await
}

/// Evaluates like [`evaluate`] and passes each member to `sink`, in byte order of canonical
/// ids, with its profile's value of `property` (`None` when the member has no profile). Of the
/// profiles, only `property` and the properties `definition` filters on are kept in memory.
pub async fn evaluate_property(
    store: &dyn Store,
    project_id: i64,
    definition: &Definition,
    property: &str,
    now_ms: i64,
    sink: &mut (impl MemberSink + Send),
) -> Result<(), EvalError> {
    let tz_name = store.project_timezone(project_id).await?;
    let tz = parse_timezone(&tz_name).map_err(EvalError::TimeZone)?;
    let cohorts = referenced_cohorts(store, project_id, definition).await?;
    let output = [property.to_owned()];
    let selection = Selection::for_definitions(
        std::iter::once(definition).chain(cohorts.values()),
        Some(&output),
    );
    let builder = store
        .read_cohort_rows(project_id, IndexBuilder::new(selection), now_ms)
        .await?;
    Engine::from_rows(builder)
        .for_each_member_value(definition, &cohorts, tz, now_ms, property, sink)
}

/// Streams the rows `definition` reads from the store into the engine's index and evaluates
/// it, with the members' profiles carrying the `output` properties (`None`: all of them).
async fn evaluate_members(
    store: &dyn Store,
    project_id: i64,
    definition: &Definition,
    output: Option<&[String]>,
    now_ms: i64,
) -> Result<CohortMembers, EvalError> {
    let tz_name = store.project_timezone(project_id).await?;
    let tz = parse_timezone(&tz_name).map_err(EvalError::TimeZone)?;
    let cohorts = referenced_cohorts(store, project_id, definition).await?;
    let selection =
        Selection::for_definitions(std::iter::once(definition).chain(cohorts.values()), output);
    let builder = store
        .read_cohort_rows(project_id, IndexBuilder::new(selection), now_ms)
        .await?;
    Engine::from_rows(builder).evaluate_with_properties(definition, &cohorts, tz, now_ms, output)
}

/// Evaluates the stored cohort `cohort_id` of a project as of `now_ms`; returns `None` when
/// the project has no such cohort. Mixpanel-style query routes that filter by cohort call this.
pub async fn evaluate_cohort(
    store: &dyn Store,
    project_id: i64,
    cohort_id: i64,
    now_ms: i64,
) -> Result<Option<CohortMembers>, EvalError> {
    let Some(cohort) = store.cohort(project_id, cohort_id).await? else {
        return Ok(None);
    };
    let definition = parse(&cohort.definition).map_err(|e| EvalError::InvalidStoredDefinition {
        cohort_id,
        message: e.to_string(),
    })?;
    evaluate(store, project_id, &definition, now_ms)
        .await
        .map(Some)
}

/// Reads, in one consistent snapshot, the data that `definition` and every cohort it
/// references need, with the events up to `now_ms`, as whole rows. `explain` reads them;
/// evaluation streams the rows into the engine instead of holding them.
pub async fn load(
    store: &dyn Store,
    project_id: i64,
    definition: &Definition,
    now_ms: i64,
) -> Result<Loaded, EvalError> {
    let tz_name = store.project_timezone(project_id).await?;
    let tz = parse_timezone(&tz_name).map_err(EvalError::TimeZone)?;
    let cohorts = referenced_cohorts(store, project_id, definition).await?;

    let mut needs = Needs::default();
    needs.collect(definition);
    for referenced in cohorts.values() {
        needs.collect(referenced);
    }
    let names: Vec<String> = needs.names.into_iter().collect();
    let snapshot = store
        .cohort_snapshot(project_id, names, needs.properties, now_ms)
        .await?;
    let data = CohortData {
        links: snapshot.inputs.links,
        profiles: snapshot.inputs.profiles,
        event_distinct_ids: snapshot.inputs.event_distinct_ids,
        events: snapshot
            .events
            .into_iter()
            .map(|e| EventRow {
                event: e.event,
                distinct_id: e.distinct_id,
                time_ms: e.time_ms,
                properties: e.properties,
            })
            .collect(),
    };
    Ok(Loaded { data, cohorts, tz })
}

/// Loads and parses every cohort reachable from `definition` through `in_cohort`.
async fn referenced_cohorts(
    store: &dyn Store,
    project_id: i64,
    definition: &Definition,
) -> Result<HashMap<i64, Definition>, EvalError> {
    let mut cohorts = HashMap::new();
    let mut pending = definition.cohort_references();
    if pending.is_empty() {
        return Ok(cohorts);
    }
    let stored: HashMap<i64, Value> = store
        .list_cohorts(project_id)
        .await?
        .into_iter()
        .map(|c| (c.id, c.definition))
        .collect();
    while let Some(id) = pending.pop() {
        if cohorts.contains_key(&id) {
            continue;
        }
        let value = stored
            .get(&id)
            .ok_or(EvalError::CohortNotFound { cohort_id: id })?;
        let parsed = parse(value).map_err(|e| EvalError::InvalidStoredDefinition {
            cohort_id: id,
            message: e.to_string(),
        })?;
        pending.extend(parsed.cohort_references());
        cohorts.insert(id, parsed);
    }
    Ok(cohorts)
}

/// The event names a set of definitions reads, and whether any reads event properties.
#[derive(Default)]
struct Needs {
    names: BTreeSet<String>,
    properties: bool,
}

impl Needs {
    fn collect(&mut self, definition: &Definition) {
        match definition {
            Definition::All(items) | Definition::Any(items) => {
                items.iter().for_each(|item| self.collect(item))
            }
            Definition::Not(inner) => self.collect(inner),
            Definition::Event(rule) => {
                self.names.insert(rule.event.clone());
                if !rule.filters.is_empty() || rule.measure.property().is_some() {
                    self.properties = true;
                }
            }
            Definition::Profile(_) | Definition::InCohort(_) => {}
        }
    }
}

/// Checks that saving `definition` as cohort `cohort_id` (`None` for a new cohort) would
/// reference only existing cohorts of the project and create no cycle.
pub async fn check_references(
    store: &dyn Store,
    project_id: i64,
    cohort_id: Option<i64>,
    definition: &Definition,
) -> Result<(), EvalError> {
    let references = definition.cohort_references();
    if references.is_empty() {
        return Ok(());
    }
    let mut stored: HashMap<i64, Definition> = HashMap::new();
    for cohort in store.list_cohorts(project_id).await? {
        if Some(cohort.id) == cohort_id {
            continue;
        }
        if let Ok(parsed) = parse(&cohort.definition) {
            stored.insert(cohort.id, parsed);
        }
    }
    for id in &references {
        if Some(*id) != cohort_id && !stored.contains_key(id) {
            return Err(EvalError::CohortNotFound { cohort_id: *id });
        }
    }
    let Some(own_id) = cohort_id else {
        return Ok(());
    };
    // Depth-first search from the new definition's references back to the cohort itself.
    let mut stack: Vec<(i64, Vec<i64>)> = references.iter().map(|id| (*id, vec![*id])).collect();
    let mut seen = std::collections::HashSet::new();
    while let Some((id, path)) = stack.pop() {
        if id == own_id {
            return Err(EvalError::CohortCycle {
                cohort_id: own_id,
                path,
            });
        }
        if !seen.insert(id) {
            continue;
        }
        if let Some(next) = stored.get(&id) {
            for reference in next.cohort_references() {
                let mut longer = path.clone();
                longer.push(reference);
                stack.push((reference, longer));
            }
        }
    }
    Ok(())
}
