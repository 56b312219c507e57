//! `/v1/admin/*`: the operators' operations as JSON, the same as the dashboard's and the CLI's
//! (`queue::admin` acts on ids, `queue::admin_query` lists, counts and finds ids by filter).
//! `GET` needs `admin:read`; every action needs `admin:write`.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{ErrorBody, check_text, json_error, path_error, query_error, registry};
use crate::auth::ApiCaller;
use crate::http::HttpState;
use crate::http::error::ApiError;
use crate::queue::admin::{self, AdminError, JobRow};
use crate::queue::admin_query::{self, JobQuery};
use crate::queue::bulk::{self, BulkAction, BulkOutcome};
use crate::schedule::{self, Schedule, ScheduleError};

/// Most ids one bulk action by ids takes.
const MAX_BULK_IDS: usize = 10_000;

impl From<AdminError> for ApiError {
    fn from(error: AdminError) -> Self {
        match error {
            // The state is repeated shortened: it is the caller's text, of any length.
            AdminError::UnknownState(state) => ApiError::Unprocessable(format!(
                "unknown state `{}` (expected one of {})",
                super::shown(&state),
                admin::STATES.join(", ")
            )),
            AdminError::Filter(e) => ApiError::Unprocessable(e.to_string()),
            AdminError::Database(e) => e.into(),
        }
    }
}

/// One job, as the admin API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Job {
    pub id: i64,
    pub kind: String,
    pub queue: String,
    #[schema(value_type = Object)]
    pub args: serde_json::Value,
    /// scheduled, available, running, retryable, completed, discarded or cancelled.
    pub state: String,
    pub priority: i16,
    pub attempt: i32,
    pub max_attempts: i32,
    pub run_at: DateTime<Utc>,
    pub unique_key: Option<String>,
    /// The node that holds (or last held) the job.
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub attempted_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Every failed attempt: `[{"attempt": n, "at": time, "error": text}]`.
    #[schema(value_type = Option<Vec<Object>>)]
    pub errors: Option<serde_json::Value>,
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    pub tags: Vec<String>,
}

impl From<JobRow> for Job {
    fn from(r: JobRow) -> Self {
        Job {
            id: r.id,
            kind: r.kind,
            queue: r.queue,
            args: r.args,
            state: r.state,
            priority: r.priority,
            attempt: r.attempt,
            max_attempts: r.max_attempts,
            run_at: r.run_at,
            unique_key: r.unique_key,
            lease_owner: r.lease_owner,
            lease_expires_at: r.lease_expires_at,
            created_at: r.created_at,
            attempted_at: r.attempted_at,
            finished_at: r.finished_at,
            errors: r.errors,
            result: r.result,
            tags: r.tags,
        }
    }
}

/// A filter over jobs; unset fields match everything.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobFilter {
    /// scheduled, available, running, retryable, completed, discarded or cancelled.
    pub state: Option<String>,
    pub kind: Option<String>,
    pub queue: Option<String>,
    pub tag: Option<String>,
    /// A JSON object the args contain (`{"client_id": "c1"}`), or else text found in the args.
    pub args: Option<String>,
    /// Text found in any attempt's error.
    pub error: Option<String>,
    /// Created at or after (RFC 3339).
    pub created_from: Option<DateTime<Utc>>,
    /// Created before (RFC 3339).
    pub created_to: Option<DateTime<Utc>>,
}

impl JobFilter {
    /// The query, checked by [`JobQuery::validate`]: values PostgreSQL cannot take (NUL in text,
    /// `\u0000` in an args object bound as jsonb, a year outside 1 to 9999: each a 500 once),
    /// then the state; 422 naming the field.
    fn into_query(self) -> Result<JobQuery, ApiError> {
        let query = JobQuery {
            state: self.state,
            kind: self.kind,
            queue: self.queue,
            tag: self.tag,
            args: self.args,
            error: self.error,
            created_from: self.created_from,
            created_to: self.created_to,
        };
        query.validate()?;
        Ok(query)
    }
}

/// The list's filter plus its page (flat: query strings do not nest).
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct JobListParams {
    /// scheduled, available, running, retryable, completed, discarded or cancelled.
    pub state: Option<String>,
    pub kind: Option<String>,
    pub queue: Option<String>,
    pub tag: Option<String>,
    /// A JSON object the args contain (`{"client_id": "c1"}`), or else text found in the args.
    pub args: Option<String>,
    /// Text found in any attempt's error.
    pub error: Option<String>,
    /// Created at or after (RFC 3339).
    pub created_from: Option<DateTime<Utc>>,
    /// Created before (RFC 3339).
    pub created_to: Option<DateTime<Utc>>,
    /// The previous page's `next_after`: only jobs older (smaller id) than it. A job id: 1 or
    /// more.
    pub after: Option<i64>,
    /// 1 to 500; default 50.
    pub limit: Option<i64>,
}

impl JobListParams {
    fn filter(&self) -> JobFilter {
        JobFilter {
            state: self.state.clone(),
            kind: self.kind.clone(),
            queue: self.queue.clone(),
            tag: self.tag.clone(),
            args: self.args.clone(),
            error: self.error.clone(),
            created_from: self.created_from,
            created_to: self.created_to,
        }
    }
}

/// One page of jobs, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobPage {
    pub jobs: Vec<Job>,
    /// Pass as `after` for the next (older) page; null: nothing older matches.
    pub next_after: Option<i64>,
    /// Set when a listing of completed (or all) jobs stopped at its scan window before the page
    /// filled: ids from here up were examined; the next page continues below.
    pub window_floor: Option<i64>,
}

fn id_path(path: Result<Path<i64>, PathRejection>) -> Result<i64, ApiError> {
    let Path(id) = path.map_err(path_error)?;
    Ok(id)
}

fn name_path(path: Result<Path<String>, PathRejection>, field: &str) -> Result<String, ApiError> {
    let Path(name) = path.map_err(path_error)?;
    check_text(field, &name, 100)?;
    Ok(name)
}

/// List jobs, newest first, filtered, one keyset page.
#[utoipa::path(get, path = "/v1/admin/jobs", tag = "admin", params(JobListParams),
    security(("bearer" = ["admin:read"])),
    responses(
        (status = 200, body = JobPage),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 422, description = "A parameter that does not fit (named)", body = ErrorBody),
    ))]
pub async fn list_jobs(
    State(state): State<HttpState>,
    caller: ApiCaller,
    params: Result<Query<JobListParams>, QueryRejection>,
) -> Result<Json<JobPage>, ApiError> {
    caller.require("admin:read")?;
    let Query(params) = params.map_err(query_error)?;
    let limit = params.limit.unwrap_or(50);
    if !(1..=admin_query::MAX_PAGE).contains(&limit) {
        return Err(ApiError::Unprocessable(format!(
            "`limit` must be between 1 and {}",
            admin_query::MAX_PAGE
        )));
    }
    // Ids start at 1; an extreme cursor would overflow the scan window's arithmetic.
    if params.after.is_some_and(|after| after < 1) {
        return Err(ApiError::Unprocessable(
            "`after` must be a job id, 1 or more".into(),
        ));
    }
    let query = params.filter().into_query()?;
    let page = admin_query::job_page(&state.pool, &query, params.after, limit).await?;
    Ok(Json(JobPage {
        jobs: page.jobs.into_iter().map(Job::from).collect(),
        next_after: page.next_before,
        window_floor: page.window_floor,
    }))
}

/// One job with its args, result and every attempt's error.
#[utoipa::path(get, path = "/v1/admin/jobs/{id}", tag = "admin",
    params(("id" = i64, Path, description = "The job's id")),
    security(("bearer" = ["admin:read"])),
    responses(
        (status = 200, body = Job),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
pub async fn get_job(
    State(state): State<HttpState>,
    caller: ApiCaller,
    path: Result<Path<i64>, PathRejection>,
) -> Result<Json<Job>, ApiError> {
    caller.require("admin:read")?;
    let id = id_path(path)?;
    Ok(Json(find(&state, id).await?.into()))
}

async fn find(state: &HttpState, id: i64) -> Result<JobRow, ApiError> {
    admin::get(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no job {id}")))
}

/// Applies `action` to job `id` and answers the job as it is now: 404 when there is no such
/// job, 409 when its state does not allow the action.
async fn act_on_one(state: &HttpState, id: i64, action: BulkAction) -> Result<Json<Job>, ApiError> {
    let before = find(state, id).await?;
    if action.apply(&state.pool, &[id]).await? == 0 {
        if action == BulkAction::Retry && before.state != "running" {
            return Err(ApiError::Conflict(format!(
                "job {id} is {}, and its unique key is now held by another unfinished job",
                before.state
            )));
        }
        return Err(ApiError::Conflict(format!(
            "job {id} is {}: {} applies to {}",
            before.state,
            action.as_str(),
            action.applies_to()
        )));
    }
    tracing::info!(job = id, action = action.as_str(), "admin API action");
    match admin::get(&state.pool, id).await? {
        Some(job) => Ok(Json(job.into())),
        // Deleted.
        None => Ok(Json(before.into())),
    }
}

/// Run a job again now (any state but running; one more attempt if it used them up).
#[utoipa::path(post, path = "/v1/admin/jobs/{id}/retry", tag = "admin",
    params(("id" = i64, Path, description = "The job's id")),
    security(("bearer" = ["admin:write"])),
    responses(
        (status = 200, description = "The job, set to run now", body = Job),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Running, or its unique key is held by another job", body = ErrorBody),
    ))]
pub async fn retry_job(
    State(state): State<HttpState>,
    caller: ApiCaller,
    path: Result<Path<i64>, PathRejection>,
) -> Result<Json<Job>, ApiError> {
    caller.require("admin:write")?;
    act_on_one(&state, id_path(path)?, BulkAction::Retry).await
}

/// Cancel an unfinished job (a running one is stopped at its next await point).
#[utoipa::path(post, path = "/v1/admin/jobs/{id}/cancel", tag = "admin",
    params(("id" = i64, Path, description = "The job's id")),
    security(("bearer" = ["admin:write"])),
    responses(
        (status = 200, description = "The job, cancelled", body = Job),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Already finished", body = ErrorBody),
    ))]
pub async fn cancel_job(
    State(state): State<HttpState>,
    caller: ApiCaller,
    path: Result<Path<i64>, PathRejection>,
) -> Result<Json<Job>, ApiError> {
    caller.require("admin:write")?;
    act_on_one(&state, id_path(path)?, BulkAction::Cancel).await
}

/// Delete a finished job.
#[utoipa::path(delete, path = "/v1/admin/jobs/{id}", tag = "admin",
    params(("id" = i64, Path, description = "The job's id")),
    security(("bearer" = ["admin:write"])),
    responses(
        (status = 200, description = "The job as it was before deletion", body = Job),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Not finished", body = ErrorBody),
    ))]
pub async fn delete_job(
    State(state): State<HttpState>,
    caller: ApiCaller,
    path: Result<Path<i64>, PathRejection>,
) -> Result<Json<Job>, ApiError> {
    caller.require("admin:write")?;
    act_on_one(&state, id_path(path)?, BulkAction::Delete).await
}

/// A bulk action: on the given ids, or on every job a filter matches. Exactly one of the two.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkRequest {
    /// `retry`, `cancel` or `delete`.
    #[schema(value_type = String)]
    pub action: BulkAction,
    /// At most 10,000 ids.
    pub ids: Option<Vec<i64>>,
    /// Every matching job (the whole table, not one page); at least one condition.
    pub filter: Option<JobFilter>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BulkResult {
    /// How many jobs the action changed (others were in a state it does not apply to); so far,
    /// when it is not `finished`.
    pub changed: u64,
    /// False when an action by filter was still going when the request had waited
    /// `http.bulk_answer_within` (answered 202): it goes on to the last matching job in the
    /// background.
    pub finished: bool,
    /// An action by filter's record, to follow it: `GET /v1/admin/bulk-actions/{id}` (null for
    /// an action on ids, which is always done when it answers).
    pub bulk_action: Option<i64>,
}

/// Retry, cancel or delete many jobs: by ids or by filter.
#[utoipa::path(post, path = "/v1/admin/jobs/bulk", tag = "admin", request_body = BulkRequest,
    security(("bearer" = ["admin:write"])),
    responses(
        (status = 200, description = "Done: every given or matching job handled", body = BulkResult),
        (status = 202, description = "An action by filter still going after `http.bulk_answer_within`: the jobs changed so far; it continues in the background", body = BulkResult),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 422, description = "Neither or both of ids and filter, an empty filter, too many ids", body = ErrorBody),
    ))]
pub async fn bulk(
    State(state): State<HttpState>,
    caller: ApiCaller,
    body: Result<Json<BulkRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<BulkResult>), ApiError> {
    caller.require("admin:write")?;
    let Json(request) = body.map_err(json_error)?;
    let outcome = match (request.ids, request.filter) {
        (Some(ids), None) => {
            if ids.len() > MAX_BULK_IDS {
                return Err(ApiError::Unprocessable(format!(
                    "at most {MAX_BULK_IDS} `ids`; use a `filter` for more"
                )));
            }
            BulkOutcome::on_ids(request.action.apply(&state.pool, &ids).await?)
        }
        (None, Some(filter)) => {
            let query = filter.into_query()?;
            if !query.has_condition() {
                return Err(ApiError::Unprocessable(
                    "`filter` needs at least one condition (blank fields and `args` {} are none)"
                        .into(),
                ));
            }
            let within = state.app.config.http.bulk_answer_within;
            let by = format!("token {}", caller.name);
            bulk::apply_matching(&state.pool, &query, request.action, &by, within).await?
        }
        _ => {
            return Err(ApiError::Unprocessable(
                "give exactly one of `ids` and `filter`".into(),
            ));
        }
    };
    let BulkOutcome {
        changed,
        finished,
        record,
    } = outcome;
    let status = if finished {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    tracing::info!(action = request.action.as_str(), changed, finished, bulk_action = record, caller = %caller.name, "admin API bulk action");
    Ok((
        status,
        Json(BulkResult {
            changed,
            finished,
            bulk_action: record,
        }),
    ))
}

/// A bulk action by filter and how far it got.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BulkActionRecord {
    pub id: i64,
    /// `retry`, `cancel` or `delete`.
    pub action: String,
    /// The filter it was given.
    #[schema(value_type = Object)]
    pub filter: serde_json::Value,
    /// Who asked: `operator <name>`, `token <name>` or `command line (<user>)`.
    pub requested_by: String,
    pub started_at: DateTime<Utc>,
    /// Its last progress (after each batch of 1,000 jobs).
    pub updated_at: DateTime<Utc>,
    /// Jobs changed so far.
    pub changed: i64,
    pub finished_at: Option<DateTime<Utc>>,
    /// Why it failed before the end.
    pub error: Option<String>,
    /// Who stopped it before the end (`POST /v1/admin/bulk-actions/{id}/stop`, the dashboard,
    /// Ctrl-C at the command line).
    pub stopped_by: Option<String>,
    /// How many times the maintenance leader took it over after the run moving it went away.
    pub resumed: i32,
    /// `running`, `finished`, `stopped`, `failed`, or `stalled` (no progress for a minute: the
    /// node running it went away; the maintenance leader resumes it within its rescue interval).
    pub status: String,
}

/// One bulk action by filter: its progress while it runs, its outcome after.
#[utoipa::path(get, path = "/v1/admin/bulk-actions/{id}", tag = "admin",
    params(("id" = i64, Path, description = "The `bulk_action` a bulk request answered")),
    security(("bearer" = ["admin:read"])),
    responses(
        (status = 200, body = BulkActionRecord),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
pub async fn get_bulk_action(
    State(state): State<HttpState>,
    caller: ApiCaller,
    path: Result<Path<i64>, PathRejection>,
) -> Result<Json<BulkActionRecord>, ApiError> {
    caller.require("admin:read")?;
    let id = id_path(path)?;
    let record = bulk::record(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no bulk action {id}")))?;
    Ok(Json(BulkActionRecord::new(record, Utc::now())))
}

/// The latest bulk actions by filter, newest first.
#[utoipa::path(get, path = "/v1/admin/bulk-actions", tag = "admin",
    security(("bearer" = ["admin:read"])),
    responses(
        (status = 200, body = [BulkActionRecord]),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ))]
pub async fn list_bulk_actions(
    State(state): State<HttpState>,
    caller: ApiCaller,
) -> Result<Json<Vec<BulkActionRecord>>, ApiError> {
    caller.require("admin:read")?;
    let now = Utc::now();
    let records = bulk::recent(&state.pool, RECENT_BULK_ACTIONS).await?;
    Ok(Json(
        records
            .into_iter()
            .map(|r| BulkActionRecord::new(r, now))
            .collect(),
    ))
}

/// Stops a bulk action by filter before its end: the batch under way finishes, no other
/// follows, and no node resumes it. The jobs already changed stay changed.
#[utoipa::path(post, path = "/v1/admin/bulk-actions/{id}/stop", tag = "admin",
    params(("id" = i64, Path, description = "The bulk action")),
    security(("bearer" = ["admin:write"])),
    responses(
        (status = 200, description = "Stopped: its record", body = BulkActionRecord),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "It had already ended", body = ErrorBody),
    ))]
pub async fn stop_bulk_action(
    State(state): State<HttpState>,
    caller: ApiCaller,
    path: Result<Path<i64>, PathRejection>,
) -> Result<Json<BulkActionRecord>, ApiError> {
    caller.require("admin:write")?;
    let id = id_path(path)?;
    let now = Utc::now();
    match bulk::stop(&state.pool, id, &format!("token {}", caller.name)).await? {
        bulk::StopOutcome::Stopped(record) => Ok(Json(BulkActionRecord::new(record, now))),
        bulk::StopOutcome::AlreadyOver(record) => Err(ApiError::Conflict(format!(
            "bulk action {id} is over already ({})",
            record.status(now)
        ))),
        bulk::StopOutcome::Missing => Err(ApiError::NotFound(format!("no bulk action {id}"))),
    }
}

/// How many bulk actions `GET /v1/admin/bulk-actions` lists.
const RECENT_BULK_ACTIONS: i64 = 50;

impl BulkActionRecord {
    fn new(record: bulk::BulkRecord, now: DateTime<Utc>) -> Self {
        BulkActionRecord {
            status: record.status(now).to_string(),
            id: record.id,
            action: record.action,
            filter: record.filter,
            requested_by: record.requested_by,
            started_at: record.started_at,
            updated_at: record.updated_at,
            changed: record.changed,
            finished_at: record.finished_at,
            error: record.error,
            stopped_by: record.stopped_by,
            resumed: record.resumed,
        }
    }
}

/// Jobs of one queue in one state.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Count {
    pub queue: String,
    pub state: String,
    pub count: i64,
    /// True for `completed`: the planner's estimate, not a count.
    pub estimated: bool,
}

/// Jobs per queue and state.
#[utoipa::path(get, path = "/v1/admin/counts", tag = "admin",
    security(("bearer" = ["admin:read"])),
    responses(
        (status = 200, body = Vec<Count>),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ))]
pub async fn counts(
    State(state): State<HttpState>,
    caller: ApiCaller,
) -> Result<Json<Vec<Count>>, ApiError> {
    caller.require("admin:read")?;
    Ok(Json(all_counts(&state).await?))
}

async fn all_counts(state: &HttpState) -> Result<Vec<Count>, ApiError> {
    let names = admin_query::queue_names(&state.pool).await?;
    Ok(admin_query::counts(&state.pool, &names)
        .await?
        .into_iter()
        .map(|c| Count {
            queue: c.queue,
            state: c.state,
            count: c.count,
            estimated: c.estimated,
        })
        .collect())
}

/// One queue.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QueueInfo {
    pub name: String,
    /// No node claims its jobs while paused.
    pub paused: bool,
    /// Jobs of this queue one node runs at once (`[queues.<name>]`); null: not configured here,
    /// so no node with this config works it.
    pub concurrency: Option<u32>,
    pub counts: Vec<Count>,
}

/// Queues configured, with unfinished jobs, or paused once, with their counts.
#[utoipa::path(get, path = "/v1/admin/queues", tag = "admin",
    security(("bearer" = ["admin:read"])),
    responses(
        (status = 200, body = Vec<QueueInfo>),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ))]
pub async fn list_queues(
    State(state): State<HttpState>,
    caller: ApiCaller,
) -> Result<Json<Vec<QueueInfo>>, ApiError> {
    caller.require("admin:read")?;
    let counts = all_counts(&state).await?;
    let paused = admin::paused_queues(&state.pool).await?;
    let configured = &state.app.config.queues;
    let mut names: Vec<String> = counts.iter().map(|c| c.queue.clone()).collect();
    names.extend(paused.iter().cloned());
    names.extend(configured.keys().cloned());
    names.sort();
    names.dedup();
    Ok(Json(
        names
            .into_iter()
            .map(|name| QueueInfo {
                paused: paused.contains(&name),
                concurrency: configured.get(&name).map(|q| q.concurrency),
                counts: counts.iter().filter(|c| c.queue == name).cloned().collect(),
                name,
            })
            .collect(),
    ))
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QueueState {
    pub name: String,
    pub paused: bool,
}

/// Pause a queue on every node (running jobs finish).
#[utoipa::path(post, path = "/v1/admin/queues/{name}/pause", tag = "admin",
    params(("name" = String, Path, description = "The queue")),
    security(("bearer" = ["admin:write"])),
    responses(
        (status = 200, body = QueueState),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 422, body = ErrorBody),
    ))]
pub async fn pause_queue(
    State(state): State<HttpState>,
    caller: ApiCaller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<QueueState>, ApiError> {
    caller.require("admin:write")?;
    let name = name_path(path, "name")?;
    admin::pause(&state.pool, &name).await?;
    tracing::info!(queue = %name, caller = %caller.name, "queue paused through the API");
    Ok(Json(QueueState { name, paused: true }))
}

/// Let every node claim a queue's jobs again.
#[utoipa::path(post, path = "/v1/admin/queues/{name}/resume", tag = "admin",
    params(("name" = String, Path, description = "The queue")),
    security(("bearer" = ["admin:write"])),
    responses(
        (status = 200, body = QueueState),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 422, body = ErrorBody),
    ))]
pub async fn resume_queue(
    State(state): State<HttpState>,
    caller: ApiCaller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<QueueState>, ApiError> {
    caller.require("admin:write")?;
    let name = name_path(path, "name")?;
    admin::resume(&state.pool, &name).await?;
    tracing::info!(queue = %name, caller = %caller.name, "queue resumed through the API");
    Ok(Json(QueueState {
        name,
        paused: false,
    }))
}

/// One schedule as operators see it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ScheduleInfo {
    pub name: String,
    pub cron: String,
    pub timezone: String,
    pub kind: String,
    pub enabled: bool,
    /// `latest` or `skip`.
    pub catch_up: String,
    /// The latest tick dealt with; null: never evaluated.
    pub last_tick_at: Option<DateTime<Utc>>,
    /// Null while disabled.
    pub next_tick_at: Option<DateTime<Utc>>,
    pub last_job: Option<LastJob>,
}

/// The job of the latest enqueued tick.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LastJob {
    pub id: i64,
    /// Null when the job has been pruned.
    pub state: Option<String>,
    pub finished_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

fn schedules(state: &HttpState) -> Result<Vec<Schedule>, ApiError> {
    state
        .app
        .config
        .schedules
        .iter()
        .map(|(name, c)| Schedule::from_config(name, c))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::Internal(e.into()))
}

/// The cron schedules: last and next tick, the last tick's job.
#[utoipa::path(get, path = "/v1/admin/schedules", tag = "admin",
    security(("bearer" = ["admin:read"])),
    responses(
        (status = 200, body = Vec<ScheduleInfo>),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ))]
pub async fn list_schedules(
    State(state): State<HttpState>,
    caller: ApiCaller,
) -> Result<Json<Vec<ScheduleInfo>>, ApiError> {
    caller.require("admin:read")?;
    let list = schedules(&state)?;
    let statuses = schedule::status(&state.pool, &list, Utc::now()).await?;
    Ok(Json(
        statuses
            .into_iter()
            .map(|s| ScheduleInfo {
                name: s.name,
                cron: s.cron,
                timezone: s.timezone,
                kind: s.kind,
                enabled: s.enabled,
                catch_up: s.catch_up.into(),
                last_tick_at: s.last_tick_at,
                next_tick_at: s.next_tick_at,
                last_job: s.last_job.map(|j| LastJob {
                    id: j.id,
                    state: j.state,
                    finished_at: j.finished_at,
                    last_error: j.last_error,
                }),
            })
            .collect(),
    ))
}

/// A job enqueued by an action.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobEnqueued {
    pub id: i64,
}

/// Enqueue a schedule's job now, as an extra run (its ticks are left alone).
#[utoipa::path(post, path = "/v1/admin/schedules/{name}/run", tag = "admin",
    params(("name" = String, Path, description = "The schedule")),
    security(("bearer" = ["admin:write"])),
    responses(
        (status = 202, body = JobEnqueued),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 422, description = "The schedule's kind is not run by this binary", body = ErrorBody),
    ))]
pub async fn run_schedule(
    State(state): State<HttpState>,
    caller: ApiCaller,
    path: Result<Path<String>, PathRejection>,
) -> Result<(StatusCode, Json<JobEnqueued>), ApiError> {
    caller.require("admin:write")?;
    let name = name_path(path, "name")?;
    let Some(config) = state.app.config.schedules.get(&name) else {
        return Err(ApiError::NotFound(format!("no schedule named `{name}`")));
    };
    let mut schedule =
        Schedule::from_config(&name, config).map_err(|e| ApiError::Internal(e.into()))?;
    if registry().get(&schedule.kind).is_none() {
        return Err(ApiError::Unprocessable(format!(
            "schedule `{name}` enqueues kind `{}`, which this binary does not run",
            schedule.kind
        )));
    }
    schedule
        .adopt_policy(registry())
        .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    let enqueued = schedule::run_now(&state.pool, &schedule)
        .await
        .map_err(|e| match e {
            ScheduleError::Database(e) => e.into(),
            ScheduleError::Enqueue(e) => super::enqueue_error(e),
            other => ApiError::Unprocessable(other.to_string()),
        })?;
    Ok((StatusCode::ACCEPTED, Json(JobEnqueued { id: enqueued.id })))
}

/// Re-apply a stored Stripe event: a new `stripe_event` job for it.
#[utoipa::path(post, path = "/v1/admin/stripe/events/{id}/replay", tag = "admin",
    params(("id" = String, Path, description = "The event's `evt_...` id")),
    security(("bearer" = ["admin:write"])),
    responses(
        (status = 202, body = JobEnqueued),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, description = "No stored event with that id", body = ErrorBody),
    ))]
pub async fn replay_stripe_event(
    State(state): State<HttpState>,
    caller: ApiCaller,
    path: Result<Path<String>, PathRejection>,
) -> Result<(StatusCode, Json<JobEnqueued>), ApiError> {
    use crate::jobs::stripe_event::{ReplayError, replay};
    caller.require("admin:write")?;
    let id = name_path(path, "id")?;
    let job = replay(&state.pool, &id).await.map_err(|e| match e {
        ReplayError::NotFound(_) => ApiError::NotFound(e.to_string()),
        ReplayError::Enqueue(e) => super::enqueue_error(e),
        ReplayError::Database(e) => e.into(),
    })?;
    tracing::info!(event = %id, job, caller = %caller.name, "Stripe event replayed through the API");
    Ok((StatusCode::ACCEPTED, Json(JobEnqueued { id: job })))
}

/// A node that heartbeated within the lease.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeInfo {
    pub name: String,
    /// all, web, worker or scheduler.
    pub role: String,
    pub version: String,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    /// Jobs it runs now.
    pub running: i64,
}

/// The nodes alive now (heartbeat younger than `worker.lease`), with the jobs each runs.
#[utoipa::path(get, path = "/v1/admin/nodes", tag = "admin",
    security(("bearer" = ["admin:read"])),
    responses(
        (status = 200, body = Vec<NodeInfo>),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ))]
pub async fn list_nodes(
    State(state): State<HttpState>,
    caller: ApiCaller,
) -> Result<Json<Vec<NodeInfo>>, ApiError> {
    caller.require("admin:read")?;
    let nodes = admin_query::nodes_alive(&state.pool, state.app.config.worker.lease).await?;
    Ok(Json(
        nodes
            .into_iter()
            .map(|n| NodeInfo {
                name: n.name,
                role: n.role,
                version: n.version,
                started_at: n.started_at,
                heartbeat_at: n.heartbeat_at,
                running: n.running,
            })
            .collect(),
    ))
}
