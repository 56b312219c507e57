//! The intake: a file streamed into the database and queued, then byte-identical in Drive;
//! refusals that leave nothing behind.

use std::time::Duration;

use futures::StreamExt;

use crate::{CLIENT, FOLDER, Options, form, random_bytes, setup, setup_with, sha256_hex};

#[tokio::test]
async fn a_file_lands_in_drive_byte_identical_with_its_app_properties() {
    let env = setup().await;
    let bytes = random_bytes(1_300_000, 1);
    let id = env.upload_pdf(&bytes).await;

    let pending = env.document(id).await;
    assert_eq!(pending.status, "PENDING");
    assert_eq!(pending.size_bytes, Some(bytes.len() as i64));
    assert_eq!(pending.sha256.as_deref(), Some(sha256_hex(&bytes).as_str()));
    // 1,300,000 bytes in 8,000-byte staging chunks, the last one short.
    assert_eq!(env.count("select count(*) from document_chunks").await, 163);
    assert_eq!(
        env.count("select octet_length(data)::int8 from document_chunks where seq = 162")
            .await,
        4_000
    );

    let report = env.drain().await;
    assert_eq!(report.completed, 1, "{report:?}");

    let files = env.sim.files();
    assert_eq!(files.len(), 1);
    let file = &files[0];
    assert_eq!(sha256_hex(&file.content), sha256_hex(&bytes));
    assert_eq!(file.content, bytes);
    assert_eq!(file.name, "report.pdf");
    assert_eq!(file.mime_type, "application/pdf");
    assert_eq!(file.parents, vec![FOLDER.to_string()]);
    assert_eq!(file.upload_type, "resumable");
    assert_eq!(
        file.app_properties.get("baseaim_document_id"),
        Some(&id.to_string())
    );
    // Link sharing is off by default.
    assert!(file.permissions.is_empty(), "{:?}", file.permissions);

    let done = env.document(id).await;
    assert_eq!(done.status, "UPLOADED");
    assert_eq!(done.drive_file_id.as_deref(), Some(file.id.as_str()));
    let link = done.web_view_link.expect("web view link");
    assert!(link.contains(&file.id), "{link}");
    assert_eq!(done.file_url.as_deref(), Some(link.as_str()));
    assert!(!done.has_session);
    assert_eq!(
        env.count("select count(*) from document_chunks").await,
        0,
        "the staged chunks are deleted once Drive has the file"
    );
}

#[tokio::test]
async fn link_sharing_is_granted_when_configured() {
    let env = setup_with(Options {
        config: vec![("BAW__DRIVE__SHARE_WITH_LINK".into(), "true".into())],
        ..Options::default()
    })
    .await;
    let id = env.upload_pdf(&random_bytes(10_000, 2)).await;
    assert_eq!(env.drain().await.completed, 1);
    let file = &env.sim.files()[0];
    assert_eq!(file.permissions.len(), 1);
    assert_eq!(file.permissions[0]["type"], "anyone");
    assert_eq!(file.permissions[0]["role"], "reader");
    assert_eq!(env.document(id).await.status, "UPLOADED");
}

async fn nothing_stored(env: &crate::Env) {
    assert_eq!(env.count("select count(*) from documents").await, 0);
    assert_eq!(env.count("select count(*) from document_chunks").await, 0);
    assert_eq!(env.count("select count(*) from jobs").await, 0);
}

#[tokio::test]
async fn oversized_and_disallowed_uploads_are_refused_with_nothing_stored() {
    let env = setup_with(Options {
        config: vec![("BAW__UPLOADS__MAX_BYTES".into(), "1000000".into())],
        ..Options::default()
    })
    .await;

    // Over the limit: 413, after part of it was staged.
    let (ct, body) = form(
        &[("client_id", CLIENT)],
        Some(("big.pdf", "application/pdf", &random_bytes(1_000_001, 3))),
    );
    let response = env.post(&ct, body).await;
    assert_eq!(response.status(), 413);
    nothing_stored(&env).await;

    // A declared length far over the limit is refused before reading.
    let (ct, body) = form(
        &[("client_id", CLIENT)],
        Some(("big.pdf", "application/pdf", &random_bytes(3_000_000, 3))),
    );
    assert_eq!(env.post(&ct, body).await.status(), 413);
    nothing_stored(&env).await;

    // A type not on the list: 415, naming what is accepted.
    let (ct, body) = form(
        &[("client_id", CLIENT)],
        Some(("page.html", "text/html", b"<script>alert(1)</script>")),
    );
    let response = env.post(&ct, body).await;
    assert_eq!(response.status(), 415);
    let json: serde_json::Value = response.json().await.unwrap();
    let message = json["error"].as_str().unwrap();
    assert!(
        message.contains("text/html") && message.contains("application/pdf"),
        "{message}"
    );
    nothing_stored(&env).await;

    // Staged first, then refused: an unknown client, after the whole file went in.
    let (ct, body) = form(
        &[],
        Some(("r.pdf", "application/pdf", &random_bytes(300_000, 4))),
    );
    let mut body_with_client = body;
    // The client id after the file: the intake only learns it at the end.
    let tail = b"--drive-test-boundary-7d3f--\r\n";
    body_with_client.truncate(body_with_client.len() - tail.len());
    body_with_client.extend_from_slice(
        b"--drive-test-boundary-7d3f\r\nContent-Disposition: form-data; name=\"client_id\"\r\n\r\nno-such-client\r\n",
    );
    body_with_client.extend_from_slice(tail);
    let response = env.post(&ct, body_with_client).await;
    assert_eq!(response.status(), 422);
    let json: serde_json::Value = response.json().await.unwrap();
    assert!(
        json["error"].as_str().unwrap().contains("no-such-client"),
        "{json}"
    );
    nothing_stored(&env).await;

    // A NUL byte in a text field (PostgreSQL text cannot hold it): 422, not 500.
    let (ct, body) = form(
        &[("client_id", "a\u{0}b")],
        Some(("r.pdf", "application/pdf", b"%PDF-1.7")),
    );
    assert_eq!(env.post(&ct, body).await.status(), 422);
    nothing_stored(&env).await;

    // No file, an empty file, a body that is not multipart.
    let (ct, body) = form(&[("client_id", CLIENT)], None);
    assert_eq!(env.post(&ct, body).await.status(), 422);
    let (ct, body) = form(
        &[("client_id", CLIENT)],
        Some(("e.pdf", "application/pdf", b"")),
    );
    assert_eq!(env.post(&ct, body).await.status(), 422);
    assert_eq!(
        env.post("application/json", b"{}".to_vec()).await.status(),
        400
    );
    nothing_stored(&env).await;

    // And a good one still goes through.
    env.upload_pdf(&random_bytes(5_000, 5)).await;
    assert_eq!(env.count("select count(*) from documents").await, 1);
}

#[tokio::test]
async fn without_a_valid_token_with_the_scope_nothing_is_accepted() {
    let env = setup().await;
    let (ct, body) = form(
        &[("client_id", CLIENT)],
        Some(("r.pdf", "application/pdf", &random_bytes(5_000, 6))),
    );
    assert_eq!(env.post_as(None, &ct, body.clone()).await.status(), 401);
    assert_eq!(
        env.post_as(Some("baw_not-a-token"), &ct, body.clone())
            .await
            .status(),
        401
    );
    let other = crate::api_token(&env.db.pool, &["jobs:write"]).await;
    assert_eq!(env.post_as(Some(&other), &ct, body).await.status(), 403);
    nothing_stored(&env).await;
}

/// A multipart upload whose file part is sent as `first` bytes, then the rest only when `go`
/// fires (never, if it is dropped unfired); answers the response.
fn held_upload(
    env: &crate::Env,
    first: usize,
    rest: usize,
    go: tokio::sync::oneshot::Receiver<()>,
) -> tokio::task::JoinHandle<reqwest::Response> {
    let (ct, body) = form(
        &[("client_id", CLIENT)],
        Some((
            "held.pdf",
            "application/pdf",
            &random_bytes(first + rest, 30),
        )),
    );
    let split = body.len() - rest - 60; // inside the file part, before the closing boundary
    let head = bytes::Bytes::from(body[..split].to_vec());
    let tail = bytes::Bytes::from(body[split..].to_vec());
    let stream = futures::stream::once(async move { Ok::<_, std::io::Error>(head) }).chain(
        futures::stream::once(async move {
            if go.await.is_err() {
                // Dropped unfired: the body stalls for good.
                std::future::pending::<()>().await;
            }
            Ok(tail)
        }),
    );
    let request = env
        .http
        .post(format!("{}/v1/uploads", env.base))
        .bearer_auth(&env.token)
        .header("content-type", ct)
        .body(reqwest::Body::wrap_stream(stream));
    tokio::spawn(async move { request.send().await.expect("send") })
}

async fn staging_started(env: &crate::Env) {
    crate::support::eventually(10, "the first upload is staging", || async {
        env.count(
            "select count(*) from pg_stat_activity
             where datname = current_database() and query like 'copy document_chunks%'",
        )
        .await
            == 1
    })
    .await;
}

#[tokio::test]
async fn uploads_beyond_the_cap_get_503_with_retry_after_and_nothing_is_stored() {
    let env = setup_with(Options {
        config: vec![("BAW__UPLOADS__MAX_CONCURRENT".into(), "1".into())],
        ..Options::default()
    })
    .await;
    let (go, wait) = tokio::sync::oneshot::channel();
    let first = held_upload(&env, 50_000, 50_000, wait);
    staging_started(&env).await;

    let (ct, body) = form(
        &[("client_id", CLIENT)],
        Some(("second.pdf", "application/pdf", &random_bytes(10_000, 31))),
    );
    let response = env.post(&ct, body).await;
    assert_eq!(response.status(), 503);
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap()),
        Some("5")
    );
    assert_eq!(env.count("select count(*) from documents").await, 0);

    go.send(()).unwrap();
    assert_eq!(first.await.unwrap().status(), 202);
    // The slot is free again.
    env.upload_pdf(&random_bytes(10_000, 32)).await;
    assert_eq!(env.count("select count(*) from documents").await, 2);
}

#[tokio::test]
async fn a_stalled_upload_gets_408_frees_its_slot_and_stores_nothing() {
    let env = setup_with(Options {
        config: vec![
            ("BAW__UPLOADS__MAX_CONCURRENT".into(), "1".into()),
            ("BAW__UPLOADS__READ_TIMEOUT".into(), "1s".into()),
        ],
        ..Options::default()
    })
    .await;
    let (go, wait) = tokio::sync::oneshot::channel::<()>();
    let stalled = held_upload(&env, 50_000, 50_000, wait);
    staging_started(&env).await;
    let response = tokio::time::timeout(Duration::from_secs(10), stalled)
        .await
        .expect("answered while the client still stalls")
        .unwrap();
    assert_eq!(response.status(), 408);
    nothing_stored(&env).await;
    drop(go);
    // Its slot and its connection are free: the next upload goes through.
    env.upload_pdf(&random_bytes(10_000, 33)).await;
    assert_eq!(env.count("select count(*) from documents").await, 1);
}
