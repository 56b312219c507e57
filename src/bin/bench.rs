//! Benchmark programs: `cargo run --release --bin bench -- <name>`. Each prints progress lines
//! and, last, one JSON object with its figures. Each runs on a fresh database of its own on the
//! server at `BENCH_DATABASE_URL` (default postgres://root@127.0.0.1:5432), dropped at the end.
//!
//! - `queue`: bulk enqueue, processing throughput, idle latency, and the SQL ceiling measured in
//!   the same run on the same database.

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
use sqlx::postgres::PgPoolOptions;
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
        other => anyhow::bail!("unknown benchmark `{other}`; available: queue"),
    }
}

fn server_url() -> String {
    std::env::var("BENCH_DATABASE_URL").unwrap_or_else(|_| "postgres://root@127.0.0.1:5432".into())
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
        let url = format!("{}/{name}", server_url());
        let pool = PgPool::connect(&url).await?;
        baseaim_worker::db::migrate(&pool).await?;
        pool.close().await;
        Ok(BenchDb { name, url })
    }

    async fn pool(&self, connections: u32) -> anyhow::Result<PgPool> {
        Ok(PgPoolOptions::new()
            .max_connections(connections)
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
            let n: i64 = sqlx::query_scalar("select count(*) from jobs").fetch_one(&pool).await?;
            anyhow::ensure!(n as usize == JOBS, "{n} jobs enqueued");
        }
        let rate = median(rates);
        println!("{}", json!({"phase": "bulk_enqueue", "jobs": JOBS, "tasks": tasks, "per_s": rate.round()}));
        bulk_by_tasks.push(rate);
    }
    let bulk_enqueue_per_s = bulk_by_tasks.iter().copied().fold(0.0, f64::max);

    // Processing: drain 20,000 pre-inserted no-ops with one engine, per configuration.
    let configs = [(100usize, 100usize), (200, 200), (400, 400)];
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
            let t0 = Instant::now();
            let engine = Engine::start(
                pool.clone(),
                registry,
                tally.clone(),
                engine_config(concurrency, batch),
            )
            .await?;
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

    // Latency: an idle engine, 200 single jobs enqueued one after another.
    sqlx::query("truncate jobs").execute(&pool).await?;
    let tally = Tally::default();
    tally.record_start.store(true, Ordering::Relaxed);
    tally.target.store(usize::MAX, Ordering::Release);
    let mut registry = Registry::new();
    registry.register::<BenchNoop>();
    let engine =
        Engine::start(pool.clone(), registry, tally.clone(), engine_config(10, 10)).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut latencies = Vec::new();
    for i in 0..200 {
        let before = tally.started.lock().unwrap().len();
        let t0 = Instant::now();
        enqueue(&pool, NewJob::of(&BenchNoop {})?).await?;
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
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    println!(
        "{}",
        json!({"phase": "latency", "jobs": 200, "p50_ms": p50, "p99_ms": p99})
    );

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

fn engine_config(concurrency: usize, batch: usize) -> EngineConfig {
    let config =
        baseaim_worker::config::Config::load_from(None, Vec::new()).expect("default config");
    let mut engine = EngineConfig::from_config(&config, "bench");
    engine.queues = [("default".to_string(), concurrency)].into();
    engine.claim_batch = batch;
    engine.maintenance = None;
    engine
}
