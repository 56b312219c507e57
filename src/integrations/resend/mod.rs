//! Resend (transactional email), PROVIDERS.md §C: [`ResendClient`] sends one email with an
//! `Idempotency-Key`; [`ResendError`] classifies every failure once (snooze, retry, permanent,
//! idempotency conflict). Knows nothing about jobs or templates.
//!
//! A small reqwest client rather than the `resend-rs` crate: resend-rs depends on reqwest 0.12
//! (a second reqwest next to our 0.13, with its own TLS features), carries its own per-process
//! rate limiter (configured by environment variable) that would disagree with our cluster-wide
//! bucket, and we need the `retry-after` / `ratelimit-reset` headers to snooze precisely.

mod client;
mod error;
mod types;

pub use client::ResendClient;
pub use error::ResendError;
pub use types::{SendEmailRequest, SentEmail, Tag};
