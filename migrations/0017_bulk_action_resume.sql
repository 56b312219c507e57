-- A bulk action outlives the node running it: each batch of 1,000 jobs is acted on in the same
-- transaction that advances the action's cursor (`resume_before`: the ids left to do are below
-- it) while holding its row, and only the run whose `owner` the row names may go on. When a node
-- goes away mid-way its row stops moving; the maintenance leader then takes it over (a new
-- `owner`, `resumed` + 1) and carries on from the cursor, so every job is acted on once. Rows
-- written before this migration have no owner and are never resumed (they have no cursor).
-- `stopped_by` names who stopped an action before its end (the dashboard, the API, the CLI).
alter table bulk_actions
    add column if not exists owner         uuid,
    add column if not exists resume_before bigint,
    add column if not exists resumed       integer not null default 0,
    add column if not exists stopped_by    text;

-- Those already stalled when this migration runs cannot be resumed: they end, saying so.
update bulk_actions
set finished_at = now(),
    error = 'its node went away before this version, which resumes bulk actions, was installed; run it again for the rest'
where finished_at is null and owner is null and updated_at < now() - interval '1 minute';
