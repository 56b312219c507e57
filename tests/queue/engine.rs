//! The running engine: several nodes, leases, rescue, rate limits, shutdown, pause, outages.

use std::time::{Duration, Instant};

use baseaim_worker::queue::maintenance::rescue_once;
use baseaim_worker::queue::testing::{JobFactory, insert_job};
use baseaim_worker::queue::{NewJob, admin, enqueue, enqueue_many};
use chrono::Utc;
use sqlx::PgPool;

use crate::common::*;
use crate::support::{PgProxy, TestDb, eventually};

async fn count_in(pool: &PgPool, state: &str) -> i64 {
    sqlx::query_scalar("select count(*) from jobs where state = $1")
        .bind(state)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn two_engines_never_run_the_same_job_twice() {
    let db = TestDb::new().await;
    let effects = Effects::default();
    let a = start_engine(&db.pool, &effects, engine_config(20)).await;
    let b = start_engine(&db.pool, &effects, engine_config(20)).await;
    let jobs: Vec<NewJob> = (0..3000)
        .map(|n| NewJob::of(&Count { n }).unwrap())
        .collect();
    let ids: Vec<i64> = enqueue_many(&db.pool, jobs)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    eventually(60, "all 3000 jobs completed", || async {
        count_in(&db.pool, "completed").await == 3000
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
    let runs = effects.runs.lock().unwrap().clone();
    assert_eq!(runs.len(), 3000);
    assert!(
        ids.iter().all(|id| runs.get(id) == Some(&1)),
        "every job ran exactly once"
    );
    let nodes: Vec<String> = sqlx::query_scalar("select distinct lease_owner from jobs")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(nodes.len(), 2, "both engines took a share: {nodes:?}");
}

#[tokio::test]
async fn an_idle_engine_starts_a_new_job_at_once_and_a_scheduled_one_at_its_time() {
    let db = TestDb::new().await;
    let effects = Effects::default();
    let mut config = engine_config(5);
    config.poll_interval = Duration::from_secs(60); // only NOTIFY and the due-time timer can wake it
    let engine = start_engine(&db.pool, &effects, config).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let t0 = Instant::now();
    let id = enqueue(&db.pool, NewJob::of(&Count { n: 1 }).unwrap())
        .await
        .unwrap()
        .id;
    eventually(5, "the job ran", || async { effects.runs_of(id) == 1 }).await;
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "woken by NOTIFY, not the 60 s poll"
    );

    let t0 = Instant::now();
    let later = enqueue(
        &db.pool,
        NewJob::of(&Count { n: 2 })
            .unwrap()
            .delay(Duration::from_millis(800)),
    )
    .await
    .unwrap()
    .id;
    eventually(10, "the scheduled job ran", || async {
        effects.runs_of(later) == 1
    })
    .await;
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(750),
        "not before its run_at: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(3),
        "at its run_at, not at the next poll: {waited:?}"
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn a_snoozed_job_comes_back_on_time_without_spending_an_attempt() {
    let db = TestDb::new().await;
    let effects = Effects::default();
    let mut config = engine_config(5);
    config.poll_interval = Duration::from_secs(60);
    let engine = start_engine(&db.pool, &effects, config).await;
    let id = enqueue(&db.pool, NewJob::of(&SnoozeOnce { secs: 1 }).unwrap())
        .await
        .unwrap()
        .id;
    eventually(10, "snoozed job completed", || async {
        state_of(&db.pool, id).await == "completed"
    })
    .await;
    let job = admin::get(&db.pool, id).await.unwrap().unwrap();
    assert_eq!(job.attempt, 1);
    assert_eq!(effects.runs_of(id), 2);
    engine.shutdown().await;
}

#[tokio::test]
async fn a_snooze_of_millions_of_years_is_cut_to_a_month_and_leaves_nothing_running() {
    let db = TestDb::new().await;
    let effects = Effects::default();
    let engine = start_engine(&db.pool, &effects, engine_config(5)).await;
    let id = enqueue(&db.pool, NewJob::of(&SnoozeOnce { secs: 1 << 50 }).unwrap())
        .await
        .unwrap()
        .id;
    eventually(10, "the snooze is recorded", || async {
        state_of(&db.pool, id).await == "scheduled"
    })
    .await;
    let job = admin::get(&db.pool, id).await.unwrap().unwrap();
    let cap = chrono::Duration::days(30);
    assert!(
        job.run_at <= Utc::now() + cap
            && job.run_at > Utc::now() + cap - chrono::Duration::hours(1),
        "runs again at {}, a month from now",
        job.run_at
    );
    assert_eq!(job.attempt, 0, "a snooze gives the attempt back");
    eventually(5, "nothing left running on the node", || async {
        engine.running() == 0
    })
    .await;
    engine.shutdown().await;
}

#[tokio::test]
async fn an_expired_lease_is_rescued_exactly_once_and_the_old_node_is_fenced() {
    let db = TestDb::new().await;
    let past = Utc::now() - chrono::Duration::seconds(60);
    let id = insert_job(
        &db.pool,
        JobFactory {
            state: "running".into(),
            attempt: 1,
            lease_owner: Some("dead-node".into()),
            lease_expires_at: Some(past),
            ..Default::default()
        },
    )
    .await;
    let last_chance = insert_job(
        &db.pool,
        JobFactory {
            state: "running".into(),
            attempt: 3,
            max_attempts: 3,
            lease_owner: Some("dead-node".into()),
            lease_expires_at: Some(past),
            ..Default::default()
        },
    )
    .await;
    let healthy = insert_job(
        &db.pool,
        JobFactory {
            state: "running".into(),
            attempt: 1,
            lease_owner: Some("live-node".into()),
            lease_expires_at: Some(Utc::now() + chrono::Duration::seconds(60)),
            ..Default::default()
        },
    )
    .await;

    // Two leaders racing (e.g. during a handover) still rescue each job once.
    let (a, b) = tokio::join!(
        rescue_once(&db.pool, None, Duration::from_secs(30), 100),
        rescue_once(&db.pool, None, Duration::from_secs(30), 100)
    );
    assert_eq!(a.unwrap() + b.unwrap(), 2);
    assert_eq!(
        rescue_once(&db.pool, None, Duration::from_secs(30), 100)
            .await
            .unwrap(),
        0
    );

    let job = admin::get(&db.pool, id).await.unwrap().unwrap();
    assert_eq!(
        (job.state.as_str(), job.attempt),
        ("retryable", 1),
        "the attempt stays counted"
    );
    assert!(
        job.errors.unwrap()[0]["error"]
            .as_str()
            .unwrap()
            .contains("dead-node")
    );
    assert_eq!(state_of(&db.pool, last_chance).await, "discarded");
    assert_eq!(state_of(&db.pool, healthy).await, "running");

    // The rescued job runs again elsewhere once its backoff has passed; the dead node waking up
    // cannot overwrite it.
    make_due(&db.pool, id).await;
    let effects = Effects::default();
    baseaim_worker::queue::testing::drain(&db.pool, &registry(), effects.clone(), "default")
        .await
        .unwrap();
    let job = admin::get(&db.pool, id).await.unwrap().unwrap();
    assert_eq!((job.state.as_str(), job.attempt), ("completed", 2));
    let stale = baseaim_worker::queue::execute::Finish {
        id,
        attempt: 1,
        outcome: baseaim_worker::queue::execute::Outcome::Discarded("late".into()),
    };
    let written = baseaim_worker::queue::execute::finish_many(&db.pool, "dead-node", &[stale])
        .await
        .unwrap();
    assert_eq!(written, 0);
    assert_eq!(state_of(&db.pool, id).await, "completed");
}

#[tokio::test]
async fn a_rescued_job_waits_a_backoff_that_grows_with_its_attempts() {
    let db = TestDb::new().await;
    let past = Utc::now() - chrono::Duration::seconds(60);
    let mut ids = Vec::new();
    for attempt in [1, 3, 30] {
        ids.push(
            insert_job(
                &db.pool,
                JobFactory {
                    state: "running".into(),
                    attempt,
                    max_attempts: 50,
                    lease_owner: Some("crashing-node".into()),
                    lease_expires_at: Some(past),
                    ..Default::default()
                },
            )
            .await,
        );
    }
    let before = Utc::now();
    assert_eq!(
        rescue_once(&db.pool, None, Duration::from_secs(30), 100)
            .await
            .unwrap(),
        3
    );
    let after = Utc::now();
    // 2 s, 8 s, and the one-hour cap; the clocks of this test and the database may differ a bit.
    let slack = chrono::Duration::seconds(1);
    for (id, wait) in ids.into_iter().zip([2, 8, 3600]) {
        let job = admin::get(&db.pool, id).await.unwrap().unwrap();
        assert_eq!(job.state, "retryable");
        let wait = chrono::Duration::seconds(wait);
        assert!(
            job.run_at >= before + wait - slack && job.run_at <= after + wait + slack,
            "job {id} (attempt {}) runs again at {}, expected {wait} after the rescue",
            job.attempt,
            job.run_at
        );
    }
}

#[tokio::test]
async fn a_node_that_dies_has_its_jobs_rescued_by_the_leader_and_run_again() {
    let db = TestDb::new().await;
    let effects = Effects::default();
    let mut short = engine_config(5);
    short.lease = Duration::from_secs(1);
    short.heartbeat = Duration::from_millis(300);
    // The leader's rescuer starts a grace of two leases after it wins (see rescue_grace).
    short.maintenance.as_mut().unwrap().lease = short.lease;
    // The doomed node: claims a job that sleeps, then its heartbeat stops (simulated death:
    // its leases are left to expire by pushing them into the past).
    let id = enqueue(&db.pool, NewJob::of(&Sleep { ms: 3_000 }).unwrap())
        .await
        .unwrap()
        .id;
    let doomed = start_engine(&db.pool, &effects, {
        let mut c = short.clone();
        c.maintenance = None;
        c
    })
    .await;
    let doomed_node = doomed.node().to_string();
    eventually(5, "claimed", || async {
        state_of(&db.pool, id).await == "running"
    })
    .await;
    // The process "dies": its tasks keep running in this test process, so stop renewing by
    // moving its lease owner to a name no heartbeat renews.
    sqlx::query("update jobs set lease_owner = 'crashed', lease_expires_at = now() - interval '1 second' where id = $1")
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap();
    // A healthy leader rescues it; it is runnable again (retryable, attempt counted).
    let leader = start_engine(&db.pool, &effects, {
        let mut c = short.clone();
        c.node = "test-leader".into(); // a different node (configs are cloned)
        c.queues.clear();
        c
    })
    .await;
    eventually(10, "rescued", || async {
        state_of(&db.pool, id).await == "retryable"
    })
    .await;
    // The doomed node's heartbeat notices it lost the job and stops it; the job then runs
    // again (on either node) and completes: one effect, the rescued attempt counted.
    eventually(15, "the rescued job completed", || async {
        state_of(&db.pool, id).await == "completed"
    })
    .await;
    assert_eq!(
        effects.runs_of(id),
        1,
        "the lost run had no effect; the rerun had one"
    );
    let job = admin::get(&db.pool, id).await.unwrap().unwrap();
    assert_eq!(job.attempt, 2);
    let errors = job.errors.unwrap();
    assert_eq!(errors.as_array().unwrap().len(), 1);
    assert!(errors[0]["error"].as_str().unwrap().contains("crashed"));
    let _ = doomed_node;
    doomed.shutdown().await;
    leader.shutdown().await;
}

#[tokio::test]
async fn after_an_outage_the_rescuer_leaves_live_nodes_time_to_heartbeat_again() {
    let db = TestDb::new().await;
    let lease = Duration::from_secs(2);
    // The database was out for longer than a lease: a live node's heartbeat is two leases old
    // and its running job's lease has expired.
    sqlx::query(
        "insert into nodes (name, role, version, heartbeat_at)
         values ('live-node', 'all', 'test', now() - interval '4 seconds')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let id = insert_job(
        &db.pool,
        JobFactory {
            state: "running".into(),
            attempt: 1,
            lease_owner: Some("live-node".into()),
            lease_expires_at: Some(Utc::now() - chrono::Duration::seconds(4)),
            ..Default::default()
        },
    )
    .await;
    // The database is back: a node becomes leader at once and ticks its rescuer every 200 ms.
    let mut config = engine_config(1);
    config.queues.clear();
    config.lease = lease;
    config.heartbeat = Duration::from_millis(300);
    config.maintenance.as_mut().unwrap().lease = lease;
    let leader = start_engine(&db.pool, &Effects::default(), config).await;
    let node = leader.node().to_string();
    eventually(10, "the node leads", || async {
        baseaim_worker::queue::maintenance::leader_of(&db.pool, "maintenance")
            .await
            .unwrap()
            .as_deref()
            == Some(node.as_str())
    })
    .await;
    // The live node's next heartbeat comes a second later (its interval, say), and it goes on
    // heartbeating past the leader's grace.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let heartbeat_until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < heartbeat_until {
        sqlx::query("update nodes set heartbeat_at = now() where name = 'live-node'")
            .execute(&db.pool)
            .await
            .unwrap();
        assert_eq!(
            state_of(&db.pool, id).await,
            "running",
            "a live node's job was taken from it"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The node dies (no heartbeat any more): its job is rescued a lease later.
    eventually(15, "the dead node's job is rescued", || async {
        state_of(&db.pool, id).await == "retryable"
    })
    .await;
    leader.shutdown().await;
}

#[tokio::test]
async fn a_rate_limit_holds_across_two_engines() {
    let db = TestDb::new().await;
    let effects = Effects::default();
    // `tight`: 10 per second, burst 1.
    let a = start_engine(&db.pool, &effects, engine_config(10)).await;
    let b = start_engine(&db.pool, &effects, engine_config(10)).await;
    let jobs: Vec<NewJob> = (0..25).map(|_| NewJob::of(&Limited {}).unwrap()).collect();
    enqueue_many(&db.pool, jobs).await.unwrap();
    eventually(30, "all limited jobs completed", || async {
        count_in(&db.pool, "completed").await == 25
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
    let mut started = effects.started.lock().unwrap().clone();
    started.sort();
    assert_eq!(started.len(), 25);
    // In any window, at most burst + rate * window runs (plus scheduling slack of one).
    for (i, t) in started.iter().enumerate() {
        for (j, u) in started.iter().enumerate().skip(i + 1) {
            let window = u.duration_since(*t).as_secs_f64();
            let runs = (j - i + 1) as f64;
            assert!(
                runs <= 1.0 + 10.0 * window + 1.0,
                "{runs} runs within {window:.3}s breaks 10/s"
            );
        }
    }
    let first_to_last = started
        .last()
        .unwrap()
        .duration_since(started[0])
        .as_secs_f64();
    assert!(
        first_to_last >= 2.0,
        "25 runs at 10/s take over 2 s, took {first_to_last:.2}s"
    );
    let attempts: Vec<i32> = sqlx::query_scalar("select attempt from jobs")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert!(
        attempts.iter().all(|&a| a == 1),
        "waiting for a token spends no attempt: {attempts:?}"
    );
}

#[tokio::test]
async fn shutdown_releases_in_flight_jobs_after_the_grace_period() {
    let db = TestDb::new().await;
    let effects = Effects::default();
    let mut config = engine_config(5);
    config.shutdown_grace = Duration::from_millis(300);
    let engine = start_engine(&db.pool, &effects, config).await;
    let slow = enqueue(&db.pool, NewJob::of(&Sleep { ms: 60_000 }).unwrap())
        .await
        .unwrap()
        .id;
    let quick = enqueue(&db.pool, NewJob::of(&Sleep { ms: 100 }).unwrap())
        .await
        .unwrap()
        .id;
    eventually(5, "both running", || async {
        count_in(&db.pool, "running").await == 2
    })
    .await;
    let t0 = Instant::now();
    engine.shutdown().await;
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eq!(
        count_in(&db.pool, "running").await,
        0,
        "nothing stays running after a clean exit"
    );
    let job = admin::get(&db.pool, slow).await.unwrap().unwrap();
    assert_eq!(
        (job.state.as_str(), job.attempt),
        ("available", 0),
        "released, attempt given back"
    );
    assert_eq!(
        state_of(&db.pool, quick).await,
        "completed",
        "a job within the grace finishes"
    );
    assert_eq!(effects.runs_of(slow), 0);
}

#[tokio::test]
async fn a_claim_under_way_when_shutdown_begins_starts_no_job_and_gives_it_back() {
    let db = TestDb::new().await;
    let effects = Effects::default();
    let mut config = engine_config(5);
    config.poll_interval = Duration::from_secs(60);
    let engine = start_engine(&db.pool, &effects, config).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // idle, waiting for work
    // Hold the claim up: it reads `queues` (is the queue paused?), which this lock blocks.
    let mut blocker = db.pool.begin().await.unwrap();
    sqlx::query("lock table queues in access exclusive mode")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let id = enqueue(&db.pool, NewJob::of(&Count { n: 1 }).unwrap())
        .await
        .unwrap()
        .id;
    tokio::time::sleep(Duration::from_millis(500)).await; // the notified producer is claiming
    let shutdown = tokio::spawn(engine.shutdown());
    tokio::time::sleep(Duration::from_millis(500)).await;
    blocker.commit().await.unwrap(); // the claim gets its job, after shutdown began
    tokio::time::timeout(Duration::from_secs(30), shutdown)
        .await
        .expect("shutdown ends")
        .unwrap();
    assert_eq!(effects.runs_of(id), 0, "a job started after shutdown began");
    let job = admin::get(&db.pool, id).await.unwrap().unwrap();
    assert_eq!((job.state.as_str(), job.attempt), ("available", 0));
}

#[tokio::test]
async fn a_paused_queue_is_not_claimed_until_resumed() {
    let db = TestDb::new().await;
    let effects = Effects::default();
    admin::pause(&db.pool, "default").await.unwrap();
    let engine = start_engine(&db.pool, &effects, engine_config(5)).await;
    let id = enqueue(&db.pool, NewJob::of(&Count { n: 1 }).unwrap())
        .await
        .unwrap()
        .id;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(state_of(&db.pool, id).await, "available");
    assert_eq!(
        admin::paused_queues(&db.pool).await.unwrap(),
        vec!["default".to_string()]
    );
    admin::resume(&db.pool, "default").await.unwrap();
    eventually(5, "runs after resume", || async {
        state_of(&db.pool, id).await == "completed"
    })
    .await;
    engine.shutdown().await;
}

#[tokio::test]
async fn a_paused_queue_with_a_job_past_due_leaves_its_producer_idle() {
    let db = TestDb::new().await;
    let effects = Effects::default();
    admin::pause(&db.pool, "default").await.unwrap();
    let id = insert_job(
        &db.pool,
        JobFactory {
            kind: "test_count".into(),
            args: serde_json::json!({ "n": 1 }),
            state: "retryable".into(),
            attempt: 1,
            run_at: Some(Utc::now() - chrono::Duration::minutes(1)),
            ..Default::default()
        },
    )
    .await;
    let mut config = engine_config(5);
    config.poll_interval = Duration::from_secs(60); // only the resume notification wakes it
    let engine = start_engine(&db.pool, &effects, config).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = engine.claims();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let claims = engine.claims() - before;
    assert!(
        claims < 20,
        "{claims} claims in 2 s on a paused queue: the producer spins"
    );
    assert_eq!(state_of(&db.pool, id).await, "retryable");
    admin::resume(&db.pool, "default").await.unwrap();
    eventually(5, "runs after resume", || async {
        state_of(&db.pool, id).await == "completed"
    })
    .await;
    engine.shutdown().await;
}

#[tokio::test]
async fn cancelling_a_running_job_stops_it() {
    let db = TestDb::new().await;
    let effects = Effects::default();
    let engine = start_engine(&db.pool, &effects, engine_config(5)).await;
    let id = enqueue(&db.pool, NewJob::of(&Sleep { ms: 60_000 }).unwrap())
        .await
        .unwrap()
        .id;
    eventually(5, "running", || async {
        state_of(&db.pool, id).await == "running"
    })
    .await;
    assert_eq!(
        admin::cancel(&mut db.pool.acquire().await.unwrap(), &[id])
            .await
            .unwrap(),
        1
    );
    assert_eq!(state_of(&db.pool, id).await, "cancelled");
    eventually(5, "the task stopped", || async { engine.running() == 0 }).await;
    assert_eq!(effects.runs_of(id), 0);
    engine.shutdown().await;
    assert_eq!(state_of(&db.pool, id).await, "cancelled");
}

#[tokio::test]
async fn losing_the_database_mid_run_loses_no_job_and_leaves_none_running() {
    let db = TestDb::new().await;
    let proxy = PgProxy::start().await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(10)
        .acquire_timeout(Duration::from_millis(500))
        .connect(&db.url_via(proxy.addr))
        .await
        .unwrap();
    let effects = Effects::default();
    let engine = start_engine(&pool, &effects, {
        let mut config = engine_config(10);
        // A claim whose answer is lost with the connection is given back after a lease.
        config.lease = Duration::from_secs(3);
        config
    })
    .await;
    let jobs: Vec<NewJob> = (0..400)
        .map(|_| NewJob::of(&Sleep { ms: 5 }).unwrap())
        .collect();
    enqueue_many(&db.pool, jobs).await.unwrap();
    eventually(10, "some progress", || async {
        count_in(&db.pool, "completed").await > 20
    })
    .await;
    proxy.down();
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.up();
    eventually(60, "every job completed", || async {
        count_in(&db.pool, "completed").await == 400
    })
    .await;
    engine.shutdown().await;
    assert_eq!(count_in(&db.pool, "running").await, 0);
    let runs = effects.runs.lock().unwrap().clone();
    assert_eq!(runs.len(), 400, "every job's effect happened");
}
