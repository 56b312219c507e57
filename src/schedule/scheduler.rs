//! Evaluation: which tick of each schedule is due, the compare-and-set that lets exactly one node
//! enqueue it, and the loop that does this on the real clock. See the module essay in
//! [`super`] for why this is exactly once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::{CLOCK_SKEW_GRACE, CatchUp, MAX_SLEEP, MISFIRE_GRACE, Schedule, ScheduleError, sql};
use crate::queue::EnqueueError;
use crate::queue::worker::Outage;

/// Whether the row exists, its watermark, its recorded next tick, its definition, the
/// database's clock.
type Row = (
    bool,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Option<String>,
    DateTime<Utc>,
);

/// A problem that lasts is logged again at most this often.
const REPEAT_LOG: Duration = Duration::from_secs(600);

/// What one [`Scheduler::run_once`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// (schedule, tick, job id) for each tick this node enqueued.
    pub enqueued: Vec<(String, DateTime<Utc>, i64)>,
    /// (schedule, tick) for each late tick passed over under policy `skip`.
    pub skipped: Vec<(String, DateTime<Utc>)>,
    /// The earliest next tick of the enabled schedules: when to evaluate again.
    pub next_tick: Option<DateTime<Utc>>,
    /// (schedule, error) for each schedule whose evaluation failed on its own (the others went
    /// on); it is evaluated again on the next pass.
    pub failed: Vec<(String, String)>,
}

/// Evaluates a set of schedules against the shared `schedules` table. Every node of role `all`
/// or `scheduler` runs one; they need no coordination beyond the database.
pub struct Scheduler {
    pool: PgPool,
    schedules: Vec<Schedule>,
    /// Problems being logged (a clock ahead of the database's), so each is logged when it
    /// starts, now and then while it lasts, and when it ends; not on every pass.
    troubles: Troubles,
}

impl Scheduler {
    /// A scheduler for `schedules` (disabled ones are kept for nothing but are never evaluated).
    pub fn new(pool: PgPool, schedules: Vec<Schedule>) -> Self {
        Scheduler {
            pool,
            schedules,
            troubles: Troubles::default(),
        }
    }

    pub fn schedules(&self) -> &[Schedule] {
        &self.schedules
    }

    /// Evaluates every enabled schedule at `now`: enqueues each due tick that no node has
    /// enqueued yet (one transaction per tick) and reports what this node did.
    ///
    /// Each schedule on its own: one whose statements fail (a row the database refuses, say) is
    /// logged by name (when it starts failing, every [`REPEAT_LOG`] while it does, and when it
    /// works again), reported in [`RunReport::failed`], and the others are evaluated all the
    /// same. Only a failure of the database itself (no connection, shutting down, read-only)
    /// ends the pass with an error: every schedule would fail the same way.
    pub async fn run_once(&self, now: DateTime<Utc>) -> Result<RunReport, ScheduleError> {
        let mut report = RunReport::default();
        for schedule in self.schedules.iter().filter(|s| s.enabled) {
            let next = schedule.next_after(now);
            if let Some(next) = next
                && report.next_tick.is_none_or(|t| next < t)
            {
                report.next_tick = Some(next);
            }
            let name = schedule.name.as_str();
            let trouble = format!("schedule {name}");
            match self.evaluate(schedule, now, next, &mut report).await {
                Ok(()) => {
                    if let Some(times) = self.troubles.resolved(&trouble) {
                        tracing::info!(
                            schedule = name,
                            failures = times,
                            "the schedule is evaluated again"
                        );
                    }
                }
                Err(error) if is_outage(&error) => return Err(error),
                Err(error) => {
                    if let Some(times) = self.troubles.occurred(&trouble) {
                        tracing::error!(schedule = name, %error, failures = times,
                            "evaluating the schedule failed; the other schedules go on, and this one is tried again each pass");
                    }
                    report.failed.push((name.into(), error.to_string()));
                }
            }
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
        let (exists, last_tick, recorded_next, defined_by, db_now): Row =
            sqlx::query_as(sql::SCHEDULE_GET)
                .bind(name)
                .fetch_one(&self.pool)
                .await?;
        // A node whose clock is ahead must not deal with ticks the database's clock has not
        // reached: the watermark only moves forward, so every node would then wait for real time
        // to catch up (see "The clock"). The statements refuse it too; this names the skew.
        let skew = now - db_now;
        if skew.to_std().is_ok_and(|ahead| ahead > CLOCK_SKEW_GRACE) {
            if let Some(times) = self.troubles.occurred("clock") {
                tracing::warn!(schedule = name, ahead = %humantime::format_duration(skew.to_std().unwrap_or_default()),
                    evaluated_at = %now, database_now = %db_now, times,
                    "this node's clock is ahead of the database's by more than the allowed skew; it enqueues no tick until its clock is right");
            }
            return Ok(());
        }
        if let Some(times) = self.troubles.resolved("clock") {
            tracing::info!(times, "this node's clock agrees with the database's again");
        }
        let grace = CLOCK_SKEW_GRACE.as_secs_f64();
        let definition = schedule.definition();
        if !exists {
            // First sight: the schedule starts with its next tick (see "Catch-up").
            sqlx::query(sql::SCHEDULE_CREATE)
                .bind(name)
                .bind(due)
                .bind(next)
                .bind(grace)
                .bind(&definition)
                .execute(&self.pool)
                .await?;
            tracing::info!(schedule = name, next = ?next, "new schedule; it starts with its next tick");
            return Ok(());
        }
        match defined_by {
            // A row from before definitions were recorded: taken as this config's.
            None => {
                sqlx::query(sql::SCHEDULE_ADOPT_DEFINITION)
                    .bind(name)
                    .bind(&definition)
                    .execute(&self.pool)
                    .await?;
            }
            Some(old) if old != definition => {
                // The cron or the zone changed: its watermark counted ticks of another
                // definition, so the schedule starts over with its next tick, like a new one
                // (see "Catch-up"), instead of catching up at deploy time.
                let changed = sqlx::query(sql::SCHEDULE_REDEFINE)
                    .bind(name)
                    .bind(due)
                    .bind(next)
                    .bind(&definition)
                    .bind(grace)
                    .execute(&self.pool)
                    .await?;
                if changed.rows_affected() > 0 {
                    tracing::info!(schedule = name, was = %old, now = %definition, next = ?next,
                        "the schedule changed; it starts with its next tick");
                }
                return Ok(());
            }
            Some(_) => {}
        }
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
            .bind(grace)
            .bind(&definition)
            .fetch_optional(&mut *tx)
            .await?;
        if won.is_none() {
            // Another node dealt with this tick (or a later one) first, or the database's clock
            // fell behind this node's since the row was read, or another node configured
            // otherwise redefined the schedule meanwhile.
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
    /// most [`MAX_SLEEP`]), logs a failing database once and backs off, until `stop`. Each pass
    /// compares this node's clock with the database's and, when they disagree by more than
    /// [`CLOCK_SKEW_GRACE`], evaluates on the database's (saying so).
    pub async fn run(self, stop: CancellationToken) {
        let enabled = self.schedules.iter().filter(|s| s.enabled).count();
        if enabled == 0 {
            tracing::info!("no enabled schedules; the scheduler is idle");
            return;
        }
        tracing::info!(schedules = enabled, "scheduler started");
        let mut outage = Outage::new("the scheduler");
        loop {
            let pass = async {
                let now = self.clock().await?;
                let started = Instant::now();
                let report = self.run_once(now).await?;
                Ok::<_, ScheduleError>((now, started, report))
            };
            let wait = match pass.await {
                Ok((now, started, report)) => {
                    outage.recovered();
                    // A few milliseconds past the tick, so the clock has surely reached it.
                    match report.next_tick {
                        Some(tick) => ((tick - now)
                            .to_std()
                            .unwrap_or_default()
                            .saturating_sub(started.elapsed())
                            + Duration::from_millis(5))
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

    /// The time to evaluate at: this node's clock, or the database's when the two disagree by
    /// more than [`CLOCK_SKEW_GRACE`] (logged when it starts, every [`REPEAT_LOG`] while it
    /// lasts, and when it ends). Ticks are the database's business: its clock is the one every
    /// node shares.
    async fn clock(&self) -> Result<DateTime<Utc>, sqlx::Error> {
        let before = Utc::now();
        let db_now: DateTime<Utc> = sqlx::query_scalar(sql::DB_NOW)
            .fetch_one(&self.pool)
            .await?;
        let after = Utc::now();
        let (now, skew) = evaluation_time(before, after, db_now);
        match skew {
            Some(skew) => {
                if let Some(times) = self.troubles.occurred("node clock") {
                    let (by, way) = match skew.to_std() {
                        Ok(ahead) => (ahead, "ahead of"),
                        Err(_) => ((-skew).to_std().unwrap_or_default(), "behind"),
                    };
                    tracing::warn!(by = %humantime::format_duration(by), times,
                        "this node's clock is {way} the database's by more than the allowed skew; schedules are evaluated on the database's clock");
                }
            }
            None => {
                if let Some(times) = self.troubles.resolved("node clock") {
                    tracing::info!(times, "this node's clock agrees with the database's again");
                }
            }
        }
        Ok(now)
    }
}

/// The time to evaluate at, from this node's clock read `before` and `after` the database
/// answered `db_now`: the node's own (`after`) unless the two disagree by more than
/// [`CLOCK_SKEW_GRACE`]; then the database's, moved on by the time its answer took to arrive
/// (half the round trip), with the skew.
fn evaluation_time(
    before: DateTime<Utc>,
    after: DateTime<Utc>,
    db_now: DateTime<Utc>,
) -> (DateTime<Utc>, Option<chrono::Duration>) {
    let half_trip = (after - before) / 2;
    let skew = (before + half_trip) - db_now;
    let grace = chrono::Duration::from_std(CLOCK_SKEW_GRACE).expect("a small duration");
    if skew.abs() > grace {
        (db_now + half_trip, Some(skew))
    } else {
        (after, None)
    }
}

/// Whether `error` is the database failing as a whole (every schedule would fail alike: the
/// loop's outage) rather than one schedule's statement refused.
fn is_outage(error: &ScheduleError) -> bool {
    let sql = match error {
        ScheduleError::Database(error) | ScheduleError::Enqueue(EnqueueError::Database(error)) => {
            error
        }
        _ => return false,
    };
    match sql {
        sqlx::Error::Database(error) => error.code().is_some_and(|code| {
            // connection exception, insufficient resources, operator intervention (shutdown),
            // read-only transaction (a standby after a failover)
            ["08", "53", "57"]
                .iter()
                .any(|class| code.starts_with(class))
                || code == "25006"
        }),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

/// Problems that last, by key, each logged when it starts, at most every [`REPEAT_LOG`] while
/// it lasts, and when it ends: a problem that lasts hours is neither silent nor a flood.
#[derive(Default)]
struct Troubles(Mutex<HashMap<String, Trouble>>);

struct Trouble {
    /// How many times it happened since it started.
    times: u64,
    logged_at: Instant,
}

impl Troubles {
    /// Counts one occurrence of `key`. Some(times so far) when it is to be logged now.
    fn occurred(&self, key: &str) -> Option<u64> {
        let mut troubles = self.0.lock().expect("troubles lock");
        match troubles.get_mut(key) {
            None => {
                troubles.insert(
                    key.into(),
                    Trouble {
                        times: 1,
                        logged_at: Instant::now(),
                    },
                );
                Some(1)
            }
            Some(trouble) => {
                trouble.times += 1;
                (trouble.logged_at.elapsed() >= REPEAT_LOG).then(|| {
                    trouble.logged_at = Instant::now();
                    trouble.times
                })
            }
        }
    }

    /// `key` did not happen this time. Some(how many times it had) when it had started.
    fn resolved(&self, key: &str) -> Option<u64> {
        let mut troubles = self.0.lock().expect("troubles lock");
        troubles.remove(key).map(|t| t.times)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_node_clock_far_from_the_database_s_is_replaced_by_it() {
        let db = at("2026-01-01T12:00:00Z");
        let trip = chrono::Duration::milliseconds(20);
        // Within the allowed skew: the node's own clock.
        let node = db + chrono::Duration::seconds(3);
        assert_eq!(evaluation_time(node, node + trip, db), (node + trip, None));
        // A day ahead, or an hour behind: the database's, plus half the round trip.
        for skew in [chrono::Duration::days(1), chrono::Duration::hours(-1)] {
            let node = db + skew;
            let (now, seen) = evaluation_time(node, node + trip, db);
            assert_eq!(now, db + trip / 2);
            assert_eq!(seen, Some(skew + trip / 2));
        }
    }
}
