//! One file per job kind: the payload struct, its policy and `perform`. This module wires them
//! into the [`Registry`] a node runs, over the application state [`AppState`].

pub mod drive_delete;
pub mod drive_import;
pub mod drive_upload;
pub mod facebook_sync;
pub mod facebook_sync_account;
mod prune;
pub mod send_email;
pub mod stripe_event;
pub mod stripe_reconcile;

use std::sync::Arc;

use sqlx::PgPool;

use crate::config::{Config, Secrets};
use crate::integrations::resend::ResendClient;
use crate::queue::Registry;

pub use drive_delete::DriveDelete;
pub use drive_import::DriveImport;
pub use drive_upload::DriveUpload;
pub use facebook_sync::FacebookSync;
pub use facebook_sync_account::FacebookSyncAccount;
pub use prune::Prune;
pub use send_email::SendEmail;
pub use stripe_event::StripeEvent;
pub use stripe_reconcile::StripeReconcile;

/// What jobs may use: the pool, the config and the secrets (integration clients join it as the
/// integrations land). Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub config: Arc<Config>,
    pub secrets: Arc<Secrets>,
    /// None when `RESEND_API_KEY` is not set: `send_email` then discards with a clear error.
    pub resend: Option<ResendClient>,
}

impl AppState {
    /// The state with every integration client whose secret is present.
    pub fn new(pool: PgPool, config: Arc<Config>, secrets: Arc<Secrets>) -> anyhow::Result<Self> {
        let resend = match &secrets.resend_api_key {
            Some(key) => Some(
                ResendClient::new(&config.resend.api_base, key.clone(), config.resend.timeout)
                    .map_err(|e| anyhow::anyhow!("building the Resend client: {e}"))?,
            ),
            None => None,
        };
        Ok(AppState {
            pool,
            config,
            secrets,
            resend,
        })
    }
}

/// Every kind this binary can run.
pub fn registry() -> Registry<AppState> {
    let mut registry = Registry::new();
    registry.register::<Prune>();
    registry.register::<SendEmail>();
    registry.register::<StripeEvent>();
    registry.register::<StripeReconcile>();
    registry.register::<FacebookSync>();
    registry.register::<FacebookSyncAccount>();
    registry.register::<DriveUpload>();
    registry.register::<DriveDelete>();
    registry.register::<DriveImport>();
    registry
}
