-- One row per retry / cancel / delete of every job matching a filter (dashboard, admin API, CLI):
-- who asked, the filter, and its progress, written after each batch of 1,000 jobs. An action
-- that outlives its request goes on in the background on one node; this row is how any node, the
-- dashboard and the admin API (`GET /v1/admin/bulk-actions/{id}`) follow it. A row that stopped
-- moving without `finished_at` belonged to a node that went away mid-way.
create table if not exists bulk_actions (
    id           bigint generated always as identity primary key,
    action       text        not null check (action in ('retry', 'cancel', 'delete')),
    filter       jsonb       not null,
    requested_by text        not null,
    started_at   timestamptz not null default now(),
    updated_at   timestamptz not null default now(),
    changed      bigint      not null default 0,
    finished_at  timestamptz,
    error        text
);

create index if not exists bulk_actions_started_idx on bulk_actions (started_at desc);
