//! Cluster-wide token buckets, kept in the `rate_limits` table so a provider's limit holds across
//! every node. A kind names a bucket in its policy; each run first reserves a token due within a
//! short wait and sleeps until it ([`reserve`]); a run whose token is further away is snoozed
//! (its attempt given back) until shortly before. Code that paces itself inside a job (the
//! Facebook sync's pages) uses [`take`], which never goes into debt.

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
    // A token due within no wait at all is one that is there now: no debt.
    let (available, rate_per_s, taken) = reserve_row(pool, bucket, Duration::ZERO).await?;
    if taken {
        return Ok(None);
    }
    let due = ((1.0 - available).max(0.0) / rate_per_s).max(0.001);
    // Up to one more token interval of spread.
    let spread = rand::random_range(0.0..=1.0 / rate_per_s);
    Ok(Some(Duration::from_secs_f64(due + spread)))
}

/// [`sql::RATE_LIMIT_RESERVE`]: the bucket's tokens (after refill, before taking), its rate, and
/// whether a token due within `max_wait` was taken.
async fn reserve_row(
    pool: &PgPool,
    bucket: &str,
    max_wait: Duration,
) -> Result<(f64, f64, bool), RateLimitError> {
    sqlx::query_as(sql::RATE_LIMIT_RESERVE)
        .bind(bucket)
        .bind(max_wait.as_secs_f64())
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| RateLimitError::Unknown(bucket.into()))
}

/// What [`reserve`] got.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reservation {
    /// A token is this caller's once `wait` has passed (zero: now). It is already counted, so
    /// sleeping `wait` and going is all there is to do: no retry, no herd of waiters, and no
    /// token lost to a waiter's late wake-up.
    Reserved(Duration),
    /// The next free token is further away than the caller would wait; nothing was taken.
    /// Coming back after `retry_in` finds one within the wait it accepts.
    Busy { retry_in: Duration },
}

/// Reserves the next token of `bucket` if it is due within `max_wait` (the bucket may go into
/// debt, which later takers repay: tokens are handed out in order, at the bucket's rate).
pub async fn reserve(
    pool: &PgPool,
    bucket: &str,
    max_wait: Duration,
) -> Result<Reservation, RateLimitError> {
    let (available, rate_per_s, taken) = reserve_row(pool, bucket, max_wait).await?;
    let due = Duration::from_secs_f64((1.0 - available).max(0.0) / rate_per_s);
    if taken {
        return Ok(Reservation::Reserved(due));
    }
    // Back just inside the accepted wait, spread a little so snoozed jobs do not all return at
    // once.
    let spread = Duration::from_secs_f64(rand::random_range(0.0..=1.0 / rate_per_s).min(1.0));
    Ok(Reservation::Busy {
        retry_in: due.saturating_sub(max_wait / 2) + spread,
    })
}
