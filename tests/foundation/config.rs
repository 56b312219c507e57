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

/// Values that load but would hang or crash the daemon: a zero period panics a tokio interval, a
/// zero batch loops `delete ... limit 0` for ever, an age of a million years panics `now - age`,
/// an unknown-outcome window of a day or more lets Resend forget the key and an email go twice.
#[test]
fn values_that_would_hang_or_crash_the_daemon_are_refused_naming_the_key() {
    let cases = [
        ("maintenance.prune_batch", "0"),
        ("worker.heartbeat", "0s"),
        ("worker.lease", "0s"),
        ("worker.poll_interval", "0s"),
        ("maintenance.leader_ttl", "0s"),
        ("maintenance.leader_ttl", "2ns"),
        ("maintenance.rescue_interval", "0s"),
        ("maintenance.prune_interval", "0s"),
        ("database.acquire_timeout", "0s"),
        ("http.bulk_answer_within", "0s"),
        ("http.ops_bind", "localhost"),
        ("stripe.connect_timeout", "0s"),
        ("stripe.request_timeout", "0s"),
        ("stripe.webhook_tolerance", "0s"),
        ("resend.timeout", "0s"),
        ("facebook.connect_timeout", "0s"),
        ("facebook.request_timeout", "0s"),
        ("uploads.read_timeout", "0s"),
        ("uploads.request_timeout", "0s"),
        ("drive.connect_timeout", "0s"),
        ("drive.request_timeout", "0s"),
        ("maintenance.prune_after", "1000000y"),
        ("email.log_retention", "1000000y"),
        ("email.log_retention", "0s"),
        ("worker.shutdown_grace", "1000000y"),
        ("maintenance.prune_interval", "1000000y"),
        ("email.unknown_outcome_window", "0s"),
        ("email.unknown_outcome_window", "24h"),
        ("email.unknown_outcome_window", "2d"),
    ];
    let mut wrong = Vec::new();
    for (key, value) in cases {
        let var = format!("BAW__{}", key.to_uppercase().replace('.', "__"));
        match Config::load_from(None, env(&[(var.as_str(), value)])) {
            Err(ConfigError::Invalid {
                key: named,
                expected,
            }) if named == key && !expected.is_empty() => {}
            Err(err) => wrong.push(format!("{key} = {value}: {err}")),
            Ok(_) => wrong.push(format!("{key} = {value}: accepted")),
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");

    // The shipped defaults still load, and the window is the one send_email uses.
    let config = Config::load_from(None, env(&[])).unwrap();
    assert_eq!(
        config.email.unknown_outcome_window,
        baseaim_worker::jobs::send_email::UNKNOWN_OUTCOME_WINDOW
    );
    assert!(
        baseaim_worker::config::DEFAULT_TOML.contains("unknown_outcome_window = \"23h\""),
        "config/default.toml documents email.unknown_outcome_window"
    );
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

    // sqlx also takes the password as a query parameter; libpq's sslpassword is a secret too.
    let config = Config::load_from(
        None,
        env(&[(
            "DATABASE_URL",
            "postgres://app@db/prod?sslmode=require&password=hunter2sekret&application_name=w&sslpassword=keysekret",
        )]),
    )
    .unwrap();
    let shown = config.to_redacted_toml();
    assert!(!shown.contains("sekret"), "{shown}");
    assert!(
        shown.contains(
            "postgres://app@db/prod?sslmode=require&password=***&application_name=w&sslpassword=***"
        ),
        "{shown}"
    );
    for url in [
        "postgres://app@db/prod?PASSWORD=hunter2sekret",
        "postgres://app@db/prod?pass%77ord=hunter2sekret",
        "postgres://app:hunter2sekret@db/prod?password=hunter2sekret",
    ] {
        let shown = baseaim_worker::config::redact_url(url);
        assert!(!shown.contains("sekret"), "{url} -> {shown}");
    }
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

/// Behind `maintenance.prune_batch`'s check, for settings built in code: the pruners given a batch
/// of 0 delete what is due and return, instead of repeating `delete ... limit 0` for ever.
#[tokio::test]
async fn the_pruners_given_a_batch_of_zero_prune_and_return() {
    let db = crate::support::TestDb::new().await;
    sqlx::query(
        "insert into jobs (kind, state, attempt, finished_at)
         select 'noop', 'completed', 1, now() - interval '30 days' from generate_series(1, 3)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "insert into email_log (idempotency_key, template, recipient, subject, created_at)
         values ('k1', 'welcome', 'a@example.com', 'Hi', now() - interval '200 days')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let now = chrono::Utc::now();
    let within = std::time::Duration::from_secs(10);

    let jobs = tokio::time::timeout(
        within,
        baseaim_worker::queue::maintenance::prune_once(&db.pool, now, 0),
    )
    .await
    .expect("prune_once returns with a batch of 0")
    .unwrap();
    assert_eq!(jobs, 3);
    let emails = tokio::time::timeout(
        within,
        baseaim_worker::jobs::send_email::prune_email_log(&db.pool, now, 0),
    )
    .await
    .expect("prune_email_log returns with a batch of 0")
    .unwrap();
    assert_eq!(emails, 1);
}
