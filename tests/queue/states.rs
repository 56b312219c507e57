//! The state machine, driven deterministically with `drain`.

use baseaim_worker::queue::admin;
use baseaim_worker::queue::testing::{DrainReport, drain};
use baseaim_worker::queue::{NewJob, enqueue};
use chrono::Utc;

use crate::common::*;
use crate::support::{CapturedLog, TestDb};

#[tokio::test]
async fn a_job_completes_with_its_result() {
    let db = TestDb::new().await;
    let effects = Effects::default();
    let id = enqueue(&db.pool, NewJob::of(&Count { n: 7 }).unwrap())
        .await
        .unwrap()
        .id;
    assert_eq!(state_of(&db.pool, id).await, "available");

    let report = drain(&db.pool, &registry(), effects.clone(), "default")
        .await
        .unwrap();
    assert_eq!(
        report,
        DrainReport {
            completed: 1,
            ..Default::default()
        }
    );
    let job = admin::get(&db.pool, id).await.unwrap().unwrap();
    assert_eq!(job.state, "completed");
    assert_eq!(job.attempt, 1);
    assert_eq!(job.result, Some(serde_json::json!({ "n": 7 })));
    assert!(job.finished_at.is_some());
    assert_eq!(effects.runs_of(id), 1);
}

#[tokio::test]
async fn a_failure_spends_an_attempt_and_backs_off_then_discards() {
    let db = TestDb::new().await;
    let effects = Effects::default();
    let id = enqueue(
        &db.pool,
        NewJob::of(&Fail {
            message: "provider said 500".into(),
        })
        .unwrap(),
    )
    .await
    .unwrap()
    .id;

    let before = Utc::now();
    let report = drain(&db.pool, &registry(), effects.clone(), "default")
        .await
        .unwrap();
    assert_eq!(report.retried, 1);
    let job = admin::get(&db.pool, id).await.unwrap().unwrap();
    assert_eq!(job.state, "retryable");
    assert_eq!(job.attempt, 1);
    // Fail's backoff is 30 s for the first retry (no jitter).
    let wait = (job.run_at - before).num_seconds();
    assert!(
        (29..=31).contains(&wait),
        "run_at moved by the backoff: {wait}s"
    );
    let errors = job.errors.unwrap();
    assert_eq!(errors[0]["error"], "provider said 500");
    assert_eq!(errors[0]["attempt"], 1);

    // The backoff is honoured: nothing runs before run_at.
    let report = drain(&db.pool, &registry(), effects.clone(), "default")
        .await
        .unwrap();
    assert_eq!(report.total(), 0);
    assert_eq!(effects.runs_of(id), 1);

    // Once due, it runs; on its last attempt the failure discards it.
    for expected_attempt in [2, 3] {
        make_due(&db.pool, id).await;
        drain(&db.pool, &registry(), effects.clone(), "default")
            .await
            .unwrap();
        let job = admin::get(&db.pool, id).await.unwrap().unwrap();
        assert_eq!(job.attempt, expected_attempt);
    }
    let job = admin::get(&db.pool, id).await.unwrap().unwrap();
    assert_eq!(job.state, "discarded");
    assert_eq!(job.errors.unwrap().as_array().unwrap().len(), 3);
    assert_eq!(effects.runs_of(id), 3);
}

#[tokio::test]
async fn a_snooze_gives_the_attempt_back() {
    let db = TestDb::new().await;
    let effects = Effects::default();
    let id = enqueue(&db.pool, NewJob::of(&SnoozeOnce { secs: 60 }).unwrap())
        .await
        .unwrap()
        .id;
    let report = drain(&db.pool, &registry(), effects.clone(), "default")
        .await
        .unwrap();
    assert_eq!(report.snoozed, 1);
    let job = admin::get(&db.pool, id).await.unwrap().unwrap();
    assert_eq!(job.state, "scheduled");
    assert_eq!(job.attempt, 0, "a snooze spends no attempt");
    assert!(job.errors.is_none(), "a snooze is not an error");
    assert!(job.run_at > Utc::now() + chrono::Duration::seconds(55));

    make_due(&db.pool, id).await;
    drain(&db.pool, &registry(), effects.clone(), "default")
        .await
        .unwrap();
    let job = admin::get(&db.pool, id).await.unwrap().unwrap();
    assert_eq!((job.state.as_str(), job.attempt), ("completed", 1));
}

#[tokio::test]
async fn a_permanent_error_discards_at_once() {
    let db = TestDb::new().await;
    let id = enqueue(&db.pool, NewJob::of(&Reject {}).unwrap())
        .await
        .unwrap()
        .id;
    drain(&db.pool, &registry(), Effects::default(), "default")
        .await
        .unwrap();
    let job = admin::get(&db.pool, id).await.unwrap().unwrap();
    assert_eq!((job.state.as_str(), job.attempt), ("discarded", 1));
    assert_eq!(
        job.errors.unwrap()[0]["error"],
        "the recipient does not exist"
    );
}

#[tokio::test]
async fn a_panic_is_an_error_of_that_attempt() {
    let db = TestDb::new().await;
    let id = enqueue(&db.pool, NewJob::of(&Panic {}).unwrap())
        .await
        .unwrap()
        .id;
    let report = drain(&db.pool, &registry(), Effects::default(), "default")
        .await
        .unwrap();
    assert_eq!(report.retried, 1);
    let job = admin::get(&db.pool, id).await.unwrap().unwrap();
    assert_eq!(job.state, "retryable");
    assert_eq!(job.errors.unwrap()[0]["error"], "panicked: the job blew up");
}

#[tokio::test]
async fn a_panic_is_logged_as_one_json_error_line_in_the_jobs_span_and_counted() {
    let db = TestDb::new().await;
    let id = enqueue(&db.pool, NewJob::of(&Panic {}).unwrap())
        .await
        .unwrap()
        .id;
    let captured = CapturedLog::default();
    let sink = captured.clone();
    let subscriber = baseaim_worker::telemetry::json_subscriber(
        tracing_subscriber::EnvFilter::new("info"),
        move || sink.clone(),
    );
    let metrics = baseaim_worker::telemetry::metrics_handle();
    {
        // This test's runtime is single-threaded: the job runs on this thread, under this
        // subscriber. The hook is the daemon's (`telemetry::init` installs it); the default one
        // is back before anything else is asserted.
        let _guard = tracing::subscriber::set_default(subscriber);
        baseaim_worker::telemetry::log_panics();
        let report = drain(&db.pool, &registry(), Effects::default(), "default").await;
        let _ = std::panic::take_hook();
        assert_eq!(report.unwrap().retried, 1);
    }
    let output = captured.text();
    let panics: Vec<serde_json::Value> = output
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .filter(|l: &serde_json::Value| l["fields"]["message"] == "panicked")
        .collect();
    assert_eq!(panics.len(), 1, "{output}");
    let line = &panics[0];
    assert_eq!(line["level"], "ERROR", "{line}");
    assert_eq!(line["fields"]["panic"], "the job blew up", "{line}");
    assert!(
        line["fields"]["location"]
            .as_str()
            .is_some_and(|l| l.starts_with("tests/queue/common.rs:")),
        "{line}"
    );
    assert_eq!(line["span"]["name"], "job", "{line}");
    assert_eq!(line["span"]["id"], id, "{line}");
    assert_eq!(line["span"]["kind"], "test_panic", "{line}");
    // The job keeps the message too, as without the hook.
    let job = admin::get(&db.pool, id).await.unwrap().unwrap();
    assert_eq!(job.errors.unwrap()[0]["error"], "panicked: the job blew up");
    // Other tests of this binary may panic while the hook is set: at least this one is counted.
    let counted = metrics
        .render()
        .lines()
        .find_map(|l| l.strip_prefix("baw_panics_total ")?.parse::<f64>().ok());
    assert!(counted.is_some_and(|n| n >= 1.0), "{}", metrics.render());
}

#[tokio::test]
async fn a_timeout_is_an_error_of_that_attempt() {
    let db = TestDb::new().await;
    let id = enqueue(&db.pool, NewJob::of(&Slow {}).unwrap())
        .await
        .unwrap()
        .id;
    drain(&db.pool, &registry(), Effects::default(), "default")
        .await
        .unwrap();
    let job = admin::get(&db.pool, id).await.unwrap().unwrap();
    assert_eq!(job.state, "retryable");
    let error = job.errors.unwrap()[0]["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(error.starts_with("timed out after"), "{error}");
}

#[tokio::test]
async fn bad_args_are_discarded_with_a_clear_error() {
    let db = TestDb::new().await;
    let bad_args: i64 =
        sqlx::query_scalar("select enqueue_job('test_count', '{\"n\": \"seven\"}')")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let report = drain(&db.pool, &registry(), Effects::default(), "default")
        .await
        .unwrap();
    assert_eq!(report.discarded, 1);
    let job = admin::get(&db.pool, bad_args).await.unwrap().unwrap();
    assert_eq!(job.state, "discarded");
    assert!(
        job.errors.unwrap()[0]["error"]
            .as_str()
            .unwrap()
            .contains("args do not fit kind `test_count`")
    );
}

/// A job of kind `test_count`, and an older node of a rolling deploy, which knows no kind.
async fn job_and_a_node_not_knowing_its_kind(
    db: &TestDb,
) -> (i64, baseaim_worker::queue::Registry<Effects>) {
    let id = enqueue(&db.pool, NewJob::of(&Count { n: 1 }).unwrap())
        .await
        .unwrap()
        .id;
    (id, baseaim_worker::queue::Registry::new())
}

#[tokio::test]
async fn a_kind_this_node_does_not_know_is_given_back_for_a_node_that_does() {
    let db = TestDb::new().await;
    let effects = Effects::default();
    let (id, old_node) = job_and_a_node_not_knowing_its_kind(&db).await;
    let report = drain(&db.pool, &old_node, effects.clone(), "default")
        .await
        .unwrap();
    assert_eq!((report.snoozed, report.discarded), (1, 0));
    let job = admin::get(&db.pool, id).await.unwrap().unwrap();
    assert_eq!(
        (job.state.as_str(), job.attempt),
        ("scheduled", 0),
        "waiting again, the attempt given back"
    );
    assert!(job.run_at > Utc::now() + chrono::Duration::seconds(30));
    assert!(
        job.errors.unwrap()[0]["error"]
            .as_str()
            .unwrap()
            .contains("does not know kind `test_count`")
    );
    // Its wait over, a node that knows the kind runs it.
    make_due(&db.pool, id).await;
    let report = drain(&db.pool, &registry(), effects.clone(), "default")
        .await
        .unwrap();
    assert_eq!(report.completed, 1);
    let job = admin::get(&db.pool, id).await.unwrap().unwrap();
    assert_eq!((job.state.as_str(), job.attempt), ("completed", 1));
    assert_eq!(effects.runs_of(id), 1);
}

#[tokio::test]
async fn a_kind_no_node_knows_waits_longer_each_time_and_is_discarded_after_a_day() {
    let db = TestDb::new().await;
    let effects = Effects::default();
    let (id, old_node) = job_and_a_node_not_knowing_its_kind(&db).await;
    let give_back = || async {
        make_due(&db.pool, id).await;
        let report = drain(&db.pool, &old_node, effects.clone(), "default")
            .await
            .unwrap();
        let job = admin::get(&db.pool, id).await.unwrap().unwrap();
        (report, job)
    };
    let wait_of =
        |job: &baseaim_worker::queue::admin::JobRow| (job.run_at - Utc::now()).num_seconds();

    // The wait doubles: about a minute, then about two.
    let (_, first) = give_back().await;
    assert!((50..=60).contains(&wait_of(&first)), "{}", wait_of(&first));
    let (_, second) = give_back().await;
    assert!(
        (110..=120).contains(&wait_of(&second)),
        "{}",
        wait_of(&second)
    );
    assert_eq!((second.state.as_str(), second.attempt), ("scheduled", 0));

    // After about a day of give-backs (30 in all) it waits an hour between them, and the 31st
    // meeting with a node that does not know the kind discards it, saying so.
    for _ in 2..29 {
        give_back().await;
    }
    let (_, thirtieth) = give_back().await;
    assert_eq!(thirtieth.state, "scheduled");
    assert!(
        (3590..=3600).contains(&wait_of(&thirtieth)),
        "{}",
        wait_of(&thirtieth)
    );
    let (report, last) = give_back().await;
    assert_eq!(report.discarded, 1);
    // The give-backs spent no attempt; the discard is the first.
    assert_eq!((last.state.as_str(), last.attempt), ("discarded", 1));
    let errors = last.errors.unwrap();
    let errors = errors.as_array().unwrap();
    assert_eq!(errors.len(), 31, "30 give-backs and the discard");
    assert!(
        errors[30]["error"]
            .as_str()
            .unwrap()
            .contains("no node knew kind `test_count` through 30 give-backs"),
        "{}",
        errors[30]
    );
    assert_eq!(effects.runs_of(id), 0);
}

#[tokio::test]
async fn priorities_run_lower_numbers_first() {
    let db = TestDb::new().await;
    let effects = Effects::default();
    let low = enqueue(&db.pool, NewJob::of(&Count { n: 1 }).unwrap().priority(5))
        .await
        .unwrap()
        .id;
    let high = enqueue(&db.pool, NewJob::of(&Count { n: 2 }).unwrap().priority(-1))
        .await
        .unwrap()
        .id;
    let normal = enqueue(&db.pool, NewJob::of(&Count { n: 3 }).unwrap())
        .await
        .unwrap()
        .id;
    drain(&db.pool, &registry(), effects.clone(), "default")
        .await
        .unwrap();
    assert_eq!(*effects.order.lock().unwrap(), vec![high, normal, low]);
}

#[tokio::test]
async fn a_scheduled_job_waits_for_its_time() {
    let db = TestDb::new().await;
    let effects = Effects::default();
    let at = Utc::now() + chrono::Duration::seconds(3600);
    let id = enqueue(&db.pool, NewJob::of(&Count { n: 1 }).unwrap().run_at(at))
        .await
        .unwrap()
        .id;
    assert_eq!(state_of(&db.pool, id).await, "scheduled");
    assert_eq!(
        drain(&db.pool, &registry(), effects.clone(), "default")
            .await
            .unwrap()
            .total(),
        0
    );
    sqlx::query("update jobs set run_at = now() - interval '1 second' where id = $1")
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        drain(&db.pool, &registry(), effects.clone(), "default")
            .await
            .unwrap()
            .completed,
        1
    );
}

#[tokio::test]
async fn a_rate_limit_token_due_soon_is_waited_for_without_a_snooze() {
    let db = TestDb::new().await;
    // `tight`: 10 per second, burst 1 (see engine_config).
    baseaim_worker::queue::rate_limit::declare(&db.pool, &engine_config(1).rate_limits)
        .await
        .unwrap();
    let effects = Effects::default();
    for _ in 0..3 {
        enqueue(&db.pool, NewJob::of(&Limited {}).unwrap())
            .await
            .unwrap();
    }
    let t0 = std::time::Instant::now();
    let report = drain(&db.pool, &registry(), effects.clone(), "default")
        .await
        .unwrap();
    assert_eq!(
        report,
        DrainReport {
            completed: 3,
            ..Default::default()
        }
    );
    // The second and third runs each waited for their token (0.1 s apart at 10/s).
    assert!(
        t0.elapsed() >= std::time::Duration::from_millis(180),
        "{:?}",
        t0.elapsed()
    );
}

#[tokio::test]
async fn take_hands_out_a_token_only_when_one_is_there_and_never_goes_into_debt() {
    use baseaim_worker::queue::rate_limit::{RateLimitError, take};
    let db = TestDb::new().await;
    // `tight`: 10 per second, burst 1 (see engine_config).
    baseaim_worker::queue::rate_limit::declare(&db.pool, &engine_config(1).rate_limits)
        .await
        .unwrap();
    assert_eq!(take(&db.pool, "tight").await.unwrap(), None, "the burst");
    let wait = take(&db.pool, "tight")
        .await
        .unwrap()
        .expect("no token left");
    // The next token is due within 0.1 s, plus up to one interval of spread.
    assert!(wait <= std::time::Duration::from_millis(200), "{wait:?}");
    // Asking again took nothing: still no token, and the bucket is not in debt.
    assert!(take(&db.pool, "tight").await.unwrap().is_some());
    let tokens: f64 = sqlx::query_scalar("select tokens from rate_limits where name = 'tight'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(tokens >= 0.0, "{tokens}");
    tokio::time::sleep(std::time::Duration::from_millis(110)).await;
    assert_eq!(take(&db.pool, "tight").await.unwrap(), None, "refilled");
    assert!(matches!(
        take(&db.pool, "nope").await,
        Err(RateLimitError::Unknown(name)) if name == "nope"
    ));
}
