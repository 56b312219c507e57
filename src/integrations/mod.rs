//! One client per external provider (`facebook`, `stripe`, `resend`, `google_drive`), each with a
//! configurable base URL and timeouts, and an `error.rs` that classifies failures once as retry,
//! snooze-until, permanent or auth. Integrations know nothing about jobs or the queue.

pub mod drive;
pub mod facebook;
pub mod resend;

pub mod stripe;

use std::time::Duration;

/// The longest wait a provider's header is taken at its word for.
pub const MAX_PROVIDER_WAIT: Duration = Duration::from_secs(24 * 3600);

/// A wait of `secs` seconds as a provider's header gave it (`Retry-After: 1e20` included),
/// clamped to [`MAX_PROVIDER_WAIT`]; `None` for a negative or NaN value, so the caller's default
/// applies. `Duration::from_secs_f64` would panic on a value too large for a `Duration`.
pub(crate) fn provider_wait(secs: f64) -> Option<Duration> {
    if secs.is_nan() || secs < 0.0 {
        return None;
    }
    Some(
        Duration::try_from_secs_f64(secs)
            .unwrap_or(MAX_PROVIDER_WAIT)
            .min(MAX_PROVIDER_WAIT),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_waits_are_clamped_and_never_panic() {
        assert_eq!(provider_wait(1.5), Some(Duration::from_millis(1500)));
        assert_eq!(provider_wait(0.0), Some(Duration::ZERO));
        assert_eq!(provider_wait(1e20), Some(MAX_PROVIDER_WAIT));
        assert_eq!(provider_wait(f64::INFINITY), Some(MAX_PROVIDER_WAIT));
        assert_eq!(provider_wait(-1.0), None);
        assert_eq!(provider_wait(f64::NAN), None);
    }
}
