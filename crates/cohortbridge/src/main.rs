use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use cohortbridge::cli::{self, Cli, Command};
use cohortbridge::server;
use tracing_subscriber::EnvFilter;

/// mimalloc instead of the system allocator: ingestion allocates and frees many small strings
/// and maps per event, and glibc's malloc spent about a sixth of the server's time on them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn init_logging(json: bool) {
    let filter =
        EnvFilter::try_from_env("COHORTBRIDGE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Restores the default action of `SIGPIPE`, so that a client command whose stdout is closed
/// early (`cohortbridge projects show | head -2`) ends quietly, as other Unix tools do. Rust
/// ignores `SIGPIPE` at start-up, which makes `println!` panic on the closed pipe. `serve`
/// keeps it ignored, and sockets are unaffected because Rust sends on them with
/// `MSG_NOSIGNAL` (Linux) or `SO_NOSIGPIPE` (macOS).
#[cfg(unix)]
fn restore_default_sigpipe() {
    // SAFETY: `SIG_DFL` installs no handler, so no Rust code runs in signal context, and the call
    // only changes the process-wide action of one signal.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(not(unix))]
fn restore_default_sigpipe() {}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let Cli { client, command } = Cli::parse();
    match command {
        Command::Serve(mut config) => {
            init_logging(config.log_format == "json");
            config.admin_key = client.admin_key;
            let running = server::start(*config).await?;
            if let Some(key) = &running.generated_admin_key {
                println!("admin key (shown once; store it, for example as COHORTBRIDGE_ADMIN_KEY): {key}");
            }
            println!("listening on http://{}", running.addr);
            shutdown_signal().await;
            tracing::info!("shutting down");
            running.shutdown().await;
            Ok(())
        }
        Command::Migrate(args) => {
            init_logging(false);
            cli::migrate(args).await
        }
        command => {
            restore_default_sigpipe();
            if std::env::var_os("COHORTBRIDGE_LOG").is_some() {
                init_logging(false);
            }
            cli::run_client(client, command).await
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
