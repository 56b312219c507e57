//! The provider simulators checked against their contracts (OpenAPI schemas, the Drive discovery
//! document, async-stripe's types and webhook verification) and for the behaviour a client
//! meets: paging, throttling, idempotency, rate limits, resumable uploads, injected faults.
//! No database.

mod facebook;
mod fault;
mod google_drive;
mod resend;
mod stripe;

use std::time::Duration;

/// A plain HTTP client for talking to a simulator: no redirects (Drive's 308 is not one), a
/// `User-Agent` (Resend requires it), a generous timeout.
pub fn client() -> reqwest::Client {
    baseaim_worker::tls::install_crypto_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent("baseaim-worker-tests")
        .timeout(Duration::from_secs(20))
        .build()
        .expect("http client")
}

/// A contract file copied into `tests/fixtures/`.
pub fn fixture(name: &str) -> serde_json::Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {path}: {e}"))
}

/// An `application/x-www-form-urlencoded` body (reqwest's `form` is behind a feature we do
/// not enable).
pub fn form(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// `base` with the query pairs appended.
pub fn with_query(base: &str, pairs: &[(&str, &str)]) -> String {
    let mut url = url::Url::parse(base).expect("url");
    url.query_pairs_mut().extend_pairs(pairs);
    url.to_string()
}

#[tokio::test]
async fn all_four_simulators_start_together() {
    let sims = baseaim_worker::sim::Simulators::start()
        .await
        .expect("start");
    let urls = [
        sims.facebook.base_url(),
        sims.stripe.base_url(),
        sims.resend.base_url(),
        sims.google_drive.base_url(),
    ];
    let mut distinct = urls.to_vec();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 4);
    let response = client()
        .get(format!("{}/v1/subscriptions", sims.stripe.base_url()))
        .bearer_auth(sims.stripe.api_key())
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
}
