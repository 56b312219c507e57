-- Facebook Ads insights synced by `facebook_sync_account`: one row per ad account, campaign and
-- day, as Graph reports it. Money and ratios are numeric, parsed exactly from Graph's strings.
create table if not exists campaign_metrics (
    client_id       text        not null references clients (id) on delete cascade,
    -- Without `act_`.
    ad_account_id   text        not null,
    campaign_id     text        not null,
    campaign_name   text        not null,
    date            date        not null,
    impressions     bigint      not null,
    clicks          bigint      not null,
    -- In the ad account's currency.
    spend           numeric     not null,
    reach           bigint      not null,
    -- Percent, as Graph sends it.
    ctr             numeric     not null,
    -- Absent (null) without clicks.
    cpc             numeric,
    -- Graph's `actions` list (`[{action_type, value}]`), `[]` when absent.
    actions         jsonb       not null default '[]',
    synced_at       timestamptz not null default now(),
    primary key (ad_account_id, campaign_id, date)
);

create index if not exists campaign_metrics_client_date_idx on campaign_metrics (client_id, date);

-- One row per sync attempt of one ad account, so the dashboard can show when a client's data was
-- last fetched and whether the integration is healthy (`token_invalid` needs an operator).
create table if not exists facebook_sync_runs (
    id              bigint generated always as identity primary key,
    client_id       text        not null,
    ad_account_id   text        not null,
    started_at      timestamptz not null,
    finished_at     timestamptz not null default now(),
    rows            bigint      not null default 0,
    calls           integer     not null default 0,
    -- ok | snoozed | retry | token_invalid | failed
    outcome         text        not null,
    error           text
);

create index if not exists facebook_sync_runs_client_idx
    on facebook_sync_runs (client_id, started_at desc);

-- Where an unfinished `facebook_sync_account` job stands (date ranges left, the next page's
-- cursor), so a sync snoozed by throttling resumes instead of starting over. Keyed by job id;
-- deleted when the job finishes.
create table if not exists facebook_sync_checkpoints (
    job_id          bigint primary key,
    ad_account_id   text        not null,
    state           jsonb       not null,
    updated_at      timestamptz not null default now()
);
