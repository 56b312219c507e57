//! The jobs listing: tabs per state, filters (kind, queue, tag, text or JSON in args, error text,
//! creation time range), keyset pages newest first, and bulk retry / cancel / delete of the
//! selected rows or of everything the filter matches, after a confirmation page.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, NaiveDateTime, Utc};

use super::{Chrome, FormData, WebError, ago, thousands};
use crate::auth::Operator;
use crate::http::HttpState;
use crate::http::error::ApiError;
use crate::queue::admin::{JobRow, STATES};
use crate::queue::admin_query::{self, JobQuery};
use crate::queue::bulk::{self, BulkAction, BulkOutcome};

/// Rows per page.
const PAGE_SIZE: i64 = 50;

/// The filter's fields, as the form and the query string carry them.
const FILTER_FIELDS: [&str; 8] = [
    "state", "kind", "queue", "tag", "args", "error", "from", "to",
];

/// The filter as typed (for the form's values and for links), and as a query.
#[derive(Default)]
pub struct Filter {
    pub values: HashMap<&'static str, String>,
}

impl Filter {
    fn from_pairs<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Filter {
        let values = FILTER_FIELDS
            .iter()
            .filter_map(|f| {
                get(f)
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .map(|v| (*f, v.to_owned()))
            })
            .collect();
        Filter { values }
    }

    pub fn value(&self, field: &str) -> &str {
        self.values.get(field).map_or("", String::as_str)
    }

    /// The filter as a query; a malformed time, an unknown state or a value PostgreSQL cannot
    /// take (NUL, a year outside 1 to 9999) is a 400 naming the field as the form does.
    fn query(&self) -> Result<JobQuery, ApiError> {
        let text = |f: &str| self.values.get(f).cloned();
        let query = JobQuery {
            state: text("state"),
            kind: text("kind"),
            queue: text("queue"),
            tag: text("tag"),
            args: text("args"),
            error: text("error"),
            created_from: self
                .values
                .get("from")
                .map(|v| parse_time("from", v))
                .transpose()?,
            created_to: self
                .values
                .get("to")
                .map(|v| parse_time("to", v))
                .transpose()?,
        };
        // Values first, to name the fields as this form does; then the state.
        query.check_values().map_err(|e| {
            let field = match e.field {
                "created_from" => "from",
                "created_to" => "to",
                field => field,
            };
            ApiError::BadRequest(format!("`{field}` {}", e.problem))
        })?;
        query
            .validate()
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        Ok(query)
    }

    /// `a=1&b=2` of the set fields plus `extra`, for links.
    fn href(&self, extra: &[(&str, &str)]) -> String {
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        for f in FILTER_FIELDS {
            if let Some(v) = self.values.get(f) {
                s.append_pair(f, v);
            }
        }
        for (k, v) in extra {
            s.append_pair(k, v);
        }
        format!("/dashboard/jobs?{}", s.finish())
    }

    /// The set fields, for hidden inputs.
    fn hidden(&self) -> Vec<(&'static str, String)> {
        FILTER_FIELDS
            .iter()
            .filter_map(|f| self.values.get(f).map(|v| (*f, v.clone())))
            .collect()
    }

    /// `state = discarded, args ~ "A-1"` or `every job`.
    fn describe(&self) -> String {
        let parts: Vec<String> = FILTER_FIELDS
            .iter()
            .filter_map(|f| self.values.get(f).map(|v| format!("{f}: {v}")))
            .collect();
        if parts.is_empty() {
            "every job".into()
        } else {
            parts.join(", ")
        }
    }
}

/// A `datetime-local` value (`2026-11-30T07:53`, read as UTC) or an RFC 3339 time, from the
/// form's `field`.
fn parse_time(field: &str, v: &str) -> Result<DateTime<Utc>, ApiError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Ok(t.with_timezone(&Utc));
    }
    ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(v, f).ok())
        .map(|t| t.and_utc())
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "`{field}`: `{v}` is not a time (expected e.g. 2026-11-30T07:53, read as UTC)"
            ))
        })
}

/// One row of the listing.
struct Line {
    id: i64,
    kind: String,
    queue: String,
    state: String,
    attempt: String,
    args: String,
    error: String,
    created: String,
    when: String,
}

impl Line {
    fn new(job: &JobRow, now: DateTime<Utc>) -> Line {
        let when = match job.state.as_str() {
            "completed" | "discarded" | "cancelled" => {
                format!("finished {}", ago(job.finished_at, now))
            }
            "running" => format!("started {}", ago(job.attempted_at, now)),
            _ => format!("runs {}", ago(Some(job.run_at), now)),
        };
        Line {
            id: job.id,
            kind: job.kind.clone(),
            queue: job.queue.clone(),
            state: job.state.clone(),
            attempt: format!("{}/{}", job.attempt, job.max_attempts),
            args: shorten(&job.args.to_string(), 120),
            error: last_error(job).map_or_else(String::new, |e| shorten(&e, 140)),
            created: ago(Some(job.created_at), now),
            when,
        }
    }
}

/// The error of the job's latest failed attempt.
pub fn last_error(job: &JobRow) -> Option<String> {
    job.errors
        .as_ref()
        .and_then(|e| e.as_array())
        .and_then(|a| a.last())
        .and_then(|e| e.get("error"))
        .and_then(|e| e.as_str())
        .map(str::to_owned)
}

/// At most `max` characters, with an ellipsis when cut.
pub fn shorten(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

struct Tab {
    label: &'static str,
    href: String,
    on: bool,
}

#[derive(Template)]
#[template(path = "dashboard/jobs.html")]
struct JobsPage {
    chrome: Chrome,
    filter: Filter,
    tabs: Vec<Tab>,
    states: [&'static str; 7],
    lines: Vec<Line>,
    hidden: Vec<(&'static str, String)>,
    next_href: Option<String>,
    first_href: Option<String>,
    window_note: Option<String>,
    error: Option<String>,
    bulk_actions: Vec<BulkLine>,
    /// The filter has a condition, so "… all matching" is offered (never on the whole table).
    filtered: bool,
}

/// A recent bulk action by filter, as the jobs page lists it.
struct BulkLine {
    id: i64,
    action: String,
    filter: String,
    requested_by: String,
    changed: String,
    status: &'static str,
    started: String,
    updated: String,
    /// Running or stalled: it can be stopped.
    unfinished: bool,
}

/// Bulk actions the jobs page lists, newest first.
const RECENT_BULK_ACTIONS: i64 = 5;

impl BulkLine {
    fn new(record: bulk::BulkRecord, now: DateTime<Utc>) -> Self {
        let filter = record.describe_filter();
        BulkLine {
            id: record.id,
            status: record.status(now),
            action: record.action,
            filter,
            requested_by: record.requested_by,
            changed: thousands(record.changed),
            started: ago(Some(record.started_at), now),
            updated: ago(Some(record.updated_at), now),
            unfinished: record.finished_at.is_none(),
        }
    }
}

pub async fn page(
    State(state): State<HttpState>,
    operator: Operator,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, WebError> {
    let filter = Filter::from_pairs(|k| params.get(k).map(String::as_str));
    let before: Option<i64> = params.get("before").and_then(|b| b.parse().ok());
    let notice = params.get("notice").cloned();
    let now = Utc::now();

    let mut tabs = vec![Tab {
        label: "all",
        href: filter_without_state(&filter).href(&[]),
        on: filter.value("state").is_empty(),
    }];
    tabs.extend(STATES.iter().map(|s| {
        let mut f = filter_without_state(&filter);
        f.values.insert("state", (*s).into());
        Tab {
            label: s,
            href: f.href(&[]),
            on: filter.value("state") == *s,
        }
    }));

    let mut filtered = false;
    // A filter that does not parse is shown on the page (to be corrected), answered 400.
    let (lines, next_href, window_note, error) = match filter.query() {
        Err(e) => (Vec::new(), None, None, Some(e.to_string())),
        Ok(query) => {
            filtered = query.has_condition();
            let page = admin_query::job_page(&state.pool, &query, before, PAGE_SIZE)
                .await
                .map_err(super::admin_error)?;
            let lines = page.jobs.iter().map(|j| Line::new(j, now)).collect();
            let next = page
                .next_before
                .map(|b| filter.href(&[("before", &b.to_string())]));
            let note = page.window_floor.map(|floor| {
                format!(
                    "Searched job ids down to {} only ({} ids a page keeps the listing fast).",
                    thousands(floor),
                    thousands(admin_query::SCAN_WINDOW)
                )
            });
            (lines, next, note, None)
        }
    };

    let bulk_actions = bulk::recent(&state.pool, RECENT_BULK_ACTIONS)
        .await?
        .into_iter()
        .map(|r| BulkLine::new(r, now))
        .collect();
    let status = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let mut response = super::render(&JobsPage {
        bulk_actions,
        chrome: Chrome::new(&operator, "jobs", notice),
        hidden: filter.hidden(),
        first_href: before.map(|_| filter.href(&[])),
        filter,
        tabs,
        states: STATES,
        lines,
        next_href,
        window_note,
        error,
        filtered,
    })?;
    *response.status_mut() = status;
    Ok(response)
}

fn filter_without_state(filter: &Filter) -> Filter {
    let mut f = Filter {
        values: filter.values.clone(),
    };
    f.values.remove("state");
    f
}

#[derive(Template)]
#[template(path = "dashboard/confirm.html")]
struct ConfirmPage {
    chrome: Chrome,
    action: &'static str,
    scope: &'static str,
    what: String,
    how_many: String,
    ids: Vec<i64>,
    hidden: Vec<(&'static str, String)>,
    back: String,
}

/// Step one (no `confirm`): a page saying what will happen to how many jobs, with a form to
/// confirm. Step two (`confirm=yes`): does it and returns to the listing with a notice.
pub async fn bulk(
    State(state): State<HttpState>,
    operator: Operator,
    form: FormData,
) -> Result<Response, WebError> {
    operator.authorize_action(form.csrf())?;
    let action = form
        .get("action")
        .and_then(BulkAction::parse)
        .ok_or_else(|| ApiError::BadRequest("unknown action".into()))?;
    let filter = Filter::from_pairs(|k| form.get(k));
    let query = filter.query()?;
    let back = filter.href(&[]);
    let everything = form.get("scope") == Some("filter");
    if everything && !query.has_condition() {
        return Err(ApiError::BadRequest(
            "an action on everything matching needs a filter (state, kind, queue, tag, args, \
             error text or creation time): without one it would act on every job"
                .into(),
        )
        .into());
    }
    let ids: Vec<i64> = form.all("id").filter_map(|v| v.parse().ok()).collect();
    if !everything && ids.is_empty() {
        return Ok(super::redirect_with_notice(
            &operator,
            &back,
            "Nothing selected: tick the jobs first, or act on everything matching the filter.",
        ));
    }

    if form.get("confirm") != Some("yes") {
        let (what, how_many) = if everything {
            let counted = admin_query::count_matching(
                &state.pool,
                &query,
                10_000,
                std::time::Duration::from_millis(150),
            )
            .await
            .map_err(super::admin_error)?;
            let how_many = match counted {
                Some(n) if n >= 10_000 => "10,000 or more jobs".to_string(),
                Some(n) => plural(n.max(0) as u64),
                None => "more jobs than can be counted quickly".to_string(),
            };
            (
                format!("every job matching {}", filter.describe()),
                how_many,
            )
        } else {
            ("the selected jobs".to_string(), plural(ids.len() as u64))
        };
        return super::render(&ConfirmPage {
            chrome: Chrome::new(&operator, "jobs", None),
            action: action.as_str(),
            scope: if everything { "filter" } else { "selected" },
            what,
            how_many,
            ids,
            hidden: filter.hidden(),
            back,
        });
    }

    let outcome = if everything {
        let within = state.app.config.http.bulk_answer_within;
        let by = format!("operator {}", operator.username);
        bulk::apply_matching(&state.pool, &query, action, &by, within)
            .await
            .map_err(super::admin_error)?
    } else {
        BulkOutcome::on_ids(action.apply(&state.pool, &ids).await?)
    };
    let BulkOutcome {
        changed,
        finished,
        record,
    } = outcome;
    tracing::info!(
        operator = %operator.username,
        action = action.as_str(),
        scope = if everything { "filter" } else { "selected" },
        changed,
        finished,
        bulk_action = record,
        "bulk job action"
    );
    let verb = match action {
        BulkAction::Retry => "set to run again",
        BulkAction::Cancel => "cancelled",
        BulkAction::Delete => "deleted",
    };
    let notice = if finished {
        format!(
            "{} {verb} (jobs in a state the action does not apply to were left alone).",
            plural(changed)
        )
    } else {
        format!(
            "{} {verb} so far; the action goes on in the background through every matching job \
             (its progress is under Recent bulk actions).",
            plural(changed)
        )
    };
    Ok(super::redirect_with_notice(&operator, &back, &notice))
}

/// Stops a bulk action by filter (the batch under way finishes, no other follows, no node
/// resumes it) and returns to the jobs page with a notice.
pub async fn stop_bulk(
    State(state): State<HttpState>,
    operator: Operator,
    Path(id): Path<i64>,
    form: FormData,
) -> Result<Response, WebError> {
    operator.authorize_action(form.csrf())?;
    let by = format!("operator {}", operator.username);
    let notice = match bulk::stop(&state.pool, id, &by).await? {
        bulk::StopOutcome::Stopped(record) => {
            tracing::info!(operator = %operator.username, bulk_action = id, "bulk action stopped from the dashboard");
            format!(
                "Bulk action {id} stopped after {}.",
                plural(record.changed.max(0) as u64)
            )
        }
        bulk::StopOutcome::AlreadyOver(record) => format!(
            "Bulk action {id} is over already ({}).",
            record.status(Utc::now())
        ),
        bulk::StopOutcome::Missing => {
            return Err(ApiError::NotFound(format!("no bulk action {id}")).into());
        }
    };
    Ok(super::redirect_with_notice(
        &operator,
        "/dashboard/jobs",
        &notice,
    ))
}

fn plural(n: u64) -> String {
    if n == 1 {
        "1 job".into()
    } else {
        format!("{} jobs", thousands(n as i64))
    }
}
