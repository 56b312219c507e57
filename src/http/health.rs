//! `GET /healthz`: the process is alive. `GET /readyz`: the database answers and has every
//! migration this binary knows (503 otherwise), from the health monitor's latest check.

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

async fn readyz(State(state): State<HttpState>) -> (StatusCode, &'static str) {
    match state.health.state() {
        DbState::Ready => (StatusCode::OK, "ready\n"),
        DbState::NotMigrated => (StatusCode::SERVICE_UNAVAILABLE, "database not migrated\n"),
        DbState::Down => (StatusCode::SERVICE_UNAVAILABLE, "database unreachable\n"),
        DbState::Unknown => (StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
    }
}
