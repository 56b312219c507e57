//! Logging in and out: a form posting the user name and password; on success the session cookie
//! of [`session`] (HttpOnly, SameSite=Strict, Secure with `http.secure_cookies`) and a redirect
//! to the overview. A wrong user name and a wrong password get the same answer.
//!
//! The login form is protected against cross-site posting too (login CSRF: another site logging
//! an operator into an account of its choosing): before any session exists, the form carries a
//! random token that must match a SameSite=Strict cookie set with it (double submit).

use std::net::{IpAddr, SocketAddr};

use askama::Template;
use axum::Extension;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use subtle::ConstantTimeEq;

use super::{FormData, WebError};
use crate::auth::Operator;
use crate::auth::session::{self, LoginError};
use crate::http::HttpState;
use crate::http::error::ApiError;

#[derive(Template)]
#[template(path = "dashboard/login.html")]
struct LoginPage {
    username: String,
    error: Option<String>,
    csrf: String,
}

/// The login form's CSRF cookie (only sent back to the login form's own path).
const LOGIN_CSRF_COOKIE: &str = "baw_login_csrf";

/// The login page with a fresh form token, set as a cookie too; `status` and `error` for a retry.
fn login_page(
    state: &HttpState,
    status: StatusCode,
    username: String,
    error: Option<String>,
) -> Result<Response, WebError> {
    let csrf = session::form_token();
    let secure = if state.app.config.http.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{LOGIN_CSRF_COOKIE}={csrf}; Path=/dashboard/login; HttpOnly; SameSite=Strict; Max-Age=3600{secure}"
    );
    let html = LoginPage {
        username,
        error,
        csrf,
    }
    .render()
    .map_err(|e| WebError(ApiError::Internal(e.into())))?;
    Ok((status, [(header::SET_COOKIE, cookie)], Html(html)).into_response())
}

pub async fn form(State(state): State<HttpState>) -> Result<Response, WebError> {
    login_page(&state, StatusCode::OK, String::new(), None)
}

/// The client's address: the TCP peer's or, with `http.client_address_header` set (a proxy in
/// front), the last address in that header (the one the proxy added; the ones before it are
/// whatever the client sent). None when neither is known.
fn client_address(
    state: &HttpState,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
) -> Option<IpAddr> {
    let header = state.app.config.http.client_address_header.as_str();
    let forwarded = (!header.is_empty())
        .then(|| headers.get_all(header).iter().next_back())
        .flatten()
        .and_then(|value| value.to_str().ok())
        .and_then(|list| list.rsplit(',').next())
        .map(str::trim)
        .and_then(|last| {
            last.parse::<IpAddr>()
                .ok()
                .or_else(|| last.parse::<SocketAddr>().ok().map(|a| a.ip()))
        });
    forwarded.or(peer.map(|p| p.ip()))
}

pub async fn submit(
    State(state): State<HttpState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    form: FormData,
) -> Result<Response, WebError> {
    let expected = session::cookie(&headers, LOGIN_CSRF_COOKIE);
    let posted_with_form = matches!((expected, form.csrf()),
        (Some(cookie), Some(field)) if bool::from(cookie.as_bytes().ct_eq(field.as_bytes())));
    if !posted_with_form {
        return login_page(
            &state,
            StatusCode::FORBIDDEN,
            String::new(),
            Some("The login form expired or came from elsewhere: log in again here.".into()),
        );
    }
    let username = form.get("username").unwrap_or_default().trim().to_owned();
    let password = form.get("password").unwrap_or_default();
    let session = if username.is_empty() || password.is_empty() {
        None
    } else {
        let from = client_address(&state, &headers, peer.map(|Extension(ConnectInfo(a))| a));
        match session::login(&state.pool, &username, password, from).await {
            Ok(session) => session,
            Err(LoginError::Locked { by, wait }) => {
                let minutes = wait.as_secs().div_ceil(60);
                let mut page = login_page(
                    &state,
                    StatusCode::TOO_MANY_REQUESTS,
                    username,
                    Some(format!(
                        "Too many failed logins {}: try again in {minutes} minute{}.",
                        by.describe(),
                        if minutes == 1 { "" } else { "s" }
                    )),
                )?;
                page.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(wait.as_secs()));
                return Ok(page);
            }
            Err(LoginError::Database(error)) => return Err(error.into()),
        }
    };
    let Some(session) = session else {
        // A name no operator can have (a megabyte, control characters) is not shown back.
        let shown = if crate::auth::operators::valid_name(&username) {
            username
        } else {
            String::new()
        };
        return login_page(
            &state,
            StatusCode::UNAUTHORIZED,
            shown,
            Some("Wrong user name or password.".into()),
        );
    };
    tracing::info!(operator = %session.operator.username, "operator logged in");
    let cookie = session::set_cookie(&session.token, state.app.config.http.secure_cookies);
    Ok(([(header::SET_COOKIE, cookie)], Redirect::to("/dashboard")).into_response())
}

/// Ends the session. Any operator may log out (read-only ones too), but only with the session's
/// CSRF token, so another site cannot log an operator out.
pub async fn logout(
    State(state): State<HttpState>,
    operator: Operator,
    headers: HeaderMap,
    form: FormData,
) -> Result<Response, WebError> {
    let valid = form
        .csrf()
        .is_some_and(|c| bool::from(c.as_bytes().ct_eq(operator.csrf_token.as_bytes())));
    if !valid {
        return Err(WebError(ApiError::Forbidden(
            "missing or wrong CSRF token: reload the page and try again".into(),
        )));
    }
    if let Some(token) = session::session_cookie(&headers) {
        session::logout(&state.pool, token).await?;
    }
    tracing::info!(operator = %operator.username, "operator logged out");
    Ok((
        [(header::SET_COOKIE, session::clear_cookie())],
        Redirect::to("/dashboard/login"),
    )
        .into_response())
}
