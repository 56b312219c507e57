//! `GET /metrics`: Prometheus text format. Behind a bearer token with `admin:read` (Prometheus:
//! `authorization: {credentials_file: ...}`), like the rest of the operators' surface; there is
//! no separate unauthenticated listener.
//!
//! From the process's recorder (`crate::telemetry::metrics_handle`), counted where things happen:
//! - `baw_jobs_total{queue,kind,outcome}`: attempts finished (completed, retry, snooze,
//!   discarded, cancelled, released, given_back: a kind the node does not know), and
//!   `baw_job_duration_seconds{queue,kind}` (histogram), in `queue::execute::run`;
//! - `baw_rate_limit_snoozes_total{bucket}`: jobs snoozed for want of a rate-limit token;
//! - `baw_provider_requests_total{provider,result}` and `baw_provider_errors_total{provider,class}`:
//!   each request of the Resend, Stripe, Facebook and Google Drive clients, by the class their
//!   `error.rs` gives (Drive's token endpoint is counted with the API call it serves);
//! - `baw_webhooks_total{provider,result}`: Stripe deliveries (accepted, duplicate, rejected,
//!   too_large, unavailable, error);
//! - `baw_stripe_commits_total{path}` and `baw_stripe_committed_events_total{path}`: the Stripe
//!   intake's shared commits and the events in them, by path (`copy`, or `statement`);
//! - `baw_panics_total`: panics in this process, each also logged (`telemetry::log_panics`).
//!
//! These are per process, so scrape every node. A `--role worker` or `--role scheduler` node
//! serves them on `http.ops_bind` (with `/healthz` and `/readyz`; [`super::ops_router`]); without
//! it, it has no HTTP listener and they are not exported.
//!
//! Read from the database at scrape time (cluster-wide, any web node answers the same), with the
//! dashboard's bounded queries (`queue::admin_query`, over the partial indexes):
//! - `baw_queue_jobs{queue,state}`: jobs per queue and state (`completed`: the planner's
//!   estimate);
//! - `baw_queue_depth{queue}`: jobs waiting (available, scheduled, retryable);
//! - `baw_queue_oldest_runnable_age_seconds{queue}`: how long the oldest job that could run now
//!   has waited (0 when none).

use std::collections::BTreeMap;
use std::fmt::Write;

use axum::Router;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use chrono::Utc;

use super::HttpState;
use super::error::ApiError;
use crate::auth::ApiCaller;
use crate::queue::admin_query;

pub fn router() -> Router<HttpState> {
    // The recorder must exist before the first job runs, also where `telemetry::init` is not
    // called (tests).
    crate::telemetry::metrics_handle();
    Router::new().route("/metrics", get(metrics))
}

async fn metrics(
    State(state): State<HttpState>,
    caller: ApiCaller,
) -> Result<impl IntoResponse, ApiError> {
    caller.require("admin:read")?;
    let handle = crate::telemetry::metrics_handle();
    handle.run_upkeep();
    let mut body = handle.render();
    body.push_str(&queue_gauges(&state).await?);
    Ok((
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        body,
    ))
}

/// The queue gauges, rendered by hand: they are a snapshot of the database, so a queue that
/// emptied must vanish or read 0 rather than keep a recorder's last value.
async fn queue_gauges(state: &HttpState) -> Result<String, ApiError> {
    let mut names = admin_query::queue_names(&state.pool).await?;
    // Configured queues read 0 when empty rather than vanish.
    names.extend(state.app.config.queues.keys().cloned());
    names.sort();
    names.dedup();
    let counts = admin_query::counts(&state.pool, &names).await?;
    let oldest = admin_query::oldest_runnable(&state.pool).await?;
    let now = Utc::now();
    let mut depth: BTreeMap<&str, i64> = names.iter().map(|n| (n.as_str(), 0)).collect();
    let mut out = String::new();
    out.push_str("# HELP baw_queue_jobs Jobs per queue and state (completed: the planner's estimate)\n# TYPE baw_queue_jobs gauge\n");
    for c in &counts {
        let _ = writeln!(
            out,
            "baw_queue_jobs{{queue=\"{}\",state=\"{}\"}} {}",
            escape(&c.queue),
            c.state,
            c.count
        );
        if matches!(c.state.as_str(), "available" | "scheduled" | "retryable") {
            *depth.entry(c.queue.as_str()).or_default() += c.count;
        }
    }
    out.push_str("# HELP baw_queue_depth Jobs waiting per queue (available, scheduled, retryable)\n# TYPE baw_queue_depth gauge\n");
    for (queue, n) in &depth {
        let _ = writeln!(out, "baw_queue_depth{{queue=\"{}\"}} {n}", escape(queue));
    }
    out.push_str("# HELP baw_queue_oldest_runnable_age_seconds Age of the oldest job per queue that could run now\n# TYPE baw_queue_oldest_runnable_age_seconds gauge\n");
    let mut ages: BTreeMap<&str, f64> = depth.keys().map(|q| (*q, 0.0)).collect();
    for (queue, run_at) in &oldest {
        let age = (now - *run_at).num_milliseconds().max(0) as f64 / 1000.0;
        ages.insert(queue.as_str(), age);
    }
    for (queue, age) in ages {
        let _ = writeln!(
            out,
            "baw_queue_oldest_runnable_age_seconds{{queue=\"{}\"}} {age}",
            escape(queue)
        );
    }
    Ok(out)
}

/// A label value in the text format: backslash, double quote and newline escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    #[test]
    fn label_values_are_escaped() {
        assert_eq!(super::escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
