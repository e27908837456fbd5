//! Cohort engine benchmark: generates deterministic event data, times full evaluation of six
//! cohorts of different forms, and times keeping one cohort current after a batch of 10,000
//! new events. It writes the data as CSV and the engine's members and timings as files, so
//! `benches/duckdb_compare.py` can run the same cohorts in DuckDB and compare.
//!
//! Run it through `scripts/bench-cohorts`, or directly:
//! `cargo bench -p cohortbridge --bench cohorts -- --users 200000 --events 4000000 --out DIR`.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono_tz::Tz;
use cohortbridge::cohorts::data::{CohortData, EventRow};
use cohortbridge::cohorts::engine::Engine;
use cohortbridge::cohorts::live::LiveCohort;
use cohortbridge::cohorts::parse;
use rand::distributions::{Distribution, WeightedIndex};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};

/// The evaluation instant: 2026-03-01T00:00:00Z. Events span the 90 days before it.
const NOW: i64 = 1_772_323_200_000;
const DAY: i64 = 86_400_000;
const SEED: u64 = 20_260_301;
const RUNS: usize = 5;

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

fn user_id(n: usize) -> String {
    format!("u{n}")
}

/// Generates events with skewed activity: user `n` is drawn with weight `1 / (n + 1)^0.7`.
fn generate(options: &Options, rng: &mut StdRng) -> CohortData {
    let user_weights: Vec<f64> = (0..options.users)
        .map(|n| 1.0 / ((n + 1) as f64).powf(0.7))
        .collect();
    let users = WeightedIndex::new(&user_weights).unwrap();
    let names = WeightedIndex::new(EVENT_MIX.iter().map(|(_, w)| *w)).unwrap();
    let mut data = CohortData::default();
    data.events.reserve(options.events);
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
        data.events.push(EventRow {
            event: event.to_owned(),
            distinct_id: user_id(user),
            time_ms,
            properties,
        });
    }
    for row in &data.events {
        if !data.event_distinct_ids.contains(&row.distinct_id) {
            data.event_distinct_ids.insert(row.distinct_id.clone());
        }
    }
    for n in 0..options.users {
        if rng.gen_bool(0.7) {
            let plan = if rng.gen_bool(0.3) { "pro" } else { "free" };
            let mut profile = Map::new();
            profile.insert("plan".into(), json!(plan));
            data.profiles.insert(user_id(n), profile);
        }
    }
    data
}

fn write_csv(data: &CohortData, out: &Path) -> std::io::Result<()> {
    let mut events = std::io::BufWriter::new(std::fs::File::create(out.join("events.csv"))?);
    writeln!(events, "event,distinct_id,time_ms,amount,currency")?;
    for row in &data.events {
        let amount = row.properties.get("amount").map(Value::to_string);
        let currency = row.properties.get("currency").and_then(Value::as_str);
        writeln!(
            events,
            "{},{},{},{},{}",
            row.event,
            row.distinct_id,
            row.time_ms,
            amount.unwrap_or_default(),
            currency.unwrap_or_default()
        )?;
    }
    events.flush()?;
    let mut profiles = std::io::BufWriter::new(std::fs::File::create(out.join("profiles.csv"))?);
    writeln!(profiles, "distinct_id,plan")?;
    for (id, profile) in &data.profiles {
        writeln!(
            profiles,
            "{id},{}",
            profile["plan"].as_str().unwrap_or_default()
        )?;
    }
    profiles.flush()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let options = options();
    std::fs::create_dir_all(&options.out).expect("output folder can be created");
    let mut rng = StdRng::seed_from_u64(SEED);
    let rss_before = resident_bytes();

    let started = Instant::now();
    let data = generate(&options, &mut rng);
    eprintln!(
        "generated {} events for {} users in {:.1} s",
        data.events.len(),
        options.users,
        started.elapsed().as_secs_f64()
    );
    write_csv(&data, &options.out).expect("CSV files can be written");
    let rss_data = resident_bytes();

    let started = Instant::now();
    let engine = Engine::build(&data);
    let build_ms = started.elapsed().as_secs_f64() * 1000.0;
    let rss_engine = resident_bytes();
    eprintln!("built the index in {build_ms:.0} ms");

    let no_references = HashMap::new();
    let mut results = serde_json::Map::new();
    for (name, definition) in cohorts() {
        let parsed = parse(&definition).expect("benchmark cohorts are valid");
        let mut times = Vec::new();
        let mut list = Vec::new();
        for _ in 0..RUNS {
            let started = Instant::now();
            list = engine
                .member_ids(&parsed, &no_references, Tz::UTC, NOW)
                .expect("evaluation succeeds");
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        // The first run also extracts the property columns the cohort reads.
        let first_ms = times[0];
        let started = Instant::now();
        let with_profiles = engine
            .evaluate(&parsed, &no_references, Tz::UTC, NOW)
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
            name.into(),
            json!({"median_ms": ms, "first_ms": first_ms,
                "with_profiles_ms": with_profiles_ms, "members": list.len()}),
        );
    }
    drop(engine);

    // Keep the first cohort current after a batch of 10,000 new events.
    let (_, definition) = &cohorts()[0];
    let parsed = parse(definition).unwrap();
    let started = Instant::now();
    let mut live = LiveCohort::new(data, parsed, HashMap::new(), Tz::UTC, NOW).unwrap();
    let live_build_ms = started.elapsed().as_secs_f64() * 1000.0;
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
    let first_batch = batch(NOW + 1);
    let second_batch = batch(NOW + 10_001);
    let batch_now = NOW + 20_001;
    let started = Instant::now();
    let changes = live.apply_events(first_batch, NOW + 10_001).unwrap();
    let incremental_ms = started.elapsed().as_secs_f64() * 1000.0;
    let started = Instant::now();
    live.apply_events(second_batch, batch_now).unwrap();
    let second_incremental_ms = started.elapsed().as_secs_f64() * 1000.0;
    let started = Instant::now();
    let slid = live.advance(batch_now + 3_600_000).unwrap();
    let advance_ms = started.elapsed().as_secs_f64() * 1000.0;
    eprintln!(
        "10,000 new events: +{} -{} in {incremental_ms:.2} ms, the next 10,000 in \
         {second_incremental_ms:.2} ms; one hour later: -{} in {advance_ms:.2} ms",
        changes.added.len(),
        changes.removed.len(),
        slid.removed.len()
    );

    let events = options.events as f64;
    let summary = json!({
        "users": options.users,
        "events": options.events,
        "index_build_ms": build_ms,
        "cohorts": results,
        "live_build_ms": live_build_ms,
        "incremental_10k_ms": incremental_ms,
        "second_incremental_10k_ms": second_incremental_ms,
        "incremental_added": changes.added.len(),
        "incremental_removed": changes.removed.len(),
        "advance_one_hour_ms": advance_ms,
        "advance_removed": slid.removed.len(),
        "rss_data_mib_per_million_events": (rss_data.saturating_sub(rss_before)) as f64 / events * 1e6 / 1_048_576.0,
        "rss_index_mib_per_million_events": (rss_engine.saturating_sub(rss_data)) as f64 / events * 1e6 / 1_048_576.0,
    });
    std::fs::write(
        options.out.join("engine.json"),
        serde_json::to_string_pretty(&summary).unwrap(),
    )
    .expect("summary can be written");
    println!("{}", serde_json::to_string_pretty(&summary).unwrap());
}
