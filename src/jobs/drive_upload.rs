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
//! Each request streams its range straight from `document_chunks` (a reader task a few chunks
//! ahead), so memory stays near `drive.upload_chunk_bytes` whatever the file size.
//!
//! Errors (PROVIDERS.md §D.7, classified in `integrations::drive::error`): rate limits snooze with
//! a doubling wait (no attempt spent); 5xx and cut connections retry; 401 refreshes the token once
//! (in the client); other 4xx, a missing folder or key discard and mark the document `FAILED`
//! with the reason, as does the last failed attempt.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::AppState;
use crate::integrations::drive::{DriveClient, DriveError, DriveFile, NewFile, UploadProgress};
use crate::queue::{Backoff, Job, JobArgs, JobContext, JobError, JobResult, Policy};

/// The `appProperties` key that tags a file with its document id.
pub const APP_PROPERTY: &str = "baseaim_document_id";
/// Longest snooze after repeated rate-limit refusals (Google's maximum backoff, §D.7).
const MAX_THROTTLE_WAIT: Duration = Duration::from_secs(64);

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

const CHUNK_INSERT: &str =
    "insert into document_chunks (document_id, seq, data) values ($1, $2, $3)";

const CHUNK_RANGE: &str = "select seq, data from document_chunks where document_id = $1 and seq between $2 and $3 order by seq";

const CHUNKS_SUMMARY: &str = "select count(*), coalesce(sum(length(data)), 0)::int8 from document_chunks where document_id = $1";

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
/// them on the way. Holds at most one chunk in memory. The caller owns the transaction: nothing
/// is visible (or left behind) unless it commits.
pub struct Staging {
    document_id: Uuid,
    chunk_bytes: usize,
    buffer: BytesMut,
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

impl Staging {
    pub fn new(document_id: Uuid, chunk_bytes: usize) -> Self {
        Staging {
            document_id,
            chunk_bytes,
            buffer: BytesMut::with_capacity(chunk_bytes),
            next_seq: 0,
            size: 0,
            hasher: ring::digest::Context::new(&ring::digest::SHA256),
        }
    }

    /// Bytes accepted so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends `data`, writing every full chunk.
    pub async fn push(&mut self, conn: &mut PgConnection, mut data: &[u8]) -> sqlx::Result<()> {
        self.size += data.len() as u64;
        self.hasher.update(data);
        while !data.is_empty() {
            let room = self.chunk_bytes - self.buffer.len();
            let take = room.min(data.len());
            self.buffer.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buffer.len() == self.chunk_bytes {
                self.flush(conn).await?;
            }
        }
        Ok(())
    }

    async fn flush(&mut self, conn: &mut PgConnection) -> sqlx::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = self.buffer.split().freeze();
        sqlx::query(CHUNK_INSERT)
            .bind(self.document_id)
            .bind(self.next_seq)
            .bind(chunk.as_ref())
            .execute(&mut *conn)
            .await?;
        self.next_seq += 1;
        self.buffer.reserve(self.chunk_bytes);
        Ok(())
    }

    /// Writes the last (short) chunk; returns size, digest and chunk count.
    pub async fn finish(mut self, conn: &mut PgConnection) -> sqlx::Result<Staged> {
        self.flush(conn).await?;
        let digest = self.hasher.finish();
        Ok(Staged {
            size: self.size,
            sha256: hex(digest.as_ref()),
            chunks: self.next_seq,
        })
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes `start..end` of a staged document as a request body: one streamed range query
/// (rows arrive as the body is sent; no round trip per chunk), read by a task that stays a few
/// chunks ahead of the request.
fn chunk_stream(
    pool: PgPool,
    document_id: Uuid,
    chunk_bytes: u64,
    start: u64,
    end: u64,
) -> reqwest::Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        use futures::TryStreamExt;
        let first = (start / chunk_bytes) as i32;
        let last = ((end - 1) / chunk_bytes) as i32;
        let mut rows = sqlx::query_as::<_, (i32, Vec<u8>)>(CHUNK_RANGE)
            .bind(document_id)
            .bind(first)
            .bind(last)
            .fetch(&pool);
        let mut at = start;
        while at < end {
            let expected = (at / chunk_bytes) as i32;
            let item = match rows.try_next().await {
                Ok(Some((seq, data))) if seq == expected => {
                    let data = Bytes::from(data);
                    let base = seq as u64 * chunk_bytes;
                    let from = (at - base) as usize;
                    let to = ((end - base) as usize).min(data.len());
                    if from >= to {
                        Err(std::io::Error::other(format!(
                            "staged chunk {seq} is shorter than expected"
                        )))
                    } else {
                        at += (to - from) as u64;
                        Ok(data.slice(from..to))
                    }
                }
                Ok(_) => Err(std::io::Error::other(format!(
                    "staged chunk {expected} is missing"
                ))),
                Err(error) => Err(std::io::Error::other(format!(
                    "reading chunk {expected}: {error}"
                ))),
            };
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                return; // the request ended (or we told it why it must)
            }
        }
    });
    reqwest::Body::wrap_stream(tokio_stream_from(rx))
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
            let n: i32 = sqlx::query_scalar(DOCUMENT_THROTTLED)
                .bind(document_id)
                .fetch_optional(pool)
                .await?
                .unwrap_or(1);
            let wait = wait.unwrap_or_else(|| throttle_wait(n));
            tracing::info!(%document_id, reason, ?wait, "Drive rate limit: snoozing the upload");
            Err(JobError::Snooze(wait))
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

/// `min(2^n, 64) s` plus up to a second of jitter (Google's truncated exponential backoff).
fn throttle_wait(n: i32) -> Duration {
    let base = Duration::from_secs(1u64 << n.clamp(0, 6) as u32).min(MAX_THROTTLE_WAIT);
    base + Duration::from_millis(rand::random_range(0..1000))
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
    let (chunks, staged): (i64, i64) = sqlx::query_as(CHUNKS_SUMMARY)
        .bind(doc.id)
        .fetch_one(pool)
        .await?;
    if staged != size || chunks == 0 {
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
    let chunk_bytes = doc.chunk_bytes as u64;
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

/// Checks Drive's copy, shares it if configured, and records the document `UPLOADED` with its
/// staged chunks deleted, in one transaction.
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
    let mut tx = state.pool.begin().await?;
    sqlx::query(DOCUMENT_UPLOADED)
        .bind(doc.id)
        .bind(&file.id)
        .bind(&file.web_view_link)
        .bind(note)
        .execute(&mut *tx)
        .await?;
    sqlx::query(CHUNKS_DELETE)
        .bind(doc.id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!(document_id = %doc.id, drive_file_id = %file.id, "document uploaded to Drive");
    Ok(file)
}
