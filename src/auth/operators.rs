//! Operator accounts: a user name, an argon2 password hash and a role.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use super::password;

/// What an operator may do on the dashboard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Sees everything and acts: retry, cancel, delete, pause, run schedules, replay.
    Admin,
    /// Sees everything, changes nothing.
    #[value(name = "read-only")]
    ReadOnly,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::ReadOnly => "read_only",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "read_only" => Some(Role::ReadOnly),
            _ => None,
        }
    }
}

/// Whether `username` can be an operator's name: 1 to 64 ASCII letters, digits or `. _ @ -`
/// (what `operators add` accepts, and the `operators` table's check). A login under any other
/// name is wrong before anything is looked up.
pub fn valid_name(username: &str) -> bool {
    (1..=64).contains(&username.len())
        && username
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._@-".contains(c))
}

/// Creates an operator; the error names what was wrong (name, password, already exists).
pub async fn add(pool: &PgPool, username: &str, pw: &str, role: Role) -> anyhow::Result<i64> {
    if !valid_name(username) {
        anyhow::bail!(
            "an operator name is 1 to 64 letters, digits or . _ @ -, not `{}`",
            username.escape_debug()
        );
    }
    if pw.chars().count() < password::MIN_LENGTH {
        anyhow::bail!(
            "the password must have at least {} characters",
            password::MIN_LENGTH
        );
    }
    let hash = password::hash(pw)?;
    let id = sqlx::query_scalar(
        "insert into operators (username, password_hash, role) values ($1, $2, $3)
         on conflict (username) do nothing returning id",
    )
    .bind(username)
    .bind(hash)
    .bind(role.as_str())
    .fetch_optional(pool)
    .await?;
    id.ok_or_else(|| anyhow::anyhow!("an operator named `{username}` already exists"))
}

/// The operator's id and role when `username` exists, is enabled and `pw` is its password.
pub async fn verify(
    pool: &PgPool,
    username: &str,
    pw: &str,
) -> Result<Option<(i64, Role)>, sqlx::Error> {
    let row: Option<(i64, String, String)> = sqlx::query_as(
        "select id, password_hash, role from operators
          where username = $1 and disabled_at is null",
    )
    .bind(username)
    .fetch_optional(pool)
    .await?;
    // Argon2 takes tens of milliseconds of CPU: off the async threads, for a user name that
    // does not exist too (its dummy verification spends the same time, so timing tells nothing).
    let pw = pw.to_owned();
    let Some((id, hash, role)) = row else {
        let _ = tokio::task::spawn_blocking(move || password::verify_dummy(&pw)).await;
        return Ok(None);
    };
    let ok = tokio::task::spawn_blocking(move || password::verify(&pw, &hash))
        .await
        .unwrap_or(false);
    Ok(ok.then(|| (id, Role::parse(&role).unwrap_or(Role::ReadOnly))))
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct OperatorInfo {
    pub id: i64,
    pub username: String,
    pub role: String,
    pub created_at: DateTime<Utc>,
    pub disabled_at: Option<DateTime<Utc>>,
}

pub async fn list(pool: &PgPool) -> Result<Vec<OperatorInfo>, sqlx::Error> {
    sqlx::query_as("select id, username, role, created_at, disabled_at from operators order by id")
        .fetch_all(pool)
        .await
}

/// Disables `username` and ends its sessions; false when there is no such enabled operator.
pub async fn disable(pool: &PgPool, username: &str) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let id: Option<i64> = sqlx::query_scalar(
        "update operators set disabled_at = now()
          where username = $1 and disabled_at is null returning id",
    )
    .bind(username)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(id) = id {
        sqlx::query("delete from operator_sessions where operator_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(id.is_some())
}

/// Creates `username` or, if it exists, sets its password and role and enables it: for the demo,
/// which prints a fresh password each run.
pub async fn upsert(pool: &PgPool, username: &str, pw: &str, role: Role) -> anyhow::Result<i64> {
    if !valid_name(username) {
        anyhow::bail!(
            "an operator name is 1 to 64 letters, digits or . _ @ -, not `{}`",
            username.escape_debug()
        );
    }
    if pw.chars().count() < password::MIN_LENGTH {
        anyhow::bail!(
            "the password must have at least {} characters",
            password::MIN_LENGTH
        );
    }
    let hash = password::hash(pw)?;
    let id = sqlx::query_scalar(
        "insert into operators (username, password_hash, role) values ($1, $2, $3)
         on conflict (username) do update
            set password_hash = excluded.password_hash, role = excluded.role, disabled_at = null
         returning id",
    )
    .bind(username)
    .bind(hash)
    .bind(role.as_str())
    .fetch_one(pool)
    .await?;
    Ok(id)
}
