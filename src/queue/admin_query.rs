//! The operators' read side over a big `jobs` table: what the dashboard, the admin API and the
//! CLI list and count, and the ids an action by filter ([`super::bulk`]) works through.
//! [`super::admin`] holds the actions on given ids.
//!
//! # Staying fast with millions of finished rows
//!
//! `jobs` is dominated by `completed` rows, which no index but the primary key covers (a full
//! `(state, id)` index would tax every state change). So:
//! - every listing is a keyset page (`id < before`, newest first, `limit`);
//! - a listing of `completed` jobs, or of every state, examines at most [`SCAN_WINDOW`] ids per
//!   page (a primary-key range); when the window ends before the page is full, the page says so
//!   and its cursor continues below the window;
//! - listings of the other states follow their partial indexes (`jobs_fetch_idx`,
//!   `jobs_running_idx`, `jobs_failed_idx`), so their cost is bounded by those states' sizes;
//! - counts are exact while a state holds at most [`EXACT_STATE_MAX`] jobs (read through its
//!   partial index), else the planner's estimate; `completed`, which only a scan could count, is
//!   estimated once the table is over 32 MiB ([`Count::estimated`]);
//! - throughput reads `jobs_finished_state_idx` (index-only, its predicate is the filter).
//!
//! Statements are sent unprepared (`persistent(false)`): PostgreSQL then plans each with its
//! parameter values, so `($1 is null or state = $1)` folds to `state = 'discarded'` and the
//! partial index whose predicate that implies is usable. A cached generic plan could not.

use chrono::{DateTime, Datelike, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use super::admin::{AdminError, JobRow, STATES};

/// Most jobs one listing page holds (the dashboard's, the admin API's and the CLI's).
pub const MAX_PAGE: i64 = 500;

/// Most ids one page of `completed` (or all-state) jobs examines.
pub const SCAN_WINDOW: i64 = 100_000;

/// A filter over jobs; unset fields match everything. Built from the dashboard's query string or
/// the admin API's parameters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobQuery {
    pub state: Option<String>,
    pub kind: Option<String>,
    pub queue: Option<String>,
    pub tag: Option<String>,
    /// A JSON object: args containing it (`{"client_id": "c1"}`); any other text: a
    /// case-insensitive substring of the args' JSON text.
    pub args: Option<String>,
    /// A case-insensitive substring of any attempt's error.
    pub error: Option<String>,
    /// Created at or after.
    pub created_from: Option<DateTime<Utc>>,
    /// Created before.
    pub created_to: Option<DateTime<Utc>>,
}

/// A filter value PostgreSQL would refuse (a database error, not a page of jobs), named by its
/// [`JobQuery`] field so each front-end can name it as its caller typed it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("`{field}` {problem}")]
pub struct FilterError {
    pub field: &'static str,
    pub problem: &'static str,
}

/// The years a `timestamptz` filter may fall in (PostgreSQL's range is wider but lopsided:
/// 4713 BC to 294276 AD; no operator means a time outside these).
pub const FILTER_YEARS: std::ops::RangeInclusive<i32> = 1..=9999;

impl JobQuery {
    /// Values PostgreSQL cannot take: NUL in text (`22021`), `\u0000` in the args' JSON (jsonb
    /// refuses it, `22P05`), a time outside [`FILTER_YEARS`] (`22008` near its limits): a typo
    /// is the caller's error, not a database failure. Part of [`validate`].
    ///
    /// [`validate`]: Self::validate
    pub fn check_values(&self) -> Result<(), FilterError> {
        for (field, value) in [
            ("state", &self.state),
            ("kind", &self.kind),
            ("queue", &self.queue),
            ("tag", &self.tag),
            ("args", &self.args),
            ("error", &self.error),
        ] {
            if value.as_deref().is_some_and(|v| v.contains('\0')) {
                return Err(FilterError {
                    field,
                    problem: "must not contain NUL (\\u0000) characters",
                });
            }
        }
        if self
            .args_json()
            .as_ref()
            .is_some_and(crate::db::json_has_nul)
        {
            return Err(FilterError {
                field: "args",
                problem: "must not contain \\u0000 (PostgreSQL's jsonb cannot hold it)",
            });
        }
        for (field, time) in [
            ("created_from", self.created_from),
            ("created_to", self.created_to),
        ] {
            if time.is_some_and(|t| !FILTER_YEARS.contains(&t.year())) {
                return Err(FilterError {
                    field,
                    problem: "must be a time between the years 1 and 9999",
                });
            }
        }
        Ok(())
    }

    /// An unknown state is refused rather than matching nothing, and so are values PostgreSQL
    /// cannot take ([`check_values`], which a front-end may call first to name a field as its
    /// caller typed it). Every listing, count and bulk action validates its query.
    ///
    /// [`check_values`]: Self::check_values
    pub fn validate(&self) -> Result<(), AdminError> {
        self.check_values()?;
        match &self.state {
            Some(state) if !STATES.contains(&state.as_str()) => {
                Err(AdminError::UnknownState(state.clone()))
            }
            _ => Ok(()),
        }
    }

    /// True when at least one field narrows the jobs: an action by filter needs one, or it would
    /// act on the whole table. Blank text and an empty JSON object in `args` (which every job's
    /// args contain) are no condition.
    pub fn has_condition(&self) -> bool {
        let text = |v: &Option<String>| v.as_deref().is_some_and(|v| !v.trim().is_empty());
        let args = text(&self.args)
            && self
                .args_json()
                .is_none_or(|a| a.as_object().is_some_and(|o| !o.is_empty()));
        text(&self.state)
            || text(&self.kind)
            || text(&self.queue)
            || text(&self.tag)
            || args
            || text(&self.error)
            || self.created_from.is_some()
            || self.created_to.is_some()
    }

    /// True when the query can only be answered by walking the primary key (no partial index
    /// narrows it), so a page is bounded by [`SCAN_WINDOW`].
    pub fn windowed(&self) -> bool {
        matches!(self.state.as_deref(), None | Some("completed"))
    }

    fn args_json(&self) -> Option<serde_json::Value> {
        self.args
            .as_deref()
            .and_then(|a| serde_json::from_str::<serde_json::Value>(a.trim()).ok())
            .filter(serde_json::Value::is_object)
    }

    fn args_pattern(&self) -> Option<String> {
        match self.args_json() {
            Some(_) => None,
            None => self.args.as_deref().map(like_pattern),
        }
    }
}

/// `%text%` with LIKE's wildcards in `text` escaped.
fn like_pattern(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('%');
    for c in text.chars() {
        if matches!(c, '\\' | '%' | '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

/// One page of a listing.
#[derive(Debug, Clone, Serialize)]
pub struct JobPage {
    pub jobs: Vec<JobRow>,
    /// The cursor of the next (older) page; None: nothing older can match.
    pub next_before: Option<i64>,
    /// Set when the page stopped at the scan window before filling up: the ids at or above this
    /// were examined, the ones below were not (yet).
    pub window_floor: Option<i64>,
}

/// The filter's conditions, shared by every statement below; `$1`..`$11`.
macro_rules! job_filter {
    () => {
        "($1::text is null or state = $1)
           and ($2::text is null or kind = $2)
           and ($3::text is null or queue = $3)
           and ($4::text is null or $4 = any(tags))
           and ($5::jsonb is null or args @> $5)
           and ($6::text is null or args::text ilike $6)
           and ($7::text is null or (errors is not null and exists (
                   select 1 from jsonb_array_elements(errors) e
                    where e->>'error' ilike $7)))
           and ($8::timestamptz is null or created_at >= $8)
           and ($9::timestamptz is null or created_at < $9)
           and ($10::bigint is null or id < $10)
           and ($11::bigint is null or id >= $11)"
    };
}

const JOB_LIST_PAGE: &str = concat!(
    "select id, kind, queue, args, state, priority, attempt, max_attempts, run_at, unique_key,
            lease_owner, lease_expires_at, created_at, attempted_at, finished_at, errors, result,
            tags
       from jobs where ",
    job_filter!(),
    " order by id desc limit $12"
);

const JOB_IDS_MATCHING: &str = concat!(
    "select id from jobs where ",
    job_filter!(),
    " order by id desc limit $12"
);

const JOB_COUNT_MATCHING: &str = concat!(
    "select count(*) from (select 1 from jobs where ",
    job_filter!(),
    " limit $12) t"
);

macro_rules! bind_filter {
    ($query:expr, $q:expr, $before:expr, $floor:expr) => {
        $query
            .bind(&$q.state)
            .bind(&$q.kind)
            .bind(&$q.queue)
            .bind(&$q.tag)
            .bind($q.args_json())
            .bind($q.args_pattern())
            .bind($q.error.as_deref().map(like_pattern))
            .bind($q.created_from)
            .bind($q.created_to)
            .bind($before)
            .bind($floor)
    };
}

/// One page of jobs matching `query`, newest first, below `before` (the previous page's
/// `next_before`).
pub async fn job_page(
    pool: &PgPool,
    query: &JobQuery,
    before: Option<i64>,
    limit: i64,
) -> Result<JobPage, AdminError> {
    query.validate()?;
    let limit = limit.clamp(1, MAX_PAGE);
    // Ids start at 1: below a cursor of 1 or less nothing is older. (A cursor is the caller's
    // number, down to i64::MIN: the arithmetic below saturates rather than wraps to the top.)
    if before.is_some_and(|b| b <= 1) {
        return Ok(JobPage {
            jobs: Vec::new(),
            next_before: None,
            window_floor: None,
        });
    }
    let floor = if query.windowed() {
        // The window starts at the newest job, also under a cursor above it (one typed by
        // hand): a window of ids no job has would only lead to another.
        let max: Option<i64> = sqlx::query_scalar("select max(id) from jobs")
            .fetch_one(pool)
            .await?;
        let newest = max.unwrap_or(0).saturating_add(1);
        let top = before.map_or(newest, |b| b.min(newest));
        Some(top.saturating_sub(SCAN_WINDOW).max(0))
    } else {
        None
    };
    let jobs: Vec<JobRow> = bind_filter!(
        sqlx::query_as(JOB_LIST_PAGE).persistent(false),
        query,
        before,
        floor
    )
    .bind(limit)
    .fetch_all(pool)
    .await?;
    if jobs.len() as i64 == limit {
        let next_before = jobs.last().map(|j| j.id);
        return Ok(JobPage {
            jobs,
            next_before,
            window_floor: None,
        });
    }
    // Not full: either nothing older matches, or the window ended first.
    let next_before = match floor {
        Some(floor) if floor > 0 => {
            let older: Option<i64> =
                sqlx::query_scalar("select id from jobs where id < $1 limit 1")
                    .bind(floor)
                    .fetch_optional(pool)
                    .await?;
            older.map(|_| floor)
        }
        _ => None,
    };
    Ok(JobPage {
        jobs,
        next_before,
        window_floor: next_before,
    })
}

/// How many jobs match `query`, counting to `cap` at most and for `budget` at most; None when
/// the budget ran out (the count would need a long scan).
pub async fn count_matching(
    pool: &PgPool,
    query: &JobQuery,
    cap: i64,
    budget: std::time::Duration,
) -> Result<Option<i64>, AdminError> {
    query.validate()?;
    let mut tx = pool.begin().await?;
    sqlx::query("select set_config('statement_timeout', $1, true)")
        .bind(format!("{}ms", budget.as_millis().max(1)))
        .execute(&mut *tx)
        .await?;
    let counted: Result<i64, sqlx::Error> = bind_filter!(
        sqlx::query_scalar(JOB_COUNT_MATCHING).persistent(false),
        query,
        None::<i64>,
        None::<i64>
    )
    .bind(cap.max(1))
    .fetch_one(&mut *tx)
    .await;
    match counted {
        Ok(n) => {
            tx.commit().await?;
            Ok(Some(n))
        }
        // 57014: query_canceled, our statement_timeout.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("57014") => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// One batch of the ids matching `query` below `before`, newest first: what an action by filter
/// ([`super::bulk`]) works through.
pub(super) async fn ids_matching(
    conn: &mut sqlx::PgConnection,
    query: &JobQuery,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<i64>, sqlx::Error> {
    bind_filter!(
        sqlx::query_scalar(JOB_IDS_MATCHING).persistent(false),
        query,
        before,
        None::<i64>
    )
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// The state of each of the given jobs that exists.
const JOB_STATES: &str = "select id, state from jobs where id = any($1)";

/// The state of each of `ids` that exists (missing ids are not in the map): what an action on
/// ids can say about the jobs it left alone.
pub async fn job_states(
    pool: &PgPool,
    ids: &[i64],
) -> Result<std::collections::HashMap<i64, String>, sqlx::Error> {
    let rows: Vec<(i64, String)> = sqlx::query_as(JOB_STATES).bind(ids).fetch_all(pool).await?;
    Ok(rows.into_iter().collect())
}

/// Jobs of one queue in one state. `estimated`: the planner's estimate, not a count.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Count {
    pub queue: String,
    pub state: String,
    pub count: i64,
    pub estimated: bool,
}

/// Beyond this many jobs in one state, that state's per-queue figures are the planner's
/// estimates: an exact per-queue count reads one heap row per job (a backlog of a million
/// available jobs, or an incident's hundred thousand discarded ones, would take seconds).
pub const EXACT_STATE_MAX: i64 = 5_000;

/// How many jobs are in state $1, counting to $2 at most. Sent unprepared, so each state's
/// partial index is used (`jobs_failed_idx` even index-only).
const JOB_COUNT_STATE_CAPPED: &str =
    "select count(*) from (select 1 from jobs where state = $1 limit $2) t";

/// Jobs of state $1 per queue (for a state under [`EXACT_STATE_MAX`]).
const JOB_COUNT_STATE_BY_QUEUE: &str =
    "select queue, count(*) from jobs where state = $1 group by queue";

/// The planner's row estimate for jobs of state $1 in queue $2 (from the column statistics: no
/// rows are read).
const JOB_ESTIMATE_STATE_QUEUE: &str =
    "explain (format json) select 1 from jobs where state = $1::text and queue = $2::text";

/// Below this size of the `jobs` heap, completed jobs are counted exactly: the scan is short
/// (32 MiB is about 100,000 rows), and a young table's statistics may not exist yet.
const EXACT_COUNT_MAX_BYTES: i64 = 32 << 20;

const JOB_TABLE_BYTES: &str = "select pg_relation_size('jobs')";

/// Jobs per queue and state for `queues` (and any other queue an exact count finds): exact for
/// a state with at most [`EXACT_STATE_MAX`] jobs, else the planner's estimate; `completed` is
/// exact only while the table is small (under 32 MiB). Ordered by queue, then lifecycle order.
pub async fn counts(pool: &PgPool, queues: &[String]) -> Result<Vec<Count>, sqlx::Error> {
    let bytes: i64 = sqlx::query_scalar(JOB_TABLE_BYTES).fetch_one(pool).await?;
    // Each state on its own connection, side by side: an exact state costs two short index
    // reads, an estimated one a single capped read.
    let per_state = STATES.map(|state| async move {
        let exact = if state == "completed" {
            bytes <= EXACT_COUNT_MAX_BYTES
        } else {
            let n: i64 = sqlx::query_scalar(JOB_COUNT_STATE_CAPPED)
                .persistent(false)
                .bind(state)
                .bind(EXACT_STATE_MAX + 1)
                .fetch_one(pool)
                .await?;
            n <= EXACT_STATE_MAX
        };
        if !exact {
            return Ok::<_, sqlx::Error>((state, None));
        }
        let rows: Vec<(String, i64)> = sqlx::query_as(JOB_COUNT_STATE_BY_QUEUE)
            .persistent(false)
            .bind(state)
            .fetch_all(pool)
            .await?;
        Ok((state, Some(rows)))
    });
    let mut out: Vec<Count> = Vec::new();
    let mut estimate: Vec<&'static str> = Vec::new();
    for (state, rows) in futures::future::try_join_all(per_state).await? {
        match rows {
            None => estimate.push(state),
            Some(rows) => out.extend(rows.into_iter().map(|(queue, count)| Count {
                queue,
                state: state.into(),
                count,
                estimated: false,
            })),
        }
    }
    let mut names: Vec<String> = queues.to_vec();
    names.extend(out.iter().map(|c| c.queue.clone()));
    names.sort();
    names.dedup();
    for state in estimate {
        for queue in &names {
            let plan: serde_json::Value = sqlx::query_scalar(JOB_ESTIMATE_STATE_QUEUE)
                .persistent(false)
                .bind(state)
                .bind(queue)
                .fetch_one(pool)
                .await?;
            let rows = plan
                .pointer("/0/Plan/Plan Rows")
                .and_then(serde_json::Value::as_f64)
                .unwrap_or(0.0);
            // The planner never estimates below one row; treat that as "none seen".
            out.push(Count {
                queue: queue.clone(),
                state: state.into(),
                count: if rows <= 1.0 { 0 } else { rows as i64 },
                estimated: true,
            });
        }
    }
    // Every queue asked about has a figure for every state.
    for queue in &names {
        for state in STATES {
            if !out.iter().any(|c| c.queue == *queue && c.state == state) {
                out.push(Count {
                    queue: queue.clone(),
                    state: state.into(),
                    count: 0,
                    estimated: false,
                });
            }
        }
    }
    sort_counts(&mut out);
    Ok(out)
}

/// The queues that have waiting or running jobs, or a row in `queues` (paused or resumed once).
/// The waiting ones by a loose index scan of `jobs_fetch_idx` (one probe per queue, however
/// many jobs wait).
const QUEUE_NAMES: &str = "
with recursive waiting(queue) as (
    select min(queue) from jobs where state in ('available', 'scheduled', 'retryable')
    union all
    select (select min(queue) from jobs
             where state in ('available', 'scheduled', 'retryable') and queue > w.queue)
      from waiting w where w.queue is not null
)
select queue from waiting where queue is not null
union select queue from jobs where state = 'running'
union select name from queues";

pub async fn queue_names(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    let mut names: Vec<String> = sqlx::query_scalar(QUEUE_NAMES).fetch_all(pool).await?;
    names.sort();
    Ok(names)
}

/// By queue, then lifecycle order.
fn sort_counts(counts: &mut [Count]) {
    let order = |s: &str| STATES.iter().position(|x| *x == s).unwrap_or(STATES.len());
    counts.sort_by(|a, b| {
        a.queue
            .cmp(&b.queue)
            .then(order(&a.state).cmp(&order(&b.state)))
    });
}

/// Per queue, the `run_at` of its oldest job that could run now (available, or scheduled /
/// retryable and due) and is waiting.
const QUEUE_OLDEST_RUNNABLE: &str = "
select queue, min(run_at) from jobs
 where state in ('available', 'scheduled', 'retryable') and run_at <= now()
 group by queue";

pub async fn oldest_runnable(pool: &PgPool) -> Result<Vec<(String, DateTime<Utc>)>, sqlx::Error> {
    sqlx::query_as(QUEUE_OLDEST_RUNNABLE).fetch_all(pool).await
}

/// Finished jobs in one time bucket.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Throughput {
    pub start: DateTime<Utc>,
    /// Completed, discarded and cancelled.
    pub finished: i64,
    /// Discarded (attempts used up or a permanent error).
    pub failed: i64,
}

/// Finished jobs per bucket: index-only over `jobs_finished_state_idx` (the filter is its
/// predicate).
const JOB_THROUGHPUT_FINISHED: &str = "
select date_bin(make_interval(secs => $1), finished_at, $2) as bucket, count(*)
  from jobs
 where state in ('completed', 'discarded', 'cancelled') and finished_at >= $2
 group by 1";

/// Discarded jobs per bucket: index-only over `jobs_finished_state_idx` (it includes the state).
const JOB_THROUGHPUT_FAILED: &str = "
select date_bin(make_interval(secs => $1), finished_at, $2) as bucket, count(*)
  from jobs
 where state = 'discarded' and finished_at >= $2
 group by 1";

/// Jobs finished since `since`, in `buckets` buckets of `step` each (empty buckets included).
pub async fn throughput(
    pool: &PgPool,
    since: DateTime<Utc>,
    step: chrono::Duration,
    buckets: usize,
) -> Result<Vec<Throughput>, sqlx::Error> {
    let secs = step.num_seconds().max(1) as f64;
    // Two index scans of tens of milliseconds each on a busy day: run side by side.
    type Buckets = Vec<(DateTime<Utc>, i64)>;
    let (finished, failed): (Buckets, Buckets) = futures::try_join!(
        sqlx::query_as(JOB_THROUGHPUT_FINISHED)
            .persistent(false)
            .bind(secs)
            .bind(since)
            .fetch_all(pool),
        sqlx::query_as(JOB_THROUGHPUT_FAILED)
            .persistent(false)
            .bind(secs)
            .bind(since)
            .fetch_all(pool),
    )?;
    let mut out: Vec<Throughput> = (0..buckets)
        .map(|i| Throughput {
            start: since + step * i as i32,
            finished: 0,
            failed: 0,
        })
        .collect();
    let index = |t: DateTime<Utc>| {
        let i = (t - since).num_seconds() / step.num_seconds().max(1);
        usize::try_from(i).ok().filter(|i| *i < buckets)
    };
    for (t, n) in finished {
        if let Some(i) = index(t) {
            out[i].finished += n;
        }
    }
    for (t, n) in failed {
        if let Some(i) = index(t) {
            out[i].failed += n;
        }
    }
    Ok(out)
}

/// A node that heartbeated within the lease, with the jobs it runs now.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct NodeAlive {
    pub name: String,
    pub role: String,
    pub version: String,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    pub running: i64,
}

const NODE_LIST_ALIVE: &str = "
select n.name, n.role, n.version, n.started_at, n.heartbeat_at, coalesce(r.running, 0) as running
  from nodes n
  left join (select lease_owner, count(*) as running from jobs where state = 'running'
              group by lease_owner) r on r.lease_owner = n.name
 where n.heartbeat_at > now() - make_interval(secs => $1)
 order by n.name";

/// Nodes whose last heartbeat is younger than `lease` (older ones are presumed dead).
pub async fn nodes_alive(
    pool: &PgPool,
    lease: std::time::Duration,
) -> Result<Vec<NodeAlive>, sqlx::Error> {
    sqlx::query_as(NODE_LIST_ALIVE)
        .bind(lease.as_secs_f64())
        .fetch_all(pool)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(like_pattern("a_b%c\\"), "%a\\_b\\%c\\\\%");
    }

    #[test]
    fn blank_fields_and_empty_args_are_no_condition() {
        let blank = JobQuery {
            kind: Some(" ".into()),
            args: Some(" {} ".into()),
            error: Some(String::new()),
            ..JobQuery::default()
        };
        assert!(!blank.has_condition());
        assert!(!JobQuery::default().has_condition());
        for narrowing in [
            JobQuery {
                args: Some(r#"{"a": 1}"#.into()),
                ..JobQuery::default()
            },
            JobQuery {
                args: Some("A-1".into()),
                ..JobQuery::default()
            },
            JobQuery {
                created_to: Some(Utc::now()),
                ..JobQuery::default()
            },
        ] {
            assert!(narrowing.has_condition(), "{narrowing:?}");
        }
    }

    #[test]
    fn values_postgres_refuses_are_named() {
        let field = |q: JobQuery| q.check_values().map_err(|e| e.field);
        assert_eq!(field(JobQuery::default()), Ok(()));
        let nul_kind = JobQuery {
            kind: Some("a\0b".into()),
            ..JobQuery::default()
        };
        assert!(
            matches!(nul_kind.validate(), Err(AdminError::Filter(ref e)) if e.field == "kind"),
            "every listing, count and bulk action refuses it too"
        );
        assert_eq!(field(nul_kind), Err("kind"));
        for args in [r#"{"a": "\u0000"}"#, r#"{"a": [{"\u0000": 1}]}"#] {
            let q = JobQuery {
                args: Some(args.into()),
                ..JobQuery::default()
            };
            assert_eq!(field(q), Err("args"), "{args}");
        }
        let escaped_text = JobQuery {
            args: Some(r"not json \u0000".into()),
            ..JobQuery::default()
        };
        assert_eq!(
            field(escaped_text),
            Ok(()),
            "six characters of text, no NUL"
        );
        let year = |y: i32| {
            chrono::NaiveDate::from_ymd_opt(y, 1, 1)
                .unwrap()
                .and_hms_opt(0, 0, 0)
                .unwrap()
                .and_utc()
        };
        for (y, ok) in [
            (-5000, false),
            (0, false),
            (1, true),
            (9999, true),
            (10_000, false),
        ] {
            let q = JobQuery {
                created_to: Some(year(y)),
                ..JobQuery::default()
            };
            assert_eq!(field(q).is_ok(), ok, "year {y}");
        }
    }

    #[test]
    fn args_are_containment_when_a_json_object() {
        let q = JobQuery {
            args: Some(r#"{"order": "A-1"}"#.into()),
            ..JobQuery::default()
        };
        assert!(q.args_json().is_some());
        assert_eq!(q.args_pattern(), None);
        let q = JobQuery {
            args: Some("A-1".into()),
            ..JobQuery::default()
        };
        assert_eq!(q.args_json(), None);
        assert_eq!(q.args_pattern().as_deref(), Some("%A-1%"));
    }
}
