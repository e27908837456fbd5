//! Cohort engine benchmark: generates deterministic event data straight into the engine's
//! index builder, times full evaluation of six cohorts of different forms, and times keeping
//! one cohort current after a batch of 10,000 new events. It writes the data as CSV and the engine's members and timings as files, so
//! `benches/duckdb_compare.py` can run the same cohorts in DuckDB and compare.
//!
//! Run it through `scripts/bench-cohorts`, or directly:
//! `cargo bench -p cohortbridge --bench cohorts -- --users 200000 --events 4000000 --out DIR`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono_tz::Tz;
use cohortbridge::cohorts::data::EventRow;
use cohortbridge::cohorts::engine::Engine;
use cohortbridge::cohorts::live::{LiveCohort, MembershipChanges};
use cohortbridge::cohorts::rows::{IndexBuilder, Selection};
use cohortbridge::cohorts::{parse, Definition};
use rand::distributions::{Distribution, WeightedIndex};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};

/// The evaluation instant: 2026-03-01T00:00:00Z. Events span the 90 days before it.
const NOW: i64 = 1_772_323_200_000;
const DAY: i64 = 86_400_000;
const SEED: u64 = 20_260_301;
const RUNS: usize = 5;
/// Batches of 10,000 new events applied to the live cohort.
const BATCHES: usize = 10;

/// Event names and their share of all events.
const EVENT_MIX: &[(&str, u32)] = &[
    ("App Open", 40),
    ("View Item", 30),
    ("Add To Cart", 12),
    ("Purchase", 8),
    ("Search", 6),
    ("Sign Up", 3),
    ("Churned", 1),
];

/// The cohorts timed, by name. `benches/duckdb_compare.py` runs the same cohorts as SQL.
fn cohorts() -> Vec<(&'static str, Value)> {
    vec![
        (
            "count_last_30_days",
            json!({"event": "Purchase", "count": {"gte": 2}, "within": {"last_days": 30}}),
        ),
        (
            "where_sum_last_60_days",
            json!({"event": "Purchase",
                "where": [{"property": "currency", "op": "eq", "value": "EUR"}],
                "sum": {"property": "amount", "gte": 100},
                "within": {"last_days": 60}}),
        ),
        (
            "distinct_days_last_7_days",
            json!({"event": "App Open", "distinct_days": {"gte": 5}, "within": {"last_days": 7}}),
        ),
        (
            "first_time_last_14_days",
            json!({"event": "Sign Up", "first_time": true, "within": {"last_days": 14}}),
        ),
        (
            "profile_and_did_not",
            json!({"all": [
                {"profile": "plan", "op": "eq", "value": "pro"},
                {"not": {"event": "Churned", "within": {"last_days": 90}}}
            ]}),
        ),
        (
            "at_most_one_purchase",
            json!({"event": "Purchase", "count": {"lte": 1}, "within": {"last_days": 30}}),
        ),
    ]
}

struct Options {
    users: usize,
    events: usize,
    out: PathBuf,
}

fn options() -> Options {
    let mut options = Options {
        users: 200_000,
        events: 4_000_000,
        out: PathBuf::from("target/bench-cohorts"),
    };
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--users" => options.users = value.parse().expect("--users takes a whole number"),
            "--events" => options.events = value.parse().expect("--events takes a whole number"),
            "--out" => options.out = PathBuf::from(value),
            _ => {
                // `cargo bench` adds `--bench`; other flags take no value here.
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    options
}

/// Resident memory of this process in bytes, from /proc (Linux only; 0 elsewhere).
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Peak resident memory of this process in bytes (`VmHWM`, Linux only; 0 elsewhere).
fn peak_resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0)
        * 1024
}

/// CPU time this thread has used, in milliseconds (Linux only; 0 elsewhere). Unlike wall time,
/// it does not grow while other processes hold the cores.
fn thread_cpu_ms() -> f64 {
    #[cfg(target_os = "linux")]
    {
        let mut time = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `time` is a valid, writable timespec for the duration of the call.
        let result = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut time) };
        if result == 0 {
            return time.tv_sec as f64 * 1000.0 + time.tv_nsec as f64 / 1e6;
        }
    }
    0.0
}

/// Returns freed heap memory to the operating system, so that the resident set measured
/// next grows with new allocations instead of reusing the pages just freed.
fn release_free_memory() {
    #[cfg(target_os = "linux")]
    // SAFETY: `malloc_trim` only releases unused memory of the allocator and takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn user_id(n: usize) -> String {
    format!("u{n}")
}

/// One generated event, borrowed for the duration of a callback.
struct Generated<'a> {
    event: &'a str,
    distinct_id: &'a str,
    time_ms: i64,
    properties: &'a Map<String, Value>,
}

/// One generated row.
enum Row<'a> {
    Event(&'a Generated<'a>),
    Profile(&'a str, Map<String, Value>),
}

/// Generates events with skewed activity, user `n` drawn with weight `1 / (n + 1)^0.7`, then
/// profiles, and passes each to `on_row` instead of holding them. The same seed gives the
/// same rows.
fn generate(options: &Options, rng: &mut StdRng, mut on_row: impl FnMut(Row)) {
    let user_weights: Vec<f64> = (0..options.users)
        .map(|n| 1.0 / ((n + 1) as f64).powf(0.7))
        .collect();
    let users = WeightedIndex::new(&user_weights).unwrap();
    let names = WeightedIndex::new(EVENT_MIX.iter().map(|(_, w)| *w)).unwrap();
    let mut distinct_id = String::new();
    for _ in 0..options.events {
        let user = users.sample(rng);
        let event = EVENT_MIX[names.sample(rng)].0;
        let time_ms = NOW - rng.gen_range(0..90 * DAY);
        let mut properties = Map::new();
        if event == "Purchase" {
            properties.insert("amount".into(), json!(rng.gen_range(1..200)));
            let currency = ["EUR", "USD", "GBP"][rng.gen_range(0..3)];
            properties.insert("currency".into(), json!(currency));
        }
        distinct_id.clear();
        write!(distinct_id, "u{user}").expect("writing to a String succeeds");
        on_row(Row::Event(&Generated {
            event,
            distinct_id: &distinct_id,
            time_ms,
            properties: &properties,
        }));
    }
    for n in 0..options.users {
        if rng.gen_bool(0.7) {
            let plan = if rng.gen_bool(0.3) { "pro" } else { "free" };
            let mut profile = Map::new();
            profile.insert("plan".into(), json!(plan));
            on_row(Row::Profile(&user_id(n), profile));
        }
    }
}

/// Writes CSV files for DuckDB while passing the rows on.
struct CsvWriter {
    events: std::io::BufWriter<std::fs::File>,
    profiles: std::io::BufWriter<std::fs::File>,
}

impl CsvWriter {
    fn create(out: &Path) -> std::io::Result<Self> {
        let mut events = std::io::BufWriter::new(std::fs::File::create(out.join("events.csv"))?);
        writeln!(events, "event,distinct_id,time_ms,amount,currency")?;
        let mut profiles =
            std::io::BufWriter::new(std::fs::File::create(out.join("profiles.csv"))?);
        writeln!(profiles, "distinct_id,plan")?;
        Ok(Self { events, profiles })
    }

    fn event(&mut self, row: &Generated) -> std::io::Result<()> {
        let amount = row.properties.get("amount").map(Value::to_string);
        let currency = row.properties.get("currency").and_then(Value::as_str);
        writeln!(
            self.events,
            "{},{},{},{},{}",
            row.event,
            row.distinct_id,
            row.time_ms,
            amount.unwrap_or_default(),
            currency.unwrap_or_default()
        )
    }

    fn profile(&mut self, id: &str, profile: &Map<String, Value>) -> std::io::Result<()> {
        let plan = profile["plan"].as_str().unwrap_or_default();
        writeln!(self.profiles, "{id},{plan}")
    }

    fn finish(mut self) -> std::io::Result<()> {
        self.events.flush()?;
        self.profiles.flush()
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn mib_per_million(bytes: u64, events: usize) -> f64 {
    bytes as f64 / events as f64 * 1e6 / 1_048_576.0
}

fn main() {
    let options = options();
    std::fs::create_dir_all(&options.out).expect("output folder can be created");
    let parsed_cohorts: Vec<(&str, Definition)> = cohorts()
        .into_iter()
        .map(|(name, definition)| {
            (
                name,
                parse(&definition).expect("benchmark cohorts are valid"),
            )
        })
        .collect();
    let rss_before = resident_bytes();

    // Generate the rows once, writing them as CSV and passing each to the index builder, which
    // keeps what the six cohorts read.
    let started = Instant::now();
    let selection = Selection::for_definitions(parsed_cohorts.iter().map(|(_, d)| d), Some(&[]));
    let mut builder = IndexBuilder::new(selection);
    let mut csv = CsvWriter::create(&options.out).expect("CSV files can be created");
    let mut rng = StdRng::seed_from_u64(SEED);
    generate(&options, &mut rng, |row| match row {
        Row::Event(row) => {
            csv.event(row).expect("CSV files can be written");
            builder.add_event_distinct_id(row.distinct_id);
            builder.add_event(
                row.event,
                row.distinct_id,
                row.time_ms,
                Some(row.properties),
            );
        }
        Row::Profile(id, profile) => {
            csv.profile(id, &profile).expect("CSV files can be written");
            builder.add_profile(id, profile);
        }
    });
    csv.finish().expect("CSV files can be written");
    let load_ms = started.elapsed().as_secs_f64() * 1000.0;
    let rss_rows = resident_bytes();
    eprintln!(
        "generated and loaded {} events for {} users in {:.1} s",
        options.events,
        options.users,
        load_ms / 1000.0
    );

    let started = Instant::now();
    let engine = Engine::from_rows(builder);
    let build_ms = started.elapsed().as_secs_f64() * 1000.0;
    let rss_engine = resident_bytes();
    eprintln!("built the index in {build_ms:.0} ms");

    let no_references = HashMap::new();
    let mut results = serde_json::Map::new();
    for (name, parsed) in &parsed_cohorts {
        let mut times = Vec::new();
        let mut list = Vec::new();
        for _ in 0..RUNS {
            let started = Instant::now();
            list = engine
                .member_ids(parsed, &no_references, Tz::UTC, NOW)
                .expect("evaluation succeeds");
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        let first_ms = times[0];
        let started = Instant::now();
        let with_profiles = engine
            .evaluate_with_properties(
                parsed,
                &no_references,
                Tz::UTC,
                NOW,
                Some(&["plan".to_owned()]),
            )
            .expect("evaluation succeeds");
        let with_profiles_ms = started.elapsed().as_secs_f64() * 1000.0;
        assert_eq!(with_profiles.members.len(), list.len());
        std::fs::write(
            options.out.join(format!("engine-{name}.txt")),
            list.join("\n"),
        )
        .expect("member list can be written");
        let ms = median(times);
        eprintln!("{name}: {} members in {ms:.1} ms", list.len());
        results.insert(
            (*name).into(),
            json!({"median_ms": ms, "first_ms": first_ms,
                "with_profiles_ms": with_profiles_ms, "members": list.len()}),
        );
    }
    drop(engine);
    release_free_memory();
    let rss_after_engine = resident_bytes();

    // Keep the first cohort current after a batch of 10,000 new events. The live cohort reads
    // the same generated rows again, from the same seed.
    let (_, parsed) = &parsed_cohorts[0];
    let started = Instant::now();
    let mut live = LiveCohort::builder(parsed.clone(), HashMap::new(), Tz::UTC);
    let mut rng = StdRng::seed_from_u64(SEED);
    generate(&options, &mut rng, |row| match row {
        Row::Event(row) => live.add_event(row.event, row.distinct_id, row.time_ms, row.properties),
        Row::Profile(id, profile) => live.add_profile(id, profile),
    });
    let mut live = live.start(NOW).unwrap();
    let live_build_ms = started.elapsed().as_secs_f64() * 1000.0;
    let rss_live = resident_bytes();
    let user_weights: Vec<f64> = (0..options.users)
        .map(|n| 1.0 / ((n + 1) as f64).powf(0.7))
        .collect();
    let users = WeightedIndex::new(&user_weights).unwrap();
    let mut batch = |first_ms: i64| -> Vec<EventRow> {
        (0..10_000)
            .map(|i| EventRow {
                event: if i % 4 == 0 { "Purchase" } else { "App Open" }.to_owned(),
                distinct_id: user_id(users.sample(&mut rng)),
                time_ms: first_ms + i as i64,
                properties: Map::new(),
            })
            .collect()
    };
    // Ten batches one after the other, each 10,000 events later than the previous one. On a
    // shared machine single timings vary a lot, so the median is reported beside the first.
    let mut batch_times = Vec::new();
    let mut batch_cpu_times = Vec::new();
    let mut changes = MembershipChanges::default();
    let mut batch_now = NOW;
    for k in 0..BATCHES {
        let events = batch(batch_now + 1);
        batch_now += 10_000;
        let started = Instant::now();
        let cpu_started = thread_cpu_ms();
        let batch_changes = live.apply_events(events, batch_now).unwrap();
        batch_times.push(started.elapsed().as_secs_f64() * 1000.0);
        batch_cpu_times.push(thread_cpu_ms() - cpu_started);
        if k == 0 {
            changes = batch_changes;
        }
    }
    let incremental_ms = batch_times[0];
    let second_incremental_ms = batch_times[1];
    let median_incremental_ms = median(batch_times.clone());
    let median_incremental_cpu_ms = median(batch_cpu_times.clone());
    let started = Instant::now();
    let slid = live.advance(batch_now + 3_600_000).unwrap();
    let advance_ms = started.elapsed().as_secs_f64() * 1000.0;
    eprintln!(
        "10,000 new events: +{} -{} in {incremental_ms:.2} ms, the next 10,000 in \
         {second_incremental_ms:.2} ms, median of {BATCHES} batches {median_incremental_ms:.2} ms \
         ({median_incremental_cpu_ms:.2} ms of CPU time); \
         one hour later: -{} in {advance_ms:.2} ms",
        changes.added.len(),
        changes.removed.len(),
        slid.removed.len()
    );

    let events = options.events;
    let summary = json!({
        "users": options.users,
        "events": options.events,
        "load_ms": load_ms,
        "index_build_ms": build_ms,
        "cohorts": results,
        "live_build_ms": live_build_ms,
        "live_members": live.members().len(),
        "incremental_10k_ms": incremental_ms,
        "second_incremental_10k_ms": second_incremental_ms,
        "median_incremental_10k_ms": median_incremental_ms,
        "incremental_10k_all_ms": batch_times,
        "median_incremental_10k_cpu_ms": median_incremental_cpu_ms,
        "incremental_10k_all_cpu_ms": batch_cpu_times,
        "incremental_added": changes.added.len(),
        "incremental_removed": changes.removed.len(),
        "advance_one_hour_ms": advance_ms,
        "advance_removed": slid.removed.len(),
        "rss_rows_mib_per_million_events": mib_per_million(rss_rows.saturating_sub(rss_before), events),
        "rss_index_mib_per_million_events": mib_per_million(rss_engine.saturating_sub(rss_before), events),
        "rss_live_mib_per_million_events": mib_per_million(rss_live.saturating_sub(rss_after_engine), events),
        "peak_rss_mib": peak_resident_bytes() as f64 / 1_048_576.0,
    });
    std::fs::write(
        options.out.join("engine.json"),
        serde_json::to_string_pretty(&summary).unwrap(),
    )
    .expect("summary can be written");
    println!("{}", serde_json::to_string_pretty(&summary).unwrap());
}
