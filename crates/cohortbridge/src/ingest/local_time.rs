//! Conversion of event times written in a project's local time to UTC. Mixpanel projects created
//! before its switch to UTC stored `time` as the wall-clock time of the project's time zone, so
//! their raw exports need this shift before import.

use chrono::{DateTime, LocalResult, TimeZone};
use chrono_tz::Tz;
use serde_json::Value;

/// A numeric `time` at or above this is read as milliseconds, as on `/import`.
const MILLISECONDS_THRESHOLD: f64 = 100_000_000_000.0;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LocalTimeError {
    #[error("properties.time {0} is not a number of seconds or milliseconds")]
    NotANumber(String),
    #[error("properties.time {0} is outside the range of dates")]
    OutOfRange(String),
}

/// Reads `local_ms`, milliseconds since the epoch as the wall clock of `zone` showed them, and
/// returns the UTC instant in milliseconds. A wall-clock time that occurs twice (the hour
/// after a DST fall-back) is taken as the earlier instant. One that never occurs (the hour
/// skipped at a DST spring-forward) is taken an hour later, as clocks then read.
pub fn local_ms_to_utc(local_ms: i64, zone: Tz) -> Option<i64> {
    let naive = DateTime::from_timestamp_millis(local_ms)?.naive_utc();
    let instant = match zone.from_local_datetime(&naive) {
        LocalResult::Single(instant) | LocalResult::Ambiguous(instant, _) => instant,
        LocalResult::None => zone
            .from_local_datetime(&(naive + chrono::Duration::hours(1)))
            .earliest()?,
    };
    Some(instant.timestamp_millis())
}

/// Rewrites `properties.time` of an event record from `zone`'s local time to UTC, as integer
/// milliseconds. A record without a numeric `time` is left for the server to reject.
pub fn shift_event_time(record: &mut Value, zone: Tz) -> Result<(), LocalTimeError> {
    let Some(time) = record.pointer_mut("/properties/time") else {
        return Ok(());
    };
    let Some(number) = time.as_f64() else {
        return match time {
            Value::Null | Value::String(_) => Ok(()),
            other => Err(LocalTimeError::NotANumber(other.to_string())),
        };
    };
    let local_ms = if number >= MILLISECONDS_THRESHOLD {
        number.round()
    } else {
        (number * 1000.0).round()
    };
    let utc_ms = local_ms_to_utc(local_ms as i64, zone)
        .ok_or_else(|| LocalTimeError::OutOfRange(time.to_string()))?;
    *time = Value::from(utc_ms);
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const NEW_YORK: Tz = chrono_tz::America::New_York;

    #[test]
    fn winter_and_summer_offsets() {
        // 2023-01-15T12:00:00 in New York is 17:00 UTC (UTC-5).
        let local = 1_673_784_000_000;
        assert_eq!(
            local_ms_to_utc(local, NEW_YORK),
            Some(local + 5 * 3_600_000)
        );
        // 2023-07-15T12:00:00 in New York is 16:00 UTC (UTC-4).
        let local = 1_689_422_400_000;
        assert_eq!(
            local_ms_to_utc(local, NEW_YORK),
            Some(local + 4 * 3_600_000)
        );
    }

    #[test]
    fn dst_edges() {
        // 2023-11-05T01:30 happens twice in New York; the earlier is 05:30 UTC.
        let repeated = 1_699_147_800_000;
        assert_eq!(
            local_ms_to_utc(repeated, NEW_YORK),
            Some(repeated + 4 * 3_600_000)
        );
        // 2023-03-12T02:30 never happens in New York; it is read as 03:30 EDT, 07:30 UTC.
        let skipped = 1_678_588_200_000;
        assert_eq!(
            local_ms_to_utc(skipped, NEW_YORK),
            Some(skipped + 5 * 3_600_000)
        );
    }

    #[test]
    fn seconds_and_milliseconds_become_utc_milliseconds() {
        for time in [
            json!(1673784000),
            json!(1673784000000_i64),
            json!(1673784000.0),
        ] {
            let mut record = json!({"event": "e", "properties": {"time": time}});
            shift_event_time(&mut record, NEW_YORK).unwrap();
            assert_eq!(record["properties"]["time"], 1_673_802_000_000_i64);
        }
    }

    #[test]
    fn non_numeric_times_are_left_or_rejected() {
        let mut record = json!({"event": "e", "properties": {"time": "2023-01-15"}});
        shift_event_time(&mut record, NEW_YORK).unwrap();
        assert_eq!(record["properties"]["time"], "2023-01-15");
        let mut record = json!({"event": "e", "properties": {"time": [1]}});
        assert!(shift_event_time(&mut record, NEW_YORK).is_err());
    }
}
