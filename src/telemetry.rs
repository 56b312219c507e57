//! Tracing and metrics set-up.
//!
//! Logs: human-readable text or JSON lines, level from `log.level` unless `RUST_LOG` says
//! otherwise. Inside a job every line carries the job's id, kind and attempt: the engine enters a
//! `job` span around each run (`queue::execute::run`); in JSON the fields are under `span` (the
//! innermost span) and `spans` (all of them).
//!
//! Metrics: one process-wide Prometheus recorder ([`metrics_handle`]), installed by [`init`] (and
//! by the HTTP router, for tests that skip `init`), rendered by `GET /metrics`
//! (`crate::http::metrics`, which lists every metric). Counters are per process; the queue gauges
//! are read from the database at scrape time, so any web node shows the whole cluster's.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

/// Installs the global subscriber and the metrics recorder once; later calls are no-ops (tests
/// call it freely).
pub fn init(format: LogFormat, level: &str) {
    metrics_handle();
    log_panics();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter(level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = match format {
        LogFormat::Json => json_subscriber(filter, std::io::stderr)
            .try_init()
            .map_err(|e| e.to_string()),
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_span_events(FmtSpan::NONE)
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .try_init()
            .map_err(|e| e.to_string()),
    };
}

/// Replaces the default panic hook (plain text on stderr) with one `error` line through the log,
/// in its format, and `baw_panics_total`. A panic does not stop a node: a job's is caught by the
/// engine (a failed attempt, its message on the job), a request handler's ends that request. So
/// the log is where an operator learns of it, and a JSON log must carry it as JSON, with the
/// span it happened in (inside a job: the job's id, kind and attempt). The backtrace is added
/// when `RUST_BACKTRACE` asks for one, as the default hook does.
pub fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let message = panic_message(info.payload());
        let location = info.location().map(ToString::to_string);
        let backtrace = std::backtrace::Backtrace::capture();
        let backtrace = (backtrace.status() == std::backtrace::BacktraceStatus::Captured)
            .then(|| backtrace.to_string());
        tracing::error!(
            panic = %message,
            location = location.as_deref(),
            thread = std::thread::current().name(),
            backtrace = backtrace.as_deref(),
            "panicked"
        );
        metrics::counter!("baw_panics_total").increment(1);
    }));
}

/// A panic's message: its payload when that is a string (what `panic!` and `expect` make).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".into()
    }
}

fn default_filter(level: &str) -> EnvFilter {
    EnvFilter::new(format!("{level},sqlx=warn,tower_http=info"))
}

/// The JSON-lines subscriber `log.format = "json"` installs, writing to `writer` (tests capture
/// it): one object per line with `timestamp`, `level`, `fields`, `target`, and the current span's
/// fields under `span`.
pub fn json_subscriber<W>(
    filter: EnvFilter,
    writer: W,
) -> impl tracing::Subscriber + Send + Sync + 'static
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_span_events(FmtSpan::NONE)
        .with_writer(writer)
        .with_ansi(false)
        .json()
        .with_current_span(true)
        .with_span_list(true)
        .finish()
}

/// Seconds: from a no-op job (milliseconds) to a long Facebook sync (minutes).
const DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0,
];

/// The process's Prometheus recorder, installed as the global `metrics` recorder on first use.
/// If another recorder was installed first (a test harness), a detached one is answered and the
/// metrics stay empty (logged once).
pub fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("baw_job_duration_seconds".into()),
                &DURATION_BUCKETS,
            )
            .expect("non-empty buckets");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics stays empty");
        } else {
            describe();
        }
        handle
    })
}

fn describe() {
    use metrics::{describe_counter, describe_histogram};
    describe_counter!(
        "baw_jobs_total",
        "Job attempts finished by this process, by queue, kind and outcome"
    );
    describe_histogram!(
        "baw_job_duration_seconds",
        metrics::Unit::Seconds,
        "Wall time of one job attempt (rate-limit wait included), by queue and kind"
    );
    describe_counter!(
        "baw_rate_limit_snoozes_total",
        "Jobs snoozed because their cluster-wide rate-limit bucket was empty, by bucket"
    );
    describe_counter!(
        "baw_provider_requests_total",
        "Requests to a provider's API, by provider and result (ok, or the error class)"
    );
    describe_counter!(
        "baw_provider_errors_total",
        "Failed requests to a provider's API, by provider and error class"
    );
    describe_counter!(
        "baw_panics_total",
        "Panics in this process (each also logged): in a job (a failed attempt), a request, a task"
    );
    describe_counter!(
        "baw_webhooks_total",
        "Webhook deliveries received, by provider and result"
    );
    describe_counter!(
        "baw_stripe_commits_total",
        "Stripe intake batches committed, by path: copy, or statement after a batch met a stored event"
    );
    describe_counter!(
        "baw_stripe_committed_events_total",
        "Distinct Stripe events in the committed batches (stored or found stored), by path"
    );
}

/// Counts one request to `provider`: `Ok` or the error's class (as the integration's `error.rs`
/// classifies it, e.g. `rate_limited`, `server`, `transport`).
pub fn provider_call(provider: &'static str, error_class: Option<&'static str>) {
    let result = error_class.unwrap_or("ok");
    metrics::counter!("baw_provider_requests_total", "provider" => provider, "result" => result)
        .increment(1);
    if let Some(class) = error_class {
        metrics::counter!("baw_provider_errors_total", "provider" => provider, "class" => class)
            .increment(1);
    }
}
