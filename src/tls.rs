//! The process-wide rustls crypto provider.
//!
//! rustls panics at the first TLS client ("Could not automatically determine the process-level
//! CryptoProvider") when more than one provider is compiled in and none was chosen. We compile
//! only `ring` (reqwest's `rustls-no-provider`, sqlx's `tls-rustls-ring-webpki`) and still install
//! it explicitly at start-up, so a dependency that later drags in aws-lc-rs cannot break us.

/// Installs ring as the process-wide default crypto provider. Idempotent.
pub fn install_crypto_provider() {
    // Err means a provider is already installed (by an earlier call): that is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A reqwest client builder on our crypto provider, with the timeouts every integration wants.
pub fn http_client_builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .pool_idle_timeout(std::time::Duration::from_secs(60))
        .user_agent(concat!("baseaim-worker/", env!("CARGO_PKG_VERSION")))
}
