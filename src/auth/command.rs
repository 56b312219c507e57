//! `baseaim-worker operators add|list|disable|unlock` and `tokens create|list|revoke`.

use std::io::BufRead;

use clap::Subcommand;

use super::{Role, operators, session, tokens};
use crate::config::Config;
use crate::dashboard::cli::render_table;
use crate::db;

#[derive(Debug, Subcommand)]
pub enum OperatorsCommand {
    /// Create a dashboard account. The password is read from the first line of standard input.
    Add {
        username: String,
        #[arg(long, value_enum, default_value_t = Role::ReadOnly)]
        role: Role,
    },
    List {
        #[arg(long)]
        json: bool,
    },
    /// Disable an account and end its sessions.
    Disable { username: String },
    /// Lift a lock-out after repeated failed logins (and forget the failures): of a user name, or
    /// of a client address (as the lock-out's log line names it).
    Unlock { name_or_address: String },
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create a bearer token for /v1/*; it is printed once and stored only as a hash.
    Create {
        /// Who or what uses it, e.g. "dashboard-app".
        #[arg(long)]
        name: String,
        /// jobs:write, jobs:write:KIND (that kind only), emails:send, uploads:write, admin:read
        /// or admin:write (repeatable).
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
    },
    List {
        #[arg(long)]
        json: bool,
    },
    Revoke {
        id: i64,
    },
}

pub async fn operators(config: &Config, command: OperatorsCommand) -> anyhow::Result<()> {
    let pool = db::connect(&config.database).await?;
    match command {
        OperatorsCommand::Add { username, role } => {
            let password = read_password()?;
            let id = operators::add(&pool, &username, &password, role).await?;
            println!(
                "operator {username} ({}) created with id {id}",
                role.as_str()
            );
        }
        OperatorsCommand::List { json } => {
            let rows = operators::list(&pool).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                let mut table = vec![vec![
                    "ID".into(),
                    "USER".into(),
                    "ROLE".into(),
                    "CREATED".into(),
                    "DISABLED".into(),
                ]];
                table.extend(rows.iter().map(|o| {
                    vec![
                        o.id.to_string(),
                        o.username.clone(),
                        o.role.clone(),
                        o.created_at.format("%Y-%m-%d %H:%M").to_string(),
                        o.disabled_at
                            .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
                            .unwrap_or_default(),
                    ]
                }));
                print!("{}", render_table(&table));
            }
        }
        OperatorsCommand::Disable { username } => {
            if !operators::disable(&pool, &username).await? {
                anyhow::bail!("no enabled operator named `{username}`");
            }
            println!("operator {username} disabled");
        }
        OperatorsCommand::Unlock { name_or_address } => {
            if session::unlock(&pool, &name_or_address).await? {
                println!("{name_or_address}: failed logins forgotten, lock-out lifted");
            } else {
                println!("{name_or_address}: no failed logins recorded");
            }
        }
    }
    Ok(())
}

pub async fn tokens(config: &Config, command: TokensCommand) -> anyhow::Result<()> {
    let pool = db::connect(&config.database).await?;
    match command {
        TokensCommand::Create { name, scopes } => {
            let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
            let token = tokens::create(&pool, &name, &scopes).await?;
            eprintln!("token for {name} (shown once; store it now):");
            println!("{token}");
        }
        TokensCommand::List { json } => {
            let rows = tokens::list(&pool).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                let mut table = vec![vec![
                    "ID".into(),
                    "NAME".into(),
                    "SCOPES".into(),
                    "LAST USED".into(),
                    "REVOKED".into(),
                ]];
                table.extend(rows.iter().map(|t| {
                    let at = |t: Option<chrono::DateTime<chrono::Utc>>| {
                        t.map(|t| t.format("%Y-%m-%d %H:%M").to_string())
                            .unwrap_or_default()
                    };
                    vec![
                        t.id.to_string(),
                        t.name.clone(),
                        t.scopes.join(","),
                        at(t.last_used_at),
                        at(t.revoked_at),
                    ]
                }));
                print!("{}", render_table(&table));
            }
        }
        TokensCommand::Revoke { id } => {
            if !tokens::revoke(&pool, id).await? {
                anyhow::bail!("no live token with id {id}");
            }
            println!("token {id} revoked");
        }
    }
    Ok(())
}

/// The password: typed at the terminal with echo off (prompt and input on the terminal, so it
/// stays off the screen and out of a session's scrollback), else the first line of standard input,
/// without its line ending (scripts and tests pipe it).
fn read_password() -> anyhow::Result<String> {
    use std::io::IsTerminal;
    let password = if std::io::stdin().is_terminal() {
        rpassword::prompt_password(format!(
            "password (at least {} characters): ",
            super::password::MIN_LENGTH
        ))?
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    };
    if password.is_empty() {
        anyhow::bail!("no password on standard input");
    }
    Ok(password)
}
