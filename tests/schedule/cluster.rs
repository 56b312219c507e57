//! Three schedulers on one database, clocks skewed, over ten minutes of simulated time.

use std::time::Duration;

use baseaim_worker::schedule::{CatchUp, Scheduler};
use chrono::{DateTime, Utc};

use super::support::TestDb;
use super::{at, complete_all, expected, keys_of, schedule};

#[tokio::test]
async fn three_schedulers_enqueue_each_tick_exactly_once_over_ten_minutes() {
    let db = TestDb::new().await;
    let schedules = vec![
        schedule("every_minute", "* * * * *", "UTC", CatchUp::Latest),
        schedule("every_20s", "*/20 * * * * *", "UTC", CatchUp::Latest),
        schedule("every_5m", "*/5 * * * *", "Europe/Berlin", CatchUp::Latest),
    ];
    let nodes: Vec<Scheduler> = (0..3)
        .map(|_| Scheduler::new(db.pool.clone(), schedules.clone()))
        .collect();
    // Node clocks disagree: one runs 2 s fast, one 3 s slow. The slow one keeps finding ticks
    // due that a faster node enqueued a step earlier and whose job has completed since.
    let skew = [
        chrono::Duration::zero(),
        chrono::Duration::seconds(2),
        chrono::Duration::seconds(-3),
    ];
    let start = at("2025-06-01T12:00:30Z");
    let end = start + Duration::from_secs(600);
    let mut now = start;
    let mut enqueued_by_nodes = 0;
    while now <= end {
        let (a, b, c) = tokio::join!(
            nodes[0].run_once(now + skew[0]),
            nodes[1].run_once(now + skew[1]),
            nodes[2].run_once(now + skew[2]),
        );
        for report in [a, b, c] {
            enqueued_by_nodes += report.expect("run_once").enqueued.len();
        }
        complete_all(&db.pool).await;
        now += Duration::from_secs(7);
    }
    // The schedules were first seen at about 12:00:30 and start with their next tick; the
    // fastest node last looked at 12:10:27.
    let minute: Vec<String> = (1..=10)
        .map(|m| format!("2025-06-01T12:{m:02}:00Z"))
        .collect();
    let minute: Vec<&str> = minute.iter().map(String::as_str).collect();
    assert_eq!(
        keys_of(&db.pool, "every_minute").await,
        expected("every_minute", &minute)
    );
    let twenty: Vec<String> = (2..=31)
        .map(|i| {
            let s = i * 20;
            format!("2025-06-01T12:{:02}:{:02}Z", s / 60, s % 60)
        })
        .collect();
    let twenty: Vec<&str> = twenty.iter().map(String::as_str).collect();
    assert_eq!(twenty.first(), Some(&"2025-06-01T12:00:40Z"));
    assert_eq!(twenty.last(), Some(&"2025-06-01T12:10:20Z"));
    assert_eq!(
        keys_of(&db.pool, "every_20s").await,
        expected("every_20s", &twenty)
    );
    assert_eq!(
        keys_of(&db.pool, "every_5m").await,
        expected(
            "every_5m",
            &["2025-06-01T12:05:00Z", "2025-06-01T12:10:00Z"]
        )
    );
    let total: i64 = sqlx::query_scalar("select count(*) from jobs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(total, 10 + 30 + 2, "no job other than one per tick");
    assert_eq!(
        enqueued_by_nodes, 42,
        "the nodes' reports agree with the table"
    );
    let completed: i64 = sqlx::query_scalar("select count(*) from jobs where state = 'completed'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(completed, total, "every tick's job ran");
}

#[tokio::test]
async fn a_node_that_loses_the_race_does_not_repeat_a_tick_whose_job_already_finished() {
    // The unique key only guards unfinished jobs. Here a node reads the watermark, then waits on
    // the row while another node enqueues the tick and its job completes at once; when the slow
    // node gets the row, the key is free again. Only the compare-and-set stops a second job.
    let db = TestDb::new().await;
    let minute = schedule("m", "* * * * *", "UTC", CatchUp::Latest);
    let slow = Scheduler::new(db.pool.clone(), vec![minute]);
    slow.run_once(at("2025-06-01T12:00:30Z")).await.unwrap();

    // The other node: holds the row while it works.
    let mut winner = db.pool.begin().await.unwrap();
    sqlx::query("select 1 from schedules where name = 'm' for update")
        .execute(&mut *winner)
        .await
        .unwrap();
    let slow_run = tokio::spawn(async move { slow.run_once(at("2025-06-01T12:01:05Z")).await });
    let pool = db.pool.clone();
    super::support::eventually(10, "the slow node waits for the row", || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "select count(*) from pg_stat_activity
                 where datname = current_database() and wait_event_type = 'Lock'",
            )
            .fetch_one(&pool)
            .await
            .unwrap()
                > 0
        }
    })
    .await;
    sqlx::query("update schedules set last_tick_at = '2025-06-01T12:01:00Z' where name = 'm';")
        .execute(&mut *winner)
        .await
        .unwrap();
    sqlx::query(
        "insert into jobs (kind, unique_key, tags, state, finished_at)
         values ('noop', 'schedule:m:2025-06-01T12:01:00Z', '{schedule:m}', 'completed', now())",
    )
    .execute(&mut *winner)
    .await
    .unwrap();
    winner.commit().await.unwrap();

    let report = slow_run.await.unwrap().unwrap();
    assert!(report.enqueued.is_empty(), "{report:?}");
    assert_eq!(
        keys_of(&db.pool, "m").await,
        expected("m", &["2025-06-01T12:01:00Z"])
    );
}

#[tokio::test]
async fn a_node_whose_clock_is_a_day_ahead_neither_enqueues_nor_silences_the_others() {
    let db = TestDb::new().await;
    let seen = schedule("seen", "* * * * * *", "UTC", CatchUp::Latest);
    let fresh = schedule("fresh", "* * * * * *", "UTC", CatchUp::Latest);
    let t0: DateTime<Utc> = sqlx::query_scalar("select now()")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    // Node B (clock right) has seen `seen`; nobody has seen `fresh` yet.
    let b = Scheduler::new(db.pool.clone(), vec![seen.clone()]);
    b.run_once(t0).await.unwrap();
    let watermark = |name: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, Option<DateTime<Utc>>>(
                "select last_tick_at from schedules where name = $1",
            )
            .bind(name)
            .fetch_optional(&pool)
            .await
            .unwrap()
            .flatten()
        }
    };
    let before = watermark("seen").await;
    assert!(before.is_some_and(|w| w <= t0));

    // Node A's clock is a day ahead: it enqueues nothing and moves no watermark into its future.
    let a = Scheduler::new(db.pool.clone(), vec![seen.clone(), fresh.clone()]);
    let report = a.run_once(t0 + chrono::Duration::days(1)).await.unwrap();
    assert!(report.enqueued.is_empty(), "{report:?}");
    assert_eq!(watermark("seen").await, before);
    assert!(watermark("fresh").await.is_none_or(|w| w <= t0));

    // Node B goes on with the next ticks as if A did not exist.
    let b = Scheduler::new(db.pool.clone(), vec![seen.clone(), fresh.clone()]);
    let next = seen.next_after(t0).unwrap();
    b.run_once(next).await.unwrap();
    b.run_once(next + chrono::Duration::seconds(1))
        .await
        .unwrap();
    let key = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let second = next + chrono::Duration::seconds(1);
    assert_eq!(
        keys_of(&db.pool, "seen").await,
        expected("seen", &[&key(next), &key(second)])
    );
    // `fresh` was first seen by B at `next`: it starts with the tick after.
    assert_eq!(
        keys_of(&db.pool, "fresh").await,
        expected("fresh", &[&key(second)])
    );
}

#[tokio::test]
async fn a_schedule_whose_statements_fail_does_not_stop_the_others() {
    let db = TestDb::new().await;
    // The database refuses every write of schedule `a`'s row (as a constraint or a trigger
    // might); `b` is healthy.
    sqlx::raw_sql(
        "create function refuse_a() returns trigger language plpgsql as $$
         begin
           if new.name = 'a' then raise exception 'schedule a refused'; end if;
           return new;
         end $$;
         create trigger refuse_a before insert or update on schedules
         for each row execute function refuse_a();",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let scheduler = Scheduler::new(
        db.pool.clone(),
        vec![
            schedule("a", "* * * * *", "UTC", CatchUp::Latest),
            schedule("b", "* * * * *", "UTC", CatchUp::Latest),
        ],
    );
    let first = scheduler
        .run_once(at("2025-06-01T12:00:30Z"))
        .await
        .expect("a failing schedule is not the pass's failure");
    assert_eq!(first.failed.len(), 1, "{first:?}");
    assert_eq!(first.failed[0].0, "a");
    assert!(
        first.failed[0].1.contains("schedule a refused"),
        "{first:?}"
    );
    let report = scheduler
        .run_once(at("2025-06-01T12:01:00Z"))
        .await
        .unwrap();
    let enqueued: Vec<_> = report
        .enqueued
        .iter()
        .map(|e| (e.0.as_str(), e.1))
        .collect();
    assert_eq!(enqueued, vec![("b", at("2025-06-01T12:01:00Z"))]);
    assert_eq!(
        keys_of(&db.pool, "b").await,
        expected("b", &["2025-06-01T12:01:00Z"])
    );
    assert!(keys_of(&db.pool, "a").await.is_empty());
}
