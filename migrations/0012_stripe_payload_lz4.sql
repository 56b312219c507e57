-- The intake stores every Stripe event's raw payload (a few KB of JSON, so TOAST compresses it).
-- pglz was the intake's largest single cost inside PostgreSQL under load; lz4 compresses JSON
-- nearly as well at a fraction of the CPU. Only new rows are affected; old ones stay readable.
-- A server built without lz4 keeps pglz (the statement is refused there, and that is fine).
do $$
begin
    alter table stripe_events alter column payload set compression lz4;
exception when feature_not_supported then
    raise notice 'lz4 is not available on this server; stripe_events.payload keeps pglz';
end
$$;
