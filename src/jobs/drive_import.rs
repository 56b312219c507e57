//! `drive_import` and `baseaim-worker documents import`: moves documents whose `file_url` still
//! points at the old blob storage (any http(s) URL) into Google Drive, one job per document.
//!
//! The job downloads the file as a stream into `document_chunks` (one transaction: a run that
//! dies half way leaves nothing and the next downloads again), records its size and SHA-256, then
//! takes the same upload path as `drive_upload`: same resumable session, same appProperties
//! lookup, same row updated in place (`file_url` becomes the Drive link). A run that stops after
//! the download resumes the upload, not the download. Paced by the `drive` bucket like uploads.
//!
//! Download failures: 404 and other 4xx, a file over `uploads.max_bytes` or a URL that is not
//! http(s) mark the document `FAILED` with the reason; 5xx and cut connections retry.

use std::sync::LazyLock;
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::AppState;
use super::drive_upload::{self, DriveUpload, Staging, StagingConn, UploadError};
use crate::config::Config;
use crate::queue::{self, Job, JobArgs, JobContext, JobError, JobResult, NewJob, Policy};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveImport {
    pub document_id: Uuid,
}

impl JobArgs for DriveImport {
    const KIND: &'static str = "drive_import";

    /// The upload's policy: an import is an upload whose bytes come from the old storage.
    fn policy() -> Policy {
        DriveUpload::policy()
    }

    fn unique_key(&self) -> Option<String> {
        Some(format!("drive_import:{}", self.document_id))
    }
}

/// Documents still on the old storage, oldest first.
const IMPORTABLE: &str = r#"
select id from documents
where status <> 'UPLOADED' and drive_file_id is null and file_url ~* '^https?://'
order by created_at, id
limit $1
"#;

const CHUNKS_DELETE: &str = "delete from document_chunks where document_id = $1";

const DOCUMENT_STAGED: &str = r#"
update documents set size_bytes = $2, sha256 = $3, chunk_bytes = $4, upload_session_uri = null,
       upload_offset = 0, status = 'PENDING', failure_reason = null, updated_at = now()
where id = $1
"#;

/// Downloads share one client (connection pool); no overall timeout, since files are large, but
/// a stalled read fails.
static DOWNLOADS: LazyLock<Result<reqwest::Client, String>> = LazyLock::new(|| {
    crate::tls::http_client_builder()
        .read_timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| e.to_string())
});

impl Job<AppState> for DriveImport {
    async fn perform(self, ctx: JobContext<AppState>) -> JobResult {
        let pool = &ctx.state.pool;
        let id = self.document_id;
        let Some(doc) = drive_upload::document(pool, id).await? else {
            return Err(JobError::Cancel(format!("document {id} does not exist")));
        };
        if doc.status == "UPLOADED" {
            // Staged chunks left by a run that died between recording the upload and deleting
            // them.
            sqlx::query(CHUNKS_DELETE).bind(id).execute(pool).await?;
            return Ok(Some(
                serde_json::json!({"drive_file_id": doc.drive_file_id, "already": true}),
            ));
        }
        if doc.sha256.is_none() {
            let url = doc.file_url.clone().unwrap_or_default();
            if let Err(error) = download(&ctx.state, id, &url).await {
                return drive_upload::finish(&ctx, id, Err(error)).await;
            }
        }
        let Some(doc) = drive_upload::document(pool, id).await? else {
            return Err(JobError::Cancel(format!("document {id} does not exist")));
        };
        let outcome = drive_upload::upload(&ctx.state, &doc).await;
        drive_upload::finish(&ctx, id, outcome).await
    }
}

/// Streams `url` into the document's chunks and records its size and digest, in one transaction.
async fn download(state: &AppState, id: Uuid, url: &str) -> Result<(), UploadError> {
    let parsed = url::Url::parse(url)
        .map_err(|_| UploadError::Invalid(format!("file_url is not a URL: {url:?}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(UploadError::Invalid(format!(
            "file_url is not an http(s) URL: {}",
            parsed.scheme()
        )));
    }
    let client = DOWNLOADS
        .as_ref()
        .map_err(|e| UploadError::Invalid(format!("download client: {e}")))?;
    let retry =
        |what: String| UploadError::Drive(crate::integrations::drive::DriveError::Transport(what));
    let response = client
        .get(parsed)
        .send()
        .await
        .map_err(|e| retry(format!("downloading the old file: {}", e.without_url())))?;
    let status = response.status();
    if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        return Err(retry(format!("downloading the old file: HTTP {status}")));
    }
    if !status.is_success() {
        return Err(UploadError::Invalid(format!(
            "downloading the old file failed: HTTP {status}"
        )));
    }
    let limit = state.config.uploads.max_bytes;
    if response.content_length().is_some_and(|n| n > limit) {
        return Err(UploadError::Invalid(format!(
            "the old file is larger than uploads.max_bytes ({limit} bytes)"
        )));
    }
    let chunk_bytes = state.config.uploads.chunk_bytes;
    // A run cut off mid-COPY (timeout, shutdown) must not hand its connection back: see
    // `StagingConn`.
    let mut conn = StagingConn::acquire(&state.pool).await?;
    let watch = conn.watch();
    let mut tx = conn.begin().await?;
    sqlx::query(CHUNKS_DELETE)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let mut staging = Staging::begin(&mut tx, watch, id, chunk_bytes).await?;
    let mut body = response.bytes_stream();
    while let Some(bytes) = body.next().await {
        let bytes =
            bytes.map_err(|e| retry(format!("downloading the old file: {}", e.without_url())))?;
        if staging.size() + bytes.len() as u64 > limit {
            return Err(UploadError::Invalid(format!(
                "the old file is larger than uploads.max_bytes ({limit} bytes)"
            )));
        }
        staging.push(&bytes).await?;
    }
    let staged = staging.finish().await?;
    if staged.size == 0 {
        return Err(UploadError::Invalid("the old file is empty".into()));
    }
    let updated = sqlx::query(DOCUMENT_STAGED)
        .bind(id)
        .bind(staged.size as i64)
        .bind(&staged.sha256)
        .bind(chunk_bytes as i32)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if updated == 0 {
        // Deleted while downloading: the transaction is dropped, and the chunks with it.
        return Err(UploadError::Invalid("the document was deleted".into()));
    }
    tx.commit().await?;
    Ok(())
}

/// Enqueues one `drive_import` per document still on the old storage (at most `limit`); a
/// document whose import is already queued is not queued twice. Returns (found, newly queued).
pub async fn enqueue_imports(pool: &sqlx::PgPool, limit: i64) -> anyhow::Result<(usize, usize)> {
    let ids: Vec<Uuid> = sqlx::query_scalar(IMPORTABLE)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    let jobs = ids
        .iter()
        .map(|&document_id| NewJob::of(&DriveImport { document_id }))
        .collect::<Result<Vec<_>, _>>()?;
    let enqueued = queue::enqueue_many(pool, jobs).await?;
    Ok((ids.len(), enqueued.iter().filter(|e| e.inserted).count()))
}

/// `baseaim-worker documents ...`
#[derive(Debug, clap::Subcommand)]
pub enum DocumentsCommand {
    /// Queue a `drive_import` job for every document whose file_url still points at the old
    /// storage (http/https) and that is not in Drive yet.
    Import {
        /// At most this many documents in this run.
        #[arg(long, default_value_t = 100_000)]
        limit: i64,
    },
}

pub async fn command(config: &Config, command: DocumentsCommand) -> anyhow::Result<()> {
    let pool = crate::db::connect(&config.database).await?;
    match command {
        DocumentsCommand::Import { limit } => {
            let (found, queued) = enqueue_imports(&pool, limit).await?;
            println!(
                "{found} document(s) to import; {queued} drive_import job(s) queued ({} already queued)",
                found - queued
            );
        }
    }
    Ok(())
}
