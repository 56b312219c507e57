//! Bearer tokens for `/v1/*`: created by an operator on the command line, shown once, stored as
//! their SHA-256 with their scopes; revoked, never deleted, so the audit trail stays.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use super::{ApiCaller, check_scope, known_scopes, random_token, token_hash};

/// Every token starts with this, so a leaked one is recognisable by secret scanners.
pub const PREFIX: &str = "baw_";

/// Creates a token named `name` with `scopes` and returns it in the clear: the only time it is.
/// An unknown scope (or a `jobs:write:<kind>` of a kind this binary does not run) is an error
/// naming it and the known ones.
pub async fn create(pool: &PgPool, name: &str, scopes: &[&str]) -> anyhow::Result<String> {
    if name.trim().is_empty() || name.len() > 200 {
        anyhow::bail!("a token name must be 1 to 200 characters");
    }
    if scopes.is_empty() {
        anyhow::bail!(
            "a token needs at least one --scope; known: {}",
            known_scopes()
        );
    }
    for scope in scopes {
        check_scope(scope).map_err(anyhow::Error::msg)?;
    }
    let token = random_token(PREFIX);
    let mut scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
    scopes.sort();
    scopes.dedup();
    sqlx::query("insert into api_tokens (name, token_hash, scopes) values ($1, $2, $3)")
        .bind(name)
        .bind(token_hash(&token))
        .bind(&scopes)
        .execute(pool)
        .await?;
    Ok(token)
}

/// The caller `token` identifies, if it is a live token.
pub async fn authenticate(pool: &PgPool, token: &str) -> Result<Option<ApiCaller>, sqlx::Error> {
    if !token.starts_with(PREFIX) || token.len() > 100 {
        return Ok(None);
    }
    let row: Option<(i64, String, Vec<String>, bool)> = sqlx::query_as(
        "select id, name, scopes,
                last_used_at is null or last_used_at < now() - interval '1 minute'
           from api_tokens
          where token_hash = $1 and revoked_at is null",
    )
    .bind(token_hash(token))
    .fetch_optional(pool)
    .await?;
    let Some((token_id, name, scopes, stale)) = row else {
        return Ok(None);
    };
    if stale {
        // At most one write a minute per token, off the request's path.
        let pool = pool.clone();
        tokio::spawn(async move {
            let _ = sqlx::query("update api_tokens set last_used_at = now() where id = $1")
                .bind(token_id)
                .execute(&pool)
                .await;
        });
    }
    Ok(Some(ApiCaller {
        token_id,
        name,
        scopes,
    }))
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct TokenInfo {
    pub id: i64,
    pub name: String,
    pub scopes: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

pub async fn list(pool: &PgPool) -> Result<Vec<TokenInfo>, sqlx::Error> {
    sqlx::query_as(
        "select id, name, scopes, created_at, last_used_at, revoked_at
           from api_tokens order by id",
    )
    .fetch_all(pool)
    .await
}

/// Revokes token `id`; false when there is no live token with that id.
pub async fn revoke(pool: &PgPool, id: i64) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "update api_tokens set revoked_at = now() where id = $1 and revoked_at is null",
    )
    .bind(id)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}
