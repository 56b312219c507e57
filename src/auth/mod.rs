//! Who may do what. Two kinds of caller, each with its own credential:
//!
//! - **Operators** use the dashboard: an account with an argon2 password hash
//!   (`baseaim-worker operators add`), a server-side session behind an HttpOnly, SameSite=Strict
//!   cookie, a CSRF token per session checked on every action, and a role (`admin` acts,
//!   `read_only` only looks). See [`session`].
//! - **Programs** use `/v1/*`: bearer tokens (`baseaim-worker tokens create --scope ...`) carrying
//!   scopes. See [`tokens`] and the [`ApiCaller`] extractor.
//!
//! Nothing secret is stored in the clear: passwords as argon2 PHC strings, session and API tokens
//! as their SHA-256 (they are long random values, so a fast hash is enough). A wrong or missing
//! credential is a bare 401: which part was wrong is not revealed.

pub mod command;
pub mod operators;
mod password;
pub mod session;
pub mod tokens;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use ring::digest;

use crate::http::HttpState;
use crate::http::error::ApiError;

pub use operators::Role;
pub use session::{Operator, SESSION_COOKIE};

/// The scopes a bearer token can carry, besides one [`KIND_SCOPE`] per job kind.
pub const SCOPES: [(&str, &str); 5] = [
    (
        "jobs:write",
        "enqueue any registered job kind (POST /v1/jobs)",
    ),
    (
        "emails:send",
        "ask for transactional emails (POST /v1/emails)",
    ),
    (
        "uploads:write",
        "upload client documents (POST /v1/uploads)",
    ),
    ("admin:read", "read the admin API (GET /v1/admin/*)"),
    (
        "admin:write",
        "act through the admin API (retry, cancel, pause, run schedules)",
    ),
];

/// `jobs:write:<kind>`: enqueue only that kind through `POST /v1/jobs`. A program that needs one
/// kind should not be able to enqueue `send_email` without `emails:send`'s checks, or replay a
/// Stripe event.
pub const KIND_SCOPE: &str = "jobs:write:";

/// Whether a token may carry `scope`: one of [`SCOPES`], or [`KIND_SCOPE`] and a kind this binary
/// runs. Err names what is wrong and what is known.
pub fn check_scope(scope: &str) -> Result<(), String> {
    if SCOPES.iter().any(|(s, _)| *s == scope) {
        return Ok(());
    }
    if let Some(kind) = scope.strip_prefix(KIND_SCOPE) {
        let registry = crate::http::api::registry();
        if registry.get(kind).is_some() {
            return Ok(());
        }
        let kinds: Vec<&str> = registry.kinds().collect();
        return Err(format!(
            "unknown scope `{scope}`: no job kind `{kind}`; kinds: {}",
            kinds.join(", ")
        ));
    }
    Err(format!(
        "unknown scope `{scope}`; known: {}",
        known_scopes()
    ))
}

/// The scopes a token can carry, for messages.
pub fn known_scopes() -> String {
    format!("{}, {KIND_SCOPE}<kind>", SCOPES.map(|(s, _)| s).join(", "))
}

/// A program that presented a valid bearer token.
#[derive(Clone, Debug)]
pub struct ApiCaller {
    pub token_id: i64,
    pub name: String,
    pub scopes: Vec<String>,
}

impl ApiCaller {
    /// Ok when the token carries `scope`; 403 naming the missing scope otherwise.
    pub fn require(&self, scope: &str) -> Result<(), ApiError> {
        debug_assert!(
            SCOPES.iter().any(|(s, _)| *s == scope),
            "unknown scope {scope}"
        );
        if self.scopes.iter().any(|s| s == scope) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this token lacks the `{scope}` scope"
            )))
        }
    }

    /// Ok when the token may enqueue some kind (`jobs:write`, or a `jobs:write:<kind>`), so a
    /// token that may not is refused before its body is read; [`Self::require_kind`] decides
    /// once the kind is known.
    pub fn require_enqueue(&self) -> Result<(), ApiError> {
        if self.scopes.iter().any(|s| s.starts_with(KIND_SCOPE)) {
            Ok(())
        } else {
            self.require("jobs:write")
        }
    }

    /// Ok when the token may enqueue `kind`: `jobs:write`, or `jobs:write:<kind>`. 403 naming the
    /// kinds it may enqueue otherwise.
    pub fn require_kind(&self, kind: &str) -> Result<(), ApiError> {
        let allowed: Vec<&str> = self
            .scopes
            .iter()
            .filter_map(|s| s.strip_prefix(KIND_SCOPE))
            .collect();
        if allowed.contains(&kind) || self.scopes.iter().any(|s| s == "jobs:write") {
            return Ok(());
        }
        Err(ApiError::Forbidden(format!(
            "this token may enqueue only {}: kind `{}` needs `jobs:write` or `{KIND_SCOPE}{}`",
            allowed
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", "),
            crate::http::api::shown(kind),
            crate::http::api::shown(kind),
        )))
    }
}

impl FromRequestParts<HttpState> for ApiCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &HttpState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(ApiError::Unauthorized)?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::Unauthorized)?;
        tokens::authenticate(&state.pool, token)
            .await?
            .ok_or(ApiError::Unauthorized)
    }
}

/// SHA-256 of a random token, as stored.
fn token_hash(token: &str) -> Vec<u8> {
    digest::digest(&digest::SHA256, token.as_bytes())
        .as_ref()
        .to_vec()
}

/// A fresh random token: `prefix` then 32 random bytes in URL-safe base64.
fn random_token(prefix: &str) -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}
