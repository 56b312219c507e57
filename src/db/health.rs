//! The database health monitor: one task checks the database every second, keeps the latest state
//! for `/readyz`, and logs one line per change of state (not one per failed check).

use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbState {
    /// Not checked yet.
    Unknown,
    Ready,
    /// Reachable, but migrations are missing.
    NotMigrated,
    Down,
}

/// A handle to the latest database state; cheap to clone.
#[derive(Clone)]
pub struct DbHealth {
    rx: watch::Receiver<DbState>,
}

impl DbHealth {
    /// Starts the monitor on `pool`; it stops with `cancel`.
    pub fn spawn(pool: PgPool, interval: Duration, cancel: CancellationToken) -> Self {
        let (tx, rx) = watch::channel(DbState::Unknown);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = ticker.tick() => {}
                }
                let state = check(&pool, interval).await;
                let previous = *tx.borrow();
                if state != previous {
                    match state {
                        DbState::Ready => tracing::info!("database is ready"),
                        DbState::NotMigrated => {
                            tracing::warn!("database is reachable but not migrated")
                        }
                        DbState::Down => tracing::error!("database is unreachable"),
                        DbState::Unknown => {}
                    }
                    tx.send_replace(state);
                }
            }
        });
        DbHealth { rx }
    }

    pub fn state(&self) -> DbState {
        *self.rx.borrow()
    }

    /// Waits for the next change of state (used by tests and by start-up).
    pub async fn changed(&mut self) -> DbState {
        let _ = self.rx.changed().await;
        *self.rx.borrow()
    }
}

async fn check(pool: &PgPool, timeout: Duration) -> DbState {
    match tokio::time::timeout(timeout.max(Duration::from_secs(1)), super::is_ready(pool)).await {
        Ok(Ok(true)) => DbState::Ready,
        Ok(Ok(false)) => DbState::NotMigrated,
        Ok(Err(error)) => {
            tracing::debug!(%error, "database check failed");
            DbState::Down
        }
        Err(_) => DbState::Down,
    }
}
