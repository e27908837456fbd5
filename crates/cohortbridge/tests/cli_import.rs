//! `cohortbridge import events` on damaged and local-time exports, and `projects set`, run as
//! the real binary against a server started in-process.

mod common;

use std::process::{Command, Output};

use common::{TestServer, ADMIN_KEY};
use serde_json::{json, Value};

async fn run(server: &TestServer, args: &[&str]) -> Output {
    let base = server.base.clone();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_cohortbridge"))
            .arg("--server")
            .arg(base)
            .args(args)
            .env("COHORTBRIDGE_ADMIN_KEY", ADMIN_KEY)
            .output()
            .expect("the cohortbridge binary runs")
    })
    .await
    .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn export_lines(count: usize, distinct_id: &str) -> String {
    (0..count)
        .map(|i| {
            let record = json!({"event": "Exported", "properties": {"time": 1700000000 + i,
                "distinct_id": distinct_id, "$insert_id": format!("x-{i}")}});
            format!("{record}\n")
        })
        .collect()
}

#[tokio::test]
async fn import_reports_truncated_last_line() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.ndjson");
    let text = format!(
        "{}{{\"event\":\"Exported\",\"properties\":{{\"ti",
        export_lines(3, "u-cut")
    );
    std::fs::write(&path, text).unwrap();

    let output = run(&server, &["import", "events", path.to_str().unwrap()]).await;
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains("cut.ndjson:4"), "{message}");
    assert!(message.contains("the last line is truncated"), "{message}");
    assert!(
        message.contains("3 records of this file were imported"),
        "{message}"
    );
    assert_eq!(server.event_count().await, 3);
    server.stop().await;
}

#[tokio::test]
async fn import_reports_sentinel_line() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sentinel.ndjson");
    let text = format!(
        "{}Export finished\n{}",
        export_lines(2, "u-a"),
        export_lines(2, "u-b")
    );
    std::fs::write(&path, text).unwrap();

    let output = run(&server, &["import", "events", path.to_str().unwrap()]).await;
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains("sentinel.ndjson:3"), "{message}");
    assert!(
        message.contains("2 records of this file were imported"),
        "{message}"
    );
    assert_eq!(server.event_count().await, 2);
    server.stop().await;
}

#[tokio::test]
async fn import_converts_source_time_zone() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("local.ndjson");
    // 2023-07-15T12:00:00 as a Berlin wall clock (UTC+2 in summer) is 10:00 UTC.
    let record = json!({"event": "Local", "properties": {"time": 1689422400,
        "distinct_id": "u-local", "$insert_id": "local-1"}});
    std::fs::write(&path, format!("{record}\n")).unwrap();

    let bad = run(
        &server,
        &[
            "import",
            "events",
            "--source-time-zone",
            "Mars/Olympus",
            path.to_str().unwrap(),
        ],
    )
    .await;
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("Mars/Olympus"), "{}", stderr(&bad));

    let args = ["import", "events", "--source-time-zone", "Europe/Berlin"];
    let output = run(&server, &[&args[..], &[path.to_str().unwrap()]].concat()).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let events = server.admin_get("/events?distinct_id=u-local").await;
    assert_eq!(events[0]["time_ms"], 1_689_415_200_000_i64);
    server.stop().await;
}

#[tokio::test]
async fn projects_set_identity_mode() {
    let server = TestServer::start().await;
    let output = run(&server, &["projects", "set", "--identity-mode", "original"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let mode: Value = server.admin_get("/identity-mode").await;
    assert_eq!(mode["identity_mode"], "original");

    let bad = run(&server, &["projects", "set", "--identity-mode", "other"]).await;
    assert!(!bad.status.success());
    server.stop().await;
}

/// Runs `bench ingest --start-server --clients 2` with `args` added.
async fn bench_ingest(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_cohortbridge"))
            .args(["bench", "ingest", "--start-server", "--clients", "2"])
            .args(args)
            .env_remove("COHORTBRIDGE_ADMIN_KEY")
            .output()
            .expect("the cohortbridge binary runs")
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn bench_ingest_reports_throughput() {
    let output = bench_ingest(&["--events", "3000", "--batch", "1000"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("events imported:         3000"), "{text}");
    assert!(text.contains("events/s"), "{text}");
    assert!(text.contains("VmHWM"), "{text}");
}

#[tokio::test]
async fn bench_ingest_warmup_whole_bodies() {
    let output = bench_ingest(&[
        "--events", "3000", "--batch", "1000", "--warmup", "1500", "--times", "live",
    ])
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    let text = String::from_utf8_lossy(&output.stdout);
    // 1500 warm-up events round up to two bodies of 1000; the measured run still has 3000.
    assert!(text.contains("warm-up events:          2000"), "{text}");
    assert!(text.contains("events sent:             3000"), "{text}");
    assert!(text.contains("events imported:         3000"), "{text}");
}

#[tokio::test]
async fn import_profiles_rejects_missing_properties() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("profiles.ndjson");
    std::fs::write(
        &path,
        "{\"$distinct_id\":\"p1\",\"$properties\":{\"plan\":\"pro\"}}\n\
         {\"$distinct_id\":\"p2\",\"properties\":{\"plan\":\"free\"}}\n\
         {\"$distinct_id\":\"p3\"}\n",
    )
    .unwrap();

    let output = run(&server, &["import", "profiles", path.to_str().unwrap()]).await;
    assert!(!output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("3 records read, 1 imported, 2 rejected"),
        "{stdout}"
    );
    let message = stderr(&output);
    assert!(message.contains("profiles.ndjson:2"), "{message}");
    assert!(message.contains("no $properties object"), "{message}");
    assert!(message.contains("profiles.ndjson:3"), "{message}");
    let profile = server.admin_get("/profiles/p1").await;
    assert_eq!(profile["properties"]["plan"], "pro", "{profile}");
    server.stop().await;
}
