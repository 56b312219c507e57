//! Dashboard sessions: a random token in an HttpOnly, SameSite=Strict cookie (Secure when served
//! over TLS), its SHA-256 in `operator_sessions` with the operator and a CSRF token. Every form
//! carries the CSRF token and every action checks it ([`Operator::authorize_action`]).

use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use sqlx::PgPool;
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
pub const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);
pub const LOCKOUT: Duration = Duration::from_secs(15 * 60);

/// Why [`login`] opened no session, beyond wrong credentials.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// Too many failed logins for this user name lately; try again after the duration. The
    /// password was not checked.
    #[error("too many failed logins for this user name; try again in {} s", .0.as_secs())]
    Locked(Duration),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// The seconds left on `$1`'s lock-out, if it is locked.
const LOGIN_LOCKED: &str = "
select ceil(extract(epoch from locked_until - now()))::int8 from login_failures
where username = $1 and locked_until > now()";

/// Counts a failure of `$1` (a new window once the last one is `$2` seconds old) and locks the
/// name for `$4` seconds at the `$3`th failure of a window.
const LOGIN_FAILED: &str = "
insert into login_failures as f (username, failures, first_failed_at)
values ($1, 1, now())
on conflict (username) do update set
    failures = case when f.first_failed_at > now() - make_interval(secs => $2)
                    then f.failures + 1 else 1 end,
    first_failed_at = case when f.first_failed_at > now() - make_interval(secs => $2)
                           then f.first_failed_at else now() end
returning failures";

const LOGIN_LOCK: &str = "
update login_failures set locked_until = now() + make_interval(secs => $2), failures = 0,
                          first_failed_at = now()
where username = $1";

const LOGIN_FAILURES_SWEEP: &str = "
delete from login_failures
where first_failed_at < now() - make_interval(secs => $1)
  and (locked_until is null or locked_until < now())";

/// Checks the credentials and opens a session; None when they are wrong (which part is not
/// said). A user name with [`MAX_FAILURES`] failed logins within [`FAILURE_WINDOW`] is locked
/// for [`LOCKOUT`] ([`LoginError::Locked`]; the right password does not help meanwhile).
/// Expired sessions are swept here.
pub async fn login(
    pool: &PgPool,
    username: &str,
    password: &str,
) -> Result<Option<NewSession>, LoginError> {
    let locked: Option<i64> = sqlx::query_scalar(LOGIN_LOCKED)
        .bind(username)
        .fetch_optional(pool)
        .await?;
    if let Some(seconds) = locked {
        return Err(LoginError::Locked(Duration::from_secs(
            seconds.max(1) as u64
        )));
    }
    let Some((id, role)) = operators::verify(pool, username, password).await? else {
        record_failure(pool, username).await?;
        return Ok(None);
    };
    sqlx::query("delete from login_failures where username = $1")
        .bind(username)
        .execute(pool)
        .await?;
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

/// Forgets `username`'s failed logins, lifting a lock-out; false when there were none.
pub async fn unlock(pool: &PgPool, username: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("delete from login_failures where username = $1")
        .bind(username)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() > 0)
}

async fn record_failure(pool: &PgPool, username: &str) -> Result<(), sqlx::Error> {
    let failures: i32 = sqlx::query_scalar(LOGIN_FAILED)
        .bind(username)
        .bind(FAILURE_WINDOW.as_secs_f64())
        .fetch_one(pool)
        .await?;
    if failures >= MAX_FAILURES {
        sqlx::query(LOGIN_LOCK)
            .bind(username)
            .bind(LOCKOUT.as_secs_f64())
            .execute(pool)
            .await?;
        tracing::warn!(
            username,
            failures,
            minutes = LOCKOUT.as_secs() / 60,
            "dashboard login locked after repeated failures"
        );
    }
    sqlx::query(LOGIN_FAILURES_SWEEP)
        .bind(FAILURE_WINDOW.as_secs_f64())
        .execute(pool)
        .await?;
    Ok(())
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
