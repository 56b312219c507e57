-- `stripe_events_type_idx (type, created)` came with the table, but no statement reads events by
-- type: the job reads one event by id (the primary key), the dashboard lists the newest first
-- (`stripe_events_received_idx`). Every webhook paid for it on insert.
drop index if exists stripe_events_type_idx;
