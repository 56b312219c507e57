//! `/v1/*`: the programmatic surface for the web app, other services and operators' scripts.
//! Every route takes a bearer token ([`ApiCaller`](crate::auth::ApiCaller)) and checks its scope
//! before reading the body, so a caller learns nothing without the right credentials:
//!
//! - [`jobs`]: `POST /v1/jobs` enqueues any registered kind (scope `jobs:write`);
//! - [`emails`]: `POST /v1/emails` asks for a templated email (scope `emails:send`);
//! - [`admin`]: `/v1/admin/*`, the operators' operations (`admin:read` to look, `admin:write` to
//!   act), over `queue::admin` / `queue::admin_query` like the dashboard and the CLI;
//! - [`openapi`]: `GET /v1/openapi.json`, the spec of all of the above (unauthenticated: it
//!   describes the API, it holds no data).
//!
//! [`ROUTES`] is the one list the router is built from; a test checks the spec documents each.
//! Bad input is a 4xx naming what was wrong (`{"error": ...}`), before anything is stored.

pub mod admin;
pub mod emails;
pub mod jobs;
pub mod openapi;

use std::sync::LazyLock;

use axum::Router;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;

use super::HttpState;
use super::error::ApiError;
use crate::jobs::AppState;
use crate::queue::{EnqueueError, Registry};

/// Declares every `/v1` route once: the router and [`ROUTES`] both come from this list.
macro_rules! api_routes {
    ($($method:ident $path:literal => $handler:path;)*) => {
        /// Every `/v1` route as (method, path), in the router's path syntax.
        pub const ROUTES: &[(&str, &str)] = &[$((stringify!($method), $path)),*];

        /// The `/v1` surface; a request body past `body_limit` bytes (`[http] body_limit`) is
        /// refused with 413 before it is parsed.
        pub fn router(body_limit: usize) -> Router<HttpState> {
            Router::new()$(.route($path, axum::routing::$method($handler)))*
                .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        }
    };
}

api_routes! {
    post "/v1/jobs" => jobs::enqueue;
    post "/v1/emails" => emails::send;
    get "/v1/admin/jobs" => admin::list_jobs;
    post "/v1/admin/jobs/bulk" => admin::bulk;
    get "/v1/admin/bulk-actions" => admin::list_bulk_actions;
    get "/v1/admin/bulk-actions/{id}" => admin::get_bulk_action;
    post "/v1/admin/bulk-actions/{id}/stop" => admin::stop_bulk_action;
    get "/v1/admin/jobs/{id}" => admin::get_job;
    delete "/v1/admin/jobs/{id}" => admin::delete_job;
    post "/v1/admin/jobs/{id}/retry" => admin::retry_job;
    post "/v1/admin/jobs/{id}/cancel" => admin::cancel_job;
    get "/v1/admin/counts" => admin::counts;
    get "/v1/admin/queues" => admin::list_queues;
    post "/v1/admin/queues/{name}/pause" => admin::pause_queue;
    post "/v1/admin/queues/{name}/resume" => admin::resume_queue;
    get "/v1/admin/nodes" => admin::list_nodes;
    get "/v1/admin/schedules" => admin::list_schedules;
    post "/v1/admin/schedules/{name}/run" => admin::run_schedule;
    post "/v1/admin/stripe/events/{id}/replay" => admin::replay_stripe_event;
    get "/v1/openapi.json" => openapi::spec;
}

/// The kinds this binary runs, for validating what callers enqueue.
pub(crate) fn registry() -> &'static Registry<AppState> {
    static REGISTRY: LazyLock<Registry<AppState>> = LazyLock::new(crate::jobs::registry);
    &REGISTRY
}

/// The most of a caller's text an error answer repeats.
const SHOWN_CHARS: usize = 64;

/// `value` as an error answer repeats it: its first [`SHOWN_CHARS`] characters, then `…`, so a
/// megabyte of input is not echoed back whole.
pub(crate) fn shown(value: &str) -> String {
    match value.char_indices().nth(SHOWN_CHARS) {
        Some((cut, _)) => format!("{}…", &value[..cut]),
        None => value.to_owned(),
    }
}

/// A parser's message with every part it quotes (between backticks or double quotes: serde names
/// an unknown field or variant, or a value of the wrong type, that way) [`shown`] shortened, and
/// any other word longer than that too (the path to a field is given unquoted).
pub(crate) fn shorten_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(1024));
    let mut quote: Option<char> = None;
    let mut quoted = String::new();
    for c in message.chars() {
        match quote {
            Some(q) if c == q => {
                out.push_str(&shown(&quoted));
                out.push(c);
                quoted.clear();
                quote = None;
            }
            Some(_) => quoted.push(c),
            None => {
                out.push(c);
                if c == '`' || c == '"' {
                    quote = Some(c);
                }
            }
        }
    }
    out.push_str(&shown(&quoted));
    // Words twice as long (a quoted part already shortened stays as it is).
    out.split(' ')
        .map(|word| match word.char_indices().nth(2 * SHOWN_CHARS) {
            Some(_) => shown(word),
            None => word.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A JSON body that could not be read: 422 naming the field when it did not fit, else 400/413.
/// What the parser quotes from the body is shortened ([`shorten_quoted`]).
pub(crate) fn json_error(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::JsonDataError(e) => ApiError::Unprocessable(shorten_quoted(&e.body_text())),
        JsonRejection::JsonSyntaxError(e) => ApiError::BadRequest(shorten_quoted(&e.body_text())),
        JsonRejection::MissingJsonContentType(_) => ApiError::BadRequest(
            "expected a JSON body with `Content-Type: application/json`".into(),
        ),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
        other => ApiError::BadRequest(shorten_quoted(&other.body_text())),
    }
}

/// Query parameters that do not fit: 422 naming the parameter (what it quotes shortened).
pub(crate) fn query_error(rejection: QueryRejection) -> ApiError {
    ApiError::Unprocessable(shorten_quoted(&rejection.body_text()))
}

/// A path segment that does not fit (e.g. a job id that is not a number).
pub(crate) fn path_error(rejection: PathRejection) -> ApiError {
    ApiError::BadRequest(rejection.body_text())
}

/// What an enqueue refused, for the caller; database trouble stays ours.
pub(crate) fn enqueue_error(error: EnqueueError) -> ApiError {
    match error {
        EnqueueError::Database(e) => e.into(),
        other => ApiError::Unprocessable(other.to_string()),
    }
}

/// A name-like value (queue, tag, key): 1 to `max` characters, no control characters.
pub(crate) fn check_text(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.trim().is_empty() {
        return Err(ApiError::Unprocessable(format!(
            "`{field}` must not be empty"
        )));
    }
    if value.chars().count() > max {
        return Err(ApiError::Unprocessable(format!(
            "`{field}` must be at most {max} characters"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(ApiError::Unprocessable(format!(
            "`{field}` must not contain control characters"
        )));
    }
    Ok(())
}

/// PostgreSQL cannot store U+0000 in text or jsonb: refused up front (422) instead of failing in
/// the database (500). Checks every string and key of `value`.
pub(crate) fn check_no_nul(field: &str, value: &serde_json::Value) -> Result<(), ApiError> {
    if crate::db::json_has_nul(value) {
        Err(nul_error(field))
    } else {
        Ok(())
    }
}

/// The same for optional text fields (query parameters).
pub(crate) fn check_no_nul_text(field: &str, value: Option<&str>) -> Result<(), ApiError> {
    match value {
        Some(s) if s.contains('\0') => Err(nul_error(field)),
        _ => Ok(()),
    }
}

fn nul_error(field: &str) -> ApiError {
    ApiError::Unprocessable(format!(
        "`{field}` must not contain NUL (\\u0000) characters"
    ))
}

/// The body of every error answer.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What was wrong, for people.
    pub error: String,
}
