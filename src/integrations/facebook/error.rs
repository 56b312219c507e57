//! Graph API failures, classified once on `error.code` / `error_subcode` (the HTTP status is not
//! a reliable signal: throttling and token errors come as 400), and what a job does about each.

use std::time::Duration;

use crate::queue::JobError;

/// The first wait after a throttle Graph gave no hint for (PROVIDERS.md §A.8: 60 s base)...
pub const THROTTLE_BACKOFF_BASE: Duration = Duration::from_secs(60);
/// ...doubling with each throttle in a row, up to 15 minutes.
pub const THROTTLE_BACKOFF_MAX: Duration = Duration::from_secs(900);

/// How long to wait after the `n`-th throttle in a row (0-based) when Graph's usage headers gave
/// no hint: `min(60 s · 2^n, 15 min)` plus up to a tenth more at random, so accounts throttled
/// together do not come back together (truncated exponential backoff with jitter, §A.8).
pub fn throttle_backoff(n: u32) -> Duration {
    let base = THROTTLE_BACKOFF_BASE
        .saturating_mul(1 << n.min(10))
        .min(THROTTLE_BACKOFF_MAX);
    base + Duration::from_millis(rand::random_range(0..=base.as_millis() as u64 / 10))
}

#[derive(Debug, thiserror::Error)]
pub enum FacebookError {
    /// `FACEBOOK_ACCESS_TOKEN` is not set.
    #[error("FACEBOOK_ACCESS_TOKEN is not set")]
    NotConfigured,
    /// 190 / 102: the token expired or was revoked; an operator must issue a new one.
    #[error("Facebook refused the access token (code {code}): {message}")]
    Token { code: i64, message: String },
    /// 4, 17, 32, 613, 80000-80014: wait until Graph says access is back; `None` when the
    /// answer's usage headers gave no hint (the caller backs off, see [`throttle_backoff`]).
    #[error("Facebook throttled the request (code {code})")]
    Throttled { code: i64, wait: Option<Duration> },
    /// 100/1487534 (or a sync timeout, 1504018/1504038): ask for a smaller date range.
    #[error("Facebook answered too much data for one request (code {code}/{subcode})")]
    TooMuchData { code: i64, subcode: i64 },
    /// 1, 2, 5xx, timeouts, cut connections: worth another try.
    #[error("Facebook unavailable: {0}")]
    Transient(String),
    /// Anything else (a bad parameter, an unknown account, an unreadable body).
    #[error("Facebook request failed: {0}")]
    Permanent(String),
}

impl FacebookError {
    /// Classifies a Graph error body's `code` / `error_subcode`; `wait` is what the usage headers
    /// of the same answer say about regaining access.
    pub fn from_graph(
        status: u16,
        code: i64,
        subcode: Option<i64>,
        is_transient: bool,
        message: &str,
        wait: Option<Duration>,
    ) -> Self {
        let message: String = message.chars().take(300).collect();
        match (code, subcode) {
            (190 | 102, _) => FacebookError::Token { code, message },
            (_, Some(1487534 | 1504018 | 1504038)) => FacebookError::TooMuchData {
                code,
                subcode: subcode.unwrap_or_default(),
            },
            (4 | 17 | 32 | 613 | 80000..=80014, _)
            | (_, Some(1504022 | 1504039 | 2446079 | 1487742)) => {
                FacebookError::Throttled { code, wait }
            }
            (1 | 2 | -2, _) => FacebookError::Transient(format!("code {code}: {message}")),
            _ if is_transient || status >= 500 => {
                FacebookError::Transient(format!("HTTP {status}, code {code}: {message}"))
            }
            _ => FacebookError::Permanent(format!("HTTP {status}, code {code}: {message}")),
        }
    }
}

impl From<FacebookError> for JobError {
    fn from(error: FacebookError) -> Self {
        match error {
            // A caller that counts throttles in a row passes its own backoff; without a count
            // this is the first.
            FacebookError::Throttled { wait, .. } => {
                JobError::Snooze(wait.unwrap_or_else(|| throttle_backoff(0)))
            }
            FacebookError::Transient(_) => JobError::retry(&error),
            // The caller narrows the range; reaching here means one day is still too much.
            FacebookError::TooMuchData { .. } => JobError::retry(&error),
            FacebookError::NotConfigured
            | FacebookError::Token { .. }
            | FacebookError::Permanent(_) => JobError::discard(&error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_throttle_backoff_doubles_from_a_minute_up_to_fifteen() {
        for (n, secs) in [(0, 60), (1, 120), (2, 240), (3, 480), (4, 900), (40, 900)] {
            let wait = throttle_backoff(n);
            let base = Duration::from_secs(secs);
            assert!(wait >= base && wait <= base + base / 10, "{n}: {wait:?}");
        }
    }
}
