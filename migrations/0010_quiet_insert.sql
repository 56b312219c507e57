-- A transaction that ran NOTIFY holds a cluster-wide lock from just before its commit until the
-- commit is flushed, so notifying transactions cannot share an fsync (PostgreSQL's group commit):
-- many small enqueuing transactions queue up one disk flush at a time. A writer that batches
-- (the webhook intake) sets `baw.notify = off` in its transaction and wakes the workers itself
-- after the commit, with one coalesced notification that does not wait for the disk
-- (queue::notify). Everyone else keeps the trigger's wake-up.
create or replace function jobs_notify_insert() returns trigger language plpgsql as $$
begin
    if coalesce(current_setting('baw.notify', true), '') = 'off' then
        return null;
    end if;
    perform pg_notify('baw_jobs', q.queue) from (select distinct queue from new_rows) q;
    return null;
end
$$;
