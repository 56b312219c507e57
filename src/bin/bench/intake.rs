//! `intake`: signed Stripe webhooks posted over keep-alive connections on loopback to the real
//! intake (verify, group-committed insert + enqueue, 200 after the commit). Measures, in the
//! same run and database: the single-row commit rate (10 connections, one insert per commit,
//! `pgbench -N`-style); the acknowledged events/s with 64 and with 256 concurrent senders
//! (`BENCH_INTAKE_SENDERS`, comma-separated, to choose), each with the events per commit and the
//! CPU microseconds per event of this process and of PostgreSQL; the latency at half the best of
//! those rates (open loop, paced); and the intake's two parts alone, with their CPU per event:
//! the store (the same committers fed in-process, no HTTP) and the HTTP path (verify, parse,
//! 200; no database). Their CPU bounds the intake on this machine: `parts_bound_per_s` is the
//! machine's cores over the two parts' CPU per event. Last line: `acked_per_s` (the best),
//! `senders`, `p50_ms`/`p99_ms` (at half load), `commit_rate_per_s`, `acked_to_commit_rate`,
//! `store_without_http_per_s`, `http_without_database_per_s`, `parts_bound_per_s`, and, when
//! `pgbench` is installed, `pgbench_n_tps` and `acked_to_pgbench_n`: `pgbench -N` itself (its
//! "simple update" transaction: an UPDATE, a SELECT and an INSERT), the literal reading of the
//! target's "pgbench -N-style". The target is judged against the single-row commit rate, the
//! stricter bar; `pgbench -N` is printed beside it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

use crate::{BenchDb, HttpNode, ROUNDS, cpu_seconds, median, percentile, postgres_cpu_seconds};

pub async fn run() -> anyhow::Result<()> {
    use baseaim_worker::http;
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
    let mut cpu_per_commit = Vec::new();
    for _ in 0..ROUNDS {
        let cpu = Cpu::start();
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
        cpu_per_commit.push(cpu.per_event(total).total());
    }
    let commit_rate = median(rates);
    println!(
        "{}",
        json!({"phase": "commit_rate", "connections": 10, "per_s": commit_rate.round(),
               "cpu_us_per_commit": median(cpu_per_commit)})
    );

    let pgbench = pgbench_n(&db.url).await?;
    if let Some(tps) = pgbench {
        println!(
            "{}",
            json!({"phase": "pgbench_n", "clients": 10, "tps": tps.round()})
        );
    }

    // The intake, as a node serves it.
    let secrets = baseaim_worker::config::Secrets {
        stripe_webhook_secret: Some(SECRET.to_owned().into()),
        ..Default::default()
    };
    let node = HttpNode::start(&pool, secrets).await?;
    let (addr, stop, webhooks) = (node.addr, node.stop, node.state.webhooks);

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
    let mut best = (0.0_f64, 0_usize, CpuPerEvent::default());
    for (round, &senders) in sweep.iter().enumerate() {
        sqlx::query("truncate stripe_events, jobs")
            .execute(&pool)
            .await?;
        let first = round * EVENTS;
        let events: Vec<_> = (first..first + EVENTS)
            .map(|i| request(make(i), addr))
            .collect();
        let cpu = Cpu::start();
        let (acked_per_s, saturated) = saturate(addr, events, senders).await?;
        let cpu = cpu.per_event(EVENTS);
        println!(
            "{}",
            json!({"phase": "saturation", "senders": senders, "acked_per_s": acked_per_s.round(),
                   "p50_ms": percentile(&saturated, 0.5), "p99_ms": percentile(&saturated, 0.99),
                   "events_per_commit": events_per_commit(&pool, EVENTS).await?,
                   "cpu_us_per_event": cpu})
        );
        if acked_per_s > best.0 {
            best = (acked_per_s, senders, cpu);
        }
    }
    let (acked_per_s, senders, intake_cpu) = best;

    // The store without HTTP: the same committers fed in this process, by as many closed-loop
    // callers as the best round had senders, with events parsed beforehand (no HTTP, no
    // signature, no parse). With the HTTP path alone (below), what the intake is made of.
    let store = {
        sqlx::query("truncate stripe_events, jobs")
            .execute(&pool)
            .await?;
        let first = (sweep.len() + 1) * EVENTS;
        let events = (first..first + EVENTS)
            .map(|i| {
                let (payload, _) = make(i);
                let envelope = serde_json::from_str(&payload)?;
                Ok((envelope, payload))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let queue = Arc::new(std::sync::Mutex::new(events));
        let cpu = Cpu::start();
        let t0 = Instant::now();
        let mut callers = tokio::task::JoinSet::new();
        for _ in 0..senders {
            let (queue, webhooks, pool) = (queue.clone(), webhooks.clone(), pool.clone());
            callers.spawn(async move {
                loop {
                    let next = queue.lock().unwrap().pop();
                    let Some((envelope, payload)) = next else {
                        return anyhow::Ok(());
                    };
                    let new = webhooks
                        .store(&pool, envelope, payload)
                        .await
                        .map_err(|e| anyhow::anyhow!("store: {e:?}"))?;
                    anyhow::ensure!(new, "an event was stored twice");
                }
            });
        }
        while let Some(caller) = callers.join_next().await {
            caller??;
        }
        let per_s = EVENTS as f64 / t0.elapsed().as_secs_f64();
        let cpu = cpu.per_event(EVENTS);
        println!(
            "{}",
            json!({"phase": "store_without_http", "callers": senders, "per_s": per_s.round(),
                   "events_per_commit": events_per_commit(&pool, EVENTS).await?,
                   "cpu_us_per_event": cpu})
        );
        (per_s, cpu)
    };

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
        let mut best = (0.0_f64, CpuPerEvent::default());
        for &senders in &sweep {
            let events: Vec<_> = (0..EVENTS).map(|i| request(make(i), addr)).collect();
            let cpu = Cpu::start();
            let per_s = saturate(addr, events, senders).await?.0;
            let cpu = cpu.per_event(EVENTS);
            println!(
                "{}",
                json!({"phase": "http_without_database", "senders": senders, "per_s": per_s.round(),
                       "cpu_us_per_event": cpu})
            );
            if per_s > best.0 {
                best = (per_s, cpu);
            }
        }
        best
    };
    // The machine's CPU, spent on the two parts, bounds the intake whatever its design: at most
    // `cores / (CPU per event over HTTP alone + over the store alone)`. Twice the commit rate
    // needs the whole intake (load generator included) under `cores / (2 * commit rate)`.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let parts_us = ceiling.1.total() + store.1.total();
    println!(
        "{}",
        json!({"phase": "cpu", "cores": cores, "intake_us_per_event": intake_cpu.total(),
               "parts_us_per_event": parts_us,
               "budget_us_per_event_at_2x_commit_rate": (cores * 1e6 / (2.0 * commit_rate)).round(),
               "parts_bound_per_s": (cores * 1e6 / parts_us).round()})
    );
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
            "http_without_database_per_s": ceiling.0.round(),
            "store_without_http_per_s": store.0.round(),
            "parts_bound_per_s": (cores * 1e6 / parts_us).round(),
            "pgbench_n_tps": pgbench.map(f64::round),
            "acked_to_pgbench_n": pgbench.map(|tps| (acked_per_s / tps * 100.0).round() / 100.0),
        })
    );
    Ok(())
}

/// `pgbench -N -c 10` on the bench database (scale 10, its own tables, dropped after): the median of
/// [`ROUNDS`] runs of 3 s, in transactions/s. None, with a line saying so, when no `pgbench` is
/// found (`BENCH_PGBENCH`, then `PATH`, then PostgreSQL's Debian directories).
async fn pgbench_n(url: &str) -> anyhow::Result<Option<f64>> {
    let Some(pgbench) = find_pgbench() else {
        println!(
            "{}",
            json!({"phase": "pgbench_n", "skipped": "pgbench not found"})
        );
        return Ok(None);
    };
    let run = |args: &[&str]| {
        let mut command = tokio::process::Command::new(&pgbench);
        command.args(args).arg(url).kill_on_drop(true);
        async move {
            let out = command.output().await.context("run pgbench")?;
            anyhow::ensure!(
                out.status.success(),
                "pgbench failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok::<_, anyhow::Error>(String::from_utf8_lossy(&out.stdout).into_owned())
        }
    };
    run(&["-i", "-q", "-s", "10"]).await?;
    let mut rates = Vec::new();
    for _ in 0..ROUNDS {
        let report = run(&["-N", "-n", "-c", "10", "-j", "2", "-T", "3"]).await?;
        let tps = report
            .lines()
            .find_map(|l| l.strip_prefix("tps = "))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<f64>().ok())
            .with_context(|| format!("no `tps = ` line in pgbench's report: {report}"))?;
        rates.push(tps);
    }
    // Its 1,000,000 accounts would only weigh on what is measured next.
    run(&["-i", "-I", "d"]).await?;
    Ok(Some(median(rates)))
}

fn find_pgbench() -> Option<std::path::PathBuf> {
    if let Some(path) = std::env::var_os("BENCH_PGBENCH") {
        // `BENCH_PGBENCH=none` (any path that is not a file) skips the phase.
        let path = std::path::PathBuf::from(path);
        return path.is_file().then_some(path);
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("pgbench"));
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|version| version.path().join("bin/pgbench"));
    on_path.chain(debian).find(|candidate| candidate.is_file())
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
    // Every connection is open before the clock starts: a burst of connects can overflow the
    // listener's SYN queue, and a connect retried after the kernel's 1 s SYN timeout would be
    // counted as a second of intake time (seen: 45,000/s measured as 19,700/s).
    let mut conns = Vec::with_capacity(senders);
    for _ in 0..senders {
        conns.push(KeepAlive::connect(addr).await?);
    }
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for mut conn in conns {
        let queue = queue.clone();
        tasks.spawn(async move {
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

/// The events stored per commit, after checking that all `events` were stored: a batch is one
/// transaction, and its rows share the transaction's `now()`.
async fn events_per_commit(pool: &sqlx::PgPool, events: usize) -> anyhow::Result<f64> {
    let (stored, commits): (i64, i64) =
        sqlx::query_as("select count(*), count(distinct received_at) from stripe_events")
            .fetch_one(pool)
            .await?;
    anyhow::ensure!(stored as usize == events, "{stored} events stored");
    Ok((stored as f64 / commits as f64 * 10.0).round() / 10.0)
}

/// CPU seconds so far of this process (the intake and the load generator) and of every
/// PostgreSQL process: per event, a cost the machine's other load changes much less than it
/// changes events/s.
struct Cpu {
    bench: f64,
    postgres: f64,
}

impl Cpu {
    fn start() -> Self {
        Cpu {
            bench: cpu_seconds("self"),
            postgres: postgres_cpu_seconds(),
        }
    }

    fn per_event(self, events: usize) -> CpuPerEvent {
        let us = |t0: f64, t1: f64| ((t1 - t0) / events as f64 * 1e7).round() / 10.0;
        CpuPerEvent {
            bench: us(self.bench, cpu_seconds("self")),
            postgres: us(self.postgres, postgres_cpu_seconds()),
        }
    }
}

/// Microseconds of CPU per event.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
struct CpuPerEvent {
    bench: f64,
    postgres: f64,
}

impl CpuPerEvent {
    fn total(&self) -> f64 {
        ((self.bench + self.postgres) * 10.0).round() / 10.0
    }
}
