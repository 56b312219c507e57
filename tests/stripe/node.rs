//! The wiring: a real node (HTTP intake + engine) takes a Stripe webhook end to end, answers 503
//! while it has no webhook secret, and `baseaim-worker stripe replay` works from the shell.

use std::time::Duration;

use baseaim_worker::app::Node;
use baseaim_worker::cli::Role;
use baseaim_worker::config::{Config, SecretString, Secrets};
use baseaim_worker::sim::stripe::WebhookSender;
use tokio_util::sync::CancellationToken;

use crate::support::{TestDb, eventually};
use crate::{SECRET, count};

async fn node(db: &TestDb, secrets: Secrets) -> (Node, CancellationToken) {
    node_polling(db, secrets, "100ms").await
}

async fn node_polling(db: &TestDb, secrets: Secrets, poll: &str) -> (Node, CancellationToken) {
    let env = vec![
        ("DATABASE_URL".to_string(), db.url.clone()),
        ("BAW__HTTP__BIND".to_string(), "127.0.0.1:0".to_string()),
        ("BAW__WORKER__POLL_INTERVAL".to_string(), poll.to_string()),
    ];
    let config = Config::load_from(None, env).unwrap();
    let stop = CancellationToken::new();
    let node = Node::start(config, secrets, Role::All, true, stop.clone())
        .await
        .unwrap();
    (node, stop)
}

/// The intake inserts its jobs without the trigger's NOTIFY (it would serialise the commits) and
/// wakes the workers itself: an idle node whose slow poll is a minute away still applies the
/// event at once.
#[tokio::test]
async fn a_webhook_wakes_idle_workers_without_waiting_for_the_poll() {
    let db = TestDb::new().await;
    let secrets = Secrets {
        stripe_webhook_secret: Some(SecretString::from(SECRET)),
        ..Secrets::default()
    };
    let (node, stop) = node_polling(&db, secrets, "60s").await;
    let url = format!(
        "http://{}/webhooks/stripe",
        node.addr.expect("a node of role all listens")
    );
    let sender = WebhookSender::new(SECRET);
    // Let the node's first look at the queues pass, so only a wake-up can find the job.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for event_type in ["customer.subscription.updated", "invoice.paid"] {
        let event = sender.event(event_type).unwrap();
        assert_eq!(sender.send(&url, &event).await, Some(200));
    }
    eventually(5, "the engine applied both events", || async {
        count(
            &db.pool,
            "select count(*) from stripe_events where status = 'processed'",
        )
        .await
            == 2
    })
    .await;
    stop.cancel();
    node.stop().await.unwrap();
}

#[tokio::test]
async fn a_running_node_verifies_stores_and_applies_a_webhook() {
    let db = TestDb::new().await;
    let secrets = Secrets {
        stripe_webhook_secret: Some(SecretString::from(SECRET)),
        ..Secrets::default()
    };
    let (node, stop) = node(&db, secrets).await;
    let url = format!(
        "http://{}/webhooks/stripe",
        node.addr.expect("a node of role all listens")
    );
    let sender = WebhookSender::new(SECRET);
    let event = sender.event("customer.subscription.updated").unwrap();
    let forged = WebhookSender::new("whsec_forger");
    assert_eq!(forged.send(&url, &event).await, Some(400));
    assert_eq!(sender.send(&url, &event).await, Some(200));
    eventually(10, "the engine applied the event", || async {
        count(
            &db.pool,
            "select count(*) from subscriptions where status = 'active'",
        )
        .await
            == 1
    })
    .await;
    let status: String = sqlx::query_scalar("select status from stripe_events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(status, "processed");
    stop.cancel();
    node.stop().await.unwrap();
}

#[tokio::test]
async fn without_a_webhook_secret_deliveries_get_503_and_are_not_stored() {
    let db = TestDb::new().await;
    let (node, stop) = node(&db, Secrets::default()).await;
    let url = format!(
        "http://{}/webhooks/stripe",
        node.addr.expect("a node of role all listens")
    );
    let sender = WebhookSender::new(SECRET);
    let event = sender.event("invoice.paid").unwrap();
    assert_eq!(
        sender.send(&url, &event).await,
        Some(503),
        "Stripe retries later"
    );
    assert_eq!(
        count(&db.pool, "select count(*) from stripe_events").await,
        0
    );
    stop.cancel();
    node.stop().await.unwrap();
}

#[tokio::test]
async fn stripe_replay_from_the_command_line() {
    let db = TestDb::new().await;
    let payload = crate::envelope(
        "evt_cli_1",
        "customer.subscription.updated",
        chrono::Utc::now().timestamp(),
        crate::sample_object("customer.subscription.updated"),
    );
    sqlx::query(
        "insert into stripe_events (id, type, created, payload, status)
         values ('evt_cli_1', 'customer.subscription.updated', 0, $1, 'processed')",
    )
    .bind(&payload)
    .execute(&db.pool)
    .await
    .unwrap();
    let run = |id: &'static str| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_baseaim-worker"))
            .args(["stripe", "replay", id])
            .env("DATABASE_URL", &db.url)
            .env_remove("BAW_CONFIG")
            .env("RUST_LOG", "warn")
            .output()
    };
    let out = tokio::time::timeout(Duration::from_secs(30), run("evt_cli_1"))
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("enqueued stripe_event job"), "{stdout}");
    baseaim_worker::queue::testing::assert_enqueued(
        &db.pool,
        "stripe_event",
        serde_json::json!({"event_id": "evt_cli_1"}),
    )
    .await;

    let out = run("evt_nope").await.unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no stored Stripe event evt_nope"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
