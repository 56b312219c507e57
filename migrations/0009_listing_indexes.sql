-- Indexes for the operators' listings (found by the dashboard benchmark at 1,000,000 jobs).

-- The failure-rate chart counts discarded jobs per time bucket: with the state in the index it
-- reads the index alone instead of a heap row per finished job.
create index jobs_finished_state_idx on jobs (finished_at) include (state)
    where state in ('completed', 'discarded', 'cancelled');
drop index jobs_finished_idx;

-- The Stripe events list and "last failure" read the newest events first.
create index stripe_events_received_idx on stripe_events (received_at desc);
