//! `POST /v1/emails` (scope `emails:send`): a templated email, rendered once here so a missing
//! variable, an unknown template or a bad address is a 422 naming it, then enqueued as a
//! `send_email` job; 202 with the job's id.
//!
//! **Idempotency.** A caller's `Idempotency-Key` header becomes the job's unique key
//! (`email:api:<token id>:<key>`, scoped to the token so two callers cannot collide), and through
//! it the Resend `Idempotency-Key`: a repeat with the same key answers the same job id and inserts
//! nothing. While the job is unfinished the queue's unique key finds it; once it ran, its
//! `email_log` row (kept for `email.log_retention`) does. A repeat whose email differs from the
//! first is a 409.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{check_text, json_error};
use crate::auth::ApiCaller;
use crate::http::HttpState;
use crate::http::error::ApiError;
use crate::integrations::resend::Tag;
use crate::jobs::send_email::{self, EmailError, SendEmail, TEMPLATES};

/// The job of an email already sent (or tried) under a Resend idempotency key.
const EMAIL_LOG_JOB_BY_KEY: &str = "select job_id from email_log where idempotency_key = $1";

/// The args of a job, to compare a repeat with the first request.
const JOB_ARGS_BY_ID: &str = "select args from jobs where id = $1";

/// How far ahead Resend schedules an email.
const MAX_SCHEDULE_DAYS: i64 = 30;

/// An email to send.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendEmailBody {
    /// One of `welcome`, `milestone_update`, `invoice_sent`, `payment_failed`.
    pub template: String,
    /// One recipient address.
    pub to: String,
    /// The template's variables; every variable the template uses must be given.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub data: serde_json::Map<String, serde_json::Value>,
    pub reply_to: Option<String>,
    /// Resend tags: names and values of ASCII letters, digits, `_` and `-`.
    #[serde(default)]
    pub tags: Vec<EmailTag>,
    /// Deliver at this time (RFC 3339; at most 30 days ahead).
    pub scheduled_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailTag {
    pub name: String,
    pub value: String,
}

/// The email's job.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EmailAccepted {
    /// The `send_email` job.
    pub id: i64,
    /// True when the `Idempotency-Key` was seen before: the first request's job, nothing new.
    pub duplicate: bool,
}

/// A plausible single address: `local@domain.tld`, no spaces or angle brackets. Resend has the
/// final word; this catches what would only be discarded later.
fn check_address(field: &str, address: &str) -> Result<(), ApiError> {
    let bad = || ApiError::Unprocessable(format!("`{field}` is not an email address"));
    if address.len() > 254
        || address
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ',' | ';'))
    {
        return Err(bad());
    }
    let (local, domain) = address.rsplit_once('@').ok_or_else(bad)?;
    if local.is_empty()
        || local.len() > 64
        || local.contains('@')
        || domain.len() < 3
        || !domain.contains('.')
        || domain.starts_with('.')
        || domain.ends_with('.')
        || domain.contains("..")
    {
        return Err(bad());
    }
    Ok(())
}

fn check_tag_part(field: &str, value: &str) -> Result<(), ApiError> {
    if value.is_empty()
        || value.len() > 256
        || !value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(ApiError::Unprocessable(format!(
            "`{field}` must be 1 to 256 ASCII letters, digits, `_` or `-`"
        )));
    }
    Ok(())
}

impl SendEmailBody {
    /// Checks everything the job would otherwise discard later; 422 naming what is wrong.
    fn into_email(self) -> Result<SendEmail, ApiError> {
        if !TEMPLATES.contains(&self.template.as_str()) {
            return Err(ApiError::Unprocessable(format!(
                "unknown `template` `{}` (known: {})",
                super::shown(&self.template),
                TEMPLATES.join(", ")
            )));
        }
        check_address("to", &self.to)?;
        for (key, value) in &self.data {
            super::check_no_nul_text("data", Some(key))?;
            super::check_no_nul("data", value)?;
        }
        if let Some(reply_to) = &self.reply_to {
            check_address("reply_to", reply_to)?;
        }
        if self.tags.len() > 50 {
            return Err(ApiError::Unprocessable("at most 50 `tags`".into()));
        }
        for tag in &self.tags {
            check_tag_part("tags[].name", &tag.name)?;
            check_tag_part("tags[].value", &tag.value)?;
        }
        if let Some(at) = self.scheduled_at {
            let now = Utc::now();
            if at < now - chrono::Duration::minutes(1) {
                return Err(ApiError::Unprocessable(
                    "`scheduled_at` is in the past".into(),
                ));
            }
            if at > now + chrono::Duration::days(MAX_SCHEDULE_DAYS) {
                return Err(ApiError::Unprocessable(format!(
                    "`scheduled_at` must be within {MAX_SCHEDULE_DAYS} days"
                )));
            }
        }
        send_email::render(&self.template, &self.data).map_err(|e| match e {
            EmailError::Render { template, detail } => {
                ApiError::Unprocessable(format!("`data` does not render `{template}`: {detail}"))
            }
            other => ApiError::Unprocessable(other.to_string()),
        })?;
        Ok(SendEmail {
            template: self.template,
            to: self.to,
            data: self.data,
            reply_to: self.reply_to,
            tags: self
                .tags
                .into_iter()
                .map(|t| Tag {
                    name: t.name,
                    value: t.value,
                })
                .collect(),
            scheduled_at: self.scheduled_at,
        })
    }
}

/// The caller's `Idempotency-Key`, checked: 1 to 200 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bad = || {
        ApiError::Unprocessable(
            "the `Idempotency-Key` header must be 1 to 200 visible ASCII characters".into(),
        )
    };
    let key = value.to_str().map_err(|_| bad())?.trim();
    if key.is_empty() || key.len() > 200 || !key.chars().all(|c| c.is_ascii_graphic()) {
        return Err(bad());
    }
    Ok(Some(key.to_owned()))
}

/// Ask for a templated email.
#[utoipa::path(
    post,
    path = "/v1/emails",
    tag = "emails",
    request_body = SendEmailBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "The same key gives the same job: a repeat answers the first job's id and inserts nothing")),
    security(("bearer" = ["emails:send"])),
    responses(
        (status = 202, description = "Enqueued (or, for a repeated Idempotency-Key, the first request's job)", body = EmailAccepted),
        (status = 400, description = "Not JSON", body = super::ErrorBody),
        (status = 401, description = "No valid bearer token", body = super::ErrorBody),
        (status = 403, description = "The token lacks `emails:send`", body = super::ErrorBody),
        (status = 409, description = "The Idempotency-Key was used with a different email", body = super::ErrorBody),
        (status = 422, description = "Unknown template, a missing variable, a bad address or option (named)", body = super::ErrorBody),
    )
)]
pub async fn send(
    State(state): State<HttpState>,
    caller: ApiCaller,
    headers: HeaderMap,
    body: Result<Json<SendEmailBody>, JsonRejection>,
) -> Result<(StatusCode, Json<EmailAccepted>), ApiError> {
    caller.require("emails:send")?;
    let Json(request) = body.map_err(json_error)?;
    let key = idempotency_key(&headers)?;
    let email = request.into_email()?;
    let accepted =
        |id, duplicate| Ok((StatusCode::ACCEPTED, Json(EmailAccepted { id, duplicate })));
    let Some(key) = key else {
        let enqueued = send_email::enqueue_email(&state.pool, email, None)
            .await
            .map_err(email_error)?;
        return accepted(enqueued.id, false);
    };
    let unique_key = format!("email:api:{}:{key}", caller.token_id);
    check_text("Idempotency-Key", &unique_key, 255)?;
    // Already run (or running): its email_log row names the job.
    let resend_key = send_email::idempotency_key(Some(&unique_key), 0);
    let logged: Option<Option<i64>> = sqlx::query_scalar(EMAIL_LOG_JOB_BY_KEY)
        .bind(&resend_key)
        .fetch_optional(&state.pool)
        .await?;
    if let Some(Some(id)) = logged {
        check_same(&state, id, &email).await?;
        return accepted(id, true);
    }
    let enqueued = send_email::enqueue_email(&state.pool, email.clone(), Some(&unique_key))
        .await
        .map_err(email_error)?;
    if !enqueued.inserted {
        check_same(&state, enqueued.id, &email).await?;
    }
    tracing::info!(job = enqueued.id, template = %email.template,
        to = %send_email::mask_address(&email.to), caller = %caller.name,
        new = enqueued.inserted, "email requested through the API");
    accepted(enqueued.id, !enqueued.inserted)
}

/// 409 when job `id` (the first request's) carries another email than `email`. A job already
/// pruned cannot be compared and is taken as the same.
async fn check_same(state: &HttpState, id: i64, email: &SendEmail) -> Result<(), ApiError> {
    let args: Option<serde_json::Value> = sqlx::query_scalar(JOB_ARGS_BY_ID)
        .bind(id)
        .fetch_optional(&state.pool)
        .await?;
    let same = match args {
        None => true,
        Some(args) => serde_json::from_value::<SendEmail>(args).is_ok_and(|first| first == *email),
    };
    if same {
        Ok(())
    } else {
        Err(ApiError::Conflict(
            "this Idempotency-Key was already used with a different email".into(),
        ))
    }
}

fn email_error(error: EmailError) -> ApiError {
    match error {
        EmailError::Enqueue(e) => super::enqueue_error(e),
        other => ApiError::Unprocessable(other.to_string()),
    }
}
