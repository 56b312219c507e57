//! Every way a send can fail, classified once (PROVIDERS.md §C.3). The job converts with `From`.

use std::time::Duration;

use crate::queue::JobError;

/// How long an email waits for a daily or monthly sending quota before it is tried again. When
/// a quota resets, and under which headers Resend says so, is not documented (PROVIDERS.md §C.5),
/// so an email looks again every hour; a snooze, so it is never failed by the wait (except one
/// whose earlier attempt may have been accepted: the `send_email` job will not send it again once
/// Resend may have forgotten its key, see `jobs::send_email`).
pub const QUOTA_RECHECK: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, thiserror::Error)]
pub enum ResendError {
    /// 429 `rate_limit_exceeded`: wait `wait` (from `retry-after` / `ratelimit-reset`) and send
    /// again; not a failure of the job.
    #[error("rate limited by Resend; retry in {wait:?}")]
    RateLimited { wait: Duration },
    /// 409 `concurrent_idempotent_requests`: the first request with this key is still in flight.
    #[error("an earlier request with the same idempotency key is still in progress")]
    InFlight,
    /// 409 `invalid_idempotent_request`: the key was used with another body. A bug on our side
    /// (the same key must always carry the same email); never retried.
    #[error("idempotency conflict: {message}")]
    IdempotencyConflict { message: String },
    /// 429 daily/monthly quota: not soon (§C.3); waits [`QUOTA_RECHECK`] without spending an
    /// attempt, since the email is still wanted once the quota resets.
    #[error("sending quota exceeded ({name}): {message}")]
    Quota { name: String, message: String },
    /// 5xx: Resend failed; retry with the same key.
    #[error("Resend server error {status} ({name}): {message}")]
    Server {
        status: u16,
        name: String,
        message: String,
    },
    /// Timeout, cut connection, unreadable body: the email may or may not have been accepted;
    /// retrying with the same key is safe while Resend remembers the key (24 h, §C.4).
    #[error("Resend transport error: {0}")]
    Transport(String),
    /// No connection could be made (refused, DNS, TLS handshake): the request never left, so
    /// nothing was accepted; retried like [`ResendError::Transport`].
    #[error("Resend transport error: {0}")]
    Unreached(String),
    /// The request could not be built (e.g. a header value that is not one): nothing was sent,
    /// and sending the same again fails the same way. A bug on our side; never retried.
    #[error("the request to Resend could not be built: {0}")]
    Request(String),
    /// Any other 4xx (validation, auth, unverified domain): permanent, with Resend's message.
    #[error("Resend rejected the email: {status} {name}: {message}")]
    Rejected {
        status: u16,
        name: String,
        message: String,
    },
}

impl ResendError {
    /// Whether Resend may have accepted the email although the call failed: a timeout, a cut
    /// connection or answer, a 5xx. A retry is then safe only with the same key and within the
    /// key's 24 hours. Every other error is an answer Resend gave before accepting (4xx, 429),
    /// or a request that never left.
    pub fn may_have_been_accepted(&self) -> bool {
        matches!(self, ResendError::Server { .. } | ResendError::Transport(_))
    }

    /// Classifies a non-2xx answer from its status, Resend's error `name` and the headers' wait.
    pub(crate) fn from_response(
        status: u16,
        name: String,
        message: String,
        wait: Option<Duration>,
    ) -> Self {
        match (status, name.as_str()) {
            (429, "daily_quota_exceeded" | "monthly_quota_exceeded") => {
                ResendError::Quota { name, message }
            }
            (429, _) => ResendError::RateLimited {
                wait: wait.unwrap_or(Duration::from_secs(1)),
            },
            (409, "concurrent_idempotent_requests") => ResendError::InFlight,
            (409, "invalid_idempotent_request") => ResendError::IdempotencyConflict { message },
            (500..=599, _) => ResendError::Server {
                status,
                name,
                message,
            },
            _ => ResendError::Rejected {
                status,
                name,
                message,
            },
        }
    }
}

impl From<ResendError> for JobError {
    fn from(error: ResendError) -> Self {
        match error {
            ResendError::RateLimited { wait } => JobError::Snooze(wait),
            ResendError::InFlight => JobError::Snooze(Duration::from_secs(5)),
            ResendError::Quota { .. } => JobError::Snooze(QUOTA_RECHECK),
            ResendError::Server { .. } | ResendError::Transport(_) | ResendError::Unreached(_) => {
                JobError::retry(error)
            }
            ResendError::IdempotencyConflict { .. }
            | ResendError::Request(_)
            | ResendError::Rejected { .. } => JobError::discard(error),
        }
    }
}
