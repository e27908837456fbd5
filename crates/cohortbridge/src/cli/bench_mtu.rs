//! `cohortbridge bench mtu`: times the monthly MTU report on a month of generated events.
//!
//! The command writes `--events` events for `--users` users into a SQLite store in
//! `--data-dir`, through the same store calls that ingestion uses, so the MTU rollup is built
//! the way a server builds it. About a fifth of the events are Braze outreach (Email Send,
//! Canvas Entry and the like, marked with `$partner_id`), and some users receive only those.
//! While generating, it keeps its own tally of which users should count, then checks that the
//! report agrees exactly, and times the report on a freshly opened store and on a warm one.
//!
//! Events arrive in time order, as from live SDKs. Generation is the slow part; `--reuse`
//! times the report on a store an earlier run filled.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, ensure, Context};
use clap::Args;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use roaring::RoaringBitmap;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map};

use crate::mtu::{self, ExemptionRules};
use crate::store::{NewEvent, NewProject, SqliteStore, Store};

#[derive(Debug, Clone, Args)]
pub struct MtuArgs {
    /// Events in the month. Not allowed with `--reuse`, whose store already contains its events.
    #[arg(long, default_value_t = 20_000_000, conflicts_with = "reuse")]
    pub events: u64,
    /// Distinct users sending them. Not allowed with `--reuse`.
    #[arg(long, default_value_t = 200_000, conflicts_with = "reuse")]
    pub users: u32,
    /// Folder for the benchmark's store, created when missing.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Time the report on the store an earlier run left in `--data-dir`, without generating.
    #[arg(long)]
    pub reuse: bool,
    /// Times to run the report on the warm store after the first run on a freshly opened one.
    /// 0 times only that first run.
    #[arg(long, default_value_t = 5)]
    pub repeat: u32,
}

/// The month the benchmark fills, November 2026 in UTC.
const MONTH: &str = "2026-11";
const MONTH_START_MS: i64 = 1_793_491_200_000;
const MONTH_MS: i64 = 30 * 86_400_000;

const OWN_EVENTS: &[&str] = &[
    "Viewed Page",
    "Added To Cart",
    "Purchased",
    "Searched",
    "Shared",
    "Signed Up",
    "Opened App",
    "Played Song",
    "Rated Item",
    "Commented",
];
/// Braze events that count (opens and clicks) and that are outreach (sends and entries).
const BRAZE_COUNTED: &[&str] = &["Email Open", "Email Click", "Push Notification Open"];
const BRAZE_OUTREACH: &[&str] = &[
    "Email Send",
    "Email Delivery",
    "Canvas Entry",
    "Push Notification Send",
    "SMS Send",
];

/// The generator's running count of events and of the users who should count.
#[derive(Default)]
struct Counter {
    counted: RoaringBitmap,
    seen: RoaringBitmap,
    events: u64,
}

/// The figures the generator expects the report to return, stored as
/// `bench-mtu.expected.json` for `--reuse`.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Tally {
    events: u64,
    users: u64,
    exempt_only_users: u64,
}

impl Tally {
    fn describe(&self) -> String {
        format!(
            "{} events, {} counted users, {} exempt-only users",
            self.events, self.users, self.exempt_only_users
        )
    }
}

pub async fn run(args: MtuArgs) -> anyhow::Result<()> {
    if args.events == 0 || args.users == 0 {
        bail!("--events and --users must be at least 1");
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create --data-dir {}", args.data_dir.display()))?;
    let path = args.data_dir.join("bench-mtu.sqlite");
    let tally_path = args.data_dir.join("bench-mtu.expected.json");
    let expected = if args.reuse {
        let text = std::fs::read_to_string(&tally_path).with_context(|| {
            format!(
                "--reuse needs an earlier run's {}; run once without --reuse",
                tally_path.display()
            )
        })?;
        serde_json::from_str::<Tally>(&text).with_context(|| {
            format!(
                "{} is not a tally that bench mtu wrote; empty --data-dir and run once without --reuse",
                tally_path.display()
            )
        })?
    } else {
        if path.exists() {
            bail!(
                "{} already exists: pass --reuse to time it, or choose an empty --data-dir",
                path.display()
            );
        }
        let expected = generate(&path, &args).await?;
        std::fs::write(&tally_path, serde_json::to_vec_pretty(&expected)?)?;
        expected
    };

    let rules = ExemptionRules::default();
    let started = Instant::now();
    let store = SqliteStore::open(&path)?;
    let project_id = store
        .list_projects()
        .await?
        .first()
        .context("the benchmark store has no project")?
        .id;
    let report = mtu::monthly_tracked_users(&store, project_id, MONTH, &rules).await?;
    let cold = started.elapsed();
    let found = Tally {
        events: report.total_events as u64,
        users: report.users as u64,
        exempt_only_users: report.exempt_only_users as u64,
    };
    ensure!(
        found == expected,
        "the MTU report disagrees with the generator's tally in {}: expected {}, the report found {}",
        tally_path.display(),
        expected.describe(),
        found.describe()
    );
    let mut warm = Vec::new();
    for _ in 0..args.repeat {
        let started = Instant::now();
        let again = mtu::monthly_tracked_users(&store, project_id, MONTH, &rules).await?;
        warm.push(started.elapsed().as_secs_f64() * 1000.0);
        ensure!(again == report, "two runs of the report disagree");
    }
    warm.sort_by(f64::total_cmp);
    println!(
        "{} events, {} counted users, {} exempt-only users: exact",
        report.total_events, report.users, report.exempt_only_users
    );
    println!(
        "report on a freshly opened store: {:.0} ms",
        cold.as_secs_f64() * 1000.0
    );
    if !warm.is_empty() {
        println!(
            "report on a warm store, {} runs: median {:.0} ms, slowest {:.0} ms",
            warm.len(),
            warm[warm.len() / 2],
            warm[warm.len() - 1]
        );
    }
    Ok(())
}

/// Fills a new store with the month's events and returns the generator's tally.
async fn generate(path: &std::path::Path, args: &MtuArgs) -> anyhow::Result<Tally> {
    let store = SqliteStore::open(path)?;
    let project = store
        .create_project(NewProject {
            name: "bench".into(),
            token: "bench".into(),
            api_secret_enc: String::new(),
            api_secret_hash: "bench-secret".into(),
            currents_token_enc: String::new(),
            currents_token_hash: "bench-currents".into(),
        })
        .await?;
    let mut rng = StdRng::seed_from_u64(20_261_101);
    let mut counter = Counter::default();
    // One user in ten hears from Braze but never acts: outreach only.
    let outreach_only = |user: u32| user % 10 == 9;
    let started = Instant::now();
    let mut written = 0u64;
    // Large transactions fill the store faster: each commit rewrites the index pages that
    // its events touch, and bigger batches share those pages.
    const BATCH: u64 = 250_000;
    while written < args.events {
        let size = BATCH.min(args.events - written);
        let events: Vec<NewEvent> = (0..size)
            .map(|i| {
                let user = rng.gen_range(0..args.users);
                let roll = rng.gen_range(0..100);
                let (name, braze) = if outreach_only(user) || roll < 20 {
                    (BRAZE_OUTREACH[rng.gen_range(0..BRAZE_OUTREACH.len())], true)
                } else if roll < 25 {
                    (BRAZE_COUNTED[rng.gen_range(0..BRAZE_COUNTED.len())], true)
                } else {
                    (OWN_EVENTS[rng.gen_range(0..OWN_EVENTS.len())], false)
                };
                counter.seen.insert(user);
                if !BRAZE_OUTREACH.contains(&name) {
                    counter.counted.insert(user);
                }
                let mut properties = Map::new();
                properties.insert("$import".into(), json!(true));
                properties.insert("plan".into(), json!(["free", "pro"][(user % 2) as usize]));
                if braze {
                    properties.insert("$partner_id".into(), json!("braze"));
                    properties.insert("campaign_id".into(), json!(format!("c{}", user % 50)));
                }
                NewEvent {
                    event: name.to_owned(),
                    distinct_id: format!("user-{user}"),
                    // Events arrive in time order, as they do from live SDKs, spread evenly
                    // over the month with a minute of jitter.
                    time_ms: MONTH_START_MS
                        + ((written + i) as i64 * (MONTH_MS - 60_000)) / args.events as i64
                        + rng.gen_range(0..60_000),
                    insert_id: format!("{:x}", written + i),
                    properties,
                }
            })
            .collect();
        store
            .write_events(
                project.id,
                events,
                Vec::new(),
                chrono::Utc::now().timestamp_millis(),
            )
            .await?;
        written += size;
        counter.events = written;
        if written % 1_000_000 < BATCH || written == args.events {
            let rate = written as f64 / started.elapsed().as_secs_f64();
            eprintln!(
                "wrote {written} of {} events ({rate:.0} events/s)",
                args.events
            );
        }
    }
    Ok(Tally {
        events: counter.events,
        users: counter.counted.len(),
        exempt_only_users: counter.seen.len() - counter.counted.len(),
    })
}
