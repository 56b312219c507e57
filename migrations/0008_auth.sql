-- Who may use the dashboard and the /v1 API. Nothing here holds a secret in the clear: passwords
-- are argon2 hashes (PHC strings), session and API tokens are stored as their SHA-256.

create table operators (
    id            bigserial primary key,
    username      text not null unique
                  check (username ~ '^[A-Za-z0-9._@-]{1,64}$'),
    password_hash text not null,
    role          text not null check (role in ('admin', 'read_only')),
    created_at    timestamptz not null default now(),
    disabled_at   timestamptz
);

create table operator_sessions (
    token_hash  bytea primary key,
    operator_id bigint not null references operators (id) on delete cascade,
    csrf_token  text not null,
    created_at  timestamptz not null default now(),
    expires_at  timestamptz not null
);
create index operator_sessions_expires_idx on operator_sessions (expires_at);

create table api_tokens (
    id           bigserial primary key,
    name         text not null check (length(name) between 1 and 200),
    token_hash   bytea not null unique,
    scopes       text[] not null,
    created_at   timestamptz not null default now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
