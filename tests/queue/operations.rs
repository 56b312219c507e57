//! Operators' operations: list with filters and keyset pages, retry, cancel, delete, counts,
//! pruning.

use baseaim_worker::queue::admin;
use baseaim_worker::queue::admin_query::{self, JobQuery};
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
    assert_eq!(admin::retry(&db.pool, &[failing]).await.unwrap(), 1);
    assert_eq!(state_of(&db.pool, failing).await, "available");
    assert_enqueued(&db.pool, "test_reject", serde_json::json!({})).await;

    // Cancel: only unfinished jobs; a finished one is left alone.
    assert_eq!(
        admin::cancel(&db.pool, &[waiting, failing]).await.unwrap(),
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
    assert_eq!(admin::cancel(&db.pool, &[done]).await.unwrap(), 0);
    assert_eq!(state_of(&db.pool, done).await, "completed");

    // Delete: finished jobs only.
    let pending = enqueue(&db.pool, NewJob::of(&Count { n: 3 }).unwrap())
        .await
        .unwrap()
        .id;
    assert_eq!(
        admin::delete(&db.pool, &[done, waiting, pending])
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
    admin::retry(&db.pool, &[id]).await.unwrap();
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
/// how far it got, instead of vanishing with the runtime.
#[test]
fn a_background_bulk_action_cut_short_by_shutdown_is_logged() {
    use baseaim_worker::queue::bulk::{self, BulkAction};
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
        sqlx::query(
            "insert into jobs (kind, tags) select 'noop', '{big}' from generate_series(1, 50000)",
        )
        .execute(&db.pool)
        .await
        .unwrap();
        let query = JobQuery {
            tag: Some("big".into()),
            ..JobQuery::default()
        };
        let outcome = bulk::apply_matching(
            &db.pool,
            &query,
            BulkAction::Cancel,
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
    assert_eq!(lines[0]["fields"]["action"], "cancel");
    let changed = lines[0]["fields"]["changed"].as_u64().unwrap();
    assert!(changed < 50_000, "{changed}: it was cut short");
    // Its record is left unfinished, as far as it got (the dashboard shows it as stalled).
    let unfinished = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
            let record: (i64, Option<chrono::DateTime<Utc>>, String) =
                sqlx::query_as("select changed, finished_at, requested_by from bulk_actions")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            pool.close().await;
            record
        });
    assert_eq!(unfinished.1, None, "not finished");
    assert_eq!(unfinished.2, "a test");
    assert!(unfinished.0 as u64 <= changed, "{unfinished:?} / {changed}");
    // The database is dropped from a runtime of its own.
    drop(db);
}
