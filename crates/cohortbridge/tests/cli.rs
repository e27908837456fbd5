//! The CLI as a user runs it: the real binary as a client of a server started in-process.

mod common;

use std::io::Write;
use std::process::{Command, Output};

use common::{TestServer, ADMIN_KEY};
use serde_json::{json, Value};

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs `cohortbridge --server <server> ARGS` in a blocking task, so the in-process server
/// keeps serving while the command waits for it.
async fn run(server: &TestServer, args: &[&str]) -> Output {
    run_with_key(server, args, ADMIN_KEY).await
}

async fn run_with_key(server: &TestServer, args: &[&str], admin_key: &str) -> Output {
    let base = server.base.clone();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let admin_key = admin_key.to_owned();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_cohortbridge"))
            .arg("--server")
            .arg(base)
            .args(args)
            .env("COHORTBRIDGE_ADMIN_KEY", admin_key)
            .output()
            .expect("the cohortbridge binary runs")
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn projects_show_hides_secrets() {
    let server = TestServer::start().await;
    let output = run(&server, &["projects", "show"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.contains(&server.token), "{text}");
    assert!(!text.contains(&server.api_secret), "{text}");
    assert!(!text.contains(&server.currents_token), "{text}");
    let json_output = stdout(&run(&server, &["projects", "show", "--json"]).await);
    assert!(!json_output.contains(&server.api_secret), "{json_output}");
    assert!(
        !json_output.contains(&server.currents_token),
        "{json_output}"
    );
    assert!(text.contains("time zone:      UTC"), "{text}");
    assert_eq!(text.matches("time zone:").count(), 1, "{text}");
    assert!(text.contains("identity mode:  simplified"), "{text}");
    server.stop().await;
}

/// `cohortbridge projects show | head -2` closes stdout before the command has written it all.
#[cfg(unix)]
#[tokio::test]
async fn closed_stdout_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;

    let server = TestServer::start().await;
    let base = server.base.clone();
    let output = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cohortbridge"))
            .args(["--server", &base, "projects", "show"])
            .env("COHORTBRIDGE_ADMIN_KEY", ADMIN_KEY)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the cohortbridge binary runs");
        // Closing the read end before the reply arrives makes every write to stdout fail.
        drop(child.stdout.take());
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let errors = stderr(&output);
    assert!(!errors.contains("panicked"), "{errors}");
    assert!(!errors.contains("Broken pipe"), "{errors}");
    let sigpipe = output.status.signal() == Some(libc::SIGPIPE);
    assert!(
        output.status.success() || sigpipe,
        "exit status {:?}",
        output.status
    );
    server.stop().await;
}

#[tokio::test]
async fn import_events_and_profiles_from_files() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();

    // A gzipped events export: 2500 events, so the importer sends two batches, plus one bad line.
    let events_path = dir.path().join("events.ndjson.gz");
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    for i in 0..2500 {
        let event = json!({"event": "Viewed", "properties": {"time": 1_700_000_000 + i, "distinct_id": format!("u-{}", i % 10),
            "$insert_id": format!("ev-{i}"), "mp_processing_time_ms": 1_700_000_000_123_i64}});
        writeln!(encoder, "{event}").unwrap();
    }
    writeln!(
        encoder,
        "{}",
        json!({"event": "Viewed", "properties": {"time": "yesterday", "distinct_id": "u-bad"}})
    )
    .unwrap();
    std::fs::write(&events_path, encoder.finish().unwrap()).unwrap();

    let output = run(
        &server,
        &["import", "events", events_path.to_str().unwrap()],
    )
    .await;
    assert!(
        !output.status.success(),
        "a rejected record makes the import exit non-zero"
    );
    let errors = stderr(&output);
    assert!(
        errors.contains("events.ndjson.gz:2501"),
        "the rejected line is named: {errors}"
    );
    assert!(errors.contains("properties.time"), "{errors}");
    assert!(
        stdout(&output).contains("2501 records read, 2500 imported, 1 rejected"),
        "{}",
        stdout(&output)
    );
    assert_eq!(server.event_count().await, 2500);

    // Importing the same file again stores nothing new.
    run(
        &server,
        &["import", "events", events_path.to_str().unwrap()],
    )
    .await;
    assert_eq!(server.event_count().await, 2500);

    let profiles_path = dir.path().join("profiles.ndjson");
    let profiles: String = (0..3)
        .map(|i| format!("{}\n", json!({"$distinct_id": format!("u-{i}"), "$properties": {"plan": "pro", "$braze_external_id": format!("b-{i}")}})))
        .collect();
    std::fs::write(&profiles_path, profiles).unwrap();
    let output = run(
        &server,
        &["import", "profiles", profiles_path.to_str().unwrap()],
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    let profile = server.admin_get("/profiles/u-1").await;
    assert_eq!(profile["properties"]["$braze_external_id"], "b-1");
    assert!(
        profile["properties"].get("$last_seen").is_none(),
        "imported profiles keep $last_seen unset"
    );
    server.stop().await;
}

#[tokio::test]
async fn cohort_commands() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    server
        .import_records(&[json!({"event": "Purchase", "properties": {"time": 1_700_000_000, "distinct_id": "buyer", "$insert_id": "p1"}})])
        .await;
    let definition = dir.path().join("def.json");
    std::fs::write(&definition, r#"{"event": "Purchase"}"#).unwrap();

    let output = run(
        &server,
        &[
            "cohorts",
            "create",
            "--name",
            "Buyers",
            "--file",
            definition.to_str().unwrap(),
        ],
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    let id = stdout(&output).trim().to_owned();
    assert_eq!(id, "1");

    let output = run(&server, &["cohorts", "members", &id]).await;
    assert_eq!(stdout(&output), "buyer\n");
    let output = run(&server, &["cohorts", "list"]).await;
    assert!(stdout(&output).contains("Buyers"), "{}", stdout(&output));
    let output = run(&server, &["cohorts", "show", &id, "--json"]).await;
    let shown: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(shown["definition"], json!({"event": "Purchase"}));

    std::fs::write(
        &definition,
        r#"{"all": [{"event": "Purchase", "within": {"last_days": -1}}]}"#,
    )
    .unwrap();
    let output = run(
        &server,
        &[
            "cohorts",
            "create",
            "--name",
            "Bad",
            "--file",
            definition.to_str().unwrap(),
        ],
    )
    .await;
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("all[0].within.last_days"),
        "{}",
        stderr(&output)
    );

    let output = run(&server, &["mtu", "--month", "2023-11"]).await;
    assert_eq!(stdout(&output), "1\n");
    server.stop().await;
}

#[tokio::test]
async fn errors_are_one_line_without_backtrace() {
    let server = TestServer::start().await;
    let output = run(&server, &["cohorts", "show", "42"]).await;
    assert!(!output.status.success());
    let errors = stderr(&output);
    assert_eq!(
        errors.trim(),
        "error: server returned HTTP 404: cohort 42 not found in project 1"
    );

    let output = run_with_key(&server, &["projects", "show"], "wrong-key").await;
    assert!(!output.status.success());
    assert!(stderr(&output).contains("HTTP 401"), "{}", stderr(&output));
    server.stop().await;
}

#[tokio::test]
async fn cohort_questions_from_the_cli() {
    let server = TestServer::start().await;

    let output = run(
        &server,
        &["projects", "set", "--timezone", "Europe/Nowhere"],
    )
    .await;
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("Europe/Nowhere"),
        "{}",
        stderr(&output)
    );
    let output = run(&server, &["projects", "set", "--timezone", "Europe/Berlin"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("Europe/Berlin"),
        "{}",
        stdout(&output)
    );

    let (status, text) = server
        .engage(&[
            json!({"$token": server.token, "$distinct_id": "ann",
                "$set": {"plan": "pro", "$braze_external_id": "ext-ann"}}),
            json!({"$token": server.token, "$distinct_id": "bob", "$set": {"plan": "free"}}),
        ])
        .await;
    assert_eq!(status, 200, "{text}");
    let cohort = server
        .create_cohort(
            "Pro",
            json!({"profile": "plan", "op": "eq", "value": "pro"}),
        )
        .await
        .to_string();

    let output = run(&server, &["cohorts", "preview", &cohort]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.contains("members:        1"), "{text}");
    assert!(text.contains("exportable:     1"), "{text}");
    assert!(text.contains("ann"), "{text}");

    let output = run(&server, &["cohorts", "explain", &cohort, "--user", "bob"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.contains("bob is not a member"), "{text}");
    assert!(text.contains("\"free\""), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("free.json");
    std::fs::write(&file, r#"{"profile": "plan", "op": "eq", "value": "free"}"#).unwrap();
    let output = run(
        &server,
        &[
            "cohorts",
            "update",
            &cohort,
            "--file",
            file.to_str().unwrap(),
        ],
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    let output = run(&server, &["cohorts", "members", &cohort]).await;
    assert_eq!(stdout(&output).trim(), "bob");
    server.stop().await;
}

/// Runs `cohortbridge ARGS` for a command that needs no server.
fn run_local(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cohortbridge"))
        .args(args)
        .output()
        .expect("the cohortbridge binary runs")
}

#[test]
fn bench_mtu_reuse_checks_its_input() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let bench = ["bench", "mtu", "--data-dir", data_dir];

    let first = run_local(
        &[
            &bench[..],
            &["--events", "200", "--users", "20", "--repeat", "0"],
        ]
        .concat(),
    );
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(stdout(&first).contains("200 events"), "{}", stdout(&first));

    let conflicting = run_local(&[&bench[..], &["--reuse", "--events", "10"]].concat());
    assert!(!conflicting.status.success());
    assert!(
        stderr(&conflicting).contains("cannot be used with"),
        "{}",
        stderr(&conflicting)
    );

    let tally_path = dir.path().join("bench-mtu.expected.json");
    let mut tally: Value = serde_json::from_slice(&std::fs::read(&tally_path).unwrap()).unwrap();
    tally["events"] = json!(201);
    std::fs::write(&tally_path, tally.to_string()).unwrap();
    let tampered = run_local(&[&bench[..], &["--reuse"]].concat());
    assert!(!tampered.status.success());
    let errors = stderr(&tampered);
    assert!(errors.contains("expected 201 events"), "{errors}");
    assert!(errors.contains("the report found 200 events"), "{errors}");
    assert!(!errors.contains("MtuReport"), "{errors}");

    std::fs::write(&tally_path, "{\"events\": \"many\"}").unwrap();
    let unreadable = run_local(&[&bench[..], &["--reuse"]].concat());
    assert!(!unreadable.status.success());
    assert!(
        stderr(&unreadable).contains("is not a tally that bench mtu wrote"),
        "{}",
        stderr(&unreadable)
    );
}

#[test]
fn bench_mtu_help_explains_repeat_zero() {
    let help = run_local(&["bench", "mtu", "--help"]);
    assert!(help.status.success(), "{}", stderr(&help));
    assert!(
        stdout(&help).contains("0 times only that first run"),
        "{}",
        stdout(&help)
    );
}

/// Posts one event to `/import` with `user` as the Basic user and returns the status.
async fn import_status(server: &TestServer, user: &str) -> u16 {
    let now = chrono::Utc::now().timestamp();
    server
        .http
        .post(server.url("/import"))
        .basic_auth(user, Some("x"))
        .json(
            &json!([{"event": "e", "properties": {"distinct_id": "u", "time": now,
            "$insert_id": "rotate-check"}}]),
        )
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn rotated_secrets_replace_old_ones() {
    let server = TestServer::start().await;
    assert_eq!(import_status(&server, &server.api_secret).await, 200);
    let output = run(&server, &["projects", "rotate-api-secret", "--json"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let reply: Value = serde_json::from_str(&stdout(&output)).unwrap();
    let secret = reply["api_secret"].as_str().unwrap();
    assert_ne!(secret, server.api_secret);
    assert_eq!(import_status(&server, &server.api_secret).await, 401);
    assert_eq!(import_status(&server, secret).await, 200);

    let output = run(&server, &["projects", "rotate-currents-token"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.contains("shown only now"), "{text}");
    let token = text
        .lines()
        .find_map(|line| line.strip_prefix("currents token: "))
        .unwrap()
        .trim();
    let old = server
        .http
        .post(server.url("/currents"))
        .bearer_auth(&server.currents_token)
        .json(&json!({"events": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), 401);
    let new = server
        .http
        .post(server.url("/currents"))
        .bearer_auth(token)
        .json(&json!({"events": []}))
        .send()
        .await
        .unwrap();
    assert!(new.status().is_success(), "{}", new.status());
    server.stop().await;
}

#[tokio::test]
async fn secret_replies_and_pages_are_not_cached() {
    let server = TestServer::start().await;
    let reply = server
        .http
        .post(server.url("/api/v1/projects/1/api-secret"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    assert_eq!(reply.headers()["cache-control"], "no-store");

    let page = server
        .http
        .get(server.url("/ui/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["cache-control"], "no-store");
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    assert_eq!(
        page.headers()["content-security-policy"],
        "frame-ancestors 'none'"
    );
    server.stop().await;
}
