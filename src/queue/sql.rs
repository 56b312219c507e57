//! Every statement of the engine, named noun_verb. Time-dependent statements take an optional
//! `now` (null: the database's clock) so tests can pin time.

/// Bulk enqueue. Ids are drawn from the sequence up front so each input row knows its id whether
/// or not it was inserted; rows whose unique key is held by an unfinished job are skipped by
/// `on conflict do nothing` and reported as not inserted. Arrays are parallel, one element a job.
pub const JOB_INSERT_MANY: &str = r#"
with input as (
    select nextval(pg_get_serial_sequence('jobs', 'id')) as id, t.*
    from unnest($1::text[], $2::jsonb[], $3::text[], $4::smallint[], $5::timestamptz[],
                $6::int[], $7::text[], $8::jsonb[])
        with ordinality as t(kind, args, queue, priority, run_at, max_attempts, unique_key, tags, ord)
),
inserted as (
    insert into jobs (id, kind, args, queue, priority, run_at, max_attempts, unique_key, tags,
                      state)
    select id, kind, args, queue, priority, coalesce(run_at, now()), max_attempts, unique_key,
           case when tags is null or tags = '[]'::jsonb then '{}'::text[]
                else array(select jsonb_array_elements_text(tags)) end,
           case when run_at > now() then 'scheduled' else 'available' end
    from input
    order by ord
    on conflict (unique_key)
        where unique_key is not null
          and state in ('scheduled', 'available', 'running', 'retryable')
        do nothing
    returning id
)
select input.id, (inserted.id is not null) as inserted
from input left join inserted using (id)
order by input.ord
"#;

/// Bulk enqueue without unique keys (the common bulk case): a plain insert. Rows are inserted
/// (and draw their ids) in input order, so the returned ids sorted ascending are the inputs' ids.
pub const JOB_INSERT_MANY_PLAIN: &str = r#"
insert into jobs (kind, args, queue, priority, run_at, max_attempts, tags, state)
select kind, args, queue, priority, coalesce(run_at, now()), max_attempts,
       case when tags is null or tags = '[]'::jsonb then '{}'::text[]
            else array(select jsonb_array_elements_text(tags)) end,
       case when run_at > now() then 'scheduled' else 'available' end
from unnest($1::text[], $2::jsonb[], $3::text[], $4::smallint[], $5::timestamptz[], $6::int[],
            $7::jsonb[])
    with ordinality as t(kind, args, queue, priority, run_at, max_attempts, tags, ord)
order by ord
returning id
"#;

/// The unfinished job holding each unique key (for enqueues that found their key taken).
pub const JOB_FIND_UNIQUE: &str = r#"
select unique_key, id from jobs
where unique_key = any($1::text[])
  and state in ('scheduled', 'available', 'running', 'retryable')
"#;

/// Claims up to $2 runnable jobs of queue $1 for node $3 under a lease of $4 seconds.
///
/// The CTE fences `limit ... for update skip locked`: rows are locked and limited first, then
/// updated, so concurrent claimers skip each other's rows instead of blocking or over-claiming.
/// The paused check is uncorrelated, so it runs once per statement (an InitPlan), not per row.
pub const JOB_CLAIM: &str = r#"
with next as (
    select id from jobs
    where state in ('available', 'scheduled', 'retryable')
      and queue = $1
      and run_at <= coalesce($5, now())
      and not exists (select 1 from queues where name = $1 and paused_at is not null)
    order by priority, run_at, id
    limit $2
    for update skip locked
),
claimed as (
    update jobs j
    set state = 'running',
        attempt = j.attempt + 1,
        attempted_at = coalesce($5, now()),
        lease_owner = $3,
        lease_expires_at = coalesce($5, now()) + make_interval(secs => $4)
    from next
    where j.id = next.id
    returning j.id, j.kind, j.queue, j.args, j.attempt, j.max_attempts, j.unique_key,
              j.priority, j.run_at
)
-- `returning` has no order of its own: hand the jobs out in priority order.
select id, kind, queue, args, attempt, max_attempts, unique_key
from claimed
order by priority, run_at, id
"#;

/// Records the outcomes of many attempts at once. Fenced: only rows still `running` under this
/// node ($1) at the same attempt are touched, so a node that lost a job (rescued, cancelled)
/// cannot overwrite it.
pub const JOB_FINISH_MANY: &str = r#"
update jobs j
set state = u.state,
    attempt = j.attempt - (case when u.refund then 1 else 0 end),
    run_at = coalesce(u.run_at, j.run_at),
    finished_at = case when u.state in ('completed', 'discarded', 'cancelled') then now() end,
    lease_expires_at = null,
    result = coalesce(u.result, j.result),
    errors = case
        when u.error is null then j.errors
        else coalesce(j.errors, '[]'::jsonb)
             || jsonb_build_array(jsonb_build_object('attempt', j.attempt, 'at', now(),
                                                     'error', u.error))
    end
-- The fence: `held` is the state each row must still be in. It comes out of a subquery that
-- `offset 0` keeps the planner from flattening, so `j.state = u.held` is a join clause, not the
-- constant `state = 'running'`. Given the constant, the planner may pick jobs_running_idx (whose
-- statistics usually say "no running rows") and rescan the unnest once per row: quadratic, and
-- seconds per statement once thousands of finishes are written at once.
from (
    select *, 'running'::text as held
    from unnest($2::bigint[], $3::int[], $4::text[], $5::timestamptz[], $6::text[], $7::jsonb[],
                $8::bool[]) as t(id, attempt, state, run_at, error, result, refund)
    offset 0
) as u
where j.id = u.id
  and j.attempt = u.attempt
  and j.state = u.held
  and j.lease_owner = $1
"#;

/// Seconds from the database's now until the earliest run of queue $1 (zero or less: due
/// already; null: nothing waits, or the queue is paused): the producer sleeps until then (or a
/// notification). Measured on the database's clock, the one the claim compares `run_at` with, so
/// a node whose clock runs ahead does not wake early over and over. A paused queue has nothing
/// due: its producer sleeps until the poll or the `resume` notification.
pub const JOB_NEXT_DUE: &str = r#"
select extract(epoch from min(run_at) - now())::float8 from jobs
where queue = $1 and state in ('scheduled', 'retryable')
  and not exists (select 1 from queues where name = $1 and paused_at is not null)
"#;

/// Which of the given (id, attempt) runs this node still holds (the rest were cancelled or
/// rescued, and the node stops them). Read-only: leases are renewed through the node's row, not per job.
pub const JOB_HELD: &str = r#"
select j.id
from jobs j
join unnest($2::bigint[], $3::int[]) as u(id, attempt) on j.id = u.id and j.attempt = u.attempt
where j.id = any($2) and j.state = 'running' and j.lease_owner = $1
"#;

/// Gives back jobs the database says this node ($1) runs but the node does not know: a claim
/// that committed while its answer was lost with the connection. Only claims older than $2
/// seconds count (a claim's answer may still be on its way); $3 are the jobs the node runs.
pub const JOB_RELEASE_ORPHANS: &str = r#"
update jobs
set state = 'available', attempt = greatest(attempt - 1, 0), lease_expires_at = null,
    run_at = now()
where state = 'running' and lease_owner = $1
  and attempted_at < now() - make_interval(secs => $2)
  and id <> all($3)
returning id
"#;

/// Gives back jobs ($2, at attempts $3) node $1 claimed but will not run (it is stopping):
/// available at once, attempt not counted. Fenced like a finish.
pub const JOB_RELEASE_MANY: &str = r#"
update jobs j
set state = 'available', attempt = greatest(j.attempt - 1, 0), lease_expires_at = null,
    run_at = now()
from unnest($2::bigint[], $3::int[]) as u(id, attempt)
where j.id = u.id and j.attempt = u.attempt and j.state = 'running' and j.lease_owner = $1
"#;

/// Gives a stopping node's running jobs back: available at once, attempt not counted.
pub const JOB_RELEASE_NODE: &str = r#"
update jobs
set state = 'available', attempt = greatest(attempt - 1, 0), lease_expires_at = null,
    run_at = now()
where state = 'running' and lease_owner = $1
"#;

/// Rescues jobs whose lease expired (their node died): retryable with the attempt counted, or
/// discarded when none is left. A lease is the claim's `lease_expires_at`, extended for as long as
/// the owning node's row in `nodes` is heartbeating (within $3 seconds): one row per node renews
/// all its jobs, instead of rewriting every running job on every heartbeat.
///
/// A rescued job runs again after a backoff, not at once: a job that crashes its node would
/// otherwise take the nodes down one after another. The kinds' own backoffs live in Rust, so the
/// rescue's is its own: 2 s doubled per attempt spent (2 s, 4 s, 8 s, ...), at most an hour.
pub const JOB_RESCUE: &str = r#"
with expired as (
    select id from jobs j
    where state = 'running' and lease_expires_at < coalesce($1, now())
      and not exists (
          select 1 from nodes n
          where n.name = j.lease_owner
            and n.heartbeat_at > coalesce($1, now()) - make_interval(secs => $3))
    order by lease_expires_at
    limit $2
    for update skip locked
)
update jobs j
set state = case when j.attempt >= j.max_attempts then 'discarded' else 'retryable' end,
    finished_at = case when j.attempt >= j.max_attempts then now() end,
    -- least() inside make_interval: 2^attempt overflows an interval long before it does a float.
    run_at = coalesce($1, now())
             + make_interval(secs => least(3600, 2 * power(2, least(greatest(j.attempt, 1), 20) - 1))),
    lease_expires_at = null,
    errors = coalesce(j.errors, '[]'::jsonb) || jsonb_build_array(jsonb_build_object(
        'attempt', j.attempt, 'at', now(),
        'error', 'lease expired: node ' || coalesce(j.lease_owner, '?') || ' stopped renewing it'))
from expired
where j.id = expired.id
returning j.id, j.state
"#;

/// Runs jobs $1 again now (any state but `running`), giving one more attempt to those that used
/// theirs up; returns their queues. Of finished jobs sharing a unique key, only the newest is
/// retried, and none whose key an unfinished job holds (`jobs_unique_key_idx` allows one): the
/// rest are skipped. The candidates are locked first, in id order (two operators retrying
/// overlapping sets do not deadlock). The holder check reads the statement's snapshot, so a job
/// enqueued with the same key meanwhile still makes it fail with a unique violation: see
/// `admin::retry`.
pub const JOB_RETRY: &str = r#"
with candidate as (
    select id, unique_key, state in ('completed', 'discarded', 'cancelled') as finished
    from jobs
    where id = any($1) and state <> 'running'
    order by id
    for update
),
chosen as (
    select c.id from candidate c
    where c.unique_key is null
       or not c.finished
       or (not exists (select 1 from jobs o
                       where o.unique_key = c.unique_key and o.id <> c.id
                         and o.state in ('scheduled', 'available', 'running', 'retryable'))
           and not exists (select 1 from candidate d
                           where d.unique_key = c.unique_key and d.finished and d.id > c.id))
)
update jobs j
set state = 'available', run_at = now(), finished_at = null, lease_expires_at = null,
    max_attempts = greatest(j.max_attempts, j.attempt + 1)
from chosen
where j.id = chosen.id
returning j.queue
"#;

/// Deletes a batch of finished jobs older than $1.
pub const JOB_PRUNE: &str = r#"
delete from jobs
where id in (
    select id from jobs
    where state in ('completed', 'discarded', 'cancelled') and finished_at < $1
    order by finished_at
    limit $2
)
"#;

/// Takes (or renews) the leader row `name` for node $2 when it is free or expired.
pub const LEADER_ACQUIRE: &str = r#"
insert into leaders (name, node, expires_at)
values ($1, $2, now() + make_interval(secs => $3))
on conflict (name) do update
set node = excluded.node,
    expires_at = excluded.expires_at,
    elected_at = case when leaders.node = excluded.node then leaders.elected_at else now() end
where leaders.node = excluded.node or leaders.expires_at < now()
returning node
"#;

pub const LEADER_RESIGN: &str = "delete from leaders where name = $1 and node = $2";

pub const NODE_UPSERT: &str = r#"
insert into nodes (name, role, version) values ($1, $2, $3)
on conflict (name) do update set heartbeat_at = now(), role = excluded.role
"#;

pub const NODE_DELETE: &str = "delete from nodes where name = $1";

/// Nodes silent for a day are forgotten.
pub const NODE_PRUNE: &str = "delete from nodes where heartbeat_at < now() - interval '1 day'";

/// Records of bulk actions that ended (or stalled) before `$1`, with the finished jobs they
/// touched.
pub const BULK_ACTION_PRUNE: &str =
    "delete from bulk_actions where coalesce(finished_at, updated_at) < $1";

/// Declares (or re-configures) a token bucket, keeping its current tokens.
pub const RATE_LIMIT_UPSERT: &str = r#"
insert into rate_limits (name, rate_per_s, burst, tokens) values ($1, $2, $3, $3)
on conflict (name) do update
set rate_per_s = excluded.rate_per_s, burst = excluded.burst,
    tokens = least(rate_limits.tokens, excluded.burst)
"#;

/// Takes the next token of bucket $1 if it is due within $2 seconds, letting the bucket go into
/// debt: the taker waits for its token instead of retrying (see `rate_limit::reserve`). With $2 = 0
/// it takes a token only if one is there (`rate_limit::take`). Returns the tokens there were
/// (after refill) and the rate, so a caller who got none knows how long until the next.
pub const RATE_LIMIT_RESERVE: &str = r#"
with bucket as (
    select name, rate_per_s,
           least(burst, tokens + extract(epoch from (now() - updated_at)) * rate_per_s) as available
    from rate_limits
    where name = $1
    for update
),
taken as (
    update rate_limits r
    set tokens = bucket.available - 1, updated_at = now()
    from bucket
    where r.name = bucket.name and (1 - bucket.available) / bucket.rate_per_s <= $2
    returning r.name
)
select bucket.available, bucket.rate_per_s, exists (select 1 from taken) as taken
from bucket
"#;

pub const QUEUE_SET_PAUSED: &str = r#"
insert into queues (name, paused_at) values ($1, case when $2 then now() end)
on conflict (name) do update
set paused_at = case when $2 then coalesce(queues.paused_at, now()) end, updated_at = now()
"#;
