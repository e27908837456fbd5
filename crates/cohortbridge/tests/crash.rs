//! Durability: a 2xx from `/import` means the events survive SIGKILL of the server process.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::TestDatabase;
use serde_json::{json, Value};

const ADMIN_KEY: &str = "crash-test-admin-key-0123456789";

/// Starts the real binary on port 0 and returns it with its base URL.
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

async fn admin_get(base: &str, path: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{base}/api/v1/projects/1{path}"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn sigkill_after_import_loses_nothing() {
    let data_dir = tempfile::tempdir().unwrap();
    let database = TestDatabase::create(data_dir.path()).await;
    let (mut child, base) = spawn_server(data_dir.path(), &database);
    let api_secret = reqwest::Client::new()
        .post(format!("{base}/api/v1/projects/1/api-secret"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["api_secret"]
        .as_str()
        .unwrap()
        .to_owned();

    let mut acknowledged = 0;
    let client = reqwest::Client::new();
    for batch in 0..5 {
        let body: String = (0..400)
            .map(|i| {
                json!({"event": "Crash Test", "properties": {"time": 1_700_000_000 + i, "distinct_id": format!("u-{i}"),
                    "$insert_id": format!("b{batch}-{i}")}})
                .to_string()
                    + "\n"
            })
            .collect();
        let response = client
            .post(format!("{base}/import?strict=1"))
            .basic_auth(&api_secret, Some(""))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        acknowledged += 400;
    }
    // SIGKILL right after the last 2xx: no shutdown hook, no flush.
    child.kill().unwrap();
    child.wait().unwrap();

    let (mut child, base) = spawn_server(data_dir.path(), &database);
    let stats = admin_get(&base, "/stats").await;
    assert_eq!(stats["events"], acknowledged);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn first_start_prints_admin_key_once() {
    let data_dir = tempfile::tempdir().unwrap();
    let database = TestDatabase::create(data_dir.path()).await;
    let start = || {
        Command::new(env!("CARGO_BIN_EXE_cohortbridge"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir.path())
            .envs(database.envs())
            .env_remove("COHORTBRIDGE_ADMIN_KEY")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let read_until_listening = |child: &mut Child| {
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut seen = Vec::new();
        loop {
            let line = lines.next().unwrap().unwrap();
            let done = line.starts_with("listening on ");
            seen.push(line);
            if done {
                return seen;
            }
        }
    };
    let mut first = start();
    let first_lines = read_until_listening(&mut first);
    first.kill().unwrap();
    first.wait().unwrap();
    let key_line = first_lines
        .iter()
        .find(|l| l.starts_with("admin key"))
        .expect("first start prints the admin key");
    let key = key_line.rsplit(' ').next().unwrap().to_owned();

    let mut second = start();
    let second_lines = read_until_listening(&mut second);
    assert!(
        !second_lines.iter().any(|l| l.starts_with("admin key")),
        "the key is printed only once"
    );
    let base = second_lines
        .last()
        .unwrap()
        .strip_prefix("listening on ")
        .unwrap()
        .to_owned();
    let response = reqwest::Client::new()
        .get(format!("{base}/api/v1/projects/1"))
        .bearer_auth(&key)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        200,
        "the printed key works after a restart"
    );
    second.kill().unwrap();
    second.wait().unwrap();
}

#[tokio::test]
async fn configured_admin_key_survives_restart_without_it() {
    let data_dir = tempfile::tempdir().unwrap();
    let database = TestDatabase::create(data_dir.path()).await;
    let (mut first, _) = spawn_server(data_dir.path(), &database);
    first.kill().unwrap();
    first.wait().unwrap();

    // The second start has no admin key configured: the first one's key keeps working and no
    // new key is printed.
    let mut child = Command::new(env!("CARGO_BIN_EXE_cohortbridge"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir.path())
        .envs(database.envs())
        .env_remove("COHORTBRIDGE_ADMIN_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first_line = lines.next().unwrap().unwrap();
    let base = first_line
        .strip_prefix("listening on ")
        .expect("no admin key is printed")
        .to_owned();
    let project = admin_get(&base, "").await;
    assert!(project["token"].is_string(), "{project}");
    child.kill().unwrap();
    child.wait().unwrap();

    // The SQLite file is the database only without PostgreSQL.
    #[cfg(unix)]
    if !database.is_postgres() {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data_dir.path().join("cohortbridge.db"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o077,
            0,
            "the database is readable by other users: {mode:o}"
        );
    }
}
