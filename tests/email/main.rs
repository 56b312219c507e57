//! Transactional email against the real PostgreSQL and the Resend simulator: templates, the
//! `send_email` job's exactly-once sending, error classification, the cluster-wide rate limit,
//! and the email log.

#[path = "../support/mod.rs"]
mod support;

mod common;
mod rate;
mod send;
mod templates;
mod unknown_outcome;
