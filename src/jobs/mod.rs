//! One file per job kind: the payload struct, its policy and `perform`. This module wires them
//! into the [`Registry`] a node runs, over the application state [`AppState`].

mod prune;

use std::sync::Arc;

use sqlx::PgPool;

use crate::config::{Config, Secrets};
use crate::queue::Registry;

pub use prune::Prune;

/// What jobs may use: the pool, the config and the secrets (integration clients join it as the
/// integrations land). Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub config: Arc<Config>,
    pub secrets: Arc<Secrets>,
}

/// Every kind this binary can run.
pub fn registry() -> Registry<AppState> {
    let mut registry = Registry::new();
    registry.register::<Prune>();
    registry
}
