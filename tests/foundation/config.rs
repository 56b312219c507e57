use std::io::Write;

use baseaim_worker::config::{Config, ConfigError, Secrets};
use secrecy::ExposeSecret;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_load_without_any_file() {
    let config = Config::load_from(None, env(&[])).unwrap();
    assert_eq!(config.http.bind.to_string(), "127.0.0.1:8080");
    assert_eq!(config.database.url, "postgres://localhost/baseaim_worker");
    assert_eq!(config.queues["default"].concurrency, 20);
}

#[test]
fn file_overrides_defaults_and_env_overrides_file() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(
        file,
        "[http]\nbind = \"127.0.0.1:7000\"\nbody_limit = 10\n[queues.default]\nconcurrency = 3"
    )
    .unwrap();
    let from_file = Config::load_from(Some(file.path()), env(&[])).unwrap();
    assert_eq!(from_file.http.bind.to_string(), "127.0.0.1:7000");
    assert_eq!(from_file.http.body_limit, 10);
    assert_eq!(from_file.queues["default"].concurrency, 3);

    let with_env = Config::load_from(
        Some(file.path()),
        env(&[
            ("BAW__HTTP__BIND", "127.0.0.1:9000"),
            ("BAW__QUEUES__DEFAULT__CONCURRENCY", "8"),
            ("DATABASE_URL", "postgres://app:pw@db.internal/prod"),
        ]),
    )
    .unwrap();
    assert_eq!(with_env.http.bind.to_string(), "127.0.0.1:9000");
    assert_eq!(
        with_env.http.body_limit, 10,
        "keys the env does not set keep the file's value"
    );
    assert_eq!(with_env.queues["default"].concurrency, 8);
    assert_eq!(with_env.database.url, "postgres://app:pw@db.internal/prod");
}

#[test]
fn a_bad_value_names_the_key_and_what_was_expected() {
    let err = Config::load_from(None, env(&[("BAW__HTTP__BIND", "not-an-address")])).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("http.bind"), "{message}");
    assert!(message.contains("BAW__HTTP__BIND"), "{message}");

    let err = Config::load_from(None, env(&[("BAW__WORKER__CLAIM_BATCH", "lots")])).unwrap_err();
    assert!(err.to_string().contains("worker.claim_batch"), "{err}");

    let err = Config::load_from(None, env(&[("BAW__WORKER__LEASE", "1s")])).unwrap_err();
    assert!(
        matches!(err, ConfigError::Invalid { ref key, .. } if key == "worker.heartbeat"),
        "{err}"
    );

    let err = Config::load_from(
        None,
        env(&[("BAW__HTTP__CLIENT_ADDRESS_HEADER", "x forwarded for")]),
    )
    .unwrap_err();
    assert!(
        matches!(err, ConfigError::Invalid { ref key, .. } if key == "http.client_address_header"),
        "{err}"
    );

    let err = Config::load_from(None, env(&[("DATABASE_URL", "mysql://x/y")])).unwrap_err();
    assert!(err.to_string().contains("database.url"), "{err}");
}

#[test]
fn an_unknown_key_in_a_file_is_refused() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "[http]\nbnid = \"127.0.0.1:7000\"").unwrap();
    let err = Config::load_from(Some(file.path()), env(&[])).unwrap_err();
    assert!(err.to_string().contains("bnid"), "{err}");
}

#[test]
fn a_missing_config_file_is_an_error() {
    let err = Config::load_from(
        Some(std::path::Path::new("/nonexistent/baw.toml")),
        env(&[]),
    )
    .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/baw.toml"), "{err}");
}

#[test]
fn secrets_come_from_the_environment_and_never_print() {
    let secrets = Secrets::from_vars(env(&[
        ("STRIPE_WEBHOOK_SECRET", "whsec_topsecret"),
        ("RESEND_API_KEY", "re_topsecret"),
    ]));
    assert_eq!(
        secrets
            .stripe_webhook_secret
            .as_ref()
            .unwrap()
            .expose_secret(),
        "whsec_topsecret"
    );
    let shown = format!("{secrets:?}\n{}", secrets.describe());
    assert!(!shown.contains("topsecret"), "{shown}");
    assert!(
        shown.contains("STRIPE_WEBHOOK_SECRET = \"<set>\""),
        "{shown}"
    );
    assert!(
        shown.contains("FACEBOOK_ACCESS_TOKEN = \"<unset>\""),
        "{shown}"
    );
}

#[test]
fn redacted_config_hides_the_database_password() {
    let config = Config::load_from(
        None,
        env(&[("DATABASE_URL", "postgres://app:hunter2@db/prod")]),
    )
    .unwrap();
    let shown = config.to_redacted_toml();
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("postgres://app:***@db/prod"), "{shown}");
}

#[test]
fn every_tls_client_builds_on_the_one_crypto_provider() {
    baseaim_worker::tls::install_crypto_provider();
    // reqwest (every provider integration) builds its rustls config at build().
    baseaim_worker::tls::http_client_builder()
        .build()
        .expect("reqwest client");
    // sqlx's rustls connector and anything else asking rustls for the process default.
    let provider =
        rustls::crypto::CryptoProvider::get_default().expect("a default provider is installed");
    assert!(!provider.cipher_suites.is_empty());
}
