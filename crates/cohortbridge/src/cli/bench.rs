//! `cohortbridge bench ingest`: measures ingestion throughput over HTTP.
//!
//! The command generates realistic events (a mix of event names, a pool of users, ten or so
//! properties each), encodes them as 2000-event JSON array bodies, and posts them to
//! `/import` from concurrent clients. It reports events per second with durable commits
//! included, the server's peak resident memory (`VmHWM` from `/proc/<pid>/status`, on Linux),
//! and the rate at which `serde_json` alone parses the same bodies on one thread, as a floor.
//!
//! With `--start-server` the command starts `cohortbridge serve` itself on 127.0.0.1 with a
//! fresh data folder, so the memory figure is exact. Otherwise it uses `--server`, and reads
//! memory only when `--server-pid` is given.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command as Process, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use super::{AdminClient, ClientArgs};
use crate::ingest::decode;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Post generated events to `/import` and report events per second and peak memory.
    Ingest(IngestArgs),
    /// Time the monthly MTU report on a generated month of events, and check it is exact.
    Mtu(super::bench_mtu::MtuArgs),
}

#[derive(Debug, Clone, Args)]
pub struct IngestArgs {
    /// Number of concurrent HTTP clients.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Total number of events to send.
    #[arg(long, default_value_t = 200_000)]
    pub events: usize,
    /// Events per `/import` request (Mixpanel's maximum is 2000).
    #[arg(long, default_value_t = 2000)]
    pub batch: usize,
    /// Start a server for the run, with a fresh data folder under the system temp folder,
    /// instead of using `--server`.
    #[arg(long)]
    pub start_server: bool,
    /// Process id of the server behind `--server`, to read its peak memory.
    #[arg(long)]
    pub server_pid: Option<u32>,
}

/// A server this command started, stopped and removed when dropped.
struct OwnedServer {
    child: Child,
    data_dir: PathBuf,
}

impl Drop for OwnedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

fn start_server(admin_key: &str) -> anyhow::Result<(OwnedServer, String)> {
    let data_dir = std::env::temp_dir().join(format!(
        "cohortbridge-bench-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_millis()
    ));
    let executable = std::env::current_exe().context("cannot find the cohortbridge binary")?;
    let mut child = Process::new(executable)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data_dir)
        .env("COHORTBRIDGE_ADMIN_KEY", admin_key)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start cohortbridge serve")?;
    let stdout = child.stdout.take().context("server stdout is not piped")?;
    let server = OwnedServer { child, data_dir };
    for line in BufReader::new(stdout).lines() {
        let line = line.context("cannot read the server's output")?;
        if let Some(address) = line.strip_prefix("listening on ") {
            return Ok((server, address.to_owned()));
        }
    }
    bail!("the server stopped before printing its address")
}

/// Peak resident memory of a process in KiB, from `VmHWM` in `/proc/<pid>/status`.
fn peak_memory_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

const EVENT_NAMES: &[&str] = &[
    "Page Viewed",
    "Song Played",
    "Added To Cart",
    "Purchase",
    "Signed Up",
    "Search",
    "Shared",
];
const BROWSERS: &[&str] = &["Chrome", "Safari", "Firefox", "Edge"];
const OSES: &[&str] = &["Windows", "Mac OS X", "iOS", "Android", "Linux"];
const CITIES: &[&str] = &["Berlin", "Lisbon", "Austin", "Osaka", "Nairobi", "Lima"];

/// Generates `count` events spread over the 30 days before `now_secs`, as 2000-event bodies.
fn generate_bodies(count: usize, batch: usize, now_secs: i64) -> Vec<(usize, Vec<u8>)> {
    let mut rng = StdRng::seed_from_u64(7);
    let mut bodies = Vec::new();
    let mut produced = 0;
    while produced < count {
        let size = batch.min(count - produced);
        let events: Vec<Value> = (0..size)
            .map(|i| {
                let n = produced + i;
                json!({
                    "event": EVENT_NAMES[rng.gen_range(0..EVENT_NAMES.len())],
                    "properties": {
                        "time": now_secs - rng.gen_range(60..30 * 86_400),
                        "distinct_id": format!("user-{}", rng.gen_range(0..50_000)),
                        "$insert_id": format!("bench-{n:012}-{:08x}", rng.gen::<u32>()),
                        "$browser": BROWSERS[rng.gen_range(0..BROWSERS.len())],
                        "$os": OSES[rng.gen_range(0..OSES.len())],
                        "$city": CITIES[rng.gen_range(0..CITIES.len())],
                        "mp_lib": "web",
                        "plan": if rng.gen_bool(0.2) { "pro" } else { "free" },
                        "price": (rng.gen_range(100..10_000) as f64) / 100.0,
                        "item_count": rng.gen_range(1..10),
                        "utm_source": "newsletter",
                        "$current_url": format!("https://shop.example.com/p/{}", rng.gen_range(0..5000)),
                    }
                })
            })
            .collect();
        bodies.push((size, serde_json::to_vec(&events).expect("JSON serialises")));
        produced += size;
    }
    bodies
}

pub async fn run(client: &ClientArgs, command: BenchCommand) -> anyhow::Result<()> {
    let args = match command {
        BenchCommand::Ingest(args) => args,
        BenchCommand::Mtu(args) => return super::bench_mtu::run(args).await,
    };
    if args.clients == 0 || args.events == 0 || !(1..=2000).contains(&args.batch) {
        bail!("--clients and --events must be at least 1, and --batch from 1 to 2000");
    }
    let (owned, server, admin_key, pid) = if args.start_server {
        let key = crate::secrets::random_token(24);
        let (owned, address) = start_server(&key)?;
        let pid = owned.child.id();
        (Some(owned), address, key, Some(pid))
    } else {
        let key = client
            .admin_key
            .clone()
            .context("no admin key: pass --admin-key, or use --start-server")?;
        (None, client.server.clone(), key, args.server_pid)
    };
    let admin = AdminClient::new(&server, &admin_key, client.project)?;
    let project = admin.get("").await?;
    let api_secret = project["api_secret"]
        .as_str()
        .context("the server returned no API secret")?
        .to_owned();

    eprintln!("generating {} events...", args.events);
    let bodies = generate_bodies(args.events, args.batch, chrono::Utc::now().timestamp());
    let bytes: usize = bodies.iter().map(|(_, body)| body.len()).sum();

    let parse_started = Instant::now();
    for (_, body) in &bodies {
        let records = decode::parse_records(body)?;
        std::hint::black_box(records);
    }
    let parse_secs = parse_started.elapsed().as_secs_f64();

    eprintln!(
        "posting {} requests from {} clients to {server}/import...",
        bodies.len(),
        args.clients
    );
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicUsize::new(0));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients)
        .build()?;
    let url = format!("{server}/import");
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.clients {
        let (bodies, next, http, url, secret) = (
            bodies.clone(),
            next.clone(),
            http.clone(),
            url.clone(),
            api_secret.clone(),
        );
        tasks.spawn(async move {
            let mut imported = 0u64;
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some((_, body)) = bodies.get(index) else {
                    return Ok::<u64, anyhow::Error>(imported);
                };
                let response = http
                    .post(&url)
                    .basic_auth(&secret, Some(""))
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await?;
                let status = response.status();
                let reply: Value = response.json().await.unwrap_or(Value::Null);
                if !status.is_success() {
                    bail!("{url} returned HTTP {status}: {reply}");
                }
                imported += reply["num_records_imported"].as_u64().unwrap_or(0);
            }
        });
    }
    let mut imported = 0;
    while let Some(result) = tasks.join_next().await {
        imported += result??;
    }
    let secs = started.elapsed().as_secs_f64();
    let memory = pid.and_then(peak_memory_kib);
    drop(owned);

    let rate = imported as f64 / secs;
    let parse_rate = args.events as f64 / parse_secs;
    println!("events sent:             {}", args.events);
    println!("events imported:         {imported}");
    println!("payload:                 {:.1} MB", bytes as f64 / 1e6);
    println!("wall time:               {secs:.2} s");
    println!("throughput:              {rate:.0} events/s");
    println!("serde_json parse alone:  {parse_rate:.0} events/s (one thread)");
    println!("ratio serde_json/server: {:.2}", parse_rate / rate);
    match memory {
        Some(kib) => println!(
            "server peak memory:      {:.1} MiB (VmHWM)",
            kib as f64 / 1024.0
        ),
        None => println!("server peak memory:      unknown (pass --server-pid or --start-server)"),
    }
    if imported != args.events as u64 {
        bail!("{} events were sent but {imported} imported", args.events);
    }
    Ok(())
}
