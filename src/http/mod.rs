//! The axum intake. One module per surface, each with its own `router()`: `health` (liveness and
//! readiness), `webhooks` (Stripe), `api` (`/v1/*`), `metrics` (`/metrics`); uploads and the
//! dashboard join it in later issues.

pub mod api;
pub mod error;
mod health;
pub mod metrics;
pub mod uploads;
pub mod webhooks;

use std::net::SocketAddr;

use axum::Router;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;

use crate::db::DbHealth;
use crate::jobs::AppState;
pub use health::EngineStatus;

/// What every handler may need.
#[derive(Clone)]
pub struct HttpState {
    pub pool: PgPool,
    pub health: DbHealth,
    /// The config, the secrets and the integration clients, as jobs see them.
    pub app: AppState,
    /// The Stripe webhook's secrets and body limit.
    pub webhooks: webhooks::WebhookSettings,
    /// The node's engine, which `/readyz` waits for; None: no engine goes with this server
    /// (tests and benchmarks serving a router alone), readiness is the database's.
    pub engine: Option<EngineStatus>,
}

impl HttpState {
    /// The state a node serves with: every surface's settings from `app`'s config and secrets.
    pub fn new(app: AppState, health: DbHealth) -> Self {
        let webhooks = webhooks::WebhookSettings::from_config(&app.config, &app.secrets);
        HttpState {
            pool: app.pool.clone(),
            health,
            app,
            webhooks,
            engine: None,
        }
    }

    /// `/readyz` also waits for `engine` to run.
    pub fn with_engine(mut self, engine: EngineStatus) -> Self {
        self.engine = Some(engine);
        self
    }
}

/// The whole HTTP surface of a node.
pub fn router(state: HttpState) -> Router {
    // 5xx answers are logged where they arise (ApiError), with their cause; the trace layer's own
    // failure line would only repeat them (and flag every not-ready /readyz).
    Router::new()
        .merge(health::router())
        .merge(webhooks::router(&state.webhooks))
        .merge(uploads::router(&state.app.config.uploads))
        .merge(api::router(state.app.config.http.body_limit))
        .merge(metrics::router())
        .merge(crate::dashboard::web::router())
        .layer(TraceLayer::new_for_http().on_failure(()))
        .with_state(state)
}

/// What a node that does not run the intake serves on `http.ops_bind`: health and metrics only.
pub fn ops_router(state: HttpState) -> Router {
    Router::new()
        .merge(health::router())
        .merge(metrics::router())
        .layer(TraceLayer::new_for_http().on_failure(()))
        .with_state(state)
}

/// Binds `addr` and serves until `stop` is cancelled; in-flight requests are finished.
/// Returns the bound address (port 0 picks a free one) and the server's task.
///
/// The task waits for every open connection after `stop`, however long it takes: whoever stops
/// it bounds that wait (a node's `Node::stop` aborts it at the end of the shutdown grace).
/// `axum::serve` sets no header-read timeout (hyper's needs a timer axum does not give it), so a
/// client that never finishes its headers holds its connection until then.
pub async fn serve(
    addr: SocketAddr,
    app: Router,
    stop: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    use axum::serve::ListenerExt;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    // Answers are small and each is awaited by its caller: send them at once, not after the
    // peer's delayed ACK (Nagle's algorithm).
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let task = tokio::spawn(async move {
        // With each connection's peer address (`ConnectInfo`): the login's lock-out per address.
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
    });
    Ok((local, task))
}
