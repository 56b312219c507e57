//! The Resend simulator: `POST /emails` and `POST /emails/batch` (PROVIDERS.md §C).
//!
//! - Auth: `Authorization: Bearer <key>` against [`ResendConfig::api_keys`]; a missing header is
//!   401 `missing_api_key`, an unknown key 403 `invalid_api_key`. A request without `User-Agent`
//!   is refused 403 with Cloudflare's `error code: 1010` text, as the real edge does.
//! - Validation follows `SendEmailRequest` (`from`, `to` (string or 1–50 strings), `subject`
//!   required; tags' character set); errors use Resend's body
//!   `{"statusCode":422,"name":"validation_error","message":"..."}`.
//! - Idempotency (§C.4): keys (1–256 chars) are remembered for 24 h per team. Same key and same
//!   payload (endpoint + JSON value) replays the original response without sending; same key and
//!   another payload is 409 `invalid_idempotent_request`; same key while the first request is
//!   still being processed is 409 `concurrent_idempotent_requests`. Only successes are stored.
//! - Rate limit (§C.5): a fixed one-second window per team (or per key,
//!   [`RateLimitScope`]), default 2 req/s. Every authenticated response carries `ratelimit-limit`,
//!   `ratelimit-remaining` and `ratelimit-reset`; a 429 `rate_limit_exceeded` adds `retry-after`.
//! - Quotas (§C.3): [`ResendSim::set_quota_exceeded`] refuses admitted requests with 429
//!   `daily_quota_exceeded` / `monthly_quota_exceeded` (message \[I\]) until cleared.
//!
//! Inferred behaviour (tagged \[I\] in the contract) is configurable: batch refusing
//! `attachments`/`scheduled_at`, the error names for malformed bodies, the scope of the limit.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::fault::{FaultConfig, FaultResponder, Faults};
use super::{CallLog, SimServer, lock, uuid_like};

/// Whose requests share one rate-limit window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateLimitScope {
    /// All keys of the team share the limit (what Resend documents, \[V\]). The simulator has one
    /// team, so every configured key shares one window.
    Team,
    /// Each API key has its own window.
    ApiKey,
}

#[derive(Clone, Debug)]
pub struct ResendConfig {
    /// Bind address; `None`: `127.0.0.1:0`.
    pub bind: Option<SocketAddr>,
    /// Accepted API keys; the first is what [`ResendSim::api_key`] returns.
    pub api_keys: Vec<String>,
    /// Requests per second per scope (Resend's documented default is 2).
    pub rate_limit_per_second: u32,
    pub rate_limit_scope: RateLimitScope,
    /// Refuse requests without `User-Agent` (Resend's edge does, \[V\]).
    pub require_user_agent: bool,
    /// How long an idempotency key is remembered (24 h, \[V\]).
    pub idempotency_ttl: Duration,
    /// Emails per batch request (100, \[V\]).
    pub max_batch: usize,
    /// Batch emails may not carry `attachments` or `scheduled_at` (\[I\]).
    pub batch_forbids_attachments: bool,
    /// Time spent "sending" each request, so a test can race two requests with the same key.
    pub processing_delay: Duration,
    /// Seed of the generated email ids.
    pub seed: u64,
    pub faults: FaultConfig,
}

impl Default for ResendConfig {
    fn default() -> Self {
        Self {
            bind: None,
            api_keys: vec!["re_sim_test_key".to_owned()],
            rate_limit_per_second: 2,
            rate_limit_scope: RateLimitScope::Team,
            require_user_agent: true,
            idempotency_ttl: Duration::from_secs(24 * 3600),
            max_batch: 100,
            batch_forbids_attachments: true,
            processing_delay: Duration::ZERO,
            seed: 0,
            faults: FaultConfig::default(),
        }
    }
}

/// A sending quota the team has used up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quota {
    /// 429 `daily_quota_exceeded`.
    Daily,
    /// 429 `monthly_quota_exceeded`.
    Monthly,
}

/// One email the simulator accepted (what a real inbox would receive).
#[derive(Clone, Debug, PartialEq)]
pub struct SentEmail {
    pub id: String,
    pub from: String,
    pub to: Vec<String>,
    pub subject: String,
    pub html: Option<String>,
    pub text: Option<String>,
    /// `(name, value)` pairs.
    pub tags: Vec<(String, String)>,
    pub idempotency_key: Option<String>,
    /// Sent through `/emails/batch`.
    pub batch: bool,
    /// The request object as received.
    pub request: Value,
}

#[derive(Debug)]
enum Idem {
    InFlight {
        fingerprint: String,
    },
    Done {
        fingerprint: String,
        status: StatusCode,
        body: Value,
        at: Instant,
    },
}

#[derive(Debug)]
struct ResendState {
    config: ResendConfig,
    emails: Vec<SentEmail>,
    ids_issued: u64,
    /// (scope, window start, requests in the window)
    windows: HashMap<String, (Instant, u32)>,
    idempotency: HashMap<(String, String), Idem>,
    rate_limit_hits: u64,
    /// A used-up quota: every admitted request is refused with its 429 until cleared.
    quota_exceeded: Option<Quota>,
}

/// A running Resend simulator. Dropping it stops the server.
#[derive(Debug)]
pub struct ResendSim {
    server: SimServer,
    state: Arc<Mutex<ResendState>>,
}

impl ResendSim {
    pub async fn start(config: ResendConfig) -> std::io::Result<Self> {
        let faults = Faults::new(config.faults.clone());
        let bind = config.bind;
        let state = Arc::new(Mutex::new(ResendState {
            config,
            emails: Vec::new(),
            ids_issued: 0,
            windows: HashMap::new(),
            idempotency: HashMap::new(),
            rate_limit_hits: 0,
            quota_exceeded: None,
        }));
        let router = Router::new()
            .route("/emails", post(send_email))
            .route("/emails/batch", post(send_batch))
            .fallback(|| async {
                error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "The requested endpoint does not exist.",
                )
            })
            .method_not_allowed_fallback(|| async {
                error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "Method is not allowed for the requested path.",
                )
            })
            .with_state(state.clone());
        let server = SimServer::start(router, bind, faults, Arc::new(ResendFaults)).await?;
        Ok(Self { server, state })
    }

    /// The base URL to configure instead of `https://api.resend.com`.
    pub fn base_url(&self) -> &str {
        self.server.base_url()
    }

    /// The first configured API key.
    pub fn api_key(&self) -> String {
        lock(&self.state)
            .config
            .api_keys
            .first()
            .cloned()
            .unwrap_or_default()
    }

    /// Every email accepted so far, in order.
    pub fn emails(&self) -> Vec<SentEmail> {
        lock(&self.state).emails.clone()
    }

    /// Requests refused with 429 `rate_limit_exceeded` by the rate limiter (not by faults).
    pub fn rate_limit_hits(&self) -> u64 {
        lock(&self.state).rate_limit_hits
    }

    /// Changes the rate limit at run time.
    pub fn set_rate_limit_per_second(&self, per_second: u32) {
        lock(&self.state).config.rate_limit_per_second = per_second;
    }

    /// Uses up a sending quota (`None`: the quota reset): until then every request that passes
    /// the rate limit is refused with 429 `daily_quota_exceeded` / `monthly_quota_exceeded`.
    pub fn set_quota_exceeded(&self, quota: Option<Quota>) {
        lock(&self.state).quota_exceeded = quota;
    }

    /// Forgets every idempotency key (as if 24 h had passed).
    pub fn forget_idempotency_keys(&self) {
        lock(&self.state).idempotency.clear();
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

/// A refusal in Resend's words, turned into its error body at the edge.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    name: &'static str,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error(self.status, self.name, &self.message)
    }
}

/// Resend's error body.
fn error(status: StatusCode, name: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"statusCode": status.as_u16(), "name": name, "message": message})),
    )
        .into_response()
}

struct ResendFaults;

impl FaultResponder for ResendFaults {
    fn server_error(&self, status: StatusCode) -> Response {
        let name = if status == StatusCode::INTERNAL_SERVER_ERROR {
            "application_error"
        } else {
            "internal_server_error"
        };
        error(
            status,
            name,
            "An unexpected error occurred, please try again later.",
        )
    }

    fn too_many_requests(&self) -> Response {
        let mut response = error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_exceeded",
            "Too many requests. You can only make 2 requests per second. See rate limit response headers for more information. Or contact support to increase rate limit.",
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        response
    }

    fn throttled(&self) -> Response {
        self.too_many_requests()
    }
}

/// The rate-limit headers every admitted request's answer carries.
type RateHeaders = Vec<(&'static str, HeaderValue)>;

async fn send_email(
    State(state): State<Arc<Mutex<ResendState>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(state, headers, body, false).await
}

async fn send_batch(
    State(state): State<Arc<Mutex<ResendState>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(state, headers, body, true).await
}

async fn handle(
    state: Arc<Mutex<ResendState>>,
    headers: HeaderMap,
    body: Bytes,
    batch: bool,
) -> Response {
    let (key, rate_headers) = match admit(&state, &headers) {
        Ok(admitted) => admitted,
        Err(response) => return *response,
    };
    let mut response = process(&state, &headers, &body, batch, &key).await;
    for (name, value) in rate_headers {
        response.headers_mut().insert(name, value);
    }
    response
}

/// User-Agent, API key and rate limit. Returns the API key and the rate-limit headers.
fn admit(
    state: &Mutex<ResendState>,
    headers: &HeaderMap,
) -> Result<(String, RateHeaders), Box<Response>> {
    let mut state = lock(state);
    if state.config.require_user_agent && !headers.contains_key(header::USER_AGENT) {
        return Err(Box::new(
            (StatusCode::FORBIDDEN, "error code: 1010").into_response(),
        ));
    }
    let Some(auth) = headers.get(header::AUTHORIZATION) else {
        return Err(Box::new(error(
            StatusCode::UNAUTHORIZED,
            "missing_api_key",
            "Missing API key in the authorization header. Include the following header in the request: Authorization: Bearer YOUR_API_KEY.",
        )));
    };
    let key = auth
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default()
        .to_owned();
    if !state.config.api_keys.contains(&key) {
        return Err(Box::new(error(
            StatusCode::FORBIDDEN,
            "invalid_api_key",
            "API key is invalid",
        )));
    }
    let scope = match state.config.rate_limit_scope {
        RateLimitScope::Team => "team".to_owned(),
        RateLimitScope::ApiKey => key.clone(),
    };
    let limit = state.config.rate_limit_per_second;
    let now = Instant::now();
    let window = state.windows.entry(scope).or_insert((now, 0));
    if now.duration_since(window.0) >= Duration::from_secs(1) {
        *window = (now, 0);
    }
    let reset = Duration::from_secs(1).saturating_sub(now.duration_since(window.0));
    let reset_secs = reset.as_secs_f64().ceil().max(1.0) as u64;
    let over = window.1 >= limit;
    if !over {
        window.1 += 1;
    }
    let remaining = limit.saturating_sub(window.1);
    let mut rate_headers = vec![
        ("ratelimit-limit", HeaderValue::from(limit)),
        ("ratelimit-remaining", HeaderValue::from(remaining)),
        ("ratelimit-reset", HeaderValue::from(reset_secs)),
    ];
    if over {
        state.rate_limit_hits += 1;
        rate_headers.push(("retry-after", HeaderValue::from(reset_secs)));
        let mut response = error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_exceeded",
            &format!(
                "Too many requests. You can only make {limit} requests per second. See rate limit response headers for more information. Or contact support to increase rate limit."
            ),
        );
        for (name, value) in rate_headers {
            response.headers_mut().insert(name, value);
        }
        return Err(Box::new(response));
    }
    if let Some(quota) = state.quota_exceeded {
        let (name, period) = match quota {
            Quota::Daily => ("daily_quota_exceeded", "daily"),
            Quota::Monthly => ("monthly_quota_exceeded", "monthly"),
        };
        let mut response = error(
            StatusCode::TOO_MANY_REQUESTS,
            name,
            &format!("You have reached your {period} email sending quota."),
        );
        for (name, value) in rate_headers {
            response.headers_mut().insert(name, value);
        }
        return Err(Box::new(response));
    }
    Ok((key, rate_headers))
}

async fn process(
    state: &Arc<Mutex<ResendState>>,
    headers: &HeaderMap,
    body: &[u8],
    batch: bool,
    api_key: &str,
) -> Response {
    let idempotency_key = match headers.get("idempotency-key") {
        None => None,
        Some(value) => match value.to_str() {
            Ok(k) if (1..=256).contains(&k.len()) => Some(k.to_owned()),
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_idempotency_key",
                    "The key must be between 1-256 chars.",
                );
            }
        },
    };
    let Ok(payload) = serde_json::from_slice::<Value>(body) else {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_error",
            "Invalid JSON in the request body.",
        );
    };
    let scope = {
        let s = lock(state);
        match s.config.rate_limit_scope {
            RateLimitScope::Team => "team".to_owned(),
            RateLimitScope::ApiKey => api_key.to_owned(),
        }
    };
    let fingerprint = format!("{}:{}", if batch { "batch" } else { "single" }, payload);
    if let Some(key) = &idempotency_key {
        let mut s = lock(state);
        let ttl = s.config.idempotency_ttl;
        let slot = (scope.clone(), key.clone());
        match s.idempotency.get(&slot) {
            Some(Idem::Done { at, .. }) if at.elapsed() >= ttl => {
                s.idempotency.remove(&slot);
            }
            Some(Idem::Done {
                fingerprint: original,
                status,
                body,
                ..
            }) => {
                if *original == fingerprint {
                    return (*status, axum::Json(body.clone())).into_response();
                }
                return error(
                    StatusCode::CONFLICT,
                    "invalid_idempotent_request",
                    "Same idempotency key used with a different request payload. Change your idempotency key or payload.",
                );
            }
            Some(Idem::InFlight {
                fingerprint: original,
            }) => {
                if *original != fingerprint {
                    return error(
                        StatusCode::CONFLICT,
                        "invalid_idempotent_request",
                        "Same idempotency key used with a different request payload. Change your idempotency key or payload.",
                    );
                }
                return error(
                    StatusCode::CONFLICT,
                    "concurrent_idempotent_requests",
                    "Same idempotency key used while original request is still in progress. Try the request again later.",
                );
            }
            None => {}
        }
        s.idempotency.insert(
            slot,
            Idem::InFlight {
                fingerprint: fingerprint.clone(),
            },
        );
    }

    let delay = lock(state).config.processing_delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    let mut s = lock(state);
    let outcome = if batch {
        send_many(&mut s, &payload, headers, idempotency_key.as_deref())
    } else {
        validate(&payload, false, true)
            .map(|()| json!({"id": accept(&mut s, &payload, idempotency_key.as_deref(), false)}))
    };
    match outcome {
        Ok(body) => {
            if let Some(key) = idempotency_key {
                s.idempotency.insert(
                    (scope, key),
                    Idem::Done {
                        fingerprint,
                        status: StatusCode::OK,
                        body: body.clone(),
                        at: Instant::now(),
                    },
                );
            }
            (StatusCode::OK, axum::Json(body)).into_response()
        }
        Err(refused) => {
            if let Some(key) = idempotency_key {
                s.idempotency.remove(&(scope, key));
            }
            refused.into_response()
        }
    }
}

fn send_many(
    s: &mut ResendState,
    payload: &Value,
    headers: &HeaderMap,
    idempotency_key: Option<&str>,
) -> Result<Value, ApiError> {
    let Some(items) = payload.as_array() else {
        return Err(invalid(
            "validation_error",
            "The request body must be an array of emails.".to_owned(),
        ));
    };
    if items.is_empty() || items.len() > s.config.max_batch {
        return Err(invalid(
            "validation_error",
            format!(
                "The batch must contain between 1 and {} emails.",
                s.config.max_batch
            ),
        ));
    }
    let permissive = headers
        .get("x-batch-validation")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("permissive"));
    let forbid = s.config.batch_forbids_attachments;
    let mut checks: Vec<Result<(), ApiError>> = items
        .iter()
        .map(|item| validate(item, true, !forbid))
        .collect();
    if !permissive {
        // Strict: one invalid email fails the whole batch, and nothing is sent.
        if let Some(at) = checks.iter().position(Result::is_err) {
            return checks.swap_remove(at).map(|()| Value::Null);
        }
    }
    let mut data = Vec::new();
    let mut errors = Vec::new();
    for (index, (item, check)) in items.iter().zip(checks).enumerate() {
        match check {
            Ok(()) => data.push(json!({"id": accept(s, item, idempotency_key, true)})),
            Err(refused) => errors.push(json!({"index": index, "message": refused.message})),
        }
    }
    if permissive {
        Ok(json!({"data": data, "errors": errors}))
    } else {
        Ok(json!({"data": data}))
    }
}

fn invalid(name: &'static str, message: String) -> ApiError {
    ApiError {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        name,
        message,
    }
}

fn accept(
    s: &mut ResendState,
    request: &Value,
    idempotency_key: Option<&str>,
    batch: bool,
) -> String {
    s.ids_issued += 1;
    let id = uuid_like(s.config.seed, s.ids_issued);
    let strings = |v: Option<&Value>| -> Vec<String> {
        match v {
            Some(Value::String(one)) => vec![one.clone()],
            Some(Value::Array(many)) => many
                .iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        }
    };
    let text = |field: &str| {
        request
            .get(field)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let tags = request
        .get("tags")
        .and_then(Value::as_array)
        .map(|tags| {
            tags.iter()
                .map(|t| {
                    let part = |k: &str| t.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
                    (part("name"), part("value"))
                })
                .collect()
        })
        .unwrap_or_default();
    s.emails.push(SentEmail {
        id: id.clone(),
        from: text("from").unwrap_or_default(),
        to: strings(request.get("to")),
        subject: text("subject").unwrap_or_default(),
        html: text("html"),
        text: text("text"),
        tags,
        idempotency_key: idempotency_key.map(str::to_owned),
        batch,
        request: request.clone(),
    });
    id
}

/// Checks one `SendEmailRequest`.
fn validate(email: &Value, batch: bool, allow_attachments: bool) -> Result<(), ApiError> {
    let Some(obj) = email.as_object() else {
        return Err(invalid(
            "validation_error",
            "The email must be a JSON object.".to_owned(),
        ));
    };
    for field in ["from", "to", "subject"] {
        if obj.get(field).is_none_or(Value::is_null) {
            return Err(invalid(
                "missing_required_field",
                format!("Missing `{field}` field."),
            ));
        }
    }
    let from = obj.get("from").and_then(Value::as_str);
    match from {
        None => {
            return Err(invalid(
                "validation_error",
                "The `from` field must be a `string`.".to_owned(),
            ));
        }
        Some(from) if !is_address(from) => {
            return Err(invalid(
                "invalid_from_address",
                "Invalid `from` field. The email address needs to follow the `email@example.com` or `Name <email@example.com>` format.".to_owned(),
            ));
        }
        Some(_) => {}
    }
    if obj.get("subject").and_then(Value::as_str).is_none() {
        return Err(invalid(
            "validation_error",
            "The `subject` field must be a `string`.".to_owned(),
        ));
    }
    for field in ["to", "cc", "bcc", "reply_to"] {
        let Some(value) = obj.get(field) else {
            continue;
        };
        let addresses: Vec<&str> = match value {
            Value::String(one) => vec![one.as_str()],
            Value::Array(many) if !many.is_empty() && many.iter().all(Value::is_string) => {
                many.iter().filter_map(Value::as_str).collect()
            }
            _ => {
                return Err(invalid(
                    "validation_error",
                    format!("The `{field}` field must be a `string` or an array of strings."),
                ));
            }
        };
        if field == "to" && addresses.len() > 50 {
            return Err(invalid(
                "validation_error",
                "The `to` field must contain at most 50 addresses.".to_owned(),
            ));
        }
        if let Some(bad) = addresses.iter().find(|a| !is_address(a)) {
            return Err(invalid(
                "validation_error",
                format!(
                    "Invalid `{field}` field. The email address needs to follow the `email@example.com` or `Name <email@example.com>` format. Received: {bad}"
                ),
            ));
        }
    }
    for field in ["html", "text", "scheduled_at", "topic_id"] {
        if obj.get(field).is_some_and(|v| !v.is_string()) {
            return Err(invalid(
                "validation_error",
                format!("The `{field}` field must be a `string`."),
            ));
        }
    }
    if batch && !allow_attachments {
        for field in ["attachments", "scheduled_at"] {
            if obj.contains_key(field) {
                return Err(invalid(
                    "validation_error",
                    format!("The `{field}` field is not supported in batch emails."),
                ));
            }
        }
    }
    if let Some(tags) = obj.get("tags") {
        let ok = tags.as_array().is_some_and(|tags| {
            tags.iter().all(|t| {
                ["name", "value"].iter().all(|k| {
                    t.get(k).and_then(Value::as_str).is_some_and(|s| {
                        !s.is_empty()
                            && s.len() <= 256
                            && s.chars()
                                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                    })
                })
            })
        });
        if !ok {
            return Err(invalid(
                "validation_error",
                "Tags should only contain ASCII letters, numbers, underscores, or dashes, and at most 256 characters.".to_owned(),
            ));
        }
    }
    if let Some(attachments) = obj.get("attachments") {
        let ok = attachments.as_array().is_some_and(|list| {
            list.iter().all(|a| {
                a.get("content").is_some_and(Value::is_string)
                    || a.get("path").is_some_and(Value::is_string)
            })
        });
        if !ok {
            return Err(invalid(
                "invalid_attachment",
                "Attachment must have either a `content` or `path`.".to_owned(),
            ));
        }
    }
    Ok(())
}

/// `a@b.c` or `Name <a@b.c>`.
fn is_address(value: &str) -> bool {
    let value = value.trim();
    let address = match (value.find('<'), value.ends_with('>')) {
        (Some(open), true) => &value[open + 1..value.len() - 1],
        (None, false) => value,
        _ => return false,
    };
    let mut parts = address.split('@');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(local), Some(domain), None) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !address.contains(char::is_whitespace)
        }
        _ => false,
    }
}
