//! Settings of `cohortbridge serve`. Every flag is also an environment variable, and the
//! defaults run with no configuration at all.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address to listen on for ingestion, Currents and the admin API.
    #[arg(long, env = "COHORTBRIDGE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Folder for the SQLite database, the encryption key and the node id; created if missing.
    #[arg(long, env = "COHORTBRIDGE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Name of this server process among the nodes that share one PostgreSQL database, used to
    /// lease sync runs. Without it, an id kept in the data folder's `node-id` file is used,
    /// created on first start.
    #[arg(long, env = "COHORTBRIDGE_NODE_ID")]
    pub node_id: Option<String>,

    /// Names this installation in the ids of the cohorts it creates in Braze, so that two
    /// installations exporting to one Braze workspace never share a cohort. Only the first start
    /// of a database records it; without it, a random id is recorded then. Letters, digits and
    /// `-`, at most 32 characters.
    #[arg(long, env = "COHORTBRIDGE_INSTALLATION_ID", value_parser = parse_installation_id)]
    pub installation_id: Option<String>,

    /// How long a node's lease on a running sync holds without renewal, in seconds. The node
    /// renews it every third of this time; when the node stops, another node takes the sync
    /// over once the lease has expired.
    #[arg(long, env = "COHORTBRIDGE_SYNC_LEASE_SECS", default_value_t = 30)]
    pub sync_lease_secs: u64,

    /// Admin key for the admin API and CLI. Without it, a key is generated on first start and
    /// printed once.
    #[arg(long, env = "COHORTBRIDGE_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,

    /// Key that encrypts stored secrets, as 64 hex digits. Without it, a key file in the data
    /// folder is used, created on first start.
    #[arg(long, env = "COHORTBRIDGE_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<String>,

    /// Partner name in Braze's partner API paths (`/partners/<name>/...`).
    #[arg(
        long,
        env = "COHORTBRIDGE_BRAZE_PARTNER_NAME",
        default_value = "cohortbridge"
    )]
    pub braze_partner_name: String,

    /// Partner API key for Braze instances outside the EU.
    #[arg(
        long,
        env = "COHORTBRIDGE_BRAZE_PARTNER_API_KEY",
        hide_env_values = true
    )]
    pub braze_partner_api_key: Option<String>,

    /// Partner API key for Braze's EU instances (`.braze.eu` hosts).
    #[arg(
        long,
        env = "COHORTBRIDGE_BRAZE_PARTNER_API_KEY_EU",
        hide_env_values = true
    )]
    pub braze_partner_api_key_eu: Option<String>,

    /// Allow connections whose base URL is outside Braze's instance table, such as the bundled
    /// Braze emulator.
    #[arg(long, env = "COHORTBRIDGE_ALLOW_CUSTOM_BRAZE_URL")]
    pub allow_custom_braze_url: bool,

    /// Shortest cadence of a dynamic sync, in seconds.
    #[arg(
        long,
        env = "COHORTBRIDGE_MIN_SYNC_INTERVAL_SECS",
        default_value_t = 60
    )]
    pub min_sync_interval_secs: u64,

    /// How often the scheduler looks for due syncs, in milliseconds.
    #[arg(long, env = "COHORTBRIDGE_SCHEDULER_TICK_MS", default_value_t = 1000)]
    pub scheduler_tick_ms: u64,

    /// Attempts per Braze request before a run gives up (429, 5xx, timeouts).
    #[arg(long, env = "COHORTBRIDGE_BRAZE_MAX_ATTEMPTS", default_value_t = 6)]
    pub braze_max_attempts: u32,

    /// First backoff delay of a Braze retry, in milliseconds; it doubles with each attempt.
    #[arg(long, env = "COHORTBRIDGE_BRAZE_RETRY_BASE_MS", default_value_t = 500)]
    pub braze_retry_base_ms: u64,

    /// Minimum wait after a Braze 429, in milliseconds.
    #[arg(
        long,
        env = "COHORTBRIDGE_BRAZE_RATE_LIMIT_FLOOR_MS",
        default_value_t = 1000
    )]
    pub braze_rate_limit_floor_ms: u64,

    /// Maximum wait a Braze 429 may impose on one request, in seconds. A longer wait fails the
    /// run, and the sync's next run retries.
    #[arg(
        long,
        env = "COHORTBRIDGE_BRAZE_MAX_RATE_LIMIT_WAIT_SECS",
        default_value_t = 300
    )]
    pub braze_max_rate_limit_wait_secs: u64,

    /// Timeout of one Braze request, in seconds.
    #[arg(long, env = "COHORTBRIDGE_BRAZE_TIMEOUT_SECS", default_value_t = 30)]
    pub braze_timeout_secs: u64,

    /// Events that never count towards Monthly Tracked Users, comma-separated; names compare
    /// without regard to ASCII case, and `prefix*` matches a prefix.
    #[arg(long, env = "COHORTBRIDGE_MTU_NEVER_QUALIFYING", value_delimiter = ',',
        default_values_t = default_never_qualifying())]
    pub mtu_never_qualifying: Vec<String>,

    /// Events that do not count towards Monthly Tracked Users when they carry a `$partner_id`
    /// (a partner's outreach, such as Braze's Email Send), comma-separated.
    #[arg(long, env = "COHORTBRIDGE_MTU_PARTNER_OUTREACH", value_delimiter = ',',
        default_values_t = default_partner_outreach())]
    pub mtu_partner_outreach: Vec<String>,

    /// Dynamic syncs a project may have that are not removed; creating one more is rejected.
    #[arg(
        long,
        env = "COHORTBRIDGE_MAX_DYNAMIC_SYNCS_PER_PROJECT",
        default_value_t = 60
    )]
    pub max_dynamic_syncs_per_project: usize,

    /// Members a cohort may have; a run of a larger cohort sends nothing and fails.
    #[arg(
        long,
        env = "COHORTBRIDGE_MAX_COHORT_MEMBERS",
        default_value_t = 10_000_000
    )]
    pub max_cohort_members: usize,

    /// Runs of each sync whose per-user operations (`syncs operations`) are kept. A run lists
    /// every member, so older runs keep only their counts.
    #[arg(
        long,
        env = "COHORTBRIDGE_RUNS_WITH_OPERATIONS",
        default_value_t = 20,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub runs_with_operations: u32,

    /// Mark web UI session cookies `Secure` on every reply. Without it they are marked
    /// `Secure` only when a reverse proxy sends `X-Forwarded-Proto: https`.
    #[arg(long, env = "COHORTBRIDGE_SECURE_COOKIES")]
    pub secure_cookies: bool,

    /// E-mail of the first owner of the web UI, created on start when no person has an account
    /// yet. The password is read from COHORTBRIDGE_OWNER_PASSWORD.
    #[arg(long, env = "COHORTBRIDGE_OWNER_EMAIL")]
    pub owner_email: Option<String>,

    /// Password of the first owner (with --owner-email); at least 10 characters.
    #[arg(long, env = "COHORTBRIDGE_OWNER_PASSWORD", hide_env_values = true)]
    pub owner_password: Option<String>,

    /// Log format: `text` or `json`.
    #[arg(long, env = "COHORTBRIDGE_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

/// Settings that choose the database, shared by `serve` and `migrate`.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL database to use instead of the SQLite file in the data folder, as
    /// `postgres://user:password@host:port/database`. Several nodes may share one database.
    #[arg(long, env = "COHORTBRIDGE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// PostgreSQL connections one node keeps open at most.
    #[arg(
        long,
        env = "COHORTBRIDGE_DATABASE_MAX_CONNECTIONS",
        default_value_t = 16
    )]
    pub database_max_connections: usize,
}

impl DatabaseArgs {
    /// Resolves the settings to a database, checking the URL.
    pub fn database(
        &self,
        data_dir: &std::path::Path,
    ) -> Result<crate::store::Database, crate::store::DatabaseUrlError> {
        crate::store::Database::from_settings(
            self.database_url.as_deref(),
            data_dir,
            self.database_max_connections,
        )
    }
}

impl ServeConfig {
    /// Settings for tests and embedding: the defaults, with the given data folder and listen
    /// address.
    pub fn for_data_dir(data_dir: PathBuf, listen: SocketAddr) -> Self {
        Self {
            listen,
            data_dir,
            database: DatabaseArgs {
                database_url: None,
                database_max_connections: 16,
            },
            node_id: None,
            installation_id: None,
            sync_lease_secs: 30,
            admin_key: None,
            secret_key: None,
            braze_partner_name: "cohortbridge".into(),
            braze_partner_api_key: None,
            braze_partner_api_key_eu: None,
            allow_custom_braze_url: false,
            min_sync_interval_secs: 60,
            scheduler_tick_ms: 1000,
            braze_max_attempts: 6,
            braze_retry_base_ms: 500,
            braze_rate_limit_floor_ms: 1000,
            braze_max_rate_limit_wait_secs: 300,
            braze_timeout_secs: 30,
            max_dynamic_syncs_per_project: 60,
            max_cohort_members: 10_000_000,
            runs_with_operations: 20,
            log_format: "text".into(),
            secure_cookies: false,
            owner_email: None,
            owner_password: None,
            mtu_never_qualifying: default_never_qualifying(),
            mtu_partner_outreach: default_partner_outreach(),
        }
    }
}

fn default_never_qualifying() -> Vec<String> {
    crate::mtu::ExemptionRules::default().never_qualifying
}

fn default_partner_outreach() -> Vec<String> {
    crate::mtu::ExemptionRules::default().partner_outreach
}

/// Checks an `--installation-id`: 1 to 32 ASCII letters, digits or `-`.
fn parse_installation_id(text: &str) -> Result<String, String> {
    let valid = (1..=32).contains(&text.len())
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if valid {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{text:?} is not 1 to 32 ASCII letters, digits or '-'"
        ))
    }
}
