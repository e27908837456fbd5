//! Monthly Tracked Users: the distinct users with at least one qualifying event in a calendar
//! month of the project's time zone, with the figures an auditor needs to check it.
//!
//! An event does not qualify when its name is on the never-qualifying list (Mixpanel's
//! identity, opt-in, session-replay and messaging events). It does not qualify either when it
//! carries a `$partner_id` and its name is on the partner outreach list (Braze's sends,
//! deliveries, bounces and Canvas entries). Both lists are configuration. Names compare without
//! regard to case, and an entry ending in `*` matches every name with that prefix. Events of the empty distinct id
//! belong to no user and never make one count.

use std::collections::{BTreeMap, HashSet};

use chrono::{Datelike, NaiveDate, TimeZone};
use serde::Serialize;

use crate::braze::currents::MTU_EXEMPT_EVENT_NAMES;
use crate::identity;
use crate::store::{MtuKey, MtuMonth, Store, StoreError};

/// Mixpanel's events that never count towards MTU, from any sender.
pub const DEFAULT_NEVER_QUALIFYING: &[&str] = &[
    "$identify",
    "$create_alias",
    "$merge",
    "$opt_in",
    "$mp_session_record",
    "$campaign_*",
    "$message_*",
];

/// The rules that exempt events from MTU.
#[derive(Debug, Clone, Serialize)]
pub struct ExemptionRules {
    pub never_qualifying: Vec<String>,
    /// Names that do not qualify when the event carries a `$partner_id`.
    pub partner_outreach: Vec<String>,
}

impl Default for ExemptionRules {
    fn default() -> Self {
        Self {
            never_qualifying: DEFAULT_NEVER_QUALIFYING
                .iter()
                .map(|s| s.to_string())
                .collect(),
            partner_outreach: MTU_EXEMPT_EVENT_NAMES
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }
}

impl ExemptionRules {
    /// Returns the reason an event does not qualify, or `None` when it does.
    pub fn exemption(&self, event: &str, partner_id: Option<&str>) -> Option<String> {
        if let Some(rule) = self
            .never_qualifying
            .iter()
            .find(|rule| name_matches(rule, event))
        {
            return Some(format!("{event:?} never counts (rule {rule:?})"));
        }
        let partner = partner_id.filter(|p| !p.is_empty())?;
        let rule = self
            .partner_outreach
            .iter()
            .find(|rule| name_matches(rule, event))?;
        Some(format!(
            "{event:?} from partner {partner:?} is outreach (rule {rule:?})"
        ))
    }
}

/// Compares a rule with an event name without regard to ASCII case; `prefix*` matches a prefix.
fn name_matches(rule: &str, event: &str) -> bool {
    match rule.strip_suffix('*') {
        // Compared as bytes, because the prefix's length may end inside a character of the name.
        Some(prefix) => event
            .as_bytes()
            .get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes())),
        None => rule.eq_ignore_ascii_case(event),
    }
}

/// The ingestion path of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// `/track` and `/engage` from SDKs.
    Sdk,
    /// `/import`.
    Import,
    /// Events marked with Braze's `$partner_id`.
    Braze,
}

impl Source {
    fn of(key: &MtuKey) -> Self {
        match key.partner_id.as_deref() {
            Some(p) if p.eq_ignore_ascii_case(crate::braze::currents::PARTNER_ID) => Source::Braze,
            _ if key.imported => Source::Import,
            _ => Source::Sdk,
        }
    }
}

/// Counted and exempt events of one source.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct SourceCounts {
    pub counted_events: i64,
    pub exempt_events: i64,
}

/// The MTU figures of one month.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct MtuReport {
    pub month: String,
    /// Users with at least one qualifying event: the MTU figure.
    pub users: usize,
    /// Users seen in the month only through exempt events.
    pub exempt_only_users: usize,
    /// Every event of the month, the unattributed ones included.
    pub total_events: i64,
    /// Events of the empty distinct id, which belong to no user.
    pub unattributed_events: i64,
    /// Mixpanel's guardrail: when users average more than 1000 events, the billable figure is
    /// the event count divided by 1000 instead of the user count.
    pub guardrail_applies: bool,
    pub billable_users: i64,
    pub by_source: BTreeMap<Source, SourceCounts>,
}

/// The explanation of whether one user counts in a month.
#[derive(Debug, Serialize)]
pub struct MtuExplanation {
    pub month: String,
    pub distinct_id: String,
    pub canonical_id: String,
    pub counted: bool,
    pub events: Vec<ExplainedEvents>,
}

#[derive(Debug, Serialize)]
pub struct ExplainedEvents {
    pub event: String,
    pub source: Source,
    pub count: i64,
    /// `None` when the events qualify.
    pub exempt_because: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum MtuError {
    #[error("month {0:?} is not a calendar month; expected YYYY-MM, for example 2026-11")]
    InvalidMonth(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Returns the first instant of `month` (`YYYY-MM`) and of the month after, in epoch
/// milliseconds, with months starting at local midnight in `zone`.
pub fn month_bounds(month: &str, zone: chrono_tz::Tz) -> Result<(i64, i64), MtuError> {
    let invalid = || MtuError::InvalidMonth(month.to_owned());
    let (year, number) = month.split_once('-').ok_or_else(invalid)?;
    let all_digits = |text: &str| text.bytes().all(|b| b.is_ascii_digit());
    if year.len() != 4 || number.len() != 2 || !all_digits(year) || !all_digits(number) {
        return Err(invalid());
    }
    let year: i32 = year.parse().map_err(|_| invalid())?;
    let number: u32 = number.parse().map_err(|_| invalid())?;
    let start = NaiveDate::from_ymd_opt(year, number, 1).ok_or_else(invalid)?;
    let end = if start.month() == 12 {
        NaiveDate::from_ymd_opt(year + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(year, number + 1, 1)
    }
    .ok_or_else(invalid)?;
    // Where a clock change skips midnight, the month starts at the first local instant after it.
    let millis = |date: NaiveDate| {
        let midnight = date.and_hms_opt(0, 0, 0).expect("midnight exists");
        let local = zone
            .from_local_datetime(&midnight)
            .earliest()
            .or_else(|| {
                zone.from_local_datetime(&(midnight + chrono::Duration::hours(1)))
                    .earliest()
            })
            .expect("a local time exists within an hour of midnight");
        local.timestamp_millis()
    };
    Ok((millis(start), millis(end)))
}

/// Returns `month` (`YYYY-MM`) as the rollup writes it, `YYYY * 100 + MM`.
pub fn month_key(month: &str) -> Result<i64, MtuError> {
    // Validates the month the same way as the bounds do.
    month_bounds(month, chrono_tz::UTC)?;
    let (year, number) = month.split_once('-').expect("validated above");
    let number: i64 = number.parse().expect("validated above");
    Ok(year.parse::<i64>().expect("validated above") * 100 + number)
}

/// Computes the report of `month`.
pub async fn monthly_tracked_users(
    store: &dyn Store,
    project_id: i64,
    month: &str,
    rules: &ExemptionRules,
) -> Result<MtuReport, MtuError> {
    let rollup = store.mtu_month(project_id, month_key(month)?, None).await?;
    Ok(build_report(month, &rollup, rules))
}

fn build_report(month: &str, rollup: &MtuMonth, rules: &ExemptionRules) -> MtuReport {
    // Each key is classified once, however many users it has.
    let keys: Vec<(Source, bool)> = rollup
        .keys
        .iter()
        .map(|key| {
            let exempt = rules
                .exemption(&key.event, key.partner_id.as_deref())
                .is_some();
            (Source::of(key), exempt)
        })
        .collect();
    let mut counted_users = HashSet::new();
    let mut seen_users = HashSet::new();
    let mut by_source: BTreeMap<Source, SourceCounts> = BTreeMap::new();
    let (mut total_events, mut unattributed_events) = (0, 0);
    for cell in &rollup.cells {
        let (source, exempt) = keys[cell.key as usize];
        total_events += cell.events;
        let counts = by_source.entry(source).or_default();
        if exempt {
            counts.exempt_events += cell.events;
        } else {
            counts.counted_events += cell.events;
        }
        let Some(user) = cell.user else {
            unattributed_events += cell.events;
            continue;
        };
        if !exempt {
            counted_users.insert(user);
        }
        seen_users.insert(user);
    }
    let users = counted_users.len();
    let guardrail_applies = users > 0 && total_events > 1000 * users as i64;
    let billable_users = if guardrail_applies {
        total_events / 1000
    } else {
        users as i64
    };
    MtuReport {
        month: month.to_owned(),
        users,
        exempt_only_users: seen_users.len() - users,
        total_events,
        unattributed_events,
        guardrail_applies,
        billable_users,
        by_source,
    }
}

/// Explains why the user of `distinct_id` counts or not in `month`.
pub async fn explain(
    store: &dyn Store,
    project_id: i64,
    month: &str,
    distinct_id: &str,
    rules: &ExemptionRules,
) -> Result<MtuExplanation, MtuError> {
    let month_key = month_key(month)?;
    let links = store.identity_links(project_id).await?;
    let canonical = identity::canonical(&links, distinct_id).to_owned();
    let mut cluster: Vec<String> = links
        .iter()
        .filter(|(_, to)| **to == canonical)
        .map(|(from, _)| from.clone())
        .collect();
    cluster.push(canonical.clone());
    let rollup = store
        .mtu_month(project_id, month_key, Some(cluster))
        .await?;

    let mut merged: BTreeMap<(String, Source, Option<String>), i64> = BTreeMap::new();
    for cell in &rollup.cells {
        let key = &rollup.keys[cell.key as usize];
        let reason = if canonical.is_empty() {
            Some("the empty distinct id belongs to no user".to_owned())
        } else {
            rules.exemption(&key.event, key.partner_id.as_deref())
        };
        *merged
            .entry((key.event.clone(), Source::of(key), reason))
            .or_insert(0) += cell.events;
    }
    let events: Vec<ExplainedEvents> = merged
        .into_iter()
        .map(|((event, source, exempt_because), count)| ExplainedEvents {
            event,
            source,
            count,
            exempt_because,
        })
        .collect();
    let counted = !canonical.is_empty() && events.iter().any(|e| e.exempt_because.is_none());
    Ok(MtuExplanation {
        month: month.to_owned(),
        distinct_id: distinct_id.to_owned(),
        canonical_id: canonical,
        counted,
        events,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::store::MtuEventGroup;

    fn group(
        distinct_id: &str,
        event: &str,
        partner: Option<&str>,
        imported: bool,
        count: i64,
    ) -> MtuEventGroup {
        MtuEventGroup {
            distinct_id: distinct_id.into(),
            event: event.into(),
            partner_id: partner.map(str::to_owned),
            imported,
            count,
        }
    }

    #[test]
    fn month_bounds_cover_the_month() {
        let (start, end) = month_bounds("2026-11", chrono_tz::UTC).unwrap();
        assert_eq!(start, 1_793_491_200_000);
        assert_eq!(end - start, 30 * 86_400_000);
        let (start, end) = month_bounds("2026-12", chrono_tz::UTC).unwrap();
        assert_eq!(end - start, 31 * 86_400_000);
    }

    #[test]
    fn month_bounds_follow_the_time_zone() {
        // Berlin is UTC+1 on 1 November 2026 and leaves summer time on 25 October.
        let (start, end) = month_bounds("2026-11", chrono_tz::Europe::Berlin).unwrap();
        assert_eq!(start, 1_793_491_200_000 - 3_600_000);
        assert_eq!(end - start, 30 * 86_400_000);
        // October 2026 in Berlin has one 25-hour day.
        let (start, end) = month_bounds("2026-10", chrono_tz::Europe::Berlin).unwrap();
        assert_eq!(end - start, 31 * 86_400_000 + 3_600_000);
    }

    #[test]
    fn invalid_months_are_rejected() {
        for month in [
            "2026-13", "2026-1", "26-11", "2026/11", "november", "2026-+1", "+202-11",
        ] {
            assert!(
                matches!(
                    month_bounds(month, chrono_tz::UTC),
                    Err(MtuError::InvalidMonth(_))
                ),
                "{month}"
            );
        }
    }

    #[test]
    fn carrier_send_exempt_both_spellings() {
        let rules = ExemptionRules::default();
        assert!(rules
            .exemption("SMS Send to Carrier", Some("braze"))
            .is_some());
        assert!(rules
            .exemption("SMS Send To Carrier", Some("braze"))
            .is_some());
        assert!(rules.exemption("Email Open", Some("braze")).is_none());
    }

    #[test]
    fn outreach_needs_a_partner_id() {
        let rules = ExemptionRules::default();
        assert!(rules.exemption("Canvas Entry", Some("braze")).is_some());
        assert!(rules.exemption("Canvas Entry", None).is_none());
        assert!(rules.exemption("Canvas Entry", Some("")).is_none());
    }

    #[test]
    fn prefix_rules_match_campaign_events() {
        let rules = ExemptionRules::default();
        assert!(rules.exemption("$campaign_delivery", None).is_some());
        assert!(rules.exemption("$CAMPAIGN_open", None).is_some());
        assert!(rules.exemption("$message_suppressed", None).is_some());
        assert!(rules.exemption("campaign", None).is_none());
        assert!(rules
            .exemption("$identify", None)
            .unwrap()
            .contains("never counts"));
    }

    #[test]
    fn prefix_rules_accept_multibyte_names() {
        let rules = ExemptionRules::default();
        // `$message_` is 9 bytes and `$campaign_` 10; these names have a character that
        // spans those offsets.
        for name in ["購入完了", "Ouvrir réglé", "$messagé", "é"] {
            assert!(rules.exemption(name, None).is_none(), "{name}");
            assert!(rules.exemption(name, Some("braze")).is_none(), "{name}");
        }
        assert!(rules.exemption("$message_送信", None).is_some());
    }

    #[test]
    fn report_counts_users_sources_and_exempt_only() {
        let groups = vec![
            group("u1", "Email Send", Some("braze"), false, 3),
            group("u1", "Email Open", Some("braze"), false, 1),
            group("u2", "Email Send", Some("braze"), false, 2),
            group("$device:d3", "Viewed", None, false, 5),
            group("u3", "Viewed", None, true, 4),
            group("", "Viewed", None, false, 7),
        ];
        let links = HashMap::from([("$device:d3".to_owned(), "u3".to_owned())]);
        let rollup = MtuMonth::from_groups(groups, &links);
        let report = build_report("2026-11", &rollup, &ExemptionRules::default());
        assert_eq!(
            report.users, 2,
            "u1 opened, u3 viewed (through the merged device)"
        );
        assert_eq!(report.exempt_only_users, 1, "u2 only received sends");
        assert_eq!(report.total_events, 22);
        assert_eq!(report.unattributed_events, 7);
        assert!(!report.guardrail_applies);
        assert_eq!(report.billable_users, 2);
        assert_eq!(
            report.by_source[&Source::Braze],
            SourceCounts {
                counted_events: 1,
                exempt_events: 5
            }
        );
        assert_eq!(
            report.by_source[&Source::Import],
            SourceCounts {
                counted_events: 4,
                exempt_events: 0
            }
        );
        assert_eq!(
            report.by_source[&Source::Sdk],
            SourceCounts {
                counted_events: 12,
                exempt_events: 0
            }
        );
    }

    #[test]
    fn guardrail_applies_above_1000_events_per_user() {
        let report = build_report(
            "2026-11",
            &MtuMonth::from_groups(vec![group("u1", "E", None, false, 2500)], &HashMap::new()),
            &ExemptionRules::default(),
        );
        assert!(report.guardrail_applies);
        assert_eq!(report.billable_users, 2);
        let report = build_report(
            "2026-11",
            &MtuMonth::from_groups(vec![group("u1", "E", None, false, 1000)], &HashMap::new()),
            &ExemptionRules::default(),
        );
        assert!(!report.guardrail_applies);
        assert_eq!(report.billable_users, 1);
    }
}
