//! Retry, cancel or delete every job a filter matches, from the dashboard, the admin API or the
//! CLI: in batches of 1,000 ids newest first (no statement holds many locks), on a task of its
//! own, with its progress in `bulk_actions` after each batch so any node can follow it. A caller
//! that cannot wait for millions of jobs answers after a while with the progress so far
//! ([`apply_matching`]); the action goes on to the end.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tracing::Instrument;

use super::admin::{self, AdminError};
use super::admin_query::{JobQuery, ids_matching};

/// Jobs an action by filter handles per statement.
const ACTION_BATCH: i64 = 1_000;

/// What an action by filter does to each matching job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BulkAction {
    /// [`admin::retry`]: every state but running.
    Retry,
    /// [`admin::cancel`]: unfinished jobs.
    Cancel,
    /// [`admin::delete`]: finished jobs.
    Delete,
}

impl BulkAction {
    pub fn parse(s: &str) -> Option<BulkAction> {
        match s {
            "retry" => Some(BulkAction::Retry),
            "cancel" => Some(BulkAction::Cancel),
            "delete" => Some(BulkAction::Delete),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BulkAction::Retry => "retry",
            BulkAction::Cancel => "cancel",
            BulkAction::Delete => "delete",
        }
    }

    /// The jobs it changes; others are left as they are.
    pub fn applies_to(self) -> &'static str {
        match self {
            BulkAction::Retry => "any state but running",
            BulkAction::Cancel => "unfinished jobs",
            BulkAction::Delete => "finished jobs (completed, discarded, cancelled)",
        }
    }

    /// Applies the action to `ids`; returns how many jobs it changed.
    pub async fn apply(self, pool: &PgPool, ids: &[i64]) -> Result<u64, sqlx::Error> {
        match self {
            BulkAction::Retry => admin::retry(pool, ids).await,
            BulkAction::Cancel => admin::cancel(pool, ids).await,
            BulkAction::Delete => admin::delete(pool, ids).await,
        }
    }
}

/// Applies `action` to every job matching `query` (the whole table, not one page). A job that
/// changes state between being found and being acted on is handled by the action's own state
/// check. `requested_by` (an operator, a token, the command line) goes into its record.
///
/// The caller waits at most `answer_within`: over millions of jobs an action takes minutes, and a
/// browser, an API client or a proxy in front would give up without learning what happened.
/// Past that, the answer is how many jobs changed so far; the action goes on to the last
/// matching job (also when the caller goes away), its record shows how far it got, and the log
/// says how it ended (as it does for every action by filter).
pub async fn apply_matching(
    pool: &PgPool,
    query: &JobQuery,
    action: BulkAction,
    requested_by: &str,
    answer_within: Duration,
) -> Result<BulkOutcome, AdminError> {
    let mut run = BulkRun::start(pool, query, action, requested_by).await?;
    let finished = run.finished_within(answer_within).await.transpose()?;
    Ok(BulkOutcome {
        changed: finished.unwrap_or_else(|| run.changed_so_far()),
        finished: finished.is_some(),
        record: Some(run.id),
    })
}

/// What a bulk action had done when its caller answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkOutcome {
    /// Jobs changed: all of them, or so far.
    pub changed: u64,
    /// False: still going on its own task.
    pub finished: bool,
    /// Its `bulk_actions` row (actions by filter; an action on given ids has none).
    pub record: Option<i64>,
}

impl BulkOutcome {
    /// An action on given ids, done.
    pub fn on_ids(changed: u64) -> Self {
        BulkOutcome {
            changed,
            finished: true,
            record: None,
        }
    }
}

/// Logs an action that never ended: the node shut down under it (its task was dropped). The jobs
/// it reached are changed; running it again finishes the rest.
struct Interrupted {
    id: i64,
    action: BulkAction,
    changed: Arc<AtomicU64>,
    armed: bool,
}

impl Drop for Interrupted {
    fn drop(&mut self) {
        // Unwinding from a panic (the panic hook has logged it) is not a shutdown.
        if self.armed && !std::thread::panicking() {
            tracing::warn!(
                bulk_action = self.id,
                action = self.action.as_str(),
                changed = self.changed.load(Ordering::Relaxed),
                "bulk job action interrupted by the node's shutdown; run it again for the rest"
            );
        }
    }
}

/// An action on every job matching a filter, under way on a task of its own (see
/// [`apply_matching`]), which records and logs how it ends. Dropping it does not stop it.
pub struct BulkRun {
    /// Its `bulk_actions` row.
    pub id: i64,
    task: tokio::task::JoinHandle<Result<u64, AdminError>>,
    changed: Arc<AtomicU64>,
}

impl BulkRun {
    /// Records the action and starts it.
    pub async fn start(
        pool: &PgPool,
        query: &JobQuery,
        action: BulkAction,
        requested_by: &str,
    ) -> Result<Self, AdminError> {
        query.validate()?;
        let filter = serde_json::to_value(query).expect("a JobQuery serializes");
        let id: i64 = sqlx::query_scalar(
            "insert into bulk_actions (action, filter, requested_by) values ($1, $2, $3)
             returning id",
        )
        .bind(action.as_str())
        .bind(filter)
        .bind(requested_by)
        .fetch_one(pool)
        .await?;
        let changed = Arc::new(AtomicU64::new(0));
        let (pool, query, counter) = (pool.clone(), query.clone(), changed.clone());
        let task = tokio::spawn(async move {
            let mut interrupted = Interrupted {
                id,
                action,
                changed: counter.clone(),
                armed: true,
            };
            let outcome = apply_in_batches(&pool, &query, action, id, &counter).await;
            interrupted.armed = false;
            let changed = counter.load(Ordering::Relaxed);
            match &outcome {
                Ok(_) => tracing::info!(
                    bulk_action = id,
                    action = action.as_str(),
                    changed,
                    "bulk job action finished"
                ),
                Err(error) => tracing::error!(
                    bulk_action = id,
                    action = action.as_str(),
                    changed,
                    %error,
                    "bulk job action stopped"
                ),
            }
            let recorded = sqlx::query(
                "update bulk_actions set changed = $2, finished_at = now(), updated_at = now(),
                                         error = $3
                 where id = $1",
            )
            .bind(id)
            .bind(changed as i64)
            .bind(outcome.as_ref().err().map(ToString::to_string))
            .execute(&pool)
            .await;
            // The jobs are what matters: a record left behind (it shows as stalled) does not
            // turn a finished action into a failed one.
            if let Err(e) = recorded {
                tracing::warn!(bulk_action = id, error = %e, "could not record a bulk action's end");
            }
            outcome
        }
        .instrument(tracing::Span::current()));
        Ok(BulkRun { id, task, changed })
    }

    /// Jobs changed by the batches done so far.
    pub fn changed_so_far(&self) -> u64 {
        self.changed.load(Ordering::Relaxed)
    }

    /// How many jobs it changed, once done; None when it is still going after `within`. Once it
    /// answered Some, the run is spent: ask it nothing more.
    pub async fn finished_within(&mut self, within: Duration) -> Option<Result<u64, AdminError>> {
        let joined = tokio::time::timeout(within, &mut self.task).await.ok()?;
        Some(joined.map_err(joined_error).and_then(|changed| changed))
    }
}

fn joined_error(error: tokio::task::JoinError) -> AdminError {
    if error.is_panic() {
        std::panic::resume_unwind(error.into_panic());
    }
    // Cancelled: only when the runtime shuts down, which closes the pool too.
    AdminError::Database(sqlx::Error::PoolClosed)
}

async fn apply_in_batches(
    pool: &PgPool,
    query: &JobQuery,
    action: BulkAction,
    record: i64,
    progress: &AtomicU64,
) -> Result<u64, AdminError> {
    let mut before: Option<i64> = None;
    let mut changed = 0;
    loop {
        let ids = ids_matching(pool, query, before, ACTION_BATCH).await?;
        let Some(&last) = ids.last() else {
            break;
        };
        changed += action.apply(pool, &ids).await?;
        progress.store(changed, Ordering::Relaxed);
        sqlx::query("update bulk_actions set changed = $2, updated_at = now() where id = $1")
            .bind(record)
            .bind(changed as i64)
            .execute(pool)
            .await?;
        if (ids.len() as i64) < ACTION_BATCH {
            break;
        }
        before = Some(last);
    }
    Ok(changed)
}

/// A bulk action's record.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct BulkRecord {
    pub id: i64,
    pub action: String,
    /// The filter, as [`JobQuery`] serializes it.
    pub filter: serde_json::Value,
    pub requested_by: String,
    pub started_at: DateTime<Utc>,
    /// Its last progress.
    pub updated_at: DateTime<Utc>,
    pub changed: i64,
    pub finished_at: Option<DateTime<Utc>>,
    /// Why it stopped before the end.
    pub error: Option<String>,
}

/// A record not moved for this long without being finished belonged to a node that went away.
pub const STALLED_AFTER: Duration = Duration::from_secs(60);

impl BulkRecord {
    /// The filter as `key: value, ...` (its set conditions).
    pub fn describe_filter(&self) -> String {
        match &self.filter {
            serde_json::Value::Object(fields) => fields
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| match v {
                    serde_json::Value::String(text) => format!("{k}: {text}"),
                    other => format!("{k}: {other}"),
                })
                .collect::<Vec<_>>()
                .join(", "),
            other => other.to_string(),
        }
    }

    /// `running`, `finished`, `failed`, or `stalled` (no progress for [`STALLED_AFTER`]: its
    /// node went away mid-way; running it again does the rest).
    pub fn status(&self, now: DateTime<Utc>) -> &'static str {
        match (&self.finished_at, &self.error) {
            (Some(_), Some(_)) => "failed",
            (Some(_), None) => "finished",
            (None, _) if (now - self.updated_at).to_std().unwrap_or_default() > STALLED_AFTER => {
                "stalled"
            }
            (None, _) => "running",
        }
    }
}

macro_rules! record_columns {
    () => {
        "id, action, filter, requested_by, started_at, updated_at, changed, finished_at, error"
    };
}

/// One bulk action's record.
pub async fn record(pool: &PgPool, id: i64) -> Result<Option<BulkRecord>, sqlx::Error> {
    sqlx::query_as(concat!(
        "select ",
        record_columns!(),
        " from bulk_actions where id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// The latest bulk actions, newest first (`bulk_actions_started_idx`).
pub async fn recent(pool: &PgPool, limit: i64) -> Result<Vec<BulkRecord>, sqlx::Error> {
    sqlx::query_as(concat!(
        "select ",
        record_columns!(),
        " from bulk_actions order by started_at desc, id desc limit $1"
    ))
    .bind(limit)
    .fetch_all(pool)
    .await
}
