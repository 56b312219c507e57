//! Helpers for tests of job kinds and of the engine: run a queue to exhaustion deterministically
//! ([`drain`]), check what was enqueued ([`assert_enqueued`]), and insert jobs in any state
//! ([`insert_job`]) to exercise the rescuer and the pruner.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::execute::{self, ClaimedJob, Outcome};
use super::registry::Registry;
use super::sql;

/// What a [`drain`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DrainReport {
    pub completed: usize,
    pub retried: usize,
    /// Snoozed, or given back (a kind this node does not know): attempt not spent.
    pub snoozed: usize,
    pub discarded: usize,
    pub cancelled: usize,
}

impl DrainReport {
    pub fn total(&self) -> usize {
        self.completed + self.retried + self.snoozed + self.discarded + self.cancelled
    }
}

/// Runs the runnable jobs of `queue` one batch at a time, in this task, until none is runnable
/// (retries and snoozes that are due in the future are left for later). Uses the same claim, run
/// and finish path as the engine.
pub async fn drain<S: Clone + Send + Sync + 'static>(
    pool: &PgPool,
    registry: &Registry<S>,
    state: S,
    queue: &str,
) -> Result<DrainReport, sqlx::Error> {
    let node = format!("drain-{:08x}", rand::random::<u32>());
    let stop = CancellationToken::new();
    let mut report = DrainReport::default();
    loop {
        let claimed: Vec<ClaimedJob> = sqlx::query_as(sql::JOB_CLAIM)
            .bind(queue)
            .bind(100_i64)
            .bind(&node)
            .bind(300.0_f64)
            .bind(None::<DateTime<Utc>>)
            .fetch_all(pool)
            .await?;
        if claimed.is_empty() {
            return Ok(report);
        }
        let mut finishes = Vec::with_capacity(claimed.len());
        for job in claimed {
            let finish = execute::run(
                registry,
                job,
                state.clone(),
                pool.clone(),
                stop.child_token(),
                &stop,
            )
            .await;
            match finish.outcome {
                Outcome::Completed(_) => report.completed += 1,
                Outcome::Retry { .. } => report.retried += 1,
                Outcome::Snooze { .. } | Outcome::GivenBack { .. } => report.snoozed += 1,
                Outcome::Discarded(_) => report.discarded += 1,
                Outcome::Cancelled(_) => report.cancelled += 1,
                Outcome::Released => {}
            }
            finishes.push(finish);
        }
        execute::finish_many(pool, &node, &finishes).await?;
    }
}

/// Panics unless a job of `kind` whose args contain `args` (JSON containment) is waiting to run
/// (scheduled, available or retryable). Returns its id.
pub async fn assert_enqueued(pool: &PgPool, kind: &str, args: serde_json::Value) -> i64 {
    let id: Option<i64> = sqlx::query_scalar(
        "select id from jobs where kind = $1 and args @> $2
           and state in ('scheduled', 'available', 'retryable')
         order by id limit 1",
    )
    .bind(kind)
    .bind(&args)
    .fetch_optional(pool)
    .await
    .expect("query jobs");
    match id {
        Some(id) => id,
        None => {
            let seen: Vec<(String, serde_json::Value, String)> =
                sqlx::query_as("select kind, args, state from jobs order by id desc limit 20")
                    .fetch_all(pool)
                    .await
                    .unwrap_or_default();
            panic!("no waiting `{kind}` job with args containing {args}; latest jobs: {seen:?}")
        }
    }
}

/// A job row in any state, for tests of the rescuer, the pruner and the dashboard.
#[derive(Debug, Clone)]
pub struct JobFactory {
    pub kind: String,
    pub queue: String,
    pub args: serde_json::Value,
    pub state: String,
    pub attempt: i32,
    pub max_attempts: i32,
    pub run_at: Option<DateTime<Utc>>,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl Default for JobFactory {
    fn default() -> Self {
        JobFactory {
            kind: "noop".into(),
            queue: "default".into(),
            args: serde_json::json!({}),
            state: "available".into(),
            attempt: 0,
            max_attempts: 25,
            run_at: None,
            lease_owner: None,
            lease_expires_at: None,
            finished_at: None,
        }
    }
}

/// Inserts the row as described, bypassing the state machine. Returns its id.
pub async fn insert_job(pool: &PgPool, job: JobFactory) -> i64 {
    sqlx::query_scalar(
        "insert into jobs (kind, queue, args, state, attempt, max_attempts, run_at, lease_owner,
                           lease_expires_at, finished_at, attempted_at)
         values ($1, $2, $3, $4, $5, $6, coalesce($7, now()), $8, $9, $10,
                 case when $5 > 0 then now() end)
         returning id",
    )
    .bind(job.kind)
    .bind(job.queue)
    .bind(job.args)
    .bind(job.state)
    .bind(job.attempt)
    .bind(job.max_attempts)
    .bind(job.run_at)
    .bind(job.lease_owner)
    .bind(job.lease_expires_at)
    .bind(job.finished_at)
    .fetch_one(pool)
    .await
    .expect("insert job")
}
