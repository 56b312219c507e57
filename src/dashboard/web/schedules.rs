//! Schedules: each configured cron schedule in words, its last and next tick, the outcome of its
//! last job, and "run now" (an extra job with its own unique key; the ticks are untouched).

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use chrono::Utc;
use serde::Deserialize;

use super::{Chrome, FormData, WebError, ago, time};
use crate::auth::Operator;
use crate::http::HttpState;
use crate::http::error::ApiError;
use crate::schedule::{Schedule, command};

#[derive(Deserialize)]
pub struct Params {
    notice: Option<String>,
}

struct ScheduleLine {
    name: String,
    cron: String,
    words: String,
    timezone: String,
    kind: String,
    enabled: bool,
    last: String,
    last_ago: String,
    next: String,
    next_in: String,
    /// The last tick's job id, state (or `pruned`) and error.
    job: Option<(i64, String, String)>,
}

#[derive(Template)]
#[template(path = "dashboard/schedules.html")]
struct SchedulesPage {
    chrome: Chrome,
    schedules: Vec<ScheduleLine>,
    /// Schedules whose config does not parse (the node would refuse to start with them).
    invalid: Vec<String>,
}

pub async fn page(
    State(state): State<HttpState>,
    operator: Operator,
    Query(params): Query<Params>,
) -> Result<Response, WebError> {
    let now = Utc::now();
    let mut schedules = Vec::new();
    let mut invalid = Vec::new();
    for (name, config) in &state.app.config.schedules {
        match Schedule::from_config(name, config) {
            Ok(s) => schedules.push(s),
            Err(e) => invalid.push(e.to_string()),
        }
    }
    let statuses = command::status(&state.pool, &schedules, now).await?;
    let schedules = statuses
        .into_iter()
        .map(|s| ScheduleLine {
            words: super::cron::describe(&s.cron),
            last: time(s.last_tick_at),
            last_ago: ago(s.last_tick_at, now),
            next: time(s.next_tick_at),
            next_in: ago(s.next_tick_at, now),
            job: s.last_job.map(|j| {
                (
                    j.id,
                    j.state.unwrap_or_else(|| "pruned".into()),
                    j.last_error.unwrap_or_default(),
                )
            }),
            name: s.name,
            cron: s.cron,
            timezone: s.timezone,
            kind: s.kind,
            enabled: s.enabled,
        })
        .collect();
    super::render(&SchedulesPage {
        chrome: Chrome::new(&operator, "schedules", params.notice),
        schedules,
        invalid,
    })
}

/// `POST /dashboard/schedules/{name}/run`: enqueues the schedule's job now.
pub async fn run(
    State(state): State<HttpState>,
    operator: Operator,
    Path(name): Path<String>,
    form: FormData,
) -> Result<Response, WebError> {
    operator.authorize_action(form.csrf())?;
    let config = state
        .app
        .config
        .schedules
        .get(&name)
        .ok_or_else(|| ApiError::NotFound(format!("no schedule named `{name}`")))?;
    let mut schedule =
        Schedule::from_config(&name, config).map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    let registry = crate::jobs::registry();
    if registry.get(&schedule.kind).is_none() {
        return Err(ApiError::Unprocessable(format!(
            "schedule `{name}` enqueues kind `{}`, which this binary does not run",
            schedule.kind
        ))
        .into());
    }
    schedule
        .adopt_policy(&registry)
        .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    let enqueued = command::run_now(&state.pool, &schedule)
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    tracing::info!(operator = %operator.username, schedule = %name, job = enqueued.id, "schedule run from the dashboard");
    Ok(super::redirect_with_notice(
        &operator,
        "/dashboard/schedules",
        &format!(
            "Schedule {name}: job {} enqueued on queue {}.",
            enqueued.id, schedule.queue
        ),
    ))
}
