//! Benchmark programs: `cargo run --release --bin bench -- <name>`. Each prints progress lines
//! and, last, one JSON object with its figures. Each runs on a fresh database of its own on the
//! server at `BENCH_DATABASE_URL` (default postgres://root@127.0.0.1:5432), dropped at the end.
//!
//! - `intake`: signed Stripe webhooks against the real intake: acknowledged events/s, latency
//!   at half that rate, and the database's single-row commit rate in the same run.
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
        "intake" => intake().await,
        "facebook" => facebook().await,
        "email" => email().await,
        "load" => load::run().await,
        "dashboard" => dashboard::run().await,
        "drive" => drive::run().await,
        other => {
            anyhow::bail!(
                "unknown benchmark `{other}`; available: queue, intake, facebook, email, dashboard"
            )
        }
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

/// `intake`: signed Stripe webhooks posted over keep-alive connections on loopback to the real
/// intake (verify, group-committed insert + enqueue, 200 after the commit). Measures, in the
/// same run and database: the single-row commit rate (10 connections, one insert per commit,
/// `pgbench -N`-style); the acknowledged events/s with 64 and with 256 concurrent senders
/// (`BENCH_INTAKE_SENDERS`, comma-separated, to choose), each with the events per commit and the
/// CPU microseconds per event of this process and of PostgreSQL; the latency at half the best of
/// those rates (open loop, paced); and the same requests against the HTTP path alone (verify,
/// parse, 200; no database; the best over the same sender counts) as a ceiling. Last line: `acked_per_s` (the best), `senders`,
/// `p50_ms`/`p99_ms` (at half load), `commit_rate_per_s`, `http_without_database_per_s`.
async fn intake() -> anyhow::Result<()> {
    use baseaim_worker::http::{self, HttpState};
    use baseaim_worker::sim::stripe::{WebhookSender, signature};

    const SECRET: &str = "whsec_bench_intake";
    const EVENTS: usize = 20_000;
    // Concurrent deliveries (Stripe's own concurrency is not bounded by us): the intake's
    // capacity is the best rate over these, since its batches grow with the deliveries waiting.
    let sweep: Vec<usize> = match std::env::var("BENCH_INTAKE_SENDERS") {
        Ok(list) => list
            .split(',')
            .map(|n| n.trim().parse())
            .collect::<Result<_, _>>()
            .context("BENCH_INTAKE_SENDERS: comma-separated numbers")?,
        Err(_) => vec![64, 256],
    };
    let db = BenchDb::create().await?;
    let pool = db.pool(20).await?;

    // The database's single-row commit rate.
    sqlx::query("create table bench_commits (id bigserial primary key, n int not null, at timestamptz not null default now())")
        .execute(&pool)
        .await?;
    let mut rates = Vec::new();
    for _ in 0..ROUNDS {
        let t0 = Instant::now();
        let mut conns = tokio::task::JoinSet::new();
        for c in 0..10_i32 {
            let pool = pool.clone();
            conns.spawn(async move {
                let mut conn = pool.acquire().await?;
                let mut n = 0usize;
                while t0.elapsed() < Duration::from_secs(3) {
                    sqlx::query("insert into bench_commits (n) values ($1)")
                        .bind(c)
                        .execute(&mut *conn)
                        .await?;
                    n += 1;
                }
                Ok::<_, sqlx::Error>(n)
            });
        }
        let mut total = 0;
        while let Some(n) = conns.join_next().await {
            total += n??;
        }
        rates.push(total as f64 / t0.elapsed().as_secs_f64());
    }
    let commit_rate = median(rates);
    println!(
        "{}",
        json!({"phase": "commit_rate", "connections": 10, "per_s": commit_rate.round()})
    );

    // The intake, as a node serves it.
    let stop = tokio_util::sync::CancellationToken::new();
    let health = baseaim_worker::db::DbHealth::spawn(
        pool.clone(),
        Duration::from_secs(1),
        stop.child_token(),
    );
    let config = baseaim_worker::config::Config::load_from(None, vec![])?;
    let secrets = baseaim_worker::config::Secrets {
        stripe_webhook_secret: Some(SECRET.to_owned().into()),
        ..Default::default()
    };
    let state =
        baseaim_worker::jobs::AppState::new(pool.clone(), Arc::new(config), Arc::new(secrets))?;
    let app = http::router(HttpState::new(state, health));
    let (addr, _server) = http::serve("127.0.0.1:0".parse()?, app, stop.clone()).await?;

    // Distinct events (one sample, new ids), each signed now: a real payload and HMAC per request.
    let template = WebhookSender::new(SECRET)
        .event("invoice.paid")
        .context("sample event")?;
    let make = |i: usize| {
        let payload = template
            .payload()
            .replacen(&template.id, &format!("evt_bench{i:010}"), 1);
        let t = chrono::Utc::now().timestamp();
        let header = format!("t={t},v1={}", signature(SECRET, t, &payload));
        (payload, header)
    };
    // The load generator: HTTP/1.1 over keep-alive connections, requests written whole and
    // answers parsed by hand, so the measure is the intake's cost, not a client library's.
    let request = |(payload, header): (String, String), addr: std::net::SocketAddr| {
        format!(
            "POST /webhooks/stripe HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json; charset=utf-8\r\n\
             stripe-signature: {header}\r\ncontent-length: {}\r\n\r\n{payload}",
            payload.len()
        )
        .into_bytes()
    };

    // Saturation: for each sender count, that many closed-loop senders, each on its own
    // keep-alive connection, over fresh tables.
    let mut best = (0.0_f64, 0_usize);
    for (round, &senders) in sweep.iter().enumerate() {
        sqlx::query("truncate stripe_events, jobs")
            .execute(&pool)
            .await?;
        let first = round * EVENTS;
        let events: Vec<_> = (first..first + EVENTS)
            .map(|i| request(make(i), addr))
            .collect();
        let cpu0 = (cpu_seconds("self"), postgres_cpu_seconds());
        let (acked_per_s, saturated) = saturate(addr, events, senders).await?;
        // CPU per event, which the machine's other load does not change (unlike events/s): this
        // process (the intake and the load generator) and every PostgreSQL process.
        let per_event = |t0: f64, t1: f64| ((t1 - t0) / EVENTS as f64 * 1e7).round() / 10.0;
        let cpu_us = json!({
            "bench": per_event(cpu0.0, cpu_seconds("self")),
            "postgres": per_event(cpu0.1, postgres_cpu_seconds()),
        });
        // A batch is one transaction, and its rows share the transaction's `now()`.
        let (stored, commits): (i64, i64) =
            sqlx::query_as("select count(*), count(distinct received_at) from stripe_events")
                .fetch_one(&pool)
                .await?;
        anyhow::ensure!(stored as usize == EVENTS, "{stored} events stored");
        println!(
            "{}",
            json!({"phase": "saturation", "senders": senders, "acked_per_s": acked_per_s.round(),
                   "p50_ms": percentile(&saturated, 0.5), "p99_ms": percentile(&saturated, 0.99),
                   "events_per_commit": (stored as f64 / commits as f64 * 10.0).round() / 10.0,
                   "cpu_us_per_event": cpu_us})
        );
        if acked_per_s > best.0 {
            best = (acked_per_s, senders);
        }
    }
    let (acked_per_s, senders) = best;

    // Half load, open loop: requests start on a fixed schedule whatever the answers do.
    let rate = acked_per_s / 2.0;
    let count = ((rate * 5.0) as usize).clamp(500, EVENTS);
    let first = sweep.len() * EVENTS;
    let events: Vec<_> = (first..first + count)
        .map(|i| request(make(i), addr))
        .collect();
    // Open loop over a pool of keep-alive connections: a request due while all are busy opens
    // another, so a slow answer never delays the next request's start.
    let idle = Arc::new(std::sync::Mutex::new(Vec::<KeepAlive>::new()));
    let t0 = Instant::now();
    let mut inflight = tokio::task::JoinSet::new();
    for (i, request) in events.into_iter().enumerate() {
        let due = t0 + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let idle = idle.clone();
        inflight.spawn(async move {
            let free = idle.lock().unwrap().pop();
            let mut conn = match free {
                Some(conn) => conn,
                None => KeepAlive::connect(addr).await?,
            };
            // Latency from the scheduled start, so waiting for a connection counts.
            conn.send(&request).await?;
            let ms = due.elapsed().as_secs_f64() * 1000.0;
            idle.lock().unwrap().push(conn);
            Ok::<_, anyhow::Error>(ms)
        });
    }
    let mut half = Vec::new();
    while let Some(l) = inflight.join_next().await {
        half.push(l??);
    }
    half.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (p50, p99) = (percentile(&half, 0.5), percentile(&half, 0.99));
    println!(
        "{}",
        json!({"phase": "half_load", "per_s": rate.round(), "requests": count, "p50_ms": p50, "p99_ms": p99})
    );
    // The same requests against the intake's HTTP path without the database (the same
    // verification and envelope parse, the same server and trace layer, 200 at once): what this
    // machine's two cores can take of HTTP alone, a ceiling for the real intake.
    let ceiling = {
        let verifier = Arc::new(
            baseaim_worker::integrations::stripe::Verifier::new(
                &SECRET.to_owned().into(),
                Duration::from_secs(300),
            )
            .context("verifier")?,
        );
        let app = axum::Router::new()
            .route(
                "/webhooks/stripe",
                axum::routing::post(move |headers: axum::http::HeaderMap, body: bytes::Bytes| {
                    let verifier = verifier.clone();
                    async move {
                        let signature = headers
                            .get("stripe-signature")
                            .and_then(|v| v.to_str().ok());
                        let ok = verifier
                            .verify(signature, &body, chrono::Utc::now().timestamp())
                            .is_ok()
                            && serde_json::from_slice::<
                                baseaim_worker::integrations::stripe::types::EventEnvelope,
                            >(&body)
                            .is_ok();
                        if ok {
                            axum::http::StatusCode::OK
                        } else {
                            axum::http::StatusCode::BAD_REQUEST
                        }
                    }
                }),
            )
            .layer(tower_http::trace::TraceLayer::new_for_http().on_failure(()));
        let (addr, _server) = http::serve("127.0.0.1:0".parse()?, app, stop.clone()).await?;
        let mut best = 0.0_f64;
        for &senders in &sweep {
            let events: Vec<_> = (0..EVENTS).map(|i| request(make(i), addr)).collect();
            let per_s = saturate(addr, events, senders).await?.0;
            println!(
                "{}",
                json!({"phase": "http_without_database", "senders": senders, "per_s": per_s.round()})
            );
            best = best.max(per_s);
        }
        best
    };
    stop.cancel();
    pool.close().await;
    db.drop_db().await?;
    println!(
        "{}",
        json!({
            "acked_per_s": acked_per_s.round(),
            "senders": senders,
            "p50_ms": (p50 * 100.0).round() / 100.0,
            "p99_ms": (p99 * 100.0).round() / 100.0,
            "commit_rate_per_s": commit_rate.round(),
            "acked_to_commit_rate": (acked_per_s / commit_rate * 100.0).round() / 100.0,
            "half_load_per_s": rate.round(),
            "http_without_database_per_s": ceiling.round(),
        })
    );
    Ok(())
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

/// Posts `requests` from `senders` closed-loop senders, each on its own keep-alive connection;
/// returns the answers per second and each request's milliseconds, sorted.
async fn saturate(
    addr: std::net::SocketAddr,
    requests: Vec<Vec<u8>>,
    senders: usize,
) -> anyhow::Result<(f64, Vec<f64>)> {
    let total = requests.len();
    let queue = Arc::new(std::sync::Mutex::new(requests));
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..senders {
        let queue = queue.clone();
        tasks.spawn(async move {
            let mut conn = KeepAlive::connect(addr).await?;
            let mut latencies = Vec::new();
            loop {
                let next = queue.lock().unwrap().pop();
                let Some(request) = next else {
                    return Ok::<_, anyhow::Error>(latencies);
                };
                latencies.push(conn.send(&request).await?);
            }
        });
    }
    let mut latencies = Vec::new();
    while let Some(l) = tasks.join_next().await {
        latencies.extend(l??);
    }
    let per_s = total as f64 / t0.elapsed().as_secs_f64();
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Ok((per_s, latencies))
}

/// One keep-alive HTTP/1.1 connection of the intake's load generator.
struct KeepAlive {
    stream: tokio::io::BufReader<tokio::net::TcpStream>,
    line: String,
}

impl KeepAlive {
    async fn connect(addr: std::net::SocketAddr) -> anyhow::Result<Self> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(KeepAlive {
            stream: tokio::io::BufReader::new(stream),
            line: String::new(),
        })
    }

    /// Writes `request`, reads the whole answer; fails unless it is a 2xx. Returns the
    /// milliseconds it took.
    async fn send(&mut self, request: &[u8]) -> anyhow::Result<f64> {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        let t = Instant::now();
        self.stream.get_mut().write_all(request).await?;
        self.line.clear();
        self.stream.read_line(&mut self.line).await?;
        let status = self.line.split(' ').nth(1).unwrap_or("").to_owned();
        let mut length = 0usize;
        loop {
            self.line.clear();
            anyhow::ensure!(
                self.stream.read_line(&mut self.line).await? > 0,
                "connection closed"
            );
            let header = self.line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse()?;
            }
        }
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await?;
        anyhow::ensure!(
            status.starts_with('2'),
            "intake answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
        Ok(t.elapsed().as_secs_f64() * 1000.0)
    }
}
