//! Schedules: exactly one job per tick across nodes, catch-up after downtime, DST, config, the
//! operators' commands, and the maintenance leader's handover. Each test has its own database.

#[path = "../support/mod.rs"]
mod support;

mod catch_up;
mod cluster;
mod config;
mod dst;
mod leadership;
mod operators;

use baseaim_worker::queue::Registry;
use baseaim_worker::queue::testing::drain;
use baseaim_worker::schedule::{CatchUp, Schedule, ScheduleConfig};
use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// A schedule of kind `noop` (registered in every registry), so `drain` completes its jobs.
pub fn schedule(name: &str, cron: &str, timezone: &str, catch_up: CatchUp) -> Schedule {
    Schedule::from_config(
        name,
        &ScheduleConfig {
            cron: cron.into(),
            timezone: timezone.into(),
            kind: "noop".into(),
            args: Default::default(),
            enabled: true,
            catch_up,
            queue: None,
        },
    )
    .expect("valid schedule")
}

pub fn at(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339)
        .expect("RFC 3339 time")
        .with_timezone(&Utc)
}

/// The unique keys of every job schedule `name` produced (duplicates included), in key order.
pub async fn keys_of(pool: &PgPool, name: &str) -> Vec<String> {
    sqlx::query_scalar(
        "select coalesce(unique_key, '<none>') from jobs where $1 = any(tags) order by unique_key, id",
    )
    .bind(format!("schedule:{name}"))
    .fetch_all(pool)
    .await
    .expect("read jobs")
}

/// The keys schedule `name`'s ticks at these UTC times must have.
pub fn expected(name: &str, ticks: &[&str]) -> Vec<String> {
    ticks
        .iter()
        .map(|t| format!("schedule:{name}:{t}"))
        .collect()
}

/// Runs every waiting job to completion, so unique keys are free again: from then on only the
/// schedules table stands between a late node and a duplicate.
pub async fn complete_all(pool: &PgPool) {
    drain(pool, &Registry::<()>::new(), (), "default")
        .await
        .expect("drain");
}
