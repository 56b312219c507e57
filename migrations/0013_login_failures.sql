-- Failed dashboard logins per user name (existing or not, so a lock-out does not reveal which
-- names exist). After `auth::session::MAX_FAILURES` failures within the window the name is locked
-- for a while: no password is checked (argon2 costs the node CPU) and the form answers 429.
-- Cluster-wide, so a guesser cannot spread attempts over nodes. A successful login clears the row;
-- stale rows are swept on each failure.
create table if not exists login_failures (
    username        text primary key,
    failures        integer     not null,
    first_failed_at timestamptz not null,
    locked_until    timestamptz
);

create index if not exists login_failures_first_failed_idx on login_failures (first_failed_at);
