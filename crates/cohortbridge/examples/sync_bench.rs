//! Benchmark of one dynamic sync: a cohort of N exportable members (default 1,000,000) synced
//! into the Braze emulator, then a run after 1% churn (half leave, as many new users join).
//!
//! Build and run:
//!
//! ```sh
//! cargo build --release -p braze-emulator
//! cargo build --release -p cohortbridge --example sync_bench
//! target/release/examples/sync_bench [MEMBERS]
//! ```
//!
//! With `CARGO_TARGET_DIR` set, the binary is in that folder's `release/examples`.
//!
//! Profiles are written straight through the `Store` trait, because loading a million through
//! `/engage` measures ingestion, not sync. The emulator replaces Braze, a remote service,
//! so it runs as its own process: the `braze-emulator` binary next to the example's folder, or
//! the one `BRAZE_EMULATOR_BIN` names. Peak memory is Linux's VmHWM of each process, reset
//! through `/proc/PID/clear_refs` before each run, so each figure covers one run. The benchmark
//! uses mimalloc, the allocator of the `cohortbridge` binary. mimalloc returns freed memory to
//! the system only after a delay (1 s by default). Before each reset the benchmark calls
//! `mi_collect` to return what the previous step freed, because otherwise a run's figure would
//! include memory that the dry run before it had already freed.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cohortbridge::braze::client::{BrazeClient, RetryPolicy};
use cohortbridge::secrets::SecretBox;
use cohortbridge::store::{
    NewConnection, NewProject, ProfileOperation, ProfileUpdate, SqliteStore, Store, SyncMode,
};
use cohortbridge::sync::{PartnerSettings, SyncEngine, SyncLimits};
use serde_json::{json, Map, Value};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

extern "C" {
    /// mimalloc's `mi_collect` (linked in through the `mimalloc` crate): with `force`, returns
    /// the memory freed so far to the system now instead of after mimalloc's purge delay.
    fn mi_collect(force: bool);
}

const PARTNER_KEY: &str = "bench-partner-key";
const DATA_IMPORT_KEY: &str = "bench-data-import-key";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let members: usize = match std::env::args().nth(1) {
        Some(text) => text
            .parse()
            .map_err(|e| anyhow::anyhow!("MEMBERS {text:?} is not a count: {e}"))?,
        None => 1_000_000,
    };
    let churn = members / 100;
    let data_dir = tempfile::tempdir()?;
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&data_dir.path().join("bench.db"))?);
    let secrets = SecretBox::load_or_create(data_dir.path(), None)?;

    let emulator = EmulatorProcess::start()?;
    let addr = emulator.addr.clone();

    let project = store
        .create_project(NewProject {
            name: "bench".into(),
            token: "bench-token".into(),
            api_secret_enc: secrets.encrypt("s"),
            api_secret_hash: "h1".into(),
            currents_token_enc: secrets.encrypt("c"),
            currents_token_hash: "h2".into(),
        })
        .await?;
    let started = Instant::now();
    load_profiles(store.as_ref(), project.id, 0..members, "pro").await?;
    println!("loaded {members} profiles in {:.1?}", started.elapsed());

    let connection = store
        .create_connection(
            project.id,
            NewConnection {
                name: "emulator".into(),
                instance: "custom".into(),
                base_url: addr.clone(),
                data_import_key_enc: secrets.encrypt(DATA_IMPORT_KEY),
                user_id_property: "$braze_external_id".into(),
                delivery: "cohort_import".into(),
                attribute_name: None,
            },
            0,
        )
        .await?;
    let definition = json!({"profile": "plan", "op": "eq", "value": "pro"});
    let cohort = store
        .create_cohort(project.id, "Bench", &definition, 0)
        .await?;
    let sync = store
        .create_sync(
            project.id,
            cohort.id,
            connection.id,
            SyncMode::Dynamic,
            Some(3600),
            0,
        )
        .await?;
    let client = BrazeClient::new(RetryPolicy {
        request_timeout: Duration::from_secs(60),
        ..RetryPolicy::default()
    });
    let engine = SyncEngine::new(
        store.clone(),
        client,
        secrets,
        PartnerSettings {
            name: "cohortbridge".into(),
            api_key: Some(PARTNER_KEY.into()),
            api_key_eu: None,
        },
    )
    .with_limits(SyncLimits::default())
    .with_installation_id("bench".into());

    measure_preview(
        &engine,
        store.as_ref(),
        project.id,
        cohort.id,
        connection.id,
    )
    .await?;
    reset_peak_memory(&emulator);
    let first = measure_run(&engine, sync.id, "first run", &emulator).await?;
    let braze_members = emulator_member_count(&addr).await?;
    println!("  Braze holds {braze_members} members");
    anyhow::ensure!(
        first.added as usize == members,
        "first run added {}",
        first.added
    );

    // 1% churn: the first half of the churn leaves, as many new users join.
    load_profiles(store.as_ref(), project.id, 0..churn / 2, "free").await?;
    load_profiles(
        store.as_ref(),
        project.id,
        members..members + churn / 2,
        "pro",
    )
    .await?;
    measure_preview(
        &engine,
        store.as_ref(),
        project.id,
        cohort.id,
        connection.id,
    )
    .await?;
    reset_peak_memory(&emulator);
    let second = measure_run(&engine, sync.id, "churn run", &emulator).await?;
    anyhow::ensure!(
        (second.added + second.removed) as usize == churn / 2 * 2,
        "churn run sent {} adds and {} removes",
        second.added,
        second.removed
    );
    let braze_members = emulator_member_count(&addr).await?;
    println!("  Braze holds {braze_members} members");
    anyhow::ensure!(
        braze_members == members,
        "Braze holds {braze_members} members after the churn run, not {members}"
    );
    Ok(())
}

/// The `braze-emulator` binary, run as a child process on a free loopback port.
struct EmulatorProcess {
    child: Child,
    /// Base URL, `http://127.0.0.1:PORT`.
    addr: String,
}

impl EmulatorProcess {
    fn start() -> anyhow::Result<Self> {
        let binary = match std::env::var_os("BRAZE_EMULATOR_BIN") {
            Some(path) => PathBuf::from(path),
            None => std::env::current_exe()?
                .parent()
                .and_then(|examples| examples.parent())
                .map(|dir| dir.join("braze-emulator"))
                .ok_or_else(|| anyhow::anyhow!("cannot locate the target folder"))?,
        };
        anyhow::ensure!(
            binary.exists(),
            "the emulator binary {} is missing; build it with `cargo build --release -p braze-emulator`, or set BRAZE_EMULATOR_BIN",
            binary.display()
        );
        let mut child = Command::new(&binary)
            .args(["--listen", "127.0.0.1:0", "--partner-name", "cohortbridge"])
            .args(["--partner-api-key", PARTNER_KEY])
            .args(["--data-import-key", DATA_IMPORT_KEY])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .ok_or_else(|| anyhow::anyhow!("the emulator printed {line:?}, not its address"))?
            .to_owned();
        Ok(Self { child, addr })
    }
}

impl Drop for EmulatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Counts the external ids of every cohort in the emulator's workspace.
async fn emulator_member_count(addr: &str) -> anyhow::Result<usize> {
    let cohorts: Vec<serde_json::Value> = reqwest::get(format!("{addr}/_emulator/cohorts"))
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(cohorts
        .iter()
        .filter_map(|c| c["user_id_count"].as_u64())
        .sum::<u64>() as usize)
}

/// Writes profiles `u<n>` with `plan` and the Braze id `ext-<n>`, 50,000 per transaction.
async fn load_profiles(
    store: &dyn Store,
    project_id: i64,
    range: std::ops::Range<usize>,
    plan: &str,
) -> anyhow::Result<()> {
    let ids: Vec<usize> = range.collect();
    for chunk in ids.chunks(50_000) {
        let updates = chunk
            .iter()
            .map(|n| {
                let mut set = Map::new();
                set.insert("plan".into(), Value::String(plan.into()));
                set.insert(
                    "$braze_external_id".into(),
                    Value::String(format!("ext-{n}")),
                );
                ProfileUpdate {
                    distinct_id: format!("u{n}"),
                    operation: ProfileOperation::Set(set),
                    last_seen_ms: None,
                    ignore_alias: false,
                }
            })
            .collect();
        store.apply_profile_updates(project_id, updates, 0).await?;
    }
    Ok(())
}

/// Times a dry run (evaluation, reading the acknowledged ids, the diff) on its own, so that
/// the run figures can be split into planning and sending.
async fn measure_preview(
    engine: &SyncEngine,
    store: &dyn Store,
    project_id: i64,
    cohort_id: i64,
    connection_id: i64,
) -> anyhow::Result<()> {
    let cohort = store
        .cohort(project_id, cohort_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("cohort {cohort_id} not found"))?;
    let connection = store
        .connection(connection_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("connection {connection_id} not found"))?;
    reset_peak_memory_of("self");
    let start_mb = resident_memory_mb("self");
    let started = Instant::now();
    let plan = engine
        .preview(project_id, &cohort, &connection)
        .await
        .map_err(|e| anyhow::anyhow!(e))?
        .plan;
    println!(
        "  dry run (evaluate, read acknowledged ids, diff): {:.2} s, {} to add, {} to remove, peak RSS {} MB (RSS at start: {start_mb} MB)",
        started.elapsed().as_secs_f64(),
        plan.adds.len(),
        plan.removes.len(),
        peak_memory_mb("self")
    );
    Ok(())
}

/// Runs the sync and prints its figures.
async fn measure_run(
    engine: &SyncEngine,
    sync_id: i64,
    label: &str,
    emulator: &EmulatorProcess,
) -> anyhow::Result<cohortbridge::store::RunCounts> {
    let start_mb = resident_memory_mb("self");
    let started = Instant::now();
    let run = engine.run(sync_id).await?;
    let wall = started.elapsed();
    anyhow::ensure!(run.status == "succeeded", "{label} failed: {:?}", run.error);
    let sent = run.counts.added + run.counts.removed;
    println!(
        "{label}: {} members, {} added, {} removed, {} requests, wall {:.2} s, {:.0} ids/s sent, {:.0} members/s evaluated and diffed, peak RSS {} MB (RSS at start: {start_mb} MB; emulator process: {} MB)",
        run.counts.members,
        run.counts.added,
        run.counts.removed,
        run.counts.requests,
        wall.as_secs_f64(),
        sent as f64 / wall.as_secs_f64(),
        run.counts.members as f64 / wall.as_secs_f64(),
        peak_memory_mb("self"),
        peak_memory_mb(&emulator.child.id().to_string())
    );
    Ok(run.counts)
}

/// Resets the peak resident set size of this process and of the emulator.
fn reset_peak_memory(emulator: &EmulatorProcess) {
    reset_peak_memory_of("self");
    reset_peak_memory_of(&emulator.child.id().to_string());
}

/// Resets the peak resident set size of process `pid` (`self` for this one). For this process
/// it first returns the freed memory that mimalloc keeps. Linux only; no effect elsewhere.
fn reset_peak_memory_of(pid: &str) {
    if pid == "self" {
        // SAFETY: `mi_collect` only releases free memory of mimalloc, this process's global
        // allocator, and may be called from any thread at any time.
        unsafe { mi_collect(true) };
    }
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// Peak resident set size of process `pid` in MB since the last reset (Linux's VmHWM), or
/// `unknown`.
fn peak_memory_mb(pid: &str) -> String {
    status_mb(pid, "VmHWM:")
}

/// Resident set size of process `pid` in MB now (Linux's VmRSS), or `unknown`.
fn resident_memory_mb(pid: &str) -> String {
    status_mb(pid, "VmRSS:")
}

/// Reads the `field` line of `/proc/PID/status`, given in kB, as MB.
fn status_mb(pid: &str, field: &str) -> String {
    let read = || -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with(field))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024)
    };
    read().map_or_else(|| "unknown".into(), |mb| mb.to_string())
}
