//! Monthly Tracked Users: the distinct users with at least one qualifying event in a calendar
//! month (UTC).
//!
//! Braze outreach events (those carrying `$partner_id` and named in the exempt list) do not
//! qualify, so a user reached by Braze but not active is not counted. Identity-management events
//! never qualify, and events of the empty distinct id belong to no user.

use std::collections::BTreeSet;

use chrono::{Datelike, NaiveDate};
use serde::Serialize;

use crate::braze::currents::MTU_EXEMPT_EVENT_NAMES;
use crate::identity;
use crate::store::{Store, StoreError};

/// Events that never count towards MTU, from any sender.
pub const IDENTITY_EVENTS: &[&str] = &["$identify", "$create_alias", "$merge"];

/// The MTU figure of one month.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct MtuReport {
    pub month: String,
    pub users: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum MtuError {
    #[error("month {0:?} is not a calendar month; expected YYYY-MM, for example 2026-11")]
    InvalidMonth(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Returns the first instant of `month` (`YYYY-MM`) and of the month after, in epoch milliseconds.
pub fn month_bounds(month: &str) -> Result<(i64, i64), MtuError> {
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
    let millis = |date: NaiveDate| {
        date.and_hms_opt(0, 0, 0)
            .expect("midnight exists")
            .and_utc()
            .timestamp_millis()
    };
    Ok((millis(start), millis(end)))
}

pub async fn monthly_tracked_users(
    store: &dyn Store,
    project_id: i64,
    month: &str,
) -> Result<MtuReport, MtuError> {
    let (start, end) = month_bounds(month)?;
    // The store compares exempt names without regard to case, so Mixpanel's "SMS Send to
    // Carrier" and Braze's "SMS Send To Carrier" are both exempt.
    let distinct_ids = store
        .mtu_distinct_ids(
            project_id,
            start,
            end,
            MTU_EXEMPT_EVENT_NAMES,
            IDENTITY_EVENTS,
        )
        .await?;
    let links = store.cohort_inputs(project_id).await?.links;
    let users: BTreeSet<&str> = distinct_ids
        .iter()
        .map(|id| identity::canonical(&links, id))
        .collect();
    Ok(MtuReport {
        month: month.to_owned(),
        users: users.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn month_bounds_cover_the_month() {
        let (start, end) = month_bounds("2026-11").unwrap();
        assert_eq!(start, 1_793_491_200_000);
        assert_eq!(end - start, 30 * 86_400_000);
        let (start, end) = month_bounds("2026-12").unwrap();
        assert_eq!(end - start, 31 * 86_400_000);
    }

    #[test]
    fn invalid_months_are_rejected() {
        for month in [
            "2026-13", "2026-1", "26-11", "2026/11", "november", "2026-+1", "+202-11",
        ] {
            assert!(
                matches!(month_bounds(month), Err(MtuError::InvalidMonth(_))),
                "{month}"
            );
        }
    }

    #[test]
    fn sms_send_to_carrier_is_exempt_in_both_spellings() {
        assert!(crate::braze::currents::is_mtu_exempt("SMS Send to Carrier"));
        assert!(crate::braze::currents::is_mtu_exempt("SMS Send To Carrier"));
        assert!(!crate::braze::currents::is_mtu_exempt("Email Open"));
    }
}
