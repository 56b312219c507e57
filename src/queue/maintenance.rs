//! Leader-only maintenance: the rescuer (jobs whose lease expired, and bulk actions whose node
//! went away: `bulk::resume_stalled`) and the pruner (old finished jobs), run by one node at a
//! time.
//!
//! Leadership is a row in `leaders`: every node tries to take or renew it every `ttl / 3`; the
//! holder renews it, anyone may take it once it has expired. The row is written to expire
//! `2/3 ttl` after each renewal, so a leader that dies is replaced within `ttl` (its row expires
//! at most `2/3 ttl` after the death, and the next campaign comes at most `ttl/3` later), while a
//! live leader has `ttl/3` of slack for a slow renewal. A leader that loses its database connection stops acting as leader as
//! soon as a renewal fails, before its row can expire. A row (not an advisory lock held on a
//! connection) survives connection blips and needs no dedicated connection.
//!
//! Each service has the same shape: `run_once()`, called on a tick; a database error is logged
//! and the loop carries on.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::worker::Outage;
use super::{bulk, sql};
use crate::config::MaintenanceConfig;

/// The leader row the maintenance services share.
pub const LEADER_NAME: &str = "maintenance";

#[derive(Debug, Clone)]
pub struct MaintenanceSettings {
    /// The workers' lease: a node silent for this long is presumed dead.
    pub lease: Duration,
    pub leader_ttl: Duration,
    pub rescue_interval: Duration,
    pub prune_after: Duration,
    pub prune_interval: Duration,
    pub prune_batch: i64,
}

impl MaintenanceSettings {
    pub fn from_config(config: &MaintenanceConfig, lease: Duration) -> Self {
        MaintenanceSettings {
            lease,
            leader_ttl: config.leader_ttl,
            rescue_interval: config.rescue_interval,
            prune_after: config.prune_after,
            prune_interval: config.prune_interval,
            prune_batch: config.prune_batch as i64,
        }
    }
}

/// Tries to take or renew leadership `name` for `node`. True: `node` leads until `ttl` from now.
pub async fn leader_acquire(
    pool: &PgPool,
    name: &str,
    node: &str,
    ttl: Duration,
) -> Result<bool, sqlx::Error> {
    let row: Option<String> = sqlx::query_scalar(sql::LEADER_ACQUIRE)
        .bind(name)
        .bind(node)
        .bind(ttl.as_secs_f64())
        .fetch_optional(pool)
        .await?;
    Ok(row.is_some())
}

/// Gives leadership up at once (on shutdown), so another node need not wait for the TTL.
pub async fn leader_resign(pool: &PgPool, name: &str, node: &str) -> Result<(), sqlx::Error> {
    sqlx::query(sql::LEADER_RESIGN)
        .bind(name)
        .bind(node)
        .execute(pool)
        .await?;
    Ok(())
}

/// Rescues up to `limit` jobs whose lease expired before `now` (None: the database's clock) and
/// whose node has not heartbeated within `lease`. Returns how many were rescued.
pub async fn rescue_once(
    pool: &PgPool,
    now: Option<DateTime<Utc>>,
    lease: Duration,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    let rows: Vec<(i64, String)> = sqlx::query_as(sql::JOB_RESCUE)
        .bind(now)
        .bind(limit)
        .bind(lease.as_secs_f64())
        .fetch_all(pool)
        .await?;
    for (id, state) in &rows {
        tracing::warn!(job = id, %state, "rescued a job whose node stopped renewing its lease");
    }
    Ok(rows.len() as u64)
}

/// Deletes finished jobs that finished before `before`, in batches, and the records of bulk
/// actions over by then. Returns how many jobs.
pub async fn prune_once(
    pool: &PgPool,
    before: DateTime<Utc>,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    // `limit 0` deletes nothing and never comes short: it would loop for ever.
    let batch = batch.max(1);
    let mut total = 0;
    loop {
        let deleted = sqlx::query(sql::JOB_PRUNE)
            .bind(before)
            .bind(batch)
            .execute(pool)
            .await?
            .rows_affected();
        total += deleted;
        if deleted < batch as u64 {
            break;
        }
    }
    sqlx::query(sql::NODE_PRUNE).execute(pool).await?;
    sqlx::query(sql::BULK_ACTION_PRUNE)
        .bind(before)
        .execute(pool)
        .await?;
    Ok(total)
}

/// How long a leader must have seen the database answer before its rescuer may act.
///
/// A job is rescued when its node's heartbeat is older than a lease. After an outage longer than
/// a lease every node's heartbeat is stale, live or not, and a rescue before the live ones have
/// heartbeated again would take their running jobs (run twice; a last attempt discarded). The
/// same holds for a new leader, which cannot know how long the database was out before it won.
/// So the rescuer waits until every live node has had a lease and a heartbeat interval to
/// heartbeat since this node last saw a call fail or became leader. The heartbeat interval is
/// not among these settings, but the config keeps it shorter than the lease: two leases cover
/// both.
pub fn rescue_grace(lease: Duration) -> Duration {
    lease * 2
}

/// Campaigns for leadership and, while leader, runs the rescuer (once it has seen the database
/// answer for [`rescue_grace`]) and the pruner.
pub async fn run(
    pool: PgPool,
    node: String,
    settings: MaintenanceSettings,
    stop: CancellationToken,
) {
    let mut leading = false;
    let mut outage = Outage::new("maintenance");
    // Since when this node has led and seen the database answer every call (None: not leading,
    // or the last call failed). The rescuer waits `rescue_grace` from there: see [`rescue_grace`].
    let mut healthy_since: Option<tokio::time::Instant> = None;
    let grace = rescue_grace(settings.lease);
    let mut campaign = tokio::time::interval(settings.leader_ttl / 3);
    let mut rescue = tokio::time::interval(settings.rescue_interval);
    let mut prune = tokio::time::interval(settings.prune_interval);
    for ticker in [&mut campaign, &mut rescue, &mut prune] {
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = campaign.tick() => {
                let now_leading = match leader_acquire(&pool, LEADER_NAME, &node, settings.leader_ttl * 2 / 3).await {
                    Ok(won) => { outage.recovered(); won }
                    Err(error) => { outage.failed(&error); healthy_since = None; false }
                };
                if now_leading != leading {
                    tracing::info!(%node, leading = now_leading, "maintenance leadership changed");
                    leading = now_leading;
                }
                if !leading {
                    healthy_since = None;
                } else if healthy_since.is_none() {
                    healthy_since = Some(tokio::time::Instant::now());
                }
            }
            _ = rescue.tick(), if leading => {
                if healthy_since.is_some_and(|since| since.elapsed() >= grace)
                    && let Err(error) = rescue_once(&pool, None, settings.lease, 1000).await
                {
                    outage.failed(&error);
                    healthy_since = None;
                }
                // Bulk actions whose node went away go on here; their tasks log how they end.
                if let Err(error) = bulk::resume_stalled(&pool, bulk::STALLED_AFTER).await {
                    outage.failed(&error);
                    healthy_since = None;
                }
            }
            _ = prune.tick(), if leading => {
                // An age beyond the calendar: nothing finished that long ago.
                let before = chrono::Duration::from_std(settings.prune_after)
                    .ok()
                    .and_then(|age| Utc::now().checked_sub_signed(age));
                if let Some(before) = before {
                    match prune_once(&pool, before, settings.prune_batch).await {
                        Ok(0) => {}
                        Ok(pruned) => tracing::info!(pruned, "pruned finished jobs"),
                        Err(error) => { outage.failed(&error); healthy_since = None; }
                    }
                }
            }
        }
    }
    if leading {
        let _ = leader_resign(&pool, LEADER_NAME, &node).await;
    }
}

/// Who leads `name` now, if anyone (for the dashboard and tests).
pub async fn leader_of(pool: &PgPool, name: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("select node from leaders where name = $1 and expires_at > now()")
        .bind(name)
        .fetch_optional(pool)
        .await
}
