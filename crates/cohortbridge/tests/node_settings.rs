//! Start-up settings that a deployment of several nodes depends on, checked on the real binary:
//! the encryption key must match the database's, `--database-url` is validated and never shown
//! with its password, and `migrate` applies the migrations once.

mod common;

use std::process::{Command, Output, Stdio};

use common::TestDatabase;

const KEY_A: &str = "0101010101010101010101010101010101010101010101010101010101010101";
const KEY_B: &str = "0202020202020202020202020202020202020202020202020202020202020202";

/// Runs `cohortbridge serve` until it prints its address or exits, then stops it.
fn serve_once(data_dir: &std::path::Path, database: &TestDatabase, secret_key: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cohortbridge"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--secret-key",
            secret_key,
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .envs(database.envs())
        .env(
            "COHORTBRIDGE_ADMIN_KEY",
            "node-settings-admin-key-0123456789",
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the cohortbridge binary starts");
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first_line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first_line).unwrap();
    if first_line.starts_with("listening on ") {
        child.kill().unwrap();
    }
    let mut output = child.wait_with_output().unwrap();
    output.stdout = first_line.into_bytes();
    output
}

#[tokio::test]
async fn other_secret_key_is_rejected_at_start() {
    let data_dir = tempfile::tempdir().unwrap();
    let database = TestDatabase::create(data_dir.path()).await;
    let first = serve_once(data_dir.path(), &database, KEY_A);
    assert!(
        String::from_utf8_lossy(&first.stdout).starts_with("listening on "),
        "the first start succeeds: {}",
        String::from_utf8_lossy(&first.stderr)
    );

    let second = serve_once(data_dir.path(), &database, KEY_B);
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("encryption key does not match"), "{stderr}");
    assert!(stderr.contains("--secret-key"), "{stderr}");

    let third = serve_once(data_dir.path(), &database, KEY_A);
    assert!(
        String::from_utf8_lossy(&third.stdout).starts_with("listening on "),
        "the original key still starts: {}",
        String::from_utf8_lossy(&third.stderr)
    );
}

#[test]
fn malformed_database_url_is_rejected() {
    let data_dir = tempfile::tempdir().unwrap();
    for url in [
        "postgres://app:hunter2@db.internal:notaport/cb",
        "mysql://app:hunter2@db.internal/cb",
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_cohortbridge"))
            .args(["serve", "--listen", "127.0.0.1:0", "--database-url", url])
            .arg("--data-dir")
            .arg(data_dir.path())
            .output()
            .unwrap();
        assert!(!output.status.success(), "{url} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("invalid --database-url"), "{stderr}");
        assert!(stderr.contains("app:<redacted>@db.internal"), "{stderr}");
        assert!(
            !stderr.contains("hunter2"),
            "the password is shown: {stderr}"
        );
    }
}

#[tokio::test]
async fn migrate_applies_each_migration_once() {
    let data_dir = tempfile::tempdir().unwrap();
    let database = TestDatabase::create(data_dir.path()).await;
    let migrate = || {
        let output = Command::new(env!("CARGO_BIN_EXE_cohortbridge"))
            .arg("migrate")
            .arg("--data-dir")
            .arg(data_dir.path())
            .envs(database.envs())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };

    let first = migrate();
    assert!(first.contains("applied"), "{first}");
    assert!(first.contains("0001_init"), "{first}");
    assert!(first.contains("_sync_leases"), "{first}");
    let second = migrate();
    assert!(second.contains("no pending migrations"), "{second}");

    let applied = database
        .query_strings("SELECT name FROM schema_migrations ORDER BY name")
        .await;
    assert!(applied.len() >= 2, "{applied:?}");
    assert_eq!(applied.first().map(String::as_str), Some("0001_init"));
}

#[tokio::test]
async fn database_password_never_reaches_the_log() {
    let data_dir = tempfile::tempdir().unwrap();
    let database = TestDatabase::create(data_dir.path()).await;
    let Some(url) = database.url() else {
        eprintln!("skipped: needs COHORTBRIDGE_TEST_DATABASE_URL");
        return;
    };
    // Under trust authentication the server ignores a password, so any will do.
    let Some(rest) = url.strip_prefix("postgres://postgres@") else {
        eprintln!("skipped: the test database URL is not postgres://postgres@...");
        return;
    };
    let password = "pw-that-must-stay-secret";
    let url = format!("postgres://postgres:{password}@{rest}");
    let log_path = data_dir.path().join("server.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_cohortbridge"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data_dir.path())
        .env("COHORTBRIDGE_DATABASE_URL", &url)
        .env(
            "COHORTBRIDGE_ADMIN_KEY",
            "node-settings-admin-key-0123456789",
        )
        .env("COHORTBRIDGE_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first_line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first_line).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();

    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(first_line.starts_with("listening on "), "{log}");
    assert!(log.contains("postgres:<redacted>@"), "{log}");
    assert!(!log.contains(password), "the password is in the log: {log}");
}

#[tokio::test]
async fn second_server_on_folder_rejected() {
    let data_dir = tempfile::tempdir().unwrap();
    let database = TestDatabase::create(data_dir.path()).await;
    let mut first = Command::new(env!("CARGO_BIN_EXE_cohortbridge"))
        .args(["serve", "--listen", "127.0.0.1:0", "--secret-key", KEY_A])
        .arg("--data-dir")
        .arg(data_dir.path())
        .envs(database.envs())
        .env(
            "COHORTBRIDGE_ADMIN_KEY",
            "node-settings-admin-key-0123456789",
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the cohortbridge binary starts");
    let mut stdout = std::io::BufReader::new(first.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert!(line.starts_with("listening on "), "{line}");

    let second = serve_once(data_dir.path(), &database, KEY_A);
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("another cohortbridge server is running on the data folder"),
        "{stderr}"
    );

    // SIGKILL releases the lock with the process: the folder can be served again at once.
    first.kill().unwrap();
    first.wait().unwrap();
    let third = serve_once(data_dir.path(), &database, KEY_A);
    assert!(
        String::from_utf8_lossy(&third.stdout).starts_with("listening on "),
        "{}",
        String::from_utf8_lossy(&third.stderr)
    );
}
