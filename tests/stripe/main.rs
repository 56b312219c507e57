//! Stripe intake, event jobs, reconciliation and replay, against the real PostgreSQL and the
//! Stripe simulator (its webhook sender signs exactly like Stripe).

#[path = "../support/mod.rs"]
mod support;

mod events;
mod intake;
mod node;

use std::sync::Arc;
use std::time::Duration;

use baseaim_worker::config::{Config, SecretString, Secrets};
use baseaim_worker::db::DbHealth;
use baseaim_worker::http::{self, HttpState};
use baseaim_worker::jobs::{self, AppState};
use baseaim_worker::queue::testing::{DrainReport, drain};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "whsec_test_intake_secret";

/// The intake served on a free port over `pool`, and what the jobs need to run.
pub struct Intake {
    pub url: String,
    pub pool: PgPool,
    pub state: AppState,
    stop: CancellationToken,
}

impl Drop for Intake {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Intake {
    pub async fn start(pool: PgPool, env: Vec<(String, String)>) -> Self {
        baseaim_worker::tls::install_crypto_provider();
        let config = Config::load_from(None, env).expect("config");
        let stop = CancellationToken::new();
        let health = DbHealth::spawn(pool.clone(), Duration::from_secs(1), stop.child_token());
        let secrets = Secrets {
            // Rotation: an old secret first, ours second.
            stripe_webhook_secret: Some(SecretString::from(format!("whsec_old_one,{SECRET}"))),
            stripe_secret_key: Some(SecretString::from("sk_test_sim_0000000000000000")),
            ..Secrets::default()
        };
        let state = AppState::new(pool.clone(), Arc::new(config), Arc::new(secrets)).unwrap();
        let app = http::router(HttpState::new(state.clone(), health));
        let (addr, _task) = http::serve("127.0.0.1:0".parse().unwrap(), app, stop.clone())
            .await
            .unwrap();
        Intake {
            url: format!("http://{addr}/webhooks/stripe"),
            pool,
            state,
            stop,
        }
    }

    pub async fn drain(&self) -> DrainReport {
        drain(&self.pool, &jobs::registry(), self.state.clone(), "default")
            .await
            .expect("drain")
    }
}

pub async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

pub async fn insert_client(pool: &PgPool, id: &str, name: &str, email: &str) {
    sqlx::query("insert into clients (id, name, email) values ($1, $2, $3)")
        .bind(id)
        .bind(name)
        .bind(email)
        .execute(pool)
        .await
        .unwrap();
}

/// A sample object of `event_type` (from the constructed sample envelopes).
pub fn sample_object(event_type: &str) -> Value {
    baseaim_worker::sim::stripe::sample_event(event_type)
        .and_then(|e| e.pointer("/data/object").cloned())
        .unwrap()
}

/// An event envelope with an explicit `created`, for ordering tests.
pub fn envelope(id: &str, event_type: &str, created: i64, object: Value) -> String {
    serde_json::to_string_pretty(&json!({
        "id": id, "object": "event", "api_version": "2026-08-26.dahlia", "created": created,
        "data": {"object": object}, "livemode": false, "pending_webhooks": 1,
        "request": {"id": null, "idempotency_key": null}, "type": event_type,
    }))
    .unwrap()
}

/// Posts `payload` with `signature` (None: no header); returns the status.
pub async fn post(url: &str, payload: impl Into<reqwest::Body>, signature: Option<String>) -> u16 {
    let client = reqwest::Client::new();
    let mut request = client
        .post(url)
        .header("content-type", "application/json; charset=utf-8")
        .body(payload);
    if let Some(signature) = signature {
        request = request.header("stripe-signature", signature);
    }
    request.send().await.unwrap().status().as_u16()
}

/// A valid `Stripe-Signature` for `payload`, signed now with [`SECRET`].
pub fn signed(payload: &str) -> String {
    let now = chrono::Utc::now().timestamp();
    format!(
        "t={now},v1={}",
        baseaim_worker::sim::stripe::signature(SECRET, now, payload)
    )
}
