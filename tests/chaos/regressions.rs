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

/// While the database was cut, the API answered 500 to some requests instead of 503: a
/// connection cut during its set-up surfaces as a protocol error ("unexpected response from
/// SSLRequest: 0x00", seen in the chaos run through the PgProxy), which the API's error mapping
/// took for an internal error. Callers were told "internal error" instead of "retry later".
/// Reproduced exactly here with a listener that answers the SSLRequest with that byte and hangs
/// up, the way the cut connection did.
#[tokio::test]
async fn the_api_answers_503_when_the_database_connection_breaks_during_set_up() {
    use axum::body::Body;
    use axum::http::Request;
    use baseaim_worker::db::DbHealth;
    use baseaim_worker::http::{self, HttpState};
    use tokio::io::AsyncWriteExt;
    use tower::ServiceExt;

    let db = TestDb::new().await;
    let token = baseaim_worker::auth::tokens::create(&db.pool, "cut", &["emails:send"])
        .await
        .unwrap();
    let broken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let broken_addr = broken.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = broken.accept().await {
            let _ = socket.write_all(&[0]).await;
        }
    });
    let router_over = |pool: sqlx::PgPool| {
        let config = Config::load_from(None, Vec::<(String, String)>::new()).unwrap();
        let health = DbHealth::spawn(
            pool.clone(),
            std::time::Duration::from_secs(1),
            tokio_util::sync::CancellationToken::new(),
        );
        let state = AppState::new(pool, Arc::new(config), Arc::new(Secrets::default())).unwrap();
        http::router(HttpState::new(state, health))
    };
    let request = || {
        Request::post("/v1/emails")
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(Body::from(
                json!({"template": "welcome", "to": "a@example.com",
                       "data": {"client_name": "A", "dashboard_url": "https://x.example/"}})
                .to_string(),
            ))
            .unwrap()
    };
    let up = router_over(db.pool.clone())
        .oneshot(request())
        .await
        .unwrap();
    assert_eq!(up.status(), 202, "accepted while the database answers");
    let cut = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(std::time::Duration::from_secs(2))
        .connect_lazy(&db.url_via(broken_addr))
        .unwrap();
    let answer = router_over(cut).oneshot(request()).await.unwrap();
    assert_eq!(
        answer.status(),
        503,
        "a broken database connection is 'retry later'"
    );
}
