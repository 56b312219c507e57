//! Cluster-wide token buckets, kept in the `rate_limits` table so a provider's limit holds across
//! every node. A kind names a bucket in its policy; each run takes a token first, and a run that
//! finds none is snoozed (its attempt given back) until a token is due.

use std::collections::BTreeMap;
use std::time::Duration;

use sqlx::PgPool;

use super::sql;
use crate::config::RateLimitConfig;

/// Declares the configured buckets (keeping the tokens of existing ones).
pub async fn declare(
    pool: &PgPool,
    limits: &BTreeMap<String, RateLimitConfig>,
) -> Result<(), sqlx::Error> {
    for (name, limit) in limits {
        let rate_per_s = limit.rate / limit.per.as_secs_f64();
        sqlx::query(sql::RATE_LIMIT_UPSERT)
            .bind(name)
            .bind(rate_per_s)
            .bind(limit.burst)
            .execute(pool)
            .await?;
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum RateLimitError {
    #[error("rate limit `{0}` is not declared (add [rate_limits.{0}] to the config)")]
    Unknown(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Takes one token from `bucket`. `Ok(None)`: taken, go. `Ok(Some(wait))`: none left; the next is
/// due in about `wait` (spread a little so waiting jobs do not all come back at once).
pub async fn take(pool: &PgPool, bucket: &str) -> Result<Option<Duration>, RateLimitError> {
    let row: Option<(f64, f64, bool)> = sqlx::query_as(sql::RATE_LIMIT_TAKE)
        .bind(bucket)
        .fetch_optional(pool)
        .await?;
    let Some((available, rate_per_s, taken)) = row else {
        return Err(RateLimitError::Unknown(bucket.into()));
    };
    if taken {
        return Ok(None);
    }
    let due = ((1.0 - available).max(0.0) / rate_per_s).max(0.001);
    // Up to one more token interval of spread.
    let spread = rand::random_range(0.0..=1.0 / rate_per_s);
    Ok(Some(Duration::from_secs_f64(due + spread)))
}
