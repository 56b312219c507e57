-- Stripe: every webhook event as received, and the billing state applied from them.
--
-- `stripe_events` is the intake's durable log: the raw payload is stored (with its job enqueued
-- in the same transaction) before anything parses the object, so an event we cannot apply is
-- kept, not lost. The `id` primary key is what makes a duplicate delivery a no-op.
create table if not exists stripe_events (
    id            text primary key,             -- evt_...
    type          text        not null,
    created       bigint      not null,         -- the event's `created` (Unix seconds)
    livemode      boolean     not null default false,
    api_version   text,
    payload       text        not null,         -- the exact body as received (what was signed)
    received_at   timestamptz not null default now(),
    processed_at  timestamptz,
    -- received -> processed | ignored (a type or object we do not apply) | failed
    status        text        not null default 'received',
    last_error    text
);

create index if not exists stripe_events_type_idx on stripe_events (type, created);

-- One row per Stripe subscription. `last_event_created` is the `created` of the newest event (or
-- reconciliation) applied: an older event changes nothing, so out-of-order delivery is harmless.
create table if not exists subscriptions (
    id                  text primary key,       -- sub_...
    client_id           text references clients (id) on delete set null,
    stripe_customer_id  text        not null,
    price_id            text,
    status              text        not null,   -- Stripe's status, verbatim
    current_period_end  timestamptz,
    cancel_at_period_end boolean    not null default false,
    last_event_created  bigint,
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now()
);

create index if not exists subscriptions_customer_idx on subscriptions (stripe_customer_id);
create index if not exists subscriptions_client_idx on subscriptions (client_id);

-- One row per Stripe invoice, in the dashboard's vocabulary: status PAID or OVERDUE.
create table if not exists invoices (
    id                  text primary key,       -- in_...
    client_id           text references clients (id) on delete set null,
    stripe_customer_id  text        not null,
    subscription_id     text,
    amount              bigint      not null,   -- minor units (cents)
    currency            text        not null,   -- ISO code, lowercase as Stripe sends it
    status              text        not null,
    paid_at             timestamptz,
    hosted_invoice_url  text,
    last_event_created  bigint      not null,
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now()
);

create index if not exists invoices_client_idx on invoices (client_id);
