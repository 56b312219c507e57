//! `baseaim-worker`: the background work of the BaseAim client dashboard, on PostgreSQL.
//!
//! One binary, many copies, one database; PostgreSQL is the only coordinator. Read the modules in
//! this order:
//!
//! - [`config`]: one typed config tree (`config/default.toml` < `--config` file < `BAW__*` env);
//!   secrets only from the environment. Everyone reads it at start-up.
//! - [`db`]: the pool, embedded migrations, creating the database if missing, health. Talks to sqlx.
//! - [`queue`]: the job engine: rows and their state machine, enqueue, claim, complete, retry,
//!   snooze, leases and rescue, pruning, rate limits, the worker pool. Talks to PostgreSQL only.
//! - [`schedule`]: cron schedules turned into unique jobs, so N nodes enqueue each tick once.
//!   Talks to [`queue`].
//! - [`jobs`]: one file per job kind: payload struct, policy, `perform`. Talks to [`queue`] (its
//!   trait), [`integrations`] and the domain tables.
//! - [`integrations`]: one client per provider, each classifying its errors. Knows nothing of jobs.
//! - [`http`]: the axum intake (webhooks, enqueue API, uploads, health, metrics). Talks to
//!   [`queue`] and [`db`].
//! - [`auth`]: operators (argon2 passwords, sessions, CSRF) and bearer tokens with scopes.
//! - [`dashboard`]: the operator web UI and admin API over the queue's admin queries.
//! - [`sim`]: faithful local fakes of the four providers, for tests and `baseaim-worker demo`.
//! - [`cli`] and [`app`]: the command line and the wiring that starts a node; [`demo`]: the whole
//!   daemon against the simulators, for newcomers.
//! - [`tls`] and [`telemetry`]: process-wide set-up (one rustls crypto provider; tracing).

// An application, not a library: its docs are read with `--document-private-items`, where the
// module overviews' links to private items resolve.
#![allow(rustdoc::private_intra_doc_links)]

pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod dashboard;
pub mod db;
pub mod demo;
pub mod http;
pub mod integrations;
pub mod jobs;
pub mod queue;
pub mod schedule;
pub mod sim;
pub mod telemetry;
pub mod tls;
