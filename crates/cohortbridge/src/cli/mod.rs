//! The command line: `serve` runs the server; every other command is a client of a running
//! server's HTTP API (`--server`), authenticated with the admin key.

mod bench;
mod bench_mtu;
mod client;
mod cohort_questions;
mod currents;
mod import;
mod table;
mod users;

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
    Serve(Box<ServeConfig>),
    /// Apply pending database migrations and exit; `serve` also applies them at start.
    Migrate(MigrateArgs),
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
    /// Add people who log in to the web UI, and give them API keys.
    #[command(subcommand)]
    Users(users::UsersCommand),
    /// Measure the server's ingestion speed.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Print Monthly Tracked Users for a calendar month of the project's time zone.
    Mtu {
        /// Month as YYYY-MM.
        #[arg(long)]
        month: String,
        /// Explain why this distinct id counts or not, instead of the report.
        #[arg(long, value_name = "DISTINCT_ID")]
        explain: Option<String>,
        /// Print every figure of the report, not only the MTU number.
        #[arg(long)]
        details: bool,
    },
}

/// Settings of `cohortbridge migrate`.
#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// Folder of the SQLite database, used when no --database-url is given.
    #[arg(long, env = "COHORTBRIDGE_DATA_DIR", default_value = "./data")]
    pub data_dir: std::path::PathBuf,

    #[command(flatten)]
    pub database: crate::config::DatabaseArgs,
}

/// Applies pending migrations to the configured database and prints what was applied.
pub async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    use anyhow::Context;

    let database = args.database.database(&args.data_dir)?;
    if let crate::store::Database::Sqlite { .. } = database {
        std::fs::create_dir_all(&args.data_dir).with_context(|| {
            format!("cannot create the data folder {}", args.data_dir.display())
        })?;
    }
    let applied = database
        .migrate()
        .await
        .with_context(|| format!("cannot migrate the database ({})", database.describe()))?;
    if applied.is_empty() {
        println!("{}: no pending migrations", database.describe());
    } else {
        println!(
            "{}: applied {} migration(s): {}",
            database.describe(),
            applied.len(),
            applied.join(", ")
        );
    }
    Ok(())
}

/// Parses an IANA time zone name for `--source-time-zone`.
fn parse_time_zone(name: &str) -> Result<chrono_tz::Tz, String> {
    name.parse().map_err(|_| {
        format!("{name:?} is not an IANA time zone name; use a name such as America/New_York")
    })
}

#[derive(Debug, Subcommand)]
pub enum ProjectsCommand {
    /// Print the project's token and settings. Its API secret and Currents token are shown
    /// only when generated, by `rotate-api-secret` and `rotate-currents-token`.
    Show,
    /// Generate a new API secret (for `/import` and the query APIs) and print it once. The
    /// previous secret stops working at once.
    RotateApiSecret,
    /// Generate a new Currents token (the bearer token Braze Currents sends to `/currents`) and
    /// print it once. The previous token stops working at once.
    RotateCurrentsToken,
    /// Change project settings.
    Set {
        /// Identity mode that resolves distinct ids to users: `simplified` (Simplified ID Merge)
        /// or `original` (Original ID Merge). Fixed once the project has events.
        #[arg(long, value_parser = ["simplified", "original"], required_unless_present = "timezone")]
        identity_mode: Option<String>,
        /// IANA time zone in which cohort windows are evaluated, such as Europe/Berlin.
        #[arg(long)]
        timezone: Option<String>,
    },
    /// Manage extra `/import` credentials.
    #[command(subcommand)]
    Credentials(CredentialsCommand),
}

#[derive(Debug, Subcommand)]
pub enum CredentialsCommand {
    /// Create a credential for `/import` (HTTP Basic user) and print its secret once.
    Add {
        /// Credential name, unique in the project.
        #[arg(long)]
        name: String,
        /// Mark every event imported with it as Braze's (`$partner_id` = `braze`), for Braze's
        /// Mixpanel connector.
        #[arg(long)]
        braze_currents: bool,
    },
    List,
}

#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// Import events from NDJSON files (Mixpanel's export format), optionally gzipped.
    Events {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// IANA time zone (such as `America/New_York`) in which the export's `time` values are
        /// wall-clock times, as in exports of Mixpanel projects created before its switch to
        /// UTC. Each `time` is converted to UTC before import. Default: times are already UTC.
        #[arg(long, value_parser = parse_time_zone)]
        source_time_zone: Option<chrono_tz::Tz>,
        /// The project's API secret. Without it, records are sent with the project token, and
        /// `$merge` events are then recorded as failed merges, as on `/track`.
        #[arg(long, env = "COHORTBRIDGE_API_SECRET", hide_env_values = true)]
        api_secret: Option<String>,
    },
    /// Import profiles from engage-export files (`$distinct_id` and `$properties` per record).
    Profiles {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Import Braze Currents storage files (Avro), walking folders in Braze's layout.
    Currents {
        /// Avro files or folders that contain them.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Keep running and import new files as they appear.
        #[arg(long)]
        watch: bool,
        /// How often `--watch` looks for new files, such as 30s or 5m.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// File that records which files were imported, so they are skipped next time.
        #[arg(long, default_value = "cohortbridge-currents-imported.txt")]
        state_file: PathBuf,
        /// The project's Currents token, which `/currents` requires (see
        /// `projects rotate-currents-token`).
        #[arg(long, env = "COHORTBRIDGE_CURRENTS_TOKEN", hide_env_values = true)]
        currents_token: String,
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
    /// Rename a cohort; the next run of each of its syncs sends the new name to Braze.
    Rename {
        id: i64,
        /// New cohort name, as Braze will show it.
        #[arg(long)]
        name: String,
    },
    /// Delete a cohort and stop its syncs. Its members stay in Braze unless --remove-members
    /// is given.
    Delete {
        id: i64,
        /// First remove every member of the cohort from Braze, through each of its syncs. If
        /// Braze does not accept that, nothing is deleted and the command fails.
        #[arg(long)]
        remove_members: bool,
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
        /// Braze instance, such as US-01 or EU-02. With --base-url, the instance that URL stands
        /// for, which decides the region of the partner API key.
        #[arg(long, required_unless_present = "base_url")]
        instance: Option<String>,
        /// Base URL outside the instance table, such as the Braze emulator or a proxy; the server
        /// must allow it with --allow-custom-braze-url.
        #[arg(long)]
        base_url: Option<String>,
        /// Braze Data Import Key of the workspace, for the cohort_import delivery.
        #[arg(long, env = "COHORTBRIDGE_DATA_IMPORT_KEY", hide_env_values = true)]
        data_import_key: Option<String>,
        /// Profile property holding the Braze external id.
        #[arg(long)]
        user_id_property: Option<String>,
        /// Delivery mode: `cohort_import` (partner cohort import API, needs the server's
        /// partner key) or `attributes` (an array custom attribute through /users/track, needs
        /// only a REST API key).
        #[arg(long, default_value = "cohort_import", value_parser = ["cohort_import", "attributes"])]
        delivery: String,
        /// Customer REST API key with users.track permission, for the attributes delivery.
        #[arg(long, env = "COHORTBRIDGE_REST_API_KEY", hide_env_values = true)]
        rest_api_key: Option<String>,
        /// Array custom attribute that contains cohort names, for the attributes delivery
        /// (default mixpanel_cohorts).
        #[arg(long)]
        attribute_name: Option<String>,
    },
    List,
    /// Replace the Data Import Key of a connection after Braze accepts it, and resume the syncs
    /// that a disconnect or a Braze error paused.
    Reconnect {
        /// Connection name or id.
        connection: String,
        /// New Braze Data Import Key of the workspace (cohort_import delivery).
        #[arg(long, env = "COHORTBRIDGE_DATA_IMPORT_KEY", hide_env_values = true)]
        data_import_key: Option<String>,
        /// New REST API key of the workspace (attributes delivery).
        #[arg(long, env = "COHORTBRIDGE_REST_API_KEY", hide_env_values = true)]
        rest_api_key: Option<String>,
    },
    /// Pause every dynamic sync of a connection, keeping their state, until a reconnect.
    Disconnect {
        /// Connection name or id.
        connection: String,
    },
    /// Rename a connection; the export menu shows it as `Braze (<name>)`.
    Rename {
        /// Connection name or id.
        connection: String,
        /// New connection name, unique in the project.
        #[arg(long)]
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    cohort_id: i64,
    /// Name of the Braze connection.
    #[arg(long)]
    connection: String,
    /// Export the current members once.
    #[arg(
        long,
        conflicts_with = "dynamic",
        required_unless_present_any = ["dynamic", "dry_run"]
    )]
    once: bool,
    /// Keep Braze in sync, sending only adds and removes.
    #[arg(long)]
    dynamic: bool,
    /// Cadence of a dynamic sync, such as 15m or 1h.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    every: Duration,
    /// Print who the next run would add and remove, without creating a sync or sending
    /// anything to Braze.
    #[arg(long)]
    dry_run: bool,
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
    /// Pause a dynamic sync until `syncs resume`.
    Pause {
        id: i64,
    },
    /// Resume a paused sync; it runs at the next scheduler tick.
    Resume {
        id: i64,
    },
    /// Stop a sync for good. Its members stay in Braze unless --remove-members is given.
    Remove {
        id: i64,
        /// First remove every member the sync put in Braze. If Braze does not accept that, the
        /// sync is kept and the command fails.
        #[arg(long)]
        remove_members: bool,
    },
    /// List each user of a run: distinct id, Braze id, operation (add, remove, no-op, skipped)
    /// and the reason for a skip.
    Operations {
        run_id: i64,
        /// Print CSV with a header row.
        #[arg(long)]
        csv: bool,
    },
}

/// Runs a client command.
pub async fn run_client(args: ClientArgs, command: Command) -> anyhow::Result<()> {
    if let Command::Bench(command) = command {
        return bench::run(&args, command).await;
    }
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
        Command::Serve(_) | Command::Migrate(_) => {
            unreachable!("serve and migrate are handled by main")
        }
        Command::Bench(_) => unreachable!("bench is handled above"),
        Command::Users(command) => users::run(&client, command, json_output).await?,
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
                println!("time zone:      {}", text(&project["timezone"]));
                println!("identity mode:  {}", text(&project["identity_mode"]));
            }
        }
        Command::Projects(ProjectsCommand::RotateApiSecret) => {
            let reply = client.post("/api-secret", &json!({})).await?;
            if json_output {
                print_json(&reply);
            } else {
                println!("api secret:     {}", text(&reply["api_secret"]));
                println!("(shown only now; the previous API secret no longer works)");
            }
        }
        Command::Projects(ProjectsCommand::RotateCurrentsToken) => {
            let reply = client.post("/currents-token", &json!({})).await?;
            if json_output {
                print_json(&reply);
            } else {
                println!("currents token: {}", text(&reply["currents_token"]));
                println!("(shown only now; the previous Currents token no longer works)");
            }
        }
        Command::Projects(ProjectsCommand::Set {
            identity_mode,
            timezone,
        }) => {
            if let Some(identity_mode) = identity_mode {
                let reply = client
                    .post("/identity-mode", &json!({"identity_mode": identity_mode}))
                    .await?;
                if json_output {
                    print_json(&reply);
                } else {
                    println!("identity mode:  {}", text(&reply["identity_mode"]));
                }
            }
            if let Some(timezone) = timezone {
                cohort_questions::set_timezone(&client, &timezone, json_output).await?
            }
        }
        Command::Projects(ProjectsCommand::Credentials(CredentialsCommand::Add {
            name,
            braze_currents,
        })) => {
            let reply = client
                .post(
                    "/credentials",
                    &json!({"name": name, "braze_currents": braze_currents}),
                )
                .await?;
            if json_output {
                print_json(&reply);
            } else {
                println!(
                    "credential {} created; its secret is shown only now:",
                    text(&reply["credential"]["name"])
                );
                println!("{}", text(&reply["secret"]));
            }
        }
        Command::Projects(ProjectsCommand::Credentials(CredentialsCommand::List)) => {
            let list = client.get("/credentials").await?;
            if json_output {
                print_json(&list);
            } else {
                println!("{:<6} {:<24} PARTNER", "ID", "NAME");
                for c in list.as_array().into_iter().flatten() {
                    println!(
                        "{:<6} {:<24} {}",
                        text(&c["id"]),
                        text(&c["name"]),
                        text(&c["partner_id"])
                    );
                }
            }
        }
        Command::Import(ImportCommand::Currents {
            paths,
            watch,
            interval,
            state_file,
            currents_token,
        }) => {
            let options = currents::Options {
                paths,
                watch,
                interval,
                state_file,
                token: currents_token,
            };
            currents::run(&client, options, json_output).await?
        }
        Command::Import(command) => import::run(&client, command, json_output).await?,
        Command::Cohorts(command) => cohorts(&client, command, json_output).await?,
        Command::Connections(ConnectionsCommand::Add {
            name,
            instance,
            base_url,
            data_import_key,
            user_id_property,
            delivery,
            rest_api_key,
            attribute_name,
        }) => {
            let body = json!({
                "name": name,
                "instance": instance,
                "base_url": base_url,
                "data_import_key": data_import_key,
                "user_id_property": user_id_property,
                "delivery": delivery,
                "rest_api_key": rest_api_key,
                "attribute_name": attribute_name,
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
        Command::Connections(ConnectionsCommand::Reconnect {
            connection,
            data_import_key,
            rest_api_key,
        }) => {
            let reply = client
                .post(
                    &format!("/connections/{}/reconnect", path_segment(&connection)),
                    &json!({"data_import_key": data_import_key, "rest_api_key": rest_api_key}),
                )
                .await?;
            if json_output {
                print_json(&reply);
            } else {
                println!(
                    "connection {} reconnected; resumed syncs: {}",
                    text(&reply["connection"]["name"]),
                    reply["resumed_syncs"]
                );
            }
        }
        Command::Connections(ConnectionsCommand::Disconnect { connection }) => {
            let reply = client
                .post(
                    &format!("/connections/{}/disconnect", path_segment(&connection)),
                    &json!({}),
                )
                .await?;
            if json_output {
                print_json(&reply);
            } else {
                println!(
                    "connection {} disconnected; its dynamic syncs are paused",
                    text(&reply["name"])
                );
            }
        }
        Command::Connections(ConnectionsCommand::Rename { connection, name }) => {
            let reply = client
                .post(
                    &format!("/connections/{}/rename", path_segment(&connection)),
                    &json!({"name": name}),
                )
                .await?;
            if json_output {
                print_json(&reply);
            } else {
                println!(
                    "connection {} renamed to {}",
                    reply["id"],
                    text(&reply["name"])
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
        Command::Export(args) if args.dry_run => {
            let body = json!({
                "cohort_id": args.cohort_id,
                "connection": args.connection,
                "dry_run": true,
            });
            let plan = client.post("/exports", &body).await?;
            if json_output {
                print_json(&plan);
            } else {
                print_plan(&plan);
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
            let reply = client.post("/exports", &body).await.with_context(|| {
                if args.dynamic {
                    format!(
                        "could not create the sync (--every {} is sent as `every_secs` {})",
                        humantime::format_duration(args.every),
                        args.every.as_secs()
                    )
                } else {
                    "could not create the export".to_owned()
                }
            })?;
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
        Command::Mtu {
            month,
            explain,
            details,
        } => {
            let mut path = format!("/mtu?month={}", urlencode(&month));
            if let Some(distinct_id) = &explain {
                path.push_str(&format!("&explain={}", urlencode(distinct_id)));
            }
            let report = client.get(&path).await?;
            if json_output {
                print_json(&report);
            } else if explain.is_some() {
                print_mtu_explanation(&report);
            } else if details {
                print_mtu_report(&report);
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
        CohortsCommand::Rename { id, name } => {
            let cohort = client
                .post(&format!("/cohorts/{id}/rename"), &json!({"name": name}))
                .await?;
            if json_output {
                print_json(&cohort);
            } else {
                println!("cohort {id} renamed to {}", text(&cohort["name"]));
            }
        }
        CohortsCommand::Delete { id, remove_members } => {
            let reply = client
                .delete(&format!("/cohorts/{id}?remove_members={remove_members}"))
                .await?;
            if json_output {
                print_json(&reply);
            } else {
                let members = if remove_members {
                    "its members were removed from Braze"
                } else {
                    "its members were left in Braze"
                };
                println!(
                    "cohort {id} deleted; syncs stopped: {}; {members}",
                    reply["removed_syncs"]
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
            print!("{}", syncs_table(&list));
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
            let cadence = sync["interval_secs"]
                .as_u64()
                .map(|secs| humantime::format_duration(Duration::from_secs(secs)).to_string())
                .unwrap_or_else(|| "-".into());
            println!(
                "cadence: {cadence}, last run: {}, next run: {}",
                text(&reply["last_run_at"]),
                text(&reply["next_run_at"])
            );
            for run in reply["runs"].as_array().into_iter().flatten() {
                print_run(run);
            }
        }
        SyncsCommand::Pause { id } => {
            let sync = client
                .post(&format!("/syncs/{id}/pause"), &json!({}))
                .await?;
            if json_output {
                print_json(&sync);
            } else {
                println!("sync {id} paused");
            }
        }
        SyncsCommand::Resume { id } => {
            let sync = client
                .post(&format!("/syncs/{id}/resume"), &json!({}))
                .await?;
            if json_output {
                print_json(&sync);
            } else {
                println!("sync {id} resumed");
            }
        }
        SyncsCommand::Remove { id, remove_members } => {
            let sync = client
                .delete(&format!("/syncs/{id}?remove_members={remove_members}"))
                .await?;
            if json_output {
                print_json(&sync);
            } else {
                println!("sync {id} {}", text(&sync["status_reason"]));
            }
        }
        SyncsCommand::Operations { run_id, csv } => {
            let reply = client.get(&format!("/runs/{run_id}/operations")).await?;
            if reply["operations_deleted"] == true {
                eprintln!(
                    "run {run_id} is older than the runs whose operations the server keeps (serve --runs-with-operations); only its counts remain, in `syncs show`"
                );
            }
            if json_output {
                print_json(&reply);
            } else {
                print_operations(&reply["operations"], csv)?;
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

/// Formats the reply of `GET /syncs` as the table `syncs list` prints.
fn syncs_table(list: &Value) -> String {
    let rows: Vec<Vec<String>> = list
        .as_array()
        .into_iter()
        .flatten()
        .map(|item| {
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
            vec![
                text(&sync["id"]),
                text(&sync["cohort_id"]),
                text(&sync["mode"]),
                text(&sync["status"]),
                iso(&sync["next_run_at_ms"]),
                last_text,
            ]
        })
        .collect();
    table::format_table(
        &["ID", "COHORT", "MODE", "STATUS", "NEXT RUN", "LAST RUN"],
        &rows,
    )
}

fn print_mtu_report(report: &Value) {
    println!("month:              {}", text(&report["month"]));
    println!("users (MTU):        {}", report["users"]);
    println!("exempt-only users:  {}", report["exempt_only_users"]);
    println!("total events:       {}", report["total_events"]);
    println!("unattributed:       {}", report["unattributed_events"]);
    println!(
        "billable users:     {} (guardrail applies: {})",
        report["billable_users"], report["guardrail_applies"]
    );
    for (source, counts) in report["by_source"].as_object().into_iter().flatten() {
        println!(
            "source {source:<8}     counted {} exempt {}",
            counts["counted_events"], counts["exempt_events"]
        );
    }
}

fn print_mtu_explanation(explanation: &Value) {
    let verdict = if explanation["counted"] == true {
        "counts"
    } else {
        "does not count"
    };
    println!(
        "{} (user {}) {verdict} in {}",
        text(&explanation["distinct_id"]),
        text(&explanation["canonical_id"]),
        text(&explanation["month"])
    );
    for item in explanation["events"].as_array().into_iter().flatten() {
        let why = match item["exempt_because"].as_str() {
            Some(reason) => format!("exempt: {reason}"),
            None => "qualifies".to_owned(),
        };
        println!(
            "  {} x {} from {}: {why}",
            item["count"],
            text(&item["event"]),
            text(&item["source"])
        );
    }
}

fn print_run(run: &Value) {
    println!(
        "  run {}: {} trigger {} started {} finished {} members {} added {} removed {} unchanged {} skipped {} requests {} retries {}{}",
        run["id"],
        text(&run["status"]),
        text(&run["trigger"]),
        iso(&run["started_at_ms"]),
        iso(&run["finished_at_ms"]),
        run["members"],
        run["added"],
        run["removed"],
        run["unchanged"],
        run["skipped"],
        run["requests"],
        run["retries"],
        run["error"].as_str().map(|e| format!(" error: {e}")).unwrap_or_default()
    );
}

/// Prints a dry run: one `add <braze id>` or `remove <braze id>` line per change, then the
/// totals.
/// Prints a dry run's plan, one id a line. Ids are JSON strings, quoted and escaped, so that
/// spaces at their ends, backslashes and control characters stay visible and unambiguous.
fn print_plan(plan: &Value) {
    for operation in ["add", "remove"] {
        for id in plan[operation].as_array().into_iter().flatten() {
            println!("{operation} {}", table::printable(&id.to_string()));
        }
    }
    println!(
        "dry run, nothing sent: {} to add, {} to remove, {} unchanged, {} members skipped",
        plan["add"].as_array().map_or(0, Vec::len),
        plan["remove"].as_array().map_or(0, Vec::len),
        plan["unchanged"],
        plan["skipped"]
    );
}

/// Prints a run's operations as CSV or as aligned text.
fn print_operations(operations: &Value, csv_output: bool) -> anyhow::Result<()> {
    let rows = operations.as_array().map(Vec::as_slice).unwrap_or_default();
    let field = |op: &Value, key: &str| op[key].as_str().unwrap_or_default().to_owned();
    if csv_output {
        let mut writer = csv::Writer::from_writer(std::io::stdout().lock());
        writer.write_record(["distinct_id", "braze_id", "operation", "reason"])?;
        for op in rows {
            writer.write_record([
                field(op, "distinct_id"),
                field(op, "external_id"),
                field(op, "operation"),
                field(op, "reason"),
            ])?;
        }
        writer.flush()?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|op| {
            vec![
                text(&op["distinct_id"]),
                text(&op["external_id"]),
                text(&op["operation"]),
                field(op, "reason"),
            ]
        })
        .collect();
    print!(
        "{}",
        table::format_table(&["DISTINCT ID", "BRAZE ID", "OPERATION", "REASON"], &rows)
    );
    Ok(())
}

/// Percent-encodes one URL path segment, such as a connection name.
fn path_segment(text: &str) -> String {
    urlencode(text).replace('+', "%20")
}

/// Renders a value of a server reply for the terminal: strings as they are, with control and
/// direction characters escaped (see [`table::printable`]), `null` as `-`, others as JSON.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => table::printable(s).into_owned(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syncs_table_keeps_columns_aligned() {
        let list = json!([
            {"sync": {"id": 1, "cohort_id": 7, "mode": "once", "status": "completed",
                "next_run_at_ms": null},
             "last_run": {"status": "succeeded", "added": 2, "removed": 0, "skipped": 1}},
            {"sync": {"id": 123456, "cohort_id": 12345678901_i64, "mode": "dynamic",
                "status": "active", "next_run_at_ms": 1_700_000_000_000_i64},
             "last_run": null},
        ]);
        let table = syncs_table(&list);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        let header = lines[0];
        for (column, values) in [
            ("COHORT", ["7", "12345678901"]),
            ("MODE", ["once", "dynamic"]),
            ("STATUS", ["completed", "active"]),
            ("NEXT RUN", ["-", "2023-11-14T22:13:20Z"]),
            ("LAST RUN", ["succeeded +2 -0 skipped 1", "never"]),
        ] {
            let start = header.find(column).unwrap();
            for (line, value) in lines[1..].iter().zip(values) {
                assert!(
                    line[start..].starts_with(value),
                    "{column} column of {line:?} does not start with {value:?}"
                );
            }
        }
    }
}
