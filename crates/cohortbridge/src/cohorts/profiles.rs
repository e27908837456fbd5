//! The kept profile properties of one evaluation, stored for millions of profiles.
//!
//! A `serde_json::Value` with `preserve_order` and `arbitrary_precision` takes 80 bytes, and
//! each string in it is an allocation of its own. Here each kept property of a profile is one
//! 16-byte entry, the text of strings and numbers is appended to one shared buffer, and only
//! arrays and objects, which profiles rarely hold, stay `Value`s. The entries of one profile
//! are contiguous, so a profile is a range of entries.

use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::rows::{PropertyNames, Selection};
use super::values::ValueRef;

/// The entries of one profile, `ProfileValues::entries[start..start + len]`, or no profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProfileRow {
    start: u32,
    len: u32,
}

impl ProfileRow {
    /// Marks an id or a user without a profile.
    pub(crate) const NONE: ProfileRow = ProfileRow {
        start: u32::MAX,
        len: 0,
    };

    pub(crate) fn is_none(self) -> bool {
        self.start == u32::MAX
    }
}

/// One kept property value. Text is `ProfileValues::text[start..start + len]`.
#[derive(Debug, Clone, Copy)]
enum Stored {
    Null,
    Bool(bool),
    /// The number's JSON text, as `serde_json::Number::as_str` returns it.
    Number {
        start: u32,
        len: u32,
    },
    String {
        start: u32,
        len: u32,
    },
    /// An array or an object, or a string or number that did not fit the shared buffer: the
    /// index of its `Value` in `ProfileValues::composites`.
    Composite(u32),
}

/// One property of one profile: the number of its name in a `PropertyNames`, and its value.
#[derive(Debug, Clone, Copy)]
struct Entry {
    name: u32,
    value: Stored,
}

/// The kept property values of many profiles.
#[derive(Debug, Default)]
pub(crate) struct ProfileValues {
    text: String,
    entries: Vec<Entry>,
    composites: Vec<Value>,
}

impl ProfileValues {
    /// Reserves room for `additional` more property values.
    pub(crate) fn reserve(&mut self, additional: usize) {
        self.entries.reserve(additional);
    }

    /// Returns the value of property `name` in `row`, or `None` when the row lacks it or is
    /// `ProfileRow::NONE`.
    pub(crate) fn get(&self, row: ProfileRow, name: u32) -> Option<ValueRef<'_>> {
        self.entries(row)
            .iter()
            .find(|entry| entry.name == name)
            .map(|entry| self.view(entry.value))
    }

    /// Returns the properties of `row` as name numbers and values, in stored order.
    pub(crate) fn iter(&self, row: ProfileRow) -> impl Iterator<Item = (u32, ValueRef<'_>)> {
        self.entries(row)
            .iter()
            .map(|entry| (entry.name, self.view(entry.value)))
    }

    /// Converts `row` back into a JSON object, keeping only the `output` names when given.
    pub(crate) fn to_map(
        &self,
        row: ProfileRow,
        names: &PropertyNames,
        output: Option<&[String]>,
    ) -> Map<String, Value> {
        let mut map = Map::with_capacity(row.len as usize);
        for (number, value) in self.iter(row) {
            let name = names.name(number);
            if output.is_none_or(|kept| kept.iter().any(|n| n == name)) {
                map.insert(name.to_owned(), value.to_value());
            }
        }
        map
    }

    /// Stores the selected properties of a parsed profile as a new row. A repeated name keeps
    /// its last value.
    pub(crate) fn push_map(
        &mut self,
        properties: Map<String, Value>,
        selection: &Selection,
        names: &mut PropertyNames,
    ) -> ProfileRow {
        let start = self.entries.len();
        for (name, value) in properties {
            if selection.keeps_profile_property(&name) {
                let stored = self.store(value);
                self.set(start, names.intern(&name), stored);
            }
        }
        self.row_from(start)
    }

    /// Parses a profile's JSON object and stores its selected properties as a new row. Only
    /// the selected properties are parsed into values; the others are skipped without building
    /// a map. A repeated key keeps its last value, as `serde_json::Map` does. On an error
    /// nothing is kept.
    pub(crate) fn push_json(
        &mut self,
        text: &str,
        selection: &Selection,
        names: &mut PropertyNames,
    ) -> serde_json::Result<ProfileRow> {
        let start = self.entries.len();
        let text_len = self.text.len();
        let composites = self.composites.len();
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let parsed = SelectedProperties {
            selection,
            names,
            values: self,
            start,
        }
        .deserialize(&mut deserializer)
        .and_then(|()| deserializer.end());
        if let Err(e) = parsed {
            self.entries.truncate(start);
            self.text.truncate(text_len);
            self.composites.truncate(composites);
            return Err(e);
        }
        Ok(self.row_from(start))
    }

    fn entries(&self, row: ProfileRow) -> &[Entry] {
        if row.is_none() {
            return &[];
        }
        let start = row.start as usize;
        &self.entries[start..start + row.len as usize]
    }

    fn view(&self, value: Stored) -> ValueRef<'_> {
        match value {
            Stored::Null => ValueRef::Null,
            Stored::Bool(b) => ValueRef::Bool(b),
            Stored::Number { start, len } => ValueRef::Number(self.slice(start, len)),
            Stored::String { start, len } => ValueRef::String(self.slice(start, len)),
            // `ValueRef::from` views a string or a number kept here as what it is.
            Stored::Composite(index) => ValueRef::from(&self.composites[index as usize]),
        }
    }

    fn slice(&self, start: u32, len: u32) -> &str {
        let start = start as usize;
        &self.text[start..start + len as usize]
    }

    /// Sets property `name` of the row whose entries begin at `start`, replacing an earlier
    /// value of the same name.
    fn set(&mut self, start: usize, name: u32, value: Stored) {
        match self.entries[start..].iter_mut().find(|e| e.name == name) {
            Some(entry) => entry.value = value,
            None => self.entries.push(Entry { name, value }),
        }
    }

    /// Returns the row of the entries from `start` to the end.
    fn row_from(&self, start: usize) -> ProfileRow {
        let len = self.entries.len() - start;
        ProfileRow {
            start: u32::try_from(start)
                .ok()
                .filter(|&s| s != u32::MAX)
                .expect("fewer than 2^32 - 1 profile property values per evaluation"),
            len: len as u32,
        }
    }

    fn store(&mut self, value: Value) -> Stored {
        match value {
            Value::Null => Stored::Null,
            Value::Bool(b) => Stored::Bool(b),
            Value::Number(n) => match self.push_text(n.as_str()) {
                Some((start, len)) => Stored::Number { start, len },
                None => self.push_composite(Value::Number(n)),
            },
            Value::String(s) => self.store_str(&s).unwrap_or_else(|| {
                // The shared buffer is full; the string is kept as a `Value` instead.
                self.push_composite(Value::String(s))
            }),
            composite @ (Value::Array(_) | Value::Object(_)) => self.push_composite(composite),
        }
    }

    fn store_str(&mut self, s: &str) -> Option<Stored> {
        let (start, len) = self.push_text(s)?;
        Some(Stored::String { start, len })
    }

    /// Appends `s` to the shared buffer and returns its start and length, or `None` when the
    /// buffer would pass 4 GiB, the reach of a `u32` offset.
    fn push_text(&mut self, s: &str) -> Option<(u32, u32)> {
        let start = u32::try_from(self.text.len()).ok()?;
        let len = u32::try_from(s.len()).ok()?;
        start.checked_add(len)?;
        self.text.push_str(s);
        Some((start, len))
    }

    /// Stores `value` as a `Value`. Strings and numbers also land here when the shared buffer
    /// is full, so a `Composite` may contain one of them.
    fn push_composite(&mut self, value: Value) -> Stored {
        let index = u32::try_from(self.composites.len())
            .expect("fewer than 2^32 profile property values per evaluation");
        self.composites.push(value);
        Stored::Composite(index)
    }
}

/// Parses a profile's JSON object into a row of `ProfileValues`, keeping only the properties
/// that a `Selection` keeps.
struct SelectedProperties<'a> {
    selection: &'a Selection,
    names: &'a mut PropertyNames,
    values: &'a mut ProfileValues,
    /// The first entry of the row being parsed.
    start: usize,
}

impl<'de> DeserializeSeed<'de> for SelectedProperties<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for SelectedProperties<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object of profile properties")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(PropertyName(name)) = map.next_key()? {
            if !self.selection.keeps_profile_property(&name) {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let number = self.names.intern(&name);
            let value = map.next_value_seed(StoredValue {
                values: self.values,
            })?;
            self.values.set(self.start, number, value);
        }
        Ok(())
    }
}

/// Parses one property value straight into `ProfileValues`: a string is copied into the
/// shared buffer without an allocation of its own.
struct StoredValue<'a> {
    values: &'a mut ProfileValues,
}

impl<'de> DeserializeSeed<'de> for StoredValue<'_> {
    type Value = Stored;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Stored, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StoredValue<'_> {
    type Value = Stored;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Stored, E> {
        Ok(Stored::Null)
    }

    fn visit_none<E>(self) -> Result<Stored, E> {
        Ok(Stored::Null)
    }

    fn visit_bool<E>(self, b: bool) -> Result<Stored, E> {
        Ok(Stored::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Stored, E> {
        Ok(self.values.store(Value::from(n)))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Stored, E> {
        Ok(self.values.store(Value::from(n)))
    }

    fn visit_f64<E>(self, n: f64) -> Result<Stored, E> {
        Ok(self.values.store(Value::from(n)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Stored, E> {
        Ok(match self.values.store_str(s) {
            Some(stored) => stored,
            None => self.values.push_composite(Value::String(s.to_owned())),
        })
    }

    fn visit_string<E>(self, s: String) -> Result<Stored, E> {
        Ok(self.values.store(Value::String(s)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Stored, A::Error> {
        let value = Value::deserialize(SeqAccessDeserializer::new(seq))?;
        Ok(self.values.store(value))
    }

    /// Receives objects, and with `arbitrary_precision` also numbers, which serde_json passes
    /// as a map with one private key. `Value`'s own visitor distinguishes the two.
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Stored, A::Error> {
        let value = Value::deserialize(MapAccessDeserializer::new(map))?;
        Ok(self.values.store(value))
    }
}

/// A property name, borrowed from the JSON text unless it contains escapes.
struct PropertyName<'de>(std::borrow::Cow<'de, str>);

impl<'de> Deserialize<'de> for PropertyName<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor;

        impl<'de> Visitor<'de> for NameVisitor {
            type Value = PropertyName<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a property name")
            }

            fn visit_borrowed_str<E>(self, name: &'de str) -> Result<Self::Value, E> {
                Ok(PropertyName(std::borrow::Cow::Borrowed(name)))
            }

            fn visit_str<E>(self, name: &str) -> Result<Self::Value, E> {
                Ok(PropertyName(std::borrow::Cow::Owned(name.to_owned())))
            }

            fn visit_string<E>(self, name: String) -> Result<Self::Value, E> {
                Ok(PropertyName(std::borrow::Cow::Owned(name)))
            }
        }

        deserializer.deserialize_str(NameVisitor)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn selection(kept: Option<&[&str]>) -> Selection {
        Selection {
            events: BTreeMap::new(),
            profile_properties: kept.map(|names| {
                names
                    .iter()
                    .map(|n| (*n).to_owned())
                    .collect::<BTreeSet<_>>()
            }),
        }
    }

    #[test]
    fn entry_takes_sixteen_bytes() {
        assert_eq!(std::mem::size_of::<Entry>(), 16);
        assert_eq!(std::mem::size_of::<ProfileRow>(), 8);
    }

    #[test]
    fn json_values_of_every_kind_round_trip() {
        let text = r#"{"s":"ext-ü-\"q\"","e":"","n":-12.50,"big":1e400,"i":18446744073709551616,
            "t":true,"f":false,"z":null,"a":[1,"x",{"k":2}],"o":{"k":[true]}}"#;
        let mut values = ProfileValues::default();
        let mut names = PropertyNames::default();
        let row = values
            .push_json(text, &selection(None), &mut names)
            .unwrap();
        let expected: Map<String, Value> = serde_json::from_str(text).unwrap();
        assert_eq!(values.to_map(row, &names, None), expected);
        let number = |name: &str| names.get(name).unwrap();
        assert!(matches!(
            values.get(row, number("s")),
            Some(ValueRef::String("ext-ü-\"q\""))
        ));
        assert!(matches!(
            values.get(row, number("n")),
            Some(ValueRef::Number("-12.50"))
        ));
        assert!(matches!(values.get(row, number("z")), Some(ValueRef::Null)));
        assert!(matches!(
            values.get(row, number("a")),
            Some(ValueRef::Composite(Value::Array(_)))
        ));
    }

    #[test]
    fn values_kept_as_json_view_as_scalars() {
        let mut values = ProfileValues::default();
        let text = values.push_composite(json!("ext-1"));
        let number = values.push_composite(json!(2.5));
        let list = values.push_composite(json!(["a"]));
        assert!(matches!(values.view(text), ValueRef::String("ext-1")));
        assert!(matches!(values.view(number), ValueRef::Number("2.5")));
        assert!(matches!(
            values.view(list),
            ValueRef::Composite(Value::Array(_))
        ));
    }

    #[test]
    fn map_values_match_parsed_json() {
        let properties = json!({"plan": "pro", "n": 3, "l": ["a"], "skip": 1});
        let mut values = ProfileValues::default();
        let mut names = PropertyNames::default();
        let kept = selection(Some(&["plan", "n", "l"]));
        let row = values.push_map(properties.as_object().unwrap().clone(), &kept, &mut names);
        assert_eq!(
            Value::Object(values.to_map(row, &names, None)),
            json!({"plan": "pro", "n": 3, "l": ["a"]})
        );
        assert!(names.get("skip").is_none());
    }

    #[test]
    fn rows_stay_separate() {
        let mut values = ProfileValues::default();
        let mut names = PropertyNames::default();
        let all = selection(None);
        let first = values
            .push_json(r#"{"id":"a","x":1}"#, &all, &mut names)
            .unwrap();
        let empty = values.push_json("{}", &all, &mut names).unwrap();
        let second = values.push_json(r#"{"id":"b"}"#, &all, &mut names).unwrap();
        let id = names.get("id").unwrap();
        let x = names.get("x").unwrap();
        assert!(matches!(values.get(first, id), Some(ValueRef::String("a"))));
        assert!(matches!(
            values.get(second, id),
            Some(ValueRef::String("b"))
        ));
        assert!(values.get(second, x).is_none());
        assert!(values.get(empty, id).is_none());
        assert!(!empty.is_none());
        assert!(values.get(ProfileRow::NONE, id).is_none());
        assert_eq!(values.iter(ProfileRow::NONE).count(), 0);
    }

    #[test]
    fn invalid_json_keeps_nothing() {
        let mut values = ProfileValues::default();
        let mut names = PropertyNames::default();
        let all = selection(None);
        let row = values.push_json(r#"{"a":"x"}"#, &all, &mut names).unwrap();
        assert!(values
            .push_json(r#"{"b":"long text","c":[1]} x"#, &all, &mut names)
            .is_err());
        assert_eq!(values.entries.len(), 1);
        assert_eq!(values.text, "x");
        assert!(values.composites.is_empty());
        let a = names.get("a").unwrap();
        assert!(matches!(values.get(row, a), Some(ValueRef::String("x"))));
    }

    /// Generates JSON values of every kind, with strings of any characters.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            ".{0,40}".prop_map(Value::String),
        ];
        leaf.prop_recursive(2, 8, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z]{1,3}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn stored_profiles_equal_parsed_json(
            profiles in prop::collection::vec(
                prop::collection::btree_map(".{0,6}", json_value(), 0..5),
                1..6,
            )
        ) {
            let mut values = ProfileValues::default();
            let mut names = PropertyNames::default();
            let all = selection(None);
            let mut rows = Vec::new();
            for profile in &profiles {
                let object: Map<String, Value> = profile.clone().into_iter().collect();
                let text = serde_json::to_string(&object).unwrap();
                let from_json = values.push_json(&text, &all, &mut names).unwrap();
                let from_map = values.push_map(object, &all, &mut names);
                rows.push((text, from_json, from_map));
            }
            for (text, from_json, from_map) in rows {
                let expected: Map<String, Value> = serde_json::from_str(&text).unwrap();
                prop_assert_eq!(&values.to_map(from_json, &names, None), &expected);
                prop_assert_eq!(&values.to_map(from_map, &names, None), &expected);
                for (name, value) in &expected {
                    let number = names.get(name).unwrap();
                    let stored = values.get(from_json, number).map(ValueRef::to_value);
                    prop_assert_eq!(stored.as_ref(), Some(value));
                }
            }
        }
    }
}
