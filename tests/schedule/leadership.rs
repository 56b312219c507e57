//! The maintenance leader (rescuer, pruner) dies without resigning: another node takes over
//! within the TTL and rescues the jobs the dead node left running.

use std::time::{Duration, Instant};

use baseaim_worker::queue::maintenance::{self, LEADER_NAME, MaintenanceSettings};
use baseaim_worker::queue::testing::{JobFactory, insert_job};
use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::support::{TestDb, eventually};

#[tokio::test]
async fn a_killed_leader_is_replaced_within_the_ttl_and_the_rescuer_runs_again() {
    let db = TestDb::new().await;
    let ttl = Duration::from_millis(1500);
    let settings = MaintenanceSettings {
        // Short: a new leader's rescuer waits `rescue_grace(lease)` after winning.
        lease: Duration::from_millis(250),
        leader_ttl: ttl,
        rescue_interval: Duration::from_millis(100),
        prune_after: Duration::from_secs(7 * 24 * 3600),
        prune_interval: Duration::from_secs(60),
        prune_batch: 1000,
    };
    let stop = CancellationToken::new();
    let a = tokio::spawn(maintenance::run(
        db.pool.clone(),
        "node-a".into(),
        settings.clone(),
        stop.child_token(),
    ));
    let pool = db.pool.clone();
    eventually(5, "node-a leads", || {
        let pool = pool.clone();
        async move {
            maintenance::leader_of(&pool, LEADER_NAME)
                .await
                .unwrap()
                .as_deref()
                == Some("node-a")
        }
    })
    .await;
    let b = tokio::spawn(maintenance::run(
        db.pool.clone(),
        "node-b".into(),
        settings.clone(),
        stop.child_token(),
    ));
    // node-b campaigns but cannot take a live leader's row.
    tokio::time::sleep(ttl).await;
    assert_eq!(
        maintenance::leader_of(&db.pool, LEADER_NAME)
            .await
            .unwrap()
            .as_deref(),
        Some("node-a")
    );

    // Kill node-a: its loop stops mid-flight and never resigns; its row just expires. A job it
    // held is left running with an expired lease.
    a.abort();
    let killed_at = Instant::now();
    let stuck = insert_job(
        &db.pool,
        JobFactory {
            state: "running".into(),
            attempt: 1,
            lease_owner: Some("node-a".into()),
            lease_expires_at: Some(Utc::now() - chrono::Duration::seconds(1)),
            ..JobFactory::default()
        },
    )
    .await;

    let pool = db.pool.clone();
    eventually(10, "the stuck job is rescued", || {
        let pool = pool.clone();
        async move {
            let state: String = sqlx::query_scalar("select state from jobs where id = $1")
                .bind(stuck)
                .fetch_one(&pool)
                .await
                .unwrap();
            state == "retryable"
        }
    })
    .await;
    let took = killed_at.elapsed();
    assert_eq!(
        maintenance::leader_of(&db.pool, LEADER_NAME)
            .await
            .unwrap()
            .as_deref(),
        Some("node-b")
    );
    // The dead leader's row lives at most 2/3 ttl after its last renewal (so after the kill);
    // node-b campaigns every ttl/3, so it leads within the ttl, and rescues on its first tick
    // after the rescue grace.
    let bound = ttl
        + maintenance::rescue_grace(settings.lease)
        + settings.rescue_interval
        + Duration::from_millis(300);
    assert!(
        took <= bound,
        "took over and rescued after {took:?}, more than {bound:?}"
    );
    // And not before node-a's row could have expired: node-b did not steal a live lease.
    assert!(took >= ttl / 3, "took over after only {took:?}");
    stop.cancel();
    b.await.unwrap();
}
