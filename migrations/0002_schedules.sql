-- Cron schedules (see src/schedule/mod.rs): one row per schedule name, shared by every node that
-- evaluates it. `last_tick_at` is a watermark that only moves forward, moved by a compare-and-set
-- in the same transaction that enqueues the tick's job: a tick at or before it is never enqueued
-- again, even after its job finished and the job's unique key is free.

create table schedules (
    name         text primary key,
    -- The latest tick dealt with: enqueued, or passed over (policy `skip`, or the tick before the
    -- schedule was first seen).
    last_tick_at timestamptz,
    -- The tick after it, as computed by the node that last wrote the row (for operators).
    next_tick_at timestamptz,
    -- The job of the latest enqueued tick. No foreign key: finished jobs are pruned.
    last_job_id  bigint,
    created_at   timestamptz not null default now(),
    updated_at   timestamptz not null default now()
);
