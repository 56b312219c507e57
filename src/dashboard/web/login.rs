//! Logging in and out: a form posting the user name and password; on success the session cookie
//! of [`session`] (HttpOnly, SameSite=Strict, Secure with `http.secure_cookies`) and a redirect
//! to the overview. A wrong user name and a wrong password get the same answer.

use askama::Template;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use subtle::ConstantTimeEq;

use super::{FormData, WebError};
use crate::auth::{Operator, session};
use crate::http::HttpState;
use crate::http::error::ApiError;

#[derive(Template)]
#[template(path = "dashboard/login.html")]
struct LoginPage {
    username: String,
    error: Option<&'static str>,
}

pub async fn form() -> Result<Response, WebError> {
    super::render(&LoginPage {
        username: String::new(),
        error: None,
    })
}

pub async fn submit(State(state): State<HttpState>, form: FormData) -> Result<Response, WebError> {
    let username = form.get("username").unwrap_or_default().trim().to_owned();
    let password = form.get("password").unwrap_or_default();
    let session = if username.is_empty() || password.is_empty() {
        None
    } else {
        session::login(&state.pool, &username, password).await?
    };
    let Some(session) = session else {
        let page = LoginPage {
            username,
            error: Some("Wrong user name or password."),
        };
        let html = page
            .render()
            .map_err(|e| WebError(ApiError::Internal(e.into())))?;
        return Ok((StatusCode::UNAUTHORIZED, Html(html)).into_response());
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
