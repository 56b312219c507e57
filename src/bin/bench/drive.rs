//! `drive`: one 1 GiB document through the real intake (`POST /v1/uploads`, multipart, streamed
//! into PostgreSQL) and the `drive_upload` job (resumable, streamed from PostgreSQL) to the Drive
//! simulator, with the connection cut once in the middle of the upload.
//!
//! The whole node (HTTP intake, engine, workers) runs in this process, as `serve` runs it; the
//! simulator (told to keep only each file's size and SHA-256) and the client that sends the file
//! (generated on the fly, never held whole) run here too, so the RSS figure is an upper bound for
//! the daemon alone. A TCP proxy between the node and the simulator cuts the connection once
//! `BENCH_DRIVE_CUT_AT` (default 0.4) of the file has gone through it.
//!
//! Figures: `bytes`; `mib_per_s` end to end (POST sent to document `UPLOADED`); `intake_mib_per_s`
//! and `upload_mib_per_s` for the two halves; `peak_rss_delta_mib` (VmHWM at the end minus VmRSS
//! once idle); `resent_fraction` (bytes the simulator received for the session beyond the file's
//! size, over the size); `cleanup_s` (from `UPLOADED` until the job has deleted the staged rows,
//! which it does after recording the upload; not part of `mib_per_s`). Knobs: `BENCH_DRIVE_MIB`
//! (default 1024).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use baseaim_worker::app::Node;
use baseaim_worker::cli::Role;
use baseaim_worker::config::{Config, SecretString, Secrets};
use baseaim_worker::sim::google_drive::{GoogleDriveConfig, GoogleDriveSim};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::{BenchDb, status_kib};

const MIB: u64 = 1024 * 1024;
const BOUNDARY: &str = "bench-drive-boundary-0b5e";

pub async fn run() -> anyhow::Result<()> {
    let mib: u64 = env_or("BENCH_DRIVE_MIB", 1024);
    let cut_at: f64 = env_or("BENCH_DRIVE_CUT_AT", 0.4);
    let total = mib * MIB;
    let db = BenchDb::create().await?;
    let pool = db.pool(4).await?;
    sqlx::query(
        "insert into clients (id, name, email, drive_folder_id)
         values ('bench-client', 'Bench', 'bench@example.com', 'bench-folder')",
    )
    .execute(&pool)
    .await?;
    let sim = GoogleDriveSim::start(GoogleDriveConfig {
        keep_content: false,
        ..GoogleDriveConfig::default()
    })
    .await?;
    let proxy = CutProxy::start(sim.server().addr()).await?;
    let env: Vec<(String, String)> = [
        ("DATABASE_URL", db.url.clone()),
        ("BAW__HTTP__BIND", "127.0.0.1:0".into()),
        ("BAW__DRIVE__API_BASE", proxy.base_url()),
        ("BAW__UPLOADS__MAX_BYTES", (total + MIB).to_string()),
        ("BAW__SCHEDULES__FACEBOOK_SYNC__ENABLED", "false".into()),
        ("BAW__SCHEDULES__STRIPE_RECONCILE__ENABLED", "false".into()),
        ("BAW__LOG__LEVEL", "warn".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let config = Config::load_from(None, env)?;
    let secrets = Secrets {
        google_service_account_key: Some(SecretString::from(sim.key_file_json())),
        ..Secrets::default()
    };
    let stop = CancellationToken::new();
    let node = Node::start(config, secrets, Role::All, false, stop.clone()).await?;
    let token = baseaim_worker::auth::tokens::create(&pool, "bench", &["uploads:write"]).await?;
    // Let the engine come up before "idle" is measured.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let idle_rss = status_kib("VmRSS:");
    println!(
        "idle RSS {:.1} MiB; sending {mib} MiB",
        idle_rss as f64 / 1024.0
    );

    // Past the token request and the session initiation, `cut_at` into the file.
    proxy.cut_after((total as f64 * cut_at) as u64);
    let t0 = Instant::now();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3600))
        .build()?;
    let response = client
        .post(format!(
            "http://{}/v1/uploads",
            node.addr.context("a node of role all listens")?
        ))
        .bearer_auth(&token)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(reqwest::Body::wrap_stream(multipart_stream(total)))
        .send()
        .await?;
    let status = response.status();
    let answer: serde_json::Value = response.json().await?;
    anyhow::ensure!(status == 202, "the intake answered {status}: {answer}");
    let intake_s = t0.elapsed().as_secs_f64();
    println!(
        "intake: {mib} MiB staged in {intake_s:.2} s ({:.0} MiB/s)",
        mib as f64 / intake_s
    );
    let id: uuid::Uuid = answer["document_id"]
        .as_str()
        .context("document_id")?
        .parse()?;
    loop {
        let status: String = sqlx::query_scalar("select status from documents where id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await?;
        match status.as_str() {
            "UPLOADED" => break,
            "FAILED" => anyhow::bail!("the upload failed"),
            _ => {}
        }
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(1800),
            "not uploaded after 30 min"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = t0.elapsed().as_secs_f64();
    let upload_s = seconds - intake_s;
    let peak_rss = status_kib("VmHWM:");
    let files = sim.files();
    anyhow::ensure!(files.len() == 1, "{} files in Drive", files.len());
    let sessions = sim.upload_sessions();
    anyhow::ensure!(sessions.len() == 1, "{} upload sessions", sessions.len());
    let sha: String = sqlx::query_scalar("select sha256 from documents where id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await?;
    anyhow::ensure!(files[0].size == total, "Drive has {} bytes", files[0].size);
    anyhow::ensure!(
        files[0].sha256 == sha,
        "Drive's SHA-256 differs from the intake's"
    );
    // The job deletes the staged rows after recording UPLOADED: how long that takes.
    let job_id = answer["job_id"].as_i64().context("job_id")?;
    loop {
        let state: String = sqlx::query_scalar("select state from jobs where id = $1")
            .bind(job_id)
            .fetch_one(&pool)
            .await?;
        match state.as_str() {
            "completed" => break,
            "running" | "available" | "retryable" | "scheduled" => {}
            other => anyhow::bail!("the upload job ended {other}"),
        }
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(1800),
            "the upload job is still running after 30 min"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cleanup_s = t0.elapsed().as_secs_f64() - seconds;
    let left: i64 =
        sqlx::query_scalar("select count(*) from document_chunks where document_id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await?;
    anyhow::ensure!(left == 0, "{left} staged chunks left after the job");
    let resent = sessions[0].received.saturating_sub(total);
    println!(
        "upload: {mib} MiB to Drive in {upload_s:.2} s ({:.0} MiB/s); {} cut(s), {resent} bytes re-sent; staged rows deleted {cleanup_s:.2} s after UPLOADED",
        mib as f64 / upload_s,
        proxy.cuts()
    );
    stop.cancel();
    node.stop().await?;
    pool.close().await;
    db.drop_db().await?;
    println!(
        "{}",
        json!({
            "bytes": total,
            "mib_per_s": round1(mib as f64 / seconds),
            "intake_mib_per_s": round1(mib as f64 / intake_s),
            "upload_mib_per_s": round1(mib as f64 / upload_s),
            "seconds": round1(seconds),
            "cleanup_s": round1(cleanup_s),
            "cuts": proxy.cuts(),
            "peak_rss_delta_mib": round1(peak_rss.saturating_sub(idle_rss) as f64 / 1024.0),
            "resent_fraction": (resent as f64 / total as f64 * 10_000.0).round() / 10_000.0,
        })
    );
    Ok(())
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The multipart body: the client id, then `total` pseudo-random bytes as a PDF, 1 MiB at a
/// time, generated as they are sent.
fn multipart_stream(
    total: u64,
) -> impl futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + 'static {
    let head = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"client_id\"\r\n\r\nbench-client\r\n\
         --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.pdf\"\r\n\
         Content-Type: application/pdf\r\n\r\n"
    );
    let tail = format!("\r\n--{BOUNDARY}--\r\n");
    let chunks = total.div_ceil(MIB);
    let body = futures::stream::iter(0..chunks).map(move |i| {
        let len = (total - i * MIB).min(MIB) as usize;
        let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ i.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        let mut chunk = Vec::with_capacity(len + 8);
        while chunk.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.extend_from_slice(&x.to_le_bytes());
        }
        chunk.truncate(len);
        Ok(bytes::Bytes::from(chunk))
    });
    use futures::StreamExt;
    futures::stream::once(async move { Ok(bytes::Bytes::from(head)) })
        .chain(body)
        .chain(futures::stream::once(async move {
            Ok(bytes::Bytes::from(tail))
        }))
}

/// A TCP proxy that cuts the connection carrying a given request byte, once.
struct CutProxy {
    addr: SocketAddr,
    state: Arc<Mutex<(u64, Option<u64>, u32)>>,
}

impl CutProxy {
    async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new((0u64, None::<u64>, 0u32)));
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let state = shared.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let back = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                    });
                    let mut buf = vec![0u8; 256 * 1024];
                    loop {
                        let n = match client_read.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let cut = {
                            let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                            let before = s.0;
                            s.0 += n as u64;
                            match s.1 {
                                Some(at) if s.0 > at => {
                                    s.1 = None;
                                    s.2 += 1;
                                    Some((at - before) as usize)
                                }
                                _ => None,
                            }
                        };
                        if let Some(keep) = cut {
                            let _ = server_write.write_all(&buf[..keep]).await;
                            break;
                        }
                        if server_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    back.abort();
                });
            }
        });
        Ok(CutProxy { addr, state })
    }

    fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn cut_after(&self, bytes: u64) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.1 = Some(s.0 + bytes);
    }

    fn cuts(&self) -> u32 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).2
    }
}
