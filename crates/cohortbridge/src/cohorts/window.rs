//! Time windows of event conditions, resolved to instants in the project's time zone.
//!
//! Every function here is pure: the evaluation instant and the time zone are arguments. A
//! resolved window is a closed range of epoch milliseconds `[start, end]`, and `end` is never
//! later than the evaluation instant, so events later than `now` are never counted.

use chrono::{Days, LocalResult, NaiveDate, NaiveDateTime, TimeZone};
use chrono_tz::Tz;
use serde_json::Value;

use super::definition::{error, join, DefinitionError};

/// The widest `last_days` window accepted, about 100 years.
const MAX_WINDOW_DAYS: u64 = 36_600;
/// The widest `last_hours` window accepted, the same span in hours.
const MAX_WINDOW_HOURS: u64 = MAX_WINDOW_DAYS * 24;
const HOUR_MS: i64 = 3_600_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    AllTime,
    /// From the same wall-clock time `days` calendar days before `now`, in the project's time
    /// zone, up to and including `now`.
    LastDays(u32),
    /// The `hours` hours up to and including `now`.
    LastHours(u32),
    /// From the start of the first date to the end of the second, both in the project's time
    /// zone and both included.
    Between(NaiveDate, NaiveDate),
    /// From the start of the date, in the project's time zone, up to and including `now`.
    Since(NaiveDate),
}

/// A window resolved against an instant: the inclusive range `[start_ms, end_ms]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub start_ms: i64,
    pub end_ms: i64,
}

impl Bounds {
    pub fn contains(&self, time_ms: i64) -> bool {
        self.start_ms <= time_ms && time_ms <= self.end_ms
    }
}

impl Window {
    /// Resolves the window as of `now_ms` in `tz`. An empty window has `start_ms > end_ms`.
    pub fn bounds(&self, now_ms: i64, tz: Tz) -> Bounds {
        let start_ms = match self {
            Window::AllTime => i64::MIN,
            Window::LastHours(hours) => now_ms.saturating_sub(i64::from(*hours) * HOUR_MS),
            Window::LastDays(days) => {
                let now_local = tz.timestamp_millis_opt(now_ms).unwrap().naive_local();
                match now_local.checked_sub_days(Days::new(u64::from(*days))) {
                    Some(start) => resolve_local(tz, start),
                    None => i64::MIN,
                }
            }
            Window::Between(from, _) | Window::Since(from) => start_of_day(tz, *from),
        };
        let end_ms = match self {
            Window::Between(_, to) => match to.checked_add_days(Days::new(1)) {
                Some(next) => (start_of_day(tz, next) - 1).min(now_ms),
                None => now_ms,
            },
            _ => now_ms,
        };
        Bounds { start_ms, end_ms }
    }
}

/// The local calendar day of an instant in `tz`, as days since 1970-01-01.
pub fn local_day(time_ms: i64, tz: Tz) -> i64 {
    if tz == Tz::UTC {
        return time_ms.div_euclid(86_400_000);
    }
    let local = tz.timestamp_millis_opt(time_ms).unwrap().date_naive();
    i64::from(local.to_epoch_days())
}

/// The first instant of a local date in `tz`.
pub fn start_of_day(tz: Tz, date: NaiveDate) -> i64 {
    resolve_local(tz, date.and_hms_opt(0, 0, 0).expect("midnight exists"))
}

/// Resolves a wall-clock time in `tz` to an instant. A time that occurs twice (when clocks go
/// back) resolves to its earlier occurrence; a time skipped when clocks go forward resolves to
/// the first instant after the gap.
pub fn resolve_local(tz: Tz, local: NaiveDateTime) -> i64 {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => t.timestamp_millis(),
        LocalResult::Ambiguous(earlier, _) => earlier.timestamp_millis(),
        LocalResult::None => {
            // Gaps last at most a few hours, so step forward a minute at a time from the
            // start of the skipped minute to the first wall time that exists.
            let into_minute = local.and_utc().timestamp_millis().rem_euclid(60_000);
            let mut probe = local - chrono::Duration::milliseconds(into_minute);
            for _ in 0..(24 * 60) {
                probe += chrono::Duration::minutes(1);
                if let Some(t) = tz.from_local_datetime(&probe).earliest() {
                    return t.timestamp_millis();
                }
            }
            local.and_utc().timestamp_millis()
        }
    }
}

/// Parses an IANA time zone name such as `Europe/Berlin`.
pub fn parse_timezone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>().map_err(|_| {
        format!("unknown time zone {name:?}; expected an IANA name such as \"Europe/Berlin\" or \"UTC\"")
    })
}

fn parse_date(value: &Value, path: &str) -> Result<NaiveDate, DefinitionError> {
    value
        .as_str()
        .and_then(|s| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok())
        .ok_or_else(|| {
            error(
                path,
                format!("expected a date such as \"2026-01-31\", found {value}"),
            )
        })
}

fn parse_whole(value: &Value, path: &str, unit: &str, max: u64) -> Result<u32, DefinitionError> {
    super::definition::whole_number(value)
        .and_then(|n| u64::try_from(n).ok())
        .filter(|n| (1..=max).contains(n))
        .map(|n| n as u32)
        .ok_or_else(|| {
            error(
                path,
                format!("expected a whole number of {unit} from 1 to {max}, found {value}"),
            )
        })
}

/// Parses the `within` object of an event condition.
pub fn parse_window(value: &Value, path: &str) -> Result<Window, DefinitionError> {
    const KEYS: &[&str] = &["last_days", "last_hours", "between", "since", "all_time"];
    let map = value.as_object().ok_or_else(|| {
        error(
            path,
            format!("expected an object such as {{\"last_days\": 30}}, found {value}"),
        )
    })?;
    if let Some(extra) = map.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(error(
            &join(path, extra),
            format!("unexpected key; a window is one of {KEYS:?}"),
        ));
    }
    if map.len() != 1 {
        return Err(error(path, format!("expected exactly one of {KEYS:?}")));
    }
    let (key, inner) = map.iter().next().expect("one entry");
    let key_path = join(path, key);
    match key.as_str() {
        "last_days" => Ok(Window::LastDays(parse_whole(
            inner,
            &key_path,
            "days",
            MAX_WINDOW_DAYS,
        )?)),
        "last_hours" => Ok(Window::LastHours(parse_whole(
            inner,
            &key_path,
            "hours",
            MAX_WINDOW_HOURS,
        )?)),
        "since" => Ok(Window::Since(parse_date(inner, &key_path)?)),
        "between" => {
            let Some([from, to]) = inner.as_array().map(Vec::as_slice) else {
                return Err(error(
                    &key_path,
                    format!("expected two dates such as [\"2026-01-01\", \"2026-01-31\"], found {inner}"),
                ));
            };
            let from = parse_date(from, &format!("{key_path}[0]"))?;
            let to = parse_date(to, &format!("{key_path}[1]"))?;
            if from > to {
                return Err(error(
                    &key_path,
                    format!("the first date {from} is after the second date {to}"),
                ));
            }
            Ok(Window::Between(from, to))
        }
        _ => match inner {
            Value::Bool(true) => Ok(Window::AllTime),
            other => Err(error(&key_path, format!("expected true, found {other}"))),
        },
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};

    use super::*;

    fn ms(text: &str) -> i64 {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .timestamp_millis()
    }

    fn iso(ms: i64) -> String {
        DateTime::<Utc>::from_timestamp_millis(ms)
            .unwrap()
            .to_rfc3339()
    }

    fn date(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn last_days_in_utc_is_whole_days() {
        let now = ms("2026-03-10T12:00:00Z");
        let bounds = Window::LastDays(30).bounds(now, Tz::UTC);
        assert_eq!(bounds.start_ms, now - 30 * 86_400_000);
        assert_eq!(bounds.end_ms, now);
        assert!(bounds.contains(now - 30 * 86_400_000));
        assert!(!bounds.contains(now - 30 * 86_400_000 - 1));
        assert!(!bounds.contains(now + 1));
    }

    #[test]
    fn last_days_across_spring_forward_keeps_wall_clock() {
        // Berlin moved from +01:00 to +02:00 on 2026-03-29 at 02:00 local time.
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        let now = ms("2026-03-30T12:00:00+02:00");
        let bounds = Window::LastDays(2).bounds(now, tz);
        assert_eq!(iso(bounds.start_ms), iso(ms("2026-03-28T12:00:00+01:00")));
        assert_eq!(now - bounds.start_ms, 47 * HOUR_MS);
    }

    #[test]
    fn last_days_across_fall_back_keeps_wall_clock() {
        // Berlin moved from +02:00 to +01:00 on 2026-10-25 at 03:00 local time.
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        let now = ms("2026-10-26T12:00:00+01:00");
        let bounds = Window::LastDays(2).bounds(now, tz);
        assert_eq!(now - bounds.start_ms, 49 * HOUR_MS);
    }

    #[test]
    fn last_hours_ignores_time_zone() {
        let tz: Tz = "America/New_York".parse().unwrap();
        let now = ms("2026-03-08T12:00:00Z");
        assert_eq!(
            Window::LastHours(24).bounds(now, tz).start_ms,
            now - 24 * HOUR_MS
        );
    }

    #[test]
    fn between_covers_whole_local_days_at_month_end() {
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        let window = Window::Between(date("2026-02-01"), date("2026-02-28"));
        let bounds = window.bounds(ms("2026-06-01T00:00:00Z"), tz);
        assert_eq!(bounds.start_ms, ms("2026-02-01T00:00:00+01:00"));
        assert_eq!(bounds.end_ms, ms("2026-03-01T00:00:00+01:00") - 1);
        assert!(bounds.contains(ms("2026-02-28T23:59:59.999+01:00")));
        assert!(!bounds.contains(ms("2026-03-01T00:00:00+01:00")));
        assert!(!bounds.contains(ms("2026-01-31T23:59:59.999+01:00")));
    }

    #[test]
    fn between_is_capped_at_now() {
        let now = ms("2026-01-15T08:00:00Z");
        let window = Window::Between(date("2026-01-01"), date("2026-01-31"));
        assert_eq!(window.bounds(now, Tz::UTC).end_ms, now);
    }

    #[test]
    fn since_starts_at_local_midnight() {
        let tz: Tz = "Asia/Tokyo".parse().unwrap();
        let bounds = Window::Since(date("2026-01-01")).bounds(ms("2026-02-01T00:00:00Z"), tz);
        assert_eq!(bounds.start_ms, ms("2026-01-01T00:00:00+09:00"));
    }

    #[test]
    fn last_days_from_march_first_reaches_february_end() {
        let now = ms("2026-03-01T00:30:00Z");
        let bounds = Window::LastDays(1).bounds(now, Tz::UTC);
        assert_eq!(bounds.start_ms, ms("2026-02-28T00:30:00Z"));
    }

    #[test]
    fn skipped_wall_time_resolves_after_gap() {
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        let skipped = date("2026-03-29").and_hms_opt(2, 30, 0).unwrap();
        assert_eq!(resolve_local(tz, skipped), ms("2026-03-29T03:00:00+02:00"));
    }

    #[test]
    fn local_day_follows_time_zone() {
        let tz: Tz = "America/Los_Angeles".parse().unwrap();
        let instant = ms("2026-01-02T03:00:00Z");
        assert_eq!(local_day(instant, Tz::UTC) - local_day(instant, tz), 1);
    }

    #[test]
    fn timezone_names_are_validated() {
        assert!(parse_timezone("Europe/Berlin").is_ok());
        assert!(parse_timezone("Mars/Olympus")
            .unwrap_err()
            .contains("Mars/Olympus"));
    }
}
