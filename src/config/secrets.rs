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

/// A URL with its password (if any) replaced by `***`, for logs and `config check`.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "<unparseable url>".into(),
    }
}
