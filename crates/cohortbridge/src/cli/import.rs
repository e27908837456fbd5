//! `cohortbridge import events|profiles FILE...`: loads Mixpanel export files through the
//! server's own ingestion endpoints, so imported data passes the same validation and
//! deduplication as live traffic.
//!
//! Events go to `/import?strict=1` in batches of up to 2000 records, authenticated with the
//! project's API secret. Profiles go to `/engage` as `$set` updates with `$ignore_time`. A batch
//! that gets a 429, a 503 or no response is resent after a backoff, and the server deduplicates
//! it.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use flate2::read::MultiGzDecoder;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use super::table::counted;
use super::{AdminClient, ImportCommand};
use crate::ingest::local_time;

const BATCH_RECORDS: usize = 2000;
/// Batches stay under this many bytes so the server's 10 MB limit is never reached.
const BATCH_BYTES: usize = 8 * 1024 * 1024;
const MAX_ATTEMPTS: u32 = 6;
/// How many rejected records are printed; the rest are only counted.
const MAX_PRINTED_FAILURES: usize = 20;

#[derive(Default)]
struct Totals {
    sent: usize,
    imported: usize,
    failed: usize,
    printed: usize,
}

pub async fn run(
    client: &AdminClient,
    command: ImportCommand,
    json_output: bool,
) -> anyhow::Result<()> {
    let project = client.get("").await?;
    let token = project["token"]
        .as_str()
        .context("the server returned no project token")?
        .to_owned();
    let (files, kind, zone, api_secret) = match command {
        ImportCommand::Events {
            files,
            source_time_zone,
            api_secret,
        } => (files, Kind::Events, source_time_zone, api_secret),
        ImportCommand::Profiles { files } => (files, Kind::Profiles, None, None),
        ImportCommand::Currents { .. } => {
            unreachable!("Currents files are imported by cli::currents")
        }
    };
    // `/import` accepts the API secret as the Basic user, or the token with an empty password.
    let import_user = api_secret.unwrap_or_else(|| token.clone());
    let http = reqwest::Client::new();
    let mut totals = Totals::default();
    for file in &files {
        import_file(
            &http,
            client.server(),
            &token,
            &import_user,
            Source { kind, zone },
            file,
            &mut totals,
        )
        .await?;
    }
    if json_output {
        println!(
            "{}",
            json!({"sent": totals.sent, "imported": totals.imported, "failed": totals.failed})
        );
    } else {
        println!(
            "{} read, {} imported, {} rejected",
            counted(totals.sent as u64, "record"),
            totals.imported,
            totals.failed
        );
    }
    if totals.failed > 0 {
        bail!("{} rejected", counted(totals.failed as u64, "record"));
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Events,
    Profiles,
}

/// Reads a whole file, decompressing it when it is gzip (by content, not by name).
/// Reads a file, decompressing it when it starts with gzip's magic bytes, and drops a UTF-8
/// byte order mark, which some Windows tools write at the start of text files.
fn read_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    let raw = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        MultiGzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .with_context(|| format!("{} is not valid gzip", path.display()))?;
        out
    } else {
        raw
    };
    if bytes.starts_with(crate::ingest::decode::UTF8_BOM) {
        bytes.drain(..crate::ingest::decode::UTF8_BOM.len());
    }
    Ok(bytes)
}

/// Records of a file with the line each starts on, and where reading stopped early, if it did.
type Records = (Vec<(usize, Value)>, Option<Stop>);

/// What a file contains and how to read its times.
#[derive(Clone, Copy)]
struct Source {
    kind: Kind,
    /// The time zone whose wall clock the file's event times show, if not UTC.
    zone: Option<chrono_tz::Tz>,
}

/// The line where reading an NDJSON file stopped, and why.
#[derive(Debug, PartialEq, Eq)]
struct Stop {
    line: usize,
    reason: String,
}

/// Splits a file into records, each with the line it starts on. NDJSON is split on `\n` only.
/// Reading stops at the first line that is not a JSON object, such as a truncated last line or a
/// sentinel text line. The records before it are returned with the [`Stop`]. A file containing
/// one JSON array, or an object with a `results` array (Mixpanel's engage query reply), is also
/// accepted.
fn records(path: &Path, bytes: &[u8]) -> anyhow::Result<Records> {
    let trimmed = bytes.trim_ascii_start();
    if trimmed.starts_with(b"[") || (trimmed.starts_with(b"{") && !bytes.contains(&b'\n')) {
        if let Ok(value) = serde_json::from_slice::<Value>(trimmed) {
            let items = match value {
                Value::Array(items) => items,
                Value::Object(mut map) => match map.remove("results") {
                    Some(Value::Array(items)) => items,
                    _ => vec![Value::Object(map)],
                },
                other => bail!("{}: expected JSON objects, found {other}", path.display()),
            };
            return Ok((items.into_iter().map(|item| (0, item)).collect(), None));
        }
    }
    let mut out = Vec::new();
    let lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    for (index, line) in lines.iter().enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.trim_ascii().is_empty() {
            continue;
        }
        let is_last = lines[index + 1..].iter().all(|l| l.trim_ascii().is_empty());
        let reason = match serde_json::from_slice::<Value>(line) {
            Ok(value @ Value::Object(_)) => {
                out.push((index + 1, value));
                continue;
            }
            Ok(other) => format!("expected a JSON object, found {other}"),
            Err(e) if is_last && e.is_eof() => format!("the last line is truncated: {e}"),
            Err(e) if out.is_empty() => format!(
                "not valid JSON: {e}; the importer reads NDJSON (one JSON object per line) or a JSON array, so convert a CSV or other export first"
            ),
            Err(e) => format!("not valid JSON: {e}"),
        };
        let stop = Stop {
            line: index + 1,
            reason,
        };
        return Ok((out, Some(stop)));
    }
    Ok((out, None))
}

/// Returns the message and field of a record the server rejected, in the file's own terms. A
/// profile file's `$properties` travel as a `$set` update, so the server's `$set` means
/// `$properties`.
fn file_terms(kind: Kind, failure: &Value) -> (String, String) {
    let message = failure["message"].as_str().unwrap_or("invalid");
    let field = failure["field"].as_str().unwrap_or("");
    match kind {
        Kind::Events => (message.to_owned(), field.to_owned()),
        Kind::Profiles => {
            let field = match field.strip_prefix("$set") {
                Some(rest) if rest.is_empty() || rest.starts_with('.') => {
                    format!("$properties{rest}")
                }
                _ => field.to_owned(),
            };
            (message.replace("$set", "$properties"), field)
        }
    }
}

/// Returns what is wrong with an engage-export record that has no `$properties` object.
///
/// A record with only a `properties` key (a likely typo), or with none, would otherwise become
/// an empty update that stores nothing.
fn profile_problem(record: &Value) -> Option<String> {
    match record.get("$properties") {
        Some(Value::Object(_)) => None,
        Some(other) => Some(format!(
            "$properties must be an object of properties, found {}",
            crate::ingest::decode::json_type(other)
        )),
        None => {
            let keys: Vec<&str> = record
                .as_object()
                .map(|map| map.keys().map(String::as_str).collect())
                .unwrap_or_default();
            Some(format!(
                "record has no $properties object (its keys: {}); an engage export has $distinct_id and $properties",
                if keys.is_empty() { "none".to_owned() } else { keys.join(", ") }
            ))
        }
    }
}

/// Turns an engage-export record into a `$set` update.
fn profile_update(token: &str, record: &Value) -> Value {
    let distinct_id = record.get("$distinct_id").cloned().unwrap_or(Value::Null);
    let properties = record
        .get("$properties")
        .cloned()
        .unwrap_or_else(|| json!({}));
    json!({
        "$token": token,
        "$distinct_id": distinct_id,
        "$ignore_time": true,
        "$set": properties,
    })
}

async fn import_file(
    http: &reqwest::Client,
    server: &str,
    token: &str,
    api_secret: &str,
    source: Source,
    path: &Path,
    totals: &mut Totals,
) -> anyhow::Result<()> {
    let Source { kind, zone } = source;
    let bytes = read_file(path)?;
    let (mut records, stop) = records(path, &bytes)?;
    if let Some(zone) = zone {
        for (line, record) in &mut records {
            local_time::shift_event_time(record, zone)
                .with_context(|| format!("{}:{line}", path.display()))?;
        }
    }
    if kind == Kind::Profiles {
        records.retain(|(line, record)| match profile_problem(record) {
            None => true,
            Some(problem) => {
                totals.sent += 1;
                totals.failed += 1;
                if totals.printed < MAX_PRINTED_FAILURES {
                    totals.printed += 1;
                    eprintln!(
                        "{}:{line}: rejected: {problem} ($properties)",
                        path.display()
                    );
                }
                false
            }
        });
    }
    let imported_before = totals.imported;
    let progress = ProgressBar::new(records.len() as u64);
    progress.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} records ({per_sec})")
            .expect("template is valid")
            .progress_chars("=> "),
    );
    progress.set_message(path.display().to_string());

    let mut start = 0;
    while start < records.len() {
        let mut end = start;
        let mut size = 0;
        let mut lines = Vec::new();
        let mut body = Vec::new();
        while end < records.len() && end - start < BATCH_RECORDS {
            let record = match kind {
                Kind::Events => records[end].1.clone(),
                Kind::Profiles => profile_update(token, &records[end].1),
            };
            let encoded = crate::ingest::ndjson::line(&record)?;
            if size + encoded.len() > BATCH_BYTES && end > start {
                break;
            }
            size += encoded.len() + 1;
            body.extend(encoded);
            body.push(b'\n');
            lines.push(records[end].0);
            end += 1;
        }
        let reply = send_batch(http, server, api_secret, kind, body).await?;
        totals.sent += end - start;
        let failures: Vec<Value> = reply
            .get("failed_records")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        totals.failed += failures.len();
        totals.imported += reply
            .get("num_records_imported")
            .and_then(Value::as_u64)
            .map(|n| n as usize)
            .unwrap_or(end - start - failures.len());
        for failure in failures {
            if totals.printed >= MAX_PRINTED_FAILURES {
                break;
            }
            totals.printed += 1;
            let index = failure["index"].as_u64().unwrap_or(0) as usize;
            let line = lines.get(index).copied().unwrap_or(0);
            let (message, field) = file_terms(kind, &failure);
            progress
                .suspend(|| eprintln!("{}:{line}: rejected: {message} ({field})", path.display()));
        }
        progress.inc((end - start) as u64);
        start = end;
    }
    progress.finish();
    if let Some(stop) = stop {
        bail!(
            "{}:{}: {}; {} records of this file were imported before it, and the rest of the file was not read",
            path.display(),
            stop.line,
            stop.reason,
            totals.imported - imported_before
        );
    }
    Ok(())
}

/// Sends one batch, retrying 429, 5xx and connection errors with backoff. A batch that the
/// server rejects in part returns its `failed_records`; the valid records were stored.
async fn send_batch(
    http: &reqwest::Client,
    server: &str,
    api_secret: &str,
    kind: Kind,
    body: Vec<u8>,
) -> anyhow::Result<Value> {
    let url = match kind {
        Kind::Events => format!("{server}/import?strict=1"),
        Kind::Profiles => format!("{server}/engage?verbose=1"),
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut request = http
            .post(&url)
            .header("content-type", "application/x-ndjson")
            .body(body.clone());
        if kind == Kind::Events {
            request = request.basic_auth(api_secret, Some(""));
        }
        let retry_reason = match request.send().await {
            Ok(response) => {
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
                if status.is_success()
                    || (kind == Kind::Events
                        && status.as_u16() == 400
                        && value.get("failed_records").is_some())
                {
                    return Ok(value);
                }
                if status.as_u16() == 429 || status.is_server_error() {
                    format!("HTTP {}", status.as_u16())
                } else if kind == Kind::Profiles && value.get("failed_records").is_some() {
                    // `/engage` stored the valid updates and lists the rejected ones.
                    let rejected = value["failed_records"].as_array().map_or(0, Vec::len);
                    let count = body
                        .split(|b| *b == b'\n')
                        .filter(|l| !l.is_empty())
                        .count();
                    let mut reply = value.clone();
                    reply["num_records_imported"] = json!(count.saturating_sub(rejected));
                    return Ok(reply);
                } else {
                    bail!("{url} returned HTTP {}: {value}", status.as_u16());
                }
            }
            Err(e) => format!("request failed: {e}"),
        };
        if attempt >= MAX_ATTEMPTS {
            bail!("{url}: giving up after {attempt} attempts; last error: {retry_reason}");
        }
        let delay = Duration::from_millis(250 * 2u64.pow(attempt - 1));
        eprintln!(
            "{url}: {retry_reason}; retrying in {} ms",
            delay.as_millis()
        );
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::decode;

    #[test]
    fn byte_order_mark_is_dropped_before_parsing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.ndjson");
        std::fs::write(&path, b"\xEF\xBB\xBF{\"a\":1}\n{\"a\":2}\n").unwrap();
        let bytes = read_file(&path).unwrap();
        let (records, stop) = records(&path, &bytes).unwrap();
        assert_eq!(stop, None);
        assert_eq!(records.len(), 2);
        assert_eq!(records[0], (1, json!({"a": 1})));
    }

    #[test]
    fn profile_records_need_a_properties_object() {
        assert_eq!(
            profile_problem(&json!({"$distinct_id": "a", "$properties": {}})),
            None
        );
        let typo = profile_problem(&json!({"$distinct_id": "a", "properties": {"x": 1}})).unwrap();
        assert!(typo.contains("no $properties object"), "{typo}");
        assert!(typo.contains("$distinct_id, properties"), "{typo}");
        let string = profile_problem(&json!({"$distinct_id": "a", "$properties": "x"})).unwrap();
        assert!(string.contains("found a string"), "{string}");
    }

    #[test]
    fn profile_failures_use_file_terms() {
        let failure = json!({"index": 0, "field": "$set",
            "message": "$set must be an object of properties, found a string"});
        assert_eq!(
            file_terms(Kind::Profiles, &failure),
            (
                "$properties must be an object of properties, found a string".to_owned(),
                "$properties".to_owned()
            )
        );
        let nested = json!({"field": "$set.plan", "message": "bad"});
        assert_eq!(file_terms(Kind::Profiles, &nested).1, "$properties.plan");
        let other = json!({"field": "$set_once", "message": "m"});
        assert_eq!(file_terms(Kind::Profiles, &other).1, "$set_once");
        assert_eq!(file_terms(Kind::Events, &failure).1, "$set");
    }

    #[test]
    fn ndjson_records_keep_line_numbers() {
        let bytes = b"{\"a\":1}\n\n{\"a\":2}\r\n";
        let (records, stop) = records(Path::new("f"), bytes).unwrap();
        assert_eq!(records.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(stop, None);
    }

    #[test]
    fn engage_query_reply_is_accepted() {
        let bytes =
            br#"{"results": [{"$distinct_id": "u", "$properties": {"plan": "pro"}}], "page": 0}"#;
        let (records, _) = records(Path::new("f"), bytes).unwrap();
        assert_eq!(records.len(), 1);
        let update = profile_update("tok", &records[0].1);
        assert_eq!(update["$set"]["plan"], "pro");
        assert_eq!(update["$ignore_time"], true);
    }

    #[test]
    fn reading_stops_at_bad_line() {
        let cases: [(&[u8], usize, &str); 4] = [
            (b"{}\n{oops}\n{}\n", 2, "not valid JSON"),
            (b"{}\n{}\n{\"event\":\"cut", 3, "the last line is truncated"),
            (
                b"{}\n{}\n{\"event\":\"cut\n\n",
                3,
                "the last line is truncated",
            ),
            (b"{}\nEXPORT COMPLETE\n", 2, "not valid JSON"),
        ];
        for (bytes, line, reason) in cases {
            let (records, stop) = records(Path::new("f.ndjson"), bytes).unwrap();
            let stop = stop.expect("reading stops");
            assert_eq!(stop.line, line, "{}", stop.reason);
            assert!(stop.reason.contains(reason), "{}", stop.reason);
            assert_eq!(records.len(), line - 1);
        }
        let (_, stop) = records(Path::new("f.ndjson"), b"{}\n42\n").unwrap();
        assert!(stop.unwrap().reason.contains("found 42"));
    }

    #[test]
    fn gzip_is_detected_by_content() {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(b"{\"a\":1}\n").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.ndjson");
        std::fs::write(&path, encoder.finish().unwrap()).unwrap();
        assert_eq!(read_file(&path).unwrap(), b"{\"a\":1}\n");
    }

    #[test]
    fn decode_module_agrees_on_ndjson() {
        let bytes = b"{\"a\":1}\n{\"a\":2}\n";
        assert_eq!(
            decode::parse_records(bytes).unwrap().len(),
            records(Path::new("f"), bytes).unwrap().0.len()
        );
    }
}
