//! Maps one Braze Currents event to the event cohortbridge stores.
//!
//! Braze's Currents custom HTTP connector POSTs batches shaped `{"events": [...]}`. Each
//! element has `event_type` (for example `users.messages.email.Send`), a globally unique
//! `id`, `time` in UNIX epoch seconds, a `user` object (`user_id`, `external_user_id`,
//! `device_id`, `timezone`) and a `properties` object. The caller reads the batch
//! envelope, and this module maps one element of `events` without any I/O.
//!
//! This module owns:
//! - the table from Currents event type to event name, with the names that Braze's
//!   Mixpanel export gives its events ([`mixpanel_event_name`]),
//! - the property layout of a mapped event ([`map_event`]),
//! - the list of Braze outreach events that Mixpanel leaves out of Monthly Tracked Users
//!   ([`MTU_EXEMPT_EVENT_NAMES`]).
//!
//! Sources: Braze's Currents event glossary (message engagement and customer behavior
//! events, "Mixpanel" tab of each event), Braze's "Mixpanel for Currents" partner page,
//! Braze's Currents sample events in the `Appboy/currents-examples` repository, and
//! Mixpanel's "Braze" integration page for the MTU exemptions.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Value of the `$partner_id` property on every mapped event.
///
/// Braze's Mixpanel export marks its events this way, and Mixpanel keys its MTU exemption
/// for Braze outreach events on that property.
pub const PARTNER_ID: &str = "braze";

/// Currents event type of custom events. Its event name is [`CUSTOM_EVENT_PREFIX`] followed by
/// the event's own `properties.name`, as Braze's Mixpanel export names it, so
/// [`mixpanel_event_name`] has no entry for it.
pub const CUSTOM_EVENT_TYPE: &str = "users.behaviors.CustomEvent";

/// Prefix of the name of a custom event that arrives through Braze.
pub const CUSTOM_EVENT_PREFIX: &str = "[Braze Custom Event] ";

/// Event name of `users.messages.sms.CarrierSend`.
///
/// Braze's "Mixpanel for Currents" page names the event "SMS Send To Carrier", while
/// Mixpanel's MTU exemption list spells it "SMS Send to Carrier". The name table and
/// [`MTU_EXEMPT_EVENT_NAMES`] both use Braze's spelling, and [`is_mtu_exempt`] ignores case
/// so that Mixpanel's spelling matches too.
const SMS_SEND_TO_CARRIER: &str = "SMS Send To Carrier";

/// Braze outreach events that Mixpanel does not count towards Monthly Tracked Users when
/// they carry `$partner_id`, as listed on Mixpanel's Braze integration page.
///
/// Engagement events such as "Email Open" or "Push Notification Open" do count.
pub const MTU_EXEMPT_EVENT_NAMES: &[&str] = &[
    "Canvas Entry",
    "Email Send",
    "Email Delivery",
    "Email Bounce",
    "Email Soft Bounce",
    "Email Mark As Spam",
    "Email Unsubscribe",
    "Push Notification Send",
    "Push Notification Bounce",
    "Webhook Send",
    "SMS Send",
    "SMS Delivery",
    "SMS Delivery Failure",
    "SMS Rejection",
    SMS_SEND_TO_CARRIER,
];

/// Returns whether `name` is in [`MTU_EXEMPT_EVENT_NAMES`], ignoring ASCII case.
pub fn is_mtu_exempt(name: &str) -> bool {
    MTU_EXEMPT_EVENT_NAMES
        .iter()
        .any(|exempt| exempt.eq_ignore_ascii_case(name))
}

/// Currents event type and the event name it maps to.
///
/// Lists every type in Braze's current Currents event glossary and Currents sample events,
/// except:
/// - [`CUSTOM_EVENT_TYPE`], named by its own `properties.name`,
/// - the user events `users.RandomBucketNumberUpdate`, `users.UserOrphan`,
///   `users.UserDeleteRequest` and `users.profile.Update`, which Braze documents for
///   storage connectors only and which describe profile changes, not user actions.
///
/// NOTE: types that appear only in older Braze sample data (for example
/// `users.canvas.sendtodestination.Sent` or `users.campaigns.UniqueReceipt`) are not
/// listed, so they map to [`CurrentsError::UnknownEventType`].
///
/// Where a name comes from is marked on each group.
const EVENT_NAMES: &[(&str, &str)] = &[
    // Names required by cohortbridge. They are the names on Braze's "Mixpanel for
    // Currents" page. The current Braze glossary names four of them differently:
    // "Canvas Conversion", "Campaign Conversion", "SMS Carrier Send" and
    // "SMS Inbound Received".
    ("users.messages.email.Send", "Email Send"),
    ("users.messages.email.Delivery", "Email Delivery"),
    ("users.messages.email.Open", "Email Open"),
    ("users.messages.email.Click", "Email Click"),
    ("users.messages.email.Bounce", "Email Bounce"),
    ("users.messages.email.SoftBounce", "Email Soft Bounce"),
    ("users.messages.email.MarkAsSpam", "Email Mark As Spam"),
    ("users.messages.email.Unsubscribe", "Email Unsubscribe"),
    (
        "users.messages.pushnotification.Send",
        "Push Notification Send",
    ),
    (
        "users.messages.pushnotification.Open",
        "Push Notification Open",
    ),
    (
        "users.messages.pushnotification.IosForeground",
        "Push Notification iOS Foreground Open",
    ),
    (
        "users.messages.pushnotification.Bounce",
        "Push Notification Bounce",
    ),
    (
        "users.messages.inappmessage.Impression",
        "In-App Message Impression",
    ),
    ("users.messages.inappmessage.Click", "In-App Message Click"),
    ("users.messages.contentcard.Send", "Content Card Send"),
    (
        "users.messages.contentcard.Impression",
        "Content Card Impression",
    ),
    ("users.messages.contentcard.Click", "Content Card Click"),
    ("users.messages.contentcard.Dismiss", "Content Card Dismiss"),
    ("users.messages.sms.Send", "SMS Send"),
    ("users.messages.sms.CarrierSend", SMS_SEND_TO_CARRIER),
    ("users.messages.sms.Delivery", "SMS Delivery"),
    ("users.messages.sms.DeliveryFailure", "SMS Delivery Failure"),
    ("users.messages.sms.Rejection", "SMS Rejection"),
    ("users.messages.sms.InboundReceive", "SMS Inbound Receipt"),
    ("users.messages.webhook.Send", "Webhook Send"),
    ("users.canvas.Entry", "Canvas Entry"),
    ("users.canvas.Conversion", "Canvas Conversion Event"),
    ("users.campaigns.Conversion", "Campaign Conversion Event"),
    (
        "users.campaigns.EnrollInControl",
        "Campaign Control Group Enrollment",
    ),
    (
        "users.behaviors.subscriptiongroup.StateChange",
        "Subscription Group State Change",
    ),
    ("users.behaviors.Purchase", "Purchase"),
    ("users.behaviors.app.FirstSession", "First Session"),
    ("users.behaviors.app.SessionStart", "Session Start"),
    ("users.behaviors.app.SessionEnd", "Session End"),
    ("users.behaviors.Location", "Location"),
    ("users.behaviors.InstallAttribution", "Install Attribution"),
    ("users.behaviors.Uninstall", "Uninstall"),
    // Names from the "Mixpanel" tab of Braze's Currents event glossary.
    (
        "users.behaviors.subscription.GlobalStateChange",
        "Global Subscription State Change",
    ),
    ("users.canvas.exit.MatchedAudience", "Exit Match Audience"),
    ("users.canvas.exit.PerformedEvent", "Exit Perform Event"),
    (
        "users.canvas.experimentstep.Conversion",
        "Experiment Step Conversion",
    ),
    (
        "users.canvas.experimentstep.SplitEntry",
        "Experiment Split Entry",
    ),
    ("users.canvasstep.Progression", "Canvas Step Progression"),
    ("users.messages.banner.Abort", "Banner Abort"),
    ("users.messages.banner.Click", "Banner Click"),
    ("users.messages.banner.Impression", "Banner Impression"),
    ("users.messages.contentcard.Abort", "Content Card Abort"),
    ("users.messages.email.Abort", "Email Abort"),
    ("users.messages.email.Deferral", "Email Deferral"),
    (
        "users.messages.featureflag.Impression",
        "Feature Flag Experiment Impression",
    ),
    ("users.messages.line.InboundReceive", "LINE Inbound Receive"),
    (
        "users.messages.liveactivity.Outcome",
        "Live Activity Outcome",
    ),
    ("users.messages.liveactivity.Send", "Live Activity Send"),
    (
        "users.behaviors.liveactivity.PushToStartTokenChange",
        "Live Activity Push To Start Token Change",
    ),
    (
        "users.behaviors.liveactivity.UpdateTokenChange",
        "Live Activity Update Token Change",
    ),
    (
        "users.behaviors.pushnotification.TokenStateChange",
        "Push Notification Token State Change",
    ),
    (
        "users.messages.pushnotification.Abort",
        "Push Notification Abort",
    ),
    ("users.messages.sms.ShortLinkClick", "SMS Short Link Click"),
    ("users.messages.webhook.Failure", "Webhook Failure"),
    ("users.messages.whatsapp.Abort", "WhatsApp Abort"),
    (
        "users.messages.whatsapp.Click",
        "WhatsApp Tracked Link Click",
    ),
    ("users.messages.whatsapp.Failure", "WhatsApp Failure"),
    ("users.messages.whatsapp.Read", "WhatsApp Read"),
    ("users.messages.whatsapp.Send", "WhatsApp Send"),
    // Names from an older version of Braze's "Mixpanel for Currents" page. The current
    // page no longer lists News Feed events.
    (
        "users.messages.newsfeedcard.Impression",
        "News Feed Card Impression",
    ),
    ("users.messages.newsfeedcard.Click", "News Feed Card Click"),
    (
        "users.behaviors.app.NewsFeedImpression",
        "News Feed Impression",
    ),
    // The glossary's Mixpanel tab names these LINE and RCS events by the bare action
    // ("Abort", "Click", "Send", ...), which would merge them with each other across
    // channels. The channel is prefixed here, and RCS inbound messages take the
    // glossary's section title "RCS Inbound Received".
    ("users.messages.line.Abort", "LINE Abort"),
    ("users.messages.line.Click", "LINE Click"),
    ("users.messages.line.Send", "LINE Send"),
    ("users.messages.rcs.Abort", "RCS Abort"),
    ("users.messages.rcs.Click", "RCS Click"),
    ("users.messages.rcs.Delivery", "RCS Delivery"),
    ("users.messages.rcs.InboundReceive", "RCS Inbound Received"),
    ("users.messages.rcs.Read", "RCS Read"),
    ("users.messages.rcs.Rejection", "RCS Rejection"),
    ("users.messages.rcs.Send", "RCS Send"),
    // Types in Braze's glossary or Currents sample events for which no Mixpanel name was
    // found. These names follow the "<Channel> <Action>" pattern of the glossary's
    // Mixpanel names. "WhatsApp Inbound Received" is the glossary's section title.
    ("users.messages.inappmessage.Abort", "In-App Message Abort"),
    ("users.messages.sms.Abort", "SMS Abort"),
    ("users.messages.webhook.Abort", "Webhook Abort"),
    ("users.messages.whatsapp.Delivery", "WhatsApp Delivery"),
    (
        "users.messages.whatsapp.InboundReceive",
        "WhatsApp Inbound Received",
    ),
    ("users.messages.banner.Dismiss", "Banner Dismiss"),
    ("users.messages.newsfeedcard.Abort", "News Feed Card Abort"),
    ("users.messages.email.Retry", "Email Retry"),
    ("users.messages.line.Retry", "LINE Retry"),
    (
        "users.messages.pushnotification.Retry",
        "Push Notification Retry",
    ),
    ("users.messages.sms.Retry", "SMS Retry"),
    ("users.messages.webhook.Retry", "Webhook Retry"),
    ("users.messages.whatsapp.Retry", "WhatsApp Retry"),
    ("users.campaigns.Abort", "Campaign Abort"),
    ("users.canvas.Abort", "Canvas Abort"),
    ("users.canvas.costep.Send", "Content Optimizer Step Send"),
    ("agentconsole.AgentExecuted", "Agent Executed"),
    ("agentconsole.ToolInvocation", "Agent Tool Invocation"),
];

/// Returns the event name for a Currents event type, or `None` for an unknown type and for
/// [`CUSTOM_EVENT_TYPE`], whose name comes from each event's `properties.name`.
///
/// Type matching is exact and case-sensitive, as Braze spells the types.
pub fn mixpanel_event_name(event_type: &str) -> Option<&'static str> {
    EVENT_NAMES
        .iter()
        .find(|(known_type, _)| *known_type == event_type)
        .map(|(_, name)| *name)
}

/// One Currents event mapped to the event cohortbridge stores.
#[derive(Debug, Clone, PartialEq)]
pub struct MappedEvent {
    /// Event name as Braze's Mixpanel export names it, for example "Email Send" or
    /// "[Braze Custom Event] Played". A type without a documented name keeps its raw
    /// `event_type`.
    pub name: String,
    /// The user's Braze `external_user_id`, or the empty string for an event without one,
    /// which is stored unattributed: counted, but never a user.
    pub distinct_id: String,
    /// Event time in UNIX epoch milliseconds. Currents sends seconds.
    pub time_ms: i64,
    /// Deduplication key derived from the event type and the Currents `id`. The same event
    /// always gives the same key, so a batch that Braze retries is stored once, while one `id`
    /// reused by two event types gives two keys.
    pub insert_id: String,
    /// Event properties. [`map_event`] documents the keys and the merge rules.
    pub properties: Map<String, Value>,
}

/// Reason a Currents event could not be mapped. Each variant names the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CurrentsError {
    /// A required field is absent or `null`.
    #[error("Currents event has no `{field}`")]
    MissingField { field: &'static str },
    /// A field is present but its value cannot be used.
    #[error("invalid `{field}` in Currents event: {reason} (got {value})")]
    InvalidField {
        field: &'static str,
        /// The offending value as compact JSON, shortened to at most 200 characters.
        value: String,
        reason: &'static str,
    },
    /// A key of a nested property object collides with an existing property both under
    /// its own name and under its prefixed name.
    #[error(
        "cannot merge key {key:?} of `{field}`: properties {key:?} and {renamed:?} \
         already exist"
    )]
    PropertyCollision {
        field: &'static str,
        key: String,
        renamed: String,
    },
}

/// Property that carries [`PARTNER_ID`].
const PARTNER_ID_KEY: &str = "$partner_id";
/// Property that carries the original Currents `event_type`.
const EVENT_TYPE_KEY: &str = "braze_event_type";
/// Prefixes that Braze's Mixpanel export puts on custom event and purchase properties.
const CUSTOM_PROPERTY_PREFIX: &str = "[Custom event property] ";
const PURCHASE_PROPERTY_PREFIX: &str = "[Purchase property] ";
/// Length of an insert ID: the first 16 bytes of SHA-256, in hex.
const HASHED_INSERT_ID_LEN: usize = 32;
/// Longest JSON rendering of an offending value kept in an error message.
const MAX_ERROR_VALUE_CHARS: usize = 200;

/// Maps one element of a Currents batch's `events` array.
///
/// Checks run in this order, and the first failed check is returned:
/// 1. The event is a JSON object.
/// 2. `event_type` and `id` are non-empty strings.
/// 3. `time` is a finite, non-negative number of epoch seconds whose milliseconds fit in
///    `i64`. Integer and fractional seconds are accepted, and fractions are rounded to
///    the nearest millisecond.
/// 4. `properties` and `user` are objects. Absent or `null` reads as an empty object.
/// 5. `user.external_user_id`, when present, is a string. Absent, `null` or empty makes the
///    event unattributed (distinct id `""`).
/// 6. For custom events, `properties.name` is a non-empty string.
///
/// The name comes from the name table; a custom event is `[Braze Custom Event] <name>`, and
/// any other type keeps its raw `event_type`, so no event is rejected for its type.
///
/// Properties are built in this order, and a later step never overwrites a key that an
/// earlier step wrote, except where stated:
/// 1. Every key of `properties` is copied as is, `null` values included, except
///    `custom_properties` and `purchase_properties`.
/// 2. From `user`, `user_id` becomes `braze_id` (the Braze user ID), while `device_id`
///    and `timezone` keep their names. These three replace a key of the same name from
///    `properties`, and a `null` value is skipped. The device ID is not stored as
///    `$device_id` because Mixpanel merges identities on that key, and Braze's device ID
///    is not the app's.
/// 3. `$partner_id` is set to [`PARTNER_ID`] and `braze_event_type` to the Currents
///    `event_type`, replacing any incoming key of the same name.
/// 4. Every other key of `user` except `external_user_id`, which becomes `distinct_id`,
///    is added as `user_<key>`. If that key already exists, mapping fails with
///    [`CurrentsError::PropertyCollision`].
/// 5. The keys of `properties.custom_properties` are added with the prefix
///    `[Custom event property] `, then those of `properties.purchase_properties` with
///    `[Purchase property] `, as Braze's Mixpanel export names them. A prefixed key that
///    already exists fails with [`CurrentsError::PropertyCollision`]. Each nested object may
///    also arrive as a JSON-encoded string, as Braze's storage connectors send it, with the
///    same result, and `null` is skipped.
///
/// `user.external_user_id` is not repeated in the properties because it is the
/// `distinct_id`, and `time` and `id` are not repeated because they become `time_ms` and
/// `insert_id`.
pub fn map_event(event: &Value) -> Result<MappedEvent, CurrentsError> {
    let Some(event_object) = event.as_object() else {
        return Err(invalid_field(
            "event",
            event,
            "expected a JSON object with event_type, id, time, user and properties",
        ));
    };

    let event_type = required_string(event_object, "event_type")?;
    let id = required_string(event_object, "id")?;
    let time_ms = epoch_seconds_to_ms(event_object.get("time"))?;
    let source_properties = properties_object(event_object.get("properties"))?;
    let user = user_object(event_object.get("user"))?;
    let distinct_id = external_user_id(user)?;

    let name = match mixpanel_event_name(event_type) {
        Some(name) => name.to_owned(),
        None if event_type == CUSTOM_EVENT_TYPE => {
            format!(
                "{CUSTOM_EVENT_PREFIX}{}",
                custom_event_name(source_properties)?
            )
        }
        None => event_type.to_owned(),
    };

    let properties = build_properties(event_type, source_properties, user)?;

    Ok(MappedEvent {
        name,
        distinct_id,
        time_ms,
        insert_id: insert_id_for(event_type, id),
        properties,
    })
}

/// Reads a field that must be a non-empty string.
fn required_string<'a>(
    object: &'a Map<String, Value>,
    field: &'static str,
) -> Result<&'a str, CurrentsError> {
    match object.get(field) {
        None | Some(Value::Null) => Err(CurrentsError::MissingField { field }),
        Some(Value::String(text)) if text.is_empty() => {
            Err(invalid_field(field, &Value::from(""), "must not be empty"))
        }
        Some(Value::String(text)) => Ok(text),
        Some(other) => Err(invalid_field(field, other, "expected a string")),
    }
}

/// Converts Currents `time` (epoch seconds, integer or fractional) to epoch milliseconds.
fn epoch_seconds_to_ms(time: Option<&Value>) -> Result<i64, CurrentsError> {
    const FIELD: &str = "time";
    let number = match time {
        None | Some(Value::Null) => return Err(CurrentsError::MissingField { field: FIELD }),
        Some(Value::Number(number)) => number,
        Some(other) => {
            return Err(invalid_field(
                FIELD,
                other,
                "expected UNIX epoch seconds as a JSON number",
            ))
        }
    };
    let original = || Value::Number(number.clone());
    let too_large = "too large: its milliseconds do not fit in a 64-bit signed integer";

    if let Some(seconds) = number.as_i64() {
        if seconds < 0 {
            return Err(invalid_field(FIELD, &original(), "must not be negative"));
        }
        return seconds
            .checked_mul(1000)
            .ok_or_else(|| invalid_field(FIELD, &original(), too_large));
    }
    if number.is_u64() {
        // Only integers above i64::MAX reach this branch.
        return Err(invalid_field(FIELD, &original(), too_large));
    }

    let seconds = number.as_f64().unwrap_or(f64::NAN);
    if !seconds.is_finite() {
        return Err(invalid_field(FIELD, &original(), "must be a finite number"));
    }
    if seconds < 0.0 {
        return Err(invalid_field(FIELD, &original(), "must not be negative"));
    }
    let milliseconds = (seconds * 1000.0).round();
    // i64::MAX is not exactly representable as f64, so compare with 2^63, the first
    // value that overflows.
    if milliseconds >= 9_223_372_036_854_775_808.0 {
        return Err(invalid_field(FIELD, &original(), too_large));
    }
    Ok(milliseconds as i64)
}

/// Reads `properties`. Absent or `null` reads as an empty object.
fn properties_object(properties: Option<&Value>) -> Result<&Map<String, Value>, CurrentsError> {
    static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    match properties {
        None | Some(Value::Null) => Ok(EMPTY.get_or_init(Map::new)),
        Some(Value::Object(object)) => Ok(object),
        Some(other) => Err(invalid_field("properties", other, "expected a JSON object")),
    }
}

/// Reads `user`. Absent or `null` reads as an empty object: the event is unattributed.
fn user_object(user: Option<&Value>) -> Result<&Map<String, Value>, CurrentsError> {
    static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    match user {
        None | Some(Value::Null) => Ok(EMPTY.get_or_init(Map::new)),
        Some(Value::Object(object)) => Ok(object),
        Some(other) => Err(invalid_field("user", other, "expected a JSON object")),
    }
}

/// Reads `user.external_user_id`; absent, `null` or empty gives the empty distinct id.
fn external_user_id(user: &Map<String, Value>) -> Result<String, CurrentsError> {
    match user.get("external_user_id") {
        Some(Value::String(external_id)) => Ok(external_id.clone()),
        None | Some(Value::Null) => Ok(String::new()),
        Some(other) => Err(invalid_field(
            "user.external_user_id",
            other,
            "expected a string",
        )),
    }
}

/// Reads the name of a custom event from its `properties.name`.
fn custom_event_name(properties: &Map<String, Value>) -> Result<String, CurrentsError> {
    const FIELD: &str = "properties.name";
    match properties.get("name") {
        None | Some(Value::Null) => Err(CurrentsError::MissingField { field: FIELD }),
        Some(Value::String(name)) if name.is_empty() => Err(invalid_field(
            FIELD,
            &Value::from(""),
            "a custom event name must not be empty",
        )),
        Some(Value::String(name)) => Ok(name.clone()),
        Some(other) => Err(invalid_field(FIELD, other, "expected a string")),
    }
}

/// Builds the stored properties in the order that [`map_event`] documents.
fn build_properties(
    event_type: &str,
    source_properties: &Map<String, Value>,
    user: &Map<String, Value>,
) -> Result<Map<String, Value>, CurrentsError> {
    let mut properties: Map<String, Value> = source_properties
        .iter()
        .filter(|(key, _)| {
            key.as_str() != "custom_properties" && key.as_str() != "purchase_properties"
        })
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();

    for (user_key, property_key) in [
        ("user_id", "braze_id"),
        ("device_id", "device_id"),
        ("timezone", "timezone"),
    ] {
        match user.get(user_key) {
            None | Some(Value::Null) => {}
            Some(value) => {
                properties.insert(property_key.to_owned(), value.clone());
            }
        }
    }

    properties.insert(PARTNER_ID_KEY.to_owned(), Value::from(PARTNER_ID));
    properties.insert(EVENT_TYPE_KEY.to_owned(), Value::from(event_type));

    for (key, value) in user {
        if matches!(
            key.as_str(),
            "user_id" | "external_user_id" | "device_id" | "timezone"
        ) {
            continue;
        }
        let renamed = format!("user_{key}");
        if properties.contains_key(&renamed) {
            return Err(CurrentsError::PropertyCollision {
                field: "user",
                key: key.clone(),
                renamed,
            });
        }
        properties.insert(renamed, value.clone());
    }

    for (field, key, prefix) in [
        (
            "properties.custom_properties",
            "custom_properties",
            CUSTOM_PROPERTY_PREFIX,
        ),
        (
            "properties.purchase_properties",
            "purchase_properties",
            PURCHASE_PROPERTY_PREFIX,
        ),
    ] {
        if let Some(nested) = nested_properties(field, source_properties.get(key))? {
            merge_without_overwrite(&mut properties, field, &nested, prefix)?;
        }
    }

    Ok(properties)
}

/// Reads `custom_properties` or `purchase_properties`: an object, or a string holding a
/// JSON object. Absent or `null` gives `None`.
fn nested_properties(
    field: &'static str,
    value: Option<&Value>,
) -> Result<Option<Map<String, Value>>, CurrentsError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(object)) => Ok(Some(object.clone())),
        Some(Value::String(encoded)) => match serde_json::from_str::<Value>(encoded) {
            Ok(Value::Object(object)) => Ok(Some(object)),
            _ => Err(invalid_field(
                field,
                &Value::from(encoded.as_str()),
                "expected a JSON object or a string holding one",
            )),
        },
        Some(other) => Err(invalid_field(
            field,
            other,
            "expected a JSON object or a string holding one",
        )),
    }
}

/// Adds each key of `nested` to `properties` under `prefix + key`, as Braze's Mixpanel export
/// names custom event and purchase properties. A prefixed key that already exists is a
/// collision, so no value is silently replaced.
fn merge_without_overwrite(
    properties: &mut Map<String, Value>,
    field: &'static str,
    nested: &Map<String, Value>,
    prefix: &str,
) -> Result<(), CurrentsError> {
    for (key, value) in nested {
        let renamed = format!("{prefix}{key}");
        if properties.contains_key(&renamed) {
            return Err(CurrentsError::PropertyCollision {
                field,
                key: key.clone(),
                renamed,
            });
        }
        properties.insert(renamed, value.clone());
    }
    Ok(())
}

/// Derives the insert ID from the event type and the Currents `id`: the first 32 hex digits of
/// SHA-256 over both, which fits Mixpanel's `$insert_id` rule (at most 36 letters, digits and
/// `-`).
fn insert_id_for(event_type: &str, currents_id: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update((event_type.len() as u64).to_be_bytes());
    hasher.update(event_type.as_bytes());
    hasher.update(currents_id.as_bytes());
    hex::encode(&hasher.finalize()[..HASHED_INSERT_ID_LEN / 2])
}

fn invalid_field(field: &'static str, value: &Value, reason: &'static str) -> CurrentsError {
    CurrentsError::InvalidField {
        field,
        value: describe_value(value),
        reason,
    }
}

/// Renders a value as compact JSON for an error message, cut to
/// [`MAX_ERROR_VALUE_CHARS`] characters so that a huge payload cannot flood the logs.
fn describe_value(value: &Value) -> String {
    let rendered = value.to_string();
    if rendered.chars().count() <= MAX_ERROR_VALUE_CHARS {
        return rendered;
    }
    let mut shortened: String = rendered.chars().take(MAX_ERROR_VALUE_CHARS - 1).collect();
    shortened.push('…');
    shortened
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashSet;

    /// Builds a minimal valid event of the given type.
    fn event_of_type(event_type: &str) -> Value {
        json!({
            "event_type": event_type,
            "id": "a1b2c3d4-0000-4000-8000-000000000001",
            "time": 1_700_000_000,
            "user": {"external_user_id": "user-42"},
            "properties": {"name": "Added To Cart"},
        })
    }

    fn map_ok(event: &Value) -> MappedEvent {
        match map_event(event) {
            Ok(mapped) => mapped,
            Err(error) => panic!("expected {event} to map, got error: {error}"),
        }
    }

    fn map_err(event: &Value) -> CurrentsError {
        match map_event(event) {
            Ok(mapped) => panic!("expected {event} to fail, got {mapped:?}"),
            Err(error) => error,
        }
    }

    fn with(mut event: Value, key: &str, value: Value) -> Value {
        event[key] = value;
        event
    }

    fn without(mut event: Value, key: &str) -> Value {
        event.as_object_mut().unwrap().remove(key);
        event
    }

    #[test]
    fn event_name_table_required_names() {
        let required = [
            ("users.messages.email.Send", "Email Send"),
            ("users.messages.email.Delivery", "Email Delivery"),
            ("users.messages.email.Open", "Email Open"),
            ("users.messages.email.Click", "Email Click"),
            ("users.messages.email.Bounce", "Email Bounce"),
            ("users.messages.email.SoftBounce", "Email Soft Bounce"),
            ("users.messages.email.MarkAsSpam", "Email Mark As Spam"),
            ("users.messages.email.Unsubscribe", "Email Unsubscribe"),
            (
                "users.messages.pushnotification.Send",
                "Push Notification Send",
            ),
            (
                "users.messages.pushnotification.Open",
                "Push Notification Open",
            ),
            (
                "users.messages.pushnotification.IosForeground",
                "Push Notification iOS Foreground Open",
            ),
            (
                "users.messages.pushnotification.Bounce",
                "Push Notification Bounce",
            ),
            (
                "users.messages.inappmessage.Impression",
                "In-App Message Impression",
            ),
            ("users.messages.inappmessage.Click", "In-App Message Click"),
            ("users.messages.contentcard.Send", "Content Card Send"),
            (
                "users.messages.contentcard.Impression",
                "Content Card Impression",
            ),
            ("users.messages.contentcard.Click", "Content Card Click"),
            ("users.messages.contentcard.Dismiss", "Content Card Dismiss"),
            ("users.messages.sms.Send", "SMS Send"),
            ("users.messages.sms.CarrierSend", "SMS Send To Carrier"),
            ("users.messages.sms.Delivery", "SMS Delivery"),
            ("users.messages.sms.DeliveryFailure", "SMS Delivery Failure"),
            ("users.messages.sms.Rejection", "SMS Rejection"),
            ("users.messages.sms.InboundReceive", "SMS Inbound Receipt"),
            ("users.messages.webhook.Send", "Webhook Send"),
            ("users.canvas.Entry", "Canvas Entry"),
            ("users.canvas.Conversion", "Canvas Conversion Event"),
            ("users.campaigns.Conversion", "Campaign Conversion Event"),
            (
                "users.campaigns.EnrollInControl",
                "Campaign Control Group Enrollment",
            ),
            (
                "users.behaviors.subscriptiongroup.StateChange",
                "Subscription Group State Change",
            ),
            ("users.behaviors.Purchase", "Purchase"),
            ("users.behaviors.app.FirstSession", "First Session"),
            ("users.behaviors.app.SessionStart", "Session Start"),
            ("users.behaviors.app.SessionEnd", "Session End"),
            ("users.behaviors.Location", "Location"),
            ("users.behaviors.InstallAttribution", "Install Attribution"),
            ("users.behaviors.Uninstall", "Uninstall"),
        ];
        for (event_type, expected) in required {
            assert_eq!(
                mixpanel_event_name(event_type),
                Some(expected),
                "name for {event_type}"
            );
        }
    }

    #[test]
    fn event_name_table_every_entry_maps() {
        for (event_type, expected) in EVENT_NAMES {
            let mapped = map_ok(&event_of_type(event_type));
            assert_eq!(mapped.name, *expected, "mapped name for {event_type}");
            assert_eq!(
                mapped.properties[EVENT_TYPE_KEY], *event_type,
                "braze_event_type for {event_type}"
            );
        }
    }

    #[test]
    fn event_name_table_types_unique() {
        let mut seen = HashSet::new();
        for (event_type, _) in EVENT_NAMES {
            assert!(seen.insert(*event_type), "{event_type} is listed twice");
        }
    }

    #[test]
    fn event_name_table_names_unique() {
        let mut seen = HashSet::new();
        for (_, name) in EVENT_NAMES {
            assert!(seen.insert(*name), "{name} is used by two types");
        }
    }

    #[test]
    fn event_name_table_excludes_custom_event() {
        assert_eq!(mixpanel_event_name(CUSTOM_EVENT_TYPE), None);
    }

    #[test]
    fn event_name_unknown_type_none() {
        assert_eq!(mixpanel_event_name("users.messages.pigeon.Send"), None);
        assert_eq!(mixpanel_event_name("users.messages.email.send"), None);
        assert_eq!(mixpanel_event_name(""), None);
    }

    #[test]
    fn mtu_exempt_list_exact() {
        let expected = [
            "Canvas Entry",
            "Email Send",
            "Email Delivery",
            "Email Bounce",
            "Email Soft Bounce",
            "Email Mark As Spam",
            "Email Unsubscribe",
            "Push Notification Send",
            "Push Notification Bounce",
            "Webhook Send",
            "SMS Send",
            "SMS Delivery",
            "SMS Delivery Failure",
            "SMS Rejection",
            "SMS Send To Carrier",
        ];
        assert_eq!(MTU_EXEMPT_EVENT_NAMES, expected.as_slice());
    }

    #[test]
    fn mtu_exempt_membership() {
        assert!(is_mtu_exempt("Email Send"));
        assert!(is_mtu_exempt("Canvas Entry"));
        assert!(!is_mtu_exempt("Email Open"));
        assert!(!is_mtu_exempt("Email Click"));
        assert!(!is_mtu_exempt("Push Notification Open"));
        assert!(!is_mtu_exempt("Purchase"));
        assert!(!is_mtu_exempt(""));
    }

    #[test]
    fn mtu_exempt_both_carrier_spellings() {
        assert!(is_mtu_exempt("SMS Send To Carrier"));
        assert!(is_mtu_exempt("SMS Send to Carrier"));
        assert!(is_mtu_exempt("sms send to carrier"));
    }

    #[test]
    fn mtu_exempt_names_come_from_table() {
        let table_names: HashSet<&str> = EVENT_NAMES.iter().map(|(_, name)| *name).collect();
        for exempt in MTU_EXEMPT_EVENT_NAMES {
            assert!(
                table_names.contains(exempt),
                "{exempt} is exempt but no event type maps to it"
            );
        }
    }

    #[test]
    fn time_integer_seconds_to_ms() {
        let mapped = map_ok(&event_of_type("users.messages.email.Send"));
        assert_eq!(mapped.time_ms, 1_700_000_000_000);
    }

    #[test]
    fn time_zero_accepted() {
        let event = with(event_of_type("users.canvas.Entry"), "time", json!(0));
        assert_eq!(map_ok(&event).time_ms, 0);
    }

    #[test]
    fn time_float_seconds_to_ms() {
        let event = with(
            event_of_type("users.canvas.Entry"),
            "time",
            json!(1_700_000_000.5),
        );
        assert_eq!(map_ok(&event).time_ms, 1_700_000_000_500);
    }

    #[test]
    fn time_float_rounds_to_nearest_ms() {
        let event = with(
            event_of_type("users.canvas.Entry"),
            "time",
            json!(1_700_000_000.123),
        );
        assert_eq!(map_ok(&event).time_ms, 1_700_000_000_123);
    }

    #[test]
    fn time_missing_rejected() {
        let error = map_err(&without(event_of_type("users.canvas.Entry"), "time"));
        assert_eq!(error, CurrentsError::MissingField { field: "time" });
        assert!(error.to_string().contains("`time`"), "{error}");
    }

    #[test]
    fn time_null_rejected() {
        let error = map_err(&with(
            event_of_type("users.canvas.Entry"),
            "time",
            Value::Null,
        ));
        assert_eq!(error, CurrentsError::MissingField { field: "time" });
    }

    #[test]
    fn time_invalid_values_rejected() {
        let cases = [
            (json!("1700000000"), "\"1700000000\""),
            (json!(true), "true"),
            (json!(-1), "-1"),
            (json!(-0.5), "-0.5"),
            (json!(u64::MAX), "18446744073709551615"),
            (json!(9_223_372_036_854_776u64), "9223372036854776"),
            (json!(1e300), "1e+300"),
        ];
        for (time, rendered) in cases {
            let error = map_err(&with(event_of_type("users.canvas.Entry"), "time", time));
            match &error {
                CurrentsError::InvalidField { field, value, .. } => {
                    assert_eq!(*field, "time");
                    assert_eq!(value, rendered);
                }
                other => panic!("expected InvalidField for time {rendered}, got {other:?}"),
            }
            let message = error.to_string();
            assert!(message.contains("`time`"), "{message}");
            assert!(message.contains(rendered), "{message}");
        }
    }

    #[test]
    fn time_largest_integer_accepted() {
        let largest = i64::MAX / 1000;
        let event = with(event_of_type("users.canvas.Entry"), "time", json!(largest));
        assert_eq!(map_ok(&event).time_ms, largest * 1000);
    }

    #[test]
    fn insert_id_is_32_hex_digits() {
        for id in [
            "a1b2c3d4-0000-4000-8000-000000000001",
            "abc_def",
            "idé",
            &"a".repeat(80),
        ] {
            let insert_id = insert_id_for("users.canvas.Entry", id);
            assert_eq!(insert_id.len(), 32, "insert ID for {id:?}");
            assert!(
                insert_id.bytes().all(|byte| byte.is_ascii_hexdigit()),
                "insert ID for {id:?} is {insert_id}"
            );
        }
    }

    #[test]
    fn insert_id_hash_deterministic() {
        let id = "currents:event:0001:with-a-long-suffix-that-does-not-fit";
        let event = with(event_of_type("users.canvas.Entry"), "id", json!(id));
        assert_eq!(map_ok(&event).insert_id, map_ok(&event).insert_id);
    }

    #[test]
    fn insert_id_differs_per_id_and_type() {
        let first = insert_id_for("users.canvas.Entry", "currents_event_0001");
        let second = insert_id_for("users.canvas.Entry", "currents_event_0002");
        let other_type = insert_id_for("users.messages.email.Send", "currents_event_0001");
        assert_ne!(first, second);
        assert_ne!(first, other_type);
    }

    #[test]
    fn insert_id_fields_cannot_shift() {
        // The type's length is hashed too, so moving characters between the two fields
        // changes the key.
        assert_ne!(insert_id_for("ab", "c"), insert_id_for("a", "bc"));
    }

    #[test]
    fn id_missing_rejected() {
        let error = map_err(&without(event_of_type("users.canvas.Entry"), "id"));
        assert_eq!(error, CurrentsError::MissingField { field: "id" });
        assert!(error.to_string().contains("`id`"), "{error}");
    }

    #[test]
    fn id_empty_rejected() {
        let error = map_err(&with(event_of_type("users.canvas.Entry"), "id", json!("")));
        assert!(
            matches!(&error, CurrentsError::InvalidField { field: "id", value, .. } if value == "\"\""),
            "{error:?}"
        );
    }

    #[test]
    fn id_non_string_rejected() {
        let error = map_err(&with(
            event_of_type("users.canvas.Entry"),
            "id",
            json!(12345),
        ));
        assert!(
            matches!(&error, CurrentsError::InvalidField { field: "id", value, .. } if value == "12345"),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(message.contains("`id`"), "{message}");
        assert!(message.contains("12345"), "{message}");
    }

    #[test]
    fn event_type_missing_rejected() {
        let error = map_err(&without(event_of_type("users.canvas.Entry"), "event_type"));
        assert_eq!(
            error,
            CurrentsError::MissingField {
                field: "event_type"
            }
        );
    }

    #[test]
    fn event_type_non_string_rejected() {
        let error = map_err(&with(
            event_of_type("users.canvas.Entry"),
            "event_type",
            json!(7),
        ));
        assert!(
            matches!(&error, CurrentsError::InvalidField { field: "event_type", value, .. } if value == "7"),
            "{error:?}"
        );
    }

    #[test]
    fn event_type_unknown_keeps_raw_name() {
        let mapped = map_ok(&event_of_type("users.messages.pigeon.Send"));
        assert_eq!(mapped.name, "users.messages.pigeon.Send");
        assert_eq!(
            mapped.properties["braze_event_type"],
            "users.messages.pigeon.Send"
        );
        assert_eq!(mapped.properties["$partner_id"], "braze");
    }

    #[test]
    fn event_not_object_rejected() {
        let error = map_err(&json!(["users.canvas.Entry"]));
        assert!(
            matches!(&error, CurrentsError::InvalidField { field: "event", value, .. } if value == "[\"users.canvas.Entry\"]"),
            "{error:?}"
        );
    }

    #[test]
    fn external_user_id_missing_is_unattributed() {
        let cases = [
            without(event_of_type("users.canvas.Entry"), "user"),
            with(event_of_type("users.canvas.Entry"), "user", Value::Null),
            with(event_of_type("users.canvas.Entry"), "user", json!({})),
            with(
                event_of_type("users.canvas.Entry"),
                "user",
                json!({"external_user_id": null, "user_id": "braze-1"}),
            ),
            with(
                event_of_type("users.canvas.Entry"),
                "user",
                json!({"external_user_id": ""}),
            ),
        ];
        for event in cases {
            let mapped = map_ok(&event);
            assert_eq!(mapped.distinct_id, "", "for {event}");
            assert_eq!(mapped.name, "Canvas Entry", "for {event}");
        }
    }

    #[test]
    fn external_user_id_non_string_rejected() {
        let event = with(
            event_of_type("users.canvas.Entry"),
            "user",
            json!({"external_user_id": 42}),
        );
        let error = map_err(&event);
        assert!(
            matches!(&error, CurrentsError::InvalidField { field: "user.external_user_id", value, .. } if value == "42"),
            "{error:?}"
        );
    }

    #[test]
    fn user_non_object_rejected() {
        let event = with(
            event_of_type("users.canvas.Entry"),
            "user",
            json!("user-42"),
        );
        let error = map_err(&event);
        assert!(
            matches!(&error, CurrentsError::InvalidField { field: "user", value, .. } if value == "\"user-42\""),
            "{error:?}"
        );
    }

    #[test]
    fn properties_non_object_rejected() {
        let event = with(
            event_of_type("users.canvas.Entry"),
            "properties",
            json!([1, 2]),
        );
        let error = map_err(&event);
        assert!(
            matches!(&error, CurrentsError::InvalidField { field: "properties", value, .. } if value == "[1,2]"),
            "{error:?}"
        );
    }

    #[test]
    fn properties_absent_reads_empty() {
        let event = without(event_of_type("users.behaviors.Uninstall"), "properties");
        let mapped = map_ok(&event);
        assert_eq!(mapped.properties[PARTNER_ID_KEY], PARTNER_ID);
        assert_eq!(mapped.properties.len(), 2, "{:?}", mapped.properties);
    }

    #[test]
    fn email_send_maps_fields() {
        let event = json!({
            "event_type": "users.messages.email.Send",
            "id": "5f0c2a9e-7b1d-4c3e-9a8f-1e2d3c4b5a60",
            "time": 1_712_345_678,
            "user": {
                "user_id": "65a0b1c2d3e4f5a6b7c8d9e0",
                "external_user_id": "customer-981",
                "device_id": "device-7",
                "timezone": "Europe/Berlin",
            },
            "properties": {
                "campaign_id": "campaign-1",
                "campaign_name": "Spring sale",
                "dispatch_id": "dispatch-9",
                "email_address": "reader@example.org",
                "message_variation_id": "variation-3",
                "canvas_id": null,
            },
        });
        let mapped = map_ok(&event);
        assert_eq!(mapped.name, "Email Send");
        assert_eq!(mapped.distinct_id, "customer-981");
        assert_eq!(mapped.time_ms, 1_712_345_678_000);
        assert_eq!(
            mapped.insert_id,
            insert_id_for(
                "users.messages.email.Send",
                "5f0c2a9e-7b1d-4c3e-9a8f-1e2d3c4b5a60"
            )
        );
        let expected = json!({
            "campaign_id": "campaign-1",
            "campaign_name": "Spring sale",
            "dispatch_id": "dispatch-9",
            "email_address": "reader@example.org",
            "message_variation_id": "variation-3",
            "canvas_id": null,
            "braze_id": "65a0b1c2d3e4f5a6b7c8d9e0",
            "device_id": "device-7",
            "timezone": "Europe/Berlin",
            "$partner_id": "braze",
            "braze_event_type": "users.messages.email.Send",
        });
        assert_eq!(Value::Object(mapped.properties), expected);
    }

    #[test]
    fn user_null_fields_skipped() {
        let event = with(
            event_of_type("users.canvas.Entry"),
            "user",
            json!({"external_user_id": "user-42", "device_id": null, "timezone": null}),
        );
        let properties = map_ok(&event).properties;
        assert!(!properties.contains_key("device_id"));
        assert!(!properties.contains_key("timezone"));
        assert!(!properties.contains_key("braze_id"));
    }

    #[test]
    fn user_fields_replace_properties() {
        let event = json!({
            "event_type": "users.behaviors.Uninstall",
            "id": "evt-1",
            "time": 1,
            "user": {"external_user_id": "user-42", "device_id": "from-user"},
            "properties": {"device_id": "from-properties"},
        });
        assert_eq!(map_ok(&event).properties["device_id"], "from-user");
    }

    #[test]
    fn user_extra_keys_prefixed() {
        let event = with(
            event_of_type("users.canvas.Entry"),
            "user",
            json!({"external_user_id": "user-42", "alias": "vip"}),
        );
        let properties = map_ok(&event).properties;
        assert_eq!(properties["user_alias"], "vip");
        assert!(!properties.contains_key("alias"));
        assert!(!properties.contains_key("external_user_id"));
    }

    #[test]
    fn reserved_keys_replace_incoming() {
        let event = with(
            event_of_type("users.canvas.Entry"),
            "properties",
            json!({"$partner_id": "someone-else", "braze_event_type": "spoofed"}),
        );
        let properties = map_ok(&event).properties;
        assert_eq!(properties[PARTNER_ID_KEY], "braze");
        assert_eq!(properties[EVENT_TYPE_KEY], "users.canvas.Entry");
    }

    #[test]
    fn custom_event_uses_own_name() {
        let event = json!({
            "event_type": "users.behaviors.CustomEvent",
            "id": "evt-custom-1",
            "time": 1_700_000_100,
            "user": {"external_user_id": "user-42"},
            "properties": {
                "app_id": "app-1",
                "name": "Checkout Started",
                "platform": "ios",
                "custom_properties": {"cart_size": 3, "coupon": "SPRING"},
            },
        });
        let mapped = map_ok(&event);
        assert_eq!(mapped.name, "[Braze Custom Event] Checkout Started");
        assert_eq!(mapped.properties["name"], "Checkout Started");
        assert_eq!(mapped.properties["[Custom event property] cart_size"], 3);
        assert_eq!(
            mapped.properties["[Custom event property] coupon"],
            "SPRING"
        );
        assert!(!mapped.properties.contains_key("custom_properties"));
        assert!(!is_mtu_exempt(&mapped.name));
    }

    #[test]
    fn custom_event_name_missing_rejected() {
        let event = with(
            event_of_type(CUSTOM_EVENT_TYPE),
            "properties",
            json!({"platform": "ios"}),
        );
        let error = map_err(&event);
        assert_eq!(
            error,
            CurrentsError::MissingField {
                field: "properties.name"
            }
        );
        assert!(error.to_string().contains("properties.name"), "{error}");
    }

    #[test]
    fn custom_event_name_invalid_rejected() {
        for (name, rendered) in [(json!(""), "\"\""), (json!(["a"]), "[\"a\"]")] {
            let event = with(
                event_of_type(CUSTOM_EVENT_TYPE),
                "properties",
                json!({ "name": name }),
            );
            let error = map_err(&event);
            assert!(
                matches!(&error, CurrentsError::InvalidField { field: "properties.name", value, .. } if value == rendered),
                "{error:?}"
            );
        }
    }

    #[test]
    fn custom_properties_json_string_merged() {
        let event = with(
            event_of_type(CUSTOM_EVENT_TYPE),
            "properties",
            json!({"name": "Level Up", "custom_properties": "{\"level\":7}"}),
        );
        let from_string = map_ok(&event);
        assert_eq!(from_string.properties["[Custom event property] level"], 7);
        let as_object = with(
            event_of_type(CUSTOM_EVENT_TYPE),
            "properties",
            json!({"name": "Level Up", "custom_properties": {"level": 7}}),
        );
        assert_eq!(
            map_ok(&as_object),
            from_string,
            "the string and object forms agree"
        );
    }

    #[test]
    fn custom_properties_null_skipped() {
        let event = with(
            event_of_type(CUSTOM_EVENT_TYPE),
            "properties",
            json!({"name": "Level Up", "custom_properties": null}),
        );
        let properties = map_ok(&event).properties;
        assert!(!properties.contains_key("custom_properties"));
    }

    #[test]
    fn custom_properties_invalid_rejected() {
        for (custom, rendered) in [
            (json!([1]), "[1]"),
            (json!(5), "5"),
            (json!("not json"), "\"not json\""),
            (json!("[1,2]"), "\"[1,2]\""),
        ] {
            let event = with(
                event_of_type(CUSTOM_EVENT_TYPE),
                "properties",
                json!({"name": "Level Up", "custom_properties": custom}),
            );
            let error = map_err(&event);
            assert!(
                matches!(&error, CurrentsError::InvalidField { field: "properties.custom_properties", value, .. } if value == rendered),
                "{error:?}"
            );
        }
    }

    #[test]
    fn purchase_properties_merged() {
        let event = json!({
            "event_type": "users.behaviors.Purchase",
            "id": "evt-purchase-1",
            "time": 1_700_000_200,
            "user": {"external_user_id": "user-42", "user_id": "braze-42"},
            "properties": {
                "product_id": "sku-1",
                "price": 9.99,
                "currency": "EUR",
                "purchase_properties": {"color": "red", "gift": true, "sizes": ["S", "M"]},
            },
        });
        let mapped = map_ok(&event);
        assert_eq!(mapped.name, "Purchase");
        assert_eq!(mapped.properties["product_id"], "sku-1");
        assert_eq!(mapped.properties["price"], 9.99);
        assert_eq!(mapped.properties["currency"], "EUR");
        assert_eq!(mapped.properties["[Purchase property] color"], "red");
        assert_eq!(mapped.properties["[Purchase property] gift"], true);
        assert_eq!(
            mapped.properties["[Purchase property] sizes"],
            json!(["S", "M"])
        );
        assert!(!mapped.properties.contains_key("purchase_properties"));
    }

    #[test]
    fn prefixes_keep_standard_values() {
        let event = json!({
            "event_type": "users.behaviors.Purchase",
            "id": "evt-purchase-2",
            "time": 1_700_000_300,
            "user": {"external_user_id": "user-42", "timezone": "UTC"},
            "properties": {
                "price": 5,
                "platform": "android",
                "purchase_properties": {
                    "price": "five",
                    "timezone": "custom-zone",
                    "$partner_id": "shop",
                    "note": "kept",
                },
            },
        });
        let properties = map_ok(&event).properties;
        assert_eq!(properties["price"], 5);
        assert_eq!(properties["[Purchase property] price"], "five");
        assert_eq!(properties["timezone"], "UTC");
        assert_eq!(properties["[Purchase property] timezone"], "custom-zone");
        assert_eq!(properties["$partner_id"], "braze");
        assert_eq!(properties["[Purchase property] $partner_id"], "shop");
        assert_eq!(properties["[Purchase property] note"], "kept");
    }

    #[test]
    fn collision_custom_prefix_used() {
        let event = with(
            event_of_type(CUSTOM_EVENT_TYPE),
            "properties",
            json!({"name": "Shared", "platform": "web", "custom_properties": {"platform": "tv"}}),
        );
        let properties = map_ok(&event).properties;
        assert_eq!(properties["platform"], "web");
        assert_eq!(properties["[Custom event property] platform"], "tv");
    }

    #[test]
    fn custom_and_purchase_prefixes_differ() {
        let event = with(
            event_of_type(CUSTOM_EVENT_TYPE),
            "properties",
            json!({
                "name": "Both",
                "custom_properties": {"color": "blue"},
                "purchase_properties": {"color": "green"},
            }),
        );
        let properties = map_ok(&event).properties;
        assert_eq!(properties["[Custom event property] color"], "blue");
        assert_eq!(properties["[Purchase property] color"], "green");
    }

    #[test]
    fn collision_twice_rejected() {
        let event = with(
            event_of_type(CUSTOM_EVENT_TYPE),
            "properties",
            json!({
                "name": "Clash",
                "platform": "web",
                "[Custom event property] platform": "already here",
                "custom_properties": {"platform": "tv"},
            }),
        );
        let error = map_err(&event);
        assert_eq!(
            error,
            CurrentsError::PropertyCollision {
                field: "properties.custom_properties",
                key: "platform".to_owned(),
                renamed: "[Custom event property] platform".to_owned(),
            }
        );
        let message = error.to_string();
        assert!(
            message.contains("properties.custom_properties"),
            "{message}"
        );
        assert!(message.contains("platform"), "{message}");
    }

    #[test]
    fn collision_user_extra_rejected() {
        let event = json!({
            "event_type": "users.canvas.Entry",
            "id": "evt-2",
            "time": 1,
            "user": {"external_user_id": "user-42", "alias": "vip"},
            "properties": {"user_alias": "taken"},
        });
        let error = map_err(&event);
        assert_eq!(
            error,
            CurrentsError::PropertyCollision {
                field: "user",
                key: "alias".to_owned(),
                renamed: "user_alias".to_owned(),
            }
        );
    }

    #[test]
    fn error_value_shortened() {
        let huge = "x".repeat(1000);
        let error = map_err(&with(
            event_of_type("users.canvas.Entry"),
            "time",
            json!(huge),
        ));
        let CurrentsError::InvalidField { value, .. } = &error else {
            panic!("expected InvalidField, got {error:?}");
        };
        assert_eq!(value.chars().count(), MAX_ERROR_VALUE_CHARS);
        assert!(value.starts_with("\"xxx"), "{value}");
        assert!(value.ends_with('…'), "{value}");
    }

    #[test]
    fn error_messages_name_field_and_value() {
        let cases: Vec<(CurrentsError, &[&str])> = vec![
            (CurrentsError::MissingField { field: "time" }, &["`time`"]),
            (
                CurrentsError::InvalidField {
                    field: "time",
                    value: "-1".to_owned(),
                    reason: "must not be negative",
                },
                &["`time`", "-1", "must not be negative"],
            ),
            (
                CurrentsError::PropertyCollision {
                    field: "user",
                    key: "alias".to_owned(),
                    renamed: "user_alias".to_owned(),
                },
                &["`user`", "alias", "user_alias"],
            ),
        ];
        for (error, fragments) in cases {
            let message = error.to_string();
            for fragment in fragments {
                assert!(message.contains(fragment), "{message:?} lacks {fragment:?}");
            }
        }
    }
}
