//! The compact, streaming path from stored rows to the engine's index.
//!
//! A store feeds an [`IndexBuilder`] one row at a time: identity links, the distinct ids that
//! have events, profiles, then events. The builder interns distinct ids as numbers and keeps
//! only the event properties and profile properties named in its [`Selection`], so an
//! evaluation keeps per event a user number, a time and the values it reads, never the stored
//! row itself.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{Map, Value};

use super::compact_interner::CompactInterner;
use super::definition::Definition;
use super::profiles::{ProfileRow, ProfileValues};

/// The event names, event properties and profile properties that an evaluation reads.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Event names to read and, per name, the event properties to keep.
    pub events: BTreeMap<String, BTreeSet<String>>,
    /// Profile properties to keep, or `None` to keep every property.
    pub profile_properties: Option<BTreeSet<String>>,
}

impl Selection {
    /// Returns what evaluating `definitions` reads, keeping besides the profile properties
    /// they filter on the `output` properties (`None` keeps every profile property).
    pub fn for_definitions<'d>(
        definitions: impl IntoIterator<Item = &'d Definition>,
        output: Option<&[String]>,
    ) -> Self {
        let mut selection = Selection {
            events: BTreeMap::new(),
            profile_properties: output.map(|names| names.iter().cloned().collect()),
        };
        for definition in definitions {
            selection.collect(definition);
        }
        selection
    }

    fn collect(&mut self, definition: &Definition) {
        match definition {
            Definition::All(items) | Definition::Any(items) => {
                items.iter().for_each(|item| self.collect(item))
            }
            Definition::Not(inner) => self.collect(inner),
            Definition::Event(rule) => {
                let properties = self.events.entry(rule.event.clone()).or_default();
                properties.extend(rule.filters.iter().map(|f| f.property.clone()));
                properties.extend(rule.measure.property().map(str::to_owned));
            }
            Definition::Profile(filter) => {
                if let Some(kept) = &mut self.profile_properties {
                    kept.insert(filter.property.clone());
                }
            }
            Definition::InCohort(_) => {}
        }
    }

    pub(crate) fn keeps_profile_property(&self, name: &str) -> bool {
        self.profile_properties
            .as_ref()
            .is_none_or(|kept| kept.contains(name))
    }
}

/// Property values of one profile, each under the number of its name in a `PropertyNames`, as
/// a live cohort keeps them.
pub(crate) type PropertyRow = Box<[(u32, Value)]>;

/// Profile property names numbered in order of first sight.
#[derive(Debug, Default, Clone)]
pub(crate) struct PropertyNames {
    numbers: HashMap<String, u32>,
    names: Vec<String>,
}

impl PropertyNames {
    pub(crate) fn intern(&mut self, name: &str) -> u32 {
        if let Some(&number) = self.numbers.get(name) {
            return number;
        }
        let number = self.names.len() as u32;
        self.names.push(name.to_owned());
        self.numbers.insert(name.to_owned(), number);
        number
    }

    pub(crate) fn get(&self, name: &str) -> Option<u32> {
        self.numbers.get(name).copied()
    }

    pub(crate) fn name(&self, number: u32) -> &str {
        &self.names[number as usize]
    }
}

/// Returns the value of property `number` in `row`, if set.
pub(crate) fn row_value(row: &[(u32, Value)], number: u32) -> Option<&Value> {
    row.iter().find(|(n, _)| *n == number).map(|(_, v)| v)
}

/// The events of one name as read, in storage order.
#[derive(Debug, Default)]
pub(crate) struct NameRows {
    /// The event properties kept, in the order of `columns`.
    pub(crate) properties: Vec<String>,
    /// Distinct id numbers.
    pub(crate) ids: Vec<u32>,
    pub(crate) times: Vec<i64>,
    /// One column per kept property, `null` where the event lacks it.
    pub(crate) columns: Vec<Vec<Value>>,
}

/// Receives the rows of one evaluation as a store reads them; `Engine::from_rows` turns it
/// into the index.
#[derive(Debug)]
pub struct IndexBuilder {
    pub(crate) selection: Selection,
    pub(crate) ids: CompactInterner,
    /// Linked `$device:` id number to the number of the `$user_id` it was merged into.
    pub(crate) links: HashMap<u32, u32>,
    /// Per distinct id number, whether the id has at least one event of any name.
    pub(crate) has_events: Vec<bool>,
    pub(crate) property_names: PropertyNames,
    pub(crate) profile_values: ProfileValues,
    /// Per distinct id number, the profile stored under the id, or `ProfileRow::NONE`.
    pub(crate) profiles: Vec<ProfileRow>,
    pub(crate) names: HashMap<String, NameRows>,
}

impl IndexBuilder {
    pub fn new(selection: Selection) -> Self {
        let names = selection
            .events
            .iter()
            .map(|(name, properties)| {
                let rows = NameRows {
                    properties: properties.iter().cloned().collect(),
                    columns: vec![Vec::new(); properties.len()],
                    ..NameRows::default()
                };
                (name.clone(), rows)
            })
            .collect();
        Self {
            selection,
            ids: CompactInterner::default(),
            links: HashMap::new(),
            has_events: Vec::new(),
            property_names: PropertyNames::default(),
            profile_values: ProfileValues::default(),
            profiles: Vec::new(),
            names,
        }
    }

    /// Returns the event names to read.
    pub fn event_names(&self) -> Vec<String> {
        self.selection.events.keys().cloned().collect()
    }

    /// Checks whether events of `name` must be read with their properties.
    pub fn reads_event_properties(&self, name: &str) -> bool {
        self.selection
            .events
            .get(name)
            .is_some_and(|kept| !kept.is_empty())
    }

    /// Reserves room for `additional` more distinct ids, such as a store's count of profiles,
    /// so that the id table is allocated once instead of doubling as ids arrive. When only some
    /// profile properties are kept, it also reserves one value of each per id.
    pub fn reserve_ids(&mut self, additional: usize) {
        self.ids.reserve(additional);
        self.has_events.reserve(additional);
        self.profiles.reserve(additional);
        if let Some(kept) = &self.selection.profile_properties {
            self.profile_values
                .reserve(additional.saturating_mul(kept.len()));
        }
    }

    fn number(&mut self, id: &str) -> u32 {
        let number = self.ids.intern(id);
        if self.has_events.len() <= number as usize {
            self.has_events.resize(number as usize + 1, false);
            self.profiles.resize(number as usize + 1, ProfileRow::NONE);
        }
        number
    }

    /// Records that `device` was merged into `user`.
    pub fn add_link(&mut self, device: &str, user: &str) {
        let device = self.number(device);
        let user = self.number(user);
        self.links.insert(device, user);
    }

    /// Records a distinct id that has at least one event. The empty id belongs to no user.
    pub fn add_event_distinct_id(&mut self, distinct_id: &str) {
        if distinct_id.is_empty() {
            return;
        }
        let number = self.number(distinct_id);
        self.has_events[number as usize] = true;
    }

    /// Adds the profile stored under `distinct_id`, keeping only the selected properties.
    pub fn add_profile(&mut self, distinct_id: &str, properties: Map<String, Value>) {
        let number = self.number(distinct_id);
        let row =
            self.profile_values
                .push_map(properties, &self.selection, &mut self.property_names);
        self.profiles[number as usize] = row;
    }

    /// Adds a profile from its stored JSON text. Only the selected properties are parsed into
    /// values; the others are skipped without building a map. A repeated key keeps its last
    /// value, as `serde_json::Map` does.
    pub fn add_profile_json(&mut self, distinct_id: &str, text: &str) -> serde_json::Result<()> {
        let row = self
            .profile_values
            .push_json(text, &self.selection, &mut self.property_names)?;
        let number = self.number(distinct_id);
        self.profiles[number as usize] = row;
        Ok(())
    }

    /// Adds one event, keeping the selected properties of its name. Events of names that are
    /// not selected and events of the empty distinct id are skipped.
    pub fn add_event(
        &mut self,
        name: &str,
        distinct_id: &str,
        time_ms: i64,
        properties: Option<&Map<String, Value>>,
    ) {
        if distinct_id.is_empty() || !self.names.contains_key(name) {
            return;
        }
        let number = self.number(distinct_id);
        self.has_events[number as usize] = true;
        let rows = self.names.get_mut(name).expect("checked above");
        rows.ids.push(number);
        rows.times.push(time_ms);
        for (property, column) in rows.properties.iter().zip(&mut rows.columns) {
            let value = properties.and_then(|p| p.get(property));
            column.push(value.cloned().unwrap_or(Value::Null));
        }
    }

    /// Adds one event whose properties are stored JSON text, parsed only when the event's name
    /// keeps properties.
    pub fn add_event_json(
        &mut self,
        name: &str,
        distinct_id: &str,
        time_ms: i64,
        properties: Option<&str>,
    ) -> serde_json::Result<()> {
        let parsed: Option<Map<String, Value>> = match properties {
            Some(text) if self.reads_event_properties(name) => Some(serde_json::from_str(text)?),
            _ => None,
        };
        self.add_event(name, distinct_id, time_ms, parsed.as_ref());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn builder(profile_properties: Option<&[&str]>) -> IndexBuilder {
        IndexBuilder::new(Selection {
            events: BTreeMap::new(),
            profile_properties: profile_properties
                .map(|names| names.iter().map(|n| (*n).to_owned()).collect()),
        })
    }

    /// Returns the stored row of `distinct_id` as a JSON object.
    fn profile(builder: &IndexBuilder, distinct_id: &str) -> Map<String, Value> {
        let number = builder.ids.get(distinct_id).expect("interned");
        builder.profile_values.to_map(
            builder.profiles[number as usize],
            &builder.property_names,
            None,
        )
    }

    #[test]
    fn profile_json_keeps_selected_properties() {
        let mut b = builder(Some(&["plan", "quo\"te", "é"]));
        let text = r#"{"plan":"pro","skip":{"deep":[1,2,{"x":"y"}]},"quo\"te":1.5,"é":null,"n":3}"#;
        b.add_profile_json("u1", text).unwrap();
        assert_eq!(
            Value::Object(profile(&b, "u1")),
            json!({"plan": "pro", "quo\"te": 1.5, "é": null})
        );
    }

    #[test]
    fn profile_json_keeps_every_property_without_selection() {
        let mut b = builder(None);
        let text = r#"{"b":1,"a":[true,"x"],"c":{"d":1e400}}"#;
        b.add_profile_json("u1", text).unwrap();
        let expected: Map<String, Value> = serde_json::from_str(text).unwrap();
        assert_eq!(profile(&b, "u1"), expected);
    }

    #[test]
    fn profile_json_repeated_key_keeps_last_value() {
        let mut b = builder(Some(&["plan"]));
        b.add_profile_json("u1", r#"{"plan":"free","plan":"pro"}"#)
            .unwrap();
        assert_eq!(Value::Object(profile(&b, "u1")), json!({"plan": "pro"}));
        let expected: Map<String, Value> =
            serde_json::from_str(r#"{"plan":"free","plan":"pro"}"#).unwrap();
        assert_eq!(profile(&b, "u1"), expected);
    }

    #[test]
    fn profile_json_rejects_invalid_text() {
        let mut b = builder(Some(&["plan"]));
        assert!(b.add_profile_json("u1", r#"{"plan":"pro"} x"#).is_err());
        assert!(b.add_profile_json("u2", r#"["plan"]"#).is_err());
        assert!(b.add_profile_json("u3", r#"{"plan":}"#).is_err());
        assert!(b.ids.get("u1").is_none());
    }
}
