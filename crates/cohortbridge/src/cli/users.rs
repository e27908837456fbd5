//! `cohortbridge users`: adds people who log in to the web UI and creates their API keys.
//! Passwords are read from `COHORTBRIDGE_USER_PASSWORD` or from the first line of standard
//! input, never from an argument, so they do not show in the process list.

use std::io::BufRead;

use anyhow::Context;
use clap::Subcommand;
use serde_json::{json, Value};

use super::client::AdminClient;

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Add a person. The password comes from COHORTBRIDGE_USER_PASSWORD or standard input.
    Create {
        /// E-mail address the person logs in with.
        #[arg(long)]
        email: String,
        /// Role: owner, admin, analyst or consumer.
        #[arg(long, value_parser = ["owner", "admin", "analyst", "consumer"])]
        role: String,
    },
    /// Create an admin API key that acts with the person's role, and print it once.
    ApiKey {
        #[arg(long)]
        email: String,
        /// A name that says where the key is used.
        #[arg(long, default_value = "api key")]
        name: String,
    },
}

fn read_password() -> anyhow::Result<String> {
    if let Ok(password) = std::env::var("COHORTBRIDGE_USER_PASSWORD") {
        return Ok(password);
    }
    eprintln!("password (read from standard input):");
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from standard input")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

pub async fn run(
    client: &AdminClient,
    command: UsersCommand,
    json_output: bool,
) -> anyhow::Result<()> {
    let print = |value: &Value| {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        )
    };
    match command {
        UsersCommand::Create { email, role } => {
            let password = read_password()?;
            let body = json!({"email": email, "password": password, "role": role});
            let user = client.post_root("/users", &body).await?;
            if json_output {
                print(&user);
            } else {
                println!(
                    "user {} created with role {}",
                    user["email"].as_str().unwrap_or_default(),
                    user["role"].as_str().unwrap_or_default()
                );
            }
        }
        UsersCommand::ApiKey { email, name } => {
            let path = format!("/users/{}/api-keys", super::urlencode(&email));
            let reply = client.post_root(&path, &json!({"name": name})).await?;
            if json_output {
                print(&reply);
            } else {
                println!(
                    "API key (shown once): {}",
                    reply["key"].as_str().unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}
