//! `POST /v1/emails`: rendered at intake (422 naming a missing variable), enqueued, sent once;
//! the caller's `Idempotency-Key` gives the same job however often it is repeated.

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Answer, Api, email_data};

async fn post(api: &Api, token: &str, body: Value, headers: &[(&str, &str)]) -> Answer {
    api.call_with(Method::POST, "/v1/emails", Some(token), Some(body), headers)
        .await
}

fn email(to: &str) -> Value {
    json!({"template": "payment_failed", "to": to, "data": email_data(), "tags": [{"name": "kind", "value": "dunning"}]})
}

#[tokio::test]
async fn an_email_that_would_not_render_or_reach_anyone_is_refused_naming_why() {
    let api = Api::new().await;
    let token = api.token(&["emails:send"]).await;
    let mut missing = email("jane@example.com");
    missing["data"]
        .as_object_mut()
        .unwrap()
        .remove("invoice_url");
    let mut nul = email("jane@example.com");
    nul["data"]["client_name"] = json!("Acme\u{0}");
    let cases = vec![
        (missing, "invoice_url"),
        (nul, "`data` must not contain NUL"),
        (
            json!({"template": "nope", "to": "jane@example.com", "data": {}}),
            "unknown `template` `nope`",
        ),
        (
            json!({"template": "welcome", "data": {}}),
            "missing field `to`",
        ),
        (
            json!({"template": "payment_failed", "to": "not an address", "data": email_data()}),
            "`to` is not an email address",
        ),
        (
            json!({"template": "payment_failed", "to": "a@example.com", "reply_to": "x@", "data": email_data()}),
            "`reply_to` is not an email address",
        ),
        (
            json!({"template": "payment_failed", "to": "a@example.com", "data": email_data(),
                   "tags": [{"name": "bad tag!", "value": "x"}]}),
            "tags[].name",
        ),
        (
            json!({"template": "payment_failed", "to": "a@example.com", "data": email_data(),
                   "scheduled_at": "2001-01-01T00:00:00Z"}),
            "`scheduled_at` is in the past",
        ),
        (
            json!({"template": "payment_failed", "to": "a@example.com", "data": email_data(), "cc": "b@example.com"}),
            "unknown field `cc`",
        ),
    ];
    api.assert_each_unprocessable("/v1/emails", &token, &cases)
        .await;
    let bad_key = api
        .call_with(
            Method::POST,
            "/v1/emails",
            Some(&token),
            Some(email("jane@example.com")),
            &[("Idempotency-Key", "")],
        )
        .await;
    assert_eq!(
        bad_key.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        bad_key.text
    );
    assert!(bad_key.text.contains("Idempotency-Key"), "{}", bad_key.text);
    assert_eq!(api.job_count().await, 0, "nothing stored");
}

#[tokio::test]
async fn the_same_idempotency_key_gives_the_same_job_and_the_email_lands_once() {
    let api = Api::new().await;
    let token = api.token(&["emails:send"]).await;
    let key = [("Idempotency-Key", "order-1234-receipt")];
    let first = post(&api, &token, email("jane@example.com"), &key[..]).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.text);
    assert_eq!(first.body["duplicate"], false);
    let id = first.body["id"].as_i64().unwrap();

    // Repeated while the job waits: the queue's unique key finds it.
    let second = post(&api, &token, email("jane@example.com"), &key[..]).await;
    assert_eq!(second.status, StatusCode::ACCEPTED, "{}", second.text);
    assert_eq!(second.body, json!({"id": id, "duplicate": true}));
    assert_eq!(api.job_count().await, 1);

    let report = api.drain("email").await;
    assert_eq!(report.completed, 1, "{report:?}");
    let sent = api.sim.emails();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].to, vec!["jane@example.com".to_string()]);
    assert_eq!(sent[0].subject, "Payment failed: 120.00 EUR");

    // Repeated after it was sent: the email log finds it; still one job, still one email.
    let third = post(&api, &token, email("jane@example.com"), &key[..]).await;
    assert_eq!(third.status, StatusCode::ACCEPTED, "{}", third.text);
    assert_eq!(third.body, json!({"id": id, "duplicate": true}));
    assert_eq!(api.job_count().await, 1);
    assert_eq!(api.drain("email").await.total(), 0);
    assert_eq!(api.sim.emails().len(), 1);

    // The same key with another email is a conflict, not a silent second send.
    let other = post(&api, &token, email("john@example.com"), &key[..]).await;
    assert_eq!(other.status, StatusCode::CONFLICT, "{}", other.text);
    assert_eq!(api.job_count().await, 1);

    // Another key, another email; no key, a new email each time.
    let fresh = post(
        &api,
        &token,
        email("jane@example.com"),
        &[("Idempotency-Key", "order-1235-receipt")],
    )
    .await;
    assert_eq!(fresh.status, StatusCode::ACCEPTED);
    assert_ne!(fresh.body["id"], json!(id));
    let a = post(&api, &token, email("jane@example.com"), &[]).await;
    let b = post(&api, &token, email("jane@example.com"), &[]).await;
    assert_ne!(a.body["id"], b.body["id"]);
    assert_eq!(api.job_count().await, 4);
}
