-- What a schedule's tick times were computed from (see src/schedule/mod.rs, "Catch-up"): its cron
-- expression and time zone as the node that last wrote the row was configured, e.g.
-- `0 4 * * * UTC`. A node configured otherwise (the cron or the zone changed) treats the schedule
-- as new: it moves the watermark to the latest tick of its own definition without enqueueing it,
-- so a deploy that changes a daily job's hour does not fire it at deploy time. Null on rows
-- written before this column: the first node to evaluate them takes them as defined by its config.
alter table schedules add column if not exists defined_by text;
