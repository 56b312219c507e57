//! Stripe: objects parse with async-stripe's types, list paging, errors, and webhook signatures
//! that async-stripe verifies (and rejects when wrong or stale).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use baseaim_worker::sim::stripe::{EVENT_TYPES, Signing, StripeConfig, StripeSim, WebhookSender};
use serde_json::Value;
use stripe_webhook::{Webhook, WebhookError};

use crate::client;

const SECRET: &str = "whsec_sim_test_secret";

async fn start(customers: usize) -> StripeSim {
    StripeSim::start(StripeConfig {
        customers,
        ..StripeConfig::default()
    })
    .await
    .expect("start stripe sim")
}

async fn get(sim: &StripeSim, path: &str) -> reqwest::Response {
    client()
        .get(format!("{}{path}", sim.base_url()))
        .bearer_auth(sim.api_key())
        .send()
        .await
        .expect("send")
}

#[tokio::test]
async fn served_objects_parse_with_async_stripe_types() {
    let sim = start(3).await;
    let list: stripe_types::List<stripe_shared::Subscription> =
        get(&sim, "/v1/subscriptions?status=all")
            .await
            .json()
            .await
            .expect("a List<Subscription>");
    assert_eq!(list.data.len(), 3);

    let sub = &list.data[0];
    let fetched: stripe_shared::Subscription = get(&sim, &format!("/v1/subscriptions/{}", sub.id))
        .await
        .json()
        .await
        .expect("a Subscription");
    assert_eq!(fetched.id, sub.id);

    let invoice_id = sim.subscription(sub.id.as_str()).expect("sub")["latest_invoice"]
        .as_str()
        .expect("latest_invoice")
        .to_owned();
    let invoice: stripe_shared::Invoice = get(&sim, &format!("/v1/invoices/{invoice_id}"))
        .await
        .json()
        .await
        .expect("an Invoice");
    assert_eq!(
        invoice.id.as_ref().map(|i| i.as_str()),
        Some(invoice_id.as_str())
    );

    let customer_id = sim.subscription(sub.id.as_str()).expect("sub")["customer"]
        .as_str()
        .expect("customer")
        .to_owned();
    let customer: stripe_shared::Customer = get(&sim, &format!("/v1/customers/{customer_id}"))
        .await
        .json()
        .await
        .expect("a Customer");
    assert_eq!(customer.id.as_str(), customer_id);
}

#[tokio::test]
async fn paging_with_starting_after_walks_every_live_subscription_once() {
    let sim = start(7).await;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(after) => format!("/v1/subscriptions?limit=2&starting_after={after}"),
            None => "/v1/subscriptions?limit=2".to_owned(),
        };
        let page: Value = get(&sim, &path).await.json().await.expect("json");
        pages += 1;
        let data = page["data"].as_array().expect("data").clone();
        assert!(data.len() <= 2);
        for sub in &data {
            seen.push(sub["id"].as_str().expect("id").to_owned());
        }
        if page["has_more"] != true {
            break;
        }
        cursor = data
            .last()
            .and_then(|s| s["id"].as_str())
            .map(str::to_owned);
        assert!(pages < 10, "paging does not end");
    }
    let mut expected: Vec<String> = sim
        .subscriptions()
        .iter()
        .filter(|s| s["status"] != "canceled")
        .map(|s| s["id"].as_str().expect("id").to_owned())
        .collect();
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), seen.len(), "a subscription appeared twice");
    expected.sort();
    assert_eq!(sorted, expected);
    assert_eq!(pages, expected.len().div_ceil(2).max(1));
}

#[tokio::test]
async fn unknown_ids_and_missing_keys_get_stripes_error_body() {
    let sim = start(1).await;
    let missing = get(&sim, "/v1/subscriptions/sub_nope").await;
    assert_eq!(missing.status(), 404);
    assert!(missing.headers().contains_key("request-id"));
    let body: Value = missing.json().await.expect("json");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["code"], "resource_missing");
    assert_eq!(body["error"]["message"], "No such subscription: 'sub_nope'");

    let unauthenticated = client()
        .get(format!("{}/v1/customers/cus_sim_0001", sim.base_url()))
        .send()
        .await
        .expect("send");
    assert_eq!(unauthenticated.status(), 401);
    let wrong = client()
        .get(format!("{}/v1/customers/cus_sim_0001", sim.base_url()))
        .bearer_auth("sk_test_wrong_key_9876")
        .send()
        .await
        .expect("send");
    assert_eq!(wrong.status(), 401);
    let body: Value = wrong.json().await.expect("json");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(
        message.ends_with("9876") && !message.contains("wrong_key"),
        "{message}"
    );
}

#[tokio::test]
async fn a_deleted_customer_answers_as_deleted() {
    let sim = start(1).await;
    sim.delete_customer("cus_sim_0001");
    let body: Value = get(&sim, "/v1/customers/cus_sim_0001")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(body["deleted"], true);
}

#[test]
fn every_sample_event_verifies_with_async_stripe_and_carries_its_object() {
    let sender = WebhookSender::new(SECRET);
    for event_type in EVENT_TYPES {
        let event = sender.event(event_type).expect("a sample event");
        let header = sender
            .header_for(event.payload(), &Signing::Valid)
            .expect("signed");
        let parsed = Webhook::construct_event(event.payload(), &header, SECRET)
            .unwrap_or_else(|e| panic!("{event_type}: {e:?}"));
        assert_eq!(parsed.id.as_str(), event.id);
        assert_eq!(parsed.type_.as_str(), event_type);
    }
}

#[test]
fn event_ids_are_unique() {
    let sender = WebhookSender::new(SECRET);
    let a = sender.event("invoice.paid").expect("event");
    let b = sender.event("invoice.paid").expect("event");
    assert_ne!(a.id, b.id);
    assert!(a.id.starts_with("evt_"));
}

#[test]
fn a_wrong_secret_or_a_stale_timestamp_fails_verification() {
    let sender = WebhookSender::new(SECRET);
    let event = sender.event("invoice.payment_failed").expect("event");

    let wrong = sender
        .header_for(event.payload(), &Signing::WrongSecret("whsec_other".into()))
        .expect("signed");
    assert!(matches!(
        Webhook::construct_event(event.payload(), &wrong, SECRET),
        Err(WebhookError::BadSignature)
    ));

    let stale = sender
        .header_for(event.payload(), &Signing::Stale(Duration::from_secs(301)))
        .expect("signed");
    assert!(matches!(
        Webhook::construct_event(event.payload(), &stale, SECRET),
        Err(WebhookError::BadTimestamp(_))
    ));

    // Within tolerance it still verifies.
    let recent = sender
        .header_for(event.payload(), &Signing::Stale(Duration::from_secs(200)))
        .expect("signed");
    assert!(Webhook::construct_event(event.payload(), &recent, SECRET).is_ok());

    // A body changed after signing fails.
    let valid = sender
        .header_for(event.payload(), &Signing::Valid)
        .expect("signed");
    let tampered = event
        .payload()
        .replacen("\"livemode\": false", "\"livemode\": true", 1);
    assert_ne!(tampered, event.payload());
    assert!(Webhook::construct_event(&tampered, &valid, SECRET).is_err());
}

/// A receiver that verifies like a client would and records what arrived.
#[derive(Clone, Default)]
struct Receiver {
    received: Arc<Mutex<Vec<(String, bool)>>>,
    /// Answer 500 to this many requests first.
    fail_first: Arc<Mutex<u32>>,
}

async fn receive(State(receiver): State<Receiver>, headers: HeaderMap, body: String) -> StatusCode {
    {
        let mut fail = receiver.fail_first.lock().expect("lock");
        if *fail > 0 {
            *fail -= 1;
            return StatusCode::INTERNAL_SERVER_ERROR;
        }
    }
    let signature = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let verified = Webhook::construct_event(&body, signature, SECRET);
    let id = serde_json::from_str::<Value>(&body).expect("json")["id"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    receiver
        .received
        .lock()
        .expect("lock")
        .push((id, verified.is_ok()));
    if verified.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    }
}

async fn spawn_receiver(receiver: Receiver) -> String {
    let app = Router::new()
        .route("/webhooks/stripe", post(receive))
        .with_state(receiver);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/webhooks/stripe")
}

#[tokio::test]
async fn deliveries_verify_at_the_receiver_and_bad_ones_are_refused() {
    let receiver = Receiver::default();
    let url = spawn_receiver(receiver.clone()).await;
    let sender = WebhookSender::new(SECRET);
    let event = sender.event("checkout.session.completed").expect("event");

    assert_eq!(sender.send(&url, &event).await, Some(200));
    // A duplicate: same id, same bytes.
    assert_eq!(sender.send(&url, &event).await, Some(200));
    assert_eq!(
        sender
            .send_with(&url, &event, Signing::WrongSecret("whsec_x".into()))
            .await,
        Some(400)
    );
    assert_eq!(
        sender
            .send_with(&url, &event, Signing::Stale(Duration::from_secs(600)))
            .await,
        Some(400)
    );
    assert_eq!(
        sender.send_with(&url, &event, Signing::Unsigned).await,
        Some(400)
    );
    // Extra signatures as during a secret roll; async-stripe checks the last v1 (the valid one).
    assert_eq!(
        sender
            .send_with(&url, &event, Signing::ExtraSignatures)
            .await,
        Some(200)
    );

    let received = receiver.received.lock().expect("lock").clone();
    assert_eq!(received.len(), 6);
    assert!(received.iter().all(|(id, _)| *id == event.id));
    let verdicts: Vec<bool> = received.iter().map(|(_, ok)| *ok).collect();
    assert_eq!(verdicts, [true, true, false, false, false, true]);
    assert_eq!(sender.deliveries().len(), 6);
}

#[tokio::test]
async fn non_2xx_answers_are_retried_until_accepted() {
    let receiver = Receiver::default();
    *receiver.fail_first.lock().expect("lock") = 2;
    let url = spawn_receiver(receiver.clone()).await;
    let sender = WebhookSender::new(SECRET);
    let event = sender.event("invoice.paid").expect("event");

    let status = sender
        .send_with_retries(&url, &event, 5, Duration::from_millis(10))
        .await;
    assert_eq!(status, Some(200));
    let statuses: Vec<Option<u16>> = sender.deliveries().iter().map(|d| d.status).collect();
    assert_eq!(statuses, [Some(500), Some(500), Some(200)]);
}

#[tokio::test]
async fn shuffled_delivery_reorders_deterministically_under_a_seed() {
    let receiver = Receiver::default();
    let url = spawn_receiver(receiver.clone()).await;
    let sender = WebhookSender::new(SECRET);
    let events: Vec<_> = EVENT_TYPES
        .iter()
        .map(|t| sender.event(t).expect("event"))
        .collect();
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();

    let first: Vec<String> = sender
        .send_shuffled(&url, &events, 42)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let second: Vec<String> = sender
        .send_shuffled(&url, &events, 42)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(first, second, "same seed, same order");
    assert_ne!(first, ids, "seed 42 leaves the events in creation order");
    let mut sorted = first.clone();
    sorted.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(sorted, expected, "every event exactly once");
    let received: Vec<String> = receiver
        .received
        .lock()
        .expect("lock")
        .iter()
        .take(5)
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(received, first, "arrival order is the shuffled order");
}
