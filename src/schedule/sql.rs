//! The schedule's statements, named noun_verb. `$1` is always the schedule's name.

/// The database's clock, for a node to compare its own with.
pub const DB_NOW: &str = "select now()";

/// The database's clock, and the schedule's row if it has one: whether it exists, its watermark,
/// its recorded next tick and what its ticks were computed from. Always one row (the left join
/// from a one-row relation), so the evaluation learns the database's time without a round trip
/// of its own.
pub const SCHEDULE_GET: &str = r#"
select s.name is not null, s.last_tick_at, s.next_tick_at, s.defined_by, now()
from (values (1)) as one (x)
left join schedules s on s.name = $1
"#;

/// Takes a row written before `defined_by` existed as defined by this node's config ($2).
pub const SCHEDULE_ADOPT_DEFINITION: &str =
    "update schedules set defined_by = $2 where name = $1 and defined_by is null";

/// The schedule's cron or zone changed ($4 is the new definition): like a first sight, the
/// watermark moves to the new definition's latest tick $2 (never back) without a job. Not past
/// the database's clock plus $5 seconds. Returns a row when it did the change.
pub const SCHEDULE_REDEFINE: &str = r#"
update schedules
set last_tick_at = greatest(last_tick_at, $2), next_tick_at = $3, defined_by = $4,
    updated_at = now()
where name = $1 and defined_by is distinct from $4
  and $2 <= now() + make_interval(secs => $5)
returning name
"#;

/// Creates a schedule's row the first time any node sees it, with the tick before now as its
/// watermark (a new schedule starts with its next tick) and its definition $5. A concurrent
/// creator wins harmlessly.
/// Not with a watermark later than the database's clock plus $4 seconds of allowed skew: a node
/// whose clock is ahead must not start the schedule in its future.
pub const SCHEDULE_CREATE: &str = r#"
insert into schedules (name, last_tick_at, next_tick_at, defined_by)
select $1, $2, $3, $5
where $2 <= now() + make_interval(secs => $4)
on conflict (name) do nothing
"#;

/// The compare-and-set: moves the watermark to tick $2 only if it is behind it. Returns a row
/// only for the one node whose evaluation counts. Under READ COMMITTED a node blocked on the row
/// lock re-checks the `where` against the winner's committed row and updates nothing.
/// Only while the row's definition is this node's ($5: another node may have just redefined it).
/// Never past the database's clock plus $4 seconds of allowed skew: the watermark only moves
/// forward, so a node whose clock is ahead would otherwise silence the schedule on every node
/// until real time caught up with it.
pub const SCHEDULE_ADVANCE: &str = r#"
update schedules
set last_tick_at = $2, next_tick_at = $3, updated_at = now()
where name = $1 and (last_tick_at is null or last_tick_at < $2)
  and $2 <= now() + make_interval(secs => $4)
  and defined_by = $5
returning name
"#;

/// Records the job of the tick just enqueued (same transaction as the advance).
pub const SCHEDULE_SET_JOB: &str =
    "update schedules set last_job_id = $2, updated_at = now() where name = $1";

/// Keeps `next_tick_at` current when nothing was due (e.g. after a cron change).
pub const SCHEDULE_SET_NEXT: &str = r#"
update schedules set next_tick_at = $2, updated_at = now()
where name = $1 and next_tick_at is distinct from $2
"#;

/// Every schedule row with its last job's outcome, for `schedules list` and the dashboard. The
/// job may have been pruned (state null).
pub const SCHEDULE_LIST: &str = r#"
select s.name, s.last_tick_at, s.next_tick_at, s.last_job_id,
       j.state, j.finished_at, j.errors -> -1 ->> 'error' as last_error
from schedules s
left join jobs j on j.id = s.last_job_id
order by s.name
"#;

/// Enqueues a tick's job inside the caller's transaction through the queue's SQL function (see
/// `migrations/0001_queue.sql`): returns the new job's id, or that of the unfinished job holding
/// the unique key. Args: kind, args, queue, priority, max_attempts, unique key, tags.
pub const JOB_ENQUEUE: &str = "select enqueue_job($1, $2, $3, $4, null, $5, $6, $7)";
