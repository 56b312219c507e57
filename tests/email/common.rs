//! A migrated database, a Resend simulator and an `AppState` pointed at it.

use std::sync::Arc;

use baseaim_worker::config::{Config, RateLimitConfig, SecretString, Secrets};
use baseaim_worker::jobs::{self, AppState};
use baseaim_worker::queue::testing::{DrainReport, drain};
use baseaim_worker::queue::{Registry, rate_limit};
use baseaim_worker::sim::resend::{ResendConfig, ResendSim};
use serde_json::{Value, json};

use crate::support::TestDb;

pub struct Env {
    pub db: TestDb,
    pub sim: ResendSim,
    pub state: AppState,
    pub registry: Registry<AppState>,
}

/// The default config pointed at the simulator, with a short request timeout.
pub fn config_for(sim: &ResendSim) -> Config {
    let mut config = Config::load_from(None, std::iter::empty()).expect("default config");
    config.resend.api_base = sim.base_url().to_owned();
    config.resend.timeout = std::time::Duration::from_millis(500);
    config
}

pub fn secrets_for(sim: &ResendSim) -> Secrets {
    Secrets {
        resend_api_key: Some(SecretString::from(sim.api_key())),
        ..Secrets::default()
    }
}

/// A simulator with a generous rate limit and a bucket to match, so drained tests are not paced;
/// the rate tests use the defaults instead.
pub async fn setup() -> Env {
    setup_with_sim(ResendConfig::default(), |_| {}).await
}

/// [`setup`] with Resend forgetting idempotency keys after `key_ttl` and the job not sending again
/// `unknown_outcome_window` after an attempt whose outcome it did not learn (24 h and 23 h
/// in production).
pub async fn setup_with_key_ttl(
    key_ttl: std::time::Duration,
    unknown_outcome_window: std::time::Duration,
) -> Env {
    let sim = ResendConfig {
        idempotency_ttl: key_ttl,
        ..ResendConfig::default()
    };
    setup_with_sim(sim, |config| {
        config.email.unknown_outcome_window = unknown_outcome_window;
    })
    .await
}

async fn setup_with_sim(sim: ResendConfig, adjust: impl FnOnce(&mut Config)) -> Env {
    let sim = ResendSim::start(ResendConfig {
        rate_limit_per_second: 1000,
        ..sim
    })
    .await
    .expect("start the Resend simulator");
    let mut config = config_for(&sim);
    adjust(&mut config);
    config.rate_limits.insert(
        "resend".into(),
        RateLimitConfig {
            rate: 1000.0,
            per: std::time::Duration::from_secs(1),
            burst: 1000.0,
        },
    );
    setup_with(sim, config, secrets_for_sim).await
}

fn secrets_for_sim(sim: &ResendSim) -> Secrets {
    secrets_for(sim)
}

pub async fn setup_with(sim: ResendSim, config: Config, secrets: fn(&ResendSim) -> Secrets) -> Env {
    let db = TestDb::new().await;
    rate_limit::declare(&db.pool, &config.rate_limits)
        .await
        .expect("declare rate limits");
    let state = AppState::new(db.pool.clone(), Arc::new(config), Arc::new(secrets(&sim)))
        .expect("app state");
    Env {
        db,
        sim,
        state,
        registry: jobs::registry(),
    }
}

impl Env {
    /// Runs the email queue until nothing is runnable now.
    pub async fn drain(&self) -> DrainReport {
        drain(&self.db.pool, &self.registry, self.state.clone(), "email")
            .await
            .expect("drain")
    }

    /// Makes job `id` due now (a retry's backoff or a snooze passed).
    pub async fn make_due(&self, id: i64) {
        sqlx::query("update jobs set run_at = now() where id = $1")
            .bind(id)
            .execute(&self.db.pool)
            .await
            .unwrap();
    }

    /// (state, attempt, errors) of job `id`.
    pub async fn job(&self, id: i64) -> (String, i32, Option<Value>) {
        sqlx::query_as("select state, attempt, errors from jobs where id = $1")
            .bind(id)
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
    }

    /// The `email_log` rows: (idempotency key, recipient, subject, status, resend id, attempts,
    /// last error, sent).
    pub async fn log(&self) -> Vec<LogRow> {
        sqlx::query_as(
            "select idempotency_key, template, recipient, subject, status, resend_id, attempts,
                    last_error, sent_at is not null as sent
               from email_log order by id",
        )
        .fetch_all(&self.db.pool)
        .await
        .unwrap()
    }
}

#[derive(Debug, sqlx::FromRow)]
pub struct LogRow {
    pub idempotency_key: String,
    pub template: String,
    pub recipient: String,
    pub subject: String,
    pub status: String,
    pub resend_id: Option<String>,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub sent: bool,
}

/// What the Stripe engineer's jobs ask for.
pub fn payment_failed_data() -> serde_json::Map<String, Value> {
    json!({
        "client_name": "Acme & Sons",
        "amount": "120.00",
        "currency": "EUR",
        "invoice_url": "https://pay.example.com/in_1",
    })
    .as_object()
    .unwrap()
    .clone()
}
