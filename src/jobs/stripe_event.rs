//! `stripe_event`: applies one stored Stripe event (`stripe_events.payload`) to `subscriptions`,
//! `invoices` and `clients`, then marks the event `processed` (or `ignored`).
//!
//! Idempotent and ordered: each upsert is guarded by the event's `created` against the
//! object's `last_event_created`, so a duplicate re-applies the same values and an older event
//! (delivered late, Stripe does not promise order) changes nothing. On a tie an invoice's PAID
//! wins over OVERDUE, and a subscription's terminal status (`canceled`, `incomplete_expired`)
//! over a non-terminal one. `checkout.session.completed` never touches a subscription's status (the
//! session does not carry it): it links the customer to the client named by `metadata.clientId`
//! and creates the subscription row if no subscription event got there first.
//! `invoice.payment_failed` enqueues the `payment_failed` email in the same transaction, once per
//! invoice (unique key `email:payment_failed:<invoice>`). Everything one event changes commits
//! together with its `processed` mark.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgConnection;

use super::AppState;
use super::send_email::SendEmail;
use crate::integrations::stripe::types::{CheckoutSession, Event, Invoice, Subscription};
use crate::queue::{self, Job, JobArgs, JobContext, JobError, JobResult, NewJob, Policy};

/// The event types this job applies; the intake stores any other as `ignored`, without a job.
pub const APPLIED_TYPES: [&str; 5] = [
    "checkout.session.completed",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "invoice.paid",
    "invoice.payment_failed",
];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StripeEvent {
    /// `evt_...`, the key of its `stripe_events` row.
    pub event_id: String,
}

impl JobArgs for StripeEvent {
    const KIND: &'static str = "stripe_event";

    fn policy() -> Policy {
        Policy {
            max_attempts: 20,
            ..Policy::default()
        }
    }

    fn unique_key(&self) -> Option<String> {
        Some(format!("stripe_event:{}", self.event_id))
    }
}

const STRIPE_EVENT_GET: &str = "select payload from stripe_events where id = $1";

const STRIPE_EVENT_FINISH: &str = r#"
update stripe_events set status = $2, last_error = $3, processed_at = now() where id = $1
"#;

/// Links a Stripe customer to a client, unless another client already holds that customer.
const CLIENT_LINK_CUSTOMER: &str = r#"
update clients set stripe_customer_id = $2, updated_at = now()
where id = $1
  and not exists (select 1 from clients other where other.stripe_customer_id = $2 and other.id <> $1)
returning id
"#;

/// Fills the client of rows that arrived before the customer was linked.
const SUBSCRIPTION_BACKFILL_CLIENT: &str = r#"
update subscriptions set client_id = $1, updated_at = now()
where stripe_customer_id = $2 and client_id is null
"#;
const INVOICE_BACKFILL_CLIENT: &str = r#"
update invoices set client_id = $1, updated_at = now()
where stripe_customer_id = $2 and client_id is null
"#;

/// From a checkout session: creates the row (status from the payment) or only sets the client.
/// `last_event_created` stays null so any subscription event overrides the guessed status.
const SUBSCRIPTION_UPSERT_FROM_CHECKOUT: &str = r#"
insert into subscriptions (id, client_id, stripe_customer_id, status)
values ($1, coalesce($2, (select id from clients where stripe_customer_id = $3)), $3, $4)
on conflict (id) do update
set client_id = coalesce(excluded.client_id, subscriptions.client_id), updated_at = now()
"#;

/// From a subscription object; a row newer than `$7` is left alone (no row returned). On a tie
/// (same second) a terminal status (`canceled`, `incomplete_expired`) is kept against a
/// non-terminal one: Stripe never leaves a terminal status, so of two events of the same second
/// the terminal one is the later state whichever of them runs last.
const SUBSCRIPTION_UPSERT: &str = r#"
insert into subscriptions
    (id, client_id, stripe_customer_id, price_id, status, current_period_end,
     cancel_at_period_end, last_event_created)
values ($1, (select id from clients where stripe_customer_id = $2), $2, $3, $4,
        to_timestamp($5), $6, $7)
on conflict (id) do update
set client_id = coalesce(subscriptions.client_id, excluded.client_id),
    stripe_customer_id = excluded.stripe_customer_id,
    price_id = excluded.price_id,
    status = excluded.status,
    current_period_end = excluded.current_period_end,
    cancel_at_period_end = excluded.cancel_at_period_end,
    last_event_created = greatest(excluded.last_event_created, subscriptions.last_event_created),
    updated_at = now()
where subscriptions.last_event_created is null
   or subscriptions.last_event_created < excluded.last_event_created
   or (subscriptions.last_event_created = excluded.last_event_created
       and not (subscriptions.status in ('canceled', 'incomplete_expired')
                and excluded.status not in ('canceled', 'incomplete_expired')))
returning id
"#;

/// From an invoice object; returns the client when applied (nothing when a newer event won).
const INVOICE_UPSERT: &str = r#"
insert into invoices
    (id, client_id, stripe_customer_id, subscription_id, amount, currency, status, paid_at,
     hosted_invoice_url, last_event_created)
values ($1, (select id from clients where stripe_customer_id = $2), $2, $3, $4, $5, $6,
        to_timestamp($7), $8, $9)
on conflict (id) do update
set client_id = coalesce(invoices.client_id, excluded.client_id),
    subscription_id = coalesce(excluded.subscription_id, invoices.subscription_id),
    amount = excluded.amount,
    currency = excluded.currency,
    status = excluded.status,
    paid_at = excluded.paid_at,
    hosted_invoice_url = coalesce(excluded.hosted_invoice_url, invoices.hosted_invoice_url),
    last_event_created = excluded.last_event_created,
    updated_at = now()
where invoices.last_event_created < excluded.last_event_created
   or (invoices.last_event_created = excluded.last_event_created
       and not (invoices.status = 'PAID' and excluded.status = 'OVERDUE'))
returning client_id
"#;

const CLIENT_GET: &str = "select name, email from clients where id = $1";

impl Job<AppState> for StripeEvent {
    async fn perform(self, ctx: JobContext<AppState>) -> JobResult {
        let payload: Option<String> = sqlx::query_scalar(STRIPE_EVENT_GET)
            .bind(&self.event_id)
            .fetch_optional(&ctx.pool)
            .await?;
        let payload = payload
            .ok_or_else(|| JobError::discard(format!("no stored event {}", self.event_id)))?;
        let mut tx = ctx.pool.begin().await?;
        let (status, error, result) = match serde_json::from_str::<Event>(&payload) {
            Ok(event) => match apply(&mut tx, &event).await? {
                Ok(result) => ("processed", None, result),
                Err(ignored) => ("ignored", Some(ignored), json!({"ignored": true})),
            },
            Err(e) => (
                "ignored",
                Some(format!("not an event we can read: {e}")),
                json!({"ignored": true}),
            ),
        };
        sqlx::query(STRIPE_EVENT_FINISH)
            .bind(&self.event_id)
            .bind(status)
            .bind(&error)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        if let Some(error) = error {
            tracing::info!(event = %self.event_id, %error, "Stripe event ignored");
        }
        Ok(Some(result))
    }
}

/// Applies `event`. The inner `Err` is why the event was ignored (unknown type or object).
async fn apply(tx: &mut PgConnection, event: &Event) -> Result<Result<Value, String>, JobError> {
    let object = event.data.object.clone();
    let unreadable = |e: serde_json::Error| format!("unreadable {} object: {e}", event.event_type);
    Ok(Ok(match event.event_type.as_str() {
        "checkout.session.completed" => {
            let session: CheckoutSession = match serde_json::from_value(object) {
                Ok(s) => s,
                Err(e) => return Ok(Err(unreadable(e))),
            };
            checkout_completed(tx, &session).await?
        }
        "customer.subscription.updated" | "customer.subscription.deleted" => {
            let sub: Subscription = match serde_json::from_value(object) {
                Ok(s) => s,
                Err(e) => return Ok(Err(unreadable(e))),
            };
            let applied = upsert_subscription(tx, &sub, event.created).await?;
            json!({"subscription": sub.id, "status": sub.status, "applied": applied})
        }
        "invoice.paid" | "invoice.payment_failed" => {
            let invoice: Invoice = match serde_json::from_value(object) {
                Ok(i) => i,
                Err(e) => return Ok(Err(unreadable(e))),
            };
            invoice_event(tx, &invoice, event).await?
        }
        other => return Ok(Err(format!("event type {other} is not applied"))),
    }))
}

async fn checkout_completed(
    tx: &mut PgConnection,
    session: &CheckoutSession,
) -> Result<Value, JobError> {
    let client = session.metadata.get("clientId").cloned();
    let mut linked = None;
    if let (Some(client), Some(customer)) = (&client, &session.customer) {
        linked = sqlx::query_scalar::<_, String>(CLIENT_LINK_CUSTOMER)
            .bind(client)
            .bind(customer)
            .fetch_optional(&mut *tx)
            .await?;
        if linked.is_some() {
            for statement in [SUBSCRIPTION_BACKFILL_CLIENT, INVOICE_BACKFILL_CLIENT] {
                sqlx::query(statement)
                    .bind(client)
                    .bind(customer)
                    .execute(&mut *tx)
                    .await?;
            }
        } else {
            tracing::warn!(client, session = %session.id, "checkout names an unknown client (or its customer is another client's)");
        }
    }
    if let (Some(subscription), Some(customer)) = (&session.subscription, &session.customer) {
        let paid = matches!(
            session.payment_status.as_deref(),
            Some("paid" | "no_payment_required")
        );
        sqlx::query(SUBSCRIPTION_UPSERT_FROM_CHECKOUT)
            .bind(subscription)
            .bind(&linked)
            .bind(customer)
            .bind(if paid { "active" } else { "incomplete" })
            .execute(&mut *tx)
            .await?;
    }
    Ok(json!({"session": session.id, "client": linked, "subscription": session.subscription}))
}

/// Upserts a subscription as of `as_of` (an event's `created`); false when a newer state is kept.
async fn upsert_subscription(
    tx: &mut PgConnection,
    sub: &Subscription,
    as_of: i64,
) -> Result<bool, sqlx::Error> {
    let applied: Option<String> = sqlx::query_scalar(SUBSCRIPTION_UPSERT)
        .bind(&sub.id)
        .bind(&sub.customer)
        .bind(sub.price_id())
        .bind(&sub.status)
        .bind(sub.period_end().map(|t| t as f64))
        .bind(sub.cancel_at_period_end)
        .bind(as_of)
        .fetch_optional(&mut *tx)
        .await?;
    Ok(applied.is_some())
}

async fn invoice_event(
    tx: &mut PgConnection,
    invoice: &Invoice,
    event: &Event,
) -> Result<Value, JobError> {
    let failed = event.event_type == "invoice.payment_failed";
    let (status, amount, paid_at) = if failed {
        ("OVERDUE", invoice.amount_due, None)
    } else {
        (
            "PAID",
            invoice.amount_paid,
            Some(invoice.paid_at().unwrap_or(event.created)),
        )
    };
    let applied: Option<Option<String>> = sqlx::query_scalar(INVOICE_UPSERT)
        .bind(&invoice.id)
        .bind(&invoice.customer)
        .bind(invoice.subscription_id())
        .bind(amount)
        .bind(invoice.currency.to_ascii_lowercase())
        .bind(status)
        .bind(paid_at.map(|t| t as f64))
        .bind(&invoice.hosted_invoice_url)
        .bind(event.created)
        .fetch_optional(&mut *tx)
        .await?;
    let mut result = json!({"invoice": invoice.id, "status": status, "applied": applied.is_some()});
    if let (true, Some(client)) = (failed, applied) {
        result["email"] = json!(payment_failed_email(tx, invoice, client).await?);
    }
    Ok(result)
}

/// Enqueues the `payment_failed` email (same transaction); false when there is nobody to mail.
async fn payment_failed_email(
    tx: &mut PgConnection,
    invoice: &Invoice,
    client: Option<String>,
) -> Result<bool, JobError> {
    let known: Option<(String, String)> = match &client {
        Some(id) => {
            sqlx::query_as(CLIENT_GET)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
        }
        None => None,
    };
    let (name, to) = match known {
        Some((name, email)) => (name, email),
        None => match &invoice.customer_email {
            Some(email) => (
                invoice.customer_name.clone().unwrap_or_default(),
                email.clone(),
            ),
            None => {
                tracing::warn!(invoice = %invoice.id, "payment failed but no client or email to notify");
                return Ok(false);
            }
        },
    };
    let data = json!({
        "client_name": name,
        "amount": major_units(invoice.amount_due),
        "currency": invoice.currency.to_ascii_uppercase(),
        "invoice_url": invoice.hosted_invoice_url,
    });
    let email = SendEmail {
        template: "payment_failed".into(),
        to,
        data: data.as_object().cloned().unwrap_or_default(),
        reply_to: None,
        tags: Vec::new(),
        scheduled_at: None,
    };
    // `NewJob::of`, not `raw`: the email takes its kind's queue and attempts (the `email` queue,
    // 10 attempts), like every other email.
    let job = NewJob::of(&email)
        .map_err(JobError::retry)?
        .unique_key(format!("email:payment_failed:{}", invoice.id));
    queue::enqueue(&mut *tx, job)
        .await
        .map_err(JobError::retry)?;
    Ok(true)
}

/// Why a replay could not be enqueued.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("no stored Stripe event {0}")]
    NotFound(String),
    #[error(transparent)]
    Enqueue(#[from] queue::EnqueueError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Re-runs a stored event (`baseaim-worker stripe replay <evt_id>`): a new `stripe_event` job
/// with a fresh unique key, so it runs even while the original job is unfinished. Applying is
/// guarded by `created`, so a replay restores the event's state only where nothing newer landed.
pub async fn replay(pool: &sqlx::PgPool, event_id: &str) -> Result<i64, ReplayError> {
    let exists: Option<String> = sqlx::query_scalar("select id from stripe_events where id = $1")
        .bind(event_id)
        .fetch_optional(pool)
        .await?;
    if exists.is_none() {
        return Err(ReplayError::NotFound(event_id.to_owned()));
    }
    let job = NewJob::of(&StripeEvent {
        event_id: event_id.to_owned(),
    })?
    .unique_key(format!(
        "stripe_event:{event_id}:replay:{}",
        uuid::Uuid::new_v4().simple()
    ));
    Ok(queue::enqueue(pool, job).await?.id)
}

/// Minor units as major units with two decimals: 1000 -> "10.00".
fn major_units(minor: i64) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let minor = minor.unsigned_abs();
    format!("{sign}{}.{:02}", minor / 100, minor % 100)
}

#[cfg(test)]
mod tests {
    #[test]
    fn major_units_have_two_decimals() {
        assert_eq!(super::major_units(1000), "10.00");
        assert_eq!(super::major_units(5), "0.05");
        assert_eq!(super::major_units(123456), "1234.56");
        assert_eq!(super::major_units(-250), "-2.50");
    }
}
