//! Regression tests for defects the chaos run found, each small enough to run alone.

use std::sync::Arc;

use baseaim_worker::config::{Config, Secrets};
use baseaim_worker::jobs::{self, AppState, StripeEvent};
use baseaim_worker::queue::testing::drain;
use baseaim_worker::queue::{NewJob, enqueue};
use baseaim_worker::sim::stripe::WebhookSender;
use serde_json::json;

use crate::support::TestDb;

/// The payment-failed email a Stripe event enqueues used to be a `raw` job: the `default` queue
/// and 25 attempts instead of the `email` queue and `send_email`'s 10, so it bypassed the email
/// queue's slots and could retry for days longer than any other email.
#[tokio::test]
async fn the_payment_failed_email_takes_the_send_email_policy() {
    let db = TestDb::new().await;
    let sender = WebhookSender::new("whsec_unused");
    let mut object = baseaim_worker::sim::stripe::sample_event("invoice.payment_failed").unwrap()
        ["data"]["object"]
        .clone();
    object["customer_email"] = json!("billing@policy.example");
    let event = sender.event_with_object("invoice.payment_failed", object, None);
    sqlx::query("insert into stripe_events (id, type, created, payload) values ($1, $2, $3, $4)")
        .bind(&event.id)
        .bind(&event.event_type)
        .bind(event.created)
        .bind(event.payload())
        .execute(&db.pool)
        .await
        .unwrap();
    let job = NewJob::of(&StripeEvent {
        event_id: event.id.clone(),
    })
    .unwrap();
    enqueue(&db.pool, job).await.unwrap();
    let config = Config::load_from(None, Vec::<(String, String)>::new()).unwrap();
    let state = AppState::new(
        db.pool.clone(),
        Arc::new(config),
        Arc::new(Secrets::default()),
    )
    .unwrap();
    let report = drain(&db.pool, &jobs::registry(), state, "default")
        .await
        .unwrap();
    assert_eq!(report.completed, 1, "{report:?}");
    let (queue, max_attempts): (String, i32) =
        sqlx::query_as("select queue, max_attempts from jobs where kind = 'send_email'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((queue.as_str(), max_attempts), ("email", 10));
}
