//! Stripe API failures, classified once: what a job should do about each.

use std::time::Duration;

use crate::queue::JobError;

#[derive(Debug, thiserror::Error)]
pub enum StripeError {
    /// `STRIPE_SECRET_KEY` is not set.
    #[error("STRIPE_SECRET_KEY is not set")]
    NotConfigured,
    /// The key was refused (401/403): retrying will not help until an operator fixes it.
    #[error("Stripe refused the API key (HTTP {0})")]
    Auth(u16),
    /// 429: wait as long as Stripe said (or a short default).
    #[error("Stripe rate limit")]
    RateLimited(Option<Duration>),
    /// 5xx, timeouts, connection errors (also mid-body): worth another try.
    #[error("Stripe unavailable: {0}")]
    Transient(String),
    /// Any other 4xx, or a body that arrived whole but does not parse: a bug on one side, not
    /// worth retrying at once.
    #[error("Stripe request failed: {0}")]
    Permanent(String),
}

impl From<StripeError> for JobError {
    fn from(error: StripeError) -> Self {
        match error {
            StripeError::RateLimited(after) => {
                JobError::Snooze(after.unwrap_or(Duration::from_secs(2)))
            }
            StripeError::Transient(_) => JobError::retry(&error),
            StripeError::NotConfigured | StripeError::Auth(_) | StripeError::Permanent(_) => {
                JobError::discard(&error)
            }
        }
    }
}
