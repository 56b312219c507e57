//! Every way a Drive call can fail, classified once (PROVIDERS.md §D.7). Jobs convert with `From`.

use std::time::Duration;

use crate::queue::JobError;

/// Longest wait after repeated rate-limit refusals (Google's maximum backoff, §D.7).
pub const MAX_THROTTLE_WAIT: Duration = Duration::from_secs(64);

/// The wait after the `n`-th rate-limit refusal in a row (1-based) when Drive sent no
/// `Retry-After`: `min(2^n, 64) s` plus up to a second of jitter (Google's truncated exponential
/// backoff, §D.7). Every Drive job snoozes by this; each counts its own refusals.
pub fn throttle_wait(n: i32) -> Duration {
    let base = Duration::from_secs(1u64 << n.clamp(0, 6) as u32).min(MAX_THROTTLE_WAIT);
    base + Duration::from_millis(rand::random_range(0..1000))
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum DriveError {
    /// 403 `userRateLimitExceeded` / `rateLimitExceeded`, or 429: back off and try again; not a
    /// failure of the job. `wait` is Drive's `Retry-After` when it sent one.
    #[error("rate limited by Drive ({reason})")]
    RateLimited {
        reason: String,
        wait: Option<Duration>,
    },
    /// 5xx: Drive failed; resume (an upload queries its status first).
    #[error("Drive server error {status}: {message}")]
    Server { status: u16, message: String },
    /// Timeout, refused or cut connection, unreadable answer: the request may or may not have
    /// taken effect; resuming (status query, appProperties lookup) is safe.
    #[error("Drive transport error: {0}")]
    Transport(String),
    /// The service account's credentials were refused (by the token endpoint, or 401 again after
    /// a fresh token): permanent until an operator fixes the key.
    #[error("Drive refused the service account: {0}")]
    Auth(String),
    /// The token endpoint refused the assertion's `iat`/`exp` (400 `invalid_grant`): this host's
    /// clock is off. Retried, spending attempts, in case the clock is set right meanwhile.
    #[error("the token endpoint refused the JWT's time, is this host's clock off? ({0})")]
    ClockSkew(String),
    /// The resumable session is gone (404/410 on the session URI): start a new one.
    #[error("the upload session expired")]
    SessionExpired,
    /// Any other 4xx (404 on the folder, permissions, storage quota, bad request): permanent,
    /// with Drive's reason and message.
    #[error("Drive rejected the request: {status} {reason}: {message}")]
    Rejected {
        status: u16,
        reason: String,
        message: String,
    },
    /// Missing or unusable configuration (no key, bad key, no folder).
    #[error("Drive is not configured: {0}")]
    Unconfigured(String),
}

impl DriveError {
    /// Classifies a non-2xx answer from its status and Drive's first `errors[].reason`.
    pub(crate) fn from_response(
        status: u16,
        reason: String,
        message: String,
        wait: Option<Duration>,
    ) -> Self {
        match (status, reason.as_str()) {
            (403, "userRateLimitExceeded" | "rateLimitExceeded") | (429, _) => {
                DriveError::RateLimited { reason, wait }
            }
            (500..=599, _) => DriveError::Server { status, message },
            (401, _) => DriveError::Auth(format!("{reason}: {message}")),
            _ => DriveError::Rejected {
                status,
                reason,
                message,
            },
        }
    }

    /// True for failures that are worth resuming in place (a cut or a 5xx).
    pub fn is_transient(&self) -> bool {
        matches!(self, DriveError::Server { .. } | DriveError::Transport(_))
    }

    /// True when the job should give up and record the failure on the document.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            DriveError::Auth(_) | DriveError::Rejected { .. } | DriveError::Unconfigured(_)
        )
    }
}

impl From<DriveError> for JobError {
    fn from(error: DriveError) -> Self {
        match error {
            // The first refusal's wait: a job that counts refusals in a row snoozes by
            // `throttle_wait` of its count instead (`jobs::drive_upload::throttled`).
            DriveError::RateLimited { wait, .. } => {
                JobError::Snooze(wait.unwrap_or_else(|| throttle_wait(1)))
            }
            DriveError::Server { .. }
            | DriveError::Transport(_)
            | DriveError::SessionExpired
            | DriveError::ClockSkew(_) => JobError::retry(error),
            DriveError::Auth(_) | DriveError::Rejected { .. } | DriveError::Unconfigured(_) => {
                JobError::discard(error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_as_the_contract_says() {
        let rate = |s: u16, r: &str| DriveError::from_response(s, r.into(), "m".into(), None);
        assert!(matches!(
            rate(403, "userRateLimitExceeded"),
            DriveError::RateLimited { .. }
        ));
        assert!(matches!(
            rate(403, "rateLimitExceeded"),
            DriveError::RateLimited { .. }
        ));
        assert!(matches!(
            rate(429, "rateLimitExceeded"),
            DriveError::RateLimited { .. }
        ));
        assert!(matches!(
            rate(503, "backendError"),
            DriveError::Server { .. }
        ));
        assert!(matches!(
            rate(403, "storageQuotaExceeded"),
            DriveError::Rejected { .. }
        ));
        assert!(matches!(rate(404, "notFound"), DriveError::Rejected { .. }));
        assert!(matches!(rate(401, "authError"), DriveError::Auth(_)));
        assert!(matches!(
            JobError::from(rate(400, "badRequest")),
            JobError::Discard(_)
        ));
    }

    #[test]
    fn the_throttle_wait_doubles_up_to_64_seconds() {
        for (n, secs) in [(1, 2), (2, 4), (3, 8), (6, 64), (7, 64), (40, 64)] {
            let wait = throttle_wait(n);
            let base = Duration::from_secs(secs);
            assert!(
                wait >= base && wait < base + Duration::from_secs(1),
                "{n}: {wait:?}"
            );
        }
    }
}
