//! Waking workers after a quiet insert.
//!
//! A transaction that ran NOTIFY takes a cluster-wide lock before its commit and keeps it until
//! the commit is on disk, so two notifying transactions never share a flush. The jobs table's
//! insert trigger notifies, which is right for the ordinary enqueue (one statement, one wake-up)
//! but serialises a writer that commits many small batches side by side, like the webhook
//! intake. Such a writer sets `baw.notify` to `off` for its transaction (the trigger then stays
//! silent) and, after each commit, pokes a [`Waker`]: one background task sends the
//! notifications, coalescing every poke that arrives while one is being sent, in a transaction
//! that does not wait for the disk (a notification lost in a crash costs one slow poll at most).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use sqlx::PgPool;
use tokio::sync::Notify;

use super::worker::CHANNEL_JOBS;

/// Sends `baw_jobs` notifications for queues poked since the last send; cheap to clone.
#[derive(Clone, Default)]
pub struct Waker {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    dirty: Mutex<BTreeSet<String>>,
    poked: Notify,
    started: std::sync::OnceLock<()>,
}

impl Waker {
    /// Asks for a notification for `queue` soon; the sender task starts on the first poke and
    /// ends when the last clone of this waker is dropped.
    pub fn poke(&self, pool: &PgPool, queue: &str) {
        {
            let mut dirty = self.inner.dirty.lock().expect("waker lock");
            if !dirty.contains(queue) {
                dirty.insert(queue.to_owned());
            }
        }
        self.inner.started.get_or_init(|| {
            tokio::spawn(send(Arc::downgrade(&self.inner), pool.clone()));
        });
        self.inner.poked.notify_one();
    }
}

async fn send(inner: std::sync::Weak<Inner>, pool: PgPool) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let queues: Vec<String> = std::mem::take(&mut *strong.dirty.lock().expect("waker lock"))
            .into_iter()
            .collect();
        if queues.is_empty() {
            // Wait for a poke, looking every few seconds whether the waker is gone.
            let poked = strong.poked.notified();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), poked).await;
            continue;
        }
        drop(strong);
        // One round trip: the notifications, in a transaction that does not wait for its flush
        // (set inside the statement; its implicit transaction commits right after).
        let result = sqlx::query(
            "select pg_notify($1, q), set_config('synchronous_commit', 'off', true)
             from unnest($2::text[]) q",
        )
        .bind(CHANNEL_JOBS)
        .bind(&queues)
        .execute(&pool)
        .await;
        if let Err(error) = result {
            // The workers' slow poll finds the jobs anyway.
            tracing::debug!(%error, "waking workers after a quiet insert failed");
        }
    }
}
