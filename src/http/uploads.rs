//! `POST /v1/uploads`: a client document, streamed into PostgreSQL and queued for Google Drive.
//!
//! The body is `multipart/form-data` with the fields `client_id`, `title` (optional: the file
//! name) and `file` (its part's `Content-Type` must be one of `uploads.allowed_mime_types`), in
//! any order. The file is never held whole in memory: it is read part-chunk by part-chunk into
//! `document_chunks` rows of `uploads.chunk_bytes` (hashing on the way), inside ONE transaction
//! that then inserts the `documents` row (`PENDING`, size, SHA-256) and enqueues its
//! `drive_upload` job. 202 answers with the document and job ids after the commit; any node can
//! run the job, since the bytes are in the database.
//!
//! The file goes in with one binary `COPY` (see `jobs::drive_upload::Staging`): no round trip
//! per chunk, so PostgreSQL stores earlier rows while later bytes are read, and memory stays at
//! one batch of rows. The transaction runs on a pooled connection that is closed rather than
//! reused if the request ends while the `COPY` is under way (a refusal, or the client went
//! away), since a `COPY` cut off half way leaves it in a state sqlx does not track.
//!
//! The transaction holds one pooled connection for as long as the client takes to send its file,
//! so uploads are capped per node (`uploads.max_concurrent`: beyond it 503 with `Retry-After`,
//! before anything is read), a body that stalls longer than `uploads.read_timeout` is answered
//! 408 and rolled back, and so is an upload not done within `uploads.request_timeout` however
//! steadily it trickles in. Without a `Content-Length` the form's other parts (their headers and
//! text) are counted as they come against the same allowance a declared length gets
//! ([`FORM_OVERHEAD`]): endless small fields are 413, not a slot held for ever.
//!
//! Refusals, with nothing stored (the transaction is rolled back): no or a bad bearer token
//! 401, a token without `uploads:write` 403; a declared `Content-Length` or a file over
//! `uploads.max_bytes`, or other parts past [`FORM_OVERHEAD`], 413; a media type not accepted
//! 415; a missing field, an unknown client, an empty file or a malformed body 422/400; every
//! upload slot taken 503; a stalled or too slow body 408; the database unreachable 503.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::multipart::{Field, MultipartError};
use axum::extract::{DefaultBodyLimit, Extension, Multipart, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use uuid::Uuid;

use super::HttpState;
use super::error::ApiError;
use crate::auth::ApiCaller;
use crate::config::UploadSettings;
use crate::jobs::DriveUpload;
use crate::jobs::drive_upload::{Staging, StagingConn};
use crate::queue::{self, Db, NewJob};

/// Room for the form's other fields and boundaries on top of the file's own limit: what a
/// declared `Content-Length` may exceed `uploads.max_bytes` by, and what the parts' headers and
/// text fields may add up to as they are read.
const FORM_OVERHEAD: u64 = 64 * 1024;
/// A part's framing beyond its headers (the boundary line's dashes and line ends), counted with
/// them so that even empty parts use up [`FORM_OVERHEAD`].
const PART_FRAMING: u64 = 8;
/// Longest `client_id` or `title` accepted.
const MAX_TEXT_FIELD: usize = 1024;

const CLIENT_EXISTS: &str = "select exists (select 1 from clients where id = $1)";

const DOCUMENT_INSERT: &str = r#"
insert into documents (id, client_id, title, file_name, mime_type, size_bytes, sha256, status,
                       chunk_bytes)
values ($1, $2, $3, $4, $5, $6, $7, 'PENDING', $8)
"#;

/// Seconds a client is told to wait when every upload slot is taken.
const BUSY_RETRY_AFTER_SECS: u64 = 5;

pub fn router(settings: &UploadSettings) -> Router<HttpState> {
    Router::new()
        .route("/v1/uploads", post(upload))
        // The handler counts the bytes itself (413 past `uploads.max_bytes`) while streaming;
        // axum's default 2 MB limit would refuse every real document.
        .layer(DefaultBodyLimit::disable())
        .layer(Extension(UploadSlots(Arc::new(Semaphore::new(
            settings.max_concurrent,
        )))))
}

/// The node's upload slots (`uploads.max_concurrent`): a permit is held for the whole request,
/// since each upload holds a pooled connection until it commits.
#[derive(Clone)]
struct UploadSlots(Arc<Semaphore>);

/// The intake's refusals: the API's errors, plus 415 (which the shared error type lacks).
#[derive(Debug)]
enum UploadRefusal {
    Api(ApiError),
    UnsupportedType(String),
    /// Every upload slot is taken: 503 with `Retry-After`.
    Busy,
    /// The body stalled longer than `uploads.read_timeout`: 408.
    Stalled(Duration),
    /// The whole upload took longer than `uploads.request_timeout`: 408.
    TooSlow(Duration),
}

impl From<ApiError> for UploadRefusal {
    fn from(error: ApiError) -> Self {
        UploadRefusal::Api(error)
    }
}

impl From<sqlx::Error> for UploadRefusal {
    fn from(error: sqlx::Error) -> Self {
        UploadRefusal::Api(error.into())
    }
}

impl IntoResponse for UploadRefusal {
    fn into_response(self) -> Response {
        match self {
            UploadRefusal::Api(error) => error.into_response(),
            UploadRefusal::UnsupportedType(message) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Json(json!({ "error": message })),
            )
                .into_response(),
            UploadRefusal::Busy => (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, BUSY_RETRY_AFTER_SECS.to_string())],
                Json(json!({ "error": "too many uploads in progress; retry later" })),
            )
                .into_response(),
            UploadRefusal::Stalled(after) => (
                StatusCode::REQUEST_TIMEOUT,
                Json(json!({
                    "error": format!("the upload stalled: no bytes for {} s", after.as_secs_f64())
                })),
            )
                .into_response(),
            UploadRefusal::TooSlow(after) => (
                StatusCode::REQUEST_TIMEOUT,
                Json(json!({
                    "error": format!("the upload took longer than {} s", after.as_secs_f64())
                })),
            )
                .into_response(),
        }
    }
}

fn unprocessable(message: impl Into<String>) -> UploadRefusal {
    UploadRefusal::Api(ApiError::Unprocessable(message.into()))
}

/// A body that broke off or is not multipart: 413 when it was axum's limit, else 400.
fn malformed(error: MultipartError) -> UploadRefusal {
    if error.status() == StatusCode::PAYLOAD_TOO_LARGE {
        UploadRefusal::Api(ApiError::PayloadTooLarge)
    } else {
        UploadRefusal::Api(ApiError::BadRequest(format!(
            "malformed multipart body: {}",
            error.body_text()
        )))
    }
}

struct StagedFile {
    file_name: String,
    mime_type: String,
    size: u64,
    sha256: String,
}

/// The next item of the body, or 408 once it stalls past `uploads.read_timeout`.
async fn in_time<T>(
    limit: Duration,
    next: impl Future<Output = Result<T, MultipartError>>,
) -> Result<T, UploadRefusal> {
    match tokio::time::timeout(limit, next).await {
        Ok(item) => item.map_err(malformed),
        Err(_) => Err(UploadRefusal::Stalled(limit)),
    }
}

async fn upload(
    State(state): State<HttpState>,
    Extension(slots): Extension<UploadSlots>,
    caller: Result<ApiCaller, ApiError>,
    headers: HeaderMap,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<(StatusCode, Json<Value>), UploadRefusal> {
    // Checked before the body is read: a stranger's bytes are never staged.
    caller?.require("uploads:write")?;
    let _slot = slots.0.try_acquire().map_err(|_| UploadRefusal::Busy)?;
    // Dropping `receive` at the deadline drops its transaction: nothing stays.
    let deadline = state.app.config.uploads.request_timeout;
    tokio::time::timeout(deadline, receive(&state, &headers, multipart))
        .await
        .unwrap_or(Err(UploadRefusal::TooSlow(deadline)))
}

/// Reads, stages and stores one upload (the slot is held by the caller).
async fn receive(
    state: &HttpState,
    headers: &HeaderMap,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<(StatusCode, Json<Value>), UploadRefusal> {
    let settings = &state.app.config.uploads;
    let limit = settings.read_timeout;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > settings.max_bytes + FORM_OVERHEAD) {
        return Err(ApiError::PayloadTooLarge.into());
    }
    let mut multipart = multipart.map_err(|e| {
        ApiError::BadRequest(format!(
            "expected a multipart/form-data body: {}",
            e.body_text()
        ))
    })?;
    let document_id = Uuid::new_v4();
    // Everything below happens in this transaction: an error drops it, and nothing stays.
    let mut conn = StagingConn::acquire(&state.pool).await?;
    let watch = conn.watch();
    let mut tx = conn.begin().await?;
    let mut client_id = None;
    let mut title = None;
    let mut file: Option<StagedFile> = None;
    // Bytes of the form other than the file's: its parts' headers and text fields.
    let mut form = FormBytes(0);
    while let Some(mut field) = in_time(limit, multipart.next_field()).await? {
        let header_bytes: u64 = field
            .headers()
            .iter()
            .map(|(name, value)| (name.as_str().len() + value.len() + 4) as u64)
            .sum();
        form.add(header_bytes + PART_FRAMING)?;
        match field.name().unwrap_or_default() {
            "client_id" => client_id = Some(text(field, "client_id", limit, &mut form).await?),
            "title" => title = Some(text(field, "title", limit, &mut form).await?),
            "file" => {
                if file.is_some() {
                    return Err(unprocessable("send one `file` per upload"));
                }
                let mime_type = field
                    .content_type()
                    .and_then(|c| c.split(';').next())
                    .map(|c| c.trim().to_ascii_lowercase())
                    .unwrap_or_default();
                if !settings.allowed_mime_types.contains(&mime_type) {
                    let shown = if mime_type.is_empty() {
                        "(none)".to_string()
                    } else {
                        super::api::shown(&mime_type)
                    };
                    return Err(UploadRefusal::UnsupportedType(format!(
                        "files of type {shown} are not accepted; accepted types: {}",
                        settings.allowed_mime_types.join(", ")
                    )));
                }
                let file_name = field
                    .file_name()
                    .map(clean_file_name)
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| "document".to_string());
                let mut staging =
                    Staging::begin(&mut tx, watch.clone(), document_id, settings.chunk_bytes)
                        .await?;
                while let Some(bytes) = in_time(limit, field.chunk()).await? {
                    if staging.size() + bytes.len() as u64 > settings.max_bytes {
                        return Err(ApiError::PayloadTooLarge.into());
                    }
                    staging.push(&bytes).await?;
                }
                let staged = staging.finish().await?;
                if staged.size == 0 {
                    return Err(unprocessable("the file is empty"));
                }
                file = Some(StagedFile {
                    file_name,
                    mime_type,
                    size: staged.size,
                    sha256: staged.sha256,
                });
            }
            other => {
                return Err(unprocessable(format!(
                    "unexpected field `{}`; expected client_id, title and file",
                    super::api::shown(other)
                )));
            }
        }
    }
    let client_id = client_id
        .filter(|c| !c.trim().is_empty())
        .ok_or_else(|| unprocessable("the `client_id` field is required"))?;
    let file = file.ok_or_else(|| unprocessable("the `file` field is required"))?;
    let exists: bool = sqlx::query_scalar(CLIENT_EXISTS)
        .bind(&client_id)
        .fetch_one(&mut *tx)
        .await?;
    if !exists {
        return Err(unprocessable(format!(
            "unknown client `{}`",
            super::api::shown(&client_id)
        )));
    }
    let title = title
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| file.file_name.clone());
    sqlx::query(DOCUMENT_INSERT)
        .bind(document_id)
        .bind(&client_id)
        .bind(&title)
        .bind(&file.file_name)
        .bind(&file.mime_type)
        .bind(file.size as i64)
        .bind(&file.sha256)
        .bind(settings.chunk_bytes as i32)
        .execute(&mut *tx)
        .await?;
    let job = NewJob::of(&DriveUpload { document_id }).map_err(|e| ApiError::Internal(e.into()))?;
    // Database trouble here is a 503 like anywhere else (a dropped connection was a 500).
    let enqueued = queue::enqueue(Db::Conn(&mut tx), job)
        .await
        .map_err(super::api::enqueue_error)?;
    tx.commit().await?;
    tracing::info!(%document_id, client_id, size = file.size, "document accepted for Drive");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "document_id": document_id,
            "job_id": enqueued.id,
            "status": "PENDING",
            "file_name": file.file_name,
            "mime_type": file.mime_type,
            "size": file.size,
            "sha256": file.sha256,
        })),
    ))
}

/// The running count of a form's bytes other than the file's, against [`FORM_OVERHEAD`].
struct FormBytes(u64);

impl FormBytes {
    /// Counts `n` more bytes; 413 once past the allowance.
    fn add(&mut self, n: u64) -> Result<(), UploadRefusal> {
        self.0 += n;
        if self.0 > FORM_OVERHEAD {
            return Err(ApiError::PayloadTooLarge.into());
        }
        Ok(())
    }
}

/// A short text field, read with a cap, its bytes counted in `form`.
async fn text(
    mut field: Field<'_>,
    name: &str,
    limit: Duration,
    form: &mut FormBytes,
) -> Result<String, UploadRefusal> {
    let mut raw = Vec::new();
    while let Some(bytes) = in_time(limit, field.chunk()).await? {
        form.add(bytes.len() as u64)?;
        raw.extend_from_slice(&bytes);
        if raw.len() > MAX_TEXT_FIELD {
            return Err(unprocessable(format!(
                "`{name}` is longer than {MAX_TEXT_FIELD} bytes"
            )));
        }
    }
    let text =
        String::from_utf8(raw).map_err(|_| unprocessable(format!("`{name}` is not UTF-8 text")))?;
    // PostgreSQL text cannot hold NUL; refuse it here rather than fail the insert.
    if text.chars().any(|c| c.is_control() && c != '\t') {
        return Err(unprocessable(format!(
            "`{name}` must not contain control characters"
        )));
    }
    Ok(text)
}

/// The last path component of a client-supplied name, without control characters.
fn clean_file_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default();
    base.chars()
        .filter(|c| !c.is_control())
        .take(255)
        .collect::<String>()
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_lose_their_paths() {
        assert_eq!(clean_file_name("C:\\Users\\a\\report.pdf"), "report.pdf");
        assert_eq!(clean_file_name("../../etc/passwd"), "passwd");
        assert_eq!(clean_file_name("a\u{0}b.pdf"), "ab.pdf");
    }
}
