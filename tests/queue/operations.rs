//! Operators' operations: list with filters and keyset pages, retry, cancel, delete, counts,
//! pruning.

use baseaim_worker::queue::admin;
use baseaim_worker::queue::admin_query::{self, JobQuery};
use baseaim_worker::queue::bulk::{self, BulkAction};
use baseaim_worker::queue::maintenance::prune_once;
use baseaim_worker::queue::testing::{JobFactory, assert_enqueued, drain, insert_job};
use baseaim_worker::queue::{NewJob, enqueue, enqueue_many};
use chrono::Utc;

use crate::common::*;
use crate::support::TestDb;

#[tokio::test]
async fn list_filters_by_state_kind_tag_and_args_with_keyset_pages() {
    let db = TestDb::new().await;
    let mut jobs: Vec<NewJob> = (0..25).map(|n| NewJob::of(&Count { n }).unwrap()).collect();
    jobs.push(
        NewJob::raw(
            "send_email",
            serde_json::json!({"client_id": 42, "template": "welcome"}),
        )
        .tags(["vip"]),
    );
    jobs.push(NewJob::raw(
        "send_email",
        serde_json::json!({"client_id": 7, "template": "welcome"}),
    ));
    enqueue_many(&db.pool, jobs).await.unwrap();

    let list = |query: JobQuery, before: Option<i64>, limit: i64| {
        let pool = db.pool.clone();
        async move { admin_query::job_page(&pool, &query, before, limit).await }
    };
    let by_args = list(
        JobQuery {
            args: Some(r#"{"client_id": 42}"#.into()),
            ..Default::default()
        },
        None,
        50,
    )
    .await
    .unwrap()
    .jobs;
    assert_eq!(by_args.len(), 1);
    assert_eq!(by_args[0].args["client_id"], 42);

    let by_tag = list(
        JobQuery {
            tag: Some("vip".into()),
            ..Default::default()
        },
        None,
        50,
    )
    .await
    .unwrap()
    .jobs;
    assert_eq!(by_tag.len(), 1);
    let by_kind = list(
        JobQuery {
            kind: Some("send_email".into()),
            ..Default::default()
        },
        None,
        50,
    )
    .await
    .unwrap()
    .jobs;
    assert_eq!(by_kind.len(), 2);

    // Pages of 10 over the 25 count jobs: newest first, no overlap, nothing missed.
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = list(
            JobQuery {
                kind: Some("test_count".into()),
                ..Default::default()
            },
            before,
            10,
        )
        .await
        .unwrap();
        assert!(page.jobs.windows(2).all(|w| w[0].id > w[1].id));
        seen.extend(page.jobs.iter().map(|j| j.id));
        match page.next_before {
            Some(next) => before = Some(next),
            None => break,
        }
    }
    assert_eq!(seen.len(), 25);
    seen.dedup();
    assert_eq!(seen.len(), 25, "no job on two pages");

    let err = list(
        JobQuery {
            state: Some("exploded".into()),
            ..Default::default()
        },
        None,
        5,
    )
    .await
    .err()
    .unwrap();
    assert!(err.to_string().contains("unknown state `exploded`"));
}

#[tokio::test]
async fn retry_runs_a_discarded_job_again_and_cancel_and_delete_do_what_they_say() {
    let db = TestDb::new().await;
    let effects = Effects::default();
    let failing = enqueue(&db.pool, NewJob::of(&Reject {}).unwrap())
        .await
        .unwrap()
        .id;
    let waiting = enqueue(
        &db.pool,
        NewJob::of(&Count { n: 1 })
            .unwrap()
            .delay(std::time::Duration::from_secs(3600)),
    )
    .await
    .unwrap()
    .id;
    drain(&db.pool, &registry(), effects.clone(), "default")
        .await
        .unwrap();
    assert_eq!(state_of(&db.pool, failing).await, "discarded");

    // Retry: runnable now; it had used up nothing (max 25) so attempts stay as they were.
    assert_eq!(
        admin::retry(&mut db.pool.acquire().await.unwrap(), &[failing])
            .await
            .unwrap(),
        1
    );
    assert_eq!(state_of(&db.pool, failing).await, "available");
    assert_enqueued(&db.pool, "test_reject", serde_json::json!({})).await;

    // Cancel: only unfinished jobs; a finished one is left alone.
    assert_eq!(
        admin::cancel(&mut db.pool.acquire().await.unwrap(), &[waiting, failing])
            .await
            .unwrap(),
        2
    );
    assert_eq!(state_of(&db.pool, waiting).await, "cancelled");
    let done = enqueue(&db.pool, NewJob::of(&Count { n: 2 }).unwrap())
        .await
        .unwrap()
        .id;
    drain(&db.pool, &registry(), effects.clone(), "default")
        .await
        .unwrap();
    assert_eq!(
        admin::cancel(&mut db.pool.acquire().await.unwrap(), &[done])
            .await
            .unwrap(),
        0
    );
    assert_eq!(state_of(&db.pool, done).await, "completed");

    // Delete: finished jobs only.
    let pending = enqueue(&db.pool, NewJob::of(&Count { n: 3 }).unwrap())
        .await
        .unwrap()
        .id;
    assert_eq!(
        admin::delete(
            &mut db.pool.acquire().await.unwrap(),
            &[done, waiting, pending]
        )
        .await
        .unwrap(),
        2
    );
    assert!(admin::get(&db.pool, done).await.unwrap().is_none());
    assert!(admin::get(&db.pool, pending).await.unwrap().is_some());

    let counts = admin::counts(&db.pool).await.unwrap();
    let available = counts
        .iter()
        .find(|c| c.state == "available")
        .map(|c| c.count);
    assert_eq!(available, Some(1));
}

#[tokio::test]
async fn retrying_a_job_that_used_up_its_attempts_gives_it_one_more() {
    let db = TestDb::new().await;
    let id = insert_job(
        &db.pool,
        JobFactory {
            kind: "test_count".into(),
            args: serde_json::json!({"n": 1}),
            state: "discarded".into(),
            attempt: 3,
            max_attempts: 3,
            finished_at: Some(Utc::now()),
            ..Default::default()
        },
    )
    .await;
    admin::retry(&mut db.pool.acquire().await.unwrap(), &[id])
        .await
        .unwrap();
    let report = drain(&db.pool, &registry(), Effects::default(), "default")
        .await
        .unwrap();
    assert_eq!(report.completed, 1);
    let job = admin::get(&db.pool, id).await.unwrap().unwrap();
    assert_eq!(
        (job.state.as_str(), job.attempt, job.max_attempts),
        ("completed", 4, 4)
    );
}

/// Inserts a discarded job holding unique key `key`, tagged `tag`, in a queue no engine works.
async fn discarded_with_key(pool: &sqlx::PgPool, key: &str, tag: &str) -> i64 {
    sqlx::query_scalar(
        "insert into jobs (kind, queue, state, attempt, unique_key, tags, finished_at)
         values ('noop', 'elsewhere', 'discarded', 1, $1, array[$2], now()) returning id",
    )
    .bind(key)
    .bind(tag)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn retrying_finished_jobs_that_share_a_unique_key_runs_the_newest_once() {
    let db = TestDb::new().await;
    let older = discarded_with_key(&db.pool, "invoice:7", "twins").await;
    let newer = discarded_with_key(&db.pool, "invoice:7", "twins").await;
    let changed = admin::retry(&mut db.pool.acquire().await.unwrap(), &[older, newer])
        .await
        .unwrap();
    assert_eq!(changed, 1);
    assert_eq!(state_of(&db.pool, newer).await, "available");
    assert_eq!(state_of(&db.pool, older).await, "discarded");
    // Retried again while the newer one holds the key: nothing to do, no error.
    assert_eq!(
        admin::retry(&mut db.pool.acquire().await.unwrap(), &[older, newer])
            .await
            .unwrap(),
        1,
        "the one already waiting is set to run now; the other is skipped"
    );
    assert_eq!(state_of(&db.pool, older).await, "discarded");

    // The same through a bulk action by filter: it finishes, one job changed.
    let (a, b) = (
        discarded_with_key(&db.pool, "invoice:8", "pair").await,
        discarded_with_key(&db.pool, "invoice:8", "pair").await,
    );
    let query = JobQuery {
        tag: Some("pair".into()),
        ..JobQuery::default()
    };
    let outcome = bulk::apply_matching(
        &db.pool,
        &query,
        BulkAction::Retry,
        "a test",
        std::time::Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert!(outcome.finished, "{outcome:?}");
    assert_eq!(outcome.changed, 1);
    let record = bulk::record(&db.pool, outcome.record.unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.status(Utc::now()), "finished", "{record:?}");
    assert_eq!(record.changed, 1);
    assert_eq!(state_of(&db.pool, b).await, "available");
    assert_eq!(state_of(&db.pool, a).await, "discarded");
}

#[tokio::test]
async fn a_retry_racing_an_enqueue_of_the_same_key_skips_that_job_and_retries_the_rest() {
    let db = TestDb::new().await;
    let taken = discarded_with_key(&db.pool, "report:1", "race").await;
    let free = discarded_with_key(&db.pool, "report:2", "race").await;
    // An enqueue of report:1 is under way in another transaction when the retry starts: the
    // retry's snapshot cannot see it, the unique index can.
    let mut enqueuing = db.pool.begin().await.unwrap();
    sqlx::query(
        "insert into jobs (kind, queue, state, unique_key) values ('noop', 'elsewhere', 'available', 'report:1')",
    )
    .execute(&mut *enqueuing)
    .await
    .unwrap();
    let pool = db.pool.clone();
    let retry = tokio::spawn(async move {
        admin::retry(&mut pool.acquire().await.unwrap(), &[taken, free]).await
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    enqueuing.commit().await.unwrap();
    assert_eq!(retry.await.unwrap().unwrap(), 1);
    assert_eq!(state_of(&db.pool, taken).await, "discarded");
    assert_eq!(state_of(&db.pool, free).await, "available");
}

#[tokio::test]
async fn pruning_deletes_old_finished_jobs_only() {
    let db = TestDb::new().await;
    let old = Utc::now() - chrono::Duration::days(30);
    let mut old_ids = Vec::new();
    for state in ["completed", "discarded", "cancelled"] {
        old_ids.push(
            insert_job(
                &db.pool,
                JobFactory {
                    state: state.into(),
                    finished_at: Some(old),
                    ..Default::default()
                },
            )
            .await,
        );
    }
    let recent = insert_job(
        &db.pool,
        JobFactory {
            state: "completed".into(),
            finished_at: Some(Utc::now()),
            ..Default::default()
        },
    )
    .await;
    let waiting = insert_job(
        &db.pool,
        JobFactory {
            state: "available".into(),
            ..Default::default()
        },
    )
    .await;
    // Bulk action records: one over long ago, one stalled long ago, one over recently.
    sqlx::query(
        "insert into bulk_actions (action, filter, requested_by, started_at, updated_at, finished_at)
         values ('retry', '{}', 'old', now() - interval '30 days', now() - interval '30 days',
                 now() - interval '30 days'),
                ('cancel', '{}', 'stalled', now() - interval '30 days',
                 now() - interval '30 days', null),
                ('delete', '{}', 'recent', now(), now(), now())",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let pruned = prune_once(&db.pool, Utc::now() - chrono::Duration::days(7), 2)
        .await
        .unwrap();
    assert_eq!(pruned, 3, "in batches of 2 until none is left");
    let kept: Vec<String> = sqlx::query_scalar("select requested_by from bulk_actions")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        kept,
        ["recent"],
        "bulk action records age out with the jobs"
    );
    for id in old_ids {
        assert!(admin::get(&db.pool, id).await.unwrap().is_none());
    }
    assert!(admin::get(&db.pool, recent).await.unwrap().is_some());
    assert!(admin::get(&db.pool, waiting).await.unwrap().is_some());
}

/// A bulk action left running in the background when its node shuts down says so in the log, with
/// how far it got; its record is exactly as far as the jobs it changed, and the maintenance
/// leader's take-over carries it on from there to the end, acting on each job once (a retry of a
/// job done twice would count twice).
#[test]
fn a_bulk_action_cut_short_by_shutdown_is_logged_then_resumed_where_it_stopped() {
    use baseaim_worker::queue::bulk::{self, BulkAction, RunEnd};
    const JOBS: i64 = 50_000;
    let captured = crate::support::CapturedLog::default();
    let sink = captured.clone();
    let subscriber = baseaim_worker::telemetry::json_subscriber(
        tracing_subscriber::EnvFilter::new("info"),
        move || sink.clone(),
    );
    // The runtime is single-threaded and dropped on this thread, under this subscriber.
    let _guard = tracing::subscriber::set_default(subscriber);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let db = runtime.block_on(async {
        let db = TestDb::new().await;
        let query = completed_jobs_tagged(&db.pool, "big", JOBS).await;
        let outcome = bulk::apply_matching(
            &db.pool,
            &query,
            BulkAction::Retry,
            "a test",
            std::time::Duration::ZERO,
        )
        .await
        .unwrap();
        assert!(!outcome.finished, "{outcome:?}");
        // A few batches, not fifty.
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        db
    });
    drop(runtime);

    let lines: Vec<serde_json::Value> = captured
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .filter(|l: &serde_json::Value| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("interrupted by the node's shutdown"))
        })
        .collect();
    assert_eq!(lines.len(), 1, "{}", captured.text());
    assert_eq!(lines[0]["level"], "WARN");
    assert_eq!(lines[0]["fields"]["action"], "retry");
    let logged = lines[0]["fields"]["changed"].as_i64().unwrap();
    assert!(logged < JOBS, "{logged}: it was cut short");

    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
            let retried = || jobs_in_state(&pool, "available");
            // Its record is left unfinished, exactly as far as the jobs it changed (each batch
            // commits with its progress; the log may lag the last one).
            let (changed, finished_at, by): (i64, Option<chrono::DateTime<Utc>>, String) =
                sqlx::query_as("select changed, finished_at, requested_by from bulk_actions")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            assert_eq!(finished_at, None, "not finished");
            assert_eq!(by, "a test");
            assert!(
                changed == logged || changed == logged + 1_000,
                "record {changed}, logged {logged}"
            );
            assert_eq!(retried().await, changed, "the record matches the jobs");

            // The dropped runtime's connection holds the record's row lock until the server
            // has noticed it closed, and a take-over skips a locked record.
            crate::support::eventually(10, "the record's lock released", || async {
                sqlx::query_scalar::<_, i64>(
                    "select count(*) from (select id from bulk_actions for update skip locked) r",
                )
                .fetch_one(&pool)
                .await
                .unwrap()
                    == 1
            })
            .await;
            // Another node's maintenance takes it over (here without waiting for STALLED_AFTER).
            let mut runs = bulk::resume_stalled(&pool, std::time::Duration::ZERO)
                .await
                .unwrap();
            assert_eq!(runs.len(), 1);
            let ended = runs[0]
                .finished_within(std::time::Duration::from_secs(120))
                .await
                .expect("it ends")
                .unwrap();
            assert_eq!(ended, RunEnd::Finished(JOBS as u64));
            assert_eq!(retried().await, JOBS, "every job, the rest included");
            let record = bulk::record(&pool, runs[0].id).await.unwrap().unwrap();
            assert_eq!(record.changed, JOBS, "no job twice: {record:?}");
            assert_eq!(record.resumed, 1);
            assert_eq!(record.status(Utc::now()), "finished", "{record:?}");
            // Nothing is left to take over.
            assert!(
                bulk::resume_stalled(&pool, std::time::Duration::ZERO)
                    .await
                    .unwrap()
                    .is_empty()
            );
            pool.close().await;
        });
    // The database is dropped from a runtime of its own.
    drop(db);
}

/// Taking over an action whose run is alive (as a node whose batches seemed to have stopped for
/// a minute would be) still acts on each job once: the old run finds another owner and stops
/// before its next batch; a batch in flight is never taken over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_action_taken_over_while_running_acts_on_each_job_once() {
    use baseaim_worker::queue::bulk::{self, BulkAction, BulkRun, RunEnd};
    const JOBS: i64 = 20_000;
    let db = TestDb::new().await;
    let query = completed_jobs_tagged(&db.pool, "twice", JOBS).await;
    let mut original = BulkRun::start(&db.pool, &query, BulkAction::Retry, "a test")
        .await
        .unwrap();
    let mut taker = None;
    while taker.is_none() {
        let record = bulk::record(&db.pool, original.id).await.unwrap().unwrap();
        if record.finished_at.is_some() {
            break;
        }
        taker = bulk::resume_stalled(&db.pool, std::time::Duration::ZERO)
            .await
            .unwrap()
            .pop();
    }
    let mut taker = taker.expect("taken over while it ran");
    let first = original
        .finished_within(std::time::Duration::from_secs(120))
        .await
        .unwrap()
        .unwrap();
    let second = taker
        .finished_within(std::time::Duration::from_secs(120))
        .await
        .unwrap()
        .unwrap();
    // The old run stops at its next batch, or had just done the last one.
    assert!(
        matches!(first, RunEnd::TakenOver(_) | RunEnd::Finished(_)),
        "{first:?}"
    );
    assert_eq!(second, RunEnd::Finished(JOBS as u64));
    let retried = jobs_in_state(&db.pool, "available").await;
    assert_eq!(retried, JOBS);
    let record = bulk::record(&db.pool, original.id).await.unwrap().unwrap();
    assert_eq!(record.changed, JOBS, "no job twice: {record:?}");
    assert_eq!(record.status(Utc::now()), "finished", "{record:?}");
    assert_eq!(record.resumed, 1);
}

/// The maintenance leader of a running node takes over a bulk action whose node died (here: its
/// runtime torn down after the first batches, its record then a minute silent) and finishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_maintenance_leader_finishes_a_bulk_action_whose_node_died() {
    use baseaim_worker::queue::bulk::{self, BulkAction, BulkRun};
    const JOBS: i64 = 30_000;
    let db = TestDb::new().await;
    // In a queue the node does not work, so that the retried jobs stay available.
    let query = completed_jobs_tagged(&db.pool, "orphan", JOBS).await;
    // The node that dies: its own runtime and pool, gone once the first batch is recorded.
    let url = db.url.clone();
    let id = std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let id = runtime.block_on(async {
            let pool = sqlx::PgPool::connect(&url).await.unwrap();
            let run = BulkRun::start(&pool, &query, BulkAction::Retry, "a dead node")
                .await
                .unwrap();
            while bulk::record(&pool, run.id).await.unwrap().unwrap().changed == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            run.id
        });
        runtime.shutdown_background();
        id
    })
    .join()
    .unwrap();
    let cut = bulk::record(&db.pool, id).await.unwrap().unwrap();
    assert!(cut.changed < JOBS, "cut short: {cut:?}");
    // A minute of silence, as its record would show after the node's death.
    sqlx::query("update bulk_actions set updated_at = now() - interval '2 minutes'")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        bulk::record(&db.pool, id)
            .await
            .unwrap()
            .unwrap()
            .status(Utc::now()),
        "stalled"
    );

    let engine = start_engine(&db.pool, &Effects::default(), engine_config(1)).await;
    let pool = db.pool.clone();
    crate::support::eventually(120, "the bulk action finished by the leader", || {
        let pool = pool.clone();
        async move {
            let record = bulk::record(&pool, id).await.unwrap().unwrap();
            record.finished_at.is_some()
        }
    })
    .await;
    engine.shutdown().await;
    let record = bulk::record(&db.pool, id).await.unwrap().unwrap();
    assert_eq!(record.status(Utc::now()), "finished", "{record:?}");
    assert_eq!(record.changed, JOBS, "each job once: {record:?}");
    assert_eq!(record.resumed, 1);
    let retried = jobs_in_state(&db.pool, "available").await;
    assert_eq!(retried, JOBS);
}

/// A bulk action cut short by the database going away (its connections terminated mid-batch) is
/// not marked failed: it pauses, and the maintenance leader's take-over finishes it, each job once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_action_cut_short_by_a_database_outage_pauses_and_is_resumed() {
    use baseaim_worker::queue::admin::AdminError;
    use baseaim_worker::queue::bulk::{self, BulkAction, BulkRun, RunEnd};
    const JOBS: i64 = 50_000;
    let db = TestDb::new().await;
    let query = completed_jobs_tagged(&db.pool, "outage", JOBS).await;
    let run_pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let mut run = BulkRun::start(&run_pool, &query, BulkAction::Retry, "a test")
        .await
        .unwrap();
    // Every other connection to the database is cut, again and again, until the run gives up.
    let mut control = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url)
        .await
        .unwrap();
    let ended = loop {
        if let Some(ended) = run
            .finished_within(std::time::Duration::from_millis(10))
            .await
        {
            break ended;
        }
        sqlx::query(
            "select pg_terminate_backend(pid) from pg_stat_activity
             where datname = current_database() and pid <> pg_backend_pid()",
        )
        .execute(&mut control)
        .await
        .unwrap();
    };
    match ended {
        Err(AdminError::Database(error)) => {
            assert!(baseaim_worker::db::database_unavailable(&error), "{error}")
        }
        other => panic!("cut short by the outage, not {other:?}"),
    }
    let record = bulk::record(&db.pool, run.id).await.unwrap().unwrap();
    assert_eq!(record.finished_at, None, "not failed: {record:?}");
    assert_eq!(record.error, None, "{record:?}");
    assert!(record.changed < JOBS, "{record:?}");

    let mut resumed = bulk::resume_stalled(&db.pool, std::time::Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(resumed.len(), 1);
    let ended = resumed[0]
        .finished_within(std::time::Duration::from_secs(120))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ended, RunEnd::Finished(JOBS as u64));
    let retried = jobs_in_state(&db.pool, "available").await;
    assert_eq!(retried, JOBS);
    let record = bulk::record(&db.pool, run.id).await.unwrap().unwrap();
    assert_eq!(record.changed, JOBS, "each job once: {record:?}");
    assert_eq!(record.status(Utc::now()), "finished");
}
