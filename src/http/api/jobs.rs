//! `POST /v1/jobs` (scope `jobs:write`, or `jobs:write:<kind>` for one kind): enqueue a registered
//! kind with options. The args are checked by deserialising them into the kind's struct, and the
//! kind's policy (queue, priority, attempts) and unique key apply unless the request overrides them. 201 with the new job's id;
//! 200 with the holder's id when `unique_key` is held by an unfinished job (nothing inserted).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{check_no_nul, check_text, enqueue_error, json_error, registry, shorten_quoted, shown};
use crate::auth::ApiCaller;
use crate::config::Config;
use crate::http::HttpState;
use crate::http::error::ApiError;
use crate::jobs::SendEmail;
use crate::queue::enqueue::MAX_UNIQUE_KEY;
use crate::queue::{JobArgs, NewJob};

/// The longest `delay_seconds` (a year): later is a mistake, not a plan.
const MAX_DELAY: Duration = Duration::from_secs(366 * 24 * 3600);

/// What a caller's `unique_key` is stored under (see [`EnqueueJob::unique_key`]).
pub const CALLER_KEY_PREFIX: &str = "api:";

/// A job to enqueue. Unknown fields are refused (a typo must not silently drop an option).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnqueueJob {
    /// A registered kind, e.g. `send_email`; an unknown kind is 422.
    pub kind: String,
    /// The kind's args (an object); checked against the kind's struct. Default `{}`.
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub args: serde_json::Value,
    /// Default: the kind's queue. Must be a queue of `[queues]` in the config (else nothing
    /// would ever run the job).
    pub queue: Option<String>,
    /// Lower runs first. Default: the kind's.
    pub priority: Option<i16>,
    /// Run at this time (RFC 3339), within a year of now either way (later is a mistake, like a
    /// `delay_seconds` past a year; a past time runs at once). Not with `delay_seconds`.
    pub run_at: Option<DateTime<Utc>>,
    /// Run after this many seconds (0 to a year). Not with `run_at`.
    pub delay_seconds: Option<f64>,
    /// 1 to 1000. Default: the kind's.
    pub max_attempts: Option<i32>,
    /// Up to 20 tags of at most 100 characters, for filtering.
    #[serde(default)]
    pub tags: Vec<String>,
    /// While a job with this key is unfinished, enqueueing again answers that job (200).
    /// Default: the kind's own key, if it has one. Stored as `api:<unique_key>`, apart from the
    /// keys the daemon makes itself (schedule ticks, a kind's own key): a caller's key cannot
    /// hold one of those and so keep the daemon's own job from being enqueued.
    pub unique_key: Option<String>,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// The job enqueued (or found).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnqueuedJob {
    pub id: i64,
    /// True when `unique_key` was held by an unfinished job: `id` is that job's, nothing was
    /// inserted.
    pub duplicate: bool,
}

impl EnqueueJob {
    /// Checks every field and builds the job; 422 naming the first field that is wrong.
    fn into_job(self, config: &Config) -> Result<NewJob, ApiError> {
        let Some(entry) = registry().get(&self.kind) else {
            let mut known: Vec<&str> = registry().kinds().collect();
            known.sort_unstable();
            return Err(ApiError::Unprocessable(format!(
                "unknown kind `{}` (registered: {})",
                shown(&self.kind),
                known.join(", ")
            )));
        };
        if !self.args.is_object() {
            return Err(ApiError::Unprocessable(
                "`args` must be a JSON object".into(),
            ));
        }
        check_no_nul("args", &self.args)?;
        if self.kind == SendEmail::KIND {
            // Refuse an email that would render blank now, not when it is sent.
            let email: SendEmail = serde_json::from_value(self.args.clone()).map_err(|e| {
                ApiError::Unprocessable(shorten_quoted(&format!(
                    "`args` do not fit kind `{}`: {e}",
                    self.kind
                )))
            })?;
            crate::jobs::send_email::render(&email.template, &email.data)
                .map_err(|e| ApiError::Unprocessable(shorten_quoted(&format!("`args`: {e}"))))?;
        }
        let mut job = entry.new_job(self.args).map_err(|e| {
            ApiError::Unprocessable(shorten_quoted(&format!(
                "`args` do not fit kind `{}`: {e}",
                self.kind
            )))
        })?;
        if let Some(queue) = self.queue {
            check_text("queue", &queue, 100)?;
            job = job.queue(queue);
        }
        // A queue no node works would hold the job forever: most likely a typo.
        if !config.queues.contains_key(&job.queue) {
            return Err(ApiError::Unprocessable(format!(
                "`queue` `{}` is not worked by this deployment (configured: {})",
                job.queue,
                config.queues.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        if let Some(priority) = self.priority {
            job = job.priority(priority);
        }
        match (self.run_at, self.delay_seconds) {
            (Some(_), Some(_)) => {
                return Err(ApiError::Unprocessable(
                    "give `run_at` or `delay_seconds`, not both".into(),
                ));
            }
            (Some(at), None) => {
                // Also keeps the time inside PostgreSQL's range (a year of -5000 was a 500).
                let now = Utc::now();
                let year = chrono::Duration::from_std(MAX_DELAY).expect("a year fits");
                if at > now + year || at < now - year {
                    return Err(ApiError::Unprocessable(
                        "`run_at` must be within a year of now".into(),
                    ));
                }
                job = job.run_at(at);
            }
            (None, Some(secs)) => {
                if !secs.is_finite() || secs < 0.0 || secs > MAX_DELAY.as_secs_f64() {
                    return Err(ApiError::Unprocessable(
                        "`delay_seconds` must be between 0 and 31622400 (a year)".into(),
                    ));
                }
                job = job.delay(Duration::from_secs_f64(secs));
            }
            (None, None) => {}
        }
        if let Some(max_attempts) = self.max_attempts {
            if !(1..=1000).contains(&max_attempts) {
                return Err(ApiError::Unprocessable(
                    "`max_attempts` must be between 1 and 1000".into(),
                ));
            }
            job = job.max_attempts(max_attempts);
        }
        if self.tags.len() > 20 {
            return Err(ApiError::Unprocessable("at most 20 `tags`".into()));
        }
        for tag in &self.tags {
            check_text("tags", tag, 100)?;
        }
        if !self.tags.is_empty() {
            job = job.tags(self.tags);
        }
        if let Some(key) = self.unique_key {
            check_text("unique_key", &key, 255)?;
            job = job.unique_key(format!("{CALLER_KEY_PREFIX}{key}"));
        }
        // A kind's own key is built from its args (`stripe_event:<event_id>`): long ids in the
        // args make a key the database's unique index cannot hold. The enqueue refuses it too;
        // here the answer can say where it came from.
        if let Some(key) = &job.unique_key {
            let length = key.chars().count();
            if length > MAX_UNIQUE_KEY {
                return Err(ApiError::Unprocessable(format!(
                    "`unique_key`: kind `{}` derives a key of {length} characters from `args` \
                     (at most {MAX_UNIQUE_KEY}): the ids in `args` are too long",
                    self.kind
                )));
            }
        }
        Ok(job)
    }
}

/// Enqueue a job of any registered kind.
#[utoipa::path(
    post,
    path = "/v1/jobs",
    tag = "jobs",
    request_body = EnqueueJob,
    security(("bearer" = ["jobs:write"])),
    responses(
        (status = 201, description = "Enqueued", body = EnqueuedJob),
        (status = 200, description = "The unique key is held by an unfinished job: its id, nothing inserted", body = EnqueuedJob),
        (status = 400, description = "Not JSON", body = super::ErrorBody),
        (status = 401, description = "No valid bearer token", body = super::ErrorBody),
        (status = 403, description = "The token lacks `jobs:write` (or `jobs:write:<kind>` for the kind asked)", body = super::ErrorBody),
        (status = 422, description = "Unknown kind, args that do not fit it, or a bad option (named)", body = super::ErrorBody),
    )
)]
pub async fn enqueue(
    State(state): State<HttpState>,
    caller: ApiCaller,
    body: Result<Json<EnqueueJob>, JsonRejection>,
) -> Result<(StatusCode, Json<EnqueuedJob>), ApiError> {
    caller.require_enqueue()?;
    let Json(request) = body.map_err(json_error)?;
    caller.require_kind(&request.kind)?;
    let job = request.into_job(&state.app.config)?;
    let kind = job.kind.clone();
    let enqueued = crate::queue::enqueue(&state.pool, job)
        .await
        .map_err(enqueue_error)?;
    tracing::info!(job = enqueued.id, %kind, caller = %caller.name, new = enqueued.inserted, "enqueued through the API");
    let status = if enqueued.inserted {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(EnqueuedJob {
            id: enqueued.id,
            duplicate: !enqueued.inserted,
        }),
    ))
}
