//! Evaluation: which tick of each schedule is due, the compare-and-set that lets exactly one node
//! enqueue it, and the loop that does this on the real clock. See the module essay in
//! [`super`] for why this is exactly once.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::{CatchUp, MAX_SLEEP, MISFIRE_GRACE, Schedule, ScheduleError, sql};
use crate::queue::worker::Outage;

type LastTick = Option<DateTime<Utc>>;
type NextTick = Option<DateTime<Utc>>;

/// What one [`Scheduler::run_once`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// (schedule, tick, job id) for each tick this node enqueued.
    pub enqueued: Vec<(String, DateTime<Utc>, i64)>,
    /// (schedule, tick) for each late tick passed over under policy `skip`.
    pub skipped: Vec<(String, DateTime<Utc>)>,
    /// The earliest next tick of the enabled schedules: when to evaluate again.
    pub next_tick: Option<DateTime<Utc>>,
}

/// Evaluates a set of schedules against the shared `schedules` table. Every node of role `all`
/// or `scheduler` runs one; they need no coordination beyond the database.
pub struct Scheduler {
    pool: PgPool,
    schedules: Vec<Schedule>,
}

impl Scheduler {
    /// A scheduler for `schedules` (disabled ones are kept for nothing but are never evaluated).
    pub fn new(pool: PgPool, schedules: Vec<Schedule>) -> Self {
        Scheduler { pool, schedules }
    }

    pub fn schedules(&self) -> &[Schedule] {
        &self.schedules
    }

    /// Evaluates every enabled schedule at `now`: enqueues each due tick that no node has
    /// enqueued yet (one transaction per tick) and reports what this node did.
    pub async fn run_once(&self, now: DateTime<Utc>) -> Result<RunReport, ScheduleError> {
        let mut report = RunReport::default();
        for schedule in self.schedules.iter().filter(|s| s.enabled) {
            let next = schedule.next_after(now);
            if let Some(next) = next
                && report.next_tick.is_none_or(|t| next < t)
            {
                report.next_tick = Some(next);
            }
            self.evaluate(schedule, now, next, &mut report).await?;
        }
        Ok(report)
    }

    async fn evaluate(
        &self,
        schedule: &Schedule,
        now: DateTime<Utc>,
        next: Option<DateTime<Utc>>,
        report: &mut RunReport,
    ) -> Result<(), ScheduleError> {
        let name = schedule.name.as_str();
        let Some(due) = schedule.latest_at_or_before(now) else {
            return Ok(()); // has never fired yet: nothing can be due
        };
        let row: Option<(LastTick, NextTick)> = sqlx::query_as(sql::SCHEDULE_GET)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        let Some((last_tick, recorded_next)) = row else {
            // First sight: the schedule starts with its next tick (see "Catch-up").
            sqlx::query(sql::SCHEDULE_CREATE)
                .bind(name)
                .bind(due)
                .bind(next)
                .execute(&self.pool)
                .await?;
            tracing::info!(schedule = name, next = ?next, "new schedule; it starts with its next tick");
            return Ok(());
        };
        if last_tick.is_some_and(|last| due <= last) {
            if recorded_next != next {
                sqlx::query(sql::SCHEDULE_SET_NEXT)
                    .bind(name)
                    .bind(next)
                    .execute(&self.pool)
                    .await?;
            }
            return Ok(());
        }

        // `due` is later than the watermark. Ticks between the two (if any) were missed by every
        // node and are dropped; `due` itself is enqueued unless it is late and the policy skips.
        let late = (now - due).to_std().unwrap_or_default() > MISFIRE_GRACE;
        let missed_before = last_tick
            .and_then(|last| schedule.next_after(last))
            .is_some_and(|first| first < due);
        let skip = late && schedule.catch_up == CatchUp::Skip;

        let mut tx = self.pool.begin().await?;
        let won: Option<String> = sqlx::query_scalar(sql::SCHEDULE_ADVANCE)
            .bind(name)
            .bind(due)
            .bind(next)
            .fetch_optional(&mut *tx)
            .await?;
        if won.is_none() {
            // Another node dealt with this tick (or a later one) first.
            tx.rollback().await?;
            return Ok(());
        }
        if skip {
            tx.commit().await?;
            tracing::info!(schedule = name, tick = %due, last = ?last_tick,
                "missed tick passed over (catch_up = skip)");
            report.skipped.push((name.into(), due));
            return Ok(());
        }
        // The queue's own SQL function, not `queue::enqueue`: the future of `enqueue(&mut *tx)`
        // is not `Send` (its `Acquire<'a>` bound fails rustc's higher-ranked check), and this
        // loop runs in a spawned task. Same statement semantics, unique key included.
        let job = schedule.job(schedule.tick_key(due));
        let job_id: i64 = sqlx::query_scalar(sql::JOB_ENQUEUE)
            .bind(&job.kind)
            .bind(&job.args)
            .bind(&job.queue)
            .bind(job.priority)
            .bind(job.max_attempts)
            .bind(&job.unique_key)
            .bind(&job.tags)
            .fetch_one(&mut *tx)
            .await?;
        sqlx::query(sql::SCHEDULE_SET_JOB)
            .bind(name)
            .bind(job_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        if late || missed_before {
            tracing::info!(schedule = name, tick = %due, last = ?last_tick, job = job_id,
                "missed tick caught up once (catch_up = latest)");
        } else {
            tracing::debug!(schedule = name, tick = %due, job = job_id, "tick enqueued");
        }
        report.enqueued.push((name.into(), due, job_id));
        Ok(())
    }

    /// The production loop: evaluates on the real clock, sleeps until the earliest next tick (at
    /// most [`MAX_SLEEP`]), logs a failing database once and backs off, until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let enabled = self.schedules.iter().filter(|s| s.enabled).count();
        if enabled == 0 {
            tracing::info!("no enabled schedules; the scheduler is idle");
            return;
        }
        tracing::info!(schedules = enabled, "scheduler started");
        let mut outage = Outage::new("the scheduler");
        loop {
            let wait = match self.run_once(Utc::now()).await {
                Ok(report) => {
                    outage.recovered();
                    // A few milliseconds past the tick, so the wall clock has surely reached it.
                    match report.next_tick {
                        Some(tick) => ((tick - Utc::now()).to_std().unwrap_or_default()
                            + std::time::Duration::from_millis(5))
                        .min(MAX_SLEEP),
                        None => MAX_SLEEP,
                    }
                }
                Err(error) => outage.failed(&error),
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => break,
            }
        }
        tracing::info!("scheduler stopped");
    }
}
