-- Failed dashboard logins per client address, beside those per user name (0013): a guesser who
-- tries one password against many names (password spraying) never reaches a name's limit, but
-- does reach its address's (`auth::session::MAX_ADDRESS_FAILURES` within the window). The address
-- is the TCP peer's, or the one the trusted proxy put in `http.client_address_header`. Same
-- shape and life cycle as `login_failures`, except that a successful login does not clear it.
create table if not exists login_failures_by_address (
    address         text primary key,
    failures        integer     not null,
    first_failed_at timestamptz not null,
    locked_until    timestamptz
);

create index if not exists login_failures_by_address_first_failed_idx
    on login_failures_by_address (first_failed_at);
