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

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use baseaim_worker::config::{Config, SecretString, Secrets};
use baseaim_worker::db::DbHealth;
use baseaim_worker::http::{self, HttpState};
use baseaim_worker::jobs::AppState;
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
        let db = TestDb::new().await;
        let env = vec![
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
