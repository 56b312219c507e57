//! The `stripe_event` job applying events, `stripe_reconcile` correcting drift, and replay.

use baseaim_worker::jobs::stripe_event::replay;
use baseaim_worker::queue::{self, NewJob};
use baseaim_worker::sim::FaultKind;
use baseaim_worker::sim::stripe::{StripeConfig, StripeSim, WebhookSender};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::support::TestDb;
use crate::{Intake, SECRET, count, envelope, insert_client, post, sample_object, signed};

type SubRow = (Option<String>, String, Option<String>, String, Option<i64>);

async fn subscription(pool: &PgPool, id: &str) -> Option<SubRow> {
    sqlx::query_as(
        "select client_id, stripe_customer_id, price_id, status,
                extract(epoch from current_period_end)::bigint
         from subscriptions where id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
    .unwrap()
}

async fn invoice(pool: &PgPool, id: &str) -> (Option<String>, i64, String, String, bool) {
    sqlx::query_as(
        "select client_id, amount, currency, status, paid_at is not null from invoices where id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn email_jobs(pool: &PgPool) -> Vec<(Value, Option<String>)> {
    sqlx::query_as("select args, unique_key from jobs where kind = 'send_email' order by id")
        .fetch_all(pool)
        .await
        .unwrap()
}

fn checkout(client: &str, customer: &str, sub: &str) -> Value {
    let mut object = sample_object("checkout.session.completed");
    object["customer"] = json!(customer);
    object["subscription"] = json!(sub);
    object["metadata"] = json!({"clientId": client});
    object
}

fn subscription_object(sub: &str, customer: &str, status: &str) -> Value {
    let mut object = sample_object("customer.subscription.updated");
    object["id"] = json!(sub);
    object["customer"] = json!(customer);
    object["status"] = json!(status);
    object
}

fn invoice_object(id: &str, customer: &str, event_type: &str) -> Value {
    let mut object = sample_object(event_type);
    object["id"] = json!(id);
    object["customer"] = json!(customer);
    object["hosted_invoice_url"] = json!(format!("https://invoice.stripe.com/i/{id}"));
    object
}

#[tokio::test]
async fn every_event_type_lands_in_the_right_rows() {
    let db = TestDb::new().await;
    let intake = Intake::start(db.pool.clone(), vec![]).await;
    insert_client(&db.pool, "client-1", "Acme Ltd", "billing@acme.test").await;
    let sender = WebhookSender::new(SECRET);
    let events = [
        sender.event_with_object(
            "checkout.session.completed",
            checkout("client-1", "cus_A", "sub_A"),
            None,
        ),
        sender.event_with_object(
            "customer.subscription.updated",
            subscription_object("sub_A", "cus_A", "active"),
            Some(json!({"status": "incomplete"})),
        ),
        sender.event_with_object(
            "customer.subscription.deleted",
            subscription_object("sub_B", "cus_A", "canceled"),
            None,
        ),
        sender.event_with_object(
            "invoice.paid",
            invoice_object("in_paid", "cus_A", "invoice.paid"),
            None,
        ),
        sender.event_with_object(
            "invoice.payment_failed",
            invoice_object("in_failed", "cus_A", "invoice.payment_failed"),
            None,
        ),
    ];
    for event in &events {
        assert_eq!(
            sender.send(&intake.url, event).await,
            Some(200),
            "{}",
            event.event_type
        );
    }
    let report = intake.drain().await;
    assert_eq!(report.completed, 5, "{report:?}");

    let customer: Option<String> =
        sqlx::query_scalar("select stripe_customer_id from clients where id = 'client-1'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        customer.as_deref(),
        Some("cus_A"),
        "checkout linked the customer"
    );
    let sub = subscription(&db.pool, "sub_A").await.unwrap();
    assert_eq!(sub.0.as_deref(), Some("client-1"));
    assert_eq!(sub.1, "cus_A");
    assert_eq!(sub.2.as_deref(), Some("price_1PgafmB7WZ01zgkW6dKueIc5"));
    assert_eq!(sub.3, "active");
    assert_eq!(
        sub.4,
        Some(976_287_773),
        "period end from items.data[] (post-basil)"
    );
    assert_eq!(subscription(&db.pool, "sub_B").await.unwrap().3, "canceled");

    assert_eq!(
        invoice(&db.pool, "in_paid").await,
        (
            Some("client-1".into()),
            1000,
            "usd".into(),
            "PAID".into(),
            true
        )
    );
    assert_eq!(
        invoice(&db.pool, "in_failed").await,
        (
            Some("client-1".into()),
            1000,
            "usd".into(),
            "OVERDUE".into(),
            false
        )
    );
    let emails = email_jobs(&db.pool).await;
    assert_eq!(
        emails,
        vec![(
            json!({"template": "payment_failed", "to": "billing@acme.test", "data": {
                "client_name": "Acme Ltd", "amount": "10.00", "currency": "USD",
                "invoice_url": "https://invoice.stripe.com/i/in_failed"}}),
            Some("email:payment_failed:in_failed".to_owned())
        )]
    );
    let unprocessed = count(
        &db.pool,
        "select count(*) from stripe_events where status <> 'processed' or processed_at is null",
    )
    .await;
    assert_eq!(unprocessed, 0);
}

#[tokio::test]
async fn the_same_event_delivered_five_times_applies_once() {
    let db = TestDb::new().await;
    let intake = Intake::start(db.pool.clone(), vec![]).await;
    insert_client(&db.pool, "client-1", "Acme Ltd", "billing@acme.test").await;
    sqlx::query("update clients set stripe_customer_id = 'cus_A'")
        .execute(&db.pool)
        .await
        .unwrap();
    let sender = WebhookSender::new(SECRET);
    let event = sender.event_with_object(
        "invoice.payment_failed",
        invoice_object("in_1", "cus_A", "invoice.payment_failed"),
        None,
    );
    for round in 0..5 {
        assert_eq!(sender.send(&intake.url, &event).await, Some(200));
        // Some duplicates arrive after the first was applied.
        if round == 2 {
            intake.drain().await;
        }
    }
    intake.drain().await;
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from jobs where kind = 'stripe_event'"
        )
        .await,
        1
    );
    assert_eq!(email_jobs(&db.pool).await.len(), 1, "one email, not five");
    assert_eq!(invoice(&db.pool, "in_1").await.3, "OVERDUE");
}

#[tokio::test]
async fn subscription_updated_before_checkout_completed_ends_right() {
    let db = TestDb::new().await;
    let intake = Intake::start(db.pool.clone(), vec![]).await;
    insert_client(&db.pool, "client-1", "Acme Ltd", "billing@acme.test").await;
    let sender = WebhookSender::new(SECRET);
    let updated = sender.event_with_object(
        "customer.subscription.updated",
        subscription_object("sub_A", "cus_A", "past_due"),
        None,
    );
    let completed = sender.event_with_object(
        "checkout.session.completed",
        checkout("client-1", "cus_A", "sub_A"),
        None,
    );
    assert_eq!(sender.send(&intake.url, &updated).await, Some(200));
    intake.drain().await;
    let early = subscription(&db.pool, "sub_A").await.unwrap();
    assert_eq!(
        (early.0, early.3.as_str()),
        (None, "past_due"),
        "no client known yet"
    );
    assert_eq!(sender.send(&intake.url, &completed).await, Some(200));
    intake.drain().await;
    let sub = subscription(&db.pool, "sub_A").await.unwrap();
    assert_eq!(
        sub.0.as_deref(),
        Some("client-1"),
        "the late checkout linked the client"
    );
    assert_eq!(
        sub.3, "past_due",
        "and did not overwrite the status it does not know"
    );
}

#[tokio::test]
async fn an_older_event_delivered_late_changes_nothing() {
    let db = TestDb::new().await;
    let intake = Intake::start(db.pool.clone(), vec![]).await;
    let now = chrono::Utc::now().timestamp();
    let newer = envelope(
        "evt_new",
        "customer.subscription.deleted",
        now,
        subscription_object("sub_A", "cus_A", "canceled"),
    );
    let older = envelope(
        "evt_old",
        "customer.subscription.updated",
        now - 60,
        subscription_object("sub_A", "cus_A", "active"),
    );
    let paid = envelope(
        "evt_paid",
        "invoice.paid",
        now,
        invoice_object("in_1", "cus_A", "invoice.paid"),
    );
    let failed = envelope(
        "evt_failed",
        "invoice.payment_failed",
        now - 60,
        invoice_object("in_1", "cus_A", "invoice.payment_failed"),
    );
    for payload in [&newer, &paid] {
        assert_eq!(
            post(&intake.url, payload.clone(), Some(signed(payload))).await,
            200
        );
    }
    intake.drain().await;
    for payload in [&older, &failed] {
        assert_eq!(
            post(&intake.url, payload.clone(), Some(signed(payload))).await,
            200
        );
    }
    intake.drain().await;
    assert_eq!(subscription(&db.pool, "sub_A").await.unwrap().3, "canceled");
    assert_eq!(invoice(&db.pool, "in_1").await.3, "PAID");
    assert!(
        email_jobs(&db.pool).await.is_empty(),
        "no email for a payment failure already paid"
    );
}

#[tokio::test]
async fn a_cancellation_and_an_update_of_the_same_second_end_canceled_in_either_order() {
    let db = TestDb::new().await;
    let intake = Intake::start(db.pool.clone(), vec![]).await;
    let now = chrono::Utc::now().timestamp();
    // sub_A: the cancellation runs first, the update of the same second last; sub_B the reverse.
    for (sub, order) in [
        (
            "sub_A",
            [
                "customer.subscription.deleted",
                "customer.subscription.updated",
            ],
        ),
        (
            "sub_B",
            [
                "customer.subscription.updated",
                "customer.subscription.deleted",
            ],
        ),
    ] {
        for event_type in order {
            let status = if event_type.ends_with("deleted") {
                "canceled"
            } else {
                "active"
            };
            let payload = envelope(
                &format!("evt_{sub}_{status}"),
                event_type,
                now,
                subscription_object(sub, "cus_A", status),
            );
            assert_eq!(
                post(&intake.url, payload.clone(), Some(signed(&payload))).await,
                200
            );
            assert_eq!(intake.drain().await.completed, 1);
        }
    }
    assert_eq!(subscription(&db.pool, "sub_A").await.unwrap().3, "canceled");
    assert_eq!(subscription(&db.pool, "sub_B").await.unwrap().3, "canceled");
}

#[tokio::test]
async fn an_unreadable_object_of_a_known_type_is_kept_as_ignored() {
    let db = TestDb::new().await;
    let intake = Intake::start(db.pool.clone(), vec![]).await;
    let payload = envelope(
        "evt_odd",
        "invoice.paid",
        chrono::Utc::now().timestamp(),
        json!({"id": "in_odd", "object": "invoice", "shape": "from the future"}),
    );
    assert_eq!(
        post(&intake.url, payload.clone(), Some(signed(&payload))).await,
        200
    );
    let report = intake.drain().await;
    assert_eq!(report.completed, 1);
    let (status, error): (String, Option<String>) =
        sqlx::query_as("select status, last_error from stripe_events where id = 'evt_odd'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(status, "ignored");
    assert!(error.unwrap().contains("unreadable invoice.paid object"));
    assert_eq!(count(&db.pool, "select count(*) from invoices").await, 0);
}

#[tokio::test]
async fn reconciliation_fixes_a_drifted_subscription() {
    let db = TestDb::new().await;
    let (sim, intake) = stripe_and_intake(
        &db,
        StripeConfig {
            customers: 150, // more than one page of 100
            ..StripeConfig::default()
        },
    )
    .await;
    let run = || async {
        queue::enqueue(&db.pool, NewJob::raw("stripe_reconcile", json!({})))
            .await
            .unwrap();
        let report = intake.drain().await;
        assert_eq!(report.completed, 1, "{report:?}");
        let result: Value = sqlx::query_scalar(
            "select result from jobs where kind = 'stripe_reconcile' order by id desc limit 1",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        result
    };
    let first = run().await;
    assert_eq!(first["checked"], 150);
    assert_eq!(
        first["corrected"], 150,
        "every missing subscription created"
    );
    assert_eq!(
        count(&db.pool, "select count(*) from subscriptions").await,
        150
    );

    // Drift: a missed webhook (Stripe moved on) and a local edit.
    let missed = sim
        .subscriptions()
        .into_iter()
        .find(|s| s["status"] != "canceled" && s["id"] != "sub_sim_0120")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    sim.set_subscription_status(&missed, "canceled").unwrap();
    sqlx::query("update subscriptions set status = 'paused' where id = 'sub_sim_0120'")
        .execute(&db.pool)
        .await
        .unwrap();
    let want_120 = sim.subscription("sub_sim_0120").unwrap()["status"].clone();
    let second = run().await;
    assert_eq!(second["corrected"], 2, "{second}");
    let mut changed: Vec<&str> = second["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["subscription"].as_str().unwrap())
        .collect();
    changed.sort();
    let mut want = vec![missed.as_str(), "sub_sim_0120"];
    want.sort();
    assert_eq!(changed, want);
    assert_eq!(subscription(&db.pool, &missed).await.unwrap().3, "canceled");
    assert_eq!(
        json!(subscription(&db.pool, "sub_sim_0120").await.unwrap().3),
        want_120
    );
    assert_eq!(run().await["corrected"], 0, "nothing left to correct");
}

/// Starts the simulator with its clock `offset` seconds ahead of ours, and an intake using it.
async fn skewed_stripe(db: &TestDb, offset: i64) -> (StripeSim, Intake) {
    let config = StripeConfig {
        clock_offset: chrono::Duration::seconds(offset),
        ..StripeConfig::default()
    };
    stripe_and_intake(db, config).await
}

/// Starts the simulator with `config`, and an intake whose Stripe API is that simulator.
async fn stripe_and_intake(db: &TestDb, config: StripeConfig) -> (StripeSim, Intake) {
    let sim = StripeSim::start(config).await.unwrap();
    let env = vec![(
        "BAW__STRIPE__API_BASE".to_string(),
        sim.base_url().to_string(),
    )];
    let intake = Intake::start(db.pool.clone(), env).await;
    (sim, intake)
}

async fn reconcile(intake: &Intake) {
    queue::enqueue(&intake.pool, NewJob::raw("stripe_reconcile", json!({})))
        .await
        .unwrap();
    assert_eq!(intake.drain().await.completed, 1);
}

/// A live (not canceled) subscription of `sim`, and its customer.
fn live_subscription(sim: &StripeSim) -> (String, String) {
    let sub = sim
        .subscriptions()
        .into_iter()
        .find(|s| s["status"] != "canceled")
        .unwrap();
    (
        sub["id"].as_str().unwrap().to_owned(),
        sub["customer"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn reconciliation_with_our_clock_an_hour_fast_does_not_block_later_webhooks() {
    let db = TestDb::new().await;
    let (sim, intake) = skewed_stripe(&db, -3600).await;
    let (sub, customer) = live_subscription(&sim);
    reconcile(&intake).await;
    assert_ne!(subscription(&db.pool, &sub).await.unwrap().3, "canceled");
    // The customer cancels after the reconciliation, by Stripe's clock.
    let stripe_now = chrono::Utc::now().timestamp() - 3600;
    let payload = envelope(
        "evt_cancel",
        "customer.subscription.deleted",
        stripe_now,
        subscription_object(&sub, &customer, "canceled"),
    );
    assert_eq!(
        post(&intake.url, payload.clone(), Some(signed(&payload))).await,
        200
    );
    intake.drain().await;
    assert_eq!(subscription(&db.pool, &sub).await.unwrap().3, "canceled");
}

#[tokio::test]
async fn reconciliation_with_our_clock_an_hour_slow_still_corrects_drift() {
    let db = TestDb::new().await;
    let (sim, intake) = skewed_stripe(&db, 3600).await;
    let (sub, customer) = live_subscription(&sim);
    let stripe_now = chrono::Utc::now().timestamp() + 3600;
    let payload = envelope(
        "evt_active",
        "customer.subscription.updated",
        stripe_now - 60,
        subscription_object(&sub, &customer, "active"),
    );
    assert_eq!(
        post(&intake.url, payload.clone(), Some(signed(&payload))).await,
        200
    );
    intake.drain().await;
    // The cancellation's webhook never arrives; the reconciliation finds it.
    sim.set_subscription_status(&sub, "canceled").unwrap();
    reconcile(&intake).await;
    assert_eq!(subscription(&db.pool, &sub).await.unwrap().3, "canceled");
}

#[tokio::test]
async fn a_listing_cut_mid_body_is_retried_not_discarded() {
    let db = TestDb::new().await;
    let (sim, intake) = skewed_stripe(&db, 0).await;
    sim.faults().next(FaultKind::CutBody);
    queue::enqueue(&db.pool, NewJob::raw("stripe_reconcile", json!({})))
        .await
        .unwrap();
    let report = intake.drain().await;
    assert_eq!(report.retried, 1, "{report:?}");
    sqlx::query("update jobs set run_at = now()")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(intake.drain().await.completed, 1);
    assert_eq!(
        count(&db.pool, "select count(*) from subscriptions").await,
        3
    );
}

#[tokio::test]
async fn reconciliation_without_a_key_discards_with_a_clear_error() {
    let db = TestDb::new().await;
    let mut intake = Intake::start(db.pool.clone(), vec![]).await;
    let mut secrets = (*intake.state.secrets).clone();
    secrets.stripe_secret_key = None;
    intake.state.secrets = std::sync::Arc::new(secrets);
    queue::enqueue(&db.pool, NewJob::raw("stripe_reconcile", json!({})))
        .await
        .unwrap();
    assert_eq!(intake.drain().await.discarded, 1);
    let errors: Value =
        sqlx::query_scalar("select errors from jobs where kind = 'stripe_reconcile'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(
        errors.to_string().contains("STRIPE_SECRET_KEY is not set"),
        "{errors}"
    );
}

#[tokio::test]
async fn replay_re_applies_a_stored_event() {
    let db = TestDb::new().await;
    let intake = Intake::start(db.pool.clone(), vec![]).await;
    let sender = WebhookSender::new(SECRET);
    let event = sender.event_with_object(
        "customer.subscription.updated",
        subscription_object("sub_A", "cus_A", "active"),
        None,
    );
    assert_eq!(sender.send(&intake.url, &event).await, Some(200));
    intake.drain().await;
    // Someone broke the row by hand.
    sqlx::query("update subscriptions set status = 'unpaid', price_id = null")
        .execute(&db.pool)
        .await
        .unwrap();
    replay(&db.pool, &event.id).await.unwrap();
    assert_eq!(intake.drain().await.completed, 1);
    let sub = subscription(&db.pool, "sub_A").await.unwrap();
    assert_eq!(
        (sub.2.as_deref(), sub.3.as_str()),
        (Some("price_1PgafmB7WZ01zgkW6dKueIc5"), "active")
    );
    assert!(
        replay(&db.pool, "evt_missing").await.is_err(),
        "an unknown id is refused"
    );
}
