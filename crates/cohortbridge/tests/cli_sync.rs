//! The sync commands of the CLI as a user runs them: the real binary as a client of a server
//! and a Braze emulator started in-process.

mod common;

use std::process::{Command, Output};

use common::{TestEmulator, TestServer, ADMIN_KEY, DATA_IMPORT_KEY};
use serde_json::json;

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

async fn run(server: &TestServer, args: &[&str]) -> Output {
    let base = server.base.clone();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_cohortbridge"))
            .arg("--server")
            .arg(base)
            .args(args)
            .env("COHORTBRIDGE_ADMIN_KEY", ADMIN_KEY)
            .env("COHORTBRIDGE_DATA_IMPORT_KEY", DATA_IMPORT_KEY)
            .output()
            .expect("the cohortbridge binary runs")
    })
    .await
    .unwrap()
}

async fn run_ok(server: &TestServer, args: &[&str]) -> String {
    let output = run(server, args).await;
    assert!(
        output.status.success(),
        "{args:?} failed: {}",
        stderr(&output)
    );
    stdout(&output)
}

/// Sets `plan` to `pro` and the given Braze id on each user's profile. Then creates the cohort
/// of pro users and a connection named `emu` to the emulator, and returns the cohort's id.
async fn pro_cohort(
    server: &TestServer,
    emulator: &TestEmulator,
    users: &[(&str, Option<&str>)],
) -> String {
    for (user, id) in users {
        let mut set = json!({"plan": "pro"});
        if let Some(id) = id {
            set["$braze_external_id"] = json!(id);
        }
        let (status, _) = server
            .engage(&[json!({"$token": server.token, "$distinct_id": user, "$set": set})])
            .await;
        assert_eq!(status, 200);
    }
    let cohort = server
        .create_cohort(
            "Pro",
            json!({"profile": "plan", "op": "eq", "value": "pro"}),
        )
        .await
        .to_string();
    run_ok(
        server,
        &[
            "connections",
            "add",
            "--name",
            "emu",
            "--base-url",
            &emulator.base,
        ],
    )
    .await;
    cohort
}

#[tokio::test]
async fn help_states_the_member_removal_choice() {
    let server = TestServer::start().await;
    for command in [["syncs", "remove"], ["cohorts", "delete"]] {
        let text = run_ok(&server, &[command[0], command[1], "--help"]).await;
        assert!(text.contains("--remove-members"), "{text}");
        assert!(text.contains("stay in Braze"), "{text}");
    }
    server.stop().await;
}

#[tokio::test]
async fn sync_commands_end_to_end() {
    let emulator = TestEmulator::start().await;
    let server = TestServer::start().await;
    let cohort = pro_cohort(
        &server,
        &emulator,
        &[
            ("ann", Some("ext-ann")),
            ("bob", Some("ext-bob")),
            ("cid", None),
        ],
    )
    .await;

    let text = run_ok(
        &server,
        &["export", &cohort, "--connection", "emu", "--dry-run"],
    )
    .await;
    assert!(
        text.contains("add \"ext-ann\"\nadd \"ext-bob\"\n"),
        "{text}"
    );
    assert!(text.contains("nothing sent"), "{text}");
    assert!(
        emulator
            .get("/_emulator/requests")
            .await
            .as_array()
            .unwrap()
            .len()
            == 1
    );

    let text = run_ok(
        &server,
        &["export", &cohort, "--connection", "emu", "--dynamic"],
    )
    .await;
    assert!(text.contains("trigger export"), "{text}");
    let text = run_ok(&server, &["syncs", "show", "1"]).await;
    assert!(text.contains("added 2"), "{text}");
    assert!(text.contains("skipped 1"), "{text}");
    assert!(text.contains("cadence: 15m"), "{text}");
    assert!(text.contains("next run: 20"), "{text}");

    let text = run_ok(&server, &["syncs", "operations", "1", "--csv"]).await;
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    assert_eq!(
        reader.headers().unwrap(),
        vec!["distinct_id", "braze_id", "operation", "reason"]
    );
    let rows: Vec<Vec<String>> = reader
        .records()
        .map(|r| r.unwrap().iter().map(str::to_owned).collect())
        .collect();
    assert_eq!(
        rows,
        vec![
            vec!["ann", "ext-ann", "add", ""],
            vec!["bob", "ext-bob", "add", ""],
            vec![
                "cid",
                "",
                "skipped",
                "profile has no $braze_external_id property"
            ],
        ]
    );

    run_ok(&server, &["syncs", "pause", "1"]).await;
    let text = run_ok(&server, &["syncs", "show", "1"]).await;
    assert!(text.contains("paused"), "{text}");
    run_ok(&server, &["syncs", "resume", "1"]).await;

    run_ok(&server, &["connections", "rename", "emu", "--name", "main"]).await;
    run_ok(&server, &["connections", "disconnect", "main"]).await;
    let text = run_ok(&server, &["connections", "reconnect", "main"]).await;
    assert!(text.contains("resumed syncs: [1]"), "{text}");

    run_ok(
        &server,
        &["cohorts", "rename", &cohort, "--name", "Pro users"],
    )
    .await;
    // The reconnect made the sync due, so the scheduler may be running it.
    server.wait_until_idle(1).await;
    run_ok(&server, &["syncs", "run", "1"]).await;
    assert_eq!(
        emulator.get("/_emulator/cohorts").await[0]["name"],
        "Pro users"
    );

    let text = run_ok(&server, &["cohorts", "delete", &cohort, "--remove-members"]).await;
    assert!(text.contains("removed from Braze"), "{text}");
    assert!(emulator.members("cohortbridge-test-1-1").await.is_empty());
    server.stop().await;
}

/// Parses the CSV of `syncs operations RUN --csv` into rows.
async fn operations_csv(server: &TestServer, run_id: &str) -> Vec<Vec<String>> {
    let text = run_ok(server, &["syncs", "operations", run_id, "--csv"]).await;
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    reader
        .records()
        .map(|r| r.unwrap().iter().map(str::to_owned).collect())
        .collect()
}

#[tokio::test]
async fn removes_name_their_member() {
    let emulator = TestEmulator::start().await;
    let server = TestServer::start().await;
    let cohort = pro_cohort(
        &server,
        &emulator,
        &[("ann", Some("ext-ann")), ("bob", Some("ext-bob"))],
    )
    .await;
    run_ok(
        &server,
        &["export", &cohort, "--connection", "emu", "--dynamic"],
    )
    .await;

    // Bob leaves the cohort: run 2 removes his id and names him.
    let (status, _) = server
        .engage(&[json!({"$token": server.token, "$distinct_id": "bob", "$set": {"plan": "free"}})])
        .await;
    assert_eq!(status, 200);
    server.wait_until_idle(1).await;
    run_ok(&server, &["syncs", "run", "1"]).await;
    assert_eq!(
        operations_csv(&server, "2").await,
        vec![
            vec!["ann", "ext-ann", "no-op", ""],
            vec!["bob", "ext-bob", "remove", ""],
        ]
    );

    // The removal run lists every id it removes, with its member.
    run_ok(&server, &["cohorts", "delete", &cohort, "--remove-members"]).await;
    assert!(emulator.members("cohortbridge-test-1-1").await.is_empty());
    let shown = server.admin_get("/syncs/1").await;
    let removal = shown["runs"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(removal["trigger"], "removal");
    let rows = operations_csv(&server, &removal["id"].to_string()).await;
    assert_eq!(rows, vec![vec!["ann", "ext-ann", "remove", ""]]);
    server.stop().await;
}

#[tokio::test]
async fn short_every_names_the_flag() {
    let emulator = TestEmulator::start().await;
    let server = TestServer::start().await;
    let cohort = pro_cohort(&server, &emulator, &[("ann", Some("ext-ann"))]).await;
    let output = run(
        &server,
        &[
            "export",
            &cohort,
            "--connection",
            "emu",
            "--dynamic",
            "--every",
            "0s",
        ],
    )
    .await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--every 0s is sent as `every_secs` 0"),
        "{stderr}"
    );
    assert!(stderr.contains("shorter than the minimum"), "{stderr}");
    server.stop().await;
}
