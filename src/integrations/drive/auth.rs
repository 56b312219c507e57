//! The service account's access token (PROVIDERS.md §D.1): an RS256 JWT signed with ring, traded
//! at the key file's `token_uri` for a one-hour bearer token, cached until a minute before it
//! expires. One token source per client, shared by every job of the node; a 401 invalidates
//! the token it was given so the next call mints a fresh one.
//!
//! The mint holds the cache's lock (jobs that find the token stale wait for one mint instead of
//! each minting their own), so a token endpoint that never answers would stall every Drive job
//! of the node: the request has a whole-request timeout ([`TOKEN_TIMEOUT`] at most, a token
//! answer is a few hundred bytes), a timeout is a transport error (transient: the job retries),
//! and the jobs that waited for a mint that failed get its error instead of queueing for
//! another, so a hung endpoint costs them one timeout together, not one each.
//!
//! The endpoint's refusals are OAuth bodies `{"error","error_description"}` (§D.1 \[I\]): 429 and
//! 5xx are overload (wait and try again, as for the API); a 400 `invalid_grant` about the
//! assertion's `iat`/`exp` means this host's clock is off, which may pass (NTP catching up), so
//! it is retried within the job's attempts with a log line saying so; any other refusal (a
//! deleted key or service account, a bad scope) needs an operator and is permanent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;

use super::error::DriveError;

/// A token is replaced this long before Drive would refuse it.
const EXPIRY_MARGIN: Duration = Duration::from_secs(60);
/// The longest a token request may take, whatever `drive.request_timeout` (sized for chunks) says.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Google's token endpoint, the default `token_uri`.
const GOOGLE_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";

/// The fields of a Google service-account key file that signing needs.
pub struct ServiceAccountKey {
    pub client_email: String,
    pub private_key_id: String,
    pub token_uri: String,
    key_pair: ring::rsa::KeyPair,
}

impl std::fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("client_email", &self.client_email)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct KeyFile {
    client_email: String,
    #[serde(default)]
    private_key_id: String,
    private_key: String,
    #[serde(default)]
    token_uri: Option<String>,
}

impl ServiceAccountKey {
    /// Parses the JSON key (`GOOGLE_SERVICE_ACCOUNT_KEY`). Errors never quote the key.
    pub fn from_json(json: &SecretString) -> Result<Self, DriveError> {
        let file: KeyFile = serde_json::from_str(json.expose_secret()).map_err(|e| {
            DriveError::Unconfigured(format!(
                "GOOGLE_SERVICE_ACCOUNT_KEY is not a service-account key file (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        let body: String = file
            .private_key
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .map(str::trim)
            .collect();
        let der = STANDARD.decode(body).map_err(|_| {
            DriveError::Unconfigured("the service account's private_key is not PEM".into())
        })?;
        let key_pair = ring::rsa::KeyPair::from_pkcs8(&der).map_err(|e| {
            DriveError::Unconfigured(format!(
                "the service account's private_key was rejected: {e}"
            ))
        })?;
        Ok(ServiceAccountKey {
            client_email: file.client_email,
            private_key_id: file.private_key_id,
            token_uri: file
                .token_uri
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| GOOGLE_TOKEN_URL.into()),
            key_pair,
        })
    }

    /// The signed JWT bearer assertion for `scope`, valid for one hour from `now` (Unix seconds).
    pub fn assertion(&self, scope: &str, now: i64) -> Result<String, DriveError> {
        let mut header = json!({"alg": "RS256", "typ": "JWT"});
        if !self.private_key_id.is_empty() {
            header["kid"] = json!(self.private_key_id);
        }
        let claims = json!({
            "iss": self.client_email,
            "scope": scope,
            "aud": self.token_uri,
            "iat": now,
            "exp": now + 3600,
        });
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut signature = vec![0u8; self.key_pair.public().modulus_len()];
        self.key_pair
            .sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| DriveError::Unconfigured("signing the JWT assertion failed".into()))?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }
}

struct Cached {
    token: SecretString,
    /// When to stop using it (Drive's expiry less [`EXPIRY_MARGIN`]).
    refresh_at: Instant,
}

#[derive(Default)]
struct Cache {
    token: Option<Cached>,
    /// The last mint's failure and when it ended: whoever was waiting for that mint gets this
    /// error instead of minting again. Cleared by a successful mint.
    failed: Option<(Instant, DriveError)>,
}

/// Mints and caches access tokens. Cheap to clone (shared cache).
#[derive(Clone)]
pub struct TokenSource {
    key: Arc<ServiceAccountKey>,
    scope: String,
    http: reqwest::Client,
    /// The token request's whole-request timeout.
    timeout: Duration,
    /// A tokio mutex: concurrent jobs that find the token stale wait for one mint instead of each
    /// minting their own.
    cache: Arc<tokio::sync::Mutex<Cache>>,
    minted: Arc<std::sync::atomic::AtomicU64>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default = "default_expires_in")]
    expires_in: u64,
}

fn default_expires_in() -> u64 {
    3599
}

#[derive(Deserialize)]
struct TokenRefusal {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

impl TokenSource {
    /// `request_timeout` bounds the token request (to at most [`TOKEN_TIMEOUT`]).
    pub fn new(
        key: ServiceAccountKey,
        scope: &str,
        http: reqwest::Client,
        request_timeout: Duration,
    ) -> Self {
        TokenSource {
            key: Arc::new(key),
            scope: scope.to_owned(),
            http,
            timeout: request_timeout.min(TOKEN_TIMEOUT),
            cache: Arc::default(),
            minted: Arc::default(),
        }
    }

    /// A valid access token, minted if the cached one is missing or about to expire.
    pub async fn token(&self) -> Result<SecretString, DriveError> {
        let asked = Instant::now();
        let mut cache = self.cache.lock().await;
        if let Some(cached) = cache.token.as_ref()
            && cached.refresh_at > Instant::now()
        {
            return Ok(cached.token.clone());
        }
        // A mint that ended while we waited for the lock failed: share its answer.
        if let Some((at, error)) = &cache.failed
            && *at >= asked
        {
            return Err(error.clone());
        }
        match self.mint().await {
            Ok((token, lifetime)) => {
                cache.token = Some(Cached {
                    token: token.clone(),
                    refresh_at: Instant::now() + lifetime.saturating_sub(EXPIRY_MARGIN),
                });
                cache.failed = None;
                Ok(token)
            }
            Err(error) => {
                cache.failed = Some((Instant::now(), error.clone()));
                Err(error)
            }
        }
    }

    /// Forgets `token` if it is still the cached one (Drive answered 401 to it).
    pub async fn invalidate(&self, token: &SecretString) {
        let mut cache = self.cache.lock().await;
        if cache
            .token
            .as_ref()
            .is_some_and(|c| c.token.expose_secret() == token.expose_secret())
        {
            cache.token = None;
        }
    }

    /// Tokens minted so far by this source (for tests and the bench).
    pub fn minted(&self) -> u64 {
        self.minted.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn mint(&self) -> Result<(SecretString, Duration), DriveError> {
        let assertion = self
            .key
            .assertion(&self.scope, chrono::Utc::now().timestamp())?;
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer")
            .append_pair("assertion", &assertion)
            .finish();
        let response = self
            .http
            .post(&self.key.token_uri)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(super::client::transport)?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(super::client::transport)?;
        if status == 200 {
            let answer: TokenAnswer = serde_json::from_slice(&bytes)
                .map_err(|e| DriveError::Transport(format!("unreadable token answer: {e}")))?;
            self.minted
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok((
                SecretString::from(answer.access_token),
                Duration::from_secs(answer.expires_in),
            ));
        }
        let refusal = serde_json::from_slice::<TokenRefusal>(&bytes).unwrap_or(TokenRefusal {
            error: String::new(),
            error_description: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
        });
        Err(refused(status, refusal))
    }
}

/// Classifies the token endpoint's refusal (see the module's notes).
fn refused(status: u16, refusal: TokenRefusal) -> DriveError {
    let TokenRefusal {
        error,
        error_description: description,
    } = refusal;
    if status >= 500 {
        return DriveError::Server {
            status,
            message: format!("token endpoint: {error} {description}"),
        };
    }
    if status == 429 {
        // Overload: wait, as for the API; never a reason to give the upload up.
        return DriveError::RateLimited {
            reason: format!("token endpoint: {error}"),
            wait: None,
        };
    }
    if error == "invalid_grant" && about_the_clock(&description) {
        tracing::warn!(
            description,
            "the token endpoint refused the JWT's iat/exp: this host's clock is probably off \
             (check NTP); the job retries within its attempts"
        );
        return DriveError::ClockSkew(description);
    }
    DriveError::Auth(format!(
        "token endpoint answered {status} {error}: {description}"
    ))
}

/// Whether an `invalid_grant` description is about the assertion's time (`iat`/`exp`, Google's
/// "short-lived token ... in a reasonable timeframe", a clock), not its key or account
/// ("Invalid JWT Signature.", "account not found").
fn about_the_clock(description: &str) -> bool {
    let text = description.to_ascii_lowercase();
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .any(|word| matches!(word, "iat" | "exp" | "clock" | "timeframe"))
        || text.contains("short-lived")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(status: u16, error: &str, description: &str) -> DriveError {
        refused(
            status,
            TokenRefusal {
                error: error.into(),
                error_description: description.into(),
            },
        )
    }

    #[test]
    fn token_refusals_about_time_or_overload_are_not_permanent() {
        let skew = classify(
            400,
            "invalid_grant",
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.",
        );
        assert!(matches!(skew, DriveError::ClockSkew(_)), "{skew}");
        assert!(!skew.is_permanent());
        assert!(matches!(
            classify(429, "rate_limit_exceeded", "Rate Limit Exceeded"),
            DriveError::RateLimited { .. }
        ));
        assert!(matches!(
            classify(503, "temporarily_unavailable", ""),
            DriveError::Server { .. }
        ));
        for (error, description) in [
            ("invalid_grant", "Invalid JWT Signature."),
            ("invalid_grant", "Invalid grant: account not found"),
            (
                "invalid_grant",
                "Invalid JWT: Failed audience check. The expected value was https://oauth2.googleapis.com/token",
            ),
            (
                "invalid_scope",
                "Invalid OAuth scope or ID token audience provided.",
            ),
        ] {
            let refusal = classify(400, error, description);
            assert!(refusal.is_permanent(), "{refusal}");
        }
    }
}
