//! The members of one cohort evaluation as a sync uses them: each member's canonical id and its
//! Braze id, or why it has none.
//!
//! A run keeps up to millions of members, so the ids of all members share one buffer per kind
//! instead of one allocation per member. A skip reason is a small code that becomes text only
//! when an operation is written.

use crate::cohorts::engine::MemberSink;
use crate::cohorts::values::ValueRef;
use crate::cohorts::{self, CohortMembers, EvalError};
use crate::identity;
use crate::store::{IdSet, Store};

/// Reason a member has no Braze id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    AnonymousDevice,
    NoProfile,
    /// The profile lacks the user-id property, or it is `null`.
    MissingProperty,
    EmptyId,
    /// The id contains U+0000, which Braze ids never do and PostgreSQL cannot store.
    NulCharacter,
    /// The property is a JSON value of another type than string.
    NotString(JsonType),
}

/// The JSON type of a user-id property that is neither a string nor `null`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonType {
    Boolean,
    Number,
    Array,
    Object,
}

impl JsonType {
    /// Returns the type's name after its indefinite article: `a number`, `an array`.
    pub fn with_article(self) -> &'static str {
        match self {
            JsonType::Boolean => "a boolean",
            JsonType::Number => "a number",
            JsonType::Array => "an array",
            JsonType::Object => "an object",
        }
    }
}

impl Skip {
    /// Formats the reason as `syncs operations` lists it, naming the connection's user-id
    /// property.
    pub fn reason(self, user_id_property: &str) -> String {
        match self {
            Skip::AnonymousDevice => "anonymous device id without a merged user".into(),
            Skip::NoProfile => "no profile".into(),
            Skip::MissingProperty => format!("profile has no {user_id_property} property"),
            Skip::EmptyId => format!("{user_id_property} is empty"),
            Skip::NulCharacter => {
                format!("{user_id_property} contains the NUL character U+0000")
            }
            Skip::NotString(json_type) => {
                format!(
                    "{user_id_property} is {}, not a string",
                    json_type.with_article()
                )
            }
        }
    }
}

/// Returns the Braze id of a member with canonical id `member`, from its profile's value of the
/// user-id property (`None` when the member has no profile), or why it cannot be sent. Ids are
/// taken byte-exact: no trimming, no case folding.
pub fn braze_id_of<'v>(
    member: &str,
    profile: Option<Option<ValueRef<'v>>>,
) -> Result<&'v str, Skip> {
    if identity::is_anonymous_device(member) {
        return Err(Skip::AnonymousDevice);
    }
    match profile.ok_or(Skip::NoProfile)? {
        None | Some(ValueRef::Null) => Err(Skip::MissingProperty),
        Some(ValueRef::String("")) => Err(Skip::EmptyId),
        Some(ValueRef::String(id)) if id.contains('\0') => Err(Skip::NulCharacter),
        Some(ValueRef::String(id)) => Ok(id),
        Some(ValueRef::Bool(_)) => Err(Skip::NotString(JsonType::Boolean)),
        Some(ValueRef::Number(_)) => Err(Skip::NotString(JsonType::Number)),
        Some(ValueRef::Composite(serde_json::Value::Array(_))) => {
            Err(Skip::NotString(JsonType::Array))
        }
        Some(ValueRef::Composite(_)) => Err(Skip::NotString(JsonType::Object)),
    }
}

/// The Braze id of one member: the end offset of its bytes in `SyncMembers::braze_ids`, or
/// why it has none. An id starts where the previous member's id ends.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Id { end: u32 },
    Skipped { end: u32, skip: Skip },
}

impl Slot {
    fn end(self) -> u32 {
        match self {
            Slot::Id { end } | Slot::Skipped { end, .. } => end,
        }
    }
}

/// The members of one evaluation, in byte order of canonical ids, each with its Braze id or the
/// reason it has none.
#[derive(Debug, Default)]
pub struct SyncMembers {
    members: IdSet,
    braze_ids: String,
    slots: Vec<Slot>,
}

impl SyncMembers {
    /// Evaluates `definition` and keeps, of each member, its canonical id and the Braze id in
    /// its profile's `user_id_property`.
    pub async fn evaluate(
        store: &dyn Store,
        project_id: i64,
        definition: &cohorts::Definition,
        user_id_property: &str,
        now_ms: i64,
    ) -> Result<Self, EvalError> {
        let mut builder = SyncMembersBuilder::default();
        cohorts::evaluate_property(
            store,
            project_id,
            definition,
            user_id_property,
            now_ms,
            &mut builder,
        )
        .await?;
        Ok(builder.finish())
    }

    /// Keeps the members of an evaluation made with [`cohorts::evaluate_with_properties`].
    pub fn from_cohort_members(evaluated: &CohortMembers, user_id_property: &str) -> Self {
        let mut builder = SyncMembersBuilder::default();
        for member in &evaluated.members {
            let profile = evaluated
                .profiles
                .get(member)
                .map(|properties| properties.get(user_id_property).map(ValueRef::from));
            builder.push(member, braze_id_of(member, profile));
        }
        builder.finish()
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Returns the canonical id of member `index`.
    pub fn member(&self, index: usize) -> &str {
        self.members.get(index)
    }

    /// Returns the Braze id of member `index`, or why it has none.
    pub fn braze_id(&self, index: usize) -> Result<&str, Skip> {
        let start = match index {
            0 => 0,
            _ => self.slots[index - 1].end() as usize,
        };
        match self.slots[index] {
            Slot::Id { end } => Ok(&self.braze_ids[start..end as usize]),
            Slot::Skipped { skip, .. } => Err(skip),
        }
    }

    /// Counts the members with a Braze id: those a sync sends.
    pub fn exportable_count(&self) -> usize {
        self.slots
            .iter()
            .filter(|slot| matches!(slot, Slot::Id { .. }))
            .count()
    }
}

/// Builds [`SyncMembers`] from members given in byte order of canonical ids.
#[derive(Default)]
struct SyncMembersBuilder {
    members: IdSet,
    braze_ids: String,
    slots: Vec<Slot>,
}

impl MemberSink for SyncMembersBuilder {
    /// Reserves room for the members. A Braze id is often about as long as its member's
    /// canonical id, so the Braze id buffer gets as much room as the canonical ids.
    fn reserve(&mut self, members: usize, id_bytes: usize) {
        self.members.reserve(members, id_bytes);
        self.braze_ids.reserve(id_bytes);
        self.slots.reserve(members);
    }

    fn push(&mut self, member: &str, profile: Option<Option<ValueRef<'_>>>) {
        self.push(member, braze_id_of(member, profile));
    }
}

impl SyncMembersBuilder {
    /// Adds the next member.
    ///
    /// # Panics
    ///
    /// When the Braze ids take more than 4 GiB in total, or a member repeats or comes out of
    /// order (the engine yields each member once, in order).
    fn push(&mut self, member: &str, braze_id: Result<&str, Skip>) {
        assert!(
            self.members.push_ordered(member),
            "member {member:?} repeats or is out of order"
        );
        let slot = match braze_id {
            Ok(id) => {
                self.braze_ids.push_str(id);
                Slot::Id {
                    end: self.end_offset(),
                }
            }
            Err(skip) => Slot::Skipped {
                end: self.end_offset(),
                skip,
            },
        };
        self.slots.push(slot);
    }

    fn end_offset(&self) -> u32 {
        u32::try_from(self.braze_ids.len()).expect("the Braze ids of a cohort are limited to 4 GiB")
    }

    fn finish(self) -> SyncMembers {
        SyncMembers {
            members: self.members,
            braze_ids: self.braze_ids,
            slots: self.slots,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    /// Returns the Braze id of a member `u1` whose user-id property is `value`.
    fn id_of(value: &Value) -> Result<&str, Skip> {
        braze_id_of("u1", Some(Some(ValueRef::from(value))))
    }

    #[test]
    fn braze_id_rules() {
        let id = json!("Ext-1 ");
        assert_eq!(id_of(&id), Ok("Ext-1 "));
        assert_eq!(
            braze_id_of("$device:d", Some(Some(ValueRef::from(&id)))),
            Err(Skip::AnonymousDevice)
        );
        assert_eq!(braze_id_of("u1", None), Err(Skip::NoProfile));
        assert_eq!(braze_id_of("u1", Some(None)), Err(Skip::MissingProperty));
        assert_eq!(id_of(&Value::Null), Err(Skip::MissingProperty));
        assert_eq!(id_of(&json!("")), Err(Skip::EmptyId));
        assert_eq!(id_of(&json!(7)), Err(Skip::NotString(JsonType::Number)));
        assert_eq!(id_of(&json!(true)), Err(Skip::NotString(JsonType::Boolean)));
        assert_eq!(id_of(&json!(["a"])), Err(Skip::NotString(JsonType::Array)));
        assert_eq!(
            id_of(&json!({"a": 1})),
            Err(Skip::NotString(JsonType::Object))
        );
    }

    #[test]
    fn members_keep_ids_and_skips_by_position() {
        let mut builder = SyncMembersBuilder::default();
        builder.push("a", Ok("X"));
        builder.push("b", Err(Skip::EmptyId));
        builder.push("c", Ok(""));
        builder.push("d", Ok("Y z"));
        let members = builder.finish();
        assert_eq!(members.len(), 4);
        assert_eq!(members.member(0), "a");
        assert_eq!(members.braze_id(0), Ok("X"));
        assert_eq!(members.member(1), "b");
        assert_eq!(members.braze_id(1), Err(Skip::EmptyId));
        assert_eq!(members.braze_id(2), Ok(""));
        assert_eq!(members.member(3), "d");
        assert_eq!(members.braze_id(3), Ok("Y z"));
        assert_eq!(members.exportable_count(), 3);
    }

    /// Generates distinct ids: short, exactly 8 or 9 bytes, longer than 22 bytes, non-ASCII,
    /// or anonymous devices.
    fn distinct_id() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            "u[0-9]{1,6}",
            "[a-c]{8}",
            "[a-c]{9}",
            "user-[a-zé]{20,30}",
            "ユーザー[0-9]{1,3}",
            "\\$device:[0-9a-f]{4,40}",
        ]
    }

    /// Generates values of the user-id property, or `None` to leave it out.
    fn user_id_value() -> impl proptest::strategy::Strategy<Value = Option<Value>> {
        use proptest::prelude::*;
        prop_oneof![
            Just(None),
            Just(Some(Value::Null)),
            Just(Some(json!(""))),
            "[a-zü-]{1,40}".prop_map(|s| Some(json!(s))),
            any::<i32>().prop_map(|n| Some(json!(n))),
            any::<bool>().prop_map(|b| Some(json!(b))),
            Just(Some(json!(["a"]))),
            Just(Some(json!({"id": "a"}))),
        ]
    }

    /// Collects what the engine passes to a `MemberSink` through `SyncMembersBuilder`.
    fn sync_members_of(
        profiles: &std::collections::BTreeMap<String, (bool, Option<Value>)>,
        links: &std::collections::BTreeMap<String, String>,
    ) -> SyncMembers {
        use crate::cohorts::engine::Engine;
        use crate::cohorts::rows::{IndexBuilder, Selection};

        let definition =
            crate::cohorts::parse(&json!({"profile": "plan", "op": "eq", "value": "pro"})).unwrap();
        let output = ["$braze_external_id".to_owned()];
        let selection = Selection::for_definitions([&definition], Some(&output));
        let mut builder = IndexBuilder::new(selection);
        builder.reserve_ids(profiles.len() / 2);
        for (device, user) in links {
            builder.add_link(device, user);
        }
        for (id, (pro, braze_id)) in profiles {
            let mut properties = serde_json::Map::new();
            properties.insert("other".into(), json!([1, {"x": "y"}]));
            properties.insert("plan".into(), json!(if *pro { "pro" } else { "free" }));
            if let Some(value) = braze_id {
                properties.insert("$braze_external_id".into(), value.clone());
            }
            let text = serde_json::to_string(&properties).unwrap();
            builder.add_profile_json(id, &text).unwrap();
        }
        let mut members = SyncMembersBuilder::default();
        Engine::from_rows(builder)
            .for_each_member_value(
                &definition,
                &std::collections::HashMap::new(),
                chrono_tz::Tz::UTC,
                0,
                "$braze_external_id",
                &mut members,
            )
            .unwrap();
        members.finish()
    }

    proptest::proptest! {
        #[test]
        fn evaluated_members_match_profiles(
            profiles in proptest::collection::btree_map(
                distinct_id(),
                (proptest::prelude::any::<bool>(), user_id_value()),
                0..40,
            ),
            links in proptest::collection::btree_map(
                "\\$device:[0-9a-f]{4,40}",
                distinct_id(),
                0..6,
            ),
        ) {
            let members = sync_members_of(&profiles, &links);
            // A member is a profile that is not under a linked device (such a profile is an
            // orphan) and whose plan is "pro". Members come out in byte order of their ids.
            let expected: Vec<(&String, &Option<Value>)> = profiles
                .iter()
                .filter(|(id, (pro, _))| *pro && !links.contains_key(*id))
                .map(|(id, (_, braze_id))| (id, braze_id))
                .collect();
            proptest::prop_assert_eq!(members.len(), expected.len());
            for (index, (id, braze_id)) in expected.into_iter().enumerate() {
                proptest::prop_assert_eq!(members.member(index), id.as_str());
                let value = braze_id.as_ref().map(ValueRef::from);
                proptest::prop_assert_eq!(members.braze_id(index), braze_id_of(id, Some(value)));
            }
        }
    }

    #[test]
    #[should_panic(expected = "out of order")]
    fn members_out_of_order_panic() {
        let mut builder = SyncMembersBuilder::default();
        builder.push("b", Ok("X"));
        builder.push("a", Ok("Y"));
    }

    #[test]
    fn from_cohort_members_matches_profiles() {
        let mut evaluated = CohortMembers::default();
        for member in ["a", "b", "c"] {
            evaluated.members.insert(member.into());
        }
        let profile = |value: Value| value.as_object().cloned().unwrap();
        evaluated
            .profiles
            .insert("a".into(), profile(json!({"$braze_external_id": "A"})));
        evaluated
            .profiles
            .insert("b".into(), profile(json!({"other": "B"})));
        let members = SyncMembers::from_cohort_members(&evaluated, "$braze_external_id");
        assert_eq!(members.braze_id(0), Ok("A"));
        assert_eq!(members.braze_id(1), Err(Skip::MissingProperty));
        assert_eq!(members.braze_id(2), Err(Skip::NoProfile));
    }
}
