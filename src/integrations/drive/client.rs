//! The Drive v3 calls the jobs make (PROVIDERS.md §D): `files.list` by appProperties,
//! `files.get`, the resumable `files.create` (initiate, chunk `PUT`s, status query),
//! `permissions.create` and `files.delete`.
//!
//! API calls carry the service account's bearer token; a 401 invalidates it and the call is sent
//! once more with a fresh one. Requests on a session URI carry no token: the URI itself is the
//! credential for that one upload (PROVIDERS.md §D.3), which also means a chunk never has to be
//! re-sent just because a token expired. Session URIs are never logged.

use std::time::Duration;

use reqwest::header::{self, HeaderMap};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::auth::{ServiceAccountKey, TokenSource};
use super::error::DriveError;
use super::types::DriveFile;
use crate::config::DriveSettings;

/// The `fields` every file answer asks for.
const FILE_FIELDS: &str = "id,name,mimeType,size,webViewLink,appProperties,sha256Checksum";

/// Cheap to clone (the connection pool and the token cache are shared).
#[derive(Clone)]
pub struct DriveClient {
    http: reqwest::Client,
    /// Without a trailing slash, e.g. `https://www.googleapis.com`.
    api_base: String,
    tokens: TokenSource,
    supports_all_drives: bool,
    request_timeout: Duration,
}

impl std::fmt::Debug for DriveClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DriveClient")
            .field("api_base", &self.api_base)
            .finish_non_exhaustive()
    }
}

/// What a new file is: its name, media type, folder and private tags.
#[derive(Debug, Clone)]
pub struct NewFile<'a> {
    pub name: &'a str,
    pub mime_type: &'a str,
    pub parent: &'a str,
    pub app_properties: &'a [(&'a str, &'a str)],
}

/// Where a resumable upload stands.
#[derive(Debug, Clone, PartialEq)]
pub enum UploadProgress {
    /// Drive has the whole file.
    Complete(DriveFile),
    /// Drive persisted bytes `0..persisted`; send from `persisted` on.
    Incomplete { persisted: u64 },
}

/// Drive's error body (§D.7).
#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    error: ErrorDetail,
}

#[derive(Deserialize, Default)]
struct ErrorDetail {
    #[serde(default)]
    message: String,
    #[serde(default)]
    errors: Vec<ErrorItem>,
}

#[derive(Deserialize)]
struct ErrorItem {
    #[serde(default)]
    reason: String,
}

#[derive(Deserialize)]
struct FileList {
    #[serde(default)]
    files: Vec<DriveFile>,
}

impl DriveClient {
    /// A client for the service account whose JSON key is `key`.
    pub fn new(settings: &DriveSettings, key: &SecretString) -> Result<Self, DriveError> {
        let key = ServiceAccountKey::from_json(key)?;
        let http = crate::tls::http_client_builder()
            .connect_timeout(settings.connect_timeout)
            // Drive's 308 is "Resume Incomplete", not a redirect.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| DriveError::Unconfigured(format!("HTTP client: {e}")))?;
        let tokens = TokenSource::new(key, &settings.scope, http.clone(), settings.request_timeout);
        Ok(DriveClient {
            http,
            api_base: settings.api_base.trim_end_matches('/').to_owned(),
            tokens,
            supports_all_drives: settings.supports_all_drives,
            request_timeout: settings.request_timeout,
        })
    }

    pub fn tokens(&self) -> &TokenSource {
        &self.tokens
    }

    /// Sends an API request built by `build` with a bearer token; on 401 once more with a fresh
    /// token. Returns the 2xx response; anything else is classified.
    async fn api(
        &self,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, DriveError> {
        counted(self.api_once(build).await)
    }

    async fn api_once(
        &self,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, DriveError> {
        let mut refreshed = false;
        loop {
            let token = self.tokens.token().await?;
            let response = build(token.expose_secret())
                .timeout(self.request_timeout)
                .send()
                .await
                .map_err(transport)?;
            if response.status() == reqwest::StatusCode::UNAUTHORIZED && !refreshed {
                self.tokens.invalidate(&token).await;
                refreshed = true;
                continue;
            }
            if response.status().is_success() {
                return Ok(response);
            }
            return Err(error_from(response).await);
        }
    }

    fn files_url(&self) -> String {
        format!("{}/drive/v3/files", self.api_base)
    }

    fn all_drives(&self) -> &'static str {
        if self.supports_all_drives {
            "true"
        } else {
            "false"
        }
    }

    /// The file tagged `appProperties[key] = value`, if one exists (not trashed).
    pub async fn find_by_app_property(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Option<DriveFile>, DriveError> {
        let q = format!(
            "appProperties has {{ key='{}' and value='{}' }} and trashed = false",
            escape_q(key),
            escape_q(value)
        );
        let fields = format!("files({FILE_FIELDS})");
        let url = with_query(
            &self.files_url(),
            &[
                ("q", q.as_str()),
                ("fields", fields.as_str()),
                ("spaces", "drive"),
                ("pageSize", "10"),
                ("supportsAllDrives", self.all_drives()),
                ("includeItemsFromAllDrives", self.all_drives()),
            ],
        );
        let response = self
            .api(|token| self.http.get(&url).bearer_auth(token))
            .await?;
        let list: FileList = read_json(response).await?;
        Ok(list.files.into_iter().next())
    }

    /// `files.get`; `None` on 404.
    pub async fn get_file(&self, id: &str) -> Result<Option<DriveFile>, DriveError> {
        let url = with_query(
            &format!("{}/{}", self.files_url(), encode(id)),
            &[
                ("fields", FILE_FIELDS),
                ("supportsAllDrives", self.all_drives()),
            ],
        );
        match self
            .api(|token| self.http.get(&url).bearer_auth(token))
            .await
        {
            Ok(response) => Ok(Some(read_json(response).await?)),
            Err(DriveError::Rejected { status: 404, .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Initiates a resumable upload of `size` bytes; returns the session URI (a credential:
    /// store it, never log it).
    pub async fn start_upload(&self, file: &NewFile<'_>, size: u64) -> Result<String, DriveError> {
        let props: serde_json::Map<String, serde_json::Value> = file
            .app_properties
            .iter()
            .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v)))
            .collect();
        let metadata = serde_json::json!({
            "name": file.name,
            "mimeType": file.mime_type,
            "parents": [file.parent],
            "appProperties": props,
        });
        let url = with_query(
            &format!("{}/upload/drive/v3/files", self.api_base),
            &[
                ("uploadType", "resumable"),
                ("fields", FILE_FIELDS),
                ("supportsAllDrives", self.all_drives()),
            ],
        );
        let response = self
            .api(|token| {
                self.http
                    .post(&url)
                    .bearer_auth(token)
                    .header(header::CONTENT_TYPE, "application/json; charset=UTF-8")
                    .header("X-Upload-Content-Type", file.mime_type)
                    .header("X-Upload-Content-Length", size)
                    .body(metadata.to_string())
            })
            .await?;
        response
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| DriveError::Transport("no session URI in Drive's answer".into()))
    }

    /// Asks where the upload stands (`Content-Range: bytes */total`).
    pub async fn upload_status(
        &self,
        session_uri: &str,
        total: u64,
    ) -> Result<UploadProgress, DriveError> {
        let response = self
            .http
            .put(session_uri)
            .timeout(self.request_timeout)
            .header(header::CONTENT_LENGTH, 0)
            .header(header::CONTENT_RANGE, format!("bytes */{total}"))
            .send()
            .await
            .map_err(transport);
        counted(match response {
            Ok(response) => progress(response).await,
            Err(error) => Err(error),
        })
    }

    /// Sends bytes `first..first + len` of a `total`-byte upload as one request with `body`
    /// (streamed). Every request but the last must be a multiple of 256 KiB.
    pub async fn upload_range(
        &self,
        session_uri: &str,
        first: u64,
        len: u64,
        total: u64,
        body: reqwest::Body,
    ) -> Result<UploadProgress, DriveError> {
        let range = if len == 0 {
            format!("bytes */{total}")
        } else {
            format!("bytes {first}-{}/{total}", first + len - 1)
        };
        let response = self
            .http
            .put(session_uri)
            .timeout(self.request_timeout)
            .header(header::CONTENT_LENGTH, len)
            .header(header::CONTENT_RANGE, range)
            .body(body)
            .send()
            .await
            .map_err(transport);
        counted(match response {
            Ok(response) => progress(response).await,
            Err(error) => Err(error),
        })
    }

    /// Grants "anyone with the link" read access (not discoverable).
    pub async fn share_with_link(&self, id: &str) -> Result<(), DriveError> {
        let url = with_query(
            &format!("{}/{}/permissions", self.files_url(), encode(id)),
            &[("supportsAllDrives", self.all_drives())],
        );
        self.api(|token| {
            self.http
                .post(&url)
                .bearer_auth(token)
                .header(header::CONTENT_TYPE, "application/json")
                .body(r#"{"role":"reader","type":"anyone","allowFileDiscovery":false}"#)
        })
        .await?;
        Ok(())
    }

    /// Deletes a file for good. `Ok(false)` when Drive did not know it (404): already gone.
    pub async fn delete(&self, id: &str) -> Result<bool, DriveError> {
        let url = with_query(
            &format!("{}/{}", self.files_url(), encode(id)),
            &[("supportsAllDrives", self.all_drives())],
        );
        match self
            .api(|token| self.http.delete(&url).bearer_auth(token))
            .await
        {
            Ok(_) => Ok(true),
            Err(DriveError::Rejected { status: 404, .. }) => Ok(false),
            Err(error) => Err(error),
        }
    }
}

/// Counts one Drive request in `baw_provider_requests_total` / `baw_provider_errors_total`.
fn counted<T>(result: Result<T, DriveError>) -> Result<T, DriveError> {
    let class = result.as_ref().err().map(|error| match error {
        DriveError::RateLimited { .. } => "rate_limited",
        DriveError::Server { .. } => "server",
        DriveError::Transport(_) => "transport",
        DriveError::Auth(_) => "auth",
        DriveError::ClockSkew(_) => "clock_skew",
        DriveError::SessionExpired => "session_expired",
        DriveError::Rejected { .. } => "rejected",
        DriveError::Unconfigured(_) => "unconfigured",
    });
    crate::telemetry::provider_call("drive", class);
    result
}

/// Reads a session URI's answer: 200/201 with the file, 308 with the persisted range.
async fn progress(response: reqwest::Response) -> Result<UploadProgress, DriveError> {
    let status = response.status().as_u16();
    match status {
        200 | 201 => Ok(UploadProgress::Complete(read_json(response).await?)),
        308 => {
            // `Range: bytes=0-N`; none means nothing is persisted.
            let persisted = response
                .headers()
                .get(header::RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().strip_prefix("bytes=0-"))
                .and_then(|n| n.trim().parse::<u64>().ok())
                .map_or(0, |last| last + 1);
            Ok(UploadProgress::Incomplete { persisted })
        }
        404 | 410 => Err(DriveError::SessionExpired),
        _ => Err(error_from(response).await),
    }
}

async fn read_json<T: serde::de::DeserializeOwned>(
    response: reqwest::Response,
) -> Result<T, DriveError> {
    let bytes = response.bytes().await.map_err(transport)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| DriveError::Transport(format!("unreadable answer from Drive: {e}")))
}

/// Classifies a non-2xx answer from its status and Drive's error body.
async fn error_from(response: reqwest::Response) -> DriveError {
    let status = response.status().as_u16();
    let wait = retry_after(response.headers());
    let bytes = response.bytes().await.unwrap_or_default();
    let body: ErrorBody = serde_json::from_slice(&bytes).unwrap_or_default();
    let reason = body
        .error
        .errors
        .first()
        .map(|e| e.reason.clone())
        .unwrap_or_default();
    let message = if body.error.message.is_empty() {
        String::from_utf8_lossy(&bytes).chars().take(300).collect()
    } else {
        body.error.message
    };
    DriveError::from_response(status, reason, message, wait)
}

/// `Retry-After` in seconds, when Drive sends one.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: f64 = headers
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    crate::integrations::provider_wait(secs)
}

/// A reqwest failure as a transport error, without the URL (a session URI is a credential).
pub(super) fn transport(error: reqwest::Error) -> DriveError {
    let what = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else if error.is_body() || error.is_request() {
        "connection cut"
    } else {
        "request failed"
    };
    DriveError::Transport(format!("{what}: {}", error.without_url()))
}

/// `base` with the query pairs appended (reqwest's `query` is behind a feature we leave off).
fn with_query(base: &str, pairs: &[(&str, &str)]) -> String {
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    format!("{base}?{query}")
}

/// Escapes a value for a single-quoted string in a `q` query.
fn escape_q(value: &str) -> String {
    value.replace('\\', "\\\\").replace('\'', "\\'")
}

/// Percent-encodes a path segment (file ids are URL-safe, but be strict anyway).
fn encode(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes()).collect()
}
