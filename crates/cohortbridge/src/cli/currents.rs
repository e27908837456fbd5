//! `cohortbridge import currents PATH...`: loads Braze Currents storage files (Avro) through
//! the server's `/currents` endpoint, so they pass the same mapping, checks, quarantine and
//! deduplication as the HTTP connector's batches.
//!
//! Folders are walked for `*.avro` files in Braze's layout. Imported files are remembered in a
//! state file (one `size<TAB>path` line per file), so a later run or `--watch` skips them. A
//! file that changed size is imported again, which the insert ids make harmless.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use super::table::counted;
use super::AdminClient;
use crate::braze::currents_avro;

/// Events per `/currents` request; Braze's own connector sends batches of up to 100, and the
/// endpoint accepts any number under its size limit.
const BATCH_EVENTS: usize = 1000;
/// A file modified more recently than this may still be being written, so `--watch` waits.
const SETTLE_TIME: Duration = Duration::from_secs(2);

pub struct Options {
    pub paths: Vec<PathBuf>,
    pub watch: bool,
    pub interval: Duration,
    pub state_file: PathBuf,
    /// The project's Currents token, sent as the bearer token.
    pub token: String,
}

#[derive(Default)]
struct Totals {
    files: usize,
    /// Files that the state file lists as imported by an earlier run.
    skipped_files: usize,
    accepted: u64,
    quarantined: u64,
    failed_files: usize,
}

pub async fn run(client: &AdminClient, options: Options, json_output: bool) -> anyhow::Result<()> {
    let token = options.token.clone();
    let mut imported = load_state(&options.state_file)?;
    let http = reqwest::Client::new();
    let mut totals = Totals::default();

    loop {
        let mut files = Vec::new();
        for path in &options.paths {
            collect_avro_files(path, &mut files)
                .with_context(|| format!("cannot read {}", path.display()))?;
        }
        files.sort();
        for file in files {
            let key = state_key(&file)?;
            if imported.contains(&key) {
                if !options.watch {
                    totals.skipped_files += 1;
                    eprintln!("{}: skipped, imported by an earlier run", file.display());
                }
                continue;
            }
            if options.watch && !settled(&file) {
                continue;
            }
            match import_file(&http, client.server(), &token, &file, &mut totals).await {
                Ok(()) => {
                    append_state(&options.state_file, &key)?;
                    imported.insert(key);
                    totals.files += 1;
                    if options.watch {
                        eprintln!("{}: imported", file.display());
                    }
                }
                Err(e) => {
                    totals.failed_files += 1;
                    eprintln!("{}: not imported: {e:#}", file.display());
                }
            }
        }
        if !options.watch {
            break;
        }
        tokio::time::sleep(options.interval).await;
    }

    if json_output {
        println!(
            "{}",
            json!({"files": totals.files, "skipped_files": totals.skipped_files,
                "accepted": totals.accepted, "quarantined": totals.quarantined,
                "failed_files": totals.failed_files})
        );
    } else {
        println!(
            "{} imported: {} accepted, {} quarantined; {} skipped as imported earlier; {} failed",
            counted(totals.files as u64, "file"),
            counted(totals.accepted, "event"),
            totals.quarantined,
            totals.skipped_files,
            totals.failed_files
        );
    }
    if totals.failed_files > 0 {
        bail!(
            "{} could not be imported",
            counted(totals.failed_files as u64, "file")
        );
    }
    Ok(())
}

fn collect_avro_files(path: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if path.is_file() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let child = entry.path();
        if entry.file_type()?.is_dir() {
            collect_avro_files(&child, out)?;
        } else if child.extension().is_some_and(|ext| ext == "avro") {
            out.push(child);
        }
    }
    Ok(())
}

fn settled(path: &Path) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|modified| SystemTime::now().duration_since(modified).ok())
        .is_some_and(|age| age >= SETTLE_TIME)
}

fn state_key(path: &Path) -> anyhow::Result<String> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    let absolute = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    Ok(format!("{size}\t{}", absolute.display()))
}

fn load_state(path: &Path) -> anyhow::Result<HashSet<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HashSet::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read the state file {}", path.display())),
    }
}

/// Records one imported file, flushed to disk before the next file starts.
fn append_state(path: &Path, key: &str) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot write the state file {}", path.display()))?;
    writeln!(file, "{key}")?;
    file.sync_all()?;
    Ok(())
}

async fn import_file(
    http: &reqwest::Client,
    server: &str,
    token: &str,
    path: &Path,
    totals: &mut Totals,
) -> anyhow::Result<()> {
    let file = currents_avro::read_file(path)?;
    let progress = ProgressBar::new(file.events.len() as u64);
    progress.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} events")
            .expect("template is valid")
            .progress_chars("=> "),
    );
    progress.set_message(file.event_type.clone());
    for batch in file.events.chunks(BATCH_EVENTS) {
        let reply = post_batch(http, server, token, batch).await?;
        totals.accepted += reply["accepted"].as_u64().unwrap_or(0);
        totals.quarantined += reply["quarantined"].as_u64().unwrap_or(0);
        progress.inc(batch.len() as u64);
    }
    progress.finish_and_clear();
    Ok(())
}

/// Posts one batch, retrying 503 and connection errors with backoff, as Braze's connector does.
async fn post_batch(
    http: &reqwest::Client,
    server: &str,
    token: &str,
    events: &[Value],
) -> anyhow::Result<Value> {
    let url = format!("{server}/currents");
    let body = json!({"events": events});
    let mut delay = Duration::from_millis(250);
    for attempt in 1..=6 {
        let result = http.post(&url).bearer_auth(token).json(&body).send().await;
        let reason = match result {
            Ok(response) if response.status().is_success() => return Ok(response.json().await?),
            Ok(response) if response.status().is_server_error() || response.status() == 429 => {
                format!("HTTP {}", response.status().as_u16())
            }
            Ok(response) => {
                let status = response.status().as_u16();
                bail!(
                    "{url} returned HTTP {status}: {}",
                    response.text().await.unwrap_or_default()
                )
            }
            Err(e) => format!("request failed: {e}"),
        };
        if attempt == 6 {
            bail!("{url}: giving up after {attempt} attempts; last error: {reason}");
        }
        eprintln!("{url}: {reason}; retrying in {} ms", delay.as_millis());
        tokio::time::sleep(delay).await;
        delay *= 2;
    }
    unreachable!("the loop returns or fails on its last attempt")
}
