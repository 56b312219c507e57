//! `stripe_reconcile`: pages through every subscription in the Stripe API and corrects drift in
//! `subscriptions` (a missed or failed webhook, a manual edit): rows whose status, price, period
//! end or cancel flag differ are rewritten, missing ones inserted. Each change is listed in the
//! job's result and logged. Scheduled daily by `[schedules.stripe_reconcile]`.
//!
//! The API's answer is the state as of the moment the listing started, so it is applied with
//! that time as its `created`: an event newer than the listing is kept, an older one delivered
//! later changes nothing (the same guard as `stripe_event`).

use std::collections::HashMap;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::AppState;
use super::stripe_event::upsert_subscription;
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
        let as_of = Utc::now().timestamp();
        let remote = client.list_all_subscriptions().await?;
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
            if upsert_subscription(&mut tx, sub, as_of).await? {
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
