//! `load`: sustained Stripe webhook intake at half the maximum, for 60 s, while the same node's
//! workers apply the events. One node with every role (`Node::start`, as `serve` runs it) on a
//! fresh database; signed `invoice.paid` events, each for an invoice of its own, posted over
//! keep-alive connections.
//!
//! First the maximum is measured in this run: 64 closed-loop senders for 5 s (workers draining
//! meanwhile, as in production). Then requests start on a fixed schedule at half that rate for
//! `BENCH_LOAD_SECONDS` (default 60), whatever the answers do (open loop). Every answer must be a
//! 200; the resident memory of this process (the node, plus the senders) is sampled every 5 s.
//! Last line: `rate_per_s`, `sent`, `errors`, `p50_ms`/`p99_ms`, `rss_start_mib`/`rss_end_mib`/
//! `rss_max_mib`, the job backlog at the end of the intake and how long the workers took to
//! drain it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use baseaim_worker::app::Node;
use baseaim_worker::cli::Role;
use baseaim_worker::config::{Config, SecretString, Secrets};
use baseaim_worker::sim::stripe::{WebhookSender, signature};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{BenchDb, percentile};

const SECRET: &str = "whsec_bench_load";
const SENDERS: usize = 64;

fn rss_mib() -> f64 {
    (super::status_kib("VmRSS:") as f64 / 1024.0 * 10.0).round() / 10.0
}

pub async fn run() -> anyhow::Result<()> {
    let seconds: u64 = std::env::var("BENCH_LOAD_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let db = BenchDb::create().await?;
    let pool = db.pool(5).await?;
    let config = Config::load_from(
        None,
        vec![
            ("DATABASE_URL".to_owned(), db.url.clone()),
            ("BAW__HTTP__BIND".to_owned(), "127.0.0.1:0".to_owned()),
            ("BAW__LOG__LEVEL".to_owned(), "warn".to_owned()),
        ],
    )?;
    let secrets = Secrets {
        stripe_webhook_secret: Some(SecretString::from(SECRET)),
        ..Secrets::default()
    };
    let stop = CancellationToken::new();
    let node = Node::start(config, secrets, Role::All, false, stop.clone()).await?;
    let url = format!(
        "http://{}/webhooks/stripe",
        node.addr.context("a node of role all listens")?
    );

    // Each event for an invoice of its own, so the workers write distinct rows.
    let template = WebhookSender::new(SECRET)
        .event("invoice.paid")
        .context("sample event")?;
    let invoice_id = template.value()["data"]["object"]["id"]
        .as_str()
        .context("sample invoice id")?
        .to_owned();
    let make = move |i: u64| {
        let payload = template
            .payload()
            .replacen(&template.id, &format!("evt_load{i:012}"), 1)
            .replace(&invoice_id, &format!("in_load{i:012}"));
        let t = chrono::Utc::now().timestamp();
        let header = format!("t={t},v1={}", signature(SECRET, t, &payload));
        (payload, header)
    };
    let make = Arc::new(make);
    let client = baseaim_worker::tls::http_client_builder()
        .pool_max_idle_per_host(SENDERS * 4)
        .timeout(Duration::from_secs(30))
        .build()?;
    let errors = Arc::new(AtomicU64::new(0));
    let post = {
        let (client, url, errors) = (client.clone(), url.clone(), errors.clone());
        move |(payload, header): (String, String)| {
            let (client, url, errors) = (client.clone(), url.clone(), errors.clone());
            async move {
                let t = Instant::now();
                let ok = client
                    .post(&url)
                    .header("content-type", "application/json; charset=utf-8")
                    .header("stripe-signature", header)
                    .body(payload)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                t.elapsed().as_secs_f64() * 1000.0
            }
        }
    };

    // The maximum, measured now (closed loop, workers draining meanwhile).
    let next = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..SENDERS {
        let (next, make, post) = (next.clone(), make.clone(), post.clone());
        senders.spawn(async move {
            while t0.elapsed() < Duration::from_secs(5) {
                let i = next.fetch_add(1, Ordering::Relaxed);
                post(make(i)).await;
            }
        });
    }
    while senders.join_next().await.is_some() {}
    let max_per_s = next.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64();
    let saturation_errors = errors.swap(0, Ordering::Relaxed);
    println!(
        "{}",
        json!({"phase": "maximum", "acked_per_s": max_per_s.round(), "errors": saturation_errors})
    );
    // Let the workers catch up before the sustained phase starts from a level field.
    drain(&pool, Duration::from_secs(120)).await?;

    // Half of it, sustained, open loop; RSS sampled every 5 s.
    let rate = max_per_s / 2.0;
    let total = (rate * seconds as f64) as u64;
    let rss_start = rss_mib();
    let rss_samples = Arc::new(std::sync::Mutex::new(vec![rss_start]));
    let sampler = {
        let samples = rss_samples.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                samples.lock().unwrap().push(rss_mib());
            }
        })
    };
    let first = next.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let mut inflight = tokio::task::JoinSet::new();
    let mut latencies = Vec::with_capacity(total as usize);
    for k in 0..total {
        let due = t0 + Duration::from_secs_f64(k as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        inflight.spawn(post(make(first + k)));
        while let Some(done) = inflight.try_join_next() {
            latencies.push(done?);
        }
        if k % (rate as u64).max(1) == 0 && k > 0 {
            println!(
                "{}",
                json!({"phase": "sustained", "second": k / (rate as u64).max(1), "sent": k,
                       "errors": errors.load(Ordering::Relaxed), "rss_mib": rss_mib()})
            );
        }
    }
    while let Some(done) = inflight.join_next().await {
        latencies.push(done?);
    }
    let intake_seconds = t0.elapsed().as_secs_f64();
    let rss_end = rss_mib();
    sampler.abort();
    let backlog: i64 = sqlx::query_scalar(
        "select count(*) from jobs where state not in ('completed', 'discarded', 'cancelled')",
    )
    .fetch_one(&pool)
    .await?;
    let drained_in = drain(&pool, Duration::from_secs(300)).await?;
    let stored: i64 = sqlx::query_scalar("select count(*) from stripe_events")
        .fetch_one(&pool)
        .await?;
    let applied: i64 = sqlx::query_scalar("select count(*) from invoices where status = 'PAID'")
        .fetch_one(&pool)
        .await?;
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let rss_max = rss_samples
        .lock()
        .unwrap()
        .iter()
        .copied()
        .fold(rss_end, f64::max);
    let errors = errors.load(Ordering::Relaxed);

    stop.cancel();
    node.stop().await?;
    pool.close().await;
    db.drop_db().await?;
    println!(
        "{}",
        json!({
            "max_acked_per_s": max_per_s.round(),
            "rate_per_s": rate.round(),
            "seconds": (intake_seconds * 10.0).round() / 10.0,
            "sent": total,
            "errors": errors,
            "p50_ms": (percentile(&latencies, 0.5) * 100.0).round() / 100.0,
            "p99_ms": (percentile(&latencies, 0.99) * 100.0).round() / 100.0,
            "rss_start_mib": rss_start,
            "rss_end_mib": rss_end,
            "rss_max_mib": rss_max,
            "backlog_at_end": backlog,
            "drained_after_s": (drained_in.as_secs_f64() * 10.0).round() / 10.0,
            "events_stored": stored,
            "invoices_applied": applied,
        })
    );
    anyhow::ensure!(errors == 0, "{errors} requests were not answered 200");
    Ok(())
}

/// Waits until no job is unfinished; returns how long that took.
async fn drain(pool: &sqlx::PgPool, limit: Duration) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    loop {
        let left: i64 = sqlx::query_scalar(
            "select count(*) from jobs where state not in ('completed', 'discarded', 'cancelled')",
        )
        .fetch_one(pool)
        .await?;
        if left == 0 {
            return Ok(t0.elapsed());
        }
        anyhow::ensure!(
            t0.elapsed() < limit,
            "{left} jobs still unfinished after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
