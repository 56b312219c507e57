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
    assert_eq!(rows[0]["id"], id);

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
