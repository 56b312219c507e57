//! `POST {api_base}/emails` with bearer auth, a `User-Agent` (Resend's edge refuses requests
//! without one) and an `Idempotency-Key`.

use std::time::Duration;

use reqwest::header::HeaderMap;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::error::ResendError;
use super::types::{SendEmailRequest, SentEmail};

/// Cheap to clone (the connection pool is shared).
#[derive(Clone)]
pub struct ResendClient {
    http: reqwest::Client,
    /// Without a trailing slash, e.g. `https://api.resend.com`.
    api_base: String,
    api_key: SecretString,
}

impl std::fmt::Debug for ResendClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResendClient")
            .field("api_base", &self.api_base)
            .finish_non_exhaustive()
    }
}

/// Resend's error body (§C.3).
#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    name: String,
    #[serde(default)]
    message: String,
}

impl ResendClient {
    /// `timeout` bounds a whole request; a request still unanswered then is a transport error
    /// (retried with the same key, so an email accepted meanwhile is not sent twice, as long as
    /// Resend still remembers the key: 24 h).
    pub fn new(
        api_base: &str,
        api_key: SecretString,
        timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        let http = crate::tls::http_client_builder().timeout(timeout).build()?;
        Ok(ResendClient {
            http,
            api_base: api_base.trim_end_matches('/').to_owned(),
            api_key,
        })
    }

    /// Sends one email. Repeating the call with the same key and the same email within 24 h
    /// answers the first id without sending again.
    pub async fn send(
        &self,
        email: &SendEmailRequest,
        idempotency_key: &str,
    ) -> Result<SentEmail, ResendError> {
        let result = self.send_once(email, idempotency_key).await;
        crate::telemetry::provider_call("resend", result.as_ref().err().map(error_class));
        result
    }

    async fn send_once(
        &self,
        email: &SendEmailRequest,
        idempotency_key: &str,
    ) -> Result<SentEmail, ResendError> {
        let response = self
            .http
            .post(format!("{}/emails", self.api_base))
            .bearer_auth(self.api_key.expose_secret())
            .header("Idempotency-Key", idempotency_key)
            .json(email)
            .send()
            .await
            .map_err(transport)?;
        let status = response.status().as_u16();
        let wait = retry_wait(response.headers());
        let body = response.bytes().await.map_err(transport)?;
        if (200..300).contains(&status) {
            return serde_json::from_slice(&body)
                .map_err(|e| ResendError::Transport(format!("unreadable answer: {e}")));
        }
        let (name, message) = match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(error) => (error.name, error.message),
            Err(_) => (
                String::new(),
                String::from_utf8_lossy(&body).chars().take(300).collect(),
            ),
        };
        Err(ResendError::from_response(status, name, message, wait))
    }
}

/// The `class` label of `baw_provider_errors_total`.
fn error_class(error: &ResendError) -> &'static str {
    match error {
        ResendError::RateLimited { .. } => "rate_limited",
        ResendError::InFlight => "in_flight",
        ResendError::IdempotencyConflict { .. } => "idempotency_conflict",
        ResendError::Quota { .. } => "quota",
        ResendError::Server { .. } => "server",
        ResendError::Transport(_) | ResendError::Unreached(_) => "transport",
        ResendError::Request(_) => "request",
        ResendError::Rejected { .. } => "rejected",
    }
}

fn transport(error: reqwest::Error) -> ResendError {
    if error.is_builder() {
        return ResendError::Request(error.without_url().to_string());
    }
    if error.is_connect() {
        return ResendError::Unreached(format!("could not connect: {}", error.without_url()));
    }
    let what = if error.is_timeout() {
        "timed out"
    } else {
        "request failed"
    };
    ResendError::Transport(format!("{what}: {}", error.without_url()))
}

/// `retry-after` (seconds), else `ratelimit-reset` (seconds until the window resets).
fn retry_wait(headers: &HeaderMap) -> Option<Duration> {
    ["retry-after", "ratelimit-reset"].iter().find_map(|name| {
        let secs: f64 = headers.get(*name)?.to_str().ok()?.trim().parse().ok()?;
        crate::integrations::provider_wait(secs).map(|wait| wait.max(Duration::from_millis(100)))
    })
}
