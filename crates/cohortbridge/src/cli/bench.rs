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
//! memory only when `--server-pid` is given. With `--database-url` the started servers use a
//! fresh schema in that PostgreSQL database, dropped afterwards, and `--nodes` starts several
//! servers on it, to which the clients send requests in turn.

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
    /// PostgreSQL database for the servers that `--start-server` starts. The command creates a
    /// schema of its own in it and drops the schema afterwards.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Servers to start on one database with `--start-server`; more than one needs
    /// `--database-url`.
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// Event times: `spread` draws them at random over the last 30 days, like a backfill of
    /// shuffled history. `live` sends them in order over the last minutes, as SDKs do.
    #[arg(long, value_enum, default_value_t = EventTimes::Spread)]
    pub times: EventTimes,
    /// Events to post before the measured run, untimed, so that the figures describe a server
    /// that has already grown its memory and caches. Rounded up to whole requests of `--batch`
    /// events. They come before the measured events (earlier in time with `--times live`) and
    /// count in no figure.
    #[arg(long, default_value_t = 0)]
    pub warmup: usize,
}

/// The order of the event times that `bench ingest` sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EventTimes {
    Spread,
    Live,
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

/// Settings shared by the servers that one benchmark starts.
struct ServerSettings<'a> {
    admin_key: &'a str,
    secret_key: &'a str,
    /// The schema-qualified database URL, or `None` for SQLite.
    database_url: Option<&'a str>,
}

fn start_server(
    settings: &ServerSettings<'_>,
    node: usize,
) -> anyhow::Result<(OwnedServer, String)> {
    let data_dir = std::env::temp_dir().join(format!(
        "cohortbridge-bench-{}-{}-{node}",
        std::process::id(),
        chrono::Utc::now().timestamp_millis()
    ));
    let executable = std::env::current_exe().context("cannot find the cohortbridge binary")?;
    let mut process = Process::new(executable);
    process
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data_dir)
        .env("COHORTBRIDGE_ADMIN_KEY", settings.admin_key)
        .env("COHORTBRIDGE_SECRET_KEY", settings.secret_key)
        .env_remove("COHORTBRIDGE_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(url) = settings.database_url {
        process.env("COHORTBRIDGE_DATABASE_URL", url);
    }
    let mut child = process.spawn().context("cannot start cohortbridge serve")?;
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

/// A PostgreSQL schema that the benchmark creates for its servers.
struct BenchSchema {
    client: tokio_postgres::Client,
    name: String,
    /// The database URL with the schema as its search path.
    url: String,
}

impl BenchSchema {
    async fn create(database_url: &str) -> anyhow::Result<Self> {
        let shown = crate::store::redact_url(database_url);
        let (client, connection) = tokio_postgres::connect(database_url, tokio_postgres::NoTls)
            .await
            .with_context(|| format!("cannot connect to --database-url {shown}"))?;
        tokio::spawn(connection);
        let name = format!("bench_{}", crate::secrets::random_token(6));
        client
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .await
            .with_context(|| format!("cannot create the schema {name} in {shown}"))?;
        let separator = if database_url.contains('?') { '&' } else { '?' };
        let url = format!("{database_url}{separator}options=-c%20search_path%3D{name}");
        Ok(Self { client, name, url })
    }

    async fn drop_schema(self) {
        let drop = format!("DROP SCHEMA {} CASCADE", self.name);
        if let Err(e) = self.client.batch_execute(&drop).await {
            eprintln!("cannot drop the benchmark schema {}: {e}", self.name);
        }
    }
}

/// Peak resident memory of a process in KiB, from `VmHWM` in `/proc/<pid>/status`.
fn peak_memory_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Reads the CPU time, user plus system, that process `pid` has used so far, in seconds
/// (fields 14 and 15 of `/proc/<pid>/stat`, in clock ticks).
#[cfg(unix)]
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name in field 2 may hold spaces; the fields after it are plain numbers.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (user + system) as f64 / ticks as f64)
}

#[cfg(not(unix))]
fn cpu_seconds(_pid: u32) -> Option<f64> {
    None
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

/// Generates `count` events before `now_secs`, as bodies of `batch` events. With
/// [`EventTimes::Live`] the times rise by 5 ms an event and end at `now_secs`.
fn generate_bodies(
    count: usize,
    batch: usize,
    now_secs: i64,
    times: EventTimes,
) -> Vec<(usize, Vec<u8>)> {
    let mut rng = StdRng::seed_from_u64(7);
    let mut bodies = Vec::new();
    let mut produced = 0;
    while produced < count {
        let size = batch.min(count - produced);
        let events: Vec<Value> = (0..size)
            .map(|i| {
                let n = produced + i;
                let time = match times {
                    EventTimes::Spread => json!(now_secs - rng.gen_range(60..30 * 86_400)),
                    EventTimes::Live => json!(now_secs * 1000 - 5 * (count - n) as i64),
                };
                json!({
                    "event": EVENT_NAMES[rng.gen_range(0..EVENT_NAMES.len())],
                    "properties": {
                        "time": time,
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
    if args.nodes == 0 || (args.nodes > 1 && args.database_url.is_none()) {
        bail!(
            "invalid --nodes {}: use 1, or more with --database-url",
            args.nodes
        );
    }
    if (args.nodes > 1 || args.database_url.is_some()) && !args.start_server {
        bail!("--nodes and --database-url apply to servers that --start-server starts");
    }
    if let Some(url) = &args.database_url {
        crate::store::Database::from_settings(Some(url), std::path::Path::new("."), 1)?;
    }
    let schema = match &args.database_url {
        Some(url) => Some(BenchSchema::create(url).await?),
        None => None,
    };
    let outcome = measure(client, &args, schema.as_ref().map(|s| s.url.as_str())).await;
    if let Some(schema) = schema {
        schema.drop_schema().await;
    }
    outcome
}

/// Posts `bodies` to `/import` from `clients` concurrent clients and returns how many events
/// were imported. Each client takes the next body once its previous request has a response.
async fn post_bodies(
    http: &reqwest::Client,
    urls: &Arc<Vec<String>>,
    import_user: &str,
    bodies: Vec<(usize, Vec<u8>)>,
    clients: usize,
) -> anyhow::Result<u64> {
    let bodies: Arc<Vec<axum::body::Bytes>> = Arc::new(
        bodies
            .into_iter()
            .map(|(_, body)| axum::body::Bytes::from(body))
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (bodies, next, http, urls, secret) = (
            bodies.clone(),
            next.clone(),
            http.clone(),
            urls.clone(),
            import_user.to_owned(),
        );
        tasks.spawn(async move {
            let mut imported = 0u64;
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(index) else {
                    return Ok::<u64, anyhow::Error>(imported);
                };
                // Requests go to the servers in turn.
                let url = &urls[index % urls.len()];
                let response = http
                    .post(url)
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
    Ok(imported)
}

/// Starts the servers (or uses `--server`), posts the events and prints the figures.
async fn measure(
    client: &ClientArgs,
    args: &IngestArgs,
    database_url: Option<&str>,
) -> anyhow::Result<()> {
    let mut owned = Vec::new();
    let (servers, admin_key) = if args.start_server {
        let settings = ServerSettings {
            admin_key: &crate::secrets::random_token(24),
            secret_key: &crate::secrets::random_token(32),
            database_url,
        };
        let mut servers = Vec::new();
        // One after the other, so that the first creates the project and the others find it.
        for node in 0..args.nodes {
            let (server, address) = start_server(&settings, node)?;
            owned.push(server);
            servers.push(address);
        }
        (servers, settings.admin_key.to_owned())
    } else {
        let key = client
            .admin_key
            .clone()
            .context("no admin key: pass --admin-key, or use --start-server")?;
        (vec![client.server.clone()], key)
    };
    let pids: Vec<u32> = if args.start_server {
        owned.iter().map(|server| server.child.id()).collect()
    } else {
        args.server_pid.into_iter().collect()
    };
    let admin = AdminClient::new(&servers[0], &admin_key, client.project)?;
    let project = admin.get("").await?;
    // `/import` takes the project token as the Basic user with an empty password, so the run
    // needs no secret, and a server's API secret is never replaced by a benchmark.
    let import_user = project["token"]
        .as_str()
        .context("the server returned no project token")?
        .to_owned();

    // The warm-up fills whole bodies, so that the measured events are exactly `events`.
    let warmup_events = args.warmup.div_ceil(args.batch) * args.batch;
    eprintln!("generating {} events...", warmup_events + args.events);
    let mut bodies = generate_bodies(
        warmup_events + args.events,
        args.batch,
        chrono::Utc::now().timestamp(),
        args.times,
    );
    let warmup_bodies: Vec<_> = bodies.drain(..warmup_events / args.batch).collect();
    let events: usize = bodies.iter().map(|(size, _)| size).sum();
    let bytes: usize = bodies.iter().map(|(_, body)| body.len()).sum();

    let parse_started = Instant::now();
    for (_, body) in &bodies {
        let records = decode::parse_records(body)?;
        std::hint::black_box(records);
    }
    let parse_secs = parse_started.elapsed().as_secs_f64();

    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients)
        .build()?;
    let urls: Arc<Vec<String>> = Arc::new(
        servers
            .iter()
            .map(|server| format!("{server}/import"))
            .collect(),
    );
    if !warmup_bodies.is_empty() {
        eprintln!("warming up with {warmup_events} events...");
        let warmed = post_bodies(&http, &urls, &import_user, warmup_bodies, args.clients).await?;
        if warmed != warmup_events as u64 {
            bail!("{warmup_events} warm-up events were sent but {warmed} imported");
        }
    }
    eprintln!(
        "posting {} requests from {} clients to /import on {}...",
        bodies.len(),
        args.clients,
        servers.join(", ")
    );
    let cpu_before: Vec<Option<f64>> = pids.iter().map(|pid| cpu_seconds(*pid)).collect();
    let started = Instant::now();
    let imported = post_bodies(&http, &urls, &import_user, bodies, args.clients).await?;
    let secs = started.elapsed().as_secs_f64();
    let server_cpu: Option<f64> = pids
        .iter()
        .zip(&cpu_before)
        .map(|(pid, before)| Some(cpu_seconds(*pid)? - (*before)?))
        .sum();
    let memory: Vec<u64> = pids
        .iter()
        .filter_map(|pid| peak_memory_kib(*pid))
        .collect();
    drop(owned);

    let rate = imported as f64 / secs;
    let parse_rate = events as f64 / parse_secs;
    let database = match database_url {
        Some(url) => format!("PostgreSQL {}", crate::store::redact_url(url)),
        None if args.start_server => "SQLite".to_owned(),
        None => "the running server's".to_owned(),
    };
    println!("database:                {database}");
    println!("servers:                 {}", servers.len());
    if warmup_events > 0 {
        println!("warm-up events:          {warmup_events} (not measured)");
    }
    println!("events sent:             {events}");
    println!("events imported:         {imported}");
    println!("payload:                 {:.1} MB", bytes as f64 / 1e6);
    println!("wall time:               {secs:.2} s");
    println!("throughput:              {rate:.0} events/s");
    println!("serde_json parse alone:  {parse_rate:.0} events/s (one thread)");
    println!("ratio serde_json/server: {:.2}", parse_rate / rate);
    match server_cpu {
        Some(cpu) if cpu > 0.0 => println!(
            "server CPU time:         {cpu:.2} s, {:.0} events per CPU second",
            imported as f64 / cpu
        ),
        _ => println!("server CPU time:         unknown (pass --server-pid or --start-server)"),
    }
    match memory.iter().max() {
        Some(kib) => println!(
            "server peak memory:      {:.1} MiB (VmHWM, largest server)",
            *kib as f64 / 1024.0
        ),
        None => println!("server peak memory:      unknown (pass --server-pid or --start-server)"),
    }
    if imported != events as u64 {
        bail!("{events} events were sent but {imported} imported");
    }
    Ok(())
}
