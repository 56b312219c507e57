//! Benchmark programs: `cargo run --release --bin bench -- <name>`. Each prints progress lines
//! and, last, one JSON object with its figures. Each runs on a fresh database of its own on the
//! server at `BENCH_DATABASE_URL` (default postgres://root@127.0.0.1:5432), dropped at the end.
//!
//! - `intake`: signed Stripe webhooks against the real intake: acknowledged events/s, latency
//!   at half that rate, and the database's single-row commit rate in the same run; the store
//!   and the HTTP path alone, each with its CPU per event, and the bound they set together.
//! - `queue`: bulk enqueue, processing throughput, idle latency, and the SQL ceiling measured in
//!   the same run on the same database.
//! - `facebook`: the Facebook insights sync of 1,000 ad accounts x 20 campaigns x 7 days against
//!   the simulator (50 ms per call, 100 rows a page) through the real engine and jobs.
//! - `dashboard`: every dashboard page with 1,000,000 finished jobs in the table (dashboard.rs).
//! - `load`: sustained webhook intake at half the maximum for 60 s while workers drain (load.rs).
//!
//! A benchmark that needs more than a screen lives in a module of its own beside this file.

mod dashboard;
mod drive;
mod intake;
mod load;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use baseaim_worker::queue::{
    Engine, EngineConfig, Job, JobArgs, JobContext, JobResult, NewJob, Registry, enqueue,
    enqueue_many,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::Notify;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    baseaim_worker::tls::install_crypto_provider();
    if std::env::var_os("BENCH_VERBOSE").is_some() {
        baseaim_worker::telemetry::init(baseaim_worker::config::LogFormat::Text, "debug");
    }
    let name = std::env::args().nth(1).unwrap_or_default();
    match name.as_str() {
        "queue" => queue().await,
        "queue-latency" => queue_latency().await,
        "intake" => intake::run().await,
        "facebook" => facebook().await,
        "email" => email().await,
        "load" => load::run().await,
        "dashboard" => dashboard::run().await,
        "drive" => drive::run().await,
        other => {
            anyhow::bail!(
                "unknown benchmark `{other}`; available: queue, queue-latency, intake, facebook, email, load, dashboard, drive"
            )
        }
    }
}

fn server_url() -> String {
    std::env::var("BENCH_DATABASE_URL").unwrap_or_else(|_| "postgres://root@127.0.0.1:5432".into())
}

/// A node's HTTP surface, as `serve` builds it, on a free loopback port.
struct HttpNode {
    addr: std::net::SocketAddr,
    /// The state the router serves with (its copies share the webhook committers).
    state: baseaim_worker::http::HttpState,
    /// Stops the server and the database health check.
    stop: tokio_util::sync::CancellationToken,
}

impl HttpNode {
    async fn start(
        pool: &PgPool,
        secrets: baseaim_worker::config::Secrets,
    ) -> anyhow::Result<Self> {
        use baseaim_worker::http::{self, HttpState};
        let stop = tokio_util::sync::CancellationToken::new();
        let health = baseaim_worker::db::DbHealth::spawn(
            pool.clone(),
            Duration::from_secs(1),
            stop.child_token(),
        );
        let config = baseaim_worker::config::Config::load_from(None, vec![])?;
        let app =
            baseaim_worker::jobs::AppState::new(pool.clone(), Arc::new(config), Arc::new(secrets))?;
        let state = HttpState::new(app, health);
        let router = http::router(state.clone());
        let (addr, _server) = http::serve("127.0.0.1:0".parse()?, router, stop.clone()).await?;
        Ok(HttpNode { addr, state, stop })
    }
}

/// A fresh migrated database, dropped when done.
struct BenchDb {
    name: String,
    url: String,
}

impl BenchDb {
    async fn create() -> anyhow::Result<Self> {
        let name = format!("baw_bench_{:08x}", rand::random::<u32>());
        let mut admin = PgConnection::connect(&format!("{}/postgres", server_url()))
            .await
            .context("connect")?;
        sqlx::query(sqlx::AssertSqlSafe(format!("create database {name}")))
            .execute(&mut admin)
            .await?;
        // Plain TCP to a loopback server, as Graphile Worker's node-postgres connects by
        // default: TLS on loopback is CPU spent on nothing (BENCH_DATABASE_URL can say otherwise).
        let url = format!("{}/{name}", server_url());
        let url = if url.contains("127.0.0.1") || url.contains("localhost") {
            format!("{url}?sslmode=disable")
        } else {
            url
        };
        let pool = PgPool::connect(&url).await?;
        baseaim_worker::db::migrate(&pool).await?;
        pool.close().await;
        Ok(BenchDb { name, url })
    }

    async fn pool(&self, connections: u32) -> anyhow::Result<PgPool> {
        Ok(baseaim_worker::db::pool_options(connections)
            .connect(&self.url)
            .await?)
    }

    async fn drop_db(self) -> anyhow::Result<()> {
        let mut admin = PgConnection::connect(&format!("{}/postgres", server_url())).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "drop database {} with (force)",
            self.name
        )))
        .execute(&mut admin)
        .await?;
        Ok(())
    }
}

/// Counts runs and tells the bench when the expected number is reached.
#[derive(Clone, Default)]
struct Tally {
    done: Arc<AtomicUsize>,
    target: Arc<AtomicUsize>,
    reached: Arc<Notify>,
    started: Arc<std::sync::Mutex<Vec<Instant>>>,
    /// Notified at each start while `record_start` is on.
    on_start: Arc<Notify>,
    record_start: Arc<std::sync::atomic::AtomicBool>,
}

/// The benchmark's no-op: completes at once (counting itself).
#[derive(Serialize, Deserialize)]
struct BenchNoop {}

impl JobArgs for BenchNoop {
    const KIND: &'static str = "bench_noop";
}

impl Job<Tally> for BenchNoop {
    async fn perform(self, ctx: JobContext<Tally>) -> JobResult {
        let tally = &ctx.state;
        if tally.record_start.load(Ordering::Relaxed) {
            tally.started.lock().unwrap().push(Instant::now());
            tally.on_start.notify_one();
        }
        let n = tally.done.fetch_add(1, Ordering::AcqRel) + 1;
        if n == tally.target.load(Ordering::Acquire) {
            tally.reached.notify_one();
        }
        Ok(None)
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    xs[xs.len() / 2]
}

/// A `/proc/self/status` figure in KiB (`VmRSS:`, `VmHWM:`), 0 if unreadable.
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse().ok())
        })
        .unwrap_or(0)
}

/// User + system CPU seconds of process `pid` (`self` for this one) from `/proc/<pid>/stat`.
fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) in parentheses: utime is the 14th
    // field of the line, stime the 15th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Clock ticks: 100 per second on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds of every process named `postgres` on this machine (the server and its backends;
/// a backend that exited in between is missed, so keep connections open across a measure).
fn postgres_cpu_seconds() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim_end() == "postgres")
        })
        .map(|pid| cpu_seconds(&pid))
        .sum()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

const JOBS: usize = 20_000;
const ROUNDS: usize = 3;

async fn queue() -> anyhow::Result<()> {
    let db = BenchDb::create().await?;
    let pool = db.pool(20).await?;
    let noops = || {
        (0..JOBS)
            .map(|_| NewJob::of(&BenchNoop {}).unwrap())
            .collect::<Vec<_>>()
    };

    // Bulk enqueue: 20,000 jobs as `enqueue_many` calls of 5,000 (one statement each), from one
    // task (one connection) and from four concurrent tasks (four connections).
    let mut bulk_by_tasks = Vec::new();
    for tasks in [1usize, 4] {
        let mut rates = Vec::new();
        for _ in 0..ROUNDS {
            sqlx::query("truncate jobs").execute(&pool).await?;
            let chunks: Vec<Vec<NewJob>> = noops().chunks(5_000).map(|c| c.to_vec()).collect();
            let per_task = chunks.len() / tasks;
            let mut chunks = chunks.into_iter();
            let t0 = Instant::now();
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..tasks {
                let mine: Vec<Vec<NewJob>> = chunks.by_ref().take(per_task).collect();
                let pool = pool.clone();
                set.spawn(async move {
                    for chunk in mine {
                        enqueue_many(&pool, chunk).await?;
                    }
                    Ok::<_, baseaim_worker::queue::EnqueueError>(())
                });
            }
            while let Some(done) = set.join_next().await {
                done??;
            }
            rates.push(JOBS as f64 / t0.elapsed().as_secs_f64());
            let n: i64 = sqlx::query_scalar("select count(*) from jobs")
                .fetch_one(&pool)
                .await?;
            anyhow::ensure!(n as usize == JOBS, "{n} jobs enqueued");
        }
        let rate = median(rates);
        println!(
            "{}",
            json!({"phase": "bulk_enqueue", "jobs": JOBS, "tasks": tasks, "per_s": rate.round()})
        );
        bulk_by_tasks.push(rate);
    }
    let bulk_enqueue_per_s = bulk_by_tasks.iter().copied().fold(0.0, f64::max);

    // Processing: drain 20,000 pre-inserted no-ops with one engine, per configuration.
    let configs = [(100usize, 100usize), (400, 400), (1000, 500), (2000, 1000)];
    let mut best = (0.0f64, (0, 0));
    for &(concurrency, batch) in &configs {
        let mut rates = Vec::new();
        for _ in 0..ROUNDS {
            sqlx::query("truncate jobs").execute(&pool).await?;
            enqueue_many(&pool, noops()).await?;
            sqlx::query("vacuum analyze jobs").execute(&pool).await?;
            let tally = Tally::default();
            tally.target.store(JOBS, Ordering::Release);
            let mut registry = Registry::new();
            registry.register::<BenchNoop>();
            // The engine starts on a paused queue (its connections, listener and node row
            // set up), and the clock starts when the queue is resumed: the measure is draining,
            // as the ceiling's is. Stopping (every finish written) is inside it.
            baseaim_worker::queue::admin::pause(&pool, "default").await?;
            let engine = Engine::start(
                pool.clone(),
                registry,
                tally.clone(),
                engine_config(concurrency, batch),
            )
            .await?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let t0 = Instant::now();
            baseaim_worker::queue::admin::resume(&pool, "default").await?;
            tally.reached.notified().await;
            let ran = t0.elapsed();
            // Finished only when every finish is written.
            engine.shutdown().await;
            if std::env::var_os("BENCH_VERBOSE").is_some() {
                eprintln!("ran all in {ran:?}, shut down after {:?}", t0.elapsed());
            }
            let elapsed = t0.elapsed().as_secs_f64();
            let left: i64 =
                sqlx::query_scalar("select count(*) from jobs where state <> 'completed'")
                    .fetch_one(&pool)
                    .await?;
            anyhow::ensure!(left == 0, "{left} jobs not completed");
            rates.push(JOBS as f64 / elapsed);
        }
        let rate = median(rates);
        println!(
            "{}",
            json!({"phase": "process", "concurrency": concurrency, "claim_batch": batch, "per_s": rate.round()})
        );
        if rate > best.0 {
            best = (rate, (concurrency, batch));
        }
    }
    let process_per_s = best.0;

    let (p50, p99) = latency(&pool).await?;

    // Ceiling: the minimal SQL per job on the same table: claim 100 with SKIP LOCKED, mark the
    // 100 done, over 10 connections, on 20,000 pre-inserted rows.
    let mut ceilings = Vec::new();
    for _ in 0..ROUNDS {
        sqlx::query("truncate jobs").execute(&pool).await?;
        enqueue_many(&pool, noops()).await?;
        sqlx::query("vacuum analyze jobs").execute(&pool).await?;
        let t0 = Instant::now();
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let pool = pool.clone();
            workers.spawn(async move {
                loop {
                    let ids: Vec<i64> = sqlx::query_scalar(
                        "with next as (select id from jobs where state = 'available' and queue = 'default'
                                       order by priority, run_at, id limit 100 for update skip locked)
                         update jobs j set state = 'running', attempt = j.attempt + 1
                         from next where j.id = next.id returning j.id",
                    )
                    .fetch_all(&pool)
                    .await?;
                    if ids.is_empty() {
                        return Ok::<_, sqlx::Error>(());
                    }
                    sqlx::query("update jobs set state = 'completed', finished_at = now() where id = any($1)")
                        .bind(&ids)
                        .execute(&pool)
                        .await?;
                }
            });
        }
        while let Some(r) = workers.join_next().await {
            r??;
        }
        ceilings.push(JOBS as f64 / t0.elapsed().as_secs_f64());
    }
    let ceiling_per_s = median(ceilings);
    println!(
        "{}",
        json!({"phase": "ceiling", "connections": 10, "per_s": ceiling_per_s.round()})
    );

    pool.close().await;
    db.drop_db().await?;
    println!(
        "{}",
        json!({
            "bench": "queue",
            "jobs": JOBS,
            "bulk_enqueue_per_s": bulk_enqueue_per_s.round(),
            "bulk_enqueue_one_connection_per_s": bulk_by_tasks[0].round(),
            "process_per_s": process_per_s.round(),
            "process_best_config": {"concurrency": best.1.0, "claim_batch": best.1.1},
            "ceiling_per_s": ceiling_per_s.round(),
            "process_to_ceiling": (process_per_s / ceiling_per_s * 100.0).round() / 100.0,
            "latency_p50_ms": (p50 * 100.0).round() / 100.0,
            "latency_p99_ms": (p99 * 100.0).round() / 100.0,
        })
    );
    Ok(())
}

/// Idle enqueue-to-start latency: an idle engine, 200 single jobs enqueued one after another.
/// Prints the split too: how long the enqueue call took, and the rest until `perform` started.
async fn latency(pool: &PgPool) -> anyhow::Result<(f64, f64)> {
    sqlx::query("truncate jobs").execute(pool).await?;
    let tally = Tally::default();
    tally.record_start.store(true, Ordering::Relaxed);
    tally.target.store(usize::MAX, Ordering::Release);
    let mut registry = Registry::new();
    registry.register::<BenchNoop>();
    let engine =
        Engine::start(pool.clone(), registry, tally.clone(), engine_config(10, 10)).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut latencies, mut enqueues) = (Vec::new(), Vec::new());
    for i in 0..200 {
        let before = tally.started.lock().unwrap().len();
        let t0 = Instant::now();
        enqueue(pool, NewJob::of(&BenchNoop {})?).await?;
        enqueues.push(t0.elapsed().as_secs_f64() * 1000.0);
        while tally.started.lock().unwrap().len() <= before {
            if tokio::time::timeout(Duration::from_secs(5), tally.on_start.notified())
                .await
                .is_err()
            {
                anyhow::bail!("job {i} did not start within 5 s");
            }
        }
        let started = tally.started.lock().unwrap()[before];
        latencies.push(started.duration_since(t0).as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    engine.shutdown().await;
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    enqueues.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    println!(
        "{}",
        json!({"phase": "latency", "jobs": 200, "p50_ms": p50, "p99_ms": p99,
               "enqueue_p50_ms": percentile(&enqueues, 0.5)})
    );
    Ok((p50, p99))
}

/// Only the latency phase of `queue`, for working on the wake-up path.
async fn queue_latency() -> anyhow::Result<()> {
    let db = BenchDb::create().await?;
    let pool = db.pool(10).await?;
    let mut p50s = Vec::new();
    for _ in 0..ROUNDS {
        p50s.push(latency(&pool).await?.0);
    }
    pool.close().await;
    db.drop_db().await?;
    println!(
        "{}",
        json!({"bench": "queue-latency", "latency_p50_ms": median(p50s)})
    );
    Ok(())
}

fn engine_config(concurrency: usize, batch: usize) -> EngineConfig {
    let config =
        baseaim_worker::config::Config::load_from(None, Vec::new()).expect("default config");
    let mut engine = EngineConfig::from_config(&config, "bench");
    engine.queues = [("default".to_string(), concurrency)].into();
    engine.claim_batch = batch;
    engine.maintenance = None;
    engine
}

/// `facebook`: one `facebook_sync` tick over 1,000 clients, each an ad account of 20 campaigns
/// with delivery every day (7-day look-back: 140,000 rows), through the real engine, jobs and
/// config (queue `facebook`, `[rate_limits.facebook]`), against the Graph simulator with 50 ms
/// added per call and pages of 100 rows. Last line: `accounts`, `rows`, `seconds`,
/// `throttle_errors` (the simulator's per-account refusals), `peak_rss_mib` (VmHWM of this
/// process, which also hosts the simulator).
async fn facebook() -> anyhow::Result<()> {
    use baseaim_worker::config::{Config, SecretString, Secrets};
    use baseaim_worker::jobs::{self, AppState, FacebookSync};
    use baseaim_worker::sim::facebook::{FacebookConfig, FacebookDataSpec, FacebookSim};
    use baseaim_worker::sim::fault::FaultConfig;

    const ACCOUNTS: usize = 1000;
    const CAMPAIGNS: usize = 20;
    let db = BenchDb::create().await?;
    let pool = db.pool(40).await?;
    let sim = FacebookSim::start(FacebookConfig {
        data: FacebookDataSpec {
            accounts: ACCOUNTS,
            campaigns_per_account: CAMPAIGNS,
            omit_empty_days: false,
            ..FacebookDataSpec::default()
        },
        faults: FaultConfig {
            latency: Duration::from_millis(50),
            ..FaultConfig::default()
        },
        ..FacebookConfig::default()
    })
    .await?;
    let ids: Vec<String> = sim.accounts().into_iter().map(|a| a.id).collect();
    // Synced before: the 7-day look-back, not the 90-day backfill.
    sqlx::query(
        "insert into clients (id, name, email, facebook_ad_account_id, facebook_last_sync_at)
         select 'client-' || a, 'Client ' || a, 'c@example.com', a, now() - interval '30 minutes'
         from unnest($1::text[]) as a",
    )
    .bind(&ids)
    .execute(&pool)
    .await?;
    let config = Config::load_from(
        None,
        vec![
            (
                "BAW__FACEBOOK__API_BASE".to_string(),
                sim.base_url().to_string(),
            ),
            ("BAW__FACEBOOK__PAGE_SIZE".to_string(), "100".to_string()),
        ],
    )?;
    let secrets = Secrets {
        facebook_access_token: Some(SecretString::from(sim.access_token())),
        ..Secrets::default()
    };
    let mut engine_config = EngineConfig::from_config(&config, "bench");
    let concurrency = config.queues.get("facebook").map_or(16, |q| q.concurrency) as usize;
    engine_config.queues = [("facebook".to_string(), concurrency)].into();
    engine_config.maintenance = None;
    let state = AppState::new(pool.clone(), Arc::new(config), Arc::new(secrets))?;

    let t0 = Instant::now();
    let engine = Engine::start(pool.clone(), jobs::registry(), state, engine_config).await?;
    enqueue(
        &pool,
        NewJob::of(&FacebookSync {})?.unique_key("schedule:facebook_sync:bench"),
    )
    .await?;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let unfinished: i64 = sqlx::query_scalar(
            "select count(*) from jobs where state not in ('completed', 'discarded', 'cancelled')",
        )
        .fetch_one(&pool)
        .await?;
        if unfinished == 0 {
            break;
        }
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(600),
            "not done after 600 s"
        );
    }
    let seconds = t0.elapsed().as_secs_f64();
    engine.shutdown().await;
    let rows: i64 = sqlx::query_scalar("select count(*) from campaign_metrics")
        .fetch_one(&pool)
        .await?;
    let synced: i64 = sqlx::query_scalar(
        "select count(*) from jobs where kind = 'facebook_sync_account' and state = 'completed'",
    )
    .fetch_one(&pool)
    .await?;
    let peak_rss_mib = (status_kib("VmHWM:") as f64 / 1024.0).round();
    pool.close().await;
    db.drop_db().await?;
    println!(
        "{}",
        json!({
            "accounts": synced,
            "rows": rows,
            "seconds": (seconds * 100.0).round() / 100.0,
            "throttle_errors": sim.rate_limit_hits(),
            "peak_rss_mib": peak_rss_mib,
        })
    );
    Ok(())
}

/// `email`: 10,000 `send_email` jobs drained by three engines (own pools, shipped registry)
/// against the Resend simulator limited to 50 requests/s, paced by the cluster-wide `resend`
/// bucket. Knobs: `BENCH_EMAILS`; `BENCH_EMAIL_BUCKET_RATE` (per second, default 48) and
/// `BENCH_EMAIL_BURST` (default 1): rate + burst = 49, one under the most one provider window
/// takes, so a request delayed on its way out (up to one token interval) cannot make a third in
/// a window (tokens are reserved in order, so lateness loses none);
/// `BENCH_EMAIL_SLOTS` per engine (default 1: more slots mostly add snooze churn on the bucket
/// row, measured slower on 2 cores).
async fn email() -> anyhow::Result<()> {
    use baseaim_worker::config::{Config, RateLimitConfig, Secrets};
    use baseaim_worker::jobs::{self, AppState, send_email};
    use baseaim_worker::sim::resend::{ResendConfig, ResendSim};

    const LIMIT_PER_S: u32 = 50;
    let emails: usize = std::env::var("BENCH_EMAILS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let bucket_rate: f64 = std::env::var("BENCH_EMAIL_BUCKET_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48.0);

    let burst: f64 = std::env::var("BENCH_EMAIL_BURST")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    let slots: usize = std::env::var("BENCH_EMAIL_SLOTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);

    let db = BenchDb::create().await?;
    let sim = ResendSim::start(ResendConfig {
        rate_limit_per_second: LIMIT_PER_S,
        ..ResendConfig::default()
    })
    .await?;
    let mut config = Config::load_from(None, Vec::new()).expect("default config");
    config.resend.api_base = sim.base_url().to_owned();
    config.rate_limits.insert(
        "resend".into(),
        RateLimitConfig {
            rate: bucket_rate,
            per: Duration::from_secs(1),
            burst,
        },
    );
    let config = Arc::new(config);
    let secrets = Arc::new(Secrets {
        resend_api_key: Some(sim.api_key().into()),
        ..Secrets::default()
    });

    let pool = db.pool(8).await?;
    let data = json!({
        "client_name": "Bench Client", "amount": "10.00", "currency": "EUR",
        "invoice_url": "https://pay.example.com/in_bench",
    });
    let template = send_email::SendEmail {
        template: "payment_failed".into(),
        to: String::new(),
        data: data.as_object().cloned().unwrap_or_default(),
        reply_to: None,
        tags: Vec::new(),
        scheduled_at: None,
    };
    send_email::render(&template.template, &template.data)?;
    let t_enqueue = Instant::now();
    for chunk in (0..emails).collect::<Vec<_>>().chunks(1000) {
        let mut batch = Vec::with_capacity(chunk.len());
        for n in chunk {
            let email = send_email::SendEmail {
                to: format!("client{n}@example.com"),
                ..template.clone()
            };
            batch.push(NewJob::of(&email)?.unique_key(format!("email:bench:{n}")));
        }
        enqueue_many(&pool, batch).await?;
    }
    println!(
        "{}",
        json!({"phase": "enqueue", "emails": emails, "secs": t_enqueue.elapsed().as_secs_f64()})
    );

    let t0 = Instant::now();
    let mut engines = Vec::new();
    for _ in 0..3 {
        let engine_pool = db.pool(slots as u32 + 4).await?;
        let state = AppState::new(engine_pool.clone(), config.clone(), secrets.clone())?;
        let mut engine_config = EngineConfig::from_config(&config, "bench");
        engine_config.maintenance = None;
        // Enough slots that a token is taken as soon as it is due (the pace is the bucket's).
        engine_config.queues = [("email".to_string(), slots)].into();
        engines.push(Engine::start(engine_pool, jobs::registry(), state, engine_config).await?);
    }
    let mut last_report = Instant::now();
    loop {
        let sent: i64 = sqlx::query_scalar("select count(*) from email_log where status = 'sent'")
            .fetch_one(&pool)
            .await?;
        if sent as usize >= emails {
            break;
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            let secs = t0.elapsed().as_secs_f64();
            println!(
                "{}",
                json!({"phase": "sending", "sent": sent, "secs": secs.round(),
                       "rate_per_s": (sent as f64 / secs * 10.0).round() / 10.0,
                       "http_429": sim.rate_limit_hits()})
            );
        }
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(emails as u64 / 10 + 60),
            "stalled at {sent} of {emails} emails"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    for engine in engines {
        engine.shutdown().await;
    }
    let delivered = sim.emails();
    let distinct: std::collections::HashSet<&str> =
        delivered.iter().map(|e| e.to[0].as_str()).collect();
    let http_429 = sim.rate_limit_hits();
    pool.close().await;
    db.drop_db().await?;
    println!(
        "{}",
        json!({
            "bench": "email",
            "emails": delivered.len(),
            "secs": (secs * 100.0).round() / 100.0,
            "rate_per_s": (delivered.len() as f64 / secs * 100.0).round() / 100.0,
            "limit_per_s": LIMIT_PER_S,
            "bucket_rate_per_s": bucket_rate,
            "bucket_burst": burst,
            "slots_per_engine": slots,
            "http_429": http_429,
            "duplicates": delivered.len() - distinct.len(),
        })
    );
    Ok(())
}
