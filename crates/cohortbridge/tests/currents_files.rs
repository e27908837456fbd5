//! `cohortbridge import currents`: Avro storage files written here with our own schemas, laid
//! out in Braze's folder layout, imported through the real binary into a running server.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use apache_avro::types::{Record, Value as AvroValue};
use apache_avro::{Schema, Writer};
use common::{TestServer, ADMIN_KEY};

/// 2026-11-10T00:00:00Z in epoch seconds.
const NOVEMBER_10: i32 = 1_794_268_800;

const EMAIL_SEND_SCHEMA: &str = r#"{"type": "record", "name": "Send",
  "namespace": "dataexport.S3.inner.users.messages.email",
  "fields": [
    {"name": "id", "type": "string"},
    {"name": "user_id", "type": "string"},
    {"name": "external_user_id", "type": ["null", "string"], "default": null},
    {"name": "time", "type": "int"},
    {"name": "timezone", "type": ["null", "string"], "default": null},
    {"name": "campaign_name", "type": ["null", "string"], "default": null},
    {"name": "email_address", "type": "string"}
  ]}"#;

const PURCHASE_SCHEMA: &str = r#"{"type": "record", "name": "Purchase",
  "namespace": "dataexport.S3.inner.users.behaviors",
  "fields": [
    {"name": "id", "type": "string"},
    {"name": "user_id", "type": "string"},
    {"name": "external_user_id", "type": ["null", "string"], "default": null},
    {"name": "time", "type": "int"},
    {"name": "product_id", "type": "string"},
    {"name": "price", "type": "float"},
    {"name": "properties", "type": "string"}
  ]}"#;

/// Writes an email Send file with one event per `(id, external id)` pair.
fn write_email_sends(path: &Path, events: &[(&str, Option<&str>)]) {
    let schema = Schema::parse_str(EMAIL_SEND_SCHEMA).unwrap();
    let mut writer = Writer::new(&schema, Vec::new());
    for (id, external_id) in events {
        let mut record = Record::new(&schema).unwrap();
        record.put("id", *id);
        record.put("user_id", format!("braze-{id}"));
        let external = match external_id {
            Some(value) => AvroValue::Union(1, Box::new(AvroValue::String((*value).to_owned()))),
            None => AvroValue::Union(0, Box::new(AvroValue::Null)),
        };
        record.put("external_user_id", external);
        record.put("time", NOVEMBER_10);
        record.put(
            "timezone",
            AvroValue::Union(1, Box::new(AvroValue::String("Europe/Berlin".into()))),
        );
        record.put(
            "campaign_name",
            AvroValue::Union(1, Box::new(AvroValue::String("Winback".into()))),
        );
        record.put("email_address", "someone@example.com");
        writer.append(record).unwrap();
    }
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, writer.into_inner().unwrap()).unwrap();
}

fn write_purchase(path: &Path) {
    let schema = Schema::parse_str(PURCHASE_SCHEMA).unwrap();
    let mut writer = Writer::new(&schema, Vec::new());
    let mut record = Record::new(&schema).unwrap();
    record.put("id", "purchase-1");
    record.put("user_id", "braze-p");
    record.put(
        "external_user_id",
        AvroValue::Union(1, Box::new(AvroValue::String("u-buyer".into()))),
    );
    record.put("time", NOVEMBER_10);
    record.put("product_id", "sku-9");
    record.put("price", 9.99_f32);
    record.put("properties", r#"{"color": "red"}"#);
    writer.append(record).unwrap();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, writer.into_inner().unwrap()).unwrap();
}

/// Braze's layout: `<prefix>/event_type=<type>/date=<date>/<file>.avro`.
fn layout(root: &Path, event_type: &str, file: &str) -> PathBuf {
    root.join("dataexport.prod-01.S3.integration.test")
        .join(format!("event_type={event_type}"))
        .join("date=2026-11-10-00")
        .join(file)
}

fn command(server: &TestServer, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cohortbridge"));
    command
        .arg("--server")
        .arg(&server.base)
        .args(args)
        .env("COHORTBRIDGE_ADMIN_KEY", ADMIN_KEY)
        .env("COHORTBRIDGE_CURRENTS_TOKEN", &server.currents_token);
    command
}

async fn run(server: &TestServer, args: &[&str]) -> Output {
    let mut command = command(server, args);
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn avro_files_import_once() {
    let server = TestServer::start().await;
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("state.txt");
    write_email_sends(
        &layout(root.path(), "users.messages.email.Send", "a.avro"),
        &[("send-1", Some("u-mail")), ("send-2", None)],
    );
    write_purchase(&layout(root.path(), "users.behaviors.Purchase", "b.avro"));
    let data = root.path().join("dataexport.prod-01.S3.integration.test");
    let args = [
        "import",
        "currents",
        data.to_str().unwrap(),
        "--state-file",
        state.to_str().unwrap(),
    ];

    let output = run(&server, &args).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("2 files imported: 3 events accepted, 0 quarantined"),
        "{stdout}"
    );
    assert_eq!(server.event_count().await, 3);

    let sends = server.admin_get("/events?distinct_id=u-mail").await;
    assert_eq!(sends[0]["event"], "Email Send");
    assert_eq!(sends[0]["properties"]["campaign_name"], "Winback");
    assert_eq!(sends[0]["properties"]["$partner_id"], "braze");
    let purchase = server.admin_get("/events?distinct_id=u-buyer").await;
    assert_eq!(
        purchase[0]["properties"]["price"], 9.99,
        "the float keeps its decimal value"
    );
    assert_eq!(
        purchase[0]["properties"]["[Purchase property] color"],
        "red"
    );
    assert_eq!(
        server
            .admin_get("/events?distinct_id=")
            .await
            .as_array()
            .unwrap()
            .len(),
        1,
        "send-2 is unattributed"
    );
    assert_eq!(
        server.admin_get("/mtu?month=2026-11").await["users"],
        1,
        "only the buyer counts"
    );

    // A second run skips both files.
    let output = run(&server, &args).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("0 files imported"), "{stdout}");
    assert!(stdout.contains("2 skipped as imported earlier"), "{stdout}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr
            .matches("skipped, imported by an earlier run")
            .count(),
        2,
        "{stderr}"
    );
    assert_eq!(server.event_count().await, 3);
    server.stop().await;
}

#[tokio::test]
async fn broken_avro_file_is_reported() {
    let server = TestServer::start().await;
    let root = tempfile::tempdir().unwrap();
    let bad = layout(root.path(), "users.messages.email.Send", "bad.avro");
    std::fs::create_dir_all(bad.parent().unwrap()).unwrap();
    std::fs::write(&bad, b"not avro at all").unwrap();
    let state = root.path().join("state.txt");
    let output = run(
        &server,
        &[
            "import",
            "currents",
            root.path().to_str().unwrap(),
            "--state-file",
            state.to_str().unwrap(),
        ],
    )
    .await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("bad.avro"), "{stderr}");
    assert!(stderr.contains("not a valid Avro"), "{stderr}");
    assert!(
        !std::fs::read_to_string(&state)
            .unwrap_or_default()
            .contains("bad.avro"),
        "a failed file is not remembered"
    );
    server.stop().await;
}

#[tokio::test]
async fn watch_imports_new_files() {
    let server = TestServer::start().await;
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("state.txt");
    let watched = root.path().join("bucket");
    std::fs::create_dir_all(&watched).unwrap();
    let mut child = command(
        &server,
        &[
            "import",
            "currents",
            watched.to_str().unwrap(),
            "--watch",
            "--interval",
            "200ms",
            "--state-file",
            state.to_str().unwrap(),
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();

    write_email_sends(
        &layout(&watched, "users.messages.email.Send", "later.avro"),
        &[("late-1", Some("u-late"))],
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while server.event_count().await < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the watcher did not import the new file"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(std::fs::read_to_string(&state)
        .unwrap()
        .contains("later.avro"));
    server.stop().await;
}
