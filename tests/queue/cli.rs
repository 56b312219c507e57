//! The operators' command line, run as the real binary against a test database.

use crate::common::state_of;
use crate::support::TestDb;

async fn run(db: &TestDb, args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_baseaim-worker"))
        .args(args)
        .env("DATABASE_URL", &db.url)
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn jobs_and_queues_commands_inspect_and_repair() {
    let db = TestDb::new().await;
    let (ok, out) = run(
        &db,
        &[
            "jobs",
            "enqueue",
            "noop",
            r#"{"client_id": "c42"}"#,
            "--unique-key",
            "k1",
        ],
    )
    .await;
    assert!(ok, "{out}");
    let id: i64 = out.trim().strip_prefix("job ").unwrap().parse().unwrap();
    let (_, again) = run(
        &db,
        &["jobs", "enqueue", "noop", "{}", "--unique-key", "k1"],
    )
    .await;
    assert_eq!(
        again.trim(),
        format!("job {id} (already enqueued under that key)")
    );

    let (ok, table) = run(&db, &["jobs", "list", "--args", r#"{"client_id": "c42"}"#]).await;
    assert!(ok, "{table}");
    assert!(table.lines().next().unwrap().starts_with("ID"), "{table}");
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        row[..4],
        [id.to_string().as_str(), "noop", "default", "available"],
        "{table}"
    );
    let (ok, json) = run(&db, &["jobs", "list", "--state", "available", "--json"]).await;
    assert!(ok);
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(rows["jobs"][0]["id"], id);

    let (ok, out) = run(&db, &["jobs", "cancel", &id.to_string()]).await;
    assert!(ok && out.contains("1 of 1 jobs cancelled"), "{out}");
    assert_eq!(state_of(&db.pool, id).await, "cancelled");
    let (_, shown) = run(&db, &["jobs", "show", &id.to_string()]).await;
    assert!(shown.contains("cancelled by an operator"), "{shown}");
    let (ok, out) = run(&db, &["jobs", "retry", &id.to_string()]).await;
    assert!(ok && out.contains("1 of 1 jobs set to run now"), "{out}");
    assert_eq!(state_of(&db.pool, id).await, "available");

    let (ok, _) = run(&db, &["queues", "pause", "default"]).await;
    assert!(ok);
    let (_, listed) = run(&db, &["queues", "list"]).await;
    assert!(listed.contains("paused: default"), "{listed}");
    run(&db, &["queues", "resume", "default"]).await;
    let (_, listed) = run(&db, &["queues", "list"]).await;
    assert!(!listed.contains("paused"), "{listed}");

    let (ok, err) = run(&db, &["jobs", "list", "--args", "{nope"]).await;
    assert!(!ok && err.contains("--args is not valid JSON"), "{err}");
    let (ok, err) = run(&db, &["jobs", "show", "999999"]).await;
    assert!(!ok && err.contains("no job 999999"), "{err}");
}

/// Retry, cancel and delete by filter: without `--yes` they only count; with it they act on every
/// matching job, and nothing else.
#[tokio::test]
async fn actions_by_filter_count_first_then_act_on_every_matching_job() {
    let db = TestDb::new().await;
    let ids: Vec<i64> = sqlx::query_scalar(
        "insert into jobs (kind, state, attempt, max_attempts, args, errors, finished_at) \
         select 'send_email', 'discarded', 3, 3, jsonb_build_object('to', 'c' || n), \
                jsonb_build_array(jsonb_build_object('attempt', 3, 'error', 'Resend answered 500')), \
                now() \
         from generate_series(1, 2500) as n returning id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let other_error: i64 = sqlx::query_scalar(
        "insert into jobs (kind, state, attempt, max_attempts, errors, finished_at) \
         values ('send_email', 'discarded', 3, 3, \
                 '[{\"attempt\": 3, \"error\": \"bad address\"}]', now()) returning id",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let filter = ["--kind", "send_email", "--error", "answered 500"];

    // `jobs list` takes the same filter: what an action would touch can be looked at first.
    let (ok, listed) = run(&db, &["jobs", "list", "--error", "BAD ADDRESS", "--json"]).await;
    assert!(ok, "{listed}");
    let rows = serde_json::from_str::<serde_json::Value>(&listed).unwrap()["jobs"].take();
    assert_eq!(rows.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(rows[0]["id"], other_error);
    let (ok, page) = run(
        &db,
        &[&["jobs", "list", "--limit", "500"][..], &filter].concat(),
    )
    .await;
    assert!(ok, "{page}");
    assert_eq!(
        page.lines().count(),
        1 + 500 + 1,
        "header, 500 rows, the cursor: {page}"
    );
    assert!(
        page.lines().last().unwrap().starts_with("(more: --before "),
        "{page}"
    );
    let (ok, err) = run(&db, &["jobs", "list", "--limit", "501"]).await;
    assert!(
        !ok && err.contains("--limit must be between 1 and 500"),
        "{err}"
    );

    let counted = run(&db, &[&["jobs", "retry"][..], &filter].concat()).await;
    assert!(counted.0, "{}", counted.1);
    assert!(counted.1.contains("2500 jobs match"), "{}", counted.1);
    assert!(
        counted
            .1
            .contains("retry applies to any state but running among them. Add --yes"),
        "{}",
        counted.1
    );
    assert_eq!(
        state_of(&db.pool, ids[0]).await,
        "discarded",
        "only counted"
    );

    let retried = run(&db, &[&["jobs", "retry", "--yes"][..], &filter].concat()).await;
    assert!(retried.0, "{}", retried.1);
    assert!(
        retried.1.contains("2500 jobs set to run now"),
        "{}",
        retried.1
    );
    let available: i64 = sqlx::query_scalar("select count(*) from jobs where state = 'available'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(available, 2500);
    assert_eq!(state_of(&db.pool, other_error).await, "discarded");
    let (by, changed): (String, i64) =
        sqlx::query_as("select requested_by, changed from bulk_actions where action = 'retry'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(by.starts_with("command line"), "{by}");
    assert_eq!(changed, 2500, "the action's record");
    let (ok, actions) = run(&db, &["jobs", "actions"]).await;
    assert!(ok, "{actions}");
    let row: Vec<&str> = actions.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[1..4], ["retry", "finished", "2500"], "{actions}");
    // Only an action under way can be stopped.
    let (ok, over) = run(&db, &["jobs", "stop-action", row[0]]).await;
    assert!(!ok, "{over}");
    assert!(
        over.contains(&format!(
            "bulk action {} is over already (finished)",
            row[0]
        )),
        "{over}"
    );
    let (ok, missing) = run(&db, &["jobs", "stop-action", "999999"]).await;
    assert!(
        !ok && missing.contains("no bulk action 999999"),
        "{missing}"
    );
    assert!(
        actions.contains("error: answered 500, kind: send_email"),
        "{actions}"
    );

    let one = [r#"{"to": "c7"}"#];
    let cancelled = run(
        &db,
        &[&["jobs", "cancel", "--yes", "--args"][..], &one].concat(),
    )
    .await;
    assert!(cancelled.1.contains("1 jobs cancelled"), "{}", cancelled.1);
    let deleted = run(&db, &["jobs", "delete", "--state", "cancelled", "--yes"]).await;
    assert!(deleted.1.contains("1 jobs deleted"), "{}", deleted.1);
    let left: i64 = sqlx::query_scalar("select count(*) from jobs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, 2500, "one of 2,501 deleted");

    for (args, error) in [
        (&["jobs", "retry"][..], "give job ids, or filter options"),
        (&["jobs", "delete", "5", "--state", "completed"], "not both"),
        (
            &["jobs", "cancel", "--args", "[1]", "--yes"],
            "--args must be a JSON object",
        ),
        (&["jobs", "retry", "--state", "gone", "--yes"], "gone"),
    ] {
        let (ok, out) = run(&db, args).await;
        assert!(!ok && out.contains(error), "{args:?}: {out}");
    }
    let unchanged: i64 = sqlx::query_scalar("select count(*) from jobs where state = 'available'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(unchanged, 2499, "refused commands change nothing");

    // By creation time: the jobs of January only.
    sqlx::query(
        "insert into jobs (kind, state, finished_at, created_at) \
         select 'noop', 'discarded', now(), '2026-01-15T00:00:00Z' from generate_series(1, 3)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let january = [
        "--created-from",
        "2026-01-01T00:00:00Z",
        "--created-to",
        "2026-02-01T00:00:00+00:00",
    ];
    let (ok, listed) = run(&db, &[&["jobs", "list", "--json"][..], &january].concat()).await;
    assert!(ok, "{listed}");
    let rows = serde_json::from_str::<serde_json::Value>(&listed).unwrap()["jobs"].take();
    assert_eq!(rows.as_array().unwrap().len(), 3, "{listed}");
    let deleted = run(&db, &[&["jobs", "delete", "--yes"][..], &january].concat()).await;
    assert!(deleted.1.contains("3 jobs deleted"), "{}", deleted.1);
    assert_eq!(
        sqlx::query_scalar::<_, i64>("select count(*) from jobs")
            .fetch_one(&db.pool)
            .await
            .unwrap(),
        2500
    );
    let (ok, err) = run(&db, &["jobs", "list", "--created-from", "yesterday"]).await;
    assert!(!ok && err.contains("--created-from"), "{err}");
}

/// Ctrl-C on an action by filter stops it after the batch under way: the command says so and
/// fails, the record says who stopped it and matches the jobs changed, and no node resumes it.
#[tokio::test]
async fn ctrl_c_stops_an_action_by_filter_at_the_command_line() {
    const JOBS: i64 = 100_000;
    let db = TestDb::new().await;
    sqlx::query(
        "insert into jobs (kind, tags, state, attempt, finished_at)
         select 'noop', '{mass}', 'completed', 1, now() from generate_series(1, $1)",
    )
    .bind(JOBS)
    .execute(&db.pool)
    .await
    .unwrap();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_baseaim-worker"))
        .args(["jobs", "retry", "--tag", "mass", "--yes"])
        .env("DATABASE_URL", &db.url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupted once its first batch is in.
    crate::support::eventually(60, "the action under way", || async {
        let changed: Option<i64> = sqlx::query_scalar("select changed from bulk_actions")
            .fetch_optional(&db.pool)
            .await
            .unwrap();
        changed.is_some_and(|n| n > 0)
    })
    .await;
    let pid = child.id().unwrap().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    let out = child.wait_with_output().await.unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("interrupted: bulk action"), "{text}");
    let (changed, by): (i64, String) =
        sqlx::query_as("select changed, stopped_by from bulk_actions")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(changed < JOBS, "stopped part-way: {changed}");
    assert!(
        text.contains(&format!("stopped after {changed} jobs set to run now")),
        "{text}"
    );
    assert!(
        by.starts_with("command line") && by.ends_with("(interrupted)"),
        "{by}"
    );
    let available: i64 = sqlx::query_scalar("select count(*) from jobs where state = 'available'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(available, changed, "the record is the jobs");
    assert!(
        baseaim_worker::queue::bulk::resume_stalled(&db.pool, std::time::Duration::ZERO)
            .await
            .unwrap()
            .is_empty(),
        "a stopped action is not resumed"
    );
}

/// Filter values PostgreSQL cannot take are refused naming the option, before any database
/// error: `\u0000` in the args' JSON (jsonb cannot hold it), a year outside 1 to 9999.
#[tokio::test]
async fn filter_values_postgres_cannot_take_are_named() {
    let db = TestDb::new().await;
    for (args, option) in [
        (
            &["jobs", "list", "--args", r#"{"a": "\u0000"}"#][..],
            "--args",
        ),
        (
            &["jobs", "retry", "--args", r#"{"a": ["\u0000"]}"#, "--yes"],
            "--args",
        ),
        (
            &["jobs", "list", "--created-from=-5000-01-01T00:00:00Z"],
            "--created-from",
        ),
        (
            &["jobs", "cancel", "--created-to", "0000-06-01T00:00:00Z"],
            "--created-to",
        ),
    ] {
        let (ok, out) = run(&db, args).await;
        assert!(!ok, "{args:?}: {out}");
        assert!(out.contains(option), "{args:?}: {out}");
        assert!(!out.contains("database"), "{args:?}: {out}");
    }
}

/// An action on ids takes each id once, and when it leaves some jobs alone it names them and why
/// and exits non-zero: a script must not read "0 of 1" as success.
#[tokio::test]
async fn an_action_on_ids_names_the_jobs_it_left_alone_and_fails() {
    let db = TestDb::new().await;
    let job = |state: &'static str| {
        let pool = db.pool.clone();
        async move {
            let finished = matches!(state, "completed" | "discarded" | "cancelled");
            sqlx::query_scalar::<_, i64>(
                "insert into jobs (kind, state, attempt, finished_at, lease_owner, \
                                   lease_expires_at) \
                 values ('noop', $1, 1, case when $2 then now() end, \
                         case when $1 = 'running' then 'node-1' end, \
                         case when $1 = 'running' then now() + interval '1 minute' end) \
                 returning id",
            )
            .bind(state)
            .bind(finished)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let discarded = job("discarded").await;
    let running = job("running").await;
    let completed = job("completed").await;
    let available = job("available").await;

    let (ok, out) = run(
        &db,
        &[
            "jobs",
            "retry",
            &discarded.to_string(),
            &discarded.to_string(),
        ],
    )
    .await;
    assert!(ok && out.contains("1 of 1 jobs set to run now"), "{out}");
    assert_eq!(state_of(&db.pool, discarded).await, "available");

    let (ok, out) = run(&db, &["jobs", "retry", "999999"]).await;
    assert!(!ok, "{out}");
    assert!(out.contains("0 of 1 jobs set to run now"), "{out}");
    assert!(out.contains("job 999999: no such job"), "{out}");

    let (ok, out) = run(
        &db,
        &[
            "jobs",
            "retry",
            &running.to_string(),
            &completed.to_string(),
        ],
    )
    .await;
    assert!(!ok, "{out}");
    assert!(out.contains(&format!("job {running}: running")), "{out}");
    assert!(!out.contains(&format!("job {completed}:")), "{out}");
    assert_eq!(
        state_of(&db.pool, completed).await,
        "available",
        "the other one ran"
    );
    assert_eq!(state_of(&db.pool, running).await, "running");

    let finished = job("completed").await;
    let (ok, out) = run(
        &db,
        &[
            "jobs",
            "cancel",
            &available.to_string(),
            &finished.to_string(),
        ],
    )
    .await;
    assert!(!ok, "{out}");
    assert!(out.contains(&format!("job {finished}: completed")), "{out}");
    assert_eq!(state_of(&db.pool, available).await, "cancelled");

    let (ok, out) = run(&db, &["jobs", "delete", &running.to_string(), "424242"]).await;
    assert!(!ok, "{out}");
    assert!(out.contains(&format!("job {running}: running")), "{out}");
    assert!(out.contains("job 424242: no such job"), "{out}");
}

/// `jobs list --json` carries the page's cursor as the admin API's listing does (`jobs`,
/// `next_after`, `window_floor`), so a script can tell "no more" from "nothing in this scan
/// window" and page on with `--before`.
#[tokio::test]
async fn jobs_list_json_carries_the_cursor() {
    let db = TestDb::new().await;
    let rare: i64 = sqlx::query_scalar(
        "insert into jobs (kind, state, attempt, finished_at) \
         values ('rare', 'completed', 1, now()) returning id",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "insert into jobs (kind, state, attempt, finished_at) \
         select 'noop', 'completed', 1, now() from generate_series(1, 100000)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let list = |args: Vec<String>| {
        let db = &db;
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (ok, out) = run(db, &[&["jobs", "list", "--json"][..], &args].concat()).await;
            assert!(ok, "{out}");
            serde_json::from_str::<serde_json::Value>(&out)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
        }
    };

    let page = list(vec!["--limit".into(), "2".into()]).await;
    let ids: Vec<i64> = page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{page}");
    assert_eq!(
        page["next_after"], ids[1],
        "a full page: more below its last job"
    );
    assert_eq!(page["window_floor"], serde_json::Value::Null);

    // Nothing in the first scan window, but older jobs were not looked at yet.
    let page = list(vec!["--kind".into(), "rare".into()]).await;
    assert_eq!(page["jobs"], serde_json::json!([]), "{page}");
    let floor = page["window_floor"].as_i64().expect("the window's floor");
    assert_eq!(page["next_after"], floor, "{page}");
    let page = list(vec![
        "--kind".into(),
        "rare".into(),
        "--before".into(),
        floor.to_string(),
    ])
    .await;
    assert_eq!(page["jobs"][0]["id"], rare, "{page}");
    assert_eq!(
        page["next_after"],
        serde_json::Value::Null,
        "no more: {page}"
    );
    assert_eq!(page["window_floor"], serde_json::Value::Null);
}
