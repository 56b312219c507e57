//! `GET /healthz`: the process is alive. `GET /readyz`: the database answers and has every
//! migration this binary knows, from the health monitor's latest check, and (on a node) the
//! engine has started and not begun stopping; 503 otherwise.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use super::HttpState;
use crate::db::DbState;

pub fn router() -> Router<HttpState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Whether a node's engine runs: set by the node once its engine has started (after the
/// migrations), cleared when it begins to stop. A node whose database is ready but whose engine
/// does not run (still migrating, or unable to) is not ready.
#[derive(Debug, Clone, Default)]
pub struct EngineStatus(Arc<AtomicBool>);

impl EngineStatus {
    pub fn set(&self, running: bool) {
        self.0.store(running, Ordering::Release);
    }

    pub fn running(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

async fn readyz(State(state): State<HttpState>) -> (StatusCode, &'static str) {
    match state.health.state() {
        DbState::Ready if state.engine.as_ref().is_some_and(|e| !e.running()) => {
            (StatusCode::SERVICE_UNAVAILABLE, "engine not running\n")
        }
        DbState::Ready => (StatusCode::OK, "ready\n"),
        DbState::NotMigrated => (StatusCode::SERVICE_UNAVAILABLE, "database not migrated\n"),
        DbState::Down => (StatusCode::SERVICE_UNAVAILABLE, "database unreachable\n"),
        DbState::Unknown => (StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
    }
}
