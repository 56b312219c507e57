//! What a job kind is (its payload, `KIND` and policy) and what `perform` may answer.

use std::future::Future;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// A job's payload, its stable kind name and its policy: enough to enqueue it.
///
/// The struct *is* the job: its fields are the row's `args` (ids and small values, never whole
/// records or secrets). `KIND` is stored in rows: never rename it.
pub trait JobArgs: Serialize + DeserializeOwned + Send + 'static {
    const KIND: &'static str;

    /// Queue, priority, attempts, backoff, timeout, rate limit. Defaults suit most kinds.
    fn policy() -> Policy {
        Policy::default()
    }

    /// Makes enqueue idempotent: a second enqueue with the same key while the first job is
    /// unfinished returns the first job's id.
    fn unique_key(&self) -> Option<String> {
        None
    }
}

/// How a job runs, given the application's state `S` (clients, pool, config).
pub trait Job<S>: JobArgs {
    fn perform(self, ctx: JobContext<S>) -> impl Future<Output = JobResult> + Send;
}

/// `Ok(result)`: completed, with an optional small JSON result kept on the row.
pub type JobResult = Result<Option<serde_json::Value>, JobError>;

/// Everything but success. Integrations classify their errors once and convert with `From`, so
/// `perform` bodies use `?`.
#[derive(Debug, Clone, PartialEq)]
pub enum JobError {
    /// Failed: the attempt is spent; runs again after the kind's backoff, or after `after` when
    /// the provider said when (e.g. `Retry-After`), until attempts run out.
    Retry {
        error: String,
        after: Option<Duration>,
    },
    /// Not now: runs again after the duration, the attempt given back (rate limits). Waits here
    /// and in `Retry::after` are cut to a month (`execute::MAX_WAIT`).
    Snooze(Duration),
    /// A permanent failure: stop, recorded as `discarded`.
    Discard(String),
    /// The job decided it should not run (or an operator cancelled it).
    Cancel(String),
}

impl JobError {
    pub fn retry(error: impl std::fmt::Display) -> Self {
        JobError::Retry {
            error: error.to_string(),
            after: None,
        }
    }

    pub fn discard(reason: impl std::fmt::Display) -> Self {
        JobError::Discard(reason.to_string())
    }
}

impl std::fmt::Display for JobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobError::Retry { error, .. } => write!(f, "{error}"),
            JobError::Snooze(wait) => write!(f, "snoozed for {wait:?}"),
            JobError::Discard(reason) => write!(f, "discarded: {reason}"),
            JobError::Cancel(reason) => write!(f, "cancelled: {reason}"),
        }
    }
}

impl From<sqlx::Error> for JobError {
    fn from(error: sqlx::Error) -> Self {
        JobError::retry(format!("database: {error}"))
    }
}

impl From<anyhow::Error> for JobError {
    fn from(error: anyhow::Error) -> Self {
        JobError::retry(format!("{error:#}"))
    }
}

impl From<serde_json::Error> for JobError {
    fn from(error: serde_json::Error) -> Self {
        JobError::Discard(format!("invalid JSON: {error}"))
    }
}

/// Per-kind policy, declared next to the payload struct.
#[derive(Debug, Clone)]
pub struct Policy {
    pub queue: &'static str,
    /// Lower runs first.
    pub priority: i16,
    pub max_attempts: i32,
    pub backoff: Backoff,
    /// A `perform` still running after this is an error of that attempt.
    pub timeout: Option<Duration>,
    /// A cluster-wide token bucket (from `[rate_limits.<name>]`) each run must take a token from.
    pub rate_limit: Option<&'static str>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            queue: "default",
            priority: 0,
            max_attempts: 25,
            backoff: Backoff::default(),
            timeout: Some(Duration::from_secs(300)),
            rate_limit: None,
        }
    }
}

/// Exponential backoff with jitter, capped: `min(max, base * 2^(attempt-1)) ± jitter`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
    /// Fraction of the delay added or removed at random, so retries do not march in step.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(2),
            max: Duration::from_secs(3600),
            jitter: 0.1,
        }
    }
}

impl Backoff {
    /// The wait before the next try after failed attempt `attempt` (1-based).
    pub fn delay(&self, attempt: i32) -> Duration {
        let exp = attempt.clamp(1, 63) as u32 - 1;
        let raw = self.base.as_secs_f64() * 2f64.powi(exp as i32);
        let capped = raw.min(self.max.as_secs_f64());
        let spread = capped * self.jitter.clamp(0.0, 1.0);
        let jittered = capped + rand::random_range(-spread..=spread);
        Duration::try_from_secs_f64(jittered.max(0.0)).unwrap_or(self.max)
    }
}

/// What a running job knows about itself, plus the application state.
#[derive(Clone)]
pub struct JobContext<S> {
    pub id: i64,
    pub kind: String,
    pub queue: String,
    /// 1 on the first try.
    pub attempt: i32,
    pub max_attempts: i32,
    pub unique_key: Option<String>,
    pub state: S,
    pub pool: PgPool,
    /// Cancelled when an operator cancels the job or the node stops for good. The engine drops
    /// `perform` at its next await point; long loops may check it themselves.
    pub cancel: CancellationToken,
}

impl<S> JobContext<S> {
    /// True on the last attempt the job will get.
    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }
}
