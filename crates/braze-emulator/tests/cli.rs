//! The binary: configuration from flags and environment, and the stdout line
//! that reports the bound address.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::json;

/// Kills the child process when the test ends, also on panic.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the binary and returns it with the base URL read from stdout.
fn start(command: &mut Command) -> (Running, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the emulator binary starts");
    let stdout = child.stdout.take().expect("stdout is piped");
    let running = Running(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("the emulator writes a line");
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    (running, base)
}

fn emulator_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_braze-emulator"));
    for name in [
        "BRAZE_EMULATOR_LISTEN",
        "BRAZE_EMULATOR_PARTNER_NAME",
        "BRAZE_EMULATOR_PARTNER_API_KEYS",
        "BRAZE_EMULATOR_DATA_IMPORT_KEYS",
        "BRAZE_EMULATOR_RATE_LIMIT_PER_MINUTE",
    ] {
        command.env_remove(name);
    }
    command
}

async fn name_cohort(base: &str, partner: &str, partner_key: &str, import_key: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("{base}/partners/{partner}/cohorts"))
        .json(&json!({
            "partner_api_key": partner_key,
            "client_secret": import_key,
            "cohort_id": "c1",
            "name": "From the binary",
            "created_at": "2021-01-21T19:20:30Z",
        }))
        .send()
        .await
        .expect("request reaches the binary")
        .status()
        .as_u16()
}

#[tokio::test]
async fn binary_reads_flags_and_prints_address() {
    let (_running, base) = start(emulator_command().args([
        "--listen",
        "127.0.0.1:0",
        "--partner-name",
        "acme",
        "--partner-api-key",
        "pk1",
        "--partner-api-key",
        "pk2",
        "--data-import-key",
        "dk1",
    ]));
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    assert!(!base.ends_with(":0"), "the real port is printed: {base}");
    assert_eq!(name_cohort(&base, "acme", "pk2", "dk1").await, 201);
    assert_eq!(name_cohort(&base, "acme", "pk3", "dk1").await, 401);
}

#[tokio::test]
async fn binary_reads_environment() {
    let (_running, base) = start(
        emulator_command()
            .env("BRAZE_EMULATOR_LISTEN", "127.0.0.1:0")
            .env("BRAZE_EMULATOR_PARTNER_NAME", "acme")
            .env("BRAZE_EMULATOR_PARTNER_API_KEYS", "pk1,pk2")
            .env("BRAZE_EMULATOR_DATA_IMPORT_KEYS", "dk1,dk2"),
    );
    assert_eq!(name_cohort(&base, "acme", "pk2", "dk2").await, 201);
    let cohorts: serde_json::Value = reqwest::get(format!("{base}/_emulator/cohorts"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cohorts[0]["workspace"], 1);
}

#[test]
fn binary_rejects_empty_key() {
    let output = emulator_command()
        .args([
            "--listen",
            "127.0.0.1:0",
            "--partner-name",
            "acme",
            "--partner-api-key",
            "pk1",
        ])
        .env("BRAZE_EMULATOR_DATA_IMPORT_KEYS", "dk1,,dk2")
        .output()
        .expect("the emulator binary runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--data-import-key must not be empty"),
        "{stderr}"
    );
}

#[test]
fn binary_requires_keys() {
    let output = emulator_command()
        .args(["--partner-name", "acme"])
        .output()
        .expect("the emulator binary runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--partner-api-key"), "{stderr}");
}
