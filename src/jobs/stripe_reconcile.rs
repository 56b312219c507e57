//! `stripe_reconcile`: pages through every subscription in the Stripe API and corrects drift in
//! `subscriptions` (a missed or failed webhook, a manual edit): rows whose status, price, period
//! end or cancel flag differ are rewritten, missing ones inserted. Each change is listed in the
//! job's result and logged. Scheduled daily by `[schedules.stripe_reconcile]`.
//!
//! The API's answer is the state as of the moment the listing started, so it is applied as if
//! it were an event of that moment: an event newer than the listing is kept, an older one
//! delivered later changes nothing (the same guard as `stripe_event`). That moment is read off
//! Stripe's clock, never ours: the first page's `Date` header, less one second. Events' `created`
//! comes from Stripe's clock too, so a wrong local clock can neither make the listing look newer
//! than a later event (a fast clock would block every webhook until it caught up) nor older than
//! an earlier one (a slow clock would leave drift uncorrected). `Date` is rounded down to the
//! second and Stripe read the first page within that second or the one before, so `Date - 1`
//! is no later than the listing: every event Stripe creates after it has a `created` at least
//! as large and applies over the reconciled row. Stored events of `Date`'s own second may be
//! newer than the listing and are kept; one of the second before is overwritten (it was most
//! likely read by the listing; if not, by less than a second, and the next event or
//! reconciliation corrects it), which also lets two reconciliations of the same second both
//! write. Without a `Date` only rows no event has touched are written (missing rows, rows from
//! a checkout).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::AppState;
use crate::integrations::stripe::types::Subscription;
use crate::integrations::stripe::{StripeClient, StripeError};
use crate::queue::{Job, JobArgs, JobContext, JobResult, Policy};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StripeReconcile {}

impl JobArgs for StripeReconcile {
    const KIND: &'static str = "stripe_reconcile";

    fn policy() -> Policy {
        Policy {
            max_attempts: 5,
            ..Policy::default()
        }
    }
}

/// What we hold for each subscription, in the API's terms.
const SUBSCRIPTION_STATES: &str = r#"
select id, stripe_customer_id, price_id, status,
       extract(epoch from current_period_end)::bigint as period_end, cancel_at_period_end
from subscriptions where id = any($1)
"#;

type Held = (String, String, Option<String>, String, Option<i64>, bool);

/// From the listing, as of `$7` (Stripe's clock; null: unknown). Like `stripe_event`'s upsert,
/// but a row whose newest event is later than `$7` is kept, and without `$7` only a row no event
/// has touched is written.
const SUBSCRIPTION_RECONCILE: &str = r#"
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
    last_event_created = excluded.last_event_created,
    updated_at = now()
where subscriptions.last_event_created is null
   or subscriptions.last_event_created <= excluded.last_event_created
returning id
"#;

impl Job<AppState> for StripeReconcile {
    async fn perform(self, ctx: JobContext<AppState>) -> JobResult {
        let settings = &ctx.state.config.stripe;
        let key = ctx
            .state
            .secrets
            .stripe_secret_key
            .clone()
            .ok_or(StripeError::NotConfigured)?;
        let client = StripeClient::new(
            &settings.api_base,
            key,
            settings.connect_timeout,
            settings.request_timeout,
        )?;
        let listing = client.list_all_subscriptions().await?;
        let as_of = listing.first_served_at.map(|served| served - 1);
        if as_of.is_none() {
            tracing::warn!("Stripe sent no Date: reconciling only rows no event has touched");
        }
        let remote = listing.subscriptions;
        let ids: Vec<String> = remote.iter().map(|s| s.id.clone()).collect();
        let held: HashMap<String, Held> = sqlx::query_as::<_, Held>(SUBSCRIPTION_STATES)
            .bind(&ids)
            .fetch_all(&ctx.pool)
            .await?
            .into_iter()
            .map(|row| (row.0.clone(), row))
            .collect();
        let mut changes = Vec::new();
        let mut tx = ctx.pool.begin().await?;
        for sub in &remote {
            let want = (
                sub.customer.clone(),
                sub.price_id().map(str::to_owned),
                sub.status.clone(),
                sub.period_end(),
                sub.cancel_at_period_end,
            );
            let change = match held.get(&sub.id) {
                None => json!({"subscription": sub.id, "created": {"status": sub.status}}),
                Some((_, customer, price, status, end, cancel)) => {
                    let have = (
                        customer.clone(),
                        price.clone(),
                        status.clone(),
                        *end,
                        *cancel,
                    );
                    if have == want {
                        continue;
                    }
                    json!({
                        "subscription": sub.id,
                        "from": {"customer": have.0, "price": have.1, "status": have.2, "period_end": have.3, "cancel_at_period_end": have.4},
                        "to": {"customer": want.0, "price": want.1, "status": want.2, "period_end": want.3, "cancel_at_period_end": want.4},
                    })
                }
            };
            // A webhook newer than the listing may have landed meanwhile: then it wins.
            if reconcile_subscription(&mut tx, sub, as_of).await? {
                tracing::info!(%change, "stripe_reconcile corrected a subscription");
                changes.push(change);
            }
        }
        tx.commit().await?;
        tracing::info!(
            checked = remote.len(),
            corrected = changes.len(),
            "stripe_reconcile done"
        );
        Ok(Some(
            json!({"checked": remote.len(), "corrected": changes.len(), "changes": changes}),
        ))
    }
}

/// Writes `sub` as of `as_of`; false when an event newer than the listing is kept.
async fn reconcile_subscription(
    tx: &mut sqlx::PgConnection,
    sub: &Subscription,
    as_of: Option<i64>,
) -> Result<bool, sqlx::Error> {
    let applied: Option<String> = sqlx::query_scalar(SUBSCRIPTION_RECONCILE)
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
