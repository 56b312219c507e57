//! Secrets, read from the environment only, under the names the dashboard app already uses.
//!
//! Each is a [`SecretString`]: its `Debug` prints `[REDACTED]`, it is never serialized, and code
//! has to call `expose_secret()` at the one place a value is sent to its provider.

use std::collections::BTreeMap;

use secrecy::SecretString;

/// The provider credentials. Absent ones are `None`: the integration needing it reports itself
/// unconfigured instead of the daemon refusing to start.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    pub facebook_access_token: Option<SecretString>,
    pub stripe_secret_key: Option<SecretString>,
    /// Several secrets may be given during a rotation, separated by commas.
    pub stripe_webhook_secret: Option<SecretString>,
    pub resend_api_key: Option<SecretString>,
    /// The service account's JSON key.
    pub google_service_account_key: Option<SecretString>,
    pub google_drive_folder_id: Option<SecretString>,
}

/// The environment variable names, in the order `config check` lists them.
pub const SECRET_VARS: [&str; 6] = [
    "FACEBOOK_ACCESS_TOKEN",
    "STRIPE_SECRET_KEY",
    "STRIPE_WEBHOOK_SECRET",
    "RESEND_API_KEY",
    "GOOGLE_SERVICE_ACCOUNT_KEY",
    "GOOGLE_DRIVE_FOLDER_ID",
];

impl Secrets {
    pub fn from_env() -> Self {
        Self::from_vars(std::env::vars())
    }

    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut vars: BTreeMap<String, String> = vars.into_iter().collect();
        let mut take = |name: &str| {
            vars.remove(name)
                .filter(|v| !v.is_empty())
                .map(SecretString::from)
        };
        Secrets {
            facebook_access_token: take("FACEBOOK_ACCESS_TOKEN"),
            stripe_secret_key: take("STRIPE_SECRET_KEY"),
            stripe_webhook_secret: take("STRIPE_WEBHOOK_SECRET"),
            resend_api_key: take("RESEND_API_KEY"),
            google_service_account_key: take("GOOGLE_SERVICE_ACCOUNT_KEY"),
            google_drive_folder_id: take("GOOGLE_DRIVE_FOLDER_ID"),
        }
    }

    /// One line per secret saying whether it is set, never its value.
    pub fn describe(&self) -> String {
        let set = [
            &self.facebook_access_token,
            &self.stripe_secret_key,
            &self.stripe_webhook_secret,
            &self.resend_api_key,
            &self.google_service_account_key,
            &self.google_drive_folder_id,
        ];
        SECRET_VARS
            .iter()
            .zip(set)
            .map(|(name, value)| {
                format!(
                    "{name} = {}\n",
                    if value.is_some() {
                        "\"<set>\""
                    } else {
                        "\"<unset>\""
                    }
                )
            })
            .collect()
    }
}

/// A URL with its password (if any) replaced by `***`, for logs and `config check`: the one after
/// the user name, and the values of query parameters that carry one (sqlx reads `?password=`;
/// libpq also `sslpassword`). The rest of the URL is left as it was written.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            if let Some(query) = parsed.query().map(redact_query) {
                parsed.set_query(Some(&query));
            }
            parsed.to_string()
        }
        Err(_) => "<unparseable url>".into(),
    }
}

/// Query parameters whose value is a secret, compared with the decoded name in lowercase.
const SECRET_PARAMS: [&str; 2] = ["password", "sslpassword"];

/// The query with the value of each [`SECRET_PARAMS`] entry replaced by `***`; other pairs are
/// kept byte for byte. Names are compared decoded (`pass%77ord` is `password` to sqlx too).
fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) => {
                let decoded: String = url::form_urlencoded::parse(name.as_bytes())
                    .map(|(k, _)| k.into_owned())
                    .collect();
                if SECRET_PARAMS.contains(&decoded.to_ascii_lowercase().as_str()) {
                    format!("{name}=***")
                } else {
                    pair.to_owned()
                }
            }
            None => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}
