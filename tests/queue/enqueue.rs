//! Enqueue: unique keys, transactions, bulk, the SQL function.

use baseaim_worker::queue::{NewJob, enqueue, enqueue_many};

use crate::common::*;
use crate::support::TestDb;

#[tokio::test]
async fn a_unique_key_under_100_concurrent_enqueues_makes_one_row() {
    let db = TestDb::new().await;
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..100 {
        let pool = db.pool.clone();
        tasks.spawn(async move {
            enqueue(
                &pool,
                NewJob::of(&Count { n })
                    .unwrap()
                    .unique_key("sync:client-42:tick-1"),
            )
            .await
            .unwrap()
        });
    }
    let results: Vec<_> = tasks.join_all().await;
    let rows: i64 = sqlx::query_scalar("select count(*) from jobs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 1);
    let id: i64 = sqlx::query_scalar("select id from jobs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(
        results.iter().all(|r| r.id == id),
        "every caller gets the one job's id"
    );
    assert_eq!(results.iter().filter(|r| r.inserted).count(), 1);
}

#[tokio::test]
async fn a_unique_key_is_free_again_once_the_job_finished() {
    let db = TestDb::new().await;
    let first = enqueue(
        &db.pool,
        NewJob::of(&Count { n: 1 }).unwrap().unique_key("k"),
    )
    .await
    .unwrap();
    let again = enqueue(
        &db.pool,
        NewJob::of(&Count { n: 2 }).unwrap().unique_key("k"),
    )
    .await
    .unwrap();
    assert_eq!((again.id, again.inserted), (first.id, false));
    baseaim_worker::queue::testing::drain(&db.pool, &registry(), Effects::default(), "default")
        .await
        .unwrap();
    let after = enqueue(
        &db.pool,
        NewJob::of(&Count { n: 3 }).unwrap().unique_key("k"),
    )
    .await
    .unwrap();
    assert!(after.inserted);
    assert_ne!(after.id, first.id);
}

#[tokio::test]
async fn an_enqueue_in_a_rolled_back_transaction_leaves_nothing() {
    let db = TestDb::new().await;
    sqlx::query("create table webhook_rows (id text primary key)")
        .execute(&db.pool)
        .await
        .unwrap();

    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("insert into webhook_rows values ('evt_1')")
        .execute(&mut *tx)
        .await
        .unwrap();
    enqueue(&mut *tx, NewJob::of(&Count { n: 1 }).unwrap())
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let jobs: i64 = sqlx::query_scalar("select count(*) from jobs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let rows: i64 = sqlx::query_scalar("select count(*) from webhook_rows")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!((jobs, rows), (0, 0));

    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("insert into webhook_rows values ('evt_2')")
        .execute(&mut *tx)
        .await
        .unwrap();
    enqueue_many(
        &mut *tx,
        vec![
            NewJob::of(&Count { n: 2 }).unwrap(),
            NewJob::of(&Count { n: 3 }).unwrap(),
        ],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let jobs: i64 = sqlx::query_scalar("select count(*) from jobs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(jobs, 2);
}

#[tokio::test]
async fn bulk_enqueue_returns_one_result_per_job_in_order() {
    let db = TestDb::new().await;
    let held = enqueue(
        &db.pool,
        NewJob::of(&Count { n: 0 }).unwrap().unique_key("held"),
    )
    .await
    .unwrap();
    let jobs = vec![
        NewJob::of(&Count { n: 1 }).unwrap().tags(["a", "b"]),
        NewJob::of(&Count { n: 2 }).unwrap().unique_key("held"),
        NewJob::of(&Count { n: 3 }).unwrap().unique_key("fresh"),
        NewJob::of(&Count { n: 4 }).unwrap().unique_key("fresh"),
        NewJob::of(&Count { n: 5 })
            .unwrap()
            .queue("other")
            .priority(3)
            .max_attempts(2),
    ];
    let out = enqueue_many(&db.pool, jobs).await.unwrap();
    assert_eq!(out.len(), 5);
    assert!(out[0].inserted);
    assert_eq!((out[1].id, out[1].inserted), (held.id, false));
    assert!(out[2].inserted);
    assert_eq!(
        (out[3].id, out[3].inserted),
        (out[2].id, false),
        "duplicates within one batch collapse"
    );
    let (n, tags): (serde_json::Value, Vec<String>) =
        sqlx::query_as("select args->'n', tags from jobs where id = $1")
            .bind(out[0].id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        (n, tags),
        (serde_json::json!(1), vec!["a".to_string(), "b".to_string()])
    );
    let (queue, priority, max): (String, i16, i32) =
        sqlx::query_as("select queue, priority, max_attempts from jobs where id = $1")
            .bind(out[4].id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((queue.as_str(), priority, max), ("other", 3, 2));
    let rows: i64 = sqlx::query_scalar("select count(*) from jobs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 4);
}

#[tokio::test]
async fn invalid_jobs_are_refused_before_anything_is_stored() {
    let db = TestDb::new().await;
    let err = enqueue_many(
        &db.pool,
        vec![
            NewJob::of(&Count { n: 1 }).unwrap(),
            NewJob::raw("", serde_json::json!({})),
        ],
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("kind must not be empty"), "{err}");
    let err = enqueue(
        &db.pool,
        NewJob::of(&Count { n: 1 }).unwrap().max_attempts(0),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("max_attempts"), "{err}");
    let rows: i64 = sqlx::query_scalar("select count(*) from jobs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);
}

#[tokio::test]
async fn the_sql_function_enqueues_idempotently_inside_a_callers_transaction() {
    let db = TestDb::new().await;
    let mut tx = db.pool.begin().await.unwrap();
    let a: i64 = sqlx::query_scalar(
        "select enqueue_job('test_count', '{\"n\":1}', unique_key => 'welcome:42')",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    let b: i64 = sqlx::query_scalar(
        "select enqueue_job('test_count', '{\"n\":1}', unique_key => 'welcome:42')",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(a, b);
    let delayed: i64 = sqlx::query_scalar(
        "select enqueue_job('test_count', '{\"n\":2}', queue => 'mail', run_at => now() + interval '1 hour',
                            tags => array['x'])",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let (state, queue): (String, String) =
        sqlx::query_as("select state, queue from jobs where id = $1")
            .bind(delayed)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((state.as_str(), queue.as_str()), ("scheduled", "mail"));
}

#[tokio::test]
async fn a_transactional_enqueue_can_run_in_a_spawned_task() {
    // axum handlers and spawned tasks need Send futures; this does not compile otherwise.
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let id = tokio::spawn(async move {
        let mut tx = pool.begin().await.unwrap();
        let enqueued = enqueue(&mut *tx, NewJob::of(&Count { n: 1 }).unwrap())
            .await
            .unwrap();
        tx.commit().await.unwrap();
        enqueued.id
    })
    .await
    .unwrap();
    assert_eq!(state_of(&db.pool, id).await, "available");
}
