//! An app per test: a migrated database, the Resend simulator, the whole HTTP router, and
//! helpers to call it with a token and drain queues.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use baseaim_worker::config::{Config, QueueConfig, RateLimitConfig, SecretString, Secrets};
use baseaim_worker::db::DbHealth;
use baseaim_worker::http::{self, HttpState};
use baseaim_worker::jobs::{self, AppState};
use baseaim_worker::queue::testing::{DrainReport, drain};
use baseaim_worker::queue::{Registry, rate_limit};
use baseaim_worker::sim::resend::{ResendConfig, ResendSim};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::support::TestDb;

pub struct Api {
    pub db: TestDb,
    pub sim: ResendSim,
    pub state: AppState,
    pub registry: Registry<AppState>,
    pub app: Router,
}

/// What a call answered: status, the body as JSON (or as a JSON string when it is not JSON), and
/// the headers.
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
    pub text: String,
    pub headers: header::HeaderMap,
}

impl Api {
    pub async fn new() -> Api {
        Api::with(|_| {}).await
    }

    /// With `adjust` applied to the config the tests run with.
    pub async fn with(adjust: impl FnOnce(&mut Config)) -> Api {
        let sim = ResendSim::start(ResendConfig {
            rate_limit_per_second: 1000,
            ..ResendConfig::default()
        })
        .await
        .expect("start the Resend simulator");
        let mut config = Config::load_from(None, std::iter::empty()).expect("default config");
        config.resend.api_base = sim.base_url().to_owned();
        config.resend.timeout = Duration::from_millis(500);
        config.rate_limits.insert(
            "resend".into(),
            RateLimitConfig {
                rate: 1000.0,
                per: Duration::from_secs(1),
                burst: 1000.0,
            },
        );
        // Queues of their own, so tests can count exactly what they ran.
        for queue in ["api_q", "metrics_q", "metrics_later", "reports"] {
            config
                .queues
                .insert(queue.into(), QueueConfig { concurrency: 2 });
        }
        adjust(&mut config);
        let db = TestDb::new().await;
        rate_limit::declare(&db.pool, &config.rate_limits)
            .await
            .expect("declare rate limits");
        let secrets = Secrets {
            resend_api_key: Some(SecretString::from(sim.api_key())),
            ..Secrets::default()
        };
        let state =
            AppState::new(db.pool.clone(), Arc::new(config), Arc::new(secrets)).expect("app state");
        let health = DbHealth::spawn(
            db.pool.clone(),
            Duration::from_secs(1),
            CancellationToken::new(),
        );
        let app = http::router(HttpState::new(state.clone(), health));
        Api {
            db,
            sim,
            state,
            registry: jobs::registry(),
            app,
        }
    }

    /// A live token with `scopes`.
    pub async fn token(&self, scopes: &[&str]) -> String {
        baseaim_worker::auth::tokens::create(&self.db.pool, "test-caller", scopes)
            .await
            .expect("create token")
    }

    /// Calls the router; `body` is sent as JSON.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        self.call_with(method, path, token, body, &[]).await
    }

    /// `POST /v1/admin/jobs/bulk` with `body`, as `token`.
    pub async fn bulk(&self, token: &str, body: Value) -> Answer {
        self.call(Method::POST, "/v1/admin/jobs/bulk", Some(token), Some(body))
            .await
    }

    pub async fn call_with(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = match body {
            Some(body) => request
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        }
        .unwrap();
        self.send(request).await
    }

    pub async fn send(&self, request: Request<Body>) -> Answer {
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 24)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.clone()));
        Answer {
            status,
            body,
            text,
            headers,
        }
    }

    /// POSTs each body to `path` under `token`: each must get a 422 whose `error` names what was
    /// wrong (contains its needle).
    pub async fn assert_each_unprocessable(
        &self,
        path: &str,
        token: &str,
        cases: &[(Value, &str)],
    ) {
        for (body, needle) in cases {
            let answer = self
                .call(Method::POST, path, Some(token), Some(body.clone()))
                .await;
            assert_eq!(
                answer.status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{body}: {}",
                answer.text
            );
            let error = answer.body["error"].as_str().unwrap_or_default();
            assert!(
                error.contains(needle),
                "{body}: `{error}` should name `{needle}`"
            );
        }
    }

    /// Runs `queue` until nothing is runnable now.
    pub async fn drain(&self, queue: &str) -> DrainReport {
        drain(&self.db.pool, &self.registry, self.state.clone(), queue)
            .await
            .expect("drain")
    }

    pub async fn job_count(&self) -> i64 {
        sqlx::query_scalar("select count(*) from jobs")
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
    }
}

/// `path` with `{id}` and `{name}` filled in.
pub fn concrete(path: &str) -> String {
    path.replace("{id}", "1").replace("{name}", "default")
}

/// `key=value&...`, percent-encoded.
pub fn query(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// The data every template needs.
pub fn email_data() -> Value {
    serde_json::json!({
        "client_name": "Acme & Sons",
        "amount": "120.00",
        "currency": "EUR",
        "invoice_url": "https://pay.example.com/in_1",
    })
}
