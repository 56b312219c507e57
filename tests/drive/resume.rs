//! Interrupted uploads: a cut connection resumes from the offset Drive confirmed (counting what
//! was sent twice), and a run killed after Drive created the file never creates a second one.

use std::time::Duration;

use baseaim_worker::sim::fault::FaultConfig;
use baseaim_worker::sim::google_drive::GoogleDriveConfig;

use crate::proxy::CutProxy;
use crate::{REQUEST_BYTES, random_bytes, setup_on, sha256_hex, start_sim};

const SIZE: usize = 2_000_000;

/// Uploads SIZE bytes through a proxy that cuts the connection 1.3 requests into the upload;
/// returns (bytes the simulator received for the session, the file's bytes, drain reports).
async fn cut_once(
    resume_retries: u32,
) -> (
    u64,
    Vec<u8>,
    Vec<baseaim_worker::queue::testing::DrainReport>,
    crate::Env,
    uuid::Uuid,
) {
    let sim = start_sim(GoogleDriveConfig::default()).await;
    let proxy = CutProxy::start(sim.server().addr()).await;
    let env = setup_on(
        sim,
        Some(proxy.base_url()),
        vec![(
            "BAW__DRIVE__RESUME_RETRIES".into(),
            resume_retries.to_string(),
        )],
    )
    .await;
    let bytes = random_bytes(SIZE, 7);
    let id = env.upload_pdf(&bytes).await;
    // Past the token request and the initiation (a few KiB), well into the second request.
    proxy.cut_after((REQUEST_BYTES as u64) * 13 / 10 + 4096);
    let mut reports = vec![env.drain().await];
    assert_eq!(proxy.cuts(), 1, "the connection was cut");
    for _ in 0..3 {
        if env.document(id).await.status == "UPLOADED" {
            break;
        }
        env.make_due().await;
        reports.push(env.drain().await);
    }
    let sessions = env.sim.upload_sessions();
    assert_eq!(sessions.len(), 1, "one session, resumed: {sessions:?}");
    (sessions[0].received, bytes, reports, env, id)
}

#[tokio::test]
async fn a_cut_mid_upload_is_resumed_in_the_same_run_from_the_confirmed_offset() {
    let (received, bytes, reports, env, id) = cut_once(3).await;
    assert_eq!(reports[0].completed, 1, "{reports:?}");
    let files = env.sim.files();
    assert_eq!(files.len(), 1);
    assert_eq!(sha256_hex(&files[0].content), sha256_hex(&bytes));
    // Re-sent: only what Drive had not confirmed of the cut request (whole 256 KiB blocks are
    // kept), never the bytes before it.
    let resent = received - SIZE as u64;
    assert!(resent > 0, "the cut request was partly re-sent");
    assert!(resent <= REQUEST_BYTES as u64, "re-sent {resent} bytes");
    assert_eq!(env.document(id).await.status, "UPLOADED");
    // The resume asked Drive where it stood.
    let queries = env
        .sim
        .calls()
        .matching("/upload/drive/v3/files")
        .into_iter()
        .filter(|c| c.method == "PUT" && c.status == 308)
        .count();
    assert!(queries >= SIZE / REQUEST_BYTES, "{queries}");
}

#[tokio::test]
async fn a_run_that_fails_on_a_cut_is_resumed_by_the_next_attempt_from_the_stored_offset() {
    let (received, bytes, reports, env, id) = cut_once(0).await;
    // The first run gave up on the cut, keeping the session and Drive's confirmed offset...
    assert_eq!(reports[0].retried, 1, "{reports:?}");
    // ...and the next attempt sent only the rest.
    assert_eq!(reports.iter().map(|r| r.completed).sum::<usize>(), 1);
    let resent = received - SIZE as u64;
    assert!(
        resent <= REQUEST_BYTES as u64,
        "re-sent {resent} bytes of {SIZE}"
    );
    let files = env.sim.files();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].content, bytes);
    let doc = env.document(id).await;
    assert_eq!(doc.status, "UPLOADED");
    assert_eq!(doc.upload_offset, SIZE as i64);
}

/// Kills the job (aborts its task) once Drive has the file but before the run records it.
async fn kill_after_drive_created_the_file(expire_sessions: bool) {
    let env = crate::setup_with(crate::Options {
        sim: GoogleDriveConfig {
            faults: FaultConfig {
                // Only upload requests count for the script below.
                path_prefix: Some("/upload/".into()),
                hang_for: Duration::from_secs(30),
                ..FaultConfig::default()
            },
            ..GoogleDriveConfig::default()
        },
        ..crate::Options::default()
    })
    .await;
    let bytes = random_bytes(4 * REQUEST_BYTES - 1000, 8);
    // The last request's answer never comes.
    let (id, run) = env.upload_until_the_last_answer_hangs(&bytes).await;
    run.abort(); // the node dies here
    let _ = run.await;
    assert_eq!(env.document(id).await.status, "PENDING");
    // The leader's rescuer would do this once the dead node's lease expired.
    sqlx::query("update jobs set state = 'retryable', run_at = now(), lease_owner = null where state = 'running'")
        .execute(&env.db.pool)
        .await
        .unwrap();
    if expire_sessions {
        // Also lose the session: only the appProperties lookup can find the file now.
        env.sim.expire_upload_sessions();
    }
    let report = env.drain().await;
    assert_eq!(report.completed, 1, "{report:?}");
    let files = env.sim.files();
    assert_eq!(files.len(), 1, "no second file");
    assert_eq!(files[0].content, bytes);
    let doc = env.document(id).await;
    assert_eq!(doc.status, "UPLOADED");
    assert_eq!(doc.drive_file_id.as_deref(), Some(files[0].id.as_str()));
    assert_eq!(env.count("select count(*) from document_chunks").await, 0);
}

#[tokio::test]
async fn a_job_killed_after_the_file_was_created_finds_it_through_its_session() {
    kill_after_drive_created_the_file(false).await;
}

#[tokio::test]
async fn a_job_killed_after_the_file_was_created_finds_it_by_its_app_property() {
    kill_after_drive_created_the_file(true).await;
}
