//! What operators do: `schedules run <name>` (an extra job with its own key) and `schedules list`
//! (last tick, next tick, the last job's outcome), through the library and through the binary.

use baseaim_worker::queue::Registry;
use baseaim_worker::queue::testing::drain;
use baseaim_worker::schedule::{self, CatchUp, Schedule, ScheduleConfig, Scheduler};

use super::support::TestDb;
use super::{at, expected, keys_of};

#[tokio::test]
async fn run_now_adds_an_extra_job_beside_the_ticks_and_leaves_the_ticks_alone() {
    let db = TestDb::new().await;
    let sync = super::schedule("sync", "*/5 * * * *", "UTC", CatchUp::Latest);
    let scheduler = Scheduler::new(db.pool.clone(), vec![sync.clone()]);
    scheduler
        .run_once(at("2025-06-01T12:01:00Z"))
        .await
        .unwrap();
    scheduler
        .run_once(at("2025-06-01T12:05:00Z"))
        .await
        .unwrap();
    // The 12:05 tick's job is still waiting; a manual run does not wait for it or merge into it.
    let first = schedule::run_now(&db.pool, &sync).await.unwrap();
    let second = schedule::run_now(&db.pool, &sync).await.unwrap();
    assert!(first.inserted && second.inserted);
    assert_ne!(first.id, second.id);
    let keys = keys_of(&db.pool, "sync").await;
    assert_eq!(keys.len(), 3, "{keys:?}");
    assert!(keys.contains(&"schedule:sync:2025-06-01T12:05:00Z".to_string()));
    let manual: Vec<&String> = keys
        .iter()
        .filter(|k| k.starts_with("schedule:sync:manual:"))
        .collect();
    assert_eq!(manual.len(), 2, "{keys:?}");
    // The ticks go on as before: the watermark did not move, and 12:10 is enqueued on time.
    scheduler
        .run_once(at("2025-06-01T12:10:00Z"))
        .await
        .unwrap();
    let ticks: Vec<String> = keys_of(&db.pool, "sync")
        .await
        .into_iter()
        .filter(|k| !k.contains(":manual:"))
        .collect();
    assert_eq!(
        ticks,
        expected("sync", &["2025-06-01T12:05:00Z", "2025-06-01T12:10:00Z"])
    );
}

#[tokio::test]
async fn list_shows_last_and_next_tick_and_how_the_last_job_went() {
    let db = TestDb::new().await;
    let ok = super::schedule("ok", "*/5 * * * *", "Europe/Berlin", CatchUp::Latest);
    let failing = Schedule::from_config(
        "failing",
        &ScheduleConfig {
            cron: "*/5 * * * *".into(),
            timezone: "UTC".into(),
            kind: "noop".into(),
            args: serde_json::json!({"fail": "the provider said no"})
                .as_object()
                .unwrap()
                .clone(),
            enabled: true,
            catch_up: CatchUp::Latest,
            queue: None,
        },
    )
    .unwrap();
    let mut off = super::schedule("off", "0 4 * * *", "UTC", CatchUp::Skip);
    off.enabled = false;
    let all = vec![ok, failing, off];
    let scheduler = Scheduler::new(db.pool.clone(), all.clone());
    scheduler
        .run_once(at("2025-06-01T12:01:00Z"))
        .await
        .unwrap();
    scheduler
        .run_once(at("2025-06-01T12:05:02Z"))
        .await
        .unwrap();
    drain(&db.pool, &Registry::<()>::new(), (), "default")
        .await
        .unwrap();

    let status = schedule::status(&db.pool, &all, at("2025-06-01T12:06:00Z"))
        .await
        .unwrap();
    let names: Vec<&str> = status.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["failing", "off", "ok"]);
    let (failing, off, ok) = (&status[0], &status[1], &status[2]);

    assert_eq!(ok.timezone, "Europe/Berlin");
    assert_eq!(ok.last_tick_at, Some(at("2025-06-01T12:05:00Z")));
    assert_eq!(ok.next_tick_at, Some(at("2025-06-01T12:10:00Z")));
    let job = ok.last_job.as_ref().expect("a last job");
    assert_eq!(job.state.as_deref(), Some("completed"));
    assert!(job.finished_at.is_some());

    let job = failing.last_job.as_ref().expect("a last job");
    assert_eq!(job.state.as_deref(), Some("retryable"));
    assert_eq!(job.last_error.as_deref(), Some("the provider said no"));

    assert!(!off.enabled);
    assert_eq!(
        off.last_tick_at, None,
        "a disabled schedule is not evaluated"
    );
    assert_eq!(off.next_tick_at, None);
    assert!(off.last_job.is_none());
}

/// Runs the real binary against the test database with the default config.
async fn cli(db: &TestDb, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_baseaim-worker"))
        .args(args)
        .env("DATABASE_URL", &db.url)
        .env_remove("BAW_CONFIG")
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("run baseaim-worker")
}

#[tokio::test]
async fn the_schedules_commands_work_from_the_command_line() {
    let db = TestDb::new().await;

    let out = cli(&db, &["schedules", "run", "prune"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("enqueued job"), "{stdout}");
    let (kind, key): (String, String) =
        sqlx::query_as("select kind, unique_key from jobs where $1 = any(tags)")
            .bind("schedule:prune")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(kind, "prune");
    assert!(key.starts_with("schedule:prune:manual:"), "{key}");

    // The Facebook integration registered `facebook_sync`: it runs on demand too.
    let out = cli(&db, &["schedules", "run", "facebook_sync"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&db, &["schedules", "run", "nope"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no schedule named `nope`"));

    let out = cli(&db, &["schedules", "list", "--json"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 3);
    let prune = list.iter().find(|s| s["name"] == "prune").unwrap();
    assert_eq!(prune["enabled"], true);
    assert_eq!(prune["cron"], "0 * * * *");
    assert!(prune["next_tick_at"].is_string());
    let facebook = list.iter().find(|s| s["name"] == "facebook_sync").unwrap();
    assert_eq!(facebook["enabled"], true);
    assert!(facebook["next_tick_at"].is_string());

    let out = cli(&db, &["schedules", "list"]).await;
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains("stripe_reconcile"), "{table}");
}

#[tokio::test]
async fn the_default_prune_schedule_runs_a_real_prune_job() {
    use std::sync::Arc;

    use baseaim_worker::config::{Config, Secrets};
    use baseaim_worker::jobs::{self, AppState};
    use baseaim_worker::queue::testing::{JobFactory, insert_job};

    let db = TestDb::new().await;
    let config = Config::load_from(None, Vec::new()).unwrap();
    let registry = jobs::registry();
    let schedules = schedule::from_config(&config.schedules, &registry).unwrap();
    let prune = schedules.iter().find(|s| s.name == "prune").unwrap();
    let finished = |days: i64| JobFactory {
        state: "completed".into(),
        finished_at: Some(chrono::Utc::now() - chrono::Duration::days(days)),
        ..JobFactory::default()
    };
    let old = insert_job(&db.pool, finished(30)).await; // older than prune_after (7 days)
    let recent = insert_job(&db.pool, finished(1)).await;

    let job = schedule::run_now(&db.pool, prune).await.unwrap();
    let state = AppState::new(
        db.pool.clone(),
        Arc::new(config),
        Arc::new(Secrets::default()),
    )
    .unwrap();
    let report = drain(&db.pool, &registry, state, &prune.queue)
        .await
        .unwrap();
    assert_eq!(report.completed, 1);

    let left: Vec<i64> = sqlx::query_scalar("select id from jobs order by id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        left,
        vec![recent, job.id],
        "only the 30-day-old job is gone"
    );
    assert!(!left.contains(&old));
    let result: serde_json::Value = sqlx::query_scalar("select result from jobs where id = $1")
        .bind(job.id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(result["pruned"], 1, "{result}");
}
