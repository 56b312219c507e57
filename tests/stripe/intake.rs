//! The HTTP intake: what is accepted, stored and enqueued, and what is refused.

use std::time::Duration;

use baseaim_worker::sim::stripe::{Signing, WebhookSender};
use sqlx::postgres::PgPoolOptions;

use crate::support::{PgProxy, TestDb, noise};
use crate::{Intake, SECRET, count, envelope, post, sample_object, signed};

async fn stored(pool: &sqlx::PgPool) -> (i64, i64) {
    (
        count(pool, "select count(*) from stripe_events").await,
        count(pool, "select count(*) from jobs").await,
    )
}

#[tokio::test]
async fn a_valid_event_is_stored_raw_with_its_job_and_duplicates_insert_nothing() {
    let db = TestDb::new().await;
    let intake = Intake::start(db.pool.clone(), vec![]).await;
    let sender = WebhookSender::new(SECRET);
    let event = sender.event("invoice.payment_failed").unwrap();
    for _ in 0..4 {
        assert_eq!(sender.send(&intake.url, &event).await, Some(200));
    }
    // During a secret roll: several v1, any may match.
    assert_eq!(
        sender
            .send_with(&intake.url, &event, Signing::ExtraSignatures)
            .await,
        Some(200)
    );
    let (payload, status): (String, String) =
        sqlx::query_as("select payload, status from stripe_events where id = $1")
            .bind(&event.id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        payload,
        event.payload(),
        "the exact bytes received are stored"
    );
    assert_eq!(status, "received");
    assert_eq!(
        stored(&db.pool).await,
        (1, 1),
        "five deliveries, one row and one job"
    );
    baseaim_worker::queue::testing::assert_enqueued(
        &db.pool,
        "stripe_event",
        serde_json::json!({"event_id": event.id}),
    )
    .await;
}

#[tokio::test]
async fn an_unknown_event_type_is_kept_as_ignored_without_a_job() {
    let db = TestDb::new().await;
    let intake = Intake::start(db.pool.clone(), vec![]).await;
    let payload = envelope(
        "evt_unknown_1",
        "customer.tax_id.created",
        chrono::Utc::now().timestamp(),
        serde_json::json!({"id": "txi_1", "object": "tax_id", "something": {"new": true}}),
    );
    assert_eq!(
        post(&intake.url, payload.clone(), Some(signed(&payload))).await,
        200
    );
    let (status, processed): (String, bool) = sqlx::query_as(
        "select status, processed_at >= received_at - interval '5 seconds' \
         from stripe_events where id = 'evt_unknown_1'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(status, "ignored");
    assert!(processed, "an ignored event is processed as it is stored");
    assert_eq!(stored(&db.pool).await, (1, 0));
}

/// A batch holding one stored event and new ones: the new ones are stored with their jobs, the
/// stored one stays as it was (the intake's `COPY` meets it and the batch goes again through the
/// statement that skips stored events).
#[tokio::test]
async fn a_batch_mixing_a_stored_event_with_new_ones_stores_the_new_ones_once() {
    let db = TestDb::new().await;
    let intake = Intake::start(db.pool.clone(), vec![]).await;
    let sender = WebhookSender::new(SECRET);
    let stored_first = sender.event("invoice.paid").unwrap();
    assert_eq!(sender.send(&intake.url, &stored_first).await, Some(200));
    let new: Vec<_> = (0..20)
        .map(|i| {
            sender
                .event(baseaim_worker::sim::stripe::EVENT_TYPES[i % 5])
                .unwrap()
        })
        .collect();
    let sends = std::iter::once(&stored_first)
        .chain(&new)
        .map(|event| sender.send(&intake.url, event));
    let statuses = futures::future::join_all(sends).await;
    assert!(statuses.iter().all(|s| *s == Some(200)), "{statuses:?}");
    assert_eq!(stored(&db.pool).await, (21, 21));
    for event in std::iter::once(&stored_first).chain(&new) {
        let jobs: i64 =
            sqlx::query_scalar("select count(*) from jobs where args->>'event_id' = $1")
                .bind(&event.id)
                .fetch_one(&db.pool)
                .await
                .unwrap();
        assert_eq!(jobs, 1, "{}", event.id);
    }
    // Later deliveries, after the intake has gone back to its fast path, are stored too.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let later = sender.event("invoice.paid").unwrap();
    assert_eq!(sender.send(&intake.url, &later).await, Some(200));
    assert_eq!(sender.send(&intake.url, &stored_first).await, Some(200));
    assert_eq!(stored(&db.pool).await, (22, 22));
    // Operators see both paths in /metrics (process-wide counters: other tests add to them).
    let token = baseaim_worker::auth::tokens::create(&db.pool, "metrics", &["admin:read"])
        .await
        .unwrap();
    let metrics = reqwest::Client::new()
        .get(intake.url.replace("/webhooks/stripe", "/metrics"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for path in ["copy", "statement"] {
        for name in [
            "baw_stripe_commits_total",
            "baw_stripe_committed_events_total",
        ] {
            let needle = format!("{name}{{path=\"{path}\"}} ");
            assert!(
                metrics.contains(&needle),
                "missing `{needle}` in:\n{metrics}"
            );
        }
    }
}

/// An unfinished job already holds a new event's unique key (a replay enqueued by hand for an
/// event the log had pruned, say): the event is stored, and that job stays the only one.
#[tokio::test]
async fn a_new_event_whose_job_key_is_held_is_stored_without_a_second_job() {
    use baseaim_worker::jobs::stripe_event::StripeEvent;
    use baseaim_worker::queue::{NewJob, enqueue};
    let db = TestDb::new().await;
    let intake = Intake::start(db.pool.clone(), vec![]).await;
    let sender = WebhookSender::new(SECRET);
    let event = sender.event("invoice.paid").unwrap();
    let job = NewJob::of(&StripeEvent {
        event_id: event.id.clone(),
    })
    .unwrap();
    enqueue(&db.pool, job).await.unwrap();
    assert_eq!(sender.send(&intake.url, &event).await, Some(200));
    assert_eq!(stored(&db.pool).await, (1, 1));
    let status: String = sqlx::query_scalar("select status from stripe_events where id = $1")
        .bind(&event.id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(status, "received");
}

#[tokio::test]
async fn bad_deliveries_get_4xx_and_store_nothing() {
    let db = TestDb::new().await;
    let intake = Intake::start(db.pool.clone(), vec![]).await;
    let sender = WebhookSender::new(SECRET);
    let event = sender.event("invoice.paid").unwrap();
    let url = &intake.url;

    let wrong = sender
        .send_with(
            url,
            &event,
            Signing::WrongSecret("whsec_someone_else".into()),
        )
        .await;
    assert_eq!(wrong, Some(400), "wrong secret");
    let stale = sender
        .send_with(url, &event, Signing::Stale(Duration::from_secs(301)))
        .await;
    assert_eq!(stale, Some(400), "stale timestamp");
    assert_eq!(
        sender.send_with(url, &event, Signing::Unsigned).await,
        Some(400),
        "missing header"
    );

    // Signed for other bytes: the body was tampered with.
    let tampered = event.payload().replace("\"paid\"", "\"void\"");
    assert_ne!(tampered, event.payload());
    assert_eq!(
        post(url, tampered, Some(signed(event.payload()))).await,
        400,
        "bad signature"
    );
    assert_eq!(
        post(url, event.payload().to_owned(), Some("t=abc,v1=zz".into())).await,
        400
    );

    // Validly signed, but not JSON / not an event.
    let junk = "{\"id\": \"evt_1\", \"type\": ";
    assert_eq!(
        post(url, junk, Some(signed(junk))).await,
        400,
        "malformed JSON"
    );
    let not_event = "{\"hello\": \"world\"}";
    assert_eq!(
        post(url, not_event, Some(signed(not_event))).await,
        400,
        "not an event"
    );

    // Over the 1 MiB default, validly signed.
    let object = serde_json::json!({"id": "in_big", "padding": "x".repeat(1024 * 1024)});
    let big = envelope(
        "evt_big",
        "invoice.paid",
        chrono::Utc::now().timestamp(),
        object,
    );
    assert_eq!(
        post(url, big.clone(), Some(signed(&big))).await,
        413,
        "oversized body"
    );

    assert_eq!(
        stored(&db.pool).await,
        (0, 0),
        "nothing stored for any of them"
    );
    // And the good one still goes through.
    assert_eq!(sender.send(url, &event).await, Some(200));
    assert_eq!(stored(&db.pool).await, (1, 1));
}

#[tokio::test]
async fn database_down_answers_503_and_stripes_retry_lands() {
    let db = TestDb::new().await;
    let proxy = PgProxy::start().await;
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_millis(500))
        .connect(&db.url_via(proxy.addr))
        .await
        .unwrap();
    let intake = Intake::start(pool, vec![]).await;
    let sender = WebhookSender::new(SECRET);
    let event = sender.event("customer.subscription.updated").unwrap();

    proxy.down();
    assert_eq!(sender.send(&intake.url, &event).await, Some(503));
    assert_eq!(sender.send(&intake.url, &event).await, Some(503));
    assert_eq!(
        count(&db.pool, "select count(*) from stripe_events").await,
        0
    );

    // Stripe keeps retrying; the database comes back during the retries.
    let up = async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        proxy.up();
    };
    let (status, ()) = tokio::join!(
        sender.send_with_retries(&intake.url, &event, 8, Duration::from_millis(200)),
        up
    );
    assert_eq!(status, Some(200));
    assert_eq!(stored(&db.pool).await, (1, 1));
    let statuses: Vec<_> = sender.deliveries().iter().map(|d| d.status).collect();
    assert!(
        statuses.contains(&Some(503)) && statuses.last() == Some(&Some(200)),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn concurrent_deliveries_share_commits_and_each_is_stored_once() {
    let db = TestDb::new().await;
    let intake = Intake::start(db.pool.clone(), vec![]).await;
    let sender = WebhookSender::new(SECRET);
    let events: Vec<_> = (0..60)
        .map(|i| {
            sender
                .event(baseaim_worker::sim::stripe::EVENT_TYPES[i % 5])
                .unwrap()
        })
        .collect();
    // Every event twice, all at once: duplicates land in the same batch or in another one.
    let sends = events
        .iter()
        .chain(events.iter())
        .map(|event| sender.send(&intake.url, event));
    let statuses = futures::future::join_all(sends).await;
    assert!(statuses.iter().all(|s| *s == Some(200)), "{statuses:?}");
    assert_eq!(stored(&db.pool).await, (60, 60));
    let report = intake.drain().await;
    assert_eq!(report.completed, 60, "{report:?}");
}

/// The intake's statement switches the jobs trigger's NOTIFY off (it would serialise the
/// committers' flushes) and its waker sends one notification after the commit instead: a listener
/// hears the job's queue exactly once per delivery, not twice.
#[tokio::test]
async fn a_delivery_wakes_listeners_once_from_the_waker_not_from_the_trigger() {
    use sqlx::postgres::PgListener;
    let db = TestDb::new().await;
    let mut listener = PgListener::connect_with(&db.pool).await.unwrap();
    listener.listen("baw_jobs").await.unwrap();
    let intake = Intake::start(db.pool.clone(), vec![]).await;
    let sender = WebhookSender::new(SECRET);
    let event = sender.event("invoice.paid").unwrap();
    assert_eq!(sender.send(&intake.url, &event).await, Some(200));
    let first = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .expect("the waker notifies after the commit")
        .unwrap();
    assert_eq!(first.payload(), "default");
    let second = tokio::time::timeout(Duration::from_millis(500), listener.recv()).await;
    assert!(
        second.is_err(),
        "a second notification arrived: the insert was not quiet ({:?})",
        second.map(|n| n.map(|n| n.payload().to_owned()))
    );
    // An enqueue from SQL (the web app) still wakes the workers through the trigger.
    sqlx::query("insert into jobs (kind, queue) values ('noop', 'default')")
        .execute(&db.pool)
        .await
        .unwrap();
    let third = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .expect("the trigger notifies an ordinary insert")
        .unwrap();
    assert_eq!(third.payload(), "default");
}

/// Posts `payload`, validly signed; the status and the body.
async fn post_signed(url: &str, payload: &str) -> (u16, String) {
    let response = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json; charset=utf-8")
        .header("stripe-signature", signed(payload))
        .body(payload.to_owned())
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// Validly signed envelopes the database cannot store, or whose id is no Stripe event id: each
/// refused 400 naming the field (they used to reach the shared commit and fail it: 500).
#[tokio::test]
async fn a_signed_event_with_an_unstorable_envelope_is_400_naming_the_field() {
    let db = TestDb::new().await;
    let intake = Intake::start(db.pool.clone(), vec![]).await;
    let now = chrono::Utc::now().timestamp();
    let object = sample_object("invoice.paid");
    let with_api_version = |version: &str| {
        let mut event: serde_json::Value = serde_json::from_str(&envelope(
            "evt_version",
            "invoice.paid",
            now,
            object.clone(),
        ))
        .unwrap();
        event["api_version"] = serde_json::json!(version);
        event.to_string()
    };
    let cases = [
        (
            envelope(
                &format!("evt_{}", noise(6000)),
                "invoice.paid",
                now,
                object.clone(),
            ),
            "`id`",
        ),
        (
            envelope("evt_a\u{0}b", "invoice.paid", now, object.clone()),
            "`id`",
        ),
        (
            envelope("in_1", "invoice.paid", now, object.clone()),
            "`id`",
        ),
        (
            envelope("evt_", "invoice.paid", now, object.clone()),
            "`id`",
        ),
        (
            envelope("evt_a-b", "invoice.paid", now, object.clone()),
            "`id`",
        ),
        (
            envelope("evt_nul_type", "invoice.\u{0}paid", now, object.clone()),
            "`type`",
        ),
        (
            envelope("evt_long_type", &noise(6000), now, object.clone()),
            "`type`",
        ),
        (with_api_version("2026-08-26\u{0}"), "`api_version`"),
    ];
    for (payload, field) in &cases {
        let (status, body) = post_signed(&intake.url, payload).await;
        assert_eq!(status, 400, "{field}: {body}");
        assert!(body.contains(field), "{field} not named: {body}");
        assert!(body.len() < 200, "the answer echoes the input: {body}");
    }
    assert_eq!(stored(&db.pool).await, (0, 0), "nothing stored");
    // The longest id we take is stored like any other.
    let longest = format!("evt_{}", noise(255));
    let payload = envelope(&longest, "invoice.paid", now, object);
    assert_eq!(post_signed(&intake.url, &payload).await.0, 200);
    assert_eq!(stored(&db.pool).await, (1, 1));
}

/// A delivery the database would refuse, arriving with good ones: it is refused alone, the good
/// ones in flight with it are stored (a batch fails whole, so it used to fail them too).
#[tokio::test]
async fn a_bad_event_delivered_alongside_good_ones_does_not_fail_them() {
    let db = TestDb::new().await;
    let intake = Intake::start(db.pool.clone(), vec![]).await;
    let sender = WebhookSender::new(SECRET);
    let good: Vec<_> = (0..60)
        .map(|i| {
            sender
                .event(baseaim_worker::sim::stripe::EVENT_TYPES[i % 5])
                .unwrap()
        })
        .collect();
    let now = chrono::Utc::now().timestamp();
    let bad: Vec<String> = (0..20)
        .map(|i| {
            envelope(
                &format!("evt_bad{i}"),
                "invoice.\u{0}paid",
                now,
                sample_object("invoice.paid"),
            )
        })
        .collect();
    let good_sends = futures::future::join_all(good.iter().map(|e| sender.send(&intake.url, e)));
    let bad_sends = futures::future::join_all(bad.iter().map(|p| post_signed(&intake.url, p)));
    let (good_statuses, bad_answers) = tokio::join!(good_sends, bad_sends);
    assert!(
        good_statuses.iter().all(|s| *s == Some(200)),
        "{good_statuses:?}"
    );
    assert!(
        bad_answers.iter().all(|(s, _)| *s == 400),
        "{bad_answers:?}"
    );
    assert_eq!(stored(&db.pool).await, (60, 60));
}
