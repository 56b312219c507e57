//! Faithful local fakes of the four providers (Facebook Graph, Stripe, Resend, Google Drive) with
//! fault injection, used by the integration tests and by `baseaim-worker demo`. Depends on nothing
//! else in this crate.
//!
//! Each simulator is one axum server on loopback (port 0 unless a port is given), started with
//! `XxxSim::start(config)`. The returned handle owns the server (dropping it stops the server),
//! knows its `base_url()`, and exposes typed inspectors over the in-memory state (emails received,
//! files stored, calls made, rate-limit hits) plus the shared [`fault::Faults`] control.
//!
//! - [`facebook`]: Graph API `GET /v{N}.0/act_{id}/insights` over a deterministic seeded data
//!   generator ([`facebook::FacebookData`]), with cursor paging, throttling and usage headers.
//! - [`stripe`]: the read API used by reconciliation (subscriptions, invoices, customers) and a
//!   webhook sender ([`stripe::WebhookSender`]) that signs events built from Stripe's fixtures.
//! - [`resend`]: `POST /emails` and `/emails/batch` with idempotency keys and the rate limit.
//! - [`google_drive`]: the service-account token endpoint and the `files`/`permissions`
//!   methods, including multipart and resumable uploads.
//! - [`fault`]: the fault-injection layer every simulator wears (errors, throttling, hangs, cut
//!   bodies, latency), deterministic under a seed.
//!
//! Behaviour the contracts (`shared/contracts/PROVIDERS.md`) only infer is a config field with
//! the inferred value as default, so tests can change it when the real provider disagrees.
//! Fixtures the simulators need at run time live in `src/sim/fixtures/` and are compiled in.

pub mod facebook;
pub mod fault;
pub mod google_drive;
pub mod resend;
pub mod stripe;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use tokio_util::sync::CancellationToken;

pub use fault::{FaultConfig, FaultKind, Faults};

/// All four simulators, each with its default config (for a demo or an end-to-end test).
#[derive(Debug)]
pub struct Simulators {
    pub facebook: facebook::FacebookSim,
    pub stripe: stripe::StripeSim,
    pub resend: resend::ResendSim,
    pub google_drive: google_drive::GoogleDriveSim,
}

impl Simulators {
    /// Starts the four simulators on loopback ports chosen by the OS.
    pub async fn start() -> std::io::Result<Self> {
        Ok(Self {
            facebook: facebook::FacebookSim::start(facebook::FacebookConfig::default()).await?,
            stripe: stripe::StripeSim::start(stripe::StripeConfig::default()).await?,
            resend: resend::ResendSim::start(resend::ResendConfig::default()).await?,
            google_drive: google_drive::GoogleDriveSim::start(
                google_drive::GoogleDriveConfig::default(),
            )
            .await?,
        })
    }
}

/// One request a simulator answered, as the call log records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedCall {
    pub method: String,
    pub path: String,
    /// The raw query string, if any (may contain an access token: tests only, never logged).
    pub query: Option<String>,
    pub status: u16,
    /// The fault injected into this request, if any.
    pub fault: Option<FaultKind>,
}

/// The call log a simulator's fault layer appends to; shared with its handle.
#[derive(Clone, Debug, Default)]
pub struct CallLog(Arc<Mutex<Vec<RecordedCall>>>);

impl CallLog {
    pub(crate) fn push(&self, call: RecordedCall) {
        lock(&self.0).push(call);
    }

    /// Every call so far, in the order the responses were produced.
    pub fn all(&self) -> Vec<RecordedCall> {
        lock(&self.0).clone()
    }

    /// Calls whose path starts with `prefix`.
    pub fn matching(&self, prefix: &str) -> Vec<RecordedCall> {
        lock(&self.0)
            .iter()
            .filter(|c| c.path.starts_with(prefix))
            .cloned()
            .collect()
    }

    pub fn clear(&self) {
        lock(&self.0).clear();
    }
}

/// A running axum server on loopback. Dropping it stops accepting connections.
#[derive(Debug)]
pub struct SimServer {
    addr: SocketAddr,
    base_url: String,
    shutdown: CancellationToken,
    calls: CallLog,
    faults: Faults,
}

impl SimServer {
    /// Binds `bind` (default `127.0.0.1:0`) and serves `router` wrapped in the fault layer.
    pub(crate) async fn start(
        router: Router,
        bind: Option<SocketAddr>,
        faults: Faults,
        responder: Arc<dyn fault::FaultResponder>,
    ) -> std::io::Result<Self> {
        let bind = bind.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let listener = tokio::net::TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let calls = CallLog::default();
        let router = fault::wrap(router, faults.clone(), calls.clone(), responder);
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        tokio::spawn(async move {
            let serve =
                axum::serve(listener, router).with_graceful_shutdown(token.cancelled_owned());
            if let Err(error) = serve.await {
                tracing::warn!(%error, "simulator server stopped with an error");
            }
        });
        Ok(Self {
            addr,
            base_url: format!("http://{addr}"),
            shutdown,
            calls,
            faults,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:{port}`, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn calls(&self) -> &CallLog {
        &self.calls
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Stops accepting new connections (also done on drop).
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Locks a mutex, recovering from poisoning: a panicking test must not wedge a simulator.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// SplitMix64: a tiny, stable, seedable generator. Stable across crate versions (unlike
/// `rand`'s `StdRng`), so data generated for a seed never changes under a test.
pub(crate) fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Hashes a sequence of words under a seed (for deterministic per-item values).
pub(crate) fn mix(seed: u64, parts: &[u64]) -> u64 {
    parts
        .iter()
        .fold(splitmix64(seed), |acc, p| splitmix64(acc ^ p))
}

/// A 64-bit FNV-1a hash of a string (to feed [`mix`] with ids and names).
pub(crate) fn hash_str(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A deterministic UUID-shaped id from a seed and a counter (Resend ids look like UUIDs).
pub(crate) fn uuid_like(seed: u64, n: u64) -> String {
    let a = mix(seed, &[n, 1]);
    let b = mix(seed, &[n, 2]);
    let bytes: Vec<u8> = a.to_be_bytes().into_iter().chain(b.to_be_bytes()).collect();
    let mut raw = [0u8; 16];
    raw.copy_from_slice(&bytes);
    uuid::Builder::from_random_bytes(raw)
        .into_uuid()
        .to_string()
}
