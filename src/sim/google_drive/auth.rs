//! The service account (its key and JWT assertions) and the token endpoint: the JWT bearer
//! grant, then `admit`, which authenticates every API call and charges the per-user quota.

use super::*;

/// A service account: its email and (throw-away) private key, as in a Google key file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAccount {
    pub client_email: String,
    pub private_key_id: String,
    /// PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), as Google key files carry it.
    pub private_key_pem: String,
}

/// The simulator's default service account, whose key ships in `src/sim/fixtures/`.
pub fn test_service_account() -> ServiceAccount {
    ServiceAccount {
        client_email: "baseaim-sim@baseaim-sim.iam.gserviceaccount.com".to_owned(),
        private_key_id: "sim0000000000000000000000000000000000001".to_owned(),
        private_key_pem: TEST_KEY_PEM.to_owned(),
    }
}

/// Why a service-account key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the private key is not PKCS#8 PEM")]
    Pem,
    #[error("the private key was rejected: {0}")]
    Rejected(String),
    #[error("signing failed")]
    Sign,
}

fn pem_to_der(pem: &str) -> Result<Vec<u8>, KeyError> {
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| KeyError::Pem)
}

impl ServiceAccount {
    fn key_pair(&self) -> Result<ring::rsa::KeyPair, KeyError> {
        let der = pem_to_der(&self.private_key_pem)?;
        ring::rsa::KeyPair::from_pkcs8(&der).map_err(|e| KeyError::Rejected(e.to_string()))
    }

    /// The DER `RSAPublicKey` the simulator verifies assertions with.
    pub fn public_key_der(&self) -> Result<Vec<u8>, KeyError> {
        Ok(self.key_pair()?.public().as_ref().to_vec())
    }

    /// A key file like the one Google issues (`type: service_account`), with `token_uri`.
    pub fn key_file_json(&self, token_uri: &str) -> String {
        json!({
            "type": "service_account",
            "project_id": "baseaim-sim",
            "private_key_id": self.private_key_id,
            "private_key": self.private_key_pem,
            "client_email": self.client_email,
            "client_id": "100000000000000000001",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
        })
        .to_string()
    }

    /// Signs `claims` as an RS256 JWT with this account's key (header carries `kid`).
    pub fn sign_assertion(&self, claims: &Value) -> Result<String, KeyError> {
        let header = json!({"alg": "RS256", "typ": "JWT", "kid": self.private_key_id});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let key_pair = self.key_pair()?;
        let mut signature = vec![0u8; key_pair.public().modulus_len()];
        key_pair
            .sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| KeyError::Sign)?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }

    /// The standard claims for a Drive token: `iss`, `scope`, `aud`, `iat = now`, `exp = now + 1h`.
    pub fn claims(&self, scope: &str, audience: &str) -> Value {
        let now = chrono::Utc::now().timestamp();
        json!({"iss": self.client_email, "scope": scope, "aud": audience, "iat": now, "exp": now + 3600})
    }
}

// ---------------------------------------------------------------------------------------------
// Token endpoint

/// The token endpoint's refusal: 400 `{"error","error_description"}`.
pub(super) fn oauth_error(error: &str, description: &str) -> Response {
    oauth_error_status(StatusCode::BAD_REQUEST, error, description)
}

pub(super) fn oauth_error_status(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

pub(super) async fn token(State(state): Shared, headers: HeaderMap, body: Bytes) -> Response {
    if let Some((error, description)) = lock(&state).token_refusals.pop_front() {
        return oauth_error(&error, &description);
    }
    let form: BTreeMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let grant = form.get("grant_type").map(String::as_str).unwrap_or("");
    if grant != "urn:ietf:params:oauth:grant-type:jwt-bearer" {
        return oauth_error(
            "unsupported_grant_type",
            &format!("Invalid grant_type: {grant}"),
        );
    }
    let Some(assertion) = form.get("assertion") else {
        return oauth_error("invalid_request", "Missing required parameter: assertion");
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    let own_token_url = format!("http://{host}/token");
    let mut s = lock(&state);
    let owner = match verify_assertion(&s.config.service_accounts, assertion, &own_token_url) {
        Ok(owner) => owner,
        Err(refusal) => return *refusal,
    };
    s.tokens_issued += 1;
    let access_token = format!(
        "ya29.sim-{:016x}{:04}",
        mix(s.config.seed, &[s.tokens_issued]),
        s.tokens_issued
    );
    let lifetime = s.config.token_lifetime;
    s.tokens.insert(
        access_token.clone(),
        Token {
            owner,
            expires: Instant::now() + lifetime,
        },
    );
    let body = json!({
        "access_token": access_token,
        "expires_in": lifetime.as_secs().saturating_sub(1),
        "token_type": "Bearer",
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// Checks a JWT bearer assertion; returns the service account's email.
pub(super) fn verify_assertion(
    accounts: &[ServiceAccount],
    assertion: &str,
    own_token_url: &str,
) -> Result<String, Box<Response>> {
    let refuse = |error: &str, description: &str| Box::new(oauth_error(error, description));
    let parts: Vec<&str> = assertion.split('.').collect();
    let [header_b64, claims_b64, signature_b64] = parts.as_slice() else {
        return Err(refuse(
            "invalid_grant",
            "Invalid JWT: the assertion is not three base64url parts.",
        ));
    };
    let decode = |part: &str| -> Option<Value> {
        let raw = URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).ok()?;
        serde_json::from_slice(&raw).ok()
    };
    let (Some(jwt_header), Some(claims)) = (decode(header_b64), decode(claims_b64)) else {
        return Err(refuse(
            "invalid_grant",
            "Invalid JWT: the header or claims are not base64url JSON.",
        ));
    };
    if jwt_header.get("alg").and_then(Value::as_str) != Some("RS256") {
        return Err(refuse(
            "invalid_grant",
            "Invalid JWT: the signing algorithm must be RS256.",
        ));
    }
    let iss = claims.get("iss").and_then(Value::as_str).unwrap_or("");
    let Some(account) = accounts.iter().find(|a| a.client_email == iss) else {
        return Err(refuse("invalid_grant", "Invalid grant: account not found"));
    };
    let signature = URL_SAFE_NO_PAD
        .decode(signature_b64.trim_end_matches('='))
        .unwrap_or_default();
    let public_key = account.public_key_der().unwrap_or_default();
    let verified = ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        public_key,
    )
    .verify(format!("{header_b64}.{claims_b64}").as_bytes(), &signature);
    if verified.is_err() {
        return Err(refuse("invalid_grant", "Invalid JWT Signature."));
    }
    let aud = claims.get("aud").and_then(Value::as_str).unwrap_or("");
    if aud != GOOGLE_TOKEN_URL && aud != own_token_url {
        return Err(refuse(
            "invalid_grant",
            &format!(
                "Invalid JWT: Failed audience check. The expected value was {GOOGLE_TOKEN_URL}"
            ),
        ));
    }
    let now = chrono::Utc::now().timestamp();
    let iat = claims.get("iat").and_then(Value::as_i64);
    let exp = claims.get("exp").and_then(Value::as_i64);
    let timely = matches!((iat, exp), (Some(iat), Some(exp))
        if exp > iat && exp - iat <= 3600 && exp > now && iat <= now + 300);
    if !timely {
        return Err(refuse(
            "invalid_grant",
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.",
        ));
    }
    let scope = claims.get("scope").and_then(Value::as_str).unwrap_or("");
    if !scope
        .split(' ')
        .any(|s| s.starts_with("https://www.googleapis.com/auth/drive"))
    {
        return Err(refuse(
            "invalid_scope",
            "Invalid OAuth scope or ID token audience provided.",
        ));
    }
    Ok(account.client_email.clone())
}

// ---------------------------------------------------------------------------------------------
// API plumbing: auth, quota, partial responses

/// Quota cost of a method, in units (contract §D.7).
#[derive(Clone, Copy)]
pub(super) enum Cost {
    Read = 5,
    List = 100,
    Modify = 50,
}

/// Authenticates the bearer token and charges the quota; returns the caller's email.
pub(super) fn admit(
    s: &mut DriveState,
    headers: &HeaderMap,
    cost: Cost,
) -> Result<String, Box<Response>> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("");
    let now = Instant::now();
    let owner = match s.tokens.get(token) {
        Some(t) if t.expires > now => t.owner.clone(),
        _ => {
            let mut response = drive_error(
                StatusCode::UNAUTHORIZED,
                "global",
                "authError",
                "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
                Some(("header", "Authorization")),
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"https://accounts.google.com/\""),
            );
            return Err(Box::new(response));
        }
    };
    let limit = s.config.quota_units_per_minute;
    let window = s.quota.entry(owner.clone()).or_insert((now, 0));
    if now.duration_since(window.0) >= Duration::from_secs(60) {
        *window = (now, 0);
    }
    if window.1 + cost as u64 > limit {
        s.rate_limit_hits += 1;
        return Err(Box::new(rate_limited(s.config.rate_limit)));
    }
    window.1 += cost as u64;
    Ok(owner)
}
