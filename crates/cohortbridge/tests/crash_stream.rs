//! Durability under load: the real binary is killed with SIGKILL while several clients are still
//! posting `/import` batches, and after a restart every event of every acknowledged batch is
//! found. Batches in flight at the kill may or may not be stored.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::TestDatabase;
use serde_json::{json, Value};

const ADMIN_KEY: &str = "crash-stream-admin-key-0123456789";
const CLIENTS: usize = 4;
const BATCH: usize = 500;
/// Batches acknowledged before the kill; requests keep flowing while it happens.
const BATCHES_BEFORE_KILL: usize = 24;

fn spawn_server(data_dir: &std::path::Path, database: &TestDatabase) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cohortbridge"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .envs(database.envs())
        .env("COHORTBRIDGE_ADMIN_KEY", ADMIN_KEY)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the cohortbridge binary starts");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let base = loop {
        let line = lines.next().expect("server printed its address").unwrap();
        if let Some(address) = line.strip_prefix("listening on ") {
            break address.to_owned();
        }
    };
    (child, base)
}

/// Generates the project's API secret; the server returns it only in this reply.
async fn api_secret(base: &str) -> String {
    let project: Value = reqwest::Client::new()
        .post(format!("{base}/api/v1/projects/1/api-secret"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    project["api_secret"].as_str().unwrap().to_owned()
}

fn batch_body(client: usize, batch: usize) -> String {
    (0..BATCH)
        .map(|i| {
            let record = json!({"event": "Streamed", "properties": {
                "time": 1_700_000_000 + i, "distinct_id": format!("u-{client}-{i}"),
                "$insert_id": format!("c{client}-b{batch}-{i}")}});
            format!("{record}\n")
        })
        .collect()
}

#[tokio::test]
async fn sigkill_during_stream_loses_no_acknowledged_event() {
    let data_dir = tempfile::tempdir().unwrap();
    let database = TestDatabase::create(data_dir.path()).await;
    let (mut child, base) = spawn_server(data_dir.path(), &database);
    let secret = api_secret(&base).await;

    let acknowledged: Arc<Mutex<Vec<(usize, usize)>>> = Arc::default();
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..CLIENTS {
        let (base, secret, acknowledged) = (base.clone(), secret.clone(), acknowledged.clone());
        clients.spawn(async move {
            let http = reqwest::Client::new();
            for batch in 0.. {
                let sent = http
                    .post(format!("{base}/import?strict=1"))
                    .basic_auth(&secret, Some(""))
                    .body(batch_body(client, batch))
                    .send()
                    .await;
                // After the kill, requests fail; only 2xx replies count as acknowledged.
                match sent {
                    Ok(response) if response.status().is_success() => {
                        acknowledged.lock().unwrap().push((client, batch));
                    }
                    _ => return,
                }
            }
        });
    }
    while acknowledged.lock().unwrap().len() < BATCHES_BEFORE_KILL {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let acknowledged = acknowledged.lock().unwrap().clone();
    while clients.join_next().await.is_some() {}
    assert!(acknowledged.len() >= BATCHES_BEFORE_KILL);

    let (mut child, base) = spawn_server(data_dir.path(), &database);
    let export = reqwest::Client::new()
        .get(format!(
            "{base}/api/2.0/export?from_date=2023-11-14&to_date=2023-11-15"
        ))
        .basic_auth(&secret, Some(""))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let stored: HashSet<String> = export
        .lines()
        .map(|line| {
            let event: Value = serde_json::from_str(line).unwrap();
            event["properties"]["$insert_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    for (client, batch) in &acknowledged {
        for i in 0..BATCH {
            let insert_id = format!("c{client}-b{batch}-{i}");
            assert!(
                stored.contains(&insert_id),
                "acknowledged {insert_id} is lost"
            );
        }
    }
    assert!(stored.len() >= acknowledged.len() * BATCH);
    child.kill().unwrap();
    child.wait().unwrap();
}
