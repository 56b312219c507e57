-- The dashboard app's clients, as this daemon reads them. The app (Prisma) writes these rows;
-- the daemon only fills in what its integrations learn (last Facebook sync, Stripe customer).
create table if not exists clients (
    id                      text primary key,
    name                    text        not null,
    email                   text        not null,
    facebook_ad_account_id  text,
    facebook_last_sync_at   timestamptz,
    stripe_customer_id      text unique,
    drive_folder_id         text,
    created_at              timestamptz not null default now(),
    updated_at              timestamptz not null default now()
);

create index if not exists clients_facebook_idx on clients (facebook_ad_account_id)
    where facebook_ad_account_id is not null;
