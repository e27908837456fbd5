//! The command line: `serve` runs the server; every other command is a client of a running
//! server's HTTP API (`--server`), authenticated with the admin key.

mod client;
mod cohort_questions;
mod import;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};

use crate::config::ServeConfig;
pub use client::AdminClient;

#[derive(Debug, Parser)]
#[command(
    name = "cohortbridge",
    version,
    about = "Mixpanel-compatible ingestion, cohorts, and cohort sync to Braze"
)]
pub struct Cli {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Base URL of the cohortbridge server that admin commands talk to.
    #[arg(
        long,
        global = true,
        env = "COHORTBRIDGE_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    pub server: String,
    /// Admin key: the server's admin key for `serve`, the credential of every other command.
    #[arg(
        long,
        global = true,
        env = "COHORTBRIDGE_ADMIN_KEY",
        hide_env_values = true
    )]
    pub admin_key: Option<String>,
    /// Project id that admin commands act on.
    #[arg(long, global = true, env = "COHORTBRIDGE_PROJECT", default_value_t = 1)]
    pub project: i64,
    /// Print the server's JSON replies instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(ServeConfig),
    /// Show project settings.
    #[command(subcommand)]
    Projects(ProjectsCommand),
    /// Load Mixpanel export files through the server's ingestion API.
    #[command(subcommand)]
    Import(ImportCommand),
    /// Create and inspect cohorts.
    #[command(subcommand)]
    Cohorts(CohortsCommand),
    /// Manage Braze connections.
    #[command(subcommand)]
    Connections(ConnectionsCommand),
    /// Export a cohort to Braze once, or keep it in sync.
    Export(ExportArgs),
    /// Inspect and run syncs.
    #[command(subcommand)]
    Syncs(SyncsCommand),
    /// Print Monthly Tracked Users for a calendar month (UTC).
    Mtu {
        /// Month as YYYY-MM.
        #[arg(long)]
        month: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProjectsCommand {
    /// Print the project's token, API secret and Currents token.
    Show,
    /// Change project settings.
    Set {
        /// IANA time zone in which cohort windows are evaluated, such as Europe/Berlin.
        #[arg(long)]
        timezone: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// Import events from NDJSON files (Mixpanel's export format), optionally gzipped.
    Events {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Import profiles from engage-export files (`$distinct_id` and `$properties` per record).
    Profiles {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum CohortsCommand {
    /// Create a cohort from a definition file and print its id.
    Create {
        /// Cohort name, as Braze will show it.
        #[arg(long)]
        name: String,
        /// JSON file with the definition (see docs/cohorts.md).
        #[arg(long)]
        file: PathBuf,
    },
    List,
    Show {
        id: i64,
    },
    /// Print the cohort's current members, one distinct id a line.
    Members {
        id: i64,
    },
    /// Replace a cohort's definition (and optionally its name); syncs use it from their next run.
    Update {
        id: i64,
        /// New cohort name.
        #[arg(long)]
        name: Option<String>,
        /// JSON file with the new definition (see docs/cohorts.md).
        #[arg(long)]
        file: PathBuf,
    },
    /// Print the member count, how many members a connection could export, and a sample.
    Preview {
        id: i64,
        /// Braze connection whose user-id property decides what is exportable; default
        /// `$braze_external_id`.
        #[arg(long)]
        connection: Option<String>,
        /// Number of members to list.
        #[arg(long, default_value_t = 10)]
        sample: usize,
    },
    /// Explain, condition by condition, why a user is or is not a member.
    Explain {
        id: i64,
        /// The user's distinct id.
        #[arg(long)]
        user: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConnectionsCommand {
    /// Connect a Braze workspace; the server checks the credentials with Braze first.
    Add {
        /// Connection name, unique in the project.
        #[arg(long)]
        name: String,
        /// Braze instance, such as US-01 or EU-02.
        #[arg(long, required_unless_present = "base_url")]
        instance: Option<String>,
        /// Base URL outside the instance table, such as the Braze emulator; the server must
        /// allow it with --allow-custom-braze-url.
        #[arg(long, conflicts_with = "instance")]
        base_url: Option<String>,
        /// Braze Data Import Key of the workspace.
        #[arg(long, env = "COHORTBRIDGE_DATA_IMPORT_KEY", hide_env_values = true)]
        data_import_key: String,
        /// Profile property holding the Braze external id.
        #[arg(long)]
        user_id_property: Option<String>,
    },
    List,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    cohort_id: i64,
    /// Name of the Braze connection.
    #[arg(long)]
    connection: String,
    /// Export the current members once.
    #[arg(long, conflicts_with = "dynamic", required_unless_present = "dynamic")]
    once: bool,
    /// Keep Braze in sync, sending only adds and removes.
    #[arg(long)]
    dynamic: bool,
    /// Cadence of a dynamic sync, such as 15m or 1h.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    every: Duration,
}

#[derive(Debug, Subcommand)]
pub enum SyncsCommand {
    List,
    Show {
        id: i64,
    },
    /// Run a sync now and print the run.
    Run {
        id: i64,
    },
}

/// Runs a client command.
pub async fn run_client(args: ClientArgs, command: Command) -> anyhow::Result<()> {
    let admin_key = args
        .admin_key
        .clone()
        .context("no admin key: pass --admin-key or set COHORTBRIDGE_ADMIN_KEY (the server printed one on first start)")?;
    let client = AdminClient::new(&args.server, &admin_key, args.project)?;
    let json_output = args.json;
    let print_json = |value: &Value| {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        )
    };

    match command {
        Command::Serve(_) => unreachable!("serve is handled by main"),
        Command::Projects(ProjectsCommand::Show) => {
            let project = client.get("").await?;
            if json_output {
                print_json(&project);
            } else {
                println!(
                    "project:        {} ({})",
                    project["id"],
                    text(&project["name"])
                );
                println!("token:          {}", text(&project["token"]));
                println!("api secret:     {}", text(&project["api_secret"]));
                println!("currents token: {}", text(&project["currents_token"]));
                println!("time zone:      {}", text(&project["timezone"]));
            }
        }
        Command::Projects(ProjectsCommand::Set { timezone }) => {
            cohort_questions::set_timezone(&client, &timezone, json_output).await?
        }
        Command::Import(command) => import::run(&client, command, json_output).await?,
        Command::Cohorts(command) => cohorts(&client, command, json_output).await?,
        Command::Connections(ConnectionsCommand::Add {
            name,
            instance,
            base_url,
            data_import_key,
            user_id_property,
        }) => {
            let body = json!({
                "name": name,
                "instance": instance,
                "base_url": base_url,
                "data_import_key": data_import_key,
                "user_id_property": user_id_property,
            });
            let connection = client.post("/connections", &body).await?;
            if json_output {
                print_json(&connection);
            } else {
                println!(
                    "connection {} added: {} ({}), user id property {}",
                    connection["id"],
                    text(&connection["name"]),
                    text(&connection["base_url"]),
                    text(&connection["user_id_property"])
                );
            }
        }
        Command::Connections(ConnectionsCommand::List) => {
            let list = client.get("/connections").await?;
            if json_output {
                print_json(&list);
            } else {
                println!(
                    "{:<6} {:<24} {:<8} {:<36} USER ID PROPERTY",
                    "ID", "NAME", "INSTANCE", "BASE URL"
                );
                for c in list.as_array().into_iter().flatten() {
                    println!(
                        "{:<6} {:<24} {:<8} {:<36} {}",
                        text(&c["id"]),
                        text(&c["name"]),
                        text(&c["instance"]),
                        text(&c["base_url"]),
                        text(&c["user_id_property"])
                    );
                }
            }
        }
        Command::Export(args) => {
            let mode = if args.dynamic { "dynamic" } else { "once" };
            let body = json!({
                "cohort_id": args.cohort_id,
                "connection": args.connection,
                "mode": mode,
                "every_secs": args.dynamic.then_some(args.every.as_secs()),
            });
            let reply = client.post("/exports", &body).await?;
            if json_output {
                print_json(&reply);
            } else {
                println!("sync {} created ({mode}); first run:", reply["sync"]["id"]);
                print_run(&reply["run"]);
            }
            if reply["run"]["status"] == "failed" {
                bail!("the first run of sync {} failed", reply["sync"]["id"]);
            }
        }
        Command::Syncs(command) => syncs(&client, command, json_output).await?,
        Command::Mtu { month } => {
            let report = client
                .get(&format!("/mtu?month={}", urlencode(&month)))
                .await?;
            if json_output {
                print_json(&report);
            } else {
                println!("{}", report["users"]);
            }
        }
    }
    Ok(())
}

async fn cohorts(
    client: &AdminClient,
    command: CohortsCommand,
    json_output: bool,
) -> anyhow::Result<()> {
    let print_json = |value: &Value| {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        )
    };
    match command {
        CohortsCommand::Create { name, file } => {
            let text_body = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let definition: Value = serde_json::from_str(&text_body)
                .with_context(|| format!("{} is not valid JSON", file.display()))?;
            let cohort = client
                .post("/cohorts", &json!({"name": name, "definition": definition}))
                .await?;
            if json_output {
                print_json(&cohort);
            } else {
                println!("{}", cohort["id"]);
            }
        }
        CohortsCommand::List => {
            let list = client.get("/cohorts").await?;
            if json_output {
                print_json(&list);
            } else {
                println!("{:<6} {:<32} CREATED", "ID", "NAME");
                for c in list.as_array().into_iter().flatten() {
                    println!(
                        "{:<6} {:<32} {}",
                        text(&c["id"]),
                        text(&c["name"]),
                        iso(&c["created_at_ms"])
                    );
                }
            }
        }
        CohortsCommand::Show { id } => {
            let cohort = client.get(&format!("/cohorts/{id}")).await?;
            if json_output {
                print_json(&cohort);
            } else {
                println!("cohort {}: {}", cohort["id"], text(&cohort["name"]));
                println!("created: {}", iso(&cohort["created_at_ms"]));
                println!(
                    "definition:\n{}",
                    serde_json::to_string_pretty(&cohort["definition"])?
                );
            }
        }
        CohortsCommand::Update { id, name, file } => {
            cohort_questions::update(client, id, name, &file, json_output).await?
        }
        CohortsCommand::Preview {
            id,
            connection,
            sample,
        } => cohort_questions::preview(client, id, connection, sample, json_output).await?,
        CohortsCommand::Explain { id, user } => {
            cohort_questions::explain(client, id, &user, json_output).await?
        }
        CohortsCommand::Members { id } => {
            let reply = client.get(&format!("/cohorts/{id}/members")).await?;
            if json_output {
                print_json(&reply);
            } else {
                for member in reply["members"].as_array().into_iter().flatten() {
                    println!("{}", text(member));
                }
            }
        }
    }
    Ok(())
}

async fn syncs(
    client: &AdminClient,
    command: SyncsCommand,
    json_output: bool,
) -> anyhow::Result<()> {
    let print_json = |value: &Value| {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        )
    };
    match command {
        SyncsCommand::List => {
            let list = client.get("/syncs").await?;
            if json_output {
                print_json(&list);
                return Ok(());
            }
            println!(
                "{:<6} {:<8} {:<10} {:<8} {:<22} LAST RUN",
                "ID", "COHORT", "MODE", "STATUS", "NEXT RUN"
            );
            for item in list.as_array().into_iter().flatten() {
                let sync = &item["sync"];
                let last = &item["last_run"];
                let last_text = if last.is_null() {
                    "never".to_owned()
                } else {
                    format!(
                        "{} +{} -{} skipped {}",
                        text(&last["status"]),
                        last["added"],
                        last["removed"],
                        last["skipped"]
                    )
                };
                println!(
                    "{:<6} {:<8} {:<10} {:<8} {:<22} {}",
                    text(&sync["id"]),
                    text(&sync["cohort_id"]),
                    text(&sync["mode"]),
                    text(&sync["status"]),
                    iso(&sync["next_run_at_ms"]),
                    last_text
                );
            }
        }
        SyncsCommand::Show { id } => {
            let reply = client.get(&format!("/syncs/{id}")).await?;
            if json_output {
                print_json(&reply);
                return Ok(());
            }
            let sync = &reply["sync"];
            println!(
                "sync {}: cohort {} via connection {}, {}, {}",
                sync["id"],
                sync["cohort_id"],
                sync["connection_id"],
                text(&sync["mode"]),
                text(&sync["status"])
            );
            if let Some(reason) = sync["status_reason"].as_str() {
                println!("reason: {reason}");
            }
            for run in reply["runs"].as_array().into_iter().flatten() {
                print_run(run);
            }
        }
        SyncsCommand::Run { id } => {
            let run = client.post(&format!("/syncs/{id}/run"), &json!({})).await?;
            if json_output {
                print_json(&run);
            } else {
                print_run(&run);
            }
            if run["status"] == "failed" {
                bail!("run {} of sync {id} failed", run["id"]);
            }
        }
    }
    Ok(())
}

fn print_run(run: &Value) {
    println!(
        "  run {}: {} started {} finished {} members {} added {} removed {} skipped {} requests {}{}",
        run["id"],
        text(&run["status"]),
        iso(&run["started_at_ms"]),
        iso(&run["finished_at_ms"]),
        run["members"],
        run["added"],
        run["removed"],
        run["skipped"],
        run["requests"],
        run["error"].as_str().map(|e| format!(" error: {e}")).unwrap_or_default()
    );
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn iso(value: &Value) -> String {
    value
        .as_i64()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| "-".into())
}

fn urlencode(text: &str) -> String {
    serde_urlencoded::to_string([("v", text)])
        .unwrap_or_default()
        .trim_start_matches("v=")
        .to_owned()
}
