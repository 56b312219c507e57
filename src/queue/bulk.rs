//! Retry, cancel or delete every job a filter matches, from the dashboard, the admin API or the
//! CLI: in batches of 1,000 ids newest first (no statement holds many locks), on a task of its
//! own, with its progress in `bulk_actions` so any node can follow it. A caller that cannot wait
//! for millions of jobs answers after a while with the progress so far ([`apply_matching`]); the
//! action goes on to the end.
//!
//! **Once per job, whatever node dies.** Each batch is one transaction: it locks the action's
//! row, checks that this run still owns it (`owner`) and that nobody stopped it, finds the next
//! ids below the cursor (`resume_before`), acts on them, and advances the cursor and the count.
//! A run cut short (its node shut down or died) leaves the row as of its last committed batch;
//! once the row has not moved for [`STALLED_AFTER`], the maintenance leader takes it over
//! ([`resume_stalled`]: a new owner) and carries on from the cursor. A batch in flight holds the
//! row, so it is never taken over mid-batch, and the old run, should it wake up, finds another
//! owner and stops before acting. An operator can [`stop`] an action; the batch under way
//! commits and no other follows.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use tracing::Instrument;
use uuid::Uuid;

use super::admin::{self, AdminError};
use super::admin_query::{JobQuery, ids_matching};

/// The columns of [`BulkRecord`].
macro_rules! record_columns {
    () => {
        "id, action, filter, requested_by, started_at, updated_at, changed, finished_at, error, \
         stopped_by, resumed"
    };
}

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
        self.apply_on(&mut *pool.acquire().await?, ids).await
    }

    /// [`apply`](Self::apply) on the caller's connection (in its transaction, if one is open).
    pub async fn apply_on(self, conn: &mut PgConnection, ids: &[i64]) -> Result<u64, sqlx::Error> {
        match self {
            BulkAction::Retry => admin::retry(conn, ids).await,
            BulkAction::Cancel => admin::cancel(conn, ids).await,
            BulkAction::Delete => admin::delete(conn, ids).await,
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
/// matching job (also when the caller goes away, and on another node if this one goes away), its
/// record shows how far it got, and the log says how it ended (as it does for every action by
/// filter).
pub async fn apply_matching(
    pool: &PgPool,
    query: &JobQuery,
    action: BulkAction,
    requested_by: &str,
    answer_within: Duration,
) -> Result<BulkOutcome, AdminError> {
    let mut run = BulkRun::start(pool, query, action, requested_by).await?;
    let ended = run.finished_within(answer_within).await.transpose()?;
    Ok(BulkOutcome {
        changed: ended.map_or_else(|| run.changed_so_far(), RunEnd::changed),
        finished: ended.is_some_and(RunEnd::is_over),
        record: Some(run.id),
    })
}

/// How a run of a bulk action ended on its node, with the jobs the action has changed in all
/// (this run and any before it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// Through every matching job.
    Finished(u64),
    /// An operator stopped it (see [`stop`]), or its record is gone.
    Stopped(u64),
    /// Another node took it over (this run had stopped moving it for [`STALLED_AFTER`]); it goes
    /// on there.
    TakenOver(u64),
}

impl RunEnd {
    pub fn changed(self) -> u64 {
        match self {
            RunEnd::Finished(n) | RunEnd::Stopped(n) | RunEnd::TakenOver(n) => n,
        }
    }

    /// False when it goes on elsewhere.
    pub fn is_over(self) -> bool {
        !matches!(self, RunEnd::TakenOver(_))
    }
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
/// it reached are changed; the maintenance leader resumes it from there ([`resume_stalled`]).
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
                "bulk job action interrupted by the node's shutdown; the maintenance leader resumes it"
            );
        }
    }
}

/// An action on every job matching a filter, under way on a task of its own (see
/// [`apply_matching`]), which records and logs how it ends. Dropping it does not stop it.
pub struct BulkRun {
    /// Its `bulk_actions` row.
    pub id: i64,
    task: tokio::task::JoinHandle<Result<RunEnd, AdminError>>,
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
        let owner = Uuid::new_v4();
        let id: i64 = sqlx::query_scalar(
            "insert into bulk_actions (action, filter, requested_by, owner) values ($1, $2, $3, $4)
             returning id",
        )
        .bind(action.as_str())
        .bind(filter)
        .bind(requested_by)
        .bind(owner)
        .fetch_one(pool)
        .await?;
        Ok(BulkRun::launch(pool, id, owner, action, query.clone(), 0))
    }

    /// Runs the action recorded as `id` for `owner`, from its cursor; `changed` jobs so far.
    fn launch(
        pool: &PgPool,
        id: i64,
        owner: Uuid,
        action: BulkAction,
        query: JobQuery,
        changed: u64,
    ) -> Self {
        let changed = Arc::new(AtomicU64::new(changed));
        let (pool, counter) = (pool.clone(), changed.clone());
        let task = tokio::spawn(
            async move {
                let mut interrupted = Interrupted {
                    id,
                    action,
                    changed: counter.clone(),
                    armed: true,
                };
                let outcome = apply_in_batches(&pool, &query, action, id, owner, &counter).await;
                interrupted.armed = false;
                let (action, changed) = (action.as_str(), counter.load(Ordering::Relaxed));
                // An action the database's outage cut short is left as it is (its end could not
                // be recorded anyway), for the maintenance leader to resume.
                let paused = matches!(&outcome, Err(AdminError::Database(e)) if crate::db::database_unavailable(e));
                match &outcome {
                    Ok(RunEnd::Finished(changed)) => {
                        tracing::info!(bulk_action = id, action, changed, "bulk job action finished")
                    }
                    Ok(RunEnd::Stopped(changed)) => {
                        tracing::info!(bulk_action = id, action, changed, "bulk job action stopped")
                    }
                    Ok(RunEnd::TakenOver(changed)) => tracing::warn!(
                        bulk_action = id,
                        action,
                        changed,
                        "bulk job action taken over by another node: this one had stopped moving it"
                    ),
                    Err(error) if paused => {
                        tracing::warn!(
                            bulk_action = id,
                            action,
                            changed,
                            %error,
                            "bulk job action paused: the database is unavailable; the maintenance \
                             leader resumes it"
                        )
                    }
                    Err(error) => tracing::error!(
                        bulk_action = id,
                        action,
                        changed,
                        %error,
                        "bulk job action failed"
                    ),
                }
                if !paused && matches!(outcome, Ok(RunEnd::Finished(_)) | Err(_)) {
                    let error = outcome.as_ref().err().map(ToString::to_string);
                    // The jobs are what matters: a record left behind (another node resumes it
                    // and finds nothing left to do) does not turn a finished action into a
                    // failed one.
                    if let Err(e) = record_end(&pool, id, owner, error).await {
                        tracing::warn!(bulk_action = id, error = %e, "could not record a bulk action's end");
                    }
                }
                outcome
            }
            .instrument(tracing::Span::current()),
        );
        BulkRun { id, task, changed }
    }

    /// Jobs changed by the batches done so far.
    pub fn changed_so_far(&self) -> u64 {
        self.changed.load(Ordering::Relaxed)
    }

    /// How it ended, once it has; None when it is still going after `within`. Once it answered
    /// Some, the run is spent: ask it nothing more.
    pub async fn finished_within(
        &mut self,
        within: Duration,
    ) -> Option<Result<RunEnd, AdminError>> {
        let joined = tokio::time::timeout(within, &mut self.task).await.ok()?;
        Some(joined.map_err(joined_error).and_then(|ended| ended))
    }
}

async fn record_end(
    pool: &PgPool,
    id: i64,
    owner: Uuid,
    error: Option<String>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update bulk_actions set finished_at = now(), updated_at = now(), error = $3
         where id = $1 and owner = $2 and finished_at is null",
    )
    .bind(id)
    .bind(owner)
    .bind(error)
    .execute(pool)
    .await?;
    Ok(())
}

fn joined_error(error: tokio::task::JoinError) -> AdminError {
    if error.is_panic() {
        std::panic::resume_unwind(error.into_panic());
    }
    // Cancelled: only when the runtime shuts down, which closes the pool too.
    AdminError::Database(sqlx::Error::PoolClosed)
}

/// The action's batches, each in one transaction with its progress (see the module's doc).
async fn apply_in_batches(
    pool: &PgPool,
    query: &JobQuery,
    action: BulkAction,
    record: i64,
    owner: Uuid,
    progress: &AtomicU64,
) -> Result<RunEnd, AdminError> {
    loop {
        let mut tx = pool.begin().await?;
        let row: Option<(Option<Uuid>, bool, Option<i64>, i64)> = sqlx::query_as(
            "select owner, finished_at is not null, resume_before, changed
             from bulk_actions where id = $1 for update",
        )
        .bind(record)
        .fetch_optional(&mut *tx)
        .await?;
        let (before, changed) = match row {
            None => return Ok(RunEnd::Stopped(progress.load(Ordering::Relaxed))),
            Some((_, true, _, changed)) => return Ok(RunEnd::Stopped(changed as u64)),
            Some((holder, ..)) if holder != Some(owner) => {
                return Ok(RunEnd::TakenOver(progress.load(Ordering::Relaxed)));
            }
            Some((_, false, before, changed)) => (before, changed as u64),
        };
        let ids = ids_matching(&mut tx, query, before, ACTION_BATCH).await?;
        let Some(&last) = ids.last() else {
            return Ok(RunEnd::Finished(changed));
        };
        let changed = changed + action.apply_on(&mut tx, &ids).await?;
        sqlx::query(
            "update bulk_actions set changed = $2, resume_before = $3, updated_at = now()
             where id = $1",
        )
        .bind(record)
        .bind(changed as i64)
        .bind(last)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        progress.store(changed, Ordering::Relaxed);
        if (ids.len() as i64) < ACTION_BATCH {
            return Ok(RunEnd::Finished(changed));
        }
    }
}

/// Takes over every bulk action whose run stopped moving it (no batch for `stalled_after`: its
/// node went away) and carries each on from its cursor, on this node; returns the runs started
/// (dropping them does not stop them). The maintenance leader calls it on each rescue tick. An
/// action whose record cannot be read back (written by another version) is marked failed.
pub async fn resume_stalled(
    pool: &PgPool,
    stalled_after: Duration,
) -> Result<Vec<BulkRun>, sqlx::Error> {
    let mut runs = Vec::new();
    // Each once per call, whatever the threshold: its new run may not have begun a batch yet.
    let mut seen: Vec<i64> = Vec::new();
    loop {
        let owner = Uuid::new_v4();
        let taken: Option<(i64, String, serde_json::Value, i64, i32)> = sqlx::query_as(
            "update bulk_actions b
             set owner = $1, updated_at = now(), resumed = b.resumed + 1
             from (select id from bulk_actions
                   where finished_at is null and owner is not null
                     and updated_at < now() - make_interval(secs => $2)
                     and id <> all($3)
                   order by id
                   limit 1
                   for update skip locked) stalled
             where b.id = stalled.id
             returning b.id, b.action, b.filter, b.changed, b.resumed",
        )
        .bind(owner)
        .bind(stalled_after.as_secs_f64())
        .bind(&seen)
        .fetch_optional(pool)
        .await?;
        let Some((id, action, filter, changed, resumed)) = taken else {
            return Ok(runs);
        };
        seen.push(id);
        let readable = BulkAction::parse(&action)
            .ok_or_else(|| format!("unknown action {action:?}"))
            .and_then(|action| {
                serde_json::from_value::<JobQuery>(filter)
                    .map(|query| (action, query))
                    .map_err(|e| format!("its filter cannot be read: {e}"))
            });
        match readable {
            Ok((action, query)) => {
                tracing::warn!(
                    bulk_action = id,
                    action = action.as_str(),
                    changed,
                    resumed,
                    "resuming a bulk job action whose node stopped moving it"
                );
                runs.push(BulkRun::launch(
                    pool,
                    id,
                    owner,
                    action,
                    query,
                    changed as u64,
                ));
            }
            Err(why) => {
                tracing::error!(bulk_action = id, %why, "cannot resume a bulk job action");
                record_end(pool, id, owner, Some(format!("cannot resume: {why}"))).await?;
            }
        }
    }
}

/// What [`stop`] found.
#[derive(Debug)]
pub enum StopOutcome {
    /// Stopped now: the batch under way (if any) committed, no other follows.
    Stopped(BulkRecord),
    /// It had already ended.
    AlreadyOver(BulkRecord),
    /// No such bulk action.
    Missing,
}

/// Stops bulk action `id` before its end; `by` (an operator, a token, the command line) goes
/// into its record. Waits for the batch under way, at most one batch.
pub async fn stop(pool: &PgPool, id: i64, by: &str) -> Result<StopOutcome, sqlx::Error> {
    let stopped: Option<BulkRecord> = sqlx::query_as(concat!(
        "update bulk_actions set finished_at = now(), updated_at = now(), stopped_by = $2
         where id = $1 and finished_at is null
         returning ",
        record_columns!()
    ))
    .bind(id)
    .bind(by)
    .fetch_optional(pool)
    .await?;
    if let Some(record) = stopped {
        tracing::info!(
            bulk_action = id,
            by,
            changed = record.changed,
            "bulk job action stopped"
        );
        return Ok(StopOutcome::Stopped(record));
    }
    Ok(match record(pool, id).await? {
        Some(record) => StopOutcome::AlreadyOver(record),
        None => StopOutcome::Missing,
    })
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
    /// Why it failed before the end.
    pub error: Option<String>,
    /// Who stopped it before the end.
    pub stopped_by: Option<String>,
    /// How many times the maintenance leader took it over after its run stopped moving it.
    pub resumed: i32,
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

    /// `running`, `finished`, `stopped`, `failed`, or `stalled` (no progress for
    /// [`STALLED_AFTER`]: its node went away mid-way; the maintenance leader resumes it on its
    /// next rescue tick).
    pub fn status(&self, now: DateTime<Utc>) -> &'static str {
        match (&self.finished_at, &self.error) {
            (Some(_), _) if self.stopped_by.is_some() => "stopped",
            (Some(_), Some(_)) => "failed",
            (Some(_), None) => "finished",
            (None, _) if (now - self.updated_at).to_std().unwrap_or_default() > STALLED_AFTER => {
                "stalled"
            }
            (None, _) => "running",
        }
    }
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
