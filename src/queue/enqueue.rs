//! Enqueue: one job or many in one statement, on a pool or inside a caller's own transaction (so
//! a webhook row and its job commit together or not at all). The SQL function `enqueue_job` in
//! the migrations is the same operation for the web app.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use super::job::JobArgs;
use super::sql;

/// A job about to be enqueued. Build it from a payload with [`NewJob::of`], adjust with the
/// builder methods, then [`enqueue`] it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub kind: String,
    pub args: serde_json::Value,
    pub queue: String,
    pub priority: i16,
    /// None: now.
    pub run_at: Option<DateTime<Utc>>,
    pub max_attempts: i32,
    pub unique_key: Option<String>,
    pub tags: Vec<String>,
}

/// The longest unique key a job may hold: the unique index on `jobs.unique_key` holds the whole
/// key, and PostgreSQL refuses index entries past 2704 bytes (512 characters are at most 2048).
pub const MAX_UNIQUE_KEY: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    #[error("cannot serialize the args of `{kind}`: {source}")]
    Args {
        kind: String,
        source: serde_json::Error,
    },
    #[error("invalid job: {0}")]
    Invalid(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// The outcome of one enqueue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    pub id: i64,
    /// False when the unique key was held by an unfinished job, whose id is `id`.
    pub inserted: bool,
}

impl NewJob {
    /// A job of kind `J` with its policy's defaults and unique key.
    pub fn of<J: JobArgs>(job: &J) -> Result<Self, EnqueueError> {
        let policy = J::policy();
        let args = serde_json::to_value(job).map_err(|source| EnqueueError::Args {
            kind: J::KIND.into(),
            source,
        })?;
        Ok(NewJob {
            kind: J::KIND.into(),
            args,
            queue: policy.queue.into(),
            priority: policy.priority,
            run_at: None,
            max_attempts: policy.max_attempts,
            unique_key: job.unique_key(),
            tags: Vec::new(),
        })
    }

    /// A job of any kind by name, with engine defaults (for the API and the CLI, which validate
    /// the kind themselves).
    pub fn raw(kind: impl Into<String>, args: serde_json::Value) -> Self {
        NewJob {
            kind: kind.into(),
            args,
            queue: "default".into(),
            priority: 0,
            run_at: None,
            max_attempts: 25,
            unique_key: None,
            tags: Vec::new(),
        }
    }

    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = queue.into();
        self
    }

    pub fn priority(mut self, priority: i16) -> Self {
        self.priority = priority;
        self
    }

    pub fn run_at(mut self, at: DateTime<Utc>) -> Self {
        self.run_at = Some(at);
        self
    }

    /// Runs `delay` from now. A delay the clock cannot add (millennia) is cut to the end of
    /// year 9999, which PostgreSQL can still store, instead of panicking.
    pub fn delay(mut self, delay: Duration) -> Self {
        let last =
            DateTime::<Utc>::from_timestamp(253_402_300_799, 0).expect("9999-12-31T23:59:59Z");
        let at = chrono::TimeDelta::from_std(delay)
            .ok()
            .and_then(|delay| Utc::now().checked_add_signed(delay));
        self.run_at = Some(at.map_or(last, |at| at.min(last)));
        self
    }

    pub fn max_attempts(mut self, max_attempts: i32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    pub fn unique_key(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }

    pub fn tags<I: IntoIterator<Item = T>, T: Into<String>>(mut self, tags: I) -> Self {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }

    fn validate(&self) -> Result<(), EnqueueError> {
        if self.kind.trim().is_empty() {
            return Err(EnqueueError::Invalid("kind must not be empty".into()));
        }
        if self.queue.trim().is_empty() {
            return Err(EnqueueError::Invalid("queue must not be empty".into()));
        }
        if self.max_attempts < 1 {
            return Err(EnqueueError::Invalid(
                "max_attempts must be at least 1".into(),
            ));
        }
        if let Some(key) = &self.unique_key {
            let length = key.chars().count();
            if length > MAX_UNIQUE_KEY {
                return Err(EnqueueError::Invalid(format!(
                    "unique key of {length} characters (at most {MAX_UNIQUE_KEY})"
                )));
            }
        }
        Ok(())
    }
}

/// Where an enqueue runs: on a pool, or on a caller's connection, typically `&mut *tx` so the
/// job commits (or not) with the caller's own writes.
///
/// A plain enum rather than sqlx's `Acquire`: futures generic over `Acquire` are not `Send`
/// (a higher-ranked lifetime bound), so axum handlers and spawned tasks could not enqueue.
pub enum Db<'c> {
    Pool(&'c PgPool),
    Conn(&'c mut PgConnection),
}

impl<'c> From<&'c PgPool> for Db<'c> {
    fn from(pool: &'c PgPool) -> Self {
        Db::Pool(pool)
    }
}

impl<'c> From<&'c mut PgConnection> for Db<'c> {
    fn from(conn: &'c mut PgConnection) -> Self {
        Db::Conn(conn)
    }
}

/// Enqueues one job. Pass a pool, or `&mut *tx` to commit it with the caller's own writes.
pub async fn enqueue<'c>(db: impl Into<Db<'c>>, job: NewJob) -> Result<Enqueued, EnqueueError> {
    let mut out = enqueue_many(db, vec![job]).await?;
    Ok(out.pop().expect("one result per job"))
}

/// Enqueues many jobs in one statement; returns one [`Enqueued`] per input, in order.
pub async fn enqueue_many<'c>(
    db: impl Into<Db<'c>>,
    jobs: Vec<NewJob>,
) -> Result<Vec<Enqueued>, EnqueueError> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    for job in &jobs {
        job.validate()?;
    }
    match db.into() {
        Db::Pool(pool) => insert_many(&mut *pool.acquire().await?, jobs).await,
        Db::Conn(conn) => insert_many(conn, jobs).await,
    }
}

async fn insert_many(
    conn: &mut PgConnection,
    jobs: Vec<NewJob>,
) -> Result<Vec<Enqueued>, EnqueueError> {
    if jobs.iter().all(|j| j.unique_key.is_none()) {
        let mut ids: Vec<i64> = sqlx::query_scalar(sql::JOB_INSERT_MANY_PLAIN)
            .bind(jobs.iter().map(|j| j.kind.as_str()).collect::<Vec<_>>())
            .bind(jobs.iter().map(|j| &j.args).collect::<Vec<_>>())
            .bind(jobs.iter().map(|j| j.queue.as_str()).collect::<Vec<_>>())
            .bind(jobs.iter().map(|j| j.priority).collect::<Vec<_>>())
            .bind(jobs.iter().map(|j| j.run_at).collect::<Vec<_>>())
            .bind(jobs.iter().map(|j| j.max_attempts).collect::<Vec<_>>())
            .bind(
                jobs.iter()
                    .map(|j| serde_json::json!(j.tags))
                    .collect::<Vec<_>>(),
            )
            .fetch_all(&mut *conn)
            .await?;
        ids.sort_unstable();
        return Ok(ids
            .into_iter()
            .map(|id| Enqueued { id, inserted: true })
            .collect());
    }
    let mut results: Vec<Option<Enqueued>> = vec![None; jobs.len()];
    let mut pending: Vec<usize> = (0..jobs.len()).collect();
    // A unique key found taken is looked up; if its holder finished in between, the key is free
    // again and the job is inserted on the next round.
    for _round in 0..5 {
        let batch: Vec<&NewJob> = pending.iter().map(|&i| &jobs[i]).collect();
        let rows: Vec<(i64, bool)> = sqlx::query_as(sql::JOB_INSERT_MANY)
            .bind(batch.iter().map(|j| j.kind.as_str()).collect::<Vec<_>>())
            .bind(batch.iter().map(|j| &j.args).collect::<Vec<_>>())
            .bind(batch.iter().map(|j| j.queue.as_str()).collect::<Vec<_>>())
            .bind(batch.iter().map(|j| j.priority).collect::<Vec<_>>())
            .bind(batch.iter().map(|j| j.run_at).collect::<Vec<_>>())
            .bind(batch.iter().map(|j| j.max_attempts).collect::<Vec<_>>())
            .bind(
                batch
                    .iter()
                    .map(|j| j.unique_key.as_deref())
                    .collect::<Vec<_>>(),
            )
            .bind(
                batch
                    .iter()
                    .map(|j| serde_json::json!(j.tags))
                    .collect::<Vec<_>>(),
            )
            .fetch_all(&mut *conn)
            .await?;
        let mut conflicted = Vec::new();
        for (&index, (id, inserted)) in pending.iter().zip(rows) {
            if inserted {
                results[index] = Some(Enqueued { id, inserted: true });
            } else {
                conflicted.push(index);
            }
        }
        if conflicted.is_empty() {
            break;
        }
        let keys: Vec<&str> = conflicted
            .iter()
            .filter_map(|&i| jobs[i].unique_key.as_deref())
            .collect();
        let holders: HashMap<String, i64> = sqlx::query_as(sql::JOB_FIND_UNIQUE)
            .bind(&keys)
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .collect();
        pending.clear();
        for index in conflicted {
            let key = jobs[index].unique_key.as_deref().unwrap_or_default();
            match holders.get(key) {
                Some(&id) => {
                    results[index] = Some(Enqueued {
                        id,
                        inserted: false,
                    })
                }
                None => pending.push(index),
            }
        }
        if pending.is_empty() {
            break;
        }
    }
    results
        .into_iter()
        .map(|r| r.ok_or_else(|| EnqueueError::Invalid("unique key kept changing hands".into())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Nothing;

    impl JobArgs for Nothing {
        const KIND: &'static str = "nothing";
    }

    #[test]
    fn a_unique_key_the_index_cannot_hold_is_refused() {
        let keyed = |n| {
            NewJob::of(&Nothing)
                .unwrap()
                .unique_key("k".repeat(n))
                .validate()
        };
        assert!(keyed(MAX_UNIQUE_KEY).is_ok());
        let refused = keyed(MAX_UNIQUE_KEY + 1).unwrap_err().to_string();
        assert_eq!(
            refused,
            "invalid job: unique key of 513 characters (at most 512)"
        );
    }

    #[test]
    fn a_delay_the_clock_cannot_add_is_cut_to_the_end_of_year_9999() {
        let job = NewJob::of(&Nothing).unwrap();
        let hour = job.clone().delay(Duration::from_secs(3600)).run_at.unwrap();
        assert!((hour - Utc::now()).num_seconds().abs_diff(3600) < 5);
        for huge in [Duration::from_secs(1 << 50), Duration::MAX] {
            let at = job.clone().delay(huge).run_at.unwrap();
            assert_eq!(at.to_rfc3339(), "9999-12-31T23:59:59+00:00");
        }
    }
}
