//! Dashboard sessions: a random token in an HttpOnly, SameSite=Strict cookie (Secure when served
//! over TLS), its SHA-256 in `operator_sessions` with the operator and a CSRF token. Every form
//! carries the CSRF token and every action checks it ([`Operator::authorize_action`]).

use std::net::IpAddr;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use sqlx::{AssertSqlSafe, PgPool};
use subtle::ConstantTimeEq;

use super::{Role, operators, random_token, token_hash};
use crate::http::HttpState;
use crate::http::error::ApiError;

pub const SESSION_COOKIE: &str = "baw_session";
/// How long a login lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// A logged-in operator (the dashboard's extractor). Without a valid session cookie the request
/// is answered 401 with a link to the login page.
#[derive(Clone, Debug)]
pub struct Operator {
    pub id: i64,
    pub username: String,
    pub role: Role,
    /// Goes into every form as the hidden field `csrf`.
    pub csrf_token: String,
}

impl Operator {
    /// Ok when this operator may act and `csrf` is the session's token; 403 otherwise.
    pub fn authorize_action(&self, csrf: Option<&str>) -> Result<(), ApiError> {
        let valid =
            csrf.is_some_and(|c| bool::from(c.as_bytes().ct_eq(self.csrf_token.as_bytes())));
        if !valid {
            return Err(ApiError::Forbidden(
                "missing or wrong CSRF token: reload the page and try again".into(),
            ));
        }
        if self.role != Role::Admin {
            return Err(ApiError::Forbidden(
                "read-only operators cannot change anything".into(),
            ));
        }
        Ok(())
    }

    pub fn can_act(&self) -> bool {
        self.role == Role::Admin
    }
}

/// The answer to a request without a valid session.
#[derive(Debug)]
pub enum SessionRejection {
    LoginRequired,
    Database(ApiError),
}

impl IntoResponse for SessionRejection {
    fn into_response(self) -> Response {
        match self {
            SessionRejection::LoginRequired => (
                StatusCode::UNAUTHORIZED,
                Html(
                    "<!doctype html><title>Login required</title>\
                     <p>Login required: <a href=\"/dashboard/login\">log in</a>.</p>",
                ),
            )
                .into_response(),
            SessionRejection::Database(e) => e.into_response(),
        }
    }
}

impl FromRequestParts<HttpState> for Operator {
    type Rejection = SessionRejection;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &HttpState,
    ) -> Result<Self, Self::Rejection> {
        let token = session_cookie(&parts.headers).ok_or(SessionRejection::LoginRequired)?;
        lookup(&state.pool, token)
            .await
            .map_err(|e| SessionRejection::Database(e.into()))?
            .ok_or(SessionRejection::LoginRequired)
    }
}

/// The session token in the request's cookies, if any.
pub fn session_cookie(headers: &axum::http::HeaderMap) -> Option<&str> {
    cookie(headers, SESSION_COOKIE)
}

/// The value of cookie `name` in the request, if any (and of a sane length).
pub fn cookie<'h>(headers: &'h axum::http::HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value)
        .filter(|v| !v.is_empty() && v.len() <= 100)
}

/// A fresh random token for a form (the login form's CSRF token, before any session exists).
pub fn form_token() -> String {
    random_token("")
}

async fn lookup(pool: &PgPool, token: &str) -> Result<Option<Operator>, sqlx::Error> {
    let row: Option<(i64, String, String, String)> = sqlx::query_as(
        "select o.id, o.username, o.role, s.csrf_token
           from operator_sessions s join operators o on o.id = s.operator_id
          where s.token_hash = $1 and s.expires_at > now() and o.disabled_at is null",
    )
    .bind(token_hash(token))
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(id, username, role, csrf_token)| Operator {
        id,
        username,
        role: Role::parse(&role).unwrap_or(Role::ReadOnly),
        csrf_token,
    }))
}

/// A new session: the cookie's value (the only place the token exists in the clear) and the
/// operator it belongs to.
pub struct NewSession {
    pub token: String,
    pub operator: Operator,
}

/// Failed logins of one user name within [`FAILURE_WINDOW`] that lock it for [`LOCKOUT`].
pub const MAX_FAILURES: i32 = 5;
/// Failed logins from one client address within [`FAILURE_WINDOW`], whatever the user names,
/// that lock the address for [`LOCKOUT`]: one password tried against many names (spraying)
/// never locks a name. High enough for a few people behind one NAT mistyping.
pub const MAX_ADDRESS_FAILURES: i32 = 20;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);
pub const LOCKOUT: Duration = Duration::from_secs(15 * 60);

/// Why [`login`] opened no session, beyond wrong credentials.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// Too many failed logins for this user name, or from this address, lately; try again after
    /// `wait`. The password was not checked.
    #[error("too many failed logins {}; try again in {} s", .by.describe(), .wait.as_secs())]
    Locked { by: LockedBy, wait: Duration },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// What a lock-out is counted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockedBy {
    UserName,
    Address,
}

impl LockedBy {
    pub fn describe(self) -> &'static str {
        match self {
            LockedBy::UserName => "for this user name",
            LockedBy::Address => "from this address",
        }
    }

    fn table(self) -> &'static str {
        match self {
            LockedBy::UserName => "login_failures",
            LockedBy::Address => "login_failures_by_address",
        }
    }

    fn key(self) -> &'static str {
        match self {
            LockedBy::UserName => "username",
            LockedBy::Address => "address",
        }
    }

    fn max_failures(self) -> i32 {
        match self {
            LockedBy::UserName => MAX_FAILURES,
            LockedBy::Address => MAX_ADDRESS_FAILURES,
        }
    }

    // The statements below are formatted with this enum's own table and column names, never with
    // input (`AssertSqlSafe`): the key is always bound.

    /// The time left on `key`'s lock-out, if it is locked.
    async fn locked(self, pool: &PgPool, key: &str) -> Result<Option<Duration>, sqlx::Error> {
        let (table, column) = (self.table(), self.key());
        let seconds: Option<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
            "select ceil(extract(epoch from locked_until - now()))::int8 from {table}
             where {column} = $1 and locked_until > now()"
        )))
        .bind(key)
        .fetch_optional(pool)
        .await?;
        Ok(seconds.map(|s| Duration::from_secs(s.max(1) as u64)))
    }

    /// Counts a failure of `key` (a new window once the last one is [`FAILURE_WINDOW`] old),
    /// locks it for [`LOCKOUT`] at the window's limit, and sweeps stale rows.
    async fn record_failure(self, pool: &PgPool, key: &str) -> Result<(), sqlx::Error> {
        let (table, column) = (self.table(), self.key());
        let window = FAILURE_WINDOW.as_secs_f64();
        let failures: i32 = sqlx::query_scalar(AssertSqlSafe(format!(
            "insert into {table} as f ({column}, failures, first_failed_at)
             values ($1, 1, now())
             on conflict ({column}) do update set
                 failures = case when f.first_failed_at > now() - make_interval(secs => $2)
                                 then f.failures + 1 else 1 end,
                 first_failed_at = case when f.first_failed_at > now() - make_interval(secs => $2)
                                        then f.first_failed_at else now() end
             returning failures"
        )))
        .bind(key)
        .bind(window)
        .fetch_one(pool)
        .await?;
        if failures >= self.max_failures() {
            sqlx::query(AssertSqlSafe(format!(
                "update {table} set locked_until = now() + make_interval(secs => $2),
                                    failures = 0, first_failed_at = now()
                 where {column} = $1"
            )))
            .bind(key)
            .bind(LOCKOUT.as_secs_f64())
            .execute(pool)
            .await?;
            tracing::warn!(
                locked = key,
                by = column,
                failures,
                minutes = LOCKOUT.as_secs() / 60,
                "dashboard login locked after repeated failures"
            );
        }
        sqlx::query(AssertSqlSafe(format!(
            "delete from {table}
             where first_failed_at < now() - make_interval(secs => $1)
               and (locked_until is null or locked_until < now())"
        )))
        .bind(window)
        .execute(pool)
        .await?;
        Ok(())
    }

    /// Forgets `key`'s failed logins, lifting a lock-out; false when there were none.
    async fn forget(self, pool: &PgPool, key: &str) -> Result<bool, sqlx::Error> {
        let (table, column) = (self.table(), self.key());
        let done = sqlx::query(AssertSqlSafe(format!(
            "delete from {table} where {column} = $1"
        )))
        .bind(key)
        .execute(pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }
}

/// Checks the credentials and opens a session; None when they are wrong (which part is not
/// said). `from` is the client's address, when known. A user name with [`MAX_FAILURES`] failed
/// logins within [`FAILURE_WINDOW`], or an address with [`MAX_ADDRESS_FAILURES`], is locked for
/// [`LOCKOUT`] ([`LoginError::Locked`]; the right password does not help meanwhile). A
/// successful login clears its name's failures, not its address's (a guesser with one account
/// of its own could otherwise reset its count). Expired sessions are swept here.
///
/// A user name no operator can have ([`operators::valid_name`]) is wrong before any query, and
/// nothing is recorded for it: a NUL or a megabyte in it would otherwise fail the database's
/// statements (after the address's failure was already counted).
pub async fn login(
    pool: &PgPool,
    username: &str,
    password: &str,
    from: Option<IpAddr>,
) -> Result<Option<NewSession>, LoginError> {
    if !operators::valid_name(username) {
        return Ok(None);
    }
    let address = from.map(address_key);
    let keys = [
        (LockedBy::Address, address.as_deref()),
        (LockedBy::UserName, Some(username)),
    ];
    for (by, key) in keys {
        if let Some(key) = key
            && let Some(wait) = by.locked(pool, key).await?
        {
            return Err(LoginError::Locked { by, wait });
        }
    }
    let Some((id, role)) = operators::verify(pool, username, password).await? else {
        for (by, key) in keys {
            if let Some(key) = key {
                by.record_failure(pool, key).await?;
            }
        }
        return Ok(None);
    };
    LockedBy::UserName.forget(pool, username).await?;
    sqlx::query("delete from operator_sessions where expires_at < now()")
        .execute(pool)
        .await?;
    let token = random_token("");
    let csrf_token = random_token("");
    sqlx::query(
        "insert into operator_sessions (token_hash, operator_id, csrf_token, expires_at)
         values ($1, $2, $3, now() + make_interval(secs => $4))",
    )
    .bind(token_hash(&token))
    .bind(id)
    .bind(&csrf_token)
    .bind(SESSION_TTL.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(Some(NewSession {
        token,
        operator: Operator {
            id,
            username: username.to_owned(),
            role,
            csrf_token,
        },
    }))
}

/// Forgets the failed logins of `name_or_address` (a user name, or a client address as the
/// lock-out's log line gave it), lifting a lock-out; false when there were none.
pub async fn unlock(pool: &PgPool, name_or_address: &str) -> Result<bool, sqlx::Error> {
    let name = LockedBy::UserName.forget(pool, name_or_address).await?;
    let network = name_or_address
        .strip_suffix("/64")
        .unwrap_or(name_or_address);
    let address = match network.parse::<IpAddr>() {
        Ok(ip) => LockedBy::Address.forget(pool, &address_key(ip)).await?,
        Err(_) => false,
    };
    Ok(name || address)
}

/// What failed logins are counted on for a client address: an IPv4 address as it is (an
/// IPv4-mapped IPv6 one too), an IPv6 address by its /64 network, the block one subscriber
/// usually holds, so a guesser cannot step through its own addresses to stay under the limit.
pub fn address_key(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let network = u128::from(v6) & !((1u128 << 64) - 1);
            format!("{}/64", std::net::Ipv6Addr::from(network))
        }
    }
}

/// Ends the session `token` belongs to.
pub async fn logout(pool: &PgPool, token: &str) -> Result<(), sqlx::Error> {
    sqlx::query("delete from operator_sessions where token_hash = $1")
        .bind(token_hash(token))
        .execute(pool)
        .await?;
    Ok(())
}

/// The `Set-Cookie` value that stores `token`; `secure` when served over TLS.
pub fn set_cookie(token: &str, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let value = format!(
        "{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        SESSION_TTL.as_secs()
    );
    HeaderValue::from_str(&value).expect("a token is URL-safe base64")
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static("baw_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}
