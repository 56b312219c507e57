//! Running one claimed job, and recording what came of it.
//!
//! [`run`] turns a claimed row into a [`Finish`]: it takes the kind's rate-limit token, calls
//! `perform` under the kind's timeout, catches a panic, and watches the job's cancel token.
//! [`finish_many`] writes many finishes in one fenced statement.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::FutureExt;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::job::{JobContext, JobError};
use super::rate_limit::{self, Reservation};
use super::registry::Registry;
use super::sql;

/// The longest a run waits in place for a rate-limit token before it snoozes instead.
const MAX_TOKEN_WAIT: Duration = Duration::from_secs(2);

/// The longest a job waits to run again after a retry, a snooze or a give-back: a longer wait
/// (a job's or a provider's answer) is cut to this month, instead of overflowing the clock's
/// arithmetic. A job that means to wait longer can snooze again.
pub const MAX_WAIT: Duration = Duration::from_secs(30 * 24 * 3600);

/// When a job that waits `wait` from now runs again: at most [`MAX_WAIT`] away.
pub fn run_again_after(wait: Duration) -> DateTime<Utc> {
    let wait = chrono::Duration::from_std(wait.min(MAX_WAIT)).expect("a month fits a TimeDelta");
    Utc::now() + wait
}

/// How long a job of a kind this node does not know first waits before it is claimed again:
/// long enough not to bounce between old nodes, short enough for a newer node to pick it up soon.
/// Each give-back doubles it, up to [`UNKNOWN_KIND_MAX_WAIT`].
pub const UNKNOWN_KIND_WAIT: Duration = Duration::from_secs(60);

/// The longest wait between two give-backs of a kind no node knows.
pub const UNKNOWN_KIND_MAX_WAIT: Duration = Duration::from_secs(3600);

/// Give-backs after which a job of a kind no node knows is discarded instead: 30 (1, 2, 4, ...
/// 32 minutes, then hourly) span about a day, longer than any rolling deploy. A kind that was
/// removed, or never deployed, then ends where an operator sees it, instead of its job waking
/// forever with an error entry each time.
pub const UNKNOWN_KIND_GIVE_BACKS: i64 = 30;

/// The marker of a give-back's error entry (counted to bound them).
const UNKNOWN_KIND_ERROR: &str = "this node does not know kind";

/// A row as claimed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedJob {
    pub id: i64,
    pub kind: String,
    pub queue: String,
    pub args: serde_json::Value,
    pub attempt: i32,
    pub max_attempts: i32,
    pub unique_key: Option<String>,
}

/// What came of one attempt, ready to be written.
#[derive(Debug, Clone)]
pub struct Finish {
    pub id: i64,
    pub attempt: i32,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Completed(Option<serde_json::Value>),
    /// Attempt spent; runs again at `run_at`.
    Retry {
        error: String,
        run_at: DateTime<Utc>,
    },
    /// Attempt given back; runs again at `run_at`.
    Snooze {
        run_at: DateTime<Utc>,
    },
    Discarded(String),
    Cancelled(String),
    /// This node cannot run the job (it does not know its kind: during a rolling deploy, an
    /// older node meets a newer kind): attempt given back, with `error` noted; runs again at
    /// `run_at`, on whichever node claims it then.
    GivenBack {
        error: String,
        run_at: DateTime<Utc>,
    },
    /// The node is stopping: available again at once, attempt given back.
    Released,
}

impl Outcome {
    fn state(&self) -> &'static str {
        match self {
            Outcome::Completed(_) => "completed",
            Outcome::Retry { .. } => "retryable",
            Outcome::Snooze { .. } => "scheduled",
            Outcome::Discarded(_) => "discarded",
            Outcome::Cancelled(_) => "cancelled",
            Outcome::GivenBack { .. } => "scheduled",
            Outcome::Released => "available",
        }
    }

    /// Short label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Completed(_) => "completed",
            Outcome::Retry { .. } => "retry",
            Outcome::Snooze { .. } => "snooze",
            Outcome::Discarded(_) => "discarded",
            Outcome::Cancelled(_) => "cancelled",
            Outcome::GivenBack { .. } => "given_back",
            Outcome::Released => "released",
        }
    }
}

/// Runs one claimed job to a [`Finish`]. `stop` is the node's hard stop (after the shutdown
/// grace): a job interrupted by it is released, not failed.
pub async fn run<S: Clone + Send + Sync + 'static>(
    registry: &Registry<S>,
    job: ClaimedJob,
    state: S,
    pool: PgPool,
    cancel: CancellationToken,
    stop: &CancellationToken,
) -> Finish {
    let (id, attempt) = (job.id, job.attempt);
    let (queue, kind) = (job.queue.clone(), job.kind.clone());
    // Every log line of the attempt carries the job's id, kind and attempt (text and JSON alike).
    // The engine's producer already runs us inside its `job` span; other callers (`drain`) not.
    let span = if tracing::Span::current()
        .metadata()
        .is_some_and(|m| m.name() == "job")
    {
        tracing::Span::none()
    } else {
        tracing::info_span!("job", id, kind = %kind, attempt)
    };
    let started = std::time::Instant::now();
    let outcome = run_outcome(registry, job, state, pool, cancel, stop)
        .instrument(span)
        .await;
    // Names and labels are described in `crate::http::metrics`.
    let labels = [("queue", queue), ("kind", kind)];
    metrics::histogram!("baw_job_duration_seconds", &labels).record(started.elapsed());
    let outcome_label = ("outcome", outcome.label().to_string());
    metrics::counter!(
        "baw_jobs_total",
        &[labels[0].clone(), labels[1].clone(), outcome_label]
    )
    .increment(1);
    Finish {
        id,
        attempt,
        outcome,
    }
}

/// A job of a kind this node does not know. Not the job's fault: a node of another version may
/// know the kind (a rolling deploy). Given back, the attempt not spent, with a wait that doubles
/// per give-back; discarded once [`UNKNOWN_KIND_GIVE_BACKS`] went by without a node that knows it.
async fn unknown_kind(pool: &PgPool, job: &ClaimedJob) -> Outcome {
    let earlier: Result<i64, sqlx::Error> = sqlx::query_scalar(
        "select count(*) from jobs j, jsonb_array_elements(coalesce(j.errors, '[]'::jsonb)) e
         where j.id = $1 and starts_with(e->>'error', $2)",
    )
    .bind(job.id)
    .bind(UNKNOWN_KIND_ERROR)
    .fetch_one(pool)
    .await;
    // Unreadable (database trouble): counted as a first give-back; the next one counts again.
    let earlier = earlier.unwrap_or(0);
    if earlier >= UNKNOWN_KIND_GIVE_BACKS {
        return Outcome::Discarded(format!(
            "no node knew kind `{}` through {earlier} give-backs (about a day): is it still \
             deployed? Retry the job once a node registers it",
            job.kind
        ));
    }
    let doubled = UNKNOWN_KIND_WAIT.saturating_mul(1 << earlier.clamp(0, 16));
    Outcome::GivenBack {
        error: format!(
            "{UNKNOWN_KIND_ERROR} `{}` (no worker for it is registered here); given back for a \
             node that does",
            job.kind
        ),
        run_at: run_again_after(doubled.min(UNKNOWN_KIND_MAX_WAIT)),
    }
}

async fn run_outcome<S: Clone + Send + Sync + 'static>(
    registry: &Registry<S>,
    job: ClaimedJob,
    state: S,
    pool: PgPool,
    cancel: CancellationToken,
    stop: &CancellationToken,
) -> Outcome {
    let Some(entry) = registry.get(&job.kind) else {
        return unknown_kind(&pool, &job).await;
    };
    let policy = &entry.policy;
    if let Some(bucket) = policy.rate_limit {
        // A token due soon is reserved and waited for here, holding the slot: snoozing for a
        // fraction of a second would cost a write and a re-claim. A longer wait gives the slot
        // back (snooze, attempt not spent).
        match rate_limit::reserve(&pool, bucket, MAX_TOKEN_WAIT).await {
            Ok(Reservation::Reserved(wait)) => {
                if !wait.is_zero() {
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = cancel.cancelled() => {
                            return if stop.is_cancelled() {
                                Outcome::Released
                            } else {
                                Outcome::Cancelled("cancelled while waiting for a rate-limit token".into())
                            };
                        }
                    }
                }
            }
            Ok(Reservation::Busy { retry_in }) => {
                metrics::counter!("baw_rate_limit_snoozes_total", "bucket" => bucket).increment(1);
                return Outcome::Snooze {
                    run_at: run_again_after(retry_in),
                };
            }
            Err(error) => {
                // The bucket could not be read (database trouble): not the job's fault.
                tracing::warn!(%error, bucket, "rate limit unavailable; snoozing the job");
                return Outcome::Snooze {
                    run_at: run_again_after(Duration::from_secs(1)),
                };
            }
        }
    }
    let ctx = JobContext {
        id: job.id,
        kind: job.kind.clone(),
        queue: job.queue.clone(),
        attempt: job.attempt,
        max_attempts: job.max_attempts,
        unique_key: job.unique_key.clone(),
        state,
        pool,
        cancel: cancel.clone(),
    };
    let perform = AssertUnwindSafe(entry.perform(job.args, ctx)).catch_unwind();
    let timeout = policy.timeout.unwrap_or(Duration::MAX);
    let result = tokio::select! {
        biased;
        _ = cancel.cancelled() => {
            return if stop.is_cancelled() {
                Outcome::Released
            } else {
                Outcome::Cancelled("cancelled while running".into())
            };
        }
        result = tokio::time::timeout(timeout, perform) => result,
    };
    let error = match result {
        Ok(Ok(Ok(value))) => return Outcome::Completed(value),
        Ok(Ok(Err(error))) => error,
        Ok(Err(panic)) => JobError::retry(format!(
            "panicked: {}",
            crate::telemetry::panic_message(&*panic)
        )),
        Err(_) => JobError::retry(format!("timed out after {timeout:?}")),
    };
    match error {
        JobError::Retry { error, after } => {
            if job.attempt >= job.max_attempts {
                Outcome::Discarded(format!(
                    "{error} (attempt {} of {})",
                    job.attempt, job.max_attempts
                ))
            } else {
                let wait = after.unwrap_or_else(|| policy.backoff.delay(job.attempt));
                Outcome::Retry {
                    error,
                    run_at: run_again_after(wait),
                }
            }
        }
        JobError::Snooze(wait) => Outcome::Snooze {
            run_at: run_again_after(wait),
        },
        JobError::Discard(reason) => Outcome::Discarded(reason),
        JobError::Cancel(reason) => Outcome::Cancelled(reason),
    }
}

/// Writes many finishes in one statement, fenced on (node, id, attempt, running). Returns how
/// many rows were still held and written.
pub async fn finish_many(
    pool: &PgPool,
    node: &str,
    finishes: &[Finish],
) -> Result<u64, sqlx::Error> {
    let n = finishes.len();
    let (mut ids, mut attempts, mut states) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut run_ats, mut errors, mut results, mut refunds) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for finish in finishes {
        ids.push(finish.id);
        attempts.push(finish.attempt);
        states.push(finish.outcome.state());
        let (run_at, error, result, refund): (
            Option<DateTime<Utc>>,
            Option<&str>,
            Option<&serde_json::Value>,
            bool,
        ) = match &finish.outcome {
            Outcome::Completed(result) => (None, None, result.as_ref(), false),
            Outcome::Retry { error, run_at } => (Some(*run_at), Some(error), None, false),
            Outcome::Snooze { run_at } => (Some(*run_at), None, None, true),
            Outcome::GivenBack { error, run_at } => (Some(*run_at), Some(error), None, true),
            Outcome::Discarded(error) | Outcome::Cancelled(error) => {
                (None, Some(error), None, false)
            }
            Outcome::Released => (Some(Utc::now()), None, None, true),
        };
        run_ats.push(run_at);
        errors.push(error);
        results.push(result);
        refunds.push(refund);
    }
    let done = sqlx::query(sql::JOB_FINISH_MANY)
        .bind(node)
        .bind(&ids)
        .bind(&attempts)
        .bind(&states)
        .bind(&run_ats)
        .bind(&errors)
        .bind(&results)
        .bind(&refunds)
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}
