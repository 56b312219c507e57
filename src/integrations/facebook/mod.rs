//! The Facebook Marketing API (Graph) client: campaign-level daily insights of one ad account,
//! page by page, with the account's utilisation read from the usage headers of every answer
//! ([`client`]), the rows as Graph sends them, every metric a validated string ([`types`]), and
//! Graph's errors classified once into throttled / token / too much data / transient / permanent
//! ([`error`]). Knows nothing about jobs beyond the `From` into `JobError`.

pub mod client;
pub mod error;
pub mod types;

pub use client::{AccountUsage, FacebookClient, InsightsPage};
pub use error::{FacebookError, throttle_backoff};
pub use types::InsightRow;
