//! The operators' command line over the database: `jobs list|show|retry|cancel|delete|actions|
//! enqueue` and `queues list|pause|resume`. Tables for people, `--json` for scripts. The same
//! operations as the dashboard, from `queue::admin`, `queue::admin_query` and `queue::bulk`.

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, SecondsFormat, Utc};
use clap::Subcommand;
use sqlx::PgPool;

use crate::config::Config;
use crate::queue::admin::{self, JobRow};
use crate::queue::admin_query::{self, JobQuery};
use crate::queue::bulk::{self, BulkAction, BulkRecord, BulkRun, RunEnd, StopOutcome};
use crate::queue::{NewJob, enqueue};

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List jobs, newest first.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// Only jobs with a smaller id (the last id of the previous page).
        #[arg(long)]
        before: Option<i64>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Print `{"jobs": [..], "next_after": ID or null, "window_floor": ID or null}` as the
        /// admin API's listing does: `next_after` is the next page's `--before` (null: nothing
        /// older matches); `window_floor` is set when the page stopped at its scan window.
        #[arg(long)]
        json: bool,
    },
    /// Show one job with its args, result and every attempt's error.
    Show {
        id: i64,
        #[arg(long)]
        json: bool,
    },
    /// Run jobs again now (any state but running): the given ids, or every job matching the
    /// filter options.
    Retry(Targets),
    /// Cancel unfinished jobs (a running one is stopped at its next await point): the given ids,
    /// or every job matching the filter options.
    Cancel(Targets),
    /// Delete finished jobs (completed, discarded, cancelled): the given ids, or every job
    /// matching the filter options.
    Delete(Targets),
    /// The latest retries, cancels and deletes by filter (from the dashboard, the API or here):
    /// who asked, the filter, how far each got.
    Actions {
        #[arg(long, default_value_t = 20)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Stop a bulk action by filter (see `jobs actions`) before its end: the batch under way
    /// finishes, no other follows, and no node resumes it.
    StopAction { id: i64 },
    /// Enqueue a job of any registered kind, e.g. `jobs enqueue noop`. The args are checked
    /// against the kind; its policy (queue, priority, attempts, unique key) applies.
    Enqueue {
        kind: String,
        /// The args as JSON.
        #[arg(default_value = "{}")]
        args: String,
        /// Default: the kind's queue.
        #[arg(long)]
        queue: Option<String>,
        #[arg(long)]
        unique_key: Option<String>,
        /// Print `{"id": .., "duplicate": ..}` instead of a sentence.
        #[arg(long)]
        json: bool,
    },
}

/// Which jobs `list` shows and an action by filter applies to (unset: any).
#[derive(Debug, clap::Args)]
pub struct FilterArgs {
    /// Jobs in this state ...
    #[arg(long)]
    state: Option<String>,
    /// ... of this kind ...
    #[arg(long)]
    kind: Option<String>,
    /// ... in this queue ...
    #[arg(long)]
    queue: Option<String>,
    /// ... with this tag ...
    #[arg(long)]
    tag: Option<String>,
    /// ... whose args contain this JSON object, e.g. '{"client_id": "42"}' ...
    #[arg(long)]
    args: Option<String>,
    /// ... with an attempt's error containing this text (case-insensitive) ...
    #[arg(long)]
    error: Option<String>,
    /// ... created at or after this time (RFC 3339, e.g. 2026-11-30T09:00:00Z) ...
    #[arg(long)]
    created_from: Option<DateTime<Utc>>,
    /// ... created before this time (RFC 3339).
    #[arg(long)]
    created_to: Option<DateTime<Utc>>,
}

impl FilterArgs {
    /// The filter as the dashboard's; `--args` must be a JSON object, and values PostgreSQL
    /// cannot take (NUL, a year outside 1 to 9999) are refused naming the option.
    fn query(&self) -> anyhow::Result<JobQuery> {
        let args = match &self.args {
            None => None,
            Some(text) => {
                let json = parse_json("--args", text)?;
                anyhow::ensure!(json.is_object(), "--args must be a JSON object: {text}");
                Some(json.to_string())
            }
        };
        let query = JobQuery {
            state: self.state.clone(),
            kind: self.kind.clone(),
            queue: self.queue.clone(),
            tag: self.tag.clone(),
            args,
            error: self.error.clone(),
            created_from: self.created_from,
            created_to: self.created_to,
        };
        query
            .check_values()
            .map_err(|e| anyhow::anyhow!("--{} {}", e.field.replace('_', "-"), e.problem))?;
        Ok(query)
    }
}

/// The jobs an action applies to: ids, or every job matching a filter (at least one condition).
/// A filter only counts its jobs unless `--yes` is given. Ids are taken once each; when some
/// are left alone (missing, or in a state the action does not apply to) the command names them
/// and exits non-zero.
#[derive(Debug, clap::Args)]
pub struct Targets {
    /// Job ids.
    ids: Vec<i64>,
    #[command(flatten)]
    filter: FilterArgs,
    /// Act on every job the filter matches (without it, only say how many match).
    #[arg(long)]
    yes: bool,
}

/// Who a bulk action's record says asked for it: the command line, and the login user.
fn requested_by() -> String {
    match std::env::var("USER") {
        Ok(user) if !user.is_empty() => format!("command line ({user})"),
        _ => "command line".to_string(),
    }
}

/// How often a long action by filter reports its progress (on standard error).
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

async fn act(pool: &PgPool, action: BulkAction, targets: Targets) -> anyhow::Result<()> {
    let verb = match action {
        BulkAction::Retry => "set to run now",
        BulkAction::Cancel => "cancelled",
        BulkAction::Delete => "deleted",
    };
    let query = targets.filter.query()?;
    // Blank options and `--args '{}'` narrow nothing: no condition.
    let filtered = query.has_condition();
    if !targets.ids.is_empty() {
        anyhow::ensure!(
            !filtered,
            "give job ids or filter options (--state, --kind, ...), not both"
        );
        // Each job once: `retry 5 5` is one job, not "1 of 2".
        let mut seen = std::collections::HashSet::new();
        let ids: Vec<i64> = targets
            .ids
            .into_iter()
            .filter(|id| seen.insert(*id))
            .collect();
        let before = admin_query::job_states(pool, &ids).await?;
        let n = action.apply(pool, &ids).await?;
        println!("{n} of {} jobs {verb}", ids.len());
        if n < ids.len() as u64 {
            anyhow::bail!("{}", unchanged(action, verb, &ids, &before, n));
        }
        return Ok(());
    }
    anyhow::ensure!(
        filtered,
        "give job ids, or filter options for every matching job: \
         --state, --kind, --queue, --tag, --args, --error, --created-from, --created-to"
    );
    if !targets.yes {
        let counted =
            admin_query::count_matching(pool, &query, i64::MAX, Duration::from_secs(30)).await?;
        let matching = match counted {
            Some(n) => format!("{n} jobs match"),
            None => "more jobs match than can be counted in 30 s".to_string(),
        };
        println!(
            "{matching}; {} applies to {} among them. Add --yes to go ahead.",
            action.as_str(),
            action.applies_to()
        );
        return Ok(());
    }
    // Ctrl-C stops the action (after the batch under way) instead of leaving it for a node to
    // resume; listened for before the action starts, so that none gets past.
    let interrupted = interrupt()?;
    tokio::pin!(interrupted);
    let mut run = BulkRun::start(pool, &query, action, &requested_by()).await?;
    let id = run.id;
    loop {
        tokio::select! {
            ended = run.finished_within(PROGRESS_EVERY) => match ended {
                Some(ended) => {
                    println!("{}", match ended? {
                        RunEnd::Finished(n) => format!("{n} jobs {verb} (bulk action {id})"),
                        RunEnd::Stopped(n) => format!(
                            "bulk action {id} was stopped (`jobs actions` says by whom) after {n} jobs {verb}"
                        ),
                        RunEnd::TakenOver(n) => format!(
                            "{n} jobs {verb} so far; another node took bulk action {id} over and goes on \
                             with it (`jobs actions` follows it)"
                        ),
                    });
                    return Ok(());
                }
                None => eprintln!("{} jobs {verb} so far ...", run.changed_so_far()),
            },
            _ = &mut interrupted => {
                let by = format!("{} (interrupted)", requested_by());
                let changed = match bulk::stop(pool, id, &by).await? {
                    StopOutcome::Stopped(record) => record.changed,
                    StopOutcome::AlreadyOver(record) => {
                        println!("{} jobs {verb} (bulk action {id}, over before the interrupt)", record.changed);
                        return Ok(());
                    }
                    StopOutcome::Missing => run.changed_so_far() as i64,
                };
                anyhow::bail!("interrupted: bulk action {id} stopped after {changed} jobs {verb}");
            }
        }
    }
}

/// Which of `ids` an action on ids left alone, and why, from their states before it: missing, or
/// in a state it does not apply to. Any others (a job that changed state meanwhile, or a retry
/// skipped because another job holds its unique key) are counted.
fn unchanged(
    action: BulkAction,
    verb: &str,
    ids: &[i64],
    before: &std::collections::HashMap<i64, String>,
    changed: u64,
) -> String {
    let applies = |state: &str| match action {
        BulkAction::Retry => state != "running",
        BulkAction::Cancel => matches!(state, "scheduled" | "available" | "running" | "retryable"),
        BulkAction::Delete => matches!(state, "completed" | "discarded" | "cancelled"),
    };
    let named: Vec<String> = ids
        .iter()
        .filter_map(|id| match before.get(id) {
            None => Some(format!("job {id}: no such job")),
            Some(state) if !applies(state) => Some(format!("job {id}: {state}")),
            Some(_) => None,
        })
        .collect();
    let left = (ids.len() as u64).saturating_sub(changed);
    let mut text = format!(
        "{left} of {} jobs not {verb} ({} applies to {})",
        ids.len(),
        action.as_str(),
        action.applies_to()
    );
    if !named.is_empty() {
        text.push_str(&format!(": {}", named.join(", ")));
    }
    let others = left.saturating_sub(named.len() as u64);
    if others > 0 {
        let why = match action {
            BulkAction::Retry => "changed state meanwhile, or another job holds its unique key",
            _ => "changed state meanwhile",
        };
        text.push_str(&format!("; {others} more left as they were ({why})"));
    }
    text
}

/// Resolves on Ctrl-C; listening from now on (`tokio::signal::ctrl_c` listens from its first
/// poll only).
fn interrupt() -> std::io::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut sigint = signal(SignalKind::interrupt())?;
        Ok(async move {
            sigint.recv().await;
        })
    }
    #[cfg(not(unix))]
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

#[derive(Debug, Subcommand)]
pub enum QueuesCommand {
    /// Jobs per queue and state, and which queues are paused.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Stop every node from claiming the queue's jobs (running ones finish).
    Pause { queue: String },
    /// Let nodes claim the queue's jobs again.
    Resume { queue: String },
}

async fn pool(config: &Config) -> anyhow::Result<PgPool> {
    let pool = crate::db::pool(&config.database)?;
    crate::db::is_ready(&pool)
        .await
        .context("cannot reach the database")?
        .then_some(())
        .context("the database is not migrated (run `baseaim-worker migrate`)")?;
    Ok(pool)
}

fn parse_json(what: &str, text: &str) -> anyhow::Result<serde_json::Value> {
    serde_json::from_str(text).with_context(|| format!("{what} is not valid JSON: {text}"))
}

pub async fn jobs(config: &Config, command: JobsCommand) -> anyhow::Result<()> {
    let pool = pool(config).await?;
    match command {
        JobsCommand::List {
            filter,
            before,
            limit,
            json,
        } => {
            anyhow::ensure!(
                (1..=admin_query::MAX_PAGE).contains(&limit),
                "--limit must be between 1 and {}",
                admin_query::MAX_PAGE
            );
            let page = admin_query::job_page(&pool, &filter.query()?, before, limit).await?;
            if json {
                // The admin API's listing (`GET /v1/admin/jobs`): the cursor too, so that a
                // script can tell "no more" (null) from "nothing in this scan window".
                let page = serde_json::json!({
                    "jobs": page.jobs,
                    "next_after": page.next_before,
                    "window_floor": page.window_floor,
                });
                println!("{}", serde_json::to_string_pretty(&page)?);
            } else {
                print!("{}", jobs_table(&page.jobs));
                match (page.next_before, page.window_floor) {
                    (Some(next), Some(_)) => println!(
                        "(searched ids {next} and above; older jobs may match: --before {next})"
                    ),
                    (Some(next), None) => println!("(more: --before {next})"),
                    (None, _) => {}
                }
            }
        }
        JobsCommand::Actions { limit, json } => {
            anyhow::ensure!(
                (1..=admin_query::MAX_PAGE).contains(&limit),
                "--limit must be between 1 and {}",
                admin_query::MAX_PAGE
            );
            let records = bulk::recent(&pool, limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&records)?);
            } else {
                print!("{}", bulk_actions_table(&records));
            }
        }
        JobsCommand::StopAction { id } => match bulk::stop(&pool, id, &requested_by()).await? {
            StopOutcome::Stopped(record) => println!(
                "bulk action {id} stopped after {} jobs changed",
                record.changed
            ),
            StopOutcome::AlreadyOver(record) => anyhow::bail!(
                "bulk action {id} is over already ({})",
                record.status(Utc::now())
            ),
            StopOutcome::Missing => anyhow::bail!("no bulk action {id}"),
        },
        JobsCommand::Show { id, json } => {
            let job = admin::get(&pool, id)
                .await?
                .with_context(|| format!("no job {id}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&job)?);
            } else {
                print!("{}", job_details(&job));
            }
        }
        JobsCommand::Retry(targets) => act(&pool, BulkAction::Retry, targets).await?,
        JobsCommand::Cancel(targets) => act(&pool, BulkAction::Cancel, targets).await?,
        JobsCommand::Delete(targets) => act(&pool, BulkAction::Delete, targets).await?,
        JobsCommand::Enqueue {
            kind,
            args,
            queue,
            unique_key,
            json,
        } => {
            // The same check as `POST /v1/jobs`: a kind nobody runs, or args that do not fit it,
            // would only be discarded later.
            let registry = crate::jobs::registry();
            let Some(entry) = registry.get(&kind) else {
                let mut known: Vec<&str> = registry.kinds().collect();
                known.sort_unstable();
                anyhow::bail!("unknown kind `{kind}` (registered: {})", known.join(", "));
            };
            let mut job: NewJob = entry
                .new_job(parse_json("args", &args)?)
                .map_err(|e| anyhow::anyhow!("the args do not fit kind `{kind}`: {e}"))?;
            if let Some(queue) = queue {
                job = job.queue(queue);
            }
            if let Some(key) = unique_key {
                job = job.unique_key(key);
            }
            let enqueued = enqueue(&pool, job).await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "id": enqueued.id, "duplicate": !enqueued.inserted })
                );
                return Ok(());
            }
            let note = if enqueued.inserted {
                ""
            } else {
                " (already enqueued under that key)"
            };
            println!("job {}{note}", enqueued.id);
        }
    }
    Ok(())
}

pub async fn queues(config: &Config, command: QueuesCommand) -> anyhow::Result<()> {
    let pool = pool(config).await?;
    match command {
        QueuesCommand::List { json } => {
            let counts = admin::counts(&pool).await?;
            let paused = admin::paused_queues(&pool).await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "counts": counts, "paused": paused })
                );
            } else {
                let mut rows = vec![vec!["QUEUE".into(), "STATE".into(), "JOBS".into()]];
                rows.extend(
                    counts
                        .iter()
                        .map(|c| vec![c.queue.clone(), c.state.clone(), c.count.to_string()]),
                );
                print!("{}", render_table(&rows));
                if !paused.is_empty() {
                    println!("paused: {}", paused.join(", "));
                }
            }
        }
        QueuesCommand::Pause { queue } => {
            admin::pause(&pool, &queue).await?;
            println!("queue `{queue}` paused");
        }
        QueuesCommand::Resume { queue } => {
            admin::resume(&pool, &queue).await?;
            println!("queue `{queue}` resumed");
        }
    }
    Ok(())
}

fn time(t: Option<DateTime<Utc>>) -> String {
    t.map_or("-".into(), |t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
}

fn jobs_table(rows: &[JobRow]) -> String {
    let mut table = vec![
        [
            "ID",
            "KIND",
            "QUEUE",
            "STATE",
            "ATTEMPT",
            "RUN AT",
            "LAST ERROR",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for job in rows {
        let last_error = job
            .errors
            .as_ref()
            .and_then(|e| {
                e.as_array()?
                    .last()?
                    .get("error")?
                    .as_str()
                    .map(str::to_string)
            })
            .unwrap_or_default();
        let last_error: String = last_error.chars().take(60).collect();
        table.push(vec![
            job.id.to_string(),
            job.kind.clone(),
            job.queue.clone(),
            job.state.clone(),
            format!("{}/{}", job.attempt, job.max_attempts),
            time(Some(job.run_at)),
            last_error,
        ]);
    }
    render_table(&table)
}

fn bulk_actions_table(records: &[BulkRecord]) -> String {
    let now = Utc::now();
    let mut table = vec![
        [
            "ID", "ACTION", "STATUS", "CHANGED", "STARTED", "BY", "FILTER",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for record in records {
        table.push(vec![
            record.id.to_string(),
            record.action.clone(),
            record.status(now).to_string(),
            record.changed.to_string(),
            time(Some(record.started_at)),
            record.requested_by.clone(),
            record.describe_filter(),
        ]);
    }
    render_table(&table)
}

fn job_details(job: &JobRow) -> String {
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
    let mut out = format!(
        "job {} ({}) on queue {}: {}\nattempt {}/{}, priority {}, run at {}\ncreated {}, attempted {}, finished {}\nnode {}\nunique key {}\ntags {}\nargs {}\n",
        job.id,
        job.kind,
        job.queue,
        job.state,
        job.attempt,
        job.max_attempts,
        job.priority,
        time(Some(job.run_at)),
        time(Some(job.created_at)),
        time(job.attempted_at),
        time(job.finished_at),
        job.lease_owner.as_deref().unwrap_or("-"),
        job.unique_key.as_deref().unwrap_or("-"),
        if job.tags.is_empty() {
            "-".to_string()
        } else {
            job.tags.join(", ")
        },
        pretty(&job.args),
    );
    if let Some(result) = &job.result {
        out.push_str(&format!("result {}\n", pretty(result)));
    }
    for error in job
        .errors
        .as_ref()
        .and_then(|e| e.as_array())
        .into_iter()
        .flatten()
    {
        out.push_str(&format!(
            "attempt {} at {}: {}\n",
            error["attempt"],
            error["at"].as_str().unwrap_or("?"),
            error["error"].as_str().unwrap_or("?")
        ));
    }
    out
}

/// Left-aligned columns separated by two spaces; the first row is the header.
pub fn render_table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, &w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
