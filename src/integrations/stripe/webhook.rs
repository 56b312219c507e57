//! `Stripe-Signature` verification, as Stripe's official libraries do it (PROVIDERS.md §B.2):
//! parse `t` and every `v1` (other keys ignored, so no downgrade to `v0`), reject an age over the
//! tolerance, accept when any `v1` equals `hex(HMAC-SHA256(secret, "{t}.{body}"))` for any
//! configured secret, compared in constant time.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

/// Stripe's default tolerance on the signature's age.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// Why a delivery was refused. The messages are safe to send back to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing Stripe-Signature header")]
    NotSigned,
    #[error("invalid Stripe-Signature header")]
    InvalidHeader,
    #[error("no valid signature")]
    NoValidSignature,
    #[error("timestamp outside the tolerance")]
    Stale,
}

/// The endpoint's secrets (several during a rotation) and the tolerance.
pub struct Verifier {
    keys: Vec<ring::hmac::Key>,
    tolerance: Duration,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("secrets", &self.keys.len())
            .field("tolerance", &self.tolerance)
            .finish()
    }
}

impl Verifier {
    /// From `STRIPE_WEBHOOK_SECRET`: one secret, or several separated by commas. None if empty.
    pub fn new(secrets: &SecretString, tolerance: Duration) -> Option<Self> {
        let keys: Vec<_> = secrets
            .expose_secret()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, s.as_bytes()))
            .collect();
        (!keys.is_empty()).then_some(Verifier { keys, tolerance })
    }

    /// Checks `header` over the exact `body` bytes at Unix time `now`.
    pub fn verify(&self, header: Option<&str>, body: &[u8], now: i64) -> Result<(), VerifyError> {
        let header = header.map(str::trim).filter(|h| !h.is_empty());
        let header = header.ok_or(VerifyError::NotSigned)?;
        let mut timestamp = None;
        let mut signatures = Vec::new();
        for pair in header.split(',') {
            let mut parts = pair.trim().split('=');
            let (Some(key), Some(value), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(VerifyError::InvalidHeader);
            };
            match key {
                "t" => {
                    timestamp = Some(
                        value
                            .parse::<i64>()
                            .map_err(|_| VerifyError::InvalidHeader)?,
                    )
                }
                // Invalid hex is ignored, as the official libraries do.
                "v1" => signatures.extend(decode_hex(value)),
                _ => {}
            }
        }
        let timestamp = timestamp.ok_or(VerifyError::InvalidHeader)?;
        if signatures.is_empty() {
            return Err(VerifyError::NoValidSignature);
        }
        let mut signed = Vec::with_capacity(body.len() + 12);
        signed.extend_from_slice(timestamp.to_string().as_bytes());
        signed.push(b'.');
        signed.extend_from_slice(body);
        // One HMAC per secret, whatever the number of `v1` values: a header carrying thousands
        // of them must not cost thousands of passes over a 1 MiB body. Each candidate is then
        // compared in constant time. Checked before the age, like stripe-go, so a stale but
        // genuine delivery is reported as stale and a forged one as unsigned.
        let genuine = self.keys.iter().any(|key| {
            let expected = ring::hmac::sign(key, &signed);
            signatures
                .iter()
                .any(|sig| bool::from(expected.as_ref().ct_eq(sig.as_slice())))
        });
        if !genuine {
            return Err(VerifyError::NoValidSignature);
        }
        if now.saturating_sub(timestamp) > self.tolerance.as_secs() as i64 {
            return Err(VerifyError::Stale);
        }
        Ok(())
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &str, t: i64, body: &str) -> String {
        crate::sim::stripe::signature(secret, t, body)
    }

    fn verifier(secrets: &str) -> Verifier {
        Verifier::new(&SecretString::from(secrets), DEFAULT_TOLERANCE).unwrap()
    }

    #[test]
    fn accepts_any_matching_v1_against_any_secret() {
        let body = r#"{"id":"evt_1"}"#;
        let now = 1_700_000_000;
        let v = verifier("whsec_old, whsec_new");
        let header = format!(
            "t={now},v1={},v1={},v0=00",
            sign("whsec_new", now, body),
            sign("whsec_other", now, body)
        );
        assert_eq!(v.verify(Some(&header), body.as_bytes(), now), Ok(()));
        let header = format!("t={now},v1={}", sign("whsec_old", now, body));
        assert_eq!(v.verify(Some(&header), body.as_bytes(), now + 300), Ok(()));
    }

    #[test]
    fn rejects_forged_stale_and_malformed_headers() {
        let body = r#"{"id":"evt_1"}"#;
        let now = 1_700_000_000;
        let v = verifier("whsec_a");
        let good = format!("t={now},v1={}", sign("whsec_a", now, body));
        assert_eq!(
            v.verify(None, body.as_bytes(), now),
            Err(VerifyError::NotSigned)
        );
        assert_eq!(
            v.verify(Some(&good), b"{\"id\":\"evt_2\"}", now),
            Err(VerifyError::NoValidSignature)
        );
        assert_eq!(
            v.verify(Some(&good), body.as_bytes(), now + 301),
            Err(VerifyError::Stale)
        );
        let v0_only = format!("t={now},v0={}", sign("whsec_a", now, body));
        assert_eq!(
            v.verify(Some(&v0_only), body.as_bytes(), now),
            Err(VerifyError::NoValidSignature)
        );
        assert_eq!(
            v.verify(Some("t=1,v1"), body.as_bytes(), now),
            Err(VerifyError::InvalidHeader)
        );
        assert_eq!(
            v.verify(Some("v1=abcd"), body.as_bytes(), now),
            Err(VerifyError::InvalidHeader)
        );
    }
}
