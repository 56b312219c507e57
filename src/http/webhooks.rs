//! `POST /webhooks/stripe`: verify, store durably, answer; the work happens in the `stripe_event`
//! job (PROVIDERS.md §B.1).
//!
//! Order of checks: body over `stripe.webhook_body_limit` -> 413; `Stripe-Signature` not valid for
//! the exact bytes (any configured secret, 300 s tolerance) -> 400; not an event envelope -> 400.
//! Nothing is stored for any of these. A valid event's raw payload is inserted into
//! `stripe_events` and its job enqueued in ONE transaction, and 200 is answered only after the
//! commit; a duplicate `evt_` id inserts nothing and answers 200 (Stripe stops resending). The
//! object is not parsed here, so an event whose object we cannot read is still kept; a type we
//! do not apply is stored with status `ignored` and no job. If the database cannot be reached
//! we answer 503 and Stripe resends later.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;

use super::HttpState;
use super::error::ApiError;
use crate::integrations::stripe::Verifier;
use crate::integrations::stripe::types::EventEnvelope;
use crate::jobs::stripe_event::{APPLIED_TYPES, StripeEvent};
use crate::queue::{self, EnqueueError, NewJob};

/// What the Stripe endpoint needs beyond the pool.
#[derive(Clone, Debug)]
pub struct WebhookSettings {
    /// None when `STRIPE_WEBHOOK_SECRET` is unset: every delivery gets 503 until it is set.
    pub stripe: Option<Arc<Verifier>>,
    pub body_limit: usize,
}

/// Inserts a delivered event unless its id is already stored; returns the id when inserted.
const STRIPE_EVENT_INSERT: &str = r#"
insert into stripe_events (id, type, created, livemode, api_version, payload, status, processed_at)
values ($1, $2, $3, $4, $5, $6, $7, case when $7 = 'ignored' then now() end)
on conflict (id) do nothing
returning id
"#;

pub fn router(settings: &WebhookSettings) -> Router<HttpState> {
    Router::new()
        .route("/webhooks/stripe", post(stripe))
        .layer(DefaultBodyLimit::max(settings.body_limit))
}

async fn stripe(
    State(state): State<HttpState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, &'static str), ApiError> {
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
        _ => ApiError::BadRequest("unreadable body".into()),
    })?;
    let Some(verifier) = state.webhooks.stripe.as_deref() else {
        tracing::error!("a Stripe webhook arrived but STRIPE_WEBHOOK_SECRET is not set");
        return Err(ApiError::Unavailable);
    };
    let signature = headers
        .get("stripe-signature")
        .map(|v| v.to_str().unwrap_or("\u{0}"));
    verifier
        .verify(signature, &body, chrono::Utc::now().timestamp())
        .map_err(|error| ApiError::BadRequest(error.to_string()))?;
    let envelope: EventEnvelope = serde_json::from_slice(&body)
        .map_err(|_| ApiError::BadRequest("the body is not a Stripe event".into()))?;
    // Stored as text: Stripe sends UTF-8 JSON, and serde_json has just checked it is.
    let payload = std::str::from_utf8(&body)
        .map_err(|_| ApiError::BadRequest("the body is not UTF-8".into()))?;
    let applied = APPLIED_TYPES.contains(&envelope.event_type.as_str());
    let mut tx = state.pool.begin().await.map_err(unavailable)?;
    let inserted: Option<String> = sqlx::query_scalar(STRIPE_EVENT_INSERT)
        .bind(&envelope.id)
        .bind(&envelope.event_type)
        .bind(envelope.created)
        .bind(envelope.livemode)
        .bind(&envelope.api_version)
        .bind(payload)
        .bind(if applied { "received" } else { "ignored" })
        .fetch_optional(&mut *tx)
        .await
        .map_err(unavailable)?;
    if inserted.is_none() {
        return Ok((StatusCode::OK, "duplicate\n"));
    }
    if applied {
        let job = NewJob::of(&StripeEvent {
            event_id: envelope.id.clone(),
        })
        .map_err(|e| ApiError::Internal(e.into()))?;
        queue::enqueue(&mut *tx, job).await.map_err(|e| match e {
            EnqueueError::Database(e) => unavailable(e),
            other => ApiError::Internal(other.into()),
        })?;
    }
    tx.commit().await.map_err(unavailable)?;
    Ok((StatusCode::OK, "ok\n"))
}

/// A database error at the intake: anything but a statement the server refused means we could
/// not reach it (pool timeout, cut connection): 503, so Stripe resends.
fn unavailable(error: sqlx::Error) -> ApiError {
    match error {
        sqlx::Error::Database(_) => ApiError::from(error),
        other => {
            tracing::warn!(error = %other, "database unavailable for a Stripe webhook");
            ApiError::Unavailable
        }
    }
}
