//! Command-line entry point of the Braze partner cohort import emulator.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;

use anyhow::{bail, Context};
use braze_emulator::{Config, Emulator};
use clap::Parser;
use tracing::info;
use tracing_subscriber::EnvFilter;

/// Local emulator of Braze's partner cohort import API, for tests and trials.
///
/// Prints `listening on http://ADDR` to stdout once the port is bound. Logs go to
/// stderr at the level set by RUST_LOG (default info).
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Address to listen on. Port 0 picks a free port.
    #[arg(long, env = "BRAZE_EMULATOR_LISTEN", default_value = "127.0.0.1:9090")]
    listen: SocketAddr,

    /// Partner name expected in the /partners/{partner_name}/... paths.
    #[arg(long, env = "BRAZE_EMULATOR_PARTNER_NAME")]
    partner_name: String,

    /// Accepted partner API key. Repeat the flag, or comma-separate the keys in
    /// the environment variable, to accept several.
    #[arg(
        long = "partner-api-key",
        env = "BRAZE_EMULATOR_PARTNER_API_KEYS",
        value_delimiter = ',',
        required = true,
        hide_env_values = true
    )]
    partner_api_keys: Vec<String>,

    /// Accepted data import key (client_secret). Each key is its own workspace,
    /// numbered from 0 in the order given.
    #[arg(
        long = "data-import-key",
        env = "BRAZE_EMULATOR_DATA_IMPORT_KEYS",
        value_delimiter = ',',
        required = true,
        hide_env_values = true
    )]
    data_import_keys: Vec<String>,

    /// Maximum partner requests per UTC minute. Further requests get 429. Off by default.
    #[arg(
        long,
        env = "BRAZE_EMULATOR_RATE_LIMIT_PER_MINUTE",
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    rate_limit_per_minute: Option<u32>,

    /// Accepted REST API key of `/users/track` (`Authorization: Bearer`). Each key is the
    /// workspace of the same position as a data import key.
    #[arg(
        long = "rest-api-key",
        env = "BRAZE_EMULATOR_REST_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    rest_api_keys: Vec<String>,

    /// File with one external id per line: the users that exist in every workspace. Other
    /// ids are ignored without an error. Without it, every id exists.
    #[arg(long, env = "BRAZE_EMULATOR_USERS_FILE")]
    users_file: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let cli = Cli::parse();
    // An empty key would let a request without credentials through.
    if cli.partner_api_keys.iter().any(String::is_empty) {
        bail!("--partner-api-key must not be empty; check for a stray comma in BRAZE_EMULATOR_PARTNER_API_KEYS");
    }
    if cli.data_import_keys.iter().any(String::is_empty) {
        bail!("--data-import-key must not be empty; check for a stray comma in BRAZE_EMULATOR_DATA_IMPORT_KEYS");
    }

    let config = Config {
        partner_name: cli.partner_name,
        partner_api_keys: cli.partner_api_keys,
        data_import_keys: cli.data_import_keys,
    };
    info!(?config, rate_limit_per_minute = ?cli.rate_limit_per_minute, "starting braze emulator");
    let mut emulator = Emulator::new(config);
    if let Some(limit) = cli.rate_limit_per_minute {
        emulator = emulator.with_rate_limit_per_minute(limit);
    }
    if cli.rest_api_keys.iter().any(String::is_empty) {
        bail!("--rest-api-key must not be empty; check for a stray comma in BRAZE_EMULATOR_REST_API_KEYS");
    }
    emulator = emulator.with_rest_api_keys(cli.rest_api_keys);
    if let Some(path) = &cli.users_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --users-file {}", path.display()))?;
        let users = text
            .lines()
            .map(str::trim_end)
            .filter(|line| !line.is_empty())
            .map(str::to_owned)
            .collect();
        emulator = emulator.with_known_users(users);
    }

    let addr = emulator
        .spawn(cli.listen)
        .await
        .with_context(|| format!("failed to listen on {}", cli.listen))?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening on http://{addr}")?;
    stdout.flush()?;

    tokio::signal::ctrl_c()
        .await
        .context("failed to wait for Ctrl-C")?;
    info!("braze emulator stopped");
    Ok(())
}
