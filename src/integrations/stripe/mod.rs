//! Stripe (PROVIDERS.md §B): webhook signature verification ([`webhook`]), the envelope and the
//! few object fields we apply ([`types`]), and the read API client reconciliation uses
//! ([`client`]), with its errors classified once ([`error`]). Knows nothing about jobs or SQL:
//! `http::webhooks` verifies with it, `jobs::stripe_event` / `jobs::stripe_reconcile` read with it.
//!
//! **Why our own verification, not async-stripe's.** async-stripe 1.0.0-rc.10's `Webhook`
//! checks only the *last* `v1` signature of the header and rejects timestamps in the future.
//! Stripe's own libraries (the contract, §B.2) accept the event when *any* `v1` matches one of
//! the endpoint's secrets (during a secret roll Stripe sends one `v1` per active secret, in no
//! promised order) and check only the age. So [`webhook::Verifier`] is ~60 lines over `ring`:
//! HMAC-SHA256 of `"{t}.{raw body}"` keyed with the whole `whsec_...` string, compared in
//! constant time (`ring::hmac::verify`), against every configured secret (comma-separated in
//! `STRIPE_WEBHOOK_SECRET` while rotating), with a 300 s tolerance on the age.
//!
//! **Why reqwest, not async-stripe's client.** We need one call (`GET /v1/subscriptions`, paged
//! with `starting_after`) against a configurable base URL, over the ring rustls provider
//! (`crate::tls`); a plain reqwest client does that in a few lines and keeps aws-lc-rs out.

pub mod client;
pub mod error;
pub mod types;
pub mod webhook;

pub use client::StripeClient;
pub use error::StripeError;
pub use webhook::{Verifier, VerifyError};
