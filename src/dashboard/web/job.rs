//! One job: its args and result as formatted JSON, every attempt with its error, a timeline,
//! the node that ran it, and the actions its state allows (retry, cancel, delete).

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::{Chrome, FormData, WebError, ago, time};
use crate::auth::Operator;
use crate::http::HttpState;
use crate::http::error::ApiError;
use crate::queue::admin::{self, JobRow};
use crate::queue::bulk::BulkAction;

#[derive(Deserialize)]
pub struct Params {
    notice: Option<String>,
}

struct Attempt {
    attempt: String,
    at: String,
    error: String,
}

struct Event {
    at: String,
    ago: String,
    what: String,
}

#[derive(Template)]
#[template(path = "dashboard/job.html")]
struct JobPage {
    chrome: Chrome,
    job: JobRow,
    args: String,
    result: Option<String>,
    attempts: Vec<Attempt>,
    timeline: Vec<Event>,
    node: String,
    tags: String,
    can_retry: bool,
    can_cancel: bool,
    can_delete: bool,
}

pub async fn page(
    State(state): State<HttpState>,
    operator: Operator,
    Path(id): Path<i64>,
    Query(params): Query<Params>,
) -> Result<Response, WebError> {
    let job = admin::get(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no job {id} (it may have been pruned)")))?;
    let now = Utc::now();
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
    let attempts = job
        .errors
        .as_ref()
        .and_then(|e| e.as_array())
        .map(|errors| {
            errors
                .iter()
                .map(|e| Attempt {
                    attempt: e.get("attempt").map(|a| a.to_string()).unwrap_or_default(),
                    at: e
                        .get("at")
                        .and_then(|a| a.as_str())
                        .and_then(|a| DateTime::parse_from_rfc3339(a).ok())
                        .map(|t| time(Some(t.with_timezone(&Utc))))
                        .unwrap_or_default(),
                    error: e
                        .get("error")
                        .and_then(|a| a.as_str())
                        .map(str::to_owned)
                        .unwrap_or_else(|| e.to_string()),
                })
                .collect()
        })
        .unwrap_or_default();

    let mut events: Vec<(DateTime<Utc>, String)> = vec![(job.created_at, "created".into())];
    if job.run_at != job.created_at && !matches!(job.state.as_str(), "running") {
        let what = if job.run_at > now {
            "due to run"
        } else {
            "runnable from"
        };
        events.push((job.run_at, what.into()));
    }
    if let Some(t) = job.attempted_at {
        events.push((t, format!("attempt {} started", job.attempt)));
    }
    if let Some(t) = job.finished_at {
        events.push((t, job.state.clone()));
    }
    if let (Some(t), "running") = (job.lease_expires_at, job.state.as_str()) {
        events.push((t, "lease expires unless renewed".into()));
    }
    events.sort_by_key(|(t, _)| *t);
    let timeline = events
        .into_iter()
        .map(|(t, what)| Event {
            at: time(Some(t)),
            ago: ago(Some(t), now),
            what,
        })
        .collect();

    let finished = matches!(job.state.as_str(), "completed" | "discarded" | "cancelled");
    super::render(&JobPage {
        chrome: Chrome::new(&operator, "jobs", params.notice),
        args: pretty(&job.args),
        result: job.result.as_ref().map(pretty),
        attempts,
        timeline,
        node: job.lease_owner.clone().unwrap_or_else(|| "-".into()),
        tags: job.tags.join(", "),
        can_retry: job.state != "running",
        can_cancel: !finished,
        can_delete: finished,
        job,
    })
}

/// `POST /dashboard/jobs/{id}/{retry|cancel|delete}`.
pub async fn act(
    State(state): State<HttpState>,
    operator: Operator,
    Path((id, action)): Path<(i64, String)>,
    form: FormData,
) -> Result<Response, WebError> {
    operator.authorize_action(form.csrf())?;
    let action = BulkAction::parse(&action)
        .ok_or_else(|| ApiError::NotFound(format!("no action `{action}`")))?;
    let changed = action.apply(&state.pool, &[id]).await?;
    tracing::info!(operator = %operator.username, job = id, action = action.as_str(), changed, "job action");
    let notice = match (action, changed) {
        (BulkAction::Retry, 1) => format!("Job {id} will run again now."),
        (BulkAction::Cancel, 1) => format!("Job {id} cancelled."),
        (BulkAction::Delete, 1) => {
            return Ok(super::redirect_with_notice(
                &operator,
                "/dashboard/jobs",
                &format!("Job {id} deleted."),
            ));
        }
        (action, _) => format!(
            "Job {id} was not changed: its state does not allow `{}` (or another unfinished job holds its unique key).",
            action.as_str()
        ),
    };
    Ok(super::redirect_with_notice(
        &operator,
        &format!("/dashboard/jobs/{id}"),
        &notice,
    ))
}
