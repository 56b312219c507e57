//! The CLI's enqueue checks kinds like the API, and `--json` on the commands scripts read.

use crate::support::TestDb;

async fn run(db: &TestDb, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_baseaim-worker"))
        .args(args)
        .env("DATABASE_URL", &db.url)
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn jobs_enqueue_refuses_what_no_worker_runs_and_speaks_json() {
    let db = TestDb::new().await;
    let (ok, _, err) = run(&db, &["jobs", "enqueue", "no_such_kind"]).await;
    assert!(!ok && err.contains("unknown kind `no_such_kind`"), "{err}");
    let (ok, _, err) = run(&db, &["jobs", "enqueue", "send_email", "{}"]).await;
    assert!(!ok && err.contains("missing field"), "{err}");
    let count: i64 = sqlx::query_scalar("select count(*) from jobs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(count, 0);

    let (ok, out, err) = run(
        &db,
        &[
            "jobs",
            "enqueue",
            "noop",
            r#"{"client_id": "c7"}"#,
            "--json",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let enqueued: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(enqueued["duplicate"], false);
    let id = enqueued["id"].as_i64().unwrap();
    // Args are kept as given, fields the kind ignores included (operators search on them).
    let (ok, out, err) = run(&db, &["jobs", "show", &id.to_string(), "--json"]).await;
    assert!(ok, "{err}");
    let job: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(job["args"], serde_json::json!({"client_id": "c7"}));
    assert_eq!(job["queue"], "default");

    for command in [
        &["jobs", "list", "--json"][..],
        &["queues", "list", "--json"],
        &["schedules", "list", "--json"],
    ] {
        let (ok, out, err) = run(&db, command).await;
        assert!(ok, "{command:?}: {err}");
        serde_json::from_str::<serde_json::Value>(&out)
            .unwrap_or_else(|e| panic!("{command:?} is not JSON ({e}): {out}"));
    }
}
