//! Downtime: a tick that every node missed is enqueued once (`latest`) or not at all (`skip`),
//! never one job per missed tick; a new schedule waits for its next tick.

use std::time::Duration;

use baseaim_worker::schedule::{CatchUp, RunReport, Scheduler};
use chrono::{DateTime, Utc};

use super::support::TestDb;
use super::{at, complete_all, expected, keys_of, schedule};

/// Runs `scheduler` every 10 s of simulated time over [from, to], completing jobs as it goes.
async fn run_between(
    scheduler: &Scheduler,
    db: &TestDb,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Vec<DateTime<Utc>> {
    let mut skipped = Vec::new();
    let mut now = from;
    while now <= to {
        let report = scheduler.run_once(now).await.expect("run_once");
        skipped.extend(report.skipped.into_iter().map(|(_, tick)| tick));
        complete_all(&db.pool).await;
        now += Duration::from_secs(10);
    }
    skipped
}

/// Every 5 minutes; the only node runs 12:00:30-12:07:00, is down until 12:31:40 (ticks 12:10
/// to 12:30 pass unseen), then a new process takes over until 12:40:30.
async fn downtime_scenario(catch_up: CatchUp) -> (TestDb, RunReport, Vec<DateTime<Utc>>) {
    let db = TestDb::new().await;
    let schedules = vec![schedule("sync", "*/5 * * * *", "UTC", catch_up)];
    let before = Scheduler::new(db.pool.clone(), schedules.clone());
    let mut skipped = run_between(
        &before,
        &db,
        at("2025-06-01T12:00:30Z"),
        at("2025-06-01T12:07:00Z"),
    )
    .await;
    drop(before); // the node goes down
    let restarted = Scheduler::new(db.pool.clone(), schedules);
    let at_restart = restarted
        .run_once(at("2025-06-01T12:31:40Z"))
        .await
        .expect("run_once");
    skipped.extend(
        run_between(
            &restarted,
            &db,
            at("2025-06-01T12:31:50Z"),
            at("2025-06-01T12:40:30Z"),
        )
        .await,
    );
    (db, at_restart, skipped)
}

#[tokio::test]
async fn a_node_down_across_ticks_enqueues_exactly_one_catch_up_job_for_the_latest() {
    let (db, at_restart, skipped) = downtime_scenario(CatchUp::Latest).await;
    assert_eq!(
        keys_of(&db.pool, "sync").await,
        expected(
            "sync",
            &[
                "2025-06-01T12:05:00Z",
                // The one catch-up job: the latest missed tick. 12:10, 12:15, 12:20 and 12:25
                // are not replayed.
                "2025-06-01T12:30:00Z",
                "2025-06-01T12:35:00Z",
                "2025-06-01T12:40:00Z",
            ]
        )
    );
    // It was enqueued by the restarted node's first evaluation, not at some later tick.
    let ticks: Vec<_> = at_restart.enqueued.iter().map(|e| e.1).collect();
    assert_eq!(ticks, vec![at("2025-06-01T12:30:00Z")]);
    assert!(skipped.is_empty());
}

#[tokio::test]
async fn policy_skip_enqueues_nothing_for_missed_ticks() {
    let (db, at_restart, skipped) = downtime_scenario(CatchUp::Skip).await;
    assert!(at_restart.enqueued.is_empty());
    assert_eq!(
        keys_of(&db.pool, "sync").await,
        expected(
            "sync",
            &[
                "2025-06-01T12:05:00Z",
                "2025-06-01T12:35:00Z",
                "2025-06-01T12:40:00Z",
            ]
        )
    );
    // The restarted node passed the late 12:30 tick over, and nothing else.
    assert_eq!(
        at_restart.skipped,
        vec![("sync".to_string(), at("2025-06-01T12:30:00Z"))]
    );
    assert!(skipped.is_empty());
    let last: DateTime<Utc> =
        sqlx::query_scalar("select last_tick_at from schedules where name = 'sync'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(last, at("2025-06-01T12:40:00Z"));
}

#[tokio::test]
async fn a_tick_seen_within_the_grace_is_on_time_even_under_skip() {
    let db = TestDb::new().await;
    let scheduler = Scheduler::new(
        db.pool.clone(),
        vec![schedule("sync", "*/5 * * * *", "UTC", CatchUp::Skip)],
    );
    scheduler
        .run_once(at("2025-06-01T12:01:00Z"))
        .await
        .unwrap();
    // A database blip: the 12:05 tick is first evaluated 40 s late.
    let report = scheduler
        .run_once(at("2025-06-01T12:05:40Z"))
        .await
        .unwrap();
    assert_eq!(report.enqueued.len(), 1);
    assert!(report.skipped.is_empty());
    assert_eq!(
        keys_of(&db.pool, "sync").await,
        expected("sync", &["2025-06-01T12:05:00Z"])
    );
}

#[tokio::test]
async fn a_new_schedule_starts_with_its_next_tick() {
    let db = TestDb::new().await;
    let scheduler = Scheduler::new(
        db.pool.clone(),
        vec![schedule("daily", "0 4 * * *", "UTC", CatchUp::Latest)],
    );
    // First deployment at 15:00: the 04:00 tick of the morning is not fired retroactively.
    let report = scheduler
        .run_once(at("2025-06-01T15:00:00Z"))
        .await
        .unwrap();
    assert!(report.enqueued.is_empty());
    assert_eq!(report.next_tick, Some(at("2025-06-02T04:00:00Z")));
    scheduler
        .run_once(at("2025-06-02T03:59:59Z"))
        .await
        .unwrap();
    assert!(keys_of(&db.pool, "daily").await.is_empty());
    scheduler
        .run_once(at("2025-06-02T04:00:00Z"))
        .await
        .unwrap();
    assert_eq!(
        keys_of(&db.pool, "daily").await,
        expected("daily", &["2025-06-02T04:00:00Z"])
    );
}

#[tokio::test]
async fn a_changed_cron_starts_with_its_next_tick_instead_of_firing_at_deploy_time() {
    let db = TestDb::new().await;
    let at_four = Scheduler::new(
        db.pool.clone(),
        vec![schedule("daily", "0 4 * * *", "UTC", CatchUp::Latest)],
    );
    at_four.run_once(at("2025-06-01T12:00:00Z")).await.unwrap();
    at_four.run_once(at("2025-06-02T04:00:00Z")).await.unwrap();
    assert_eq!(
        keys_of(&db.pool, "daily").await,
        expected("daily", &["2025-06-02T04:00:00Z"])
    );
    // Deployed at 10:00 with the job moved to 09:00: this morning's 09:00 is not run now.
    let at_nine = Scheduler::new(
        db.pool.clone(),
        vec![schedule("daily", "0 9 * * *", "UTC", CatchUp::Latest)],
    );
    let report = at_nine.run_once(at("2025-06-02T10:00:00Z")).await.unwrap();
    assert!(report.enqueued.is_empty(), "{report:?}");
    at_nine.run_once(at("2025-06-03T08:59:59Z")).await.unwrap();
    at_nine.run_once(at("2025-06-03T09:00:00Z")).await.unwrap();
    assert_eq!(
        keys_of(&db.pool, "daily").await,
        expected("daily", &["2025-06-02T04:00:00Z", "2025-06-03T09:00:00Z"])
    );
    // A changed zone is a change too: 09:00 in Berlin is 07:00Z, already past at 08:00Z.
    let berlin = Scheduler::new(
        db.pool.clone(),
        vec![schedule(
            "daily",
            "0 9 * * *",
            "Europe/Berlin",
            CatchUp::Latest,
        )],
    );
    let report = berlin.run_once(at("2025-06-04T08:00:00Z")).await.unwrap();
    assert!(report.enqueued.is_empty(), "{report:?}");
    berlin.run_once(at("2025-06-05T07:00:00Z")).await.unwrap();
    assert_eq!(
        keys_of(&db.pool, "daily").await.last(),
        Some(&"schedule:daily:2025-06-05T07:00:00Z".to_string())
    );
}
