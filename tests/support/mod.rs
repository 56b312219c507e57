//! Shared test support: a fresh, migrated database per test, and a TCP proxy in front of
//! PostgreSQL that a test can cut to simulate an outage.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The server tests run against (trust auth). Override with BAW_TEST_DATABASE_URL.
pub fn server_url() -> String {
    std::env::var("BAW_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432".into())
}

/// A database of its own for one test, migrated; dropped when the value is dropped.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
    /// The server it lives on (dropped there).
    server: String,
}

impl TestDb {
    pub async fn new() -> Self {
        Self::new_on(&server_url()).await
    }

    /// A fresh migrated database on the server at `server` (e.g. a test's private one).
    pub async fn new_on(server: &str) -> Self {
        let db = Self::empty_on(server).await;
        baseaim_worker::db::migrate(&db.pool)
            .await
            .expect("migrate test database");
        db
    }

    /// A fresh database without migrations.
    pub async fn empty() -> Self {
        Self::empty_on(&server_url()).await
    }

    async fn empty_on(server: &str) -> Self {
        baseaim_worker::tls::install_crypto_provider();
        let name = format!("baw_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&format!("{server}/postgres"))
            .await
            .expect("connect to the test PostgreSQL server (is it running?)");
        sqlx::query(sqlx::AssertSqlSafe(format!("create database {name}")))
            .execute(&mut admin)
            .await
            .expect("create database");
        let url = format!("{server}/{name}");
        let pool = PgPoolOptions::new()
            .max_connections(20)
            .connect(&url)
            .await
            .expect("connect test database");
        TestDb {
            name,
            url,
            pool,
            server: server.to_owned(),
        }
    }

    /// The test database's URL with its host and port replaced by `addr` (e.g. a [`PgProxy`]).
    pub fn url_via(&self, addr: SocketAddr) -> String {
        let mut url = url::Url::parse(&self.url).expect("test url");
        url.set_host(Some(&addr.ip().to_string())).expect("host");
        url.set_port(Some(addr.port())).expect("port");
        url.to_string()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let server = self.server.clone();
        // Async drop is not a thing: drop the database from a short-lived thread and runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok(mut admin) = PgConnection::connect(&format!("{server}/postgres")).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "drop database if exists {name} with (force)"
                    )))
                    .execute(&mut admin)
                    .await;
                }
            });
        })
        .join();
    }
}

/// A TCP proxy to PostgreSQL. `down()` cuts every connection and refuses new ones until `up()`.
pub struct PgProxy {
    pub addr: SocketAddr,
    /// Whether the proxy is down, and the token every open connection watches. Swapped and
    /// cancelled together under the lock, so no connection slips between a check and a cut.
    state: Arc<Mutex<(bool, CancellationToken)>>,
}

impl PgProxy {
    pub async fn start() -> Self {
        Self::start_to(&server_url()).await
    }

    /// A proxy to the server at `server` (a URL).
    pub async fn start_to(server: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let upstream: SocketAddr = {
            let url = url::Url::parse(server).unwrap();
            format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432))
                .parse()
                .unwrap()
        };
        let state = Arc::new(Mutex::new((false, CancellationToken::new())));
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let cut = {
                    let guard = shared.lock().unwrap();
                    if guard.0 {
                        continue; // down: the connection is dropped at once
                    }
                    guard.1.clone()
                };
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.cancelled() => {}
                    }
                });
            }
        });
        PgProxy { addr, state }
    }

    pub fn down(&self) {
        let mut guard = self.state.lock().unwrap();
        guard.0 = true;
        let old = std::mem::replace(&mut guard.1, CancellationToken::new());
        old.cancel();
    }

    pub fn up(&self) {
        self.state.lock().unwrap().0 = false;
    }
}

/// Polls `check` every 50 ms until it returns true or `secs` pass; panics with `what` on timeout.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("timed out after {secs}s waiting for: {what}");
}

/// A log writer a test reads back (give a clone of it to `telemetry::json_subscriber`).
#[derive(Clone, Default)]
pub struct CapturedLog(Arc<Mutex<Vec<u8>>>);

impl CapturedLog {
    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for CapturedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `n` letters and digits that do not compress: PostgreSQL compresses a long index entry, so a
/// repeated letter fits where a random id of the same length does not.
pub fn noise(n: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ALPHABET[(state % ALPHABET.len() as u64) as usize] as char
        })
        .collect()
}
