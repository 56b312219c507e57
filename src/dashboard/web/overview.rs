//! The overview: jobs per queue and state, throughput and failure rate over the last hour and
//! day (SVG drawn by the template from bars computed here), the oldest job waiting per queue,
//! and the nodes alive. The live part refreshes itself every 10 s through htmx.

use std::collections::{BTreeMap, BTreeSet};

use askama::Template;
use axum::extract::{Query, State};
use axum::response::Response;
use chrono::{DateTime, Duration, DurationRound, Utc};
use serde::Deserialize;

use super::{Chrome, WebError, ago, thousands};
use crate::auth::Operator;
use crate::http::HttpState;
use crate::queue::admin::STATES;
use crate::queue::admin_query::{self, Throughput};

#[derive(Deserialize)]
pub struct Params {
    notice: Option<String>,
}

/// One queue's row of counts, in [`STATES`] order.
struct CountRow {
    queue: String,
    cells: Vec<Cell>,
}

struct Cell {
    state: &'static str,
    text: String,
    /// The planner's estimate rather than a count.
    estimated: bool,
}

/// A bar chart of finished jobs with the discarded part in red, and the failure rate below.
pub struct Chart {
    title: &'static str,
    bars: Vec<Bar>,
    total: String,
    failed: String,
    /// The tallest bar's value.
    peak: String,
    from_label: String,
    to_label: String,
}

struct Bar {
    x: f64,
    width: f64,
    /// Finished jobs (top of the blue bar).
    y: f64,
    height: f64,
    /// Discarded jobs (the red part, from the baseline).
    fail_y: f64,
    fail_height: f64,
    /// Failure rate, drawn in the lower strip.
    rate_y: f64,
    rate_height: f64,
    tooltip: String,
}

const CHART_WIDTH: f64 = 720.0;
const CHART_HEIGHT: f64 = 110.0;
/// Where the failure-rate strip starts and how tall it is (100 %).
const RATE_TOP: f64 = 125.0;
const RATE_HEIGHT: f64 = 40.0;

impl Chart {
    fn new(title: &'static str, points: &[Throughput], label: &str) -> Chart {
        let peak = points.iter().map(|p| p.finished).max().unwrap_or(0).max(1);
        let slot = CHART_WIDTH / points.len().max(1) as f64;
        let scale = |n: i64| n as f64 / peak as f64 * CHART_HEIGHT;
        let bars = points
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let rate = if p.finished > 0 {
                    p.failed as f64 / p.finished as f64
                } else {
                    0.0
                };
                Bar {
                    x: round(i as f64 * slot),
                    width: round((slot - 1.0).max(1.0)),
                    y: round(CHART_HEIGHT - scale(p.finished)),
                    height: round(scale(p.finished)),
                    fail_y: round(CHART_HEIGHT - scale(p.failed)),
                    fail_height: round(scale(p.failed)),
                    rate_y: round(RATE_TOP + RATE_HEIGHT * (1.0 - rate)),
                    rate_height: round(RATE_HEIGHT * rate),
                    tooltip: format!(
                        "{}: {} finished, {} discarded ({:.1} % failed)",
                        p.start.format(label),
                        thousands(p.finished),
                        thousands(p.failed),
                        rate * 100.0
                    ),
                }
            })
            .collect();
        let total: i64 = points.iter().map(|p| p.finished).sum();
        let failed: i64 = points.iter().map(|p| p.failed).sum();
        Chart {
            title,
            bars,
            total: thousands(total),
            failed: if total > 0 {
                format!(
                    "{} ({:.1} %)",
                    thousands(failed),
                    failed as f64 / total as f64 * 100.0
                )
            } else {
                "0".into()
            },
            peak: thousands(peak),
            from_label: points
                .first()
                .map(|p| p.start.format(label).to_string())
                .unwrap_or_default(),
            to_label: "now".into(),
        }
    }
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

struct NodeRow {
    name: String,
    role: String,
    version: String,
    started: String,
    heartbeat: String,
    running: i64,
}

#[derive(Template)]
#[template(path = "dashboard/overview.html")]
struct OverviewPage {
    chrome: Chrome,
    states: [&'static str; 7],
    rows: Vec<CountRow>,
    totals: Vec<Cell>,
    hour: Chart,
    day: Chart,
    oldest: Vec<(String, String)>,
    nodes: Vec<NodeRow>,
    now: String,
}

pub async fn page(
    State(state): State<HttpState>,
    operator: Operator,
    Query(params): Query<Params>,
) -> Result<Response, WebError> {
    let pool = &state.pool;
    let config = &state.app.config;
    let now = Utc::now();
    let configured: Vec<String> = config.queues.keys().cloned().collect();
    let minute = now.duration_trunc(Duration::minutes(1)).unwrap_or(now);
    let hour_since = minute - Duration::minutes(59);
    let top_of_hour = now.duration_trunc(Duration::hours(1)).unwrap_or(now);
    let day_since = top_of_hour - Duration::hours(23);
    // Independent reads, each on its own connection: the page takes as long as the slowest.
    let (counts, hour_points, day_points, oldest_rows, nodes) = futures::try_join!(
        admin_query::counts(pool, &configured),
        admin_query::throughput(pool, hour_since, Duration::minutes(1), 60),
        admin_query::throughput(pool, day_since, Duration::hours(1), 24),
        admin_query::oldest_runnable(pool),
        admin_query::nodes_alive(pool, config.worker.lease),
    )?;

    let mut by_queue: BTreeMap<String, BTreeMap<String, (i64, bool)>> = BTreeMap::new();
    let mut totals: BTreeMap<String, (i64, bool)> = BTreeMap::new();
    for c in &counts {
        by_queue
            .entry(c.queue.clone())
            .or_default()
            .insert(c.state.clone(), (c.count, c.estimated));
        let t = totals.entry(c.state.clone()).or_default();
        t.0 += c.count;
        t.1 |= c.estimated;
    }
    let cell = |state: &'static str, v: Option<&(i64, bool)>| {
        let (n, estimated) = v.copied().unwrap_or((0, false));
        Cell {
            state,
            text: if estimated {
                format!("≈ {}", thousands(n))
            } else {
                thousands(n)
            },
            estimated,
        }
    };
    let rows = by_queue
        .iter()
        .map(|(queue, m)| CountRow {
            queue: queue.clone(),
            cells: STATES.iter().map(|s| cell(s, m.get(*s))).collect(),
        })
        .collect();
    let totals = STATES.iter().map(|s| cell(s, totals.get(*s))).collect();

    let oldest_by_queue: BTreeMap<String, DateTime<Utc>> = oldest_rows.into_iter().collect();
    let queues: BTreeSet<String> = configured
        .iter()
        .cloned()
        .chain(oldest_by_queue.keys().cloned())
        .collect();
    let oldest = queues
        .into_iter()
        .map(|q| {
            let age = oldest_by_queue.get(&q).map_or_else(
                || "nothing waiting".to_string(),
                |t| format!("waiting {}", super::span((now - *t).num_seconds().max(0))),
            );
            (q, age)
        })
        .collect();

    let nodes = nodes
        .into_iter()
        .map(|n| NodeRow {
            name: n.name,
            role: n.role,
            version: n.version,
            started: ago(Some(n.started_at), now),
            heartbeat: ago(Some(n.heartbeat_at), now),
            running: n.running,
        })
        .collect();

    super::render(&OverviewPage {
        chrome: Chrome::new(&operator, "overview", params.notice),
        states: STATES,
        rows,
        totals,
        hour: Chart::new("Last hour, per minute", &hour_points, "%H:%M"),
        day: Chart::new("Last 24 hours, per hour", &day_points, "%d %H:00"),
        oldest,
        nodes,
        now: super::time(Some(now)),
    })
}
