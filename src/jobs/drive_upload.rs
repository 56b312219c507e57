//! `drive_upload`: one staged document into Google Drive with the resumable protocol, then the
//! row marked `UPLOADED` and its staged chunks deleted. Also the staging itself ([`Staging`]),
//! which the intake and `drive_import` write through, and the upload path `drive_import` reuses.
//!
//! No duplicates, no restarts from zero (ARCHITECTURE.md, "exactly-once effects"):
//! - The file carries `appProperties[baseaim_document_id] = <document id>`. Before creating a
//!   session, the job looks for that key, so a run killed after Drive created the file finds it
//!   instead of uploading it again.
//! - The session URI is committed before the first byte is sent, and the offset Drive confirms
//!   (`308` + `Range`) is recorded while the next request is sent. A later run (any node: the
//!   bytes are in the database) asks the session where it stands (`bytes */total`) and sends
//!   only the rest; a finished session answers with the file. An expired session (404/410)
//!   falls back to the lookup and a new session.
//! - Inside one run, a cut connection or a 5xx is resumed in place (status query, then the rest)
//!   up to `drive.resume_retries` times before the attempt is given up.
//!
//! Staging stores a file as page-sized rows (`uploads.chunk_bytes`, at most 8112 bytes: one row
//! per 8 KB page, inline, no TOAST) written with one binary `COPY`; rows staged earlier with
//! larger chunks (TOASTed, before migration 0011) read back the same way, since the reader goes
//! by each document's own `chunk_bytes`. Each request streams its range straight from
//! `document_chunks` (a reader task a few 256 KiB pieces ahead), so memory stays small whatever
//! the file size. The staged rows are deleted after the document is recorded `UPLOADED`.
//!
//! Errors (PROVIDERS.md §D.7, classified in `integrations::drive::error`): rate limits snooze with
//! a doubling wait (no attempt spent); 5xx, cut connections and a token refused for this host's
//! clock (`invalid_grant` about `iat`/`exp`) retry; 401 refreshes the token once
//! (in the client); other 4xx, a missing folder or key discard and mark the document `FAILED`
//! with the reason, as does the last failed attempt.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::postgres::PgCopyIn;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::AppState;
use crate::integrations::drive::{
    DriveClient, DriveError, DriveFile, NewFile, UploadProgress, throttle_wait,
};
use crate::queue::{Backoff, Job, JobArgs, JobContext, JobError, JobResult, Policy};

/// The `appProperties` key that tags a file with its document id.
pub const APP_PROPERTY: &str = "baseaim_document_id";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveUpload {
    pub document_id: Uuid,
}

impl JobArgs for DriveUpload {
    const KIND: &'static str = "drive_upload";

    fn policy() -> Policy {
        Policy {
            queue: "drive",
            // 12 attempts, 10 s doubling up to 30 min: the last about 3 h after the first.
            max_attempts: 12,
            backoff: Backoff {
                base: Duration::from_secs(10),
                max: Duration::from_secs(1800),
                jitter: 0.2,
            },
            // A 5 TB file would need longer; a run that times out resumes where it stopped.
            timeout: Some(Duration::from_secs(3600)),
            rate_limit: Some("drive"),
            ..Policy::default()
        }
    }

    /// Never two uploads of one document at once.
    fn unique_key(&self) -> Option<String> {
        Some(format!("drive_upload:{}", self.document_id))
    }
}

impl Job<AppState> for DriveUpload {
    async fn perform(self, ctx: JobContext<AppState>) -> JobResult {
        run_upload(&ctx, self.document_id).await
    }
}

/// The node's Drive client for `state`'s settings and key.
///
/// Built on first use and kept for the life of the process, so every Drive job of the node shares
/// one connection pool and one token cache (one mint per hour, not one per job). Keyed by the API
/// base, the scope and a digest of the key, so tests with their own simulators get their own
/// client. Kept here rather than in `AppState`, whose fields other code builds literally.
pub fn drive_client(state: &AppState) -> Result<DriveClient, DriveError> {
    use secrecy::ExposeSecret;
    use std::sync::{LazyLock, Mutex};
    /// (digest of the settings and key, the client built for them).
    type Clients = Mutex<Vec<(Vec<u8>, DriveClient)>>;
    static CLIENTS: LazyLock<Clients> = LazyLock::new(Mutex::default);
    let key = state
        .secrets
        .google_service_account_key
        .as_ref()
        .ok_or_else(|| DriveError::Unconfigured("GOOGLE_SERVICE_ACCOUNT_KEY is not set".into()))?;
    let settings = &state.config.drive;
    let mut id = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [
        settings.api_base.as_bytes(),
        settings.scope.as_bytes(),
        key.expose_secret().as_bytes(),
        format!(
            "{:?}/{}",
            settings.request_timeout, settings.supports_all_drives
        )
        .as_bytes(),
    ] {
        id.update(&(part.len() as u64).to_be_bytes());
        id.update(part);
    }
    let id = id.finish().as_ref().to_vec();
    let mut clients = CLIENTS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, client)) = clients.iter().find(|(k, _)| *k == id) {
        return Ok(client.clone());
    }
    let client = DriveClient::new(settings, key)?;
    clients.push((id, client.clone()));
    Ok(client)
}

// ---------------------------------------------------------------------------------------------
// SQL

const DOCUMENT_GET: &str = r#"
select d.id, d.client_id, d.file_name, d.mime_type, d.size_bytes, d.sha256, d.status,
       d.drive_file_id, d.upload_session_uri, d.chunk_bytes, d.file_url,
       c.drive_folder_id
from documents d left join clients c on c.id = d.client_id
where d.id = $1
"#;

const DOCUMENT_SESSION_SET: &str = "update documents set upload_session_uri = $2, upload_offset = $3, updated_at = now() where id = $1";

const DOCUMENT_OFFSET_SET: &str =
    "update documents set upload_offset = $2, throttle_count = 0, updated_at = now() where id = $1";

const DOCUMENT_THROTTLED: &str = "update documents set throttle_count = throttle_count + 1, updated_at = now() where id = $1 returning throttle_count";

const DOCUMENT_UPLOADED: &str = r#"
update documents set status = 'UPLOADED', drive_file_id = $2, web_view_link = $3,
       file_url = coalesce($3, file_url), failure_reason = $4, upload_session_uri = null,
       upload_offset = size_bytes, throttle_count = 0, uploaded_at = now(), updated_at = now()
where id = $1
"#;

const DOCUMENT_FAILED: &str = "update documents set status = 'FAILED', failure_reason = $2, updated_at = now() where id = $1 and status <> 'UPLOADED'";

const CHUNKS_DELETE: &str = "delete from document_chunks where document_id = $1";

/// Staged chunks of up to `$1` uploaded documents: left when the job that recorded the upload
/// never got to delete them (it died, then ran out of attempts). FAILED documents keep theirs, so
/// an operator's retry can still upload.
const UPLOADED_CHUNKS_PRUNE: &str = "
delete from document_chunks where document_id in (
    select d.id from documents d
    where d.status = 'UPLOADED'
      and exists (select 1 from document_chunks c where c.document_id = d.id)
    limit $1)";

/// The staging `COPY` (binary: rows of document id, seq, data; see [`Staging`]).
const CHUNKS_COPY: &str =
    "copy document_chunks (document_id, seq, data) from stdin with (format binary)";

/// `COPY` data sent per message while staging: a few dozen rows.
const COPY_BATCH_BYTES: usize = 256 * 1024;

/// Planner settings for [`CHUNK_RANGE`], local to its transaction. The range is read with the
/// primary key's index scan, which returns the rows in `seq` order. Without statistics (a table
/// just filled) the planner may prefer a bitmap scan plus a sort, which spills a whole request's
/// rows to a temporary file before sending the first one; with 1 MiB chunks that was cheap, with
/// thousands of page-sized rows it is not.
const RANGE_PLAN: &str = "select set_config('enable_bitmapscan', 'off', true), set_config('enable_seqscan', 'off', true), set_config('enable_sort', 'off', true)";

const CHUNK_RANGE: &str = "select seq, data from document_chunks where document_id = $1 and seq between $2 and $3 order by seq";

/// The last staged chunk (its number and length tell whether the staging is complete; each
/// chunk before it is checked as it is read). Reading every row to sum their lengths would cost
/// as much as the upload's own reads.
const CHUNK_LAST: &str = "select seq, octet_length(data)::int8 from document_chunks where document_id = $1 order by seq desc limit 1";

/// The document as the upload needs it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct DocumentRow {
    pub id: Uuid,
    pub client_id: String,
    pub file_name: String,
    pub mime_type: String,
    pub size_bytes: Option<i64>,
    pub sha256: Option<String>,
    pub status: String,
    pub drive_file_id: Option<String>,
    pub upload_session_uri: Option<String>,
    pub chunk_bytes: i32,
    pub file_url: Option<String>,
    pub drive_folder_id: Option<String>,
}

pub(crate) async fn document(pool: &PgPool, id: Uuid) -> Result<Option<DocumentRow>, sqlx::Error> {
    sqlx::query_as(DOCUMENT_GET)
        .bind(id)
        .fetch_optional(pool)
        .await
}

// ---------------------------------------------------------------------------------------------
// Staging

/// Writes a file's bytes into `document_chunks` as they arrive, in fixed-size chunks, hashing
/// them on the way, with ONE binary `COPY` per file: no round trip per chunk, so PostgreSQL
/// stores the previous rows while the next bytes are read (the socket buffers decouple the two).
/// Holds at most one batch of rows in memory. The caller owns the transaction: nothing is visible
/// (or left behind) unless it commits.
///
/// A `COPY` cut off half way (an error, a refused or cancelled request) leaves the connection in
/// a state sqlx does not track, so stage on a [`StagingConn`] (passing its [`CopyWatch`]), which
/// closes such a connection instead of returning it to the pool.
pub struct Staging<'c> {
    copy: PgCopyIn<&'c mut PgConnection>,
    watch: CopyWatch,
    document_id: Uuid,
    chunk_bytes: usize,
    /// `COPY` binary data not sent yet: whole rows, then the row being filled (always last).
    batch: BytesMut,
    /// Where the open row's length field is in `batch` (patched if the file ends inside it).
    row_length_at: usize,
    /// Data bytes in the open row; 0 when no row is open.
    row_fill: usize,
    next_seq: i32,
    size: u64,
    hasher: ring::digest::Context,
}

/// What [`Staging::finish`] learnt about the staged file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staged {
    pub size: u64,
    /// Lowercase hex SHA-256.
    pub sha256: String,
    pub chunks: i32,
}

impl<'c> Staging<'c> {
    /// Starts the `COPY` on `conn` (in the caller's transaction). `chunk_bytes` is at most
    /// [`crate::config::MAX_STAGED_CHUNK_BYTES`] (checked at config load), so every row fits one
    /// page uncompressed (the column's storage is PLAIN since migration 0011).
    pub async fn begin(
        conn: &'c mut PgConnection,
        watch: CopyWatch,
        document_id: Uuid,
        chunk_bytes: usize,
    ) -> sqlx::Result<Self> {
        watch.0.store(true, Ordering::Release);
        let copy = conn.copy_in_raw(CHUNKS_COPY).await?;
        let mut batch = BytesMut::with_capacity(COPY_BATCH_BYTES + chunk_bytes + 64);
        crate::db::copy::put_header(&mut batch);
        Ok(Staging {
            copy,
            watch,
            document_id,
            chunk_bytes,
            batch,
            row_length_at: 0,
            row_fill: 0,
            next_seq: 0,
            size: 0,
            hasher: ring::digest::Context::new(&ring::digest::SHA256),
        })
    }

    /// Bytes accepted so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends `data`; sends a batch of whole rows whenever one is full.
    pub async fn push(&mut self, mut data: &[u8]) -> sqlx::Result<()> {
        self.size += data.len() as u64;
        self.hasher.update(data);
        while !data.is_empty() {
            if self.row_fill == 0 {
                self.open_row();
            }
            let take = (self.chunk_bytes - self.row_fill).min(data.len());
            self.batch.extend_from_slice(&data[..take]);
            self.row_fill += take;
            data = &data[take..];
            if self.row_fill == self.chunk_bytes {
                self.row_fill = 0;
                if self.batch.len() >= COPY_BATCH_BYTES {
                    self.copy.send(&self.batch[..]).await?;
                    self.batch.clear();
                }
            }
        }
        Ok(())
    }

    /// A row's fields (document id, seq) and the data's length field, announcing a full chunk.
    fn open_row(&mut self) {
        self.batch.put_i16(3);
        self.batch.put_i32(16);
        self.batch.put_slice(self.document_id.as_bytes());
        self.batch.put_i32(4);
        self.batch.put_i32(self.next_seq);
        self.row_length_at = self.batch.len();
        self.batch.put_i32(self.chunk_bytes as i32);
        self.next_seq += 1;
    }

    /// Ends the last (short) chunk and the `COPY`; returns size, digest and chunk count.
    pub async fn finish(mut self) -> sqlx::Result<Staged> {
        if self.row_fill > 0 {
            let length = (self.row_fill as i32).to_be_bytes();
            self.batch[self.row_length_at..self.row_length_at + 4].copy_from_slice(&length);
        }
        crate::db::copy::put_trailer(&mut self.batch);
        self.copy.send(&self.batch[..]).await?;
        let ended = self.copy.finish().await;
        // Ended either way (an error answer included): the connection's state is known again.
        self.watch.0.store(false, Ordering::Release);
        ended?;
        let digest = self.hasher.finish();
        Ok(Staged {
            size: self.size,
            sha256: hex(digest.as_ref()),
            chunks: self.next_seq,
        })
    }
}

/// A pooled connection for a staging transaction, closed instead of returned to the pool if a
/// [`Staging`] on it was dropped mid-`COPY` (an error, a client that went away, a job that timed
/// out): sqlx does not count the messages such a `COPY` leaves behind, so that connection must
/// not serve another query. Otherwise it goes back to the pool as usual (an uncommitted
/// transaction rolled back).
pub struct StagingConn {
    conn: sqlx::pool::PoolConnection<sqlx::Postgres>,
    /// Set by [`Staging::begin`], cleared by [`Staging::finish`] once the `COPY` has ended.
    copy_open: Arc<AtomicBool>,
}

impl StagingConn {
    pub async fn acquire(pool: &PgPool) -> sqlx::Result<Self> {
        Ok(StagingConn {
            conn: pool.acquire().await?,
            copy_open: Arc::default(),
        })
    }

    /// Opens the staging transaction; stage in it with [`Staging::begin`] and [`Self::watch`].
    pub async fn begin(&mut self) -> sqlx::Result<sqlx::Transaction<'_, sqlx::Postgres>> {
        sqlx::Connection::begin(&mut *self.conn).await
    }

    /// What a [`Staging`] on this connection reports its `COPY`'s state to.
    pub fn watch(&self) -> CopyWatch {
        CopyWatch(self.copy_open.clone())
    }
}

impl Drop for StagingConn {
    fn drop(&mut self) {
        if self.copy_open.load(Ordering::Acquire) {
            self.conn.close_on_drop();
        }
    }
}

/// Whether a [`Staging`]'s `COPY` is under way (see [`StagingConn`]).
#[derive(Clone, Debug)]
pub struct CopyWatch(Arc<AtomicBool>);

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Body pieces handed to the HTTP client: rows are gathered into pieces of this size, so a
/// request goes out in a few large writes rather than one per (page-sized) row.
const BODY_PIECE_BYTES: usize = 256 * 1024;

/// The bytes `start..end` of a staged document as a request body: one streamed range query
/// (rows arrive as the body is sent; no round trip per chunk), read by a task that stays a few
/// pieces ahead of the request. A missing or short chunk, or a database error, breaks the body
/// off with that error.
fn chunk_stream(
    pool: PgPool,
    document_id: Uuid,
    chunk_bytes: u64,
    start: u64,
    end: u64,
) -> reqwest::Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        if let Err(error) = read_range(&pool, document_id, chunk_bytes, start..end, &tx).await {
            let _ = tx.send(Err(error)).await;
        }
    });
    reqwest::Body::wrap_stream(tokio_stream_from(rx))
}

/// Reads bytes `range` of a staged document into `out`, piece by piece. Returns early (Ok) when
/// the request no longer wants them.
async fn read_range(
    pool: &PgPool,
    document_id: Uuid,
    chunk_bytes: u64,
    range: std::ops::Range<u64>,
    out: &tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> Result<(), std::io::Error> {
    use futures::TryStreamExt;
    use sqlx::Row;
    let failed = |what: String| move |e: sqlx::Error| std::io::Error::other(format!("{what}: {e}"));
    let (start, end) = (range.start, range.end);
    let mut tx = pool
        .begin()
        .await
        .map_err(failed("reading staged chunks".into()))?;
    sqlx::query(RANGE_PLAN)
        .execute(&mut *tx)
        .await
        .map_err(failed("reading staged chunks".into()))?;
    let mut piece = BytesMut::with_capacity(BODY_PIECE_BYTES + chunk_bytes as usize);
    let mut rows = sqlx::query(CHUNK_RANGE)
        .bind(document_id)
        .bind((start / chunk_bytes) as i32)
        .bind(((end - 1) / chunk_bytes) as i32)
        .fetch(&mut *tx);
    let mut at = start;
    while at < end {
        let expected = (at / chunk_bytes) as i32;
        let missing = || std::io::Error::other(format!("staged chunk {expected} is missing"));
        let row = rows
            .try_next()
            .await
            .map_err(failed(format!("reading chunk {expected}")))?
            .ok_or_else(missing)?;
        let seq: i32 = row
            .try_get(0)
            .map_err(failed(format!("reading chunk {expected}")))?;
        if seq != expected {
            return Err(missing());
        }
        let data: &[u8] = row
            .try_get(1)
            .map_err(failed(format!("reading chunk {expected}")))?;
        let base = seq as u64 * chunk_bytes;
        let from = (at - base) as usize;
        let to = ((end - base) as usize).min(data.len());
        if from >= to {
            return Err(std::io::Error::other(format!(
                "staged chunk {seq} is shorter than expected"
            )));
        }
        piece.extend_from_slice(&data[from..to]);
        at += (to - from) as u64;
        if piece.len() >= BODY_PIECE_BYTES || at == end {
            let full = std::mem::replace(
                &mut piece,
                BytesMut::with_capacity(BODY_PIECE_BYTES + chunk_bytes as usize),
            );
            if out.send(Ok(full.freeze())).await.is_err() {
                return Ok(()); // the request ended (cut, or failed): no one reads on
            }
        }
    }
    drop(rows);
    tx.commit()
        .await
        .map_err(failed("reading staged chunks".into()))?;
    Ok(())
}

/// An mpsc receiver as a stream (tokio-stream is not a dependency).
fn tokio_stream_from<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

// ---------------------------------------------------------------------------------------------
// The upload path

/// Why an upload run stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UploadError {
    #[error(transparent)]
    Drive(#[from] DriveError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The document cannot be uploaded as it is (no bytes staged, inconsistent row).
    #[error("{0}")]
    Invalid(String),
}

/// Runs the upload of one document and turns the outcome into the job's answer, recording a
/// permanent failure (or the last failed attempt) on the document.
pub(crate) async fn run_upload(ctx: &JobContext<AppState>, document_id: Uuid) -> JobResult {
    let pool = &ctx.state.pool;
    let Some(doc) = document(pool, document_id).await? else {
        return Err(JobError::Cancel(format!(
            "document {document_id} does not exist"
        )));
    };
    if doc.status == "UPLOADED" {
        // Staged chunks left by a run that died between recording the upload and deleting them.
        sqlx::query(CHUNKS_DELETE)
            .bind(document_id)
            .execute(pool)
            .await?;
        return Ok(Some(
            json!({"drive_file_id": doc.drive_file_id, "already": true}),
        ));
    }
    let outcome = upload(&ctx.state, &doc).await;
    finish(ctx, document_id, outcome).await
}

/// The job's answer for an upload outcome.
pub(crate) async fn finish(
    ctx: &JobContext<AppState>,
    document_id: Uuid,
    outcome: Result<DriveFile, UploadError>,
) -> JobResult {
    let pool = &ctx.state.pool;
    let error = match outcome {
        Ok(file) => {
            return Ok(Some(json!({
                "drive_file_id": file.id,
                "web_view_link": file.web_view_link,
            })));
        }
        Err(error) => error,
    };
    match error {
        UploadError::Drive(DriveError::RateLimited { wait, reason }) => {
            throttled(ctx, Some(document_id), wait, &reason).await
        }
        UploadError::Drive(error) if error.is_permanent() => {
            let reason = error.to_string();
            fail(pool, document_id, &reason).await?;
            Err(JobError::Discard(reason))
        }
        UploadError::Invalid(reason) => {
            fail(pool, document_id, &reason).await?;
            Err(JobError::Discard(reason))
        }
        other => {
            let reason = other.to_string();
            if ctx.is_last_attempt() {
                fail(
                    pool,
                    document_id,
                    &format!("gave up after {} attempts: {reason}", ctx.attempt),
                )
                .await?;
            }
            Err(JobError::retry(reason))
        }
    }
}

async fn fail(pool: &PgPool, document_id: Uuid, reason: &str) -> Result<(), sqlx::Error> {
    tracing::warn!(%document_id, reason, "document upload failed");
    sqlx::query(DOCUMENT_FAILED)
        .bind(document_id)
        .bind(reason)
        .execute(pool)
        .await?;
    Ok(())
}

/// Rate-limit refusals in a row of Drive jobs that have no document row to count them on (a
/// `drive_delete` of a file whose row is gone), by job id. Per node: a job claimed next by
/// another node starts counting again there, which only shortens its wait.
static THROTTLES: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<i64, i32>>> =
    std::sync::LazyLock::new(Default::default);

/// Every Drive job's answer to a rate-limit refusal (§D.7): a snooze (no attempt spent) of
/// Drive's `Retry-After` when it sent one, else of [`throttle_wait`] of the refusals in a row,
/// so the wait doubles up to 64 s. Counted on the document (`throttle_count`, reset by upload
/// progress), or in this node's memory for a job without one ([`forget_throttles`] resets it).
pub(crate) async fn throttled(
    ctx: &JobContext<AppState>,
    document_id: Option<Uuid>,
    wait: Option<Duration>,
    reason: &str,
) -> JobResult {
    let counted: Option<i32> = match document_id {
        Some(id) => {
            sqlx::query_scalar(DOCUMENT_THROTTLED)
                .bind(id)
                .fetch_optional(&ctx.state.pool)
                .await?
        }
        None => None,
    };
    let n = counted.unwrap_or_else(|| {
        let mut counts = THROTTLES.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(ctx.id).or_insert(0);
        *n = n.saturating_add(1);
        *n
    });
    let wait = wait.unwrap_or_else(|| throttle_wait(n));
    tracing::info!(kind = %ctx.kind, document_id = ?document_id, reason, throttles = n, ?wait, "Drive rate limit: snoozing");
    Err(JobError::Snooze(wait))
}

/// Forgets job `id`'s refusals counted in memory: it got past the rate limit, or gave up.
pub(crate) fn forget_throttles(id: i64) {
    THROTTLES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&id);
}

/// Uploads a staged document (resuming its session if it has one) and records it `UPLOADED`.
pub(crate) async fn upload(state: &AppState, doc: &DocumentRow) -> Result<DriveFile, UploadError> {
    let drive = &drive_client(state)?;
    let pool = &state.pool;
    let (Some(size), Some(sha256)) = (doc.size_bytes, doc.sha256.as_deref()) else {
        return Err(UploadError::Invalid(
            "no bytes are staged for this document".into(),
        ));
    };
    let total = size as u64;
    let chunk_bytes = doc.chunk_bytes as u64;
    let last: Option<(i32, i64)> = sqlx::query_as(CHUNK_LAST)
        .bind(doc.id)
        .fetch_optional(pool)
        .await?;
    let staged = last.map_or(0, |(seq, len)| seq as i64 * chunk_bytes as i64 + len);
    if total == 0 || chunk_bytes == 0 || staged != size {
        return Err(UploadError::Invalid(format!(
            "the staged bytes are incomplete ({staged} of {size} bytes)"
        )));
    }
    let settings = &state.config.drive;
    let key = doc.id.to_string();
    let mut session = doc.upload_session_uri.clone();
    let mut offset = 0;
    // A session from an earlier run: where does it stand?
    if let Some(uri) = &session {
        match status_with_retries(drive, uri, total, settings.resume_retries).await {
            Ok(UploadProgress::Complete(file)) => return finalize(state, doc, sha256, file).await,
            Ok(UploadProgress::Incomplete { persisted }) => offset = persisted,
            Err(DriveError::SessionExpired) => session = None,
            Err(error) => return Err(error.into()),
        }
    }
    let uri = match session {
        Some(uri) => uri,
        None => {
            // Created by an earlier run that died before recording it?
            if let Some(file) = drive.find_by_app_property(APP_PROPERTY, &key).await? {
                return finalize(state, doc, sha256, file).await;
            }
            let folder = doc
                .drive_folder_id
                .clone()
                .filter(|f| !f.is_empty())
                .or_else(|| {
                    use secrecy::ExposeSecret;
                    state
                        .secrets
                        .google_drive_folder_id
                        .as_ref()
                        .map(|f| f.expose_secret().to_owned())
                })
                .ok_or_else(|| {
                    DriveError::Unconfigured(format!(
                        "no Drive folder for client {}: set clients.drive_folder_id or GOOGLE_DRIVE_FOLDER_ID",
                        doc.client_id
                    ))
                })?;
            let props = [(APP_PROPERTY, key.as_str())];
            let new = NewFile {
                name: &doc.file_name,
                mime_type: &doc.mime_type,
                parent: &folder,
                app_properties: &props,
            };
            let uri = drive.start_upload(&new, total).await?;
            // Committed before the first byte goes, so a crash from here on resumes.
            sqlx::query(DOCUMENT_SESSION_SET)
                .bind(doc.id)
                .bind(&uri)
                .bind(0_i64)
                .execute(pool)
                .await?;
            offset = 0;
            uri
        }
    };
    let request_bytes = settings.upload_chunk_bytes as u64;
    let mut resumes = 0;
    // The offset Drive confirmed last, written while the next request is on its way (a commit
    // per request would otherwise stall the upload; the session's status query is the truth).
    let mut unrecorded: Option<u64> = None;
    loop {
        let end = (offset + request_bytes).min(total);
        let body = chunk_stream(pool.clone(), doc.id, chunk_bytes, offset, end);
        let record = unrecorded.take();
        let (recorded, answer) = tokio::join!(
            async {
                match record {
                    Some(at) => sqlx::query(DOCUMENT_OFFSET_SET)
                        .bind(doc.id)
                        .bind(at as i64)
                        .execute(pool)
                        .await
                        .map(|_| ()),
                    None => Ok(()),
                }
            },
            drive.upload_range(&uri, offset, end - offset, total, body)
        );
        recorded?;
        let progress = match answer {
            Ok(progress) => progress,
            Err(error) if error.is_transient() && resumes < settings.resume_retries => {
                resumes += 1;
                tracing::info!(document_id = %doc.id, offset, %error, resumes, "upload interrupted; resuming");
                tokio::time::sleep(Duration::from_millis(100 << resumes)).await;
                status_with_retries(drive, &uri, total, settings.resume_retries).await?
            }
            Err(DriveError::SessionExpired) => {
                // Next attempt: lookup, then a new session.
                sqlx::query(DOCUMENT_SESSION_SET)
                    .bind(doc.id)
                    .bind(None::<String>)
                    .bind(0_i64)
                    .execute(pool)
                    .await?;
                return Err(DriveError::SessionExpired.into());
            }
            Err(error) => return Err(error.into()),
        };
        match progress {
            UploadProgress::Complete(file) => return finalize(state, doc, sha256, file).await,
            UploadProgress::Incomplete { persisted } => {
                if persisted > offset {
                    resumes = 0;
                }
                offset = persisted;
                unrecorded = Some(offset);
            }
        }
    }
}

/// A status query, retried in place a few times on a cut or a 5xx.
async fn status_with_retries(
    drive: &DriveClient,
    uri: &str,
    total: u64,
    retries: u32,
) -> Result<UploadProgress, DriveError> {
    let mut tries = 0;
    loop {
        match drive.upload_status(uri, total).await {
            Err(error) if error.is_transient() && tries < retries => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100 << tries)).await;
            }
            other => return other,
        }
    }
}

/// Checks Drive's copy, shares it if configured, records the document `UPLOADED`, then deletes
/// its staged chunks.
async fn finalize(
    state: &AppState,
    doc: &DocumentRow,
    sha256: &str,
    file: DriveFile,
) -> Result<DriveFile, UploadError> {
    let drive = &drive_client(state)?;
    let size_ok = file
        .size_bytes()
        .is_none_or(|s| Some(s as i64) == doc.size_bytes);
    let sha_ok = file
        .sha256_checksum
        .as_deref()
        .is_none_or(|s| s.eq_ignore_ascii_case(sha256));
    if !(size_ok && sha_ok) {
        // Not our bytes: remove Drive's copy so the next attempt uploads afresh.
        drive.delete(&file.id).await?;
        sqlx::query(DOCUMENT_SESSION_SET)
            .bind(doc.id)
            .bind(None::<String>)
            .bind(0_i64)
            .execute(&state.pool)
            .await?;
        return Err(UploadError::Drive(DriveError::Transport(format!(
            "Drive's copy differs from the staged bytes (size {:?}, sha256 {:?})",
            file.size, file.sha256_checksum
        ))));
    }
    let mut note = None;
    if state.config.drive.share_with_link {
        match drive.share_with_link(&file.id).await {
            Ok(()) => {}
            // The file is safely in Drive: a refused share is recorded, not a failed upload.
            Err(error) if error.is_permanent() => {
                note = Some(format!("uploaded, but link sharing was refused: {error}"));
            }
            Err(error) => return Err(error.into()),
        }
    }
    let recorded = sqlx::query(DOCUMENT_UPLOADED)
        .bind(doc.id)
        .bind(&file.id)
        .bind(&file.web_view_link)
        .bind(note)
        .execute(&state.pool)
        .await?
        .rows_affected();
    if recorded == 0 {
        // The document was deleted while its upload ran, by a `drive_delete` that found no file
        // yet (none recorded, none listed): the file must not outlive its document.
        drive.delete(&file.id).await?;
        tracing::info!(document_id = %doc.id, "document deleted during its upload; its Drive file deleted too");
        return Err(UploadError::Invalid(
            "the document was deleted during its upload; its Drive file was deleted too".into(),
        ));
    }
    tracing::info!(document_id = %doc.id, drive_file_id = %file.id, "document uploaded to Drive");
    // The staged copy goes after the row says UPLOADED, in its own statement: deleting a large
    // file's rows rewrites every page they are on (seconds for a gigabyte), and the document is
    // in Drive already. If this fails or the node dies first, the job is retried (or rescued)
    // and its next run, finding the document UPLOADED, deletes what is left.
    sqlx::query(CHUNKS_DELETE)
        .bind(doc.id)
        .execute(&state.pool)
        .await?;
    Ok(file)
}

/// Deletes the staged bytes of documents already in Drive (see [`UPLOADED_CHUNKS_PRUNE`]), a few
/// documents per statement; returns the rows deleted. Run by the `prune` job.
pub async fn prune_uploaded_chunks(pool: &PgPool) -> sqlx::Result<u64> {
    let mut deleted = 0;
    loop {
        let done = sqlx::query(UPLOADED_CHUNKS_PRUNE)
            .bind(10_i64)
            .execute(pool)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(deleted);
        }
        deleted += done.rows_affected();
    }
}
