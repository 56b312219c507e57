//! How staged bytes sit in PostgreSQL: page-sized inline chunks (migration 0011), documents
//! staged before it with large TOASTed chunks, the chunk size limit, and chunks going with their
//! document.

use baseaim_worker::config::Config;
use baseaim_worker::jobs::DriveUpload;
use baseaim_worker::queue::{self, NewJob};

use crate::{CLIENT, random_bytes, setup, sha256_hex};

#[test]
fn a_chunk_size_that_does_not_fit_one_page_is_refused_at_config_load() {
    let load = |bytes: &str| {
        Config::load_from(
            None,
            [("BAW__UPLOADS__CHUNK_BYTES".to_string(), bytes.to_string())],
        )
    };
    let error = load("1048576").expect_err("1 MiB chunks cannot be stored inline");
    let message = error.to_string();
    assert!(
        message.contains("uploads.chunk_bytes") && message.contains("8112"),
        "{message}"
    );
    assert!(load("8113").is_err());
    assert_eq!(load("8112").expect("the largest").uploads.chunk_bytes, 8112);
}

#[tokio::test]
async fn a_document_staged_in_large_toasted_chunks_before_0011_still_uploads() {
    let env = setup().await;
    let pool = &env.db.pool;
    // As the table was before migration 0011: 1 MiB values, stored out of line.
    sqlx::query("alter table document_chunks alter column data set storage external")
        .execute(pool)
        .await
        .unwrap();
    let chunk = 1024 * 1024;
    let bytes = random_bytes(2 * chunk + 123_456, 21);
    let id = uuid::Uuid::new_v4();
    sqlx::query(
        "insert into documents (id, client_id, title, file_name, mime_type, size_bytes, sha256,
                                chunk_bytes)
         values ($1, $2, 'Old', 'old.pdf', 'application/pdf', $3, $4, $5)",
    )
    .bind(id)
    .bind(CLIENT)
    .bind(bytes.len() as i64)
    .bind(sha256_hex(&bytes))
    .bind(chunk as i32)
    .execute(pool)
    .await
    .unwrap();
    for (seq, data) in bytes.chunks(chunk).enumerate() {
        sqlx::query("insert into document_chunks (document_id, seq, data) values ($1, $2, $3)")
            .bind(id)
            .bind(seq as i32)
            .bind(data)
            .execute(pool)
            .await
            .unwrap();
    }
    queue::enqueue(pool, NewJob::of(&DriveUpload { document_id: id }).unwrap())
        .await
        .unwrap();

    assert_eq!(env.drain().await.completed, 1);
    let files = env.sim.files();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].content, bytes);
    assert_eq!(env.document(id).await.status, "UPLOADED");
    assert_eq!(env.count("select count(*) from document_chunks").await, 0);
}

#[tokio::test]
async fn staged_chunks_are_inline_rows_and_go_with_their_document() {
    let env = setup().await;
    let bytes = random_bytes(100_000, 22);
    let id = env.upload_pdf(&bytes).await;
    // Stored inline: no TOAST pointer (a TOASTed value's column size would be ~18 bytes).
    assert_eq!(
        env.count("select count(*) from document_chunks where pg_column_size(data) < 1000")
            .await,
        0
    );
    assert_eq!(
        env.count("select coalesce(sum(octet_length(data)), 0)::int8 from document_chunks")
            .await,
        100_000
    );
    // No per-row foreign key check any more; the cascade is a statement trigger.
    assert_eq!(
        env.count(
            "select count(*) from pg_constraint
             where conrelid = 'document_chunks'::regclass and contype = 'f'"
        )
        .await,
        0
    );
    sqlx::query("delete from documents where id = $1")
        .bind(id)
        .execute(&env.db.pool)
        .await
        .unwrap();
    assert_eq!(env.count("select count(*) from document_chunks").await, 0);
}

/// Bytes left staged by an upload that recorded UPLOADED but never deleted them (its run died,
/// then it ran out of attempts) go with the next `prune` run; a document still pending keeps its
/// bytes.
#[tokio::test]
async fn the_prune_job_deletes_bytes_left_staged_for_uploaded_documents() {
    use baseaim_worker::jobs::{self, Prune};
    let env = setup().await;
    let left_behind = env.upload_pdf(&random_bytes(50_000, 31)).await;
    let pending = env.upload_pdf(&random_bytes(50_000, 32)).await;
    sqlx::query("update documents set status = 'UPLOADED', drive_file_id = 'f1' where id = $1")
        .bind(left_behind)
        .execute(&env.db.pool)
        .await
        .unwrap();
    let job = queue::enqueue(&env.db.pool, NewJob::of(&Prune::default()).unwrap())
        .await
        .unwrap();
    let report = queue::testing::drain(
        &env.db.pool,
        &jobs::registry(),
        env.state.clone(),
        "default",
    )
    .await
    .unwrap();
    assert_eq!(report.completed, 1, "{report:?}");
    let staged: Vec<(uuid::Uuid, i64)> = sqlx::query_as(
        "select document_id, sum(octet_length(data))::int8 from document_chunks group by 1",
    )
    .fetch_all(&env.db.pool)
    .await
    .unwrap();
    assert_eq!(staged, vec![(pending, 50_000)]);
    let result: serde_json::Value = sqlx::query_scalar("select result from jobs where id = $1")
        .bind(job.id)
        .fetch_one(&env.db.pool)
        .await
        .unwrap();
    assert!(
        result["uploaded_chunks_pruned"].as_u64().unwrap() > 0,
        "{result}"
    );
}
