//! The jobs' error handling and the other kinds: rate limits snooze without spending an
//! attempt, an expired token is refreshed once, a permanent refusal marks the document FAILED,
//! `drive_delete` (404 counts as done) and `drive_import` (streamed download, row updated in
//! place).

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use baseaim_worker::config::SecretString;
use baseaim_worker::integrations::drive::{DriveClient, DriveError};
use baseaim_worker::jobs::{DriveDelete, drive_import};
use baseaim_worker::sim::FaultKind;

use crate::{CLIENT, random_bytes, setup, sha256_hex};

#[tokio::test]
async fn rate_limits_snooze_without_spending_an_attempt_then_the_upload_completes() {
    let env = setup().await;
    let bytes = random_bytes(600_000, 11);
    let id = env.upload_pdf(&bytes).await;

    // Drive's quota refuses every API call: 403 userRateLimitExceeded.
    env.sim.set_quota_units_per_minute(0);
    let report = env.drain().await;
    assert_eq!(report.snoozed, 1, "{report:?}");
    assert_eq!(env.job("drive_upload").await, ("scheduled".into(), 0));
    let doc = env.document(id).await;
    assert_eq!(doc.status, "PENDING");
    assert_eq!(doc.throttle_count, 1);
    assert!(env.sim.rate_limit_hits() >= 1);

    // Then a 429 from the backend checks.
    env.sim.set_quota_units_per_minute(325_000);
    env.sim.faults().next(FaultKind::TooManyRequests);
    env.make_due().await;
    let report = env.drain().await;
    assert_eq!(report.snoozed, 1, "{report:?}");
    assert_eq!(env.job("drive_upload").await, ("scheduled".into(), 0));
    assert_eq!(env.document(id).await.throttle_count, 2, "the wait doubles");

    env.make_due().await;
    let report = env.drain().await;
    assert_eq!(report.completed, 1, "{report:?}");
    assert_eq!(env.sim.files()[0].content, bytes);
    let doc = env.document(id).await;
    assert_eq!(doc.status, "UPLOADED");
    assert_eq!(doc.throttle_count, 0);
}

#[tokio::test]
async fn an_expired_token_is_refreshed_once() {
    let env = setup().await;
    env.upload_pdf(&random_bytes(1000, 12)).await;
    assert_eq!(env.drain().await.completed, 1);
    let minted = env.sim.tokens_issued();
    env.sim.expire_tokens();
    env.upload_pdf(&random_bytes(2000, 13)).await;
    let report = env.drain().await;
    assert_eq!(report.completed, 1, "{report:?}");
    assert_eq!(env.sim.tokens_issued(), minted + 1);
    assert_eq!(env.sim.files().len(), 2);
}

#[tokio::test]
async fn a_missing_folder_marks_the_document_failed_with_drives_reason() {
    let env = crate::setup_with(crate::Options {
        sim: baseaim_worker::sim::google_drive::GoogleDriveConfig {
            folders: Some(vec!["some-other-folder".into()]),
            ..Default::default()
        },
        ..crate::Options::default()
    })
    .await;
    let id = env.upload_pdf(&random_bytes(1000, 19)).await;
    let report = env.drain().await;
    assert_eq!(report.discarded, 1, "{report:?}");
    assert_eq!(env.job("drive_upload").await.0, "discarded");
    let doc = env.document(id).await;
    assert_eq!(doc.status, "FAILED");
    let reason = doc.failure_reason.unwrap();
    assert!(
        reason.contains("404") && reason.contains("notFound"),
        "{reason}"
    );
    assert!(env.sim.files().is_empty());
}

#[tokio::test]
async fn without_a_folder_the_document_fails_and_a_5xx_is_retried() {
    let env = setup().await;
    // A client without a folder, and no GOOGLE_DRIVE_FOLDER_ID.
    sqlx::query("update clients set drive_folder_id = null")
        .execute(&env.db.pool)
        .await
        .unwrap();
    let id = env.upload_pdf(&random_bytes(1000, 14)).await;
    let report = env.drain().await;
    assert_eq!(report.discarded, 1, "{report:?}");
    let doc = env.document(id).await;
    assert_eq!(doc.status, "FAILED");
    let reason = doc.failure_reason.unwrap();
    assert!(reason.contains("no Drive folder"), "{reason}");

    // A 5xx is not permanent: retried, then done.
    sqlx::query("update clients set drive_folder_id = 'f'")
        .execute(&env.db.pool)
        .await
        .unwrap();
    let id = env.upload_pdf(&random_bytes(1000, 15)).await;
    env.sim.faults().next(FaultKind::ServerError(503));
    let report = env.drain().await;
    assert_eq!(report.retried, 1, "a 5xx retries: {report:?}");
    assert_eq!(env.document(id).await.status, "PENDING");
    env.make_due().await;
    assert_eq!(env.drain().await.completed, 1);
    assert_eq!(env.document(id).await.status, "UPLOADED");
}

#[tokio::test]
async fn drive_delete_removes_the_file_and_a_404_counts_as_done() {
    let env = setup().await;
    let id = env.upload_pdf(&random_bytes(3000, 16)).await;
    assert_eq!(env.drain().await.completed, 1);
    let file_id = env.document(id).await.drive_file_id.unwrap();

    env.enqueue_delete(DriveDelete {
        document_id: Some(id),
        drive_file_id: None,
    })
    .await;
    assert_eq!(env.drain().await.completed, 1);
    assert!(env.sim.file(&file_id).is_none());
    assert_eq!(env.count("select count(*) from documents").await, 0);

    // Deleting it again: Drive answers 404, which is done.
    env.enqueue_delete(DriveDelete {
        document_id: None,
        drive_file_id: Some(file_id),
    })
    .await;
    let report = env.drain().await;
    assert_eq!(report.completed, 1, "{report:?}");
}

/// A stand-in for the old blob storage.
async fn old_storage(files: Vec<(&'static str, Vec<u8>)>) -> String {
    let mut router = Router::new();
    for (path, bytes) in files {
        router = router.route(path, get(move || async move { bytes.clone() }));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}")
}

#[tokio::test]
async fn documents_import_moves_old_files_into_drive_in_place() {
    let env = setup().await;
    let a = random_bytes(700_000, 17);
    let b = random_bytes(5_000, 18);
    let base = old_storage(vec![("/blob/a.pdf", a.clone()), ("/blob/b.pdf", b.clone())]).await;
    let rows = [
        (
            "11111111-1111-4111-8111-111111111111",
            "a.pdf",
            format!("{base}/blob/a.pdf"),
        ),
        (
            "22222222-2222-4222-8222-222222222222",
            "b.pdf",
            format!("{base}/blob/b.pdf"),
        ),
        (
            "33333333-3333-4333-8333-333333333333",
            "gone.pdf",
            format!("{base}/blob/gone.pdf"),
        ),
    ];
    for (id, name, url) in &rows {
        sqlx::query(
            "insert into documents (id, client_id, title, file_name, mime_type, file_url)
             values ($1::uuid, $2, $3, $3, 'application/pdf', $4)",
        )
        .bind(id)
        .bind(CLIENT)
        .bind(name)
        .bind(url)
        .execute(&env.db.pool)
        .await
        .unwrap();
    }
    // The operator's command, as the real binary.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_baseaim-worker"))
        .args(["documents", "import"])
        .env("DATABASE_URL", &env.db.url)
        .output()
        .await
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("3 document(s) to import; 3 drive_import job(s) queued"),
        "{text}"
    );
    // Running the command again while they wait queues nothing twice.
    assert_eq!(
        drive_import::enqueue_imports(&env.db.pool, 100)
            .await
            .unwrap(),
        (3, 0)
    );
    let report = env.drain().await;
    assert_eq!(report.completed, 2, "{report:?}");
    assert_eq!(report.discarded, 1, "{report:?}");

    for (id, bytes) in [(rows[0].0, &a), (rows[1].0, &b)] {
        let doc = env.document(id.parse().unwrap()).await;
        assert_eq!(doc.status, "UPLOADED");
        assert_eq!(doc.sha256.as_deref(), Some(sha256_hex(bytes).as_str()));
        let file = env.sim.file(doc.drive_file_id.as_deref().unwrap()).unwrap();
        assert_eq!(&file.content, bytes);
        assert_eq!(file.app_properties["baseaim_document_id"], id);
        assert_eq!(
            doc.file_url, doc.web_view_link,
            "file_url now points at Drive"
        );
    }
    let gone = env.document(rows[2].0.parse().unwrap()).await;
    assert_eq!(gone.status, "FAILED");
    assert!(gone.failure_reason.unwrap().contains("404"));
    assert_eq!(env.sim.files().len(), 2);
    assert_eq!(env.count("select count(*) from document_chunks").await, 0);
    // Nothing left to import but the failed one.
    assert_eq!(
        drive_import::enqueue_imports(&env.db.pool, 100)
            .await
            .unwrap()
            .0,
        1
    );
}

#[tokio::test]
async fn a_throttled_token_request_snoozes_the_upload_instead_of_failing_it() {
    let env = setup().await;
    // The token endpoint's throttling is an OAuth answer, not Drive's: 429 {"error", ...}.
    env.sim.faults().next(FaultKind::Throttled);
    let refused = reqwest::Client::new()
        .post(env.sim.token_uri())
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 429);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "rate_limit_exceeded", "{body}");
    assert!(body["error_description"].is_string(), "{body}");

    let bytes = random_bytes(40_000, 20);
    let id = env.upload_pdf(&bytes).await;
    // The first request the job makes is the token's: a 429 answers it.
    env.sim.faults().next(FaultKind::Throttled);
    let report = env.drain().await;
    assert_eq!(report.snoozed, 1, "{report:?}");
    assert_eq!(env.job("drive_upload").await, ("scheduled".into(), 0));
    assert_eq!(env.document(id).await.status, "PENDING");
    // Then a 503 from it: retried, not given up.
    env.sim.faults().next(FaultKind::ServerError(503));
    env.make_due().await;
    let report = env.drain().await;
    assert_eq!(report.retried, 1, "{report:?}");
    assert_eq!(env.document(id).await.status, "PENDING");
    let tokens: Vec<u16> = env
        .sim
        .calls()
        .matching("/token")
        .iter()
        .map(|c| c.status)
        .collect();
    assert_eq!(tokens, [429, 429, 503]);
    env.make_due().await;
    assert_eq!(env.drain().await.completed, 1);
    assert_eq!(env.sim.files()[0].content, bytes);
}

#[tokio::test]
async fn a_clock_skew_refusal_from_the_token_endpoint_is_retried_but_a_deleted_key_fails() {
    let env = setup().await;
    let bytes = random_bytes(40_000, 26);
    let id = env.upload_pdf(&bytes).await;
    // This host's clock was off once: Google refuses the assertion's iat/exp.
    env.sim.refuse_next_token(
        "invalid_grant",
        "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.",
    );
    let report = env.drain().await;
    assert_eq!(report.retried, 1, "{report:?}");
    assert_eq!(env.job("drive_upload").await, ("retryable".into(), 1));
    let doc = env.document(id).await;
    assert_eq!(doc.status, "PENDING", "{:?}", doc.failure_reason);
    env.make_due().await;
    assert_eq!(env.drain().await.completed, 1);
    assert_eq!(env.document(id).await.status, "UPLOADED");
    assert_eq!(env.sim.files()[0].content, bytes);

    // The service account's key was deleted: no retry helps, the document fails at once.
    let id = env.upload_pdf(&random_bytes(1000, 27)).await;
    env.sim.expire_tokens();
    env.sim
        .refuse_next_token("invalid_grant", "Invalid JWT Signature.");
    let report = env.drain().await;
    assert_eq!(report.discarded, 1, "{report:?}");
    let doc = env.document(id).await;
    assert_eq!(doc.status, "FAILED");
    let reason = doc.failure_reason.unwrap();
    assert!(
        reason.contains("invalid_grant") && reason.contains("Signature"),
        "{reason}"
    );
    assert_eq!(env.sim.files().len(), 1);
}

#[tokio::test]
async fn a_document_deleted_while_its_upload_runs_leaves_no_file_in_drive() {
    let env = crate::setup_with(crate::Options {
        sim: baseaim_worker::sim::google_drive::GoogleDriveConfig {
            faults: baseaim_worker::sim::FaultConfig {
                path_prefix: Some("/upload/".into()),
                hang_for: Duration::from_secs(2),
                ..baseaim_worker::sim::FaultConfig::default()
            },
            // The delete's appProperties lookup cannot see the new file yet.
            list_visibility_delay: Duration::from_secs(60),
            ..Default::default()
        },
        ..crate::Options::default()
    })
    .await;
    let bytes = random_bytes(4 * crate::REQUEST_BYTES - 1000, 23);
    // The last request's answer is held 2 s.
    let (id, upload) = env.upload_until_the_last_answer_hangs(&bytes).await;
    // The document is deleted now: no file id recorded, none listed, so only the row goes.
    env.enqueue_delete(DriveDelete {
        document_id: Some(id),
        drive_file_id: None,
    })
    .await;
    let report = env.drain().await;
    assert_eq!(report.completed, 1, "{report:?}");
    assert_eq!(env.count("select count(*) from documents").await, 0);

    let report = upload.await.unwrap();
    assert_eq!(report.completed, 0, "{report:?}");
    assert!(
        env.sim.files().is_empty(),
        "the upload finished after its document was deleted and left {:?}",
        env.sim.files().iter().map(|f| &f.id).collect::<Vec<_>>()
    );
    assert_eq!(env.count("select count(*) from document_chunks").await, 0);
}

/// The simulator's token endpoint holds its next answer for five minutes; the client's
/// `request_timeout` is one second.
async fn with_a_hung_token_endpoint() -> crate::Env {
    let env = crate::setup_with(crate::Options {
        sim: baseaim_worker::sim::google_drive::GoogleDriveConfig {
            faults: baseaim_worker::sim::FaultConfig {
                path_prefix: Some("/token".into()),
                hang_for: Duration::from_secs(300),
                ..baseaim_worker::sim::FaultConfig::default()
            },
            ..Default::default()
        },
        config: vec![("BAW__DRIVE__REQUEST_TIMEOUT".into(), "1s".into())],
        ..crate::Options::default()
    })
    .await;
    env.sim.faults().next(FaultKind::Hang);
    env
}

#[tokio::test]
async fn a_hung_token_request_times_out_and_the_upload_completes_on_a_retry() {
    let env = with_a_hung_token_endpoint().await;
    let bytes = random_bytes(40_000, 24);
    let id = env.upload_pdf(&bytes).await;
    // Far below the five minutes the answer is held: the job is not stuck behind it.
    tokio::time::timeout(Duration::from_secs(60), async {
        while env.document(id).await.status != "UPLOADED" {
            env.drain().await;
            env.make_due().await;
        }
    })
    .await
    .expect("the upload is stuck behind the hung token request");
    assert_eq!(env.sim.files().len(), 1);
    assert_eq!(env.sim.files()[0].content, bytes);
}

#[tokio::test]
async fn jobs_waiting_for_a_hung_token_request_share_its_timeout() {
    let env = with_a_hung_token_endpoint().await;
    let key = SecretString::from(env.sim.key_file_json());
    let drive = DriveClient::new(&env.state.config.drive, &key).unwrap();
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let tokens = drive.tokens().clone();
            tokio::spawn(async move { tokens.token().await.map(|_| ()) })
        })
        .collect();
    let answers = tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(waiters))
        .await
        .expect("the token requests are stuck");
    for answer in answers {
        let error = answer.unwrap().unwrap_err();
        assert!(matches!(error, DriveError::Transport(_)), "{error}");
        assert!(error.to_string().contains("timed out"), "{error}");
    }
    // Only the hung request was sent; the next job mints afresh.
    assert_eq!(env.sim.calls().matching("/token").len(), 1);
    assert!(drive.tokens().token().await.is_ok());
}

/// How long the latest job of `kind` waits from now, in milliseconds.
async fn waits_ms(env: &crate::Env, kind: &str) -> i64 {
    let run_at: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("select run_at from jobs where kind = $1 order by id desc limit 1")
            .bind(kind)
            .fetch_one(&env.db.pool)
            .await
            .unwrap();
    (run_at - chrono::Utc::now()).num_milliseconds()
}

/// Runs the snoozed delete again `times` times while Drive's quota refuses everything; returns
/// each wait it snoozed for (ms).
async fn delete_waits(env: &crate::Env, times: usize) -> Vec<i64> {
    let mut waits = Vec::new();
    for _ in 0..times {
        let report = env.drain().await;
        assert_eq!(report.snoozed, 1, "{report:?}");
        assert_eq!(env.job("drive_delete").await, ("scheduled".into(), 0));
        waits.push(waits_ms(env, "drive_delete").await);
        env.make_due().await;
    }
    waits
}

/// 2 s, 4 s, 8 s, ... plus up to a second of jitter (less the time the test took to look).
fn assert_doubling(waits: &[i64]) {
    for (i, wait) in waits.iter().enumerate() {
        let base = 2_000_i64 << i;
        assert!(
            (base - 500..base + 1_000).contains(wait),
            "waits {waits:?} ms: expected about {base} ms at {i}"
        );
    }
}

#[tokio::test]
async fn a_rate_limited_drive_delete_snoozes_longer_each_time_then_deletes() {
    let env = setup().await;
    let id = env.upload_pdf(&random_bytes(3000, 24)).await;
    let other = env.upload_pdf(&random_bytes(3000, 25)).await;
    assert_eq!(env.drain().await.completed, 2);
    let file_id = env.document(id).await.drive_file_id.unwrap();
    let other_file = env.document(other).await.drive_file_id.unwrap();

    // Drive's quota refuses every call: 403 userRateLimitExceeded, without Retry-After.
    env.sim.set_quota_units_per_minute(0);
    env.enqueue_delete(DriveDelete {
        document_id: Some(id),
        drive_file_id: None,
    })
    .await;
    let waits = delete_waits(&env, 4).await;
    assert_doubling(&waits);
    assert_eq!(
        env.document(id).await.throttle_count,
        4,
        "counted on the row"
    );

    env.sim.set_quota_units_per_minute(325_000);
    assert_eq!(env.drain().await.completed, 1);
    assert!(env.sim.file(&file_id).is_none());
    assert_eq!(env.count("select count(*) from documents").await, 1);

    // A file whose row is gone: counted by the job itself.
    env.sim.set_quota_units_per_minute(0);
    env.enqueue_delete(DriveDelete {
        document_id: None,
        drive_file_id: Some(other_file.clone()),
    })
    .await;
    let waits = delete_waits(&env, 3).await;
    assert_doubling(&waits);
    env.sim.set_quota_units_per_minute(325_000);
    assert_eq!(env.drain().await.completed, 1);
    assert!(env.sim.file(&other_file).is_none());
}
