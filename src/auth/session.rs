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

/// Checks the credentials and opens a session; None when they are wrong (which part is not
/// said). Expired sessions are swept here.
pub async fn login(
    pool: &PgPool,
    username: &str,
    password: &str,
) -> Result<Option<NewSession>, sqlx::Error> {
    let Some((id, role)) = operators::verify(pool, username, password).await? else {
        return Ok(None);
    };
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
