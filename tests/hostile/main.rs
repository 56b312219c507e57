//! Hostile input against the HTTP intake, in process (the node's whole router, driven with
//! `tower::ServiceExt::oneshot`, no sockets): arbitrary bytes, broken JSON, huge and deeply nested
//! bodies, wrong content types, forged, stale and replayed signatures, odd and repeated headers.
//! Every case must get a 4xx (never a 5xx, never a panic) and store nothing; memory must stay
//! bounded over the run. Each surface runs thousands of proptest cases (more than 10,000 in all);
//! `HOSTILE_CASES` scales them.

#[path = "../support/mod.rs"]
mod support;

mod api;
mod uploads;
mod webhooks;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Method, Request, StatusCode};
use baseaim_worker::config::{Config, SecretString, Secrets};
use baseaim_worker::db::DbHealth;
use baseaim_worker::http::{self, HttpState};
use baseaim_worker::jobs::AppState;
use proptest::strategy::Strategy;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use support::TestDb;

pub const WEBHOOK_SECRET: &str = "whsec_hostile_test_secret";
/// The webhook body limit the hostile node runs with (small, so "huge" cases stay cheap).
pub const BODY_LIMIT: usize = 64 * 1024;

/// A node's router over a fresh database, with every secret set.
pub struct App {
    pub db: TestDb,
    pub router: Router,
    _stop: CancellationToken,
}

impl App {
    pub async fn start() -> Self {
        Self::start_with(Vec::new()).await
    }

    /// With more configuration (`BAW__...` pairs) on top of the hostile node's.
    pub async fn start_with(more: Vec<(String, String)>) -> Self {
        let db = TestDb::new().await;
        let mut env = vec![
            (
                "BAW__STRIPE__WEBHOOK_BODY_LIMIT".to_string(),
                BODY_LIMIT.to_string(),
            ),
            ("BAW__HTTP__BODY_LIMIT".to_string(), BODY_LIMIT.to_string()),
            (
                "BAW__UPLOADS__MAX_BYTES".to_string(),
                BODY_LIMIT.to_string(),
            ),
        ];
        env.extend(more);
        let config = Config::load_from(None, env).expect("config");
        let secrets = Secrets {
            stripe_webhook_secret: Some(SecretString::from(WEBHOOK_SECRET)),
            ..Secrets::default()
        };
        let stop = CancellationToken::new();
        let health = DbHealth::spawn(db.pool.clone(), Duration::from_secs(1), stop.child_token());
        let state =
            AppState::new(db.pool.clone(), Arc::new(config), Arc::new(secrets)).expect("state");
        let router = http::router(HttpState::new(state, health));
        App {
            db,
            router,
            _stop: stop,
        }
    }

    /// Sends one request through the router; the status and up to 64 KiB of the body.
    pub async fn send(&self, request: Request<Body>) -> (StatusCode, String) {
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("the router is infallible");
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 64 * 1024)
            .await
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        (status, body)
    }

    /// Rows any surface could have stored: events, jobs, and the rows the jobs write.
    pub async fn stored(&self) -> i64 {
        sqlx::query_scalar(
            "select (select count(*) from stripe_events) + (select count(*) from jobs)
                  + (select count(*) from subscriptions) + (select count(*) from invoices)
                  + (select count(*) from email_log)",
        )
        .fetch_one(&self.db.pool)
        .await
        .expect("count stored rows")
    }
}

/// Cases per property, scaled by `HOSTILE_CASES` (default 1.0).
pub fn cases(base: u32) -> u32 {
    let scale: f64 = std::env::var("HOSTILE_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    ((base as f64) * scale).max(1.0) as u32
}

/// Resident memory of this process, from /proc (0 where there is none).
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// A 4xx, not a 5xx, and an answer that does not echo the input back in full.
pub fn assert_refused(status: StatusCode, body: &str, what: &str) -> Result<(), String> {
    if !status.is_client_error() {
        return Err(format!("{what}: answered {status} (body {body:?})"));
    }
    if body.len() > 1024 {
        return Err(format!(
            "{what}: a {}-byte error answer (echoing the input?)",
            body.len()
        ));
    }
    Ok(())
}

/// One generated hostile request of a surface.
pub trait Case: std::fmt::Debug {
    /// The kind of hostility, for the tally printed per run.
    fn what(&self) -> &'static str;
    fn request(&self) -> Request<Body>;
    /// More of the case to show when it was not refused (its `Debug` form is shown anyway).
    fn shown(&self) -> String {
        String::new()
    }
}

/// A request with `headers` (name, raw value bytes; a value HTTP cannot carry is left out, as no
/// client could send it) and `body`.
pub fn request<'a>(
    method: Method,
    path: &str,
    headers: impl IntoIterator<Item = (&'static str, &'a [u8])>,
    body: &[u8],
) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            builder = builder.header(name, value);
        }
    }
    builder.body(Body::from(body.to_vec())).expect("request")
}

/// Sends `cases` cases of `strategy` through `app`'s router: each must be refused
/// ([`assert_refused`]). Prints the cases per kind; panics with the first case that was not
/// refused (shrunk), if fewer cases ran, or if memory grew by 128 MiB or more over the run.
pub fn refuse_all<S>(
    rt: &tokio::runtime::Runtime,
    app: &App,
    surface: &str,
    strategy: S,
    cases: u32,
) where
    S: Strategy,
    S::Value: Case,
{
    let rss_start = rss_kib();
    let seen: std::cell::RefCell<BTreeMap<&'static str, u32>> = Default::default();
    let started = Instant::now();
    let mut runner = TestRunner::new(RunnerConfig {
        cases,
        failure_persistence: None,
        max_shrink_iters: 200,
        ..RunnerConfig::default()
    });
    let result = runner.run(&strategy, |case| {
        *seen.borrow_mut().entry(case.what()).or_default() += 1;
        let (status, body) = rt.block_on(app.send(case.request()));
        assert_refused(status, &body, case.what())
            .map_err(|e| TestCaseError::fail(format!("{e}{}", case.shown())))
    });
    let rss_end = rss_kib();
    let seen = seen.into_inner();
    println!(
        "{surface} hostile cases: {} in {:.1} s, RSS {rss_start} -> {rss_end} KiB; by kind: {seen:?}",
        seen.values().sum::<u32>(),
        started.elapsed().as_secs_f64(),
    );
    if let Err(error) = result {
        panic!("{surface}: {error}");
    }
    assert!(
        rss_end < rss_start + 128 * 1024,
        "{surface}: memory grew from {rss_start} to {rss_end} KiB over the run"
    );
    assert!(seen.values().sum::<u32>() >= cases);
}

/// A runtime like a node's, for the hostile runs (proptest drives the cases synchronously).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
