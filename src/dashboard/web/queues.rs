//! Queues: this node's concurrency for each, whether it is paused (on every node), its waiting
//! and running jobs, the oldest waiting job, and pause / resume.

use std::collections::{BTreeMap, BTreeSet};

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::{Chrome, FormData, WebError, ago, thousands};
use crate::auth::Operator;
use crate::http::HttpState;
use crate::http::error::ApiError;
use crate::queue::admin;
use crate::queue::admin_query;

#[derive(Deserialize)]
pub struct Params {
    notice: Option<String>,
}

struct QueueLine {
    name: String,
    concurrency: String,
    paused: Option<String>,
    available: String,
    scheduled: String,
    retryable: String,
    running: String,
    failed: String,
    oldest: String,
}

#[derive(Template)]
#[template(path = "dashboard/queues.html")]
struct QueuesPage {
    chrome: Chrome,
    queues: Vec<QueueLine>,
}

/// Every queue row: paused or not, since when.
const QUEUE_LIST: &str = "select name, paused_at from queues";

pub async fn page(
    State(state): State<HttpState>,
    operator: Operator,
    Query(params): Query<Params>,
) -> Result<Response, WebError> {
    let pool = &state.pool;
    let config = &state.app.config;
    let now = Utc::now();
    let configured: Vec<String> = config.queues.keys().cloned().collect();
    let rows: Vec<(String, Option<DateTime<Utc>>)> =
        sqlx::query_as(QUEUE_LIST).fetch_all(pool).await?;
    let paused: BTreeMap<String, Option<DateTime<Utc>>> = rows.into_iter().collect();
    let counts = admin_query::counts(pool, &configured).await?;
    let mut by_queue: BTreeMap<(String, String), i64> = BTreeMap::new();
    for c in &counts {
        by_queue.insert((c.queue.clone(), c.state.clone()), c.count);
    }
    let oldest: BTreeMap<String, DateTime<Utc>> = admin_query::oldest_runnable(pool)
        .await?
        .into_iter()
        .collect();
    let names: BTreeSet<String> = configured
        .iter()
        .cloned()
        .chain(paused.keys().cloned())
        .chain(counts.iter().map(|c| c.queue.clone()))
        .collect();
    let queues = names
        .into_iter()
        .map(|name| {
            let n = |state: &str| {
                thousands(
                    by_queue
                        .get(&(name.clone(), state.to_string()))
                        .copied()
                        .unwrap_or(0),
                )
            };
            let failed = by_queue
                .get(&(name.clone(), "discarded".into()))
                .copied()
                .unwrap_or(0);
            QueueLine {
                concurrency: config.queues.get(&name).map_or_else(
                    || "not worked by this node".into(),
                    |q| q.concurrency.to_string(),
                ),
                paused: paused
                    .get(&name)
                    .copied()
                    .flatten()
                    .map(|t| ago(Some(t), now)),
                available: n("available"),
                scheduled: n("scheduled"),
                retryable: n("retryable"),
                running: n("running"),
                failed: thousands(failed),
                oldest: oldest.get(&name).map_or_else(
                    || "-".into(),
                    |t| super::span((now - *t).num_seconds().max(0)),
                ),
                name,
            }
        })
        .collect();
    super::render(&QueuesPage {
        chrome: Chrome::new(&operator, "queues", params.notice),
        queues,
    })
}

/// `POST /dashboard/queues/{name}/{pause|resume}`.
pub async fn act(
    State(state): State<HttpState>,
    operator: Operator,
    Path((name, action)): Path<(String, String)>,
    form: FormData,
) -> Result<Response, WebError> {
    operator.authorize_action(form.csrf())?;
    let notice = match action.as_str() {
        "pause" => {
            admin::pause(&state.pool, &name).await?;
            format!("Queue {name} paused on every node: running jobs finish, no new ones start.")
        }
        "resume" => {
            admin::resume(&state.pool, &name).await?;
            format!("Queue {name} resumed.")
        }
        other => return Err(ApiError::NotFound(format!("no action `{other}`")).into()),
    };
    tracing::info!(operator = %operator.username, queue = %name, action = %action, "queue action");
    Ok(super::redirect_with_notice(
        &operator,
        "/dashboard/queues",
        &notice,
    ))
}
