//! The operator web UI at `/dashboard`: server-rendered pages (askama templates under
//! `templates/dashboard/`, escaped by default) with a little htmx for live refresh, vendored into
//! the binary so it works offline. One file per page:
//!
//! - [`login`]: log in and out (the session cookie of [`crate::auth::session`]);
//! - [`overview`]: counts per queue and state, throughput and failure-rate charts, oldest waiting
//!   job per queue, nodes alive;
//! - [`jobs`]: listings per state with filters and keyset pages, bulk actions with a confirmation;
//! - [`job`]: one job with its args, result, attempts, timeline and actions;
//! - [`queues`]: concurrency, pause and resume;
//! - [`schedules`]: cron in words, last and next run, run now;
//! - [`integrations`]: providers' health, rate-limit budgets, Stripe events (replay), email log,
//!   documents.
//!
//! Every page needs a logged-in [`Operator`] (401 otherwise); every action is a POST carrying
//! the session's CSRF token, checked with [`Operator::authorize_action`] (read-only operators get
//! 403). Reads go through [`crate::queue::admin_query`], whose statements stay bounded on a table
//! of millions of finished jobs.

mod cron;
mod integrations;
mod job;
mod jobs;
mod login;
mod overview;
mod queues;
mod schedules;

use askama::Template;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};

use crate::auth::Operator;
use crate::http::HttpState;
use crate::http::error::ApiError;
use crate::queue::admin::AdminError;

/// The dashboard's routes, merged into the node's router.
pub fn router() -> Router<HttpState> {
    Router::new()
        .route("/dashboard", get(overview::page))
        .route("/dashboard/login", get(login::form).post(login::submit))
        .route("/dashboard/logout", axum::routing::post(login::logout))
        .route("/dashboard/jobs", get(jobs::page))
        .route("/dashboard/jobs/bulk", axum::routing::post(jobs::bulk))
        .route(
            "/dashboard/bulk-actions/{id}/stop",
            axum::routing::post(jobs::stop_bulk),
        )
        .route("/dashboard/jobs/{id}", get(job::page))
        .route(
            "/dashboard/jobs/{id}/{action}",
            axum::routing::post(job::act),
        )
        .route("/dashboard/queues", get(queues::page))
        .route(
            "/dashboard/queues/{name}/{action}",
            axum::routing::post(queues::act),
        )
        .route("/dashboard/schedules", get(schedules::page))
        .route(
            "/dashboard/schedules/{name}/run",
            axum::routing::post(schedules::run),
        )
        .route("/dashboard/integrations", get(integrations::page))
        .route(
            "/dashboard/stripe/{id}/replay",
            axum::routing::post(integrations::replay),
        )
        .route("/dashboard/assets/htmx.min.js", get(htmx_js))
        .route("/dashboard/assets/dashboard.css", get(css))
        .layer(axum::middleware::map_response(security_headers))
}

/// htmx, vendored (see assets/htmx/README.md).
static HTMX_JS: &[u8] = include_bytes!("../../../assets/htmx/htmx.min.js");
static DASHBOARD_CSS: &[u8] = include_bytes!("../../../assets/dashboard.css");

async fn htmx_js() -> Response {
    asset(HTMX_JS, "text/javascript; charset=utf-8")
}

async fn css() -> Response {
    asset(DASHBOARD_CSS, "text/css; charset=utf-8")
}

fn asset(body: &'static [u8], content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// Pages are private and must not be framed or cached; scripts come only from this origin.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
             frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// What the layout shows around every page: who is logged in, the navigation, the CSRF token for
/// the forms, and a notice left by the previous action (see [`redirect_with_notice`]).
pub struct Chrome {
    pub operator: String,
    pub can_act: bool,
    pub csrf: String,
    /// The navigation entry to highlight.
    pub active: &'static str,
    pub notice: Option<String>,
}

impl Chrome {
    /// `notice`: the query string's `notice`, shown only when this session signed it.
    pub fn new(operator: &Operator, active: &'static str, notice: Option<String>) -> Self {
        Chrome {
            operator: operator.username.clone(),
            can_act: operator.can_act(),
            csrf: operator.csrf_token.clone(),
            active,
            notice: notice
                .and_then(|n| verified_notice(operator, &n))
                .filter(|n| !n.is_empty()),
        }
    }

    pub fn nav(&self) -> [(&'static str, &'static str, bool); 5] {
        [
            ("Overview", "/dashboard", self.active == "overview"),
            ("Jobs", "/dashboard/jobs", self.active == "jobs"),
            ("Queues", "/dashboard/queues", self.active == "queues"),
            (
                "Schedules",
                "/dashboard/schedules",
                self.active == "schedules",
            ),
            (
                "Integrations",
                "/dashboard/integrations",
                self.active == "integrations",
            ),
        ]
    }
}

/// A page handler's error: the status and message of [`ApiError`] as a small HTML page.
/// Database and internal causes are logged, never shown.
#[derive(Debug)]
pub struct WebError(pub ApiError);

impl<E: Into<ApiError>> From<E> for WebError {
    fn from(e: E) -> Self {
        WebError(e.into())
    }
}

#[derive(Template)]
#[template(path = "dashboard/error.html")]
struct ErrorPage {
    status: u16,
    reason: String,
    message: String,
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let status = match &self.0 {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(cause) => {
                tracing::error!(error = format!("{cause:#}"), "dashboard request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let page = ErrorPage {
            status: status.as_u16(),
            reason: status.canonical_reason().unwrap_or("error").into(),
            message: self.0.to_string(),
        };
        match page.render() {
            Ok(html) => (status, Html(html)).into_response(),
            Err(_) => status.into_response(),
        }
    }
}

/// A queue admin error as the page's error: an unknown state is the request's fault.
pub fn admin_error(e: AdminError) -> WebError {
    match e {
        AdminError::UnknownState(_) | AdminError::Filter(_) => {
            WebError(ApiError::BadRequest(e.to_string()))
        }
        AdminError::Database(e) => WebError(e.into()),
    }
}

/// Renders a template into a 200 response.
pub fn render(template: &impl Template) -> Result<Response, WebError> {
    template
        .render()
        .map(|html| Html(html).into_response())
        .map_err(|e| WebError(ApiError::Internal(e.into())))
}

/// A 303 to `path` with `notice` shown on arrival to `operator`'s session.
///
/// The notice travels in the query string, signed: `notice=<MAC>.<text>`, the MAC an HMAC-SHA256
/// of the text keyed by the session's CSRF token, which only that session's pages carry. Any site
/// can link to a dashboard page with a query string of its choosing, but it cannot sign one, and
/// [`Chrome::new`] shows no notice whose MAC does not match: no outsider's text appears in the
/// dashboard's own notice line.
pub fn redirect_with_notice(operator: &Operator, path: &str, notice: &str) -> Response {
    let sep = if path.contains('?') { '&' } else { '?' };
    let signed = format!("{}.{notice}", notice_mac(operator, notice));
    let signed: String = url::form_urlencoded::byte_serialize(signed.as_bytes()).collect();
    Redirect::to(&format!("{path}{sep}notice={signed}")).into_response()
}

/// The first 128 bits of HMAC-SHA256(the session's CSRF token, `notice:` + text), base64url.
fn notice_mac(operator: &Operator, text: &str) -> String {
    use base64::Engine as _;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, operator.csrf_token.as_bytes());
    let mut context = ring::hmac::Context::with_key(&key);
    context.update(b"notice:");
    context.update(text.as_bytes());
    let tag = context.sign();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&tag.as_ref()[..16])
}

/// The text of a notice [`redirect_with_notice`] signed for this session; None for any other.
fn verified_notice(operator: &Operator, signed: &str) -> Option<String> {
    use subtle::ConstantTimeEq;
    let (mac, text) = signed.split_once('.')?;
    let expected = notice_mac(operator, text);
    bool::from(expected.as_bytes().ct_eq(mac.as_bytes())).then(|| text.to_owned())
}

/// An `application/x-www-form-urlencoded` body with repeated keys kept (checkbox lists), which
/// axum's `Form` cannot deserialize into a struct.
pub struct FormData(pub Vec<(String, String)>);

impl FormData {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key` trimmed, None when absent or blank.
    pub fn text(&self, key: &str) -> Option<String> {
        self.get(key)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    }

    pub fn all(&self, key: &str) -> impl Iterator<Item = &str> {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The CSRF token every action's form carries.
    pub fn csrf(&self) -> Option<&str> {
        self.get("csrf")
    }
}

impl<S: Send + Sync> FromRequest<S> for FormData {
    type Rejection = WebError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_form = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if !is_form {
            return Err(WebError(ApiError::BadRequest(
                "expected a form (application/x-www-form-urlencoded)".into(),
            )));
        }
        let body = Bytes::from_request(req, state)
            .await
            .map_err(|_| WebError(ApiError::PayloadTooLarge))?;
        Ok(FormData(
            url::form_urlencoded::parse(&body).into_owned().collect(),
        ))
    }
}

/// `2026-11-30 07:53:08 UTC`, or `-`.
pub fn time(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(
        || "-".into(),
        |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    )
}

/// How long ago (or, for a future time, how far ahead) `t` is: `3m 20s ago`, `in 2h 5m`.
pub fn ago(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    let Some(t) = t else {
        return "-".into();
    };
    let secs = (now - t).num_seconds();
    if secs >= 0 {
        format!("{} ago", span(secs))
    } else {
        format!("in {}", span(-secs))
    }
}

/// A duration in seconds as its two largest units: `45s`, `3m 20s`, `2h 5m`, `3d 4h`.
pub fn span(secs: i64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

/// `1,234,567`.
pub fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if n < 0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_spans_read_well() {
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(-1000), "-1,000");
        assert_eq!(span(45), "45s");
        assert_eq!(span(200), "3m 20s");
        assert_eq!(span(7500), "2h 5m");
        assert_eq!(span(3 * 86_400 + 4 * 3600), "3d 4h");
    }
}
