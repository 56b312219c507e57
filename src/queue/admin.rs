//! Operations on jobs and queues for operators: the dashboard, the admin API and the CLI call
//! these. Each works on many jobs at once; each wakes or tells the nodes concerned.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{Connection, PgConnection, PgPool};

use super::sql;
use super::worker::{CHANNEL_CONTROL, CHANNEL_JOBS};

/// The states, in lifecycle order.
pub const STATES: [&str; 7] = [
    "scheduled",
    "available",
    "running",
    "retryable",
    "completed",
    "discarded",
    "cancelled",
];

/// A whole job row.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct JobRow {
    pub id: i64,
    pub kind: String,
    pub queue: String,
    pub args: serde_json::Value,
    pub state: String,
    pub priority: i16,
    pub attempt: i32,
    pub max_attempts: i32,
    pub run_at: DateTime<Utc>,
    pub unique_key: Option<String>,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub attempted_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub errors: Option<serde_json::Value>,
    pub result: Option<serde_json::Value>,
    pub tags: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(
        "unknown state `{0}` (expected one of scheduled, available, running, retryable, completed, discarded, cancelled)"
    )]
    UnknownState(String),
    /// A filter value PostgreSQL would refuse (see [`JobQuery::check_values`]).
    ///
    /// [`JobQuery::check_values`]: super::admin_query::JobQuery::check_values
    #[error(transparent)]
    Filter(#[from] super::admin_query::FilterError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// The columns of [`JobRow`], as a literal so statements can be built with `concat!`.
macro_rules! job_columns {
    () => {
        "id, kind, queue, args, state, priority, attempt, max_attempts, run_at, unique_key, \
         lease_owner, lease_expires_at, created_at, attempted_at, finished_at, errors, result, tags"
    };
}

pub async fn get(pool: &PgPool, id: i64) -> Result<Option<JobRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        "select ",
        job_columns!(),
        " from jobs where id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// Runs the given jobs again now: any state but `running`. A job that used up its attempts gets
/// one more. A finished job whose unique key is held by an unfinished job is skipped, and of
/// finished jobs sharing a key only the newest runs again. Returns how many were set to run.
/// Like [`cancel`] and [`delete`], it runs on the caller's connection, so that it can be part of
/// the caller's transaction (a bulk action's batch, see `queue::bulk`).
pub async fn retry(conn: &mut PgConnection, ids: &[i64]) -> Result<u64, sqlx::Error> {
    let queues = match retry_in_savepoint(conn, ids).await {
        // A job enqueued with one of the keys since the statement's snapshot: one by one, newest
        // first, each in its own savepoint, skipping those whose key is taken.
        Err(error) if is_unique_violation(&error) => {
            let mut ids = ids.to_vec();
            ids.sort_unstable_by(|a, b| b.cmp(a));
            ids.dedup();
            let mut queues = Vec::new();
            for id in ids {
                match retry_in_savepoint(conn, &[id]).await {
                    Ok(queue) => queues.extend(queue),
                    Err(error) if is_unique_violation(&error) => {}
                    Err(error) => return Err(error),
                }
            }
            queues
        }
        result => result?,
    };
    notify_queues(conn, &queues).await?;
    Ok(queues.len() as u64)
}

/// [`sql::JOB_RETRY`] in a savepoint (a transaction of its own if none is open), so that a
/// failure leaves the caller's transaction usable.
async fn retry_in_savepoint(
    conn: &mut PgConnection,
    ids: &[i64],
) -> Result<Vec<String>, sqlx::Error> {
    let mut savepoint = conn.begin().await?;
    match sqlx::query_scalar(sql::JOB_RETRY)
        .bind(ids)
        .fetch_all(&mut *savepoint)
        .await
    {
        Ok(queues) => {
            savepoint.commit().await?;
            Ok(queues)
        }
        // A rollback that fails too (the connection is gone) reports the first error, unless
        // the caller would go on with the connection (a unique violation).
        Err(error) => match savepoint.rollback().await {
            Err(rollback) if is_unique_violation(&error) => Err(rollback),
            _ => Err(error),
        },
    }
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "23505")
}

/// Cancels the given unfinished jobs. A running job is told through its context and stops at its
/// next await point; its row is `cancelled` at once. Returns how many were cancelled.
pub async fn cancel(conn: &mut PgConnection, ids: &[i64]) -> Result<u64, sqlx::Error> {
    let rows: Vec<(i64, bool)> = sqlx::query_as(
        "with target as (
             select id, state = 'running' as was_running from jobs
             where id = any($1) and state in ('scheduled', 'available', 'running', 'retryable')
             for update
         )
         update jobs j
         set state = 'cancelled', finished_at = now(), lease_expires_at = null,
             errors = coalesce(j.errors, '[]'::jsonb) || jsonb_build_array(jsonb_build_object(
                 'attempt', j.attempt, 'at', now(), 'error', 'cancelled by an operator'))
         from target
         where j.id = target.id
         returning j.id, target.was_running",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    let running: Vec<String> = rows
        .iter()
        .filter(|(_, was)| *was)
        .map(|(id, _)| format!("cancel:{id}"))
        .collect();
    if !running.is_empty() {
        sqlx::query("select pg_notify($1, m) from unnest($2::text[]) m")
            .bind(CHANNEL_CONTROL)
            .bind(&running)
            .execute(&mut *conn)
            .await?;
    }
    Ok(rows.len() as u64)
}

/// Deletes the given finished jobs (completed, discarded, cancelled). Returns how many.
pub async fn delete(conn: &mut PgConnection, ids: &[i64]) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "delete from jobs where id = any($1) and state in ('completed', 'discarded', 'cancelled')",
    )
    .bind(ids)
    .execute(&mut *conn)
    .await?
    .rows_affected())
}

/// How many jobs each queue has in each state.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct QueueStateCount {
    pub queue: String,
    pub state: String,
    pub count: i64,
}

pub async fn counts(pool: &PgPool) -> Result<Vec<QueueStateCount>, sqlx::Error> {
    sqlx::query_as("select queue, state, count(*) as count from jobs group by queue, state order by queue, state")
        .fetch_all(pool)
        .await
}

/// Pauses a queue on every node: no job of it is claimed until it is resumed. Running jobs
/// finish.
pub async fn pause(pool: &PgPool, queue: &str) -> Result<(), sqlx::Error> {
    sqlx::query(sql::QUEUE_SET_PAUSED)
        .bind(queue)
        .bind(true)
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn resume(pool: &PgPool, queue: &str) -> Result<(), sqlx::Error> {
    sqlx::query(sql::QUEUE_SET_PAUSED)
        .bind(queue)
        .bind(false)
        .execute(pool)
        .await?;
    sqlx::query("select pg_notify($1, 'resume:' || $2)")
        .bind(CHANNEL_CONTROL)
        .bind(queue)
        .execute(pool)
        .await?;
    Ok(())
}

/// Queues that are paused now.
pub async fn paused_queues(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("select name from queues where paused_at is not null order by name")
        .fetch_all(pool)
        .await
}

async fn notify_queues(conn: &mut PgConnection, queues: &[String]) -> Result<(), sqlx::Error> {
    if queues.is_empty() {
        return Ok(());
    }
    sqlx::query("select pg_notify($1, q) from (select distinct unnest($2::text[]) as q) d")
        .bind(CHANNEL_JOBS)
        .bind(queues)
        .execute(conn)
        .await?;
    Ok(())
}
