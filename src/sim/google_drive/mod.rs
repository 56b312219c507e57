//! The Google Drive v3 simulator, with the service-account token endpoint (PROVIDERS.md §D).
//!
//! - `POST /token`: the JWT bearer grant. The assertion's RS256 signature is verified against
//!   the public key of a configured [`ServiceAccount`] found by `iss`; `aud` must be Google's
//!   token URL or this simulator's `/token`; `exp - iat` at most one hour and not expired. The
//!   default account is [`test_service_account`], whose throw-away key ships in `fixtures/`.
//!   Answers `{"access_token","expires_in","token_type"}` or `{"error","error_description"}`
//!   (400; [`GoogleDriveSim::refuse_next_token`] scripts one, e.g. a clock-skew `invalid_grant`).
//!   Faults injected on `/token` wear that OAuth shape too: 429 for throttling, 5xx.
//! - The Drive methods, on the paths of the discovery document ([`ROUTES`]): `files.create`
//!   (metadata only, and uploads on `/upload/drive/v3/files` with `uploadType=multipart`,
//!   `media` or `resumable`; the resumable initiation also on `/resumable/upload/drive/v3/files`),
//!   `files.list` with a `q` subset (`appProperties has { key='k' and value='v' }`,
//!   `properties has {...}`, `trashed =`, `name =|!=|contains`, `mimeType =|!=`,
//!   `'id' in parents`, joined by `and`), `files.get` (also `alt=media`), `files.delete`,
//!   `files.generateIds`, `permissions.create`. Partial responses honour `fields` (checked against
//!   the discovery schemas' property names); without it Drive's defaults
//!   (`kind,id,name,mimeType`).
//! - Resumable uploads: initiation answers 200 with the session URI in `Location`; `PUT` chunks
//!   with `Content-Range: bytes a-b/total` (or `/*`); intermediate answers are
//!   `308 Resume Incomplete` with `Range: bytes=0-N` (none when nothing is persisted); the last
//!   chunk answers 200 with the `File`. Chunk `PUT`s need no `Authorization` (the session URI
//!   is the credential, \[I\]), but a token that is sent must be valid. A non-final chunk that is not a multiple of 256 KiB is
//!   persisted only up to the last multiple (so `Range` can be less than was sent, as the
//!   contract warns). A chunk whose body breaks off keeps the whole 256 KiB blocks received.
//!   `Content-Range: bytes */total` queries the status. Expired sessions answer 404.
//! - Errors use Drive's body `{"error":{"code","message","errors":[{"domain","reason",...}]}}`;
//!   the per-user quota (units per minute, method costs from the contract) answers 403
//!   `userRateLimitExceeded` (or 403 `rateLimitExceeded` / 429 `rateLimitExceeded`, configurable).
//!
//! For tests and benchmarks: each session counts the body bytes it received
//! ([`UploadSession::received`], so a client's re-sent bytes can be counted), and
//! [`GoogleDriveConfig::keep_content`] off keeps only each file's size and SHA-256.
//!
//! Inferred behaviour (\[I\]) is configurable: search visibility delay (eventual consistency),
//! uploads without a parent failing `storageQuotaExceeded`, `anyone` permissions forbidden by
//! domain policy. Not simulated: `md5Checksum` (ring has no MD5; `sha256Checksum` is given),
//! shared drives as such, `files.update`, revisions.
//!
//! Layout: this file holds the config, the state and the handle [`GoogleDriveSim`]; `auth` the
//! service account, the token endpoint and `admit` (bearer check and quota); `errors` Drive's
//! error bodies; `fields` partial responses and a file's JSON; `upload` `files.create` in all its
//! forms (the resumable protocol included); `files` get, delete, list (`q`), generateIds and
//! permissions.

mod auth;
mod errors;
mod fields;
mod files;
mod upload;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::fault::{FaultConfig, FaultResponder, Faults};
use super::{CallLog, SimServer, lock, mix};

use self::auth::*;
pub use self::auth::{KeyError, ServiceAccount, test_service_account};
use self::errors::*;
use self::fields::*;
use self::files::*;
use self::upload::*;

const TEST_KEY_PEM: &str = include_str!("../fixtures/drive_test_service_account_key.pem");
const SCHEMA_FIELDS: &str = include_str!("../fixtures/drive_schema_fields.json");

/// Google's token endpoint, accepted as `aud` besides the simulator's own `/token`.
pub const GOOGLE_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";

/// Resumable chunks other than the last must be multiples of this (256 KiB).
pub const CHUNK_GRANULARITY: u64 = 262_144;

/// Every route the simulator serves: (HTTP method, path, discovery method id or `None` for
/// the token endpoint and upload paths, which the discovery doc lists under `mediaUpload`).
pub const ROUTES: &[(&str, &str, Option<&str>)] = &[
    ("POST", "/token", None),
    ("GET", "/drive/v3/files", Some("drive.files.list")),
    ("POST", "/drive/v3/files", Some("drive.files.create")),
    (
        "GET",
        "/drive/v3/files/generateIds",
        Some("drive.files.generateIds"),
    ),
    ("GET", "/drive/v3/files/{fileId}", Some("drive.files.get")),
    (
        "DELETE",
        "/drive/v3/files/{fileId}",
        Some("drive.files.delete"),
    ),
    (
        "POST",
        "/drive/v3/files/{fileId}/permissions",
        Some("drive.permissions.create"),
    ),
    ("POST", "/upload/drive/v3/files", None),
    ("PUT", "/upload/drive/v3/files", None),
    ("POST", "/resumable/upload/drive/v3/files", None),
];

/// Which error the per-user quota answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriveRateLimit {
    /// 403, reason `userRateLimitExceeded` (the documented quota error).
    UserRateLimit403,
    /// 403, reason `rateLimitExceeded`.
    RateLimit403,
    /// 429, reason `rateLimitExceeded`.
    TooMany429,
}

#[derive(Clone, Debug)]
pub struct GoogleDriveConfig {
    pub bind: Option<SocketAddr>,
    /// Accounts whose assertions are accepted (the simulator uses only their public keys).
    pub service_accounts: Vec<ServiceAccount>,
    /// Lifetime of issued access tokens (`expires_in` is one second less, as Google's 3599).
    pub token_lifetime: Duration,
    /// Quota units per minute per user (325,000 in the contract's current quotas).
    pub quota_units_per_minute: u64,
    pub rate_limit: DriveRateLimit,
    /// A file becomes visible to `files.list` this long after creation (\[I\] eventual
    /// consistency). `files.get` sees it at once.
    pub list_visibility_delay: Duration,
    /// Uploads without `parents` fail 403 `storageQuotaExceeded`, as for a service account's
    /// own My Drive (\[I\]).
    pub require_parent: bool,
    /// The folders that exist. `Some`: a file whose `parents` name another folder is refused
    /// 404 `notFound` (at the resumable initiation already). `None`: any parent is accepted.
    pub folders: Option<Vec<String>>,
    /// `anyone` permissions fail 403 `publishOutNotPermitted` (a domain policy, \[I\]).
    pub forbid_anyone_permissions: bool,
    /// Persist non-final resumable chunks only up to the last 256 KiB multiple.
    pub enforce_chunk_granularity: bool,
    /// Keep uploaded bytes (`StoredFile::content`, `files.get?alt=media`). Off, only each
    /// file's size and SHA-256 are kept, so a benchmark can push gigabytes through it.
    pub keep_content: bool,
    /// Seeds the generated ids.
    pub seed: u64,
    pub faults: FaultConfig,
}

impl Default for GoogleDriveConfig {
    fn default() -> Self {
        Self {
            bind: None,
            service_accounts: vec![test_service_account()],
            token_lifetime: Duration::from_secs(3600),
            quota_units_per_minute: 325_000,
            rate_limit: DriveRateLimit::UserRateLimit403,
            list_visibility_delay: Duration::ZERO,
            require_parent: false,
            folders: None,
            forbid_anyone_permissions: false,
            enforce_chunk_granularity: true,
            keep_content: true,
            seed: 0,
            faults: FaultConfig::default(),
        }
    }
}

/// One file in the simulated drive.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredFile {
    pub id: String,
    pub name: String,
    pub mime_type: String,
    pub parents: Vec<String>,
    pub app_properties: BTreeMap<String, String>,
    pub properties: BTreeMap<String, String>,
    /// Empty when the simulator does not keep content ([`GoogleDriveConfig::keep_content`]).
    pub content: Vec<u8>,
    /// Bytes received, kept or not.
    pub size: u64,
    /// Lowercase hex SHA-256 of the content (Drive's `sha256Checksum`).
    pub sha256: String,
    /// Permission resources as created.
    pub permissions: Vec<Value>,
    pub created_time: String,
    /// The service account that created it.
    pub owner: String,
    /// How it arrived: `"multipart"`, `"media"`, `"resumable"` or `"metadata"`.
    pub upload_type: String,
    visible_at: Instant,
}

/// A resumable session, as tests see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadSession {
    pub upload_id: String,
    pub persisted: u64,
    pub total: Option<u64>,
    /// Body bytes received by this session's chunk `PUT`s, including bytes sent again after an
    /// interruption and bytes dropped because they were not persisted: `received - total` is
    /// what a client re-sent.
    pub received: u64,
    /// The file id once the upload completed.
    pub file_id: Option<String>,
    pub expired: bool,
}

#[derive(Debug)]
struct Session {
    info: UploadSession,
    metadata: Value,
    content_type: Option<String>,
    fields: Option<String>,
    owner: String,
    /// The persisted bytes (empty unless the simulator keeps content).
    bytes: Vec<u8>,
    /// SHA-256 of the persisted bytes so far.
    hasher: Hasher,
}

#[derive(Debug)]
struct Token {
    owner: String,
    expires: Instant,
}

#[derive(Debug)]
struct DriveState {
    config: GoogleDriveConfig,
    files: BTreeMap<String, StoredFile>,
    /// Creation order of file ids (files.list answers in it).
    order: Vec<String>,
    sessions: BTreeMap<String, Session>,
    tokens: BTreeMap<String, Token>,
    /// Per user: (window start, units used).
    quota: BTreeMap<String, (Instant, u64)>,
    ids_issued: u64,
    tokens_issued: u64,
    rate_limit_hits: u64,
    /// Scripted refusals (`error`, `error_description`) for the next token requests.
    token_refusals: VecDeque<(String, String)>,
}

/// A running Drive simulator. Dropping it stops the server.
#[derive(Debug)]
pub struct GoogleDriveSim {
    server: SimServer,
    state: Arc<Mutex<DriveState>>,
}

type Shared = State<Arc<Mutex<DriveState>>>;

impl GoogleDriveSim {
    pub async fn start(config: GoogleDriveConfig) -> std::io::Result<Self> {
        let faults = Faults::new(config.faults.clone());
        let bind = config.bind;
        let state = Arc::new(Mutex::new(DriveState {
            config,
            files: BTreeMap::new(),
            order: Vec::new(),
            sessions: BTreeMap::new(),
            tokens: BTreeMap::new(),
            quota: BTreeMap::new(),
            ids_issued: 0,
            tokens_issued: 0,
            rate_limit_hits: 0,
            token_refusals: VecDeque::new(),
        }));
        let router = Router::new()
            .route(ROUTES[0].1, post(token))
            .route(ROUTES[1].1, get(list_files).post(create_metadata_only))
            .route(ROUTES[3].1, get(generate_ids))
            .route(ROUTES[4].1, get(get_file).delete(delete_file))
            .route(ROUTES[6].1, post(create_permission))
            .route(ROUTES[7].1, post(upload).put(upload_chunk))
            .route(ROUTES[9].1, post(upload))
            .fallback(|| async {
                drive_error(
                    StatusCode::NOT_FOUND,
                    "global",
                    "notFound",
                    "Not Found",
                    None,
                )
            })
            .with_state(state.clone());
        let server = SimServer::start(router, bind, faults, Arc::new(DriveFaults)).await?;
        Ok(Self { server, state })
    }

    /// The base URL to configure instead of `https://www.googleapis.com` (the API is under
    /// `/drive/v3`, uploads under `/upload/drive/v3`).
    pub fn base_url(&self) -> &str {
        self.server.base_url()
    }

    /// The token endpoint (`{base}/token`), to use instead of Google's.
    pub fn token_uri(&self) -> String {
        format!("{}/token", self.base_url())
    }

    /// The first configured service account.
    pub fn service_account(&self) -> ServiceAccount {
        lock(&self.state)
            .config
            .service_accounts
            .first()
            .cloned()
            .unwrap_or_else(test_service_account)
    }

    /// A key file for the first service account, pointing at this simulator's token endpoint.
    pub fn key_file_json(&self) -> String {
        self.service_account().key_file_json(&self.token_uri())
    }

    /// Every stored file, in creation order.
    pub fn files(&self) -> Vec<StoredFile> {
        let s = lock(&self.state);
        s.order
            .iter()
            .filter_map(|id| s.files.get(id).cloned())
            .collect()
    }

    pub fn file(&self, id: &str) -> Option<StoredFile> {
        lock(&self.state).files.get(id).cloned()
    }

    /// Files whose `appProperties[key] == value`.
    pub fn files_with_app_property(&self, key: &str, value: &str) -> Vec<StoredFile> {
        self.files()
            .into_iter()
            .filter(|f| f.app_properties.get(key).is_some_and(|v| v == value))
            .collect()
    }

    pub fn upload_sessions(&self) -> Vec<UploadSession> {
        lock(&self.state)
            .sessions
            .values()
            .map(|s| s.info.clone())
            .collect()
    }

    /// Expires every resumable session: later `PUT`s answer 404.
    pub fn expire_upload_sessions(&self) {
        for session in lock(&self.state).sessions.values_mut() {
            session.info.expired = true;
        }
    }

    /// Expires every access token: later API calls answer 401 until a new token is minted.
    pub fn expire_tokens(&self) {
        lock(&self.state).tokens.clear();
    }

    /// The next token request is refused 400 `{"error": error, "error_description":
    /// description}`, as Google's token endpoint refuses an assertion, e.g. `invalid_grant` /
    /// "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable
    /// timeframe. Check your iat and exp values in the JWT claim." (a clock off by minutes) or
    /// `invalid_grant` / "Invalid JWT Signature." (a deleted key). Calls add up, in order.
    pub fn refuse_next_token(&self, error: &str, description: &str) {
        lock(&self.state)
            .token_refusals
            .push_back((error.to_owned(), description.to_owned()));
    }

    pub fn tokens_issued(&self) -> u64 {
        lock(&self.state).tokens_issued
    }

    /// Requests refused by the quota (not by injected faults).
    pub fn rate_limit_hits(&self) -> u64 {
        lock(&self.state).rate_limit_hits
    }

    pub fn set_quota_units_per_minute(&self, units: u64) {
        let mut s = lock(&self.state);
        s.config.quota_units_per_minute = units;
        s.quota.clear();
    }

    pub fn calls(&self) -> &CallLog {
        self.server.calls()
    }

    pub fn faults(&self) -> &Faults {
        self.server.faults()
    }

    pub fn server(&self) -> &SimServer {
        &self.server
    }
}
