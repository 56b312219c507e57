//! The Google Drive v3 simulator, with the service-account token endpoint (PROVIDERS.md §D).
//!
//! - `POST /token`: the JWT bearer grant. The assertion's RS256 signature is verified against
//!   the public key of a configured [`ServiceAccount`] found by `iss`; `aud` must be Google's
//!   token URL or this simulator's `/token`; `exp - iat` at most one hour and not expired. The
//!   default account is [`test_service_account`], whose throw-away key ships in `fixtures/`.
//!   Answers `{"access_token","expires_in","token_type"}` or `{"error","error_description"}`.
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
//!   is the credential, [I]), but a token that is sent must be valid. A non-final chunk that is not a multiple of 256 KiB is
//!   persisted only up to the last multiple (so `Range` can be less than was sent, as the
//!   contract warns). A chunk whose body breaks off keeps the whole 256 KiB blocks received.
//!   `Content-Range: bytes */total` queries the status. Expired sessions answer 404.
//! - Errors use Drive's body `{"error":{"code","message","errors":[{"domain","reason",...}]}}`;
//!   the per-user quota (units per minute, method costs from the contract) answers 403
//!   `userRateLimitExceeded` (or 403 `rateLimitExceeded` / 429 `rateLimitExceeded`, configurable).
//!
//! Inferred behaviour ([I]) is configurable: search visibility delay (eventual consistency),
//! uploads without a parent failing `storageQuotaExceeded`, `anyone` permissions forbidden by
//! domain policy. Not simulated: `md5Checksum` (ring has no MD5; `sha256Checksum` is given),
//! shared drives as such, `files.update`, revisions.

use std::collections::BTreeMap;
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

const TEST_KEY_PEM: &str = include_str!("fixtures/drive_test_service_account_key.pem");
const SCHEMA_FIELDS: &str = include_str!("fixtures/drive_schema_fields.json");

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

/// A service account: its email and (throw-away) private key, as in a Google key file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAccount {
    pub client_email: String,
    pub private_key_id: String,
    /// PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), as Google key files carry it.
    pub private_key_pem: String,
}

/// The simulator's default service account, whose key ships in `src/sim/fixtures/`.
pub fn test_service_account() -> ServiceAccount {
    ServiceAccount {
        client_email: "baseaim-sim@baseaim-sim.iam.gserviceaccount.com".to_owned(),
        private_key_id: "sim0000000000000000000000000000000000001".to_owned(),
        private_key_pem: TEST_KEY_PEM.to_owned(),
    }
}

/// Why a service-account key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the private key is not PKCS#8 PEM")]
    Pem,
    #[error("the private key was rejected: {0}")]
    Rejected(String),
    #[error("signing failed")]
    Sign,
}

fn pem_to_der(pem: &str) -> Result<Vec<u8>, KeyError> {
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| KeyError::Pem)
}

impl ServiceAccount {
    fn key_pair(&self) -> Result<ring::rsa::KeyPair, KeyError> {
        let der = pem_to_der(&self.private_key_pem)?;
        ring::rsa::KeyPair::from_pkcs8(&der).map_err(|e| KeyError::Rejected(e.to_string()))
    }

    /// The DER `RSAPublicKey` the simulator verifies assertions with.
    pub fn public_key_der(&self) -> Result<Vec<u8>, KeyError> {
        Ok(self.key_pair()?.public().as_ref().to_vec())
    }

    /// A key file like the one Google issues (`type: service_account`), with `token_uri`.
    pub fn key_file_json(&self, token_uri: &str) -> String {
        json!({
            "type": "service_account",
            "project_id": "baseaim-sim",
            "private_key_id": self.private_key_id,
            "private_key": self.private_key_pem,
            "client_email": self.client_email,
            "client_id": "100000000000000000001",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
        })
        .to_string()
    }

    /// Signs `claims` as an RS256 JWT with this account's key (header carries `kid`).
    pub fn sign_assertion(&self, claims: &Value) -> Result<String, KeyError> {
        let header = json!({"alg": "RS256", "typ": "JWT", "kid": self.private_key_id});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let key_pair = self.key_pair()?;
        let mut signature = vec![0u8; key_pair.public().modulus_len()];
        key_pair
            .sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| KeyError::Sign)?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }

    /// The standard claims for a Drive token: `iss`, `scope`, `aud`, `iat = now`, `exp = now + 1h`.
    pub fn claims(&self, scope: &str, audience: &str) -> Value {
        let now = chrono::Utc::now().timestamp();
        json!({"iss": self.client_email, "scope": scope, "aud": audience, "iat": now, "exp": now + 3600})
    }
}

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
    /// A file becomes visible to `files.list` this long after creation ([I] eventual
    /// consistency). `files.get` sees it at once.
    pub list_visibility_delay: Duration,
    /// Uploads without `parents` fail 403 `storageQuotaExceeded`, as for a service account's
    /// own My Drive ([I]).
    pub require_parent: bool,
    /// `anyone` permissions fail 403 `publishOutNotPermitted` (a domain policy, [I]).
    pub forbid_anyone_permissions: bool,
    /// Persist non-final resumable chunks only up to the last 256 KiB multiple.
    pub enforce_chunk_granularity: bool,
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
            forbid_anyone_permissions: false,
            enforce_chunk_granularity: true,
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
    pub content: Vec<u8>,
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
    bytes: Vec<u8>,
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

// ---------------------------------------------------------------------------------------------
// Errors

/// Drive's error body. `location` is `(locationType, location)`.
fn drive_error(
    status: StatusCode,
    domain: &str,
    reason: &str,
    message: &str,
    location: Option<(&str, &str)>,
) -> Response {
    let mut item = json!({"domain": domain, "reason": reason, "message": message});
    if let Some((kind, at)) = location {
        item["locationType"] = json!(kind);
        item["location"] = json!(at);
    }
    let body = json!({"error": {"code": status.as_u16(), "message": message, "errors": [item]}});
    (status, axum::Json(body)).into_response()
}

fn rate_limited(kind: DriveRateLimit) -> Response {
    match kind {
        DriveRateLimit::UserRateLimit403 => drive_error(
            StatusCode::FORBIDDEN,
            "usageLimits",
            "userRateLimitExceeded",
            "User Rate Limit Exceeded. Rate of requests for user exceed configured project quota. You may consider re-evaluating expected per-user traffic to the API and adjust project quota limits accordingly.",
            None,
        ),
        DriveRateLimit::RateLimit403 => drive_error(
            StatusCode::FORBIDDEN,
            "usageLimits",
            "rateLimitExceeded",
            "Rate Limit Exceeded",
            None,
        ),
        DriveRateLimit::TooMany429 => drive_error(
            StatusCode::TOO_MANY_REQUESTS,
            "usageLimits",
            "rateLimitExceeded",
            "Rate Limit Exceeded",
            None,
        ),
    }
}

fn bad_request(message: &str, location: Option<(&str, &str)>) -> Response {
    drive_error(
        StatusCode::BAD_REQUEST,
        "global",
        "badRequest",
        message,
        location,
    )
}

fn invalid_param(name: &str) -> Response {
    drive_error(
        StatusCode::BAD_REQUEST,
        "global",
        "invalid",
        "Invalid Value",
        Some(("parameter", name)),
    )
}

fn file_not_found(id: &str) -> Response {
    drive_error(
        StatusCode::NOT_FOUND,
        "global",
        "notFound",
        &format!("File not found: {id}."),
        Some(("parameter", "fileId")),
    )
}

struct DriveFaults;

impl FaultResponder for DriveFaults {
    fn server_error(&self, status: StatusCode) -> Response {
        let reason = if status == StatusCode::SERVICE_UNAVAILABLE {
            "backendError"
        } else {
            "internalError"
        };
        drive_error(status, "global", reason, "Backend Error", None)
    }

    fn too_many_requests(&self) -> Response {
        rate_limited(DriveRateLimit::TooMany429)
    }

    fn throttled(&self) -> Response {
        rate_limited(DriveRateLimit::UserRateLimit403)
    }
}

// ---------------------------------------------------------------------------------------------
// Token endpoint

fn oauth_error(error: &str, description: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

async fn token(State(state): Shared, headers: HeaderMap, body: Bytes) -> Response {
    let form: BTreeMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let grant = form.get("grant_type").map(String::as_str).unwrap_or("");
    if grant != "urn:ietf:params:oauth:grant-type:jwt-bearer" {
        return oauth_error(
            "unsupported_grant_type",
            &format!("Invalid grant_type: {grant}"),
        );
    }
    let Some(assertion) = form.get("assertion") else {
        return oauth_error("invalid_request", "Missing required parameter: assertion");
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    let own_token_url = format!("http://{host}/token");
    let mut s = lock(&state);
    let owner = match verify_assertion(&s.config.service_accounts, assertion, &own_token_url) {
        Ok(owner) => owner,
        Err(refusal) => return *refusal,
    };
    s.tokens_issued += 1;
    let access_token = format!(
        "ya29.sim-{:016x}{:04}",
        mix(s.config.seed, &[s.tokens_issued]),
        s.tokens_issued
    );
    let lifetime = s.config.token_lifetime;
    s.tokens.insert(
        access_token.clone(),
        Token {
            owner,
            expires: Instant::now() + lifetime,
        },
    );
    let body = json!({
        "access_token": access_token,
        "expires_in": lifetime.as_secs().saturating_sub(1),
        "token_type": "Bearer",
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// Checks a JWT bearer assertion; returns the service account's email.
fn verify_assertion(
    accounts: &[ServiceAccount],
    assertion: &str,
    own_token_url: &str,
) -> Result<String, Box<Response>> {
    let refuse = |error: &str, description: &str| Box::new(oauth_error(error, description));
    let parts: Vec<&str> = assertion.split('.').collect();
    let [header_b64, claims_b64, signature_b64] = parts.as_slice() else {
        return Err(refuse(
            "invalid_grant",
            "Invalid JWT: the assertion is not three base64url parts.",
        ));
    };
    let decode = |part: &str| -> Option<Value> {
        let raw = URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).ok()?;
        serde_json::from_slice(&raw).ok()
    };
    let (Some(jwt_header), Some(claims)) = (decode(header_b64), decode(claims_b64)) else {
        return Err(refuse(
            "invalid_grant",
            "Invalid JWT: the header or claims are not base64url JSON.",
        ));
    };
    if jwt_header.get("alg").and_then(Value::as_str) != Some("RS256") {
        return Err(refuse(
            "invalid_grant",
            "Invalid JWT: the signing algorithm must be RS256.",
        ));
    }
    let iss = claims.get("iss").and_then(Value::as_str).unwrap_or("");
    let Some(account) = accounts.iter().find(|a| a.client_email == iss) else {
        return Err(refuse("invalid_grant", "Invalid grant: account not found"));
    };
    let signature = URL_SAFE_NO_PAD
        .decode(signature_b64.trim_end_matches('='))
        .unwrap_or_default();
    let public_key = account.public_key_der().unwrap_or_default();
    let verified = ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        public_key,
    )
    .verify(format!("{header_b64}.{claims_b64}").as_bytes(), &signature);
    if verified.is_err() {
        return Err(refuse("invalid_grant", "Invalid JWT Signature."));
    }
    let aud = claims.get("aud").and_then(Value::as_str).unwrap_or("");
    if aud != GOOGLE_TOKEN_URL && aud != own_token_url {
        return Err(refuse(
            "invalid_grant",
            &format!(
                "Invalid JWT: Failed audience check. The expected value was {GOOGLE_TOKEN_URL}"
            ),
        ));
    }
    let now = chrono::Utc::now().timestamp();
    let iat = claims.get("iat").and_then(Value::as_i64);
    let exp = claims.get("exp").and_then(Value::as_i64);
    let timely = matches!((iat, exp), (Some(iat), Some(exp))
        if exp > iat && exp - iat <= 3600 && exp > now && iat <= now + 300);
    if !timely {
        return Err(refuse(
            "invalid_grant",
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.",
        ));
    }
    let scope = claims.get("scope").and_then(Value::as_str).unwrap_or("");
    if !scope
        .split(' ')
        .any(|s| s.starts_with("https://www.googleapis.com/auth/drive"))
    {
        return Err(refuse(
            "invalid_scope",
            "Invalid OAuth scope or ID token audience provided.",
        ));
    }
    Ok(account.client_email.clone())
}

// ---------------------------------------------------------------------------------------------
// API plumbing: auth, quota, partial responses

/// Quota cost of a method, in units (contract §D.7).
#[derive(Clone, Copy)]
enum Cost {
    Read = 5,
    List = 100,
    Modify = 50,
}

/// Authenticates the bearer token and charges the quota; returns the caller's email.
fn admit(s: &mut DriveState, headers: &HeaderMap, cost: Cost) -> Result<String, Box<Response>> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("");
    let now = Instant::now();
    let owner = match s.tokens.get(token) {
        Some(t) if t.expires > now => t.owner.clone(),
        _ => {
            let mut response = drive_error(
                StatusCode::UNAUTHORIZED,
                "global",
                "authError",
                "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
                Some(("header", "Authorization")),
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"https://accounts.google.com/\""),
            );
            return Err(Box::new(response));
        }
    };
    let limit = s.config.quota_units_per_minute;
    let window = s.quota.entry(owner.clone()).or_insert((now, 0));
    if now.duration_since(window.0) >= Duration::from_secs(60) {
        *window = (now, 0);
    }
    if window.1 + cost as u64 > limit {
        s.rate_limit_hits += 1;
        return Err(Box::new(rate_limited(s.config.rate_limit)));
    }
    window.1 += cost as u64;
    Ok(owner)
}

/// A `fields` selection: `*`, or named fields with optional nested selections.
#[derive(Debug, PartialEq)]
enum Selection {
    All,
    Fields(BTreeMap<String, Selection>),
}

/// Parses `a,b(c,d),e/f`. `None` when malformed (or absurdly long: the parser recurses).
fn parse_fields(spec: &str) -> Option<Selection> {
    if spec.len() > 4096 {
        return None;
    }
    fn list(chars: &[char], at: &mut usize) -> Option<Selection> {
        let mut fields = BTreeMap::new();
        loop {
            let start = *at;
            while *at < chars.len() && !matches!(chars[*at], ',' | '(' | ')' | '/') {
                *at += 1;
            }
            let name: String = chars[start..*at]
                .iter()
                .collect::<String>()
                .trim()
                .to_owned();
            if name.is_empty() {
                return None;
            }
            let nested = match chars.get(*at) {
                Some('(') => {
                    *at += 1;
                    let inner = list(chars, at)?;
                    if chars.get(*at) != Some(&')') {
                        return None;
                    }
                    *at += 1;
                    inner
                }
                Some('/') => {
                    *at += 1;
                    let start = *at;
                    while *at < chars.len() && !matches!(chars[*at], ',' | ')') {
                        *at += 1;
                    }
                    let path: String = chars[start..*at].iter().collect();
                    parse_fields(&path)?
                }
                _ => Selection::All,
            };
            if name == "*" {
                return Some(Selection::All);
            }
            fields.insert(name, nested);
            match chars.get(*at) {
                Some(',') => *at += 1,
                _ => return Some(Selection::Fields(fields)),
            }
        }
    }
    let chars: Vec<char> = spec.chars().collect();
    let mut at = 0;
    let selection = list(&chars, &mut at)?;
    (at == chars.len()).then_some(selection)
}

fn apply(value: &Value, selection: &Selection) -> Value {
    match (selection, value) {
        (Selection::All, v) => v.clone(),
        (Selection::Fields(_), Value::Array(items)) => {
            Value::Array(items.iter().map(|i| apply(i, selection)).collect())
        }
        (Selection::Fields(fields), Value::Object(map)) => Value::Object(
            fields
                .iter()
                .filter_map(|(k, sel)| map.get(k).map(|v| (k.clone(), apply(v, sel))))
                .collect(),
        ),
        (_, v) => v.clone(),
    }
}

/// Checks `selection`'s top-level (and `files(...)`) names against the discovery schema.
fn check_fields(selection: &Selection, schema: &str) -> Result<(), String> {
    let known: Value = serde_json::from_str(SCHEMA_FIELDS).unwrap_or(Value::Null);
    let names = |schema: &str| -> Vec<String> {
        known
            .get(schema)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let Selection::Fields(fields) = selection else {
        return Ok(());
    };
    let allowed = names(schema);
    for (name, nested) in fields {
        if !allowed.contains(name) {
            return Err(name.clone());
        }
        if schema == "FileList" && name == "files" {
            check_fields(nested, "File")?;
        }
        if schema == "File" && name == "permissions" {
            check_fields(nested, "Permission")?;
        }
    }
    Ok(())
}

/// Renders `value` (a full resource of `schema`) for the request's `fields` or the defaults.
fn partial(
    value: &Value,
    fields: Option<&str>,
    schema: &str,
    default: &str,
) -> Result<Value, Box<Response>> {
    let spec = fields.unwrap_or(default);
    let Some(selection) = parse_fields(spec) else {
        return Err(Box::new(bad_request(
            &format!("Invalid field selection {spec}"),
            Some(("parameter", "fields")),
        )));
    };
    if let Err(name) = check_fields(&selection, schema) {
        return Err(Box::new(bad_request(
            &format!("Invalid field selection {name}"),
            Some(("parameter", "fields")),
        )));
    }
    Ok(apply(value, &selection))
}

const FILE_DEFAULT: &str = "kind,id,name,mimeType";
const LIST_DEFAULT: &str = "kind,incompleteSearch,files(kind,id,name,mimeType),nextPageToken";
const PERMISSION_DEFAULT: &str = "kind,id,type,role";

fn file_json(file: &StoredFile) -> Value {
    let digest = ring::digest::digest(&ring::digest::SHA256, &file.content);
    let sha256: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    json!({
        "kind": "drive#file",
        "id": file.id,
        "name": file.name,
        "mimeType": file.mime_type,
        "parents": file.parents,
        "appProperties": file.app_properties,
        "properties": file.properties,
        "size": file.content.len().to_string(),
        "sha256Checksum": sha256,
        "createdTime": file.created_time,
        "modifiedTime": file.created_time,
        "trashed": false,
        "webViewLink": format!("https://drive.google.com/file/d/{}/view?usp=drivesdk", file.id),
        "webContentLink": format!("https://drive.google.com/uc?id={}&export=download", file.id),
        "permissions": file.permissions,
        "owners": [{"kind": "drive#user", "emailAddress": file.owner, "me": true}],
    })
}

fn respond(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

type Params = Query<BTreeMap<String, String>>;

// ---------------------------------------------------------------------------------------------
// files.create

fn string_map(value: Option<&Value>) -> BTreeMap<String, String> {
    value
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let v = v
                        .as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| v.to_string());
                    (k.clone(), v)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn new_id(s: &mut DriveState) -> String {
    s.ids_issued += 1;
    // 24 bytes: 32 base64url characters, about the length of a real Drive id.
    let bytes: Vec<u8> = [0xD1, 0xD2, 0xD3]
        .iter()
        .flat_map(|k| mix(s.config.seed, &[s.ids_issued, *k]).to_be_bytes())
        .collect();
    format!("1{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// Stores a file from metadata and content; returns it or Drive's refusal.
fn store(
    s: &mut DriveState,
    owner: &str,
    metadata: &Value,
    content: Vec<u8>,
    media_type: Option<&str>,
    upload_type: &str,
) -> Result<StoredFile, Box<Response>> {
    if !metadata.is_object() && !metadata.is_null() {
        return Err(Box::new(bad_request("Invalid JSON payload", None)));
    }
    let parents: Vec<String> = metadata
        .get("parents")
        .and_then(Value::as_array)
        .map(|p| {
            p.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if s.config.require_parent && parents.is_empty() {
        return Err(Box::new(drive_error(
            StatusCode::FORBIDDEN,
            "usageLimits",
            "storageQuotaExceeded",
            "Service Accounts do not have storage quota. Leverage shared drives (https://developers.google.com/workspace/drive/api/guides/about-shareddrives), or use OAuth delegation (http://support.google.com/a/answer/7281227) instead.",
            None,
        )));
    }
    let id = match metadata.get("id").and_then(Value::as_str) {
        Some(id) if s.files.contains_key(id) => {
            return Err(Box::new(drive_error(
                StatusCode::CONFLICT,
                "global",
                "duplicate",
                "A file already exists with the provided ID.",
                None,
            )));
        }
        Some(id) => id.to_owned(),
        None => new_id(s),
    };
    let mime_type = metadata
        .get("mimeType")
        .and_then(Value::as_str)
        .or(media_type)
        .unwrap_or("application/octet-stream")
        .to_owned();
    let file = StoredFile {
        id: id.clone(),
        name: metadata
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("Untitled")
            .to_owned(),
        mime_type,
        parents,
        app_properties: string_map(metadata.get("appProperties")),
        properties: string_map(metadata.get("properties")),
        content,
        permissions: Vec::new(),
        created_time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        owner: owner.to_owned(),
        upload_type: upload_type.to_owned(),
        visible_at: Instant::now() + s.config.list_visibility_delay,
    };
    s.files.insert(id.clone(), file.clone());
    s.order.push(id);
    Ok(file)
}

async fn create_metadata_only(
    State(state): Shared,
    headers: HeaderMap,
    Query(params): Params,
    body: Bytes,
) -> Response {
    let mut s = lock(&state);
    let owner = match admit(&mut s, &headers, Cost::Modify) {
        Ok(owner) => owner,
        Err(refusal) => return *refusal,
    };
    let metadata: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(_) => return bad_request("Invalid JSON payload received.", None),
        }
    };
    match store(&mut s, &owner, &metadata, Vec::new(), None, "metadata") {
        Ok(file) => file_response(
            &file,
            params.get("fields").map(String::as_str),
            StatusCode::OK,
        ),
        Err(refusal) => *refusal,
    }
}

fn file_response(file: &StoredFile, fields: Option<&str>, status: StatusCode) -> Response {
    match partial(&file_json(file), fields, "File", FILE_DEFAULT) {
        Ok(body) => respond(status, body),
        Err(refusal) => *refusal,
    }
}

async fn upload(
    State(state): Shared,
    headers: HeaderMap,
    Query(params): Params,
    body: Bytes,
) -> Response {
    let mut s = lock(&state);
    let owner = match admit(&mut s, &headers, Cost::Modify) {
        Ok(owner) => owner,
        Err(refusal) => return *refusal,
    };
    let fields = params.get("fields").map(String::as_str);
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    match params.get("uploadType").map(String::as_str) {
        Some("multipart") => {
            let Some((metadata, media_type, content)) = parse_multipart(&content_type, &body)
            else {
                return bad_request("Malformed multipart body.", Some(("other", "multipart")));
            };
            match store(
                &mut s,
                &owner,
                &metadata,
                content,
                media_type.as_deref(),
                "multipart",
            ) {
                Ok(file) => file_response(&file, fields, StatusCode::OK),
                Err(refusal) => *refusal,
            }
        }
        Some("media") => {
            let media = (!content_type.is_empty()).then_some(content_type.as_str());
            match store(&mut s, &owner, &json!({}), body.to_vec(), media, "media") {
                Ok(file) => file_response(&file, fields, StatusCode::OK),
                Err(refusal) => *refusal,
            }
        }
        Some("resumable") => {
            let metadata: Value = if body.is_empty() {
                json!({})
            } else {
                match serde_json::from_slice(&body) {
                    Ok(v) => v,
                    Err(_) => return bad_request("Invalid JSON payload received.", None),
                }
            };
            let total = headers
                .get("x-upload-content-length")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            let media_type = headers
                .get("x-upload-content-type")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            s.ids_issued += 1;
            let upload_id = format!(
                "ADPyc{}",
                URL_SAFE_NO_PAD.encode(mix(s.config.seed, &[s.ids_issued, 0x5E]).to_be_bytes())
            );
            s.sessions.insert(
                upload_id.clone(),
                Session {
                    info: UploadSession {
                        upload_id: upload_id.clone(),
                        persisted: 0,
                        total,
                        file_id: None,
                        expired: false,
                    },
                    metadata,
                    content_type: media_type,
                    fields: fields.map(str::to_owned),
                    owner,
                    bytes: Vec::new(),
                },
            );
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("127.0.0.1");
            let location = format!(
                "http://{host}/upload/drive/v3/files?uploadType=resumable&upload_id={upload_id}"
            );
            let mut response = StatusCode::OK.into_response();
            if let Ok(value) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, value);
            }
            response
        }
        _ => invalid_param("uploadType"),
    }
}

/// Splits a `multipart/related` body into (metadata JSON, media type, content).
fn parse_multipart(content_type: &str, body: &[u8]) -> Option<(Value, Option<String>, Vec<u8>)> {
    let boundary = content_type
        .split(';')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("boundary="))?
        .trim_matches('"');
    if !content_type.trim_start().starts_with("multipart/") {
        return None;
    }
    let delimiter = format!("--{boundary}").into_bytes();
    let positions: Vec<usize> = body
        .windows(delimiter.len())
        .enumerate()
        .filter(|(_, w)| *w == delimiter.as_slice())
        .map(|(i, _)| i)
        .collect();
    let mut parts = Vec::new();
    for pair in positions.windows(2) {
        let mut start = pair[0] + delimiter.len();
        // Skip the line break after the delimiter.
        if body.get(start..start + 2) == Some(b"\r\n") {
            start += 2;
        } else if body.get(start) == Some(&b'\n') {
            start += 1;
        }
        let mut end = pair[1];
        // Drop the line break before the next delimiter.
        if end >= 2 && &body[end - 2..end] == b"\r\n" {
            end -= 2;
        } else if end >= 1 && body[end - 1] == b'\n' {
            end -= 1;
        }
        let part = body.get(start..end)?;
        let (head_len, sep_len) = find(part, b"\r\n\r\n")
            .map(|i| (i, 4))
            .or_else(|| find(part, b"\n\n").map(|i| (i, 2)))?;
        let head = String::from_utf8_lossy(&part[..head_len]).to_string();
        let media_type = head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_owned())
        });
        parts.push((media_type, part[head_len + sep_len..].to_vec()));
    }
    // The closing delimiter must be there.
    let last = *positions.last()?;
    if body.get(last + delimiter.len()..last + delimiter.len() + 2) != Some(b"--") {
        return None;
    }
    let mut parts = parts.into_iter();
    let (_, metadata) = parts.next()?;
    let metadata: Value = serde_json::from_slice(&metadata).ok()?;
    let (media_type, content) = parts.next()?;
    Some((metadata, media_type, content))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `Content-Range` of a resumable PUT.
#[derive(Debug, PartialEq)]
enum ContentRange {
    /// `bytes */total` or `bytes */*`: a status query.
    Query(Option<u64>),
    /// `bytes first-last/total` (total `None` for `*`).
    Chunk {
        first: u64,
        last: u64,
        total: Option<u64>,
    },
}

fn parse_content_range(value: &str) -> Option<ContentRange> {
    let spec = value.trim().strip_prefix("bytes")?.trim();
    let (range, total) = spec.split_once('/')?;
    let total = match total.trim() {
        "*" => None,
        n => Some(n.parse().ok()?),
    };
    if range.trim() == "*" {
        return Some(ContentRange::Query(total));
    }
    let (first, last) = range.split_once('-')?;
    let (first, last): (u64, u64) = (first.trim().parse().ok()?, last.trim().parse().ok()?);
    (first <= last).then_some(ContentRange::Chunk { first, last, total })
}

/// `308 Resume Incomplete`, with `Range` when something is persisted.
fn resume_incomplete(persisted: u64) -> Response {
    let mut response = StatusCode::PERMANENT_REDIRECT.into_response();
    if persisted > 0
        && let Ok(value) = HeaderValue::from_str(&format!("bytes=0-{}", persisted - 1))
    {
        response.headers_mut().insert(header::RANGE, value);
    }
    response
}

async fn upload_chunk(
    State(state): Shared,
    headers: HeaderMap,
    Query(params): Params,
    body: Body,
) -> Response {
    let Some(upload_id) = params.get("upload_id").cloned() else {
        return invalid_param("upload_id");
    };
    {
        let mut s = lock(&state);
        // The session URI is itself the credential ([I]); a token, when sent, must be valid.
        if headers.contains_key(header::AUTHORIZATION)
            && let Err(refusal) = admit(&mut s, &headers, Cost::Modify)
        {
            return *refusal;
        }
        match s.sessions.get(&upload_id) {
            Some(session) if !session.info.expired => {}
            _ => {
                return drive_error(
                    StatusCode::NOT_FOUND,
                    "global",
                    "notFound",
                    "Upload session not found or expired. Start a new upload.",
                    None,
                );
            }
        }
    }
    let range = match headers.get(header::CONTENT_RANGE).map(|v| v.to_str()) {
        None => None,
        Some(Ok(v)) => match parse_content_range(v) {
            Some(range) => Some(range),
            None => return bad_request("Failed to parse Content-Range header.", None),
        },
        Some(Err(_)) => return bad_request("Failed to parse Content-Range header.", None),
    };
    // Read the body as it comes, keeping what arrived if the connection breaks off.
    let mut received = Vec::new();
    let mut broken = false;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => received.extend_from_slice(&bytes),
            Err(_) => {
                broken = true;
                break;
            }
        }
    }
    let mut s = lock(&state);
    let granularity = s.config.enforce_chunk_granularity;
    let Some(session) = s.sessions.get_mut(&upload_id) else {
        return file_not_found(&upload_id);
    };
    if let Some(file_id) = session.info.file_id.clone() {
        // Completed already: any PUT (status query or repeat) answers with the file.
        let fields = session.fields.clone();
        return match s.files.get(&file_id) {
            Some(file) => file_response(file, fields.as_deref(), StatusCode::OK),
            None => file_not_found(&file_id),
        };
    }
    let persisted = session.info.persisted;
    let (first, total) = match range {
        Some(ContentRange::Query(total)) => {
            if session.info.total.is_none() {
                session.info.total = total;
            }
            return resume_incomplete(persisted);
        }
        None => (0, Some(received.len() as u64)),
        Some(ContentRange::Chunk { first, last, total }) => {
            if !broken && last - first + 1 != received.len() as u64 {
                return bad_request(
                    "The Content-Range header does not match the length of the body.",
                    None,
                );
            }
            (first, total)
        }
    };
    if first > persisted {
        return bad_request(
            &format!(
                "Invalid request. According to the Content-Range header, the upload offset is {first} byte(s), which exceeds already uploaded size of {persisted} byte(s)."
            ),
            None,
        );
    }
    if total.is_some() {
        session.info.total = total;
    }
    // Skip bytes already persisted (a resend that overlaps).
    let overlap = (persisted - first) as usize;
    let fresh = received.get(overlap..).unwrap_or_default();
    let end = persisted + fresh.len() as u64;
    let complete = !broken && session.info.total == Some(end);
    let keep = if complete || !granularity {
        fresh.len() as u64
    } else {
        // Non-final or broken chunk: whole 256 KiB blocks only.
        (end / CHUNK_GRANULARITY * CHUNK_GRANULARITY).saturating_sub(persisted)
    };
    session
        .bytes
        .extend_from_slice(&fresh[..keep.min(fresh.len() as u64) as usize]);
    session.info.persisted = session.bytes.len() as u64;
    if broken {
        return bad_request("The upload was interrupted.", None);
    }
    if !complete {
        return resume_incomplete(session.info.persisted);
    }
    let metadata = session.metadata.clone();
    let media_type = session.content_type.clone();
    let owner = session.owner.clone();
    let fields = session.fields.clone();
    let content = std::mem::take(&mut session.bytes);
    match store(
        &mut s,
        &owner,
        &metadata,
        content,
        media_type.as_deref(),
        "resumable",
    ) {
        Ok(file) => {
            if let Some(session) = s.sessions.get_mut(&upload_id) {
                session.info.file_id = Some(file.id.clone());
            }
            file_response(&file, fields.as_deref(), StatusCode::OK)
        }
        Err(refusal) => *refusal,
    }
}

// ---------------------------------------------------------------------------------------------
// files.get / delete / list / generateIds, permissions.create

async fn get_file(
    State(state): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(params): Params,
) -> Response {
    let mut s = lock(&state);
    if let Err(refusal) = admit(&mut s, &headers, Cost::Read) {
        return *refusal;
    }
    let Some(file) = s.files.get(&id) else {
        return file_not_found(&id);
    };
    if params.get("alt").map(String::as_str) == Some("media") {
        let mut response = (StatusCode::OK, file.content.clone()).into_response();
        if let Ok(value) = HeaderValue::from_str(&file.mime_type) {
            response.headers_mut().insert(header::CONTENT_TYPE, value);
        }
        return response;
    }
    file_response(
        file,
        params.get("fields").map(String::as_str),
        StatusCode::OK,
    )
}

async fn delete_file(State(state): Shared, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let mut s = lock(&state);
    if let Err(refusal) = admit(&mut s, &headers, Cost::Modify) {
        return *refusal;
    }
    if s.files.remove(&id).is_none() {
        return file_not_found(&id);
    }
    s.order.retain(|f| *f != id);
    StatusCode::NO_CONTENT.into_response()
}

async fn generate_ids(State(state): Shared, headers: HeaderMap, Query(params): Params) -> Response {
    let mut s = lock(&state);
    if let Err(refusal) = admit(&mut s, &headers, Cost::Read) {
        return *refusal;
    }
    let count = match params.get("count").map(|c| c.parse::<u32>()) {
        None => 10,
        Some(Ok(n)) if (1..=1000).contains(&n) => n,
        Some(_) => return invalid_param("count"),
    };
    let ids: Vec<String> = (0..count).map(|_| new_id(&mut s)).collect();
    respond(
        StatusCode::OK,
        json!({"kind": "drive#generatedIds", "space": "drive", "ids": ids}),
    )
}

async fn create_permission(
    State(state): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(params): Params,
    body: Bytes,
) -> Response {
    let mut s = lock(&state);
    if let Err(refusal) = admit(&mut s, &headers, Cost::Modify) {
        return *refusal;
    }
    if !s.files.contains_key(&id) {
        return file_not_found(&id);
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return bad_request("Invalid JSON payload received.", None);
    };
    let role = request.get("role").and_then(Value::as_str).unwrap_or("");
    let kind = request.get("type").and_then(Value::as_str).unwrap_or("");
    let roles = [
        "owner",
        "organizer",
        "fileOrganizer",
        "writer",
        "commenter",
        "reader",
    ];
    if role.is_empty() {
        return drive_error(
            StatusCode::BAD_REQUEST,
            "global",
            "required",
            "Required: permission.role",
            Some(("other", "permission.role")),
        );
    }
    if !roles.contains(&role) {
        return drive_error(
            StatusCode::BAD_REQUEST,
            "global",
            "invalid",
            "Invalid permission role.",
            Some(("other", "permission.role")),
        );
    }
    let permission = match kind {
        "anyone" => {
            if s.config.forbid_anyone_permissions {
                return drive_error(
                    StatusCode::FORBIDDEN,
                    "global",
                    "publishOutNotPermitted",
                    "Permission creation failed: the domain policy does not allow sharing with anyone.",
                    None,
                );
            }
            json!({
                "kind": "drive#permission", "id": "anyoneWithLink", "type": "anyone", "role": role,
                "allowFileDiscovery": request.get("allowFileDiscovery").and_then(Value::as_bool).unwrap_or(false),
            })
        }
        "user" | "group" => {
            let Some(email) = request.get("emailAddress").and_then(Value::as_str) else {
                return drive_error(
                    StatusCode::BAD_REQUEST,
                    "global",
                    "required",
                    "Required: permission.emailAddress",
                    Some(("other", "permission.emailAddress")),
                );
            };
            json!({"kind": "drive#permission", "id": format!("{:020}", mix(0, &[super::hash_str(email)])), "type": kind, "role": role, "emailAddress": email})
        }
        "domain" => {
            let domain = request.get("domain").and_then(Value::as_str).unwrap_or("");
            json!({"kind": "drive#permission", "id": format!("domain-{domain}"), "type": "domain", "role": role, "domain": domain})
        }
        _ => {
            return drive_error(
                StatusCode::BAD_REQUEST,
                "global",
                "invalid",
                "Invalid permission type.",
                Some(("other", "permission.type")),
            );
        }
    };
    if let Some(file) = s.files.get_mut(&id) {
        file.permissions
            .retain(|p| p.get("id") != permission.get("id"));
        file.permissions.push(permission.clone());
    }
    match partial(
        &permission,
        params.get("fields").map(String::as_str),
        "Permission",
        PERMISSION_DEFAULT,
    ) {
        Ok(body) => respond(StatusCode::OK, body),
        Err(refusal) => *refusal,
    }
}

async fn list_files(State(state): Shared, headers: HeaderMap, Query(params): Params) -> Response {
    let mut s = lock(&state);
    if let Err(refusal) = admit(&mut s, &headers, Cost::List) {
        return *refusal;
    }
    let filter = match params.get("q") {
        None => Vec::new(),
        Some(q) => match parse_query(q) {
            Some(terms) => terms,
            None => return invalid_param("q"),
        },
    };
    let page_size = match params.get("pageSize").map(|p| p.parse::<usize>()) {
        None => 100,
        Some(Ok(n)) if (1..=1000).contains(&n) => n,
        Some(_) => return invalid_param("pageSize"),
    };
    let start = match params.get("pageToken") {
        None => 0,
        Some(token) => match URL_SAFE_NO_PAD
            .decode(token)
            .ok()
            .and_then(|raw| String::from_utf8(raw).ok())
            .and_then(|t| t.strip_prefix("page:")?.parse::<usize>().ok())
        {
            Some(n) => n,
            None => return invalid_param("pageToken"),
        },
    };
    let now = Instant::now();
    let matching: Vec<&StoredFile> = s
        .order
        .iter()
        .filter_map(|id| s.files.get(id))
        .filter(|f| f.visible_at <= now && filter.iter().all(|t| t.matches(f)))
        .collect();
    let files: Vec<Value> = matching
        .iter()
        .skip(start)
        .take(page_size)
        .map(|f| file_json(f))
        .collect();
    let mut body = json!({"kind": "drive#fileList", "incompleteSearch": false, "files": files});
    if start + page_size < matching.len() {
        body["nextPageToken"] =
            json!(URL_SAFE_NO_PAD.encode(format!("page:{}", start + page_size)));
    }
    match partial(
        &body,
        params.get("fields").map(String::as_str),
        "FileList",
        LIST_DEFAULT,
    ) {
        Ok(body) => respond(StatusCode::OK, body),
        Err(refusal) => *refusal,
    }
}

/// One term of the supported `q` subset.
#[derive(Debug, PartialEq)]
enum Term {
    AppProperty(String, String),
    Property(String, String),
    Trashed(bool),
    Name(String, String),
    MimeType(String, String),
    InParents(String),
}

impl Term {
    fn matches(&self, f: &StoredFile) -> bool {
        match self {
            Term::AppProperty(k, v) => f.app_properties.get(k) == Some(v),
            Term::Property(k, v) => f.properties.get(k) == Some(v),
            // Nothing is ever trashed here (delete removes).
            Term::Trashed(t) => !*t,
            Term::Name(op, v) => match op.as_str() {
                "=" => f.name == *v,
                "!=" => f.name != *v,
                _ => f.name.contains(v.as_str()),
            },
            Term::MimeType(op, v) => (f.mime_type == *v) == (op == "="),
            Term::InParents(p) => f.parents.contains(p),
        }
    }
}

#[derive(Debug, PartialEq, Clone)]
enum Token2 {
    Word(String),
    Str(String),
    Op(String),
}

fn tokenize(q: &str) -> Option<Vec<Token2>> {
    let chars: Vec<char> = q.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '\'' {
            let mut value = String::new();
            i += 1;
            loop {
                match chars.get(i)? {
                    '\\' => {
                        value.push(*chars.get(i + 1)?);
                        i += 2;
                    }
                    '\'' => {
                        i += 1;
                        break;
                    }
                    other => {
                        value.push(*other);
                        i += 1;
                    }
                }
            }
            tokens.push(Token2::Str(value));
        } else if c == '{' || c == '}' || c == '=' {
            tokens.push(Token2::Op(c.to_string()));
            i += 1;
        } else if c == '!' && chars.get(i + 1) == Some(&'=') {
            tokens.push(Token2::Op("!=".into()));
            i += 2;
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            tokens.push(Token2::Word(chars[start..i].iter().collect()));
        } else {
            return None;
        }
    }
    Some(tokens)
}

/// Parses the supported `q` subset: terms joined by `and`.
fn parse_query(q: &str) -> Option<Vec<Term>> {
    use Token2::{Op, Str, Word};
    let tokens = tokenize(q)?;
    let word =
        |t: Option<&Token2>, w: &str| matches!(t, Some(Word(x)) if x.eq_ignore_ascii_case(w));
    let mut terms = Vec::new();
    let mut i = 0;
    loop {
        let t = tokens.get(i..)?;
        let (term, used) = match t {
            [
                Word(f),
                Word(has),
                Op(open),
                Word(k),
                Op(eq1),
                Str(key),
                Word(and),
                Word(v),
                Op(eq2),
                Str(value),
                Op(close),
                ..,
            ] if (f == "appProperties" || f == "properties")
                && has == "has"
                && open == "{"
                && k == "key"
                && eq1 == "="
                && and.eq_ignore_ascii_case("and")
                && v == "value"
                && eq2 == "="
                && close == "}" =>
            {
                let term = if f == "appProperties" {
                    Term::AppProperty(key.clone(), value.clone())
                } else {
                    Term::Property(key.clone(), value.clone())
                };
                (term, 11)
            }
            [Word(f), Op(eq), Word(b), ..] if f == "trashed" && eq == "=" => {
                (Term::Trashed(b.parse().ok()?), 3)
            }
            [Word(f), Op(op), Str(v), ..] if f == "name" && (op == "=" || op == "!=") => {
                (Term::Name(op.clone(), v.clone()), 3)
            }
            [Word(f), Word(op), Str(v), ..] if f == "name" && op == "contains" => {
                (Term::Name("contains".into(), v.clone()), 3)
            }
            [Word(f), Op(op), Str(v), ..] if f == "mimeType" && (op == "=" || op == "!=") => {
                (Term::MimeType(op.clone(), v.clone()), 3)
            }
            [Str(parent), Word(in_), Word(parents), ..] if in_ == "in" && parents == "parents" => {
                (Term::InParents(parent.clone()), 3)
            }
            _ => return None,
        };
        terms.push(term);
        i += used;
        if i == tokens.len() {
            return Some(terms);
        }
        if !word(tokens.get(i), "and") {
            return None;
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_supported_query_subset() {
        let q = "appProperties has { key='idem' and value='up-1' } and trashed = false and 'folder1' in parents";
        assert_eq!(
            parse_query(q),
            Some(vec![
                Term::AppProperty("idem".into(), "up-1".into()),
                Term::Trashed(false),
                Term::InParents("folder1".into()),
            ])
        );
        assert_eq!(parse_query("fullText contains 'x'"), None);
        assert_eq!(parse_query("trashed = false and"), None);
    }

    #[test]
    fn parses_fields_selections() {
        let sel = parse_fields("nextPageToken,files(id,appProperties)").expect("parses");
        let Selection::Fields(top) = &sel else {
            panic!("expected fields")
        };
        assert!(top.contains_key("nextPageToken"));
        assert!(check_fields(&sel, "FileList").is_ok());
        assert_eq!(
            check_fields(&parse_fields("files(idd)").expect("parses"), "FileList"),
            Err("idd".into())
        );
        assert_eq!(parse_fields("files(id"), None);
    }

    #[test]
    fn parses_content_ranges() {
        assert_eq!(
            parse_content_range("bytes 0-262143/1000000"),
            Some(ContentRange::Chunk {
                first: 0,
                last: 262_143,
                total: Some(1_000_000)
            })
        );
        assert_eq!(
            parse_content_range("bytes */*"),
            Some(ContentRange::Query(None))
        );
        assert_eq!(parse_content_range("bytes 5-1/10"), None);
    }
}
