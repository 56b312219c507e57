//! Three nodes share Resend's 2 requests/s through the cluster-wide `resend` bucket.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use baseaim_worker::jobs::send_email::{SendEmail, enqueue_email};
use baseaim_worker::queue::{Engine, EngineConfig};
use baseaim_worker::sim::resend::{ResendConfig, ResendSim};

use crate::common::{config_for, payment_failed_data, secrets_for, setup_with};
use crate::support::eventually;

#[tokio::test]
async fn three_engines_together_stay_under_resends_limit() {
    // Resend's default: 2 requests per second for the whole team. The config is the shipped
    // default (`[rate_limits.resend]`, `[queues.email]`), only the API base is the simulator's.
    let sim = ResendSim::start(ResendConfig::default()).await.unwrap();
    let config = config_for(&sim);
    let limit = &config.rate_limits["resend"];
    let interval = limit.per.as_secs_f64() / limit.rate;
    let env = setup_with(sim, config, secrets_for).await;

    let total = 8;
    for n in 0..total {
        let email = SendEmail {
            template: "payment_failed".into(),
            to: format!("client{n}@example.com"),
            data: payment_failed_data(),
            reply_to: None,
            tags: Vec::new(),
            scheduled_at: None,
        };
        enqueue_email(
            &env.db.pool,
            email,
            Some(&format!("email:payment_failed:in_{n}")),
        )
        .await
        .unwrap();
    }
    let started = Instant::now();
    let mut engines = Vec::new();
    for _ in 0..3 {
        let mut engine_config = EngineConfig::from_config(&env.state.config, "all");
        engine_config.poll_interval = Duration::from_millis(200);
        engine_config.maintenance = None;
        engines.push(
            Engine::start(
                env.db.pool.clone(),
                baseaim_worker::jobs::registry(),
                env.state.clone(),
                engine_config,
            )
            .await
            .unwrap(),
        );
    }

    eventually(30, "every email sent", || async {
        env.sim.emails().len() >= total
    })
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    for engine in engines {
        engine.shutdown().await;
    }

    assert_eq!(env.sim.rate_limit_hits(), 0, "Resend answered 429");
    let emails = env.sim.emails();
    let recipients: BTreeSet<_> = emails.iter().map(|e| e.to[0].clone()).collect();
    assert_eq!(
        (emails.len(), recipients.len()),
        (total, total),
        "each once"
    );
    // Paced by the bucket, not by slots (12 slots would send all eight at once).
    let least = (total - 1) as f64 * interval * 0.9;
    assert!(
        elapsed >= least,
        "{total} emails in {elapsed:.2}s: faster than the bucket allows ({least:.2}s)"
    );
    let sent: i64 = sqlx::query_scalar("select count(*) from email_log where status = 'sent'")
        .fetch_one(&env.db.pool)
        .await
        .unwrap();
    assert_eq!(sent, total as i64);
}
