//! The command line. `main` parses it and hands it to [`crate::app::run`].

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "baseaim-worker",
    version,
    about = "Background work of the BaseAim client dashboard, on PostgreSQL"
)]
pub struct Cli {
    /// A TOML file overriding config/default.toml (environment variables override both).
    #[arg(long, global = true, env = "BAW_CONFIG")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: HTTP intake, workers, schedules, maintenance.
    Serve {
        /// Which parts this process runs (split intake and workers across processes).
        #[arg(long, value_enum, default_value_t = Role::All)]
        role: Role,
        /// Do not apply pending migrations at start.
        #[arg(long)]
        no_migrate: bool,
    },
    /// Apply pending migrations (creating the database if needed) and exit.
    Migrate,
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// List the cron schedules, or run one now.
    Schedules {
        #[command(subcommand)]
        command: crate::schedule::ScheduleCommand,
    },
    /// Run the whole daemon against local provider simulators, on its own database.
    Demo {
        /// The demo's database (created if missing). Without it: the database
        /// `baseaim_worker_demo` on DATABASE_URL's server when that is set (never DATABASE_URL's
        /// own database: the demo seeds clients and prints an admin login), else on localhost.
        #[arg(long)]
        database_url: Option<String>,
        #[arg(long, default_value = "127.0.0.1:8080")]
        bind: std::net::SocketAddr,
    },
    /// Talk to the running demo's simulators.
    Sim {
        #[command(subcommand)]
        command: crate::demo::SimCommand,
    },
    /// Inspect and repair jobs.
    Jobs {
        #[command(subcommand)]
        command: crate::dashboard::cli::JobsCommand,
    },
    /// Inspect, pause and resume queues.
    Queues {
        #[command(subcommand)]
        command: crate::dashboard::cli::QueuesCommand,
    },
    /// Dashboard accounts.
    Operators {
        #[command(subcommand)]
        command: crate::auth::command::OperatorsCommand,
    },
    /// Bearer tokens for the /v1 API.
    Tokens {
        #[command(subcommand)]
        command: crate::auth::command::TokensCommand,
    },
    /// Client documents: move the old blob storage's files into Google Drive.
    Documents {
        #[command(subcommand)]
        command: crate::jobs::drive_import::DocumentsCommand,
    },
    /// Stripe operations.
    Stripe {
        #[command(subcommand)]
        command: StripeCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum StripeCommand {
    /// Re-run a stored webhook event (`evt_...`): enqueue a new `stripe_event` job for it.
    Replay { event_id: String },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration, secrets redacted; exit non-zero if it is invalid.
    Check,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// Everything.
    All,
    /// The HTTP intake and dashboard only.
    Web,
    /// Job workers and leader-only maintenance.
    Worker,
    /// Schedule evaluation and leader-only maintenance.
    Scheduler,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::All => "all",
            Role::Web => "web",
            Role::Worker => "worker",
            Role::Scheduler => "scheduler",
        }
    }

    pub fn runs_http_intake(self) -> bool {
        matches!(self, Role::All | Role::Web)
    }

    pub fn runs_workers(self) -> bool {
        matches!(self, Role::All | Role::Worker)
    }

    pub fn runs_maintenance(self) -> bool {
        matches!(self, Role::All | Role::Worker | Role::Scheduler)
    }
}
