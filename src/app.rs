//! The wiring: turns a parsed command line into a running node (or a one-shot command).
//!
//! `serve` brings things up in an order that survives a database outage at start: the HTTP server
//! and health monitor first (so `/healthz` answers and `/readyz` tells the truth), then migrations
//! and the engine, retried until the database answers. `/readyz` says 503 until the engine runs.
//! Only the roles that run the intake (`all`, `web`) bind `http.bind`; a `worker` or `scheduler`
//! node serves `/healthz`, `/readyz` and `/metrics` on `http.ops_bind` when given one, and
//! otherwise nothing: under systemd its watchdog pings and `STATUS=` (`waiting for the
//! database`, `cannot start the engine; retrying`, `running`) say how it is, and it exits
//! non-zero when it cannot run.
//!
//! A database whose migrations disagree with this binary's (an applied migration edited, one
//! left dirty) is no outage: the node logs why and exits non-zero instead of waiting. One a newer
//! release migrated is run on, with a warning (`db::migrate`: migrations only add).
//!
//! SIGTERM and Ctrl-C take the same path: stop the engine gracefully, then the HTTP server,
//! within `worker.shutdown_grace` (connections still open then are dropped), exit 0; a second
//! signal exits at once, non-zero.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::cli::{Cli, Command, ConfigCommand, Role};
use crate::config::{Config, Secrets};
use crate::db::{self, DbHealth};
use crate::http::{self, EngineStatus, HttpState};
use crate::jobs::{self, AppState};
use crate::queue::{Engine, EngineConfig};

pub async fn run(cli: Cli) -> ExitCode {
    crate::tls::install_crypto_provider();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("baseaim-worker: invalid configuration: {error}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Config {
            command: ConfigCommand::Check,
        } => {
            // The schedules as `serve` adopts them, against the kinds this binary runs: a kind
            // it does not know, args it refuses or a queue no node works would stop `serve`, so
            // it fails the check.
            if let Err(error) = crate::schedule::load(&config, &jobs::registry()) {
                eprintln!("baseaim-worker: invalid configuration: {error}");
                return ExitCode::from(2);
            }
            print!("{}", config.to_redacted_toml());
            println!("\n# secrets (from the environment)");
            print!("{}", Secrets::from_env().describe());
            Ok(())
        }
        Command::Migrate => {
            crate::telemetry::init(config.log.format, &config.log.level);
            migrate(&config).await
        }
        Command::Schedules { command } => {
            crate::schedule::command::command(&config, &jobs::registry(), command).await
        }
        Command::Demo { database_url, bind } => crate::demo::run(config, database_url, bind).await,
        Command::Sim { command } => crate::demo::sim_command(command).await,
        Command::Jobs { command } => crate::dashboard::cli::jobs(&config, command).await,
        Command::Queues { command } => crate::dashboard::cli::queues(&config, command).await,
        Command::Operators { command } => crate::auth::command::operators(&config, command).await,
        Command::Tokens { command } => crate::auth::command::tokens(&config, command).await,
        Command::Documents { command } => {
            crate::jobs::drive_import::command(&config, command).await
        }
        Command::Stripe {
            command: crate::cli::StripeCommand::Replay { event_id },
        } => stripe_replay(&config, &event_id).await,
        Command::Serve { role, no_migrate } => {
            crate::telemetry::init(config.log.format, &config.log.level);
            serve(config, Secrets::from_env(), role, !no_migrate).await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "failed");
            eprintln!("baseaim-worker: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn migrate(config: &Config) -> anyhow::Result<()> {
    let pool = db::connect_or_create(&config.database).await?;
    db::migrate(&pool).await.context("applying migrations")?;
    tracing::info!(version = db::latest_migration(), "database is migrated");
    Ok(())
}

async fn stripe_replay(config: &Config, event_id: &str) -> anyhow::Result<()> {
    let pool = db::connect(&config.database).await?;
    let job = jobs::stripe_event::replay(&pool, event_id).await?;
    println!("enqueued stripe_event job {job} for {event_id}");
    Ok(())
}

/// Runs a node until SIGTERM or Ctrl-C.
pub async fn serve(
    config: Config,
    secrets: Secrets,
    role: Role,
    migrate: bool,
) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    tokio::spawn(cancel_on_signal(stop.clone()));
    let mut node = Node::start(config, secrets, role, migrate, stop.clone()).await?;
    let failure = tokio::select! {
        _ = stop.cancelled() => None,
        error = node.failed() => Some(error),
    };
    match failure {
        None => {
            tracing::info!("shutting down");
            node.stop().await
        }
        Some(error) => {
            // `run` logs the error and exits non-zero; stop what did start first.
            stop.cancel();
            node.stop().await?;
            Err(error)
        }
    }
}

/// A running node: its HTTP server (if its role runs the intake) and (once the database
/// answered) its engine.
pub struct Node {
    /// Where the HTTP server listens: `http.bind` for the roles that run the intake, else
    /// `http.ops_bind` (health and metrics only). None: a node with neither binds nothing.
    pub addr: Option<SocketAddr>,
    stop: CancellationToken,
    /// None: this role serves no HTTP.
    http: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// `worker.shutdown_grace`: how long a stop may wait for jobs, then HTTP requests, in flight.
    grace: Duration,
    engine: tokio::task::JoinHandle<Option<Engine<AppState>>>,
    /// Whether the engine runs, for `/readyz`.
    engine_status: EngineStatus,
    /// Written by `start_engine` when the node cannot run at all (see [`Node::failed`]).
    fatal: tokio::sync::oneshot::Receiver<anyhow::Error>,
    watchdog: tokio::task::JoinHandle<()>,
}

impl Node {
    /// Starts everything `role` runs. Returns once the HTTP server is bound (for the roles that
    /// run the intake: `all`, `web`); migrations and the engine come up in the background as
    /// soon as the database answers.
    pub async fn start(
        config: Config,
        secrets: Secrets,
        role: Role,
        migrate: bool,
        stop: CancellationToken,
    ) -> anyhow::Result<Self> {
        let pool = db::connect_or_create(&config.database).await?;
        // Schedules are checked before anything runs: one whose kind this binary cannot run
        // stops start-up, naming it.
        let scheduler = matches!(role, Role::All | Role::Scheduler)
            .then(|| crate::schedule::load(&config, &jobs::registry()))
            .transpose()?
            .map(|schedules| crate::schedule::Scheduler::new(pool.clone(), schedules));
        let health = DbHealth::spawn(pool.clone(), Duration::from_secs(1), stop.child_token());
        let config = Arc::new(config);
        let state = AppState::new(pool.clone(), config.clone(), Arc::new(secrets))?;
        let engine_status = EngineStatus::default();
        let http_state =
            HttpState::new(state.clone(), health.clone()).with_engine(engine_status.clone());
        let http_stop = CancellationToken::new();
        // A worker or scheduler shares its env file with a web node: binding the same address
        // would stop one of them. It serves health and metrics on `http.ops_bind` when given one;
        // without, its health is its process: it exits non-zero when it cannot run, pings
        // systemd's watchdog and reports STATUS=.
        let listener = if role.runs_http_intake() {
            Some((config.http.bind, http::router(http_state), "listening"))
        } else {
            config.http.ops_addr().map(|addr| {
                (
                    addr,
                    http::ops_router(http_state),
                    "serving health and metrics",
                )
            })
        };
        let (addr, http) = match listener {
            Some((bind, app, what)) => {
                let (addr, http) = http::serve(bind, app, http_stop.clone())
                    .await
                    .with_context(|| format!("binding the HTTP server to {bind}"))?;
                tracing::info!(%addr, role = role.as_str(), "{what}");
                (Some(addr), Some(http))
            }
            None => {
                tracing::info!(role = role.as_str(), "started without an HTTP listener");
                (None, None)
            }
        };
        // The HTTP server outlives the engine's graceful stop: Node::stop cancels it last.
        let (fatal_tx, fatal) = tokio::sync::oneshot::channel();
        let engine = tokio::spawn(start_engine(
            state,
            role,
            migrate,
            scheduler,
            engine_status.clone(),
            fatal_tx,
            stop.clone(),
        ));
        notify_systemd_ready();
        let watchdog = tokio::spawn(watchdog(stop.clone()));
        Ok(Node {
            addr,
            stop: http_stop,
            http,
            grace: config.worker.shutdown_grace,
            engine,
            engine_status,
            fatal,
            watchdog,
        })
    }

    /// Resolves when the node cannot run at all: the database's migrations disagree with this
    /// binary's, which no retry mends (see [`db::DbError::is_fatal`]). Pending forever otherwise.
    pub async fn failed(&mut self) -> anyhow::Error {
        match (&mut self.fatal).await {
            Ok(error) => error,
            Err(_) => std::future::pending().await,
        }
    }

    /// Stops the engine gracefully, then the HTTP server. Both together take about
    /// `worker.shutdown_grace`: the engine waits that long for its jobs; the HTTP server then
    /// finishes the requests in flight until the same deadline (at least [`HTTP_DRAIN_MIN`]) and
    /// drops whatever connection is still open (a slow or idle client, a request whose headers
    /// never end), rather than keep the process alive for it.
    pub async fn stop(self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + self.grace;
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        self.engine_status.set(false);
        if let Ok(Some(engine)) = self.engine.await {
            engine.shutdown().await;
        }
        self.stop.cancel();
        self.watchdog.abort();
        if let Some(mut http) = self.http {
            let until = deadline.max(tokio::time::Instant::now() + HTTP_DRAIN_MIN);
            match tokio::time::timeout_at(until, &mut http).await {
                Ok(served) => served.context("HTTP server task")?.context("HTTP server")?,
                Err(_) => {
                    tracing::warn!(
                        grace = %humantime::format_duration(self.grace),
                        "HTTP connections still open at the end of the shutdown grace; closing them"
                    );
                    http.abort();
                }
            }
        }
        Ok(())
    }
}

/// The least time a stopping node gives HTTP requests in flight, even when the engine used up
/// the whole shutdown grace.
pub const HTTP_DRAIN_MIN: Duration = Duration::from_secs(1);

/// Migrates (if asked) and starts the engine, retrying until the database answers or the node
/// is stopped; then starts the scheduler loop, if this role runs one, and sets `status`. None:
/// stopped before it could start, or a migration error no retry mends (sent on `fatal`).
async fn start_engine(
    state: AppState,
    role: Role,
    migrate: bool,
    scheduler: Option<crate::schedule::Scheduler>,
    status: EngineStatus,
    fatal: tokio::sync::oneshot::Sender<anyhow::Error>,
    stop: CancellationToken,
) -> Option<Engine<AppState>> {
    let mut wait = Duration::from_millis(200);
    // Each different error is logged once: not one line per retry, nor only the first.
    let mut last_logged: Option<String> = None;
    loop {
        let attempt = async {
            if migrate {
                db::migrate(&state.pool)
                    .await
                    .context("applying migrations")?;
            } else {
                db::check_migrations(&state.pool)
                    .await
                    .context("checking the applied migrations")?;
            }
            let mut engine_config = EngineConfig::from_config(&state.config, role.as_str());
            if !role.runs_workers() {
                engine_config.queues.clear();
            }
            if !role.runs_maintenance() {
                engine_config.maintenance = None;
            }
            Engine::start(
                state.pool.clone(),
                jobs::registry(),
                state.clone(),
                engine_config,
            )
            .await
            .context("starting the engine")
        };
        let attempt = tokio::select! {
            attempt = attempt => attempt,
            _ = stop.cancelled() => return None,
        };
        match attempt {
            Ok(engine) => {
                // After the migrations, so its table exists; it stops with the node's `stop`.
                if let Some(scheduler) = scheduler {
                    tokio::spawn(scheduler.run(stop.child_token()));
                }
                status.set(true);
                notify_systemd_status("running");
                return Some(engine);
            }
            Err(error)
                if error
                    .downcast_ref::<db::DbError>()
                    .is_some_and(db::DbError::is_fatal) =>
            {
                let _ = fatal.send(error.context("this node cannot run on this database"));
                return None;
            }
            Err(error) => {
                let text = format!("{error:#}");
                if last_logged.as_deref() != Some(text.as_str()) {
                    let unavailable = database_unavailable(&error);
                    notify_systemd_status(if unavailable {
                        "waiting for the database"
                    } else {
                        "cannot start the engine; retrying"
                    });
                    if unavailable {
                        tracing::warn!(
                            error = text,
                            "cannot reach the database yet; retrying until it answers"
                        );
                    } else {
                        tracing::error!(error = text, "cannot start the engine; retrying");
                    }
                    last_logged = Some(text);
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.cancelled() => return None,
                }
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Whether `error` (or one of its causes) says the database could not be reached.
fn database_unavailable(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<sqlx::Error>()
            .is_some_and(db::database_unavailable)
            || matches!(
                cause.downcast_ref::<db::DbError>(),
                Some(db::DbError::Sqlx(error)) if db::database_unavailable(error)
            )
    })
}

/// Cancels `stop` on SIGTERM or Ctrl-C (the same path for both). A second one while the node
/// stops exits the process at once, non-zero (128 + the signal's number, as a shell reports a
/// process killed by it), without waiting for jobs or requests in flight: an operator pressing
/// Ctrl-C again means it.
pub(crate) async fn cancel_on_signal(stop: CancellationToken) {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    #[cfg(unix)]
    let mut next_signal = async || -> (&'static str, i32) {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => ("SIGINT", 130),
            _ = term.recv() => ("SIGTERM", 143),
        }
    };
    #[cfg(not(unix))]
    let mut next_signal = async || -> (&'static str, i32) {
        let _ = tokio::signal::ctrl_c().await;
        ("Ctrl-C", 130)
    };
    let (first, _) = next_signal().await;
    tracing::info!(signal = first, "stopping (a second signal exits at once)");
    stop.cancel();
    let (second, code) = next_signal().await;
    tracing::error!(
        signal = second,
        "second signal while stopping: exiting now, without waiting for jobs or requests in flight"
    );
    std::process::exit(code);
}

/// `READY=1` under systemd (`Type=notify`); a no-op elsewhere.
fn notify_systemd_ready() {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
}

/// `STATUS=` under systemd (what `systemctl status` shows); a no-op elsewhere.
fn notify_systemd_status(status: &str) {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Status(status)]);
}

/// Pings systemd's watchdog at half its interval while the runtime is responsive.
async fn watchdog(stop: CancellationToken) {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let mut ticker = tokio::time::interval(Duration::from_micros(usec / 2));
    loop {
        tokio::select! {
            _ = ticker.tick() => { let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]); }
            _ = stop.cancelled() => return,
        }
    }
}
