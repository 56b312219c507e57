//! Fault injection shared by every simulator: a fraction of requests answered 500/503, 429 or the
//! provider's own throttling error, delayed beyond a client timeout, or cut mid-body; plus a fixed
//! extra latency. Also the call log, since this layer sees every request and its final status.
//!
//! Decisions are deterministic under [`FaultConfig::seed`]: the n-th eligible request draws
//! `splitmix64(seed, n)`, so the same sequence of requests meets the same faults on every run.
//! (Concurrent requests race for n, so determinism holds for a sequential client.) Tests that need
//! an exact fault on an exact request use [`Faults::script`] instead of rates.
//!
//! Each simulator supplies a [`FaultResponder`] so an injected error wears that provider's error
//! body (Graph `{"error":{...}}`, Stripe `{"error":{...}}`, Resend `{"statusCode":...}`, Drive
//! `{"error":{"errors":[...]}}`), exactly as a real one would.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use futures::StreamExt;

use super::{CallLog, RecordedCall, lock, splitmix64};

/// What an injected fault does to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// Answer with this 5xx status (500 or 503 when drawn by rate) and the provider's error body;
    /// the request is not processed.
    ServerError(u16),
    /// Answer 429 with the provider's rate-limit body; the request is not processed.
    TooManyRequests,
    /// Answer with the provider's own throttling error (Graph code 4/17/613/80000 on HTTP 400,
    /// Drive 403 `userRateLimitExceeded`, …); the request is not processed.
    Throttled,
    /// Process the request, then hold the response for [`FaultConfig::hang_for`]: the effect
    /// happened but a client with a shorter timeout never learns it.
    Hang,
    /// Process the request, send the headers and half the body, then drop the connection.
    CutBody,
}

/// Run-time fault settings. Rates are probabilities in `0.0..=1.0` and are tried in field order;
/// their sum should not exceed 1.
#[derive(Clone, Debug)]
pub struct FaultConfig {
    pub seed: u64,
    pub server_error_rate: f64,
    pub too_many_requests_rate: f64,
    pub throttle_rate: f64,
    pub hang_rate: f64,
    pub cut_body_rate: f64,
    /// How long a [`FaultKind::Hang`] holds the response.
    pub hang_for: Duration,
    /// Extra latency added to every request (before it is processed).
    pub latency: Duration,
    /// Only requests whose path starts with this prefix are eligible (e.g. `/v1/` to spare a
    /// token endpoint). `None`: every request.
    pub path_prefix: Option<String>,
}

impl Default for FaultConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            server_error_rate: 0.0,
            too_many_requests_rate: 0.0,
            throttle_rate: 0.0,
            hang_rate: 0.0,
            cut_body_rate: 0.0,
            hang_for: Duration::from_secs(30),
            latency: Duration::ZERO,
            path_prefix: None,
        }
    }
}

#[derive(Debug, Default)]
struct FaultState {
    config: FaultConfig,
    /// Eligible requests seen so far: the index of the next draw.
    drawn: u64,
    /// Scripted outcomes for the next eligible requests (`None`: let it through).
    script: VecDeque<Option<FaultKind>>,
    injected: u64,
}

/// The run-time fault control of one simulator; cheap to clone, shared with its handle.
#[derive(Clone, Debug, Default)]
pub struct Faults(Arc<Mutex<FaultState>>);

impl Faults {
    pub fn new(config: FaultConfig) -> Self {
        let faults = Self::default();
        faults.set(config);
        faults
    }

    /// Replaces the configuration and restarts the draw sequence (so a seed replays exactly).
    pub fn set(&self, config: FaultConfig) {
        let mut state = lock(&self.0);
        state.config = config;
        state.drawn = 0;
    }

    pub fn config(&self) -> FaultConfig {
        lock(&self.0).config.clone()
    }

    /// No faults, no latency, no script.
    pub fn clear(&self) {
        let mut state = lock(&self.0);
        state.config = FaultConfig::default();
        state.drawn = 0;
        state.script.clear();
    }

    /// Scripts the outcome of the next eligible requests, in order (`None` lets one through);
    /// they take precedence over the rates.
    pub fn script(&self, outcomes: impl IntoIterator<Item = Option<FaultKind>>) {
        lock(&self.0).script.extend(outcomes);
    }

    /// Shorthand: the next eligible request meets `kind`.
    pub fn next(&self, kind: FaultKind) {
        self.script([Some(kind)]);
    }

    /// How many faults were injected so far.
    pub fn injected(&self) -> u64 {
        lock(&self.0).injected
    }

    fn decide(&self, path: &str) -> (Option<FaultKind>, Duration, Duration) {
        let mut state = lock(&self.0);
        let config = state.config.clone();
        if config
            .path_prefix
            .as_deref()
            .is_some_and(|prefix| !path.starts_with(prefix))
        {
            return (None, Duration::ZERO, config.hang_for);
        }
        let kind = match state.script.pop_front() {
            Some(scripted) => scripted,
            None => {
                let n = state.drawn;
                state.drawn += 1;
                draw(&config, n)
            }
        };
        if kind.is_some() {
            state.injected += 1;
        }
        (kind, config.latency, config.hang_for)
    }
}

/// The fault (if any) the n-th eligible request meets under `config`.
fn draw(config: &FaultConfig, n: u64) -> Option<FaultKind> {
    let r = splitmix64(config.seed ^ splitmix64(n));
    let u = (r >> 11) as f64 / (1u64 << 53) as f64;
    let server_error = if r & 1 == 0 { 500 } else { 503 };
    let mut edge = 0.0;
    for (rate, kind) in [
        (
            config.server_error_rate,
            FaultKind::ServerError(server_error),
        ),
        (config.too_many_requests_rate, FaultKind::TooManyRequests),
        (config.throttle_rate, FaultKind::Throttled),
        (config.hang_rate, FaultKind::Hang),
        (config.cut_body_rate, FaultKind::CutBody),
    ] {
        edge += rate.clamp(0.0, 1.0);
        if u < edge {
            return Some(kind);
        }
    }
    None
}

/// How a provider words the errors the fault layer injects.
pub trait FaultResponder: Send + Sync + 'static {
    fn server_error(&self, status: StatusCode) -> Response;
    fn too_many_requests(&self) -> Response;
    fn throttled(&self) -> Response;

    /// Who words the faults injected on `path`, when an endpoint of the provider answers errors
    /// in another shape than the rest (Drive's OAuth token endpoint); `None`: this responder.
    fn for_path(&self, _path: &str) -> Option<&dyn FaultResponder> {
        None
    }
}

#[derive(Clone)]
struct LayerState {
    faults: Faults,
    calls: CallLog,
    responder: Arc<dyn FaultResponder>,
}

pub(crate) fn wrap(
    router: Router,
    faults: Faults,
    calls: CallLog,
    responder: Arc<dyn FaultResponder>,
) -> Router {
    let state = LayerState {
        faults,
        calls,
        responder,
    };
    router.layer(middleware::from_fn_with_state(state, fault_layer))
}

async fn fault_layer(State(state): State<LayerState>, request: Request, next: Next) -> Response {
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().map(str::to_owned);
    let (kind, latency, hang_for) = state.faults.decide(&path);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let responder = state.responder.for_path(&path).unwrap_or(&*state.responder);
    let response = match kind {
        Some(FaultKind::ServerError(status)) => responder.server_error(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        ),
        Some(FaultKind::TooManyRequests) => responder.too_many_requests(),
        Some(FaultKind::Throttled) => responder.throttled(),
        Some(FaultKind::Hang) | Some(FaultKind::CutBody) | None => next.run(request).await,
    };
    state.calls.push(RecordedCall {
        method,
        path,
        query,
        status: response.status().as_u16(),
        fault: kind,
    });
    match kind {
        Some(FaultKind::Hang) => {
            tokio::time::sleep(hang_for).await;
            response
        }
        Some(FaultKind::CutBody) => cut_body(response).await,
        _ => response,
    }
}

/// Sends the headers (with the full Content-Length) and half the body, then fails the stream so
/// hyper drops the connection: the client sees a truncated body.
async fn cut_body(response: Response) -> Response {
    let (mut parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let full_len = bytes.len().max(1);
    let half = bytes.slice(..bytes.len() / 2);
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(full_len));
    // Let hyper flush the headers and the first half before the stream fails.
    let cut = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        Err::<axum::body::Bytes, _>(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "simulated cut",
        ))
    };
    let chunks = futures::stream::iter([Ok(half)]).chain(futures::stream::once(cut));
    Response::from_parts(parts, Body::from_stream(chunks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_replay_under_a_seed_and_follow_the_rates() {
        let config = FaultConfig {
            seed: 7,
            server_error_rate: 0.2,
            throttle_rate: 0.1,
            ..FaultConfig::default()
        };
        let first: Vec<_> = (0..1000).map(|n| draw(&config, n)).collect();
        let again: Vec<_> = (0..1000).map(|n| draw(&config, n)).collect();
        assert_eq!(first, again);
        let errors = first
            .iter()
            .filter(|k| matches!(k, Some(FaultKind::ServerError(_))))
            .count();
        let throttled = first
            .iter()
            .filter(|k| **k == Some(FaultKind::Throttled))
            .count();
        assert!((150..250).contains(&errors), "{errors}");
        assert!((60..140).contains(&throttled), "{throttled}");
    }
}
