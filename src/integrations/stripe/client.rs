//! The Stripe read API client: the subscription list reconciliation pages through. Configurable
//! base URL (the simulator in tests) and timeouts; the key is sent as `Authorization: Bearer`
//! and never logged.

use std::time::Duration;

use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};

use super::error::StripeError;
use super::types::{List, Subscription};

/// Largest page Stripe serves.
const PAGE_SIZE: &str = "100";

#[derive(Clone)]
pub struct StripeClient {
    http: reqwest::Client,
    base: url::Url,
    key: SecretString,
}

impl std::fmt::Debug for StripeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeClient")
            .field("base", &self.base.as_str())
            .finish()
    }
}

impl StripeClient {
    pub fn new(
        base: &str,
        key: SecretString,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<Self, StripeError> {
        let base = url::Url::parse(base)
            .map_err(|e| StripeError::Permanent(format!("invalid stripe.api_base: {e}")))?;
        let http = crate::tls::http_client_builder()
            .connect_timeout(connect_timeout)
            .timeout(request_timeout)
            .build()
            .map_err(|e| StripeError::Permanent(format!("building the HTTP client: {e}")))?;
        Ok(StripeClient { http, base, key })
    }

    /// One page of every subscription (all statuses, canceled included), newest first, after
    /// the cursor `starting_after`.
    pub async fn list_subscriptions(
        &self,
        starting_after: Option<&str>,
    ) -> Result<List<Subscription>, StripeError> {
        let result = self.list_subscriptions_once(starting_after).await;
        crate::telemetry::provider_call("stripe", result.as_ref().err().map(error_class));
        result
    }

    async fn list_subscriptions_once(
        &self,
        starting_after: Option<&str>,
    ) -> Result<List<Subscription>, StripeError> {
        let mut url = self
            .base
            .join("v1/subscriptions")
            .map_err(|e| StripeError::Permanent(e.to_string()))?;
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("status", "all")
                .append_pair("limit", PAGE_SIZE);
            if let Some(cursor) = starting_after {
                query.append_pair("starting_after", cursor);
            }
        }
        let response = self
            .http
            .get(url)
            .bearer_auth(self.key.expose_secret())
            .send()
            .await
            .map_err(|e| StripeError::Transient(e.without_url().to_string()))?;
        let status = response.status();
        if status.is_success() {
            let served_at = served_at(response.headers());
            // A body cut or timed out mid-way is worth another try; one that arrived whole but
            // does not parse is not.
            let body = response.bytes().await.map_err(|e| {
                StripeError::Transient(format!("reading the list: {}", e.without_url()))
            })?;
            let mut page: List<Subscription> = serde_json::from_slice(&body)
                .map_err(|e| StripeError::Permanent(format!("unreadable list: {e}")))?;
            page.served_at = served_at;
            return Ok(page);
        }
        Err(classify(status, &response))
    }

    /// Every subscription, following `has_more` / `starting_after` to the end.
    pub async fn list_all_subscriptions(&self) -> Result<Listing, StripeError> {
        let mut listing = Listing::default();
        loop {
            let page = self
                .list_subscriptions(listing.subscriptions.last().map(|s| s.id.as_str()))
                .await?;
            if listing.subscriptions.is_empty() {
                listing.first_served_at = page.served_at;
            }
            let more = page.has_more && !page.data.is_empty();
            listing.subscriptions.extend(page.data);
            if !more {
                return Ok(listing);
            }
        }
    }
}

/// Every subscription, and when Stripe served the first page.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    pub subscriptions: Vec<Subscription>,
    /// Stripe's `Date` of the first page (Unix seconds, rounded down), if it sent one.
    pub first_served_at: Option<i64>,
}

/// A response's `Date` (an HTTP date, always GMT) as Unix seconds.
fn served_at(headers: &reqwest::header::HeaderMap) -> Option<i64> {
    let date = headers.get(reqwest::header::DATE)?.to_str().ok()?;
    chrono::DateTime::parse_from_rfc2822(date)
        .ok()
        .map(|t| t.timestamp())
}

/// The `class` label of `baw_provider_errors_total`.
fn error_class(error: &StripeError) -> &'static str {
    match error {
        StripeError::NotConfigured => "not_configured",
        StripeError::Auth(_) => "auth",
        StripeError::RateLimited(_) => "rate_limited",
        StripeError::Transient(_) => "transient",
        StripeError::Permanent(_) => "permanent",
    }
}

fn classify(status: StatusCode, response: &reqwest::Response) -> StripeError {
    match status.as_u16() {
        401 | 403 => StripeError::Auth(status.as_u16()),
        429 => StripeError::RateLimited(
            response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .map(Duration::from_secs),
        ),
        500.. => StripeError::Transient(format!("HTTP {status}")),
        _ => StripeError::Permanent(format!("HTTP {status}")),
    }
}
