//! What operators do with schedules: `baseaim-worker schedules list [--json]` (cron, zone, last
//! and next tick, outcome of the last tick's job) and `baseaim-worker schedules run <name>` (an
//! extra job now, with its own unique key, leaving the ticks alone). Disabling a schedule is a
//! config change (`enabled = false`, or `BAW__SCHEDULES__<NAME>__ENABLED=false`).

use std::collections::HashMap;

use anyhow::Context;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use sqlx::PgPool;

use super::{Schedule, ScheduleError, sql};
use crate::config::Config;
use crate::queue::{self, Enqueued, Registry};

#[derive(Debug, Clone, clap::Subcommand)]
pub enum ScheduleCommand {
    /// List the schedules: cron, zone, enabled, last and next tick, outcome of the last job.
    List {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Enqueue a schedule's job now, as an extra run with its own unique key.
    Run {
        /// The schedule's name (its `[schedules.<name>]` section).
        name: String,
    },
}

/// One schedule as an operator sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScheduleStatus {
    pub name: String,
    pub cron: String,
    pub timezone: String,
    pub kind: String,
    pub enabled: bool,
    pub catch_up: &'static str,
    /// The latest tick dealt with (enqueued, or passed over); None: never evaluated.
    pub last_tick_at: Option<DateTime<Utc>>,
    /// The next tick from the current config; None while disabled.
    pub next_tick_at: Option<DateTime<Utc>>,
    pub last_job: Option<LastJob>,
}

/// The job of the latest enqueued tick.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LastJob {
    pub id: i64,
    /// The job's state; None when it has been pruned.
    pub state: Option<String>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The error of its latest failed attempt, if any.
    pub last_error: Option<String>,
}

type ListRow = (
    String,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Option<i64>,
    Option<String>,
    Option<DateTime<Utc>>,
    Option<String>,
);

/// The status of each configured schedule at `now`, in name order.
pub async fn status(
    pool: &PgPool,
    schedules: &[Schedule],
    now: DateTime<Utc>,
) -> Result<Vec<ScheduleStatus>, sqlx::Error> {
    let rows: Vec<ListRow> = sqlx::query_as(sql::SCHEDULE_LIST).fetch_all(pool).await?;
    let rows: HashMap<String, ListRow> = rows.into_iter().map(|r| (r.0.clone(), r)).collect();
    let mut out: Vec<ScheduleStatus> = schedules
        .iter()
        .map(|s| {
            let row = rows.get(&s.name);
            ScheduleStatus {
                name: s.name.clone(),
                cron: s.expression.clone(),
                timezone: s.timezone.name().into(),
                kind: s.kind.clone(),
                enabled: s.enabled,
                catch_up: s.catch_up.as_str(),
                last_tick_at: row.and_then(|r| r.1),
                next_tick_at: if s.enabled { s.next_after(now) } else { None },
                last_job: row.and_then(|r| {
                    r.3.map(|id| LastJob {
                        id,
                        state: r.4.clone(),
                        finished_at: r.5,
                        last_error: r.6.clone(),
                    })
                }),
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Enqueues `schedule`'s job now, outside its ticks: the unique key
/// `schedule:<name>:manual:<uuid>` is its own, so it neither waits for nor blocks a tick's job,
/// and the watermark does not move.
pub async fn run_now(pool: &PgPool, schedule: &Schedule) -> Result<Enqueued, ScheduleError> {
    let key = format!(
        "schedule:{}:manual:{}",
        schedule.name,
        uuid::Uuid::new_v4().simple()
    );
    let enqueued = queue::enqueue(pool, schedule.job(key)).await?;
    tracing::info!(schedule = %schedule.name, job = enqueued.id, "schedule run by hand");
    Ok(enqueued)
}

/// Runs a `schedules` subcommand for the CLI, printing to stdout.
pub async fn command<S: Clone + Send + Sync + 'static>(
    config: &Config,
    registry: &Registry<S>,
    command: ScheduleCommand,
) -> anyhow::Result<()> {
    let pool = crate::db::connect(&config.database).await?;
    match command {
        ScheduleCommand::List { json } => {
            // Listing shows every schedule, even one whose kind this binary cannot run.
            let schedules = config
                .schedules
                .iter()
                .map(|(name, c)| Schedule::from_config(name, c))
                .collect::<Result<Vec<_>, _>>()?;
            let statuses = status(&pool, &schedules, Utc::now())
                .await
                .context("reading the schedules (is the database migrated?)")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&statuses)?);
            } else {
                print!("{}", table(&statuses));
            }
        }
        ScheduleCommand::Run { name } => {
            let Some(section) = config.schedules.get(&name) else {
                return Err(ScheduleError::NotFound {
                    name,
                    known: config
                        .schedules
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", "),
                }
                .into());
            };
            let mut schedule = Schedule::from_config(&name, section)?;
            // Refuse a kind nobody can run, enabled or not: the job would only be discarded.
            if registry.get(&schedule.kind).is_none() {
                return Err(ScheduleError::UnknownKind {
                    name,
                    kind: schedule.kind,
                }
                .into());
            }
            schedule.adopt_policy(registry)?;
            schedule.check_queue(config)?;
            let enqueued = run_now(&pool, &schedule)
                .await
                .context("enqueueing the job")?;
            let note = if schedule.enabled {
                ""
            } else {
                " (the schedule itself is disabled)"
            };
            println!(
                "enqueued job {} of kind `{}` on queue `{}` for schedule `{}`{note}",
                enqueued.id, schedule.kind, schedule.queue, schedule.name
            );
        }
    }
    Ok(())
}

/// The `schedules list` table.
fn table(statuses: &[ScheduleStatus]) -> String {
    let time = |t: Option<DateTime<Utc>>| {
        t.map_or("-".into(), |t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
    };
    let mut rows = vec![[
        "NAME".to_string(),
        "CRON".into(),
        "TIMEZONE".into(),
        "ENABLED".into(),
        "LAST TICK".into(),
        "NEXT TICK".into(),
        "LAST JOB".into(),
    ]];
    for s in statuses {
        let job = match &s.last_job {
            None => "-".to_string(),
            Some(job) => {
                let state = job.state.as_deref().unwrap_or("pruned");
                match &job.last_error {
                    Some(error) => format!("#{} {state}: {error}", job.id),
                    None => format!("#{} {state}", job.id),
                }
            }
        };
        rows.push([
            s.name.clone(),
            s.cron.clone(),
            s.timezone.clone(),
            if s.enabled { "yes" } else { "no" }.into(),
            time(s.last_tick_at),
            time(s.next_tick_at),
            job,
        ]);
    }
    let rows: Vec<Vec<String>> = rows.into_iter().map(Vec::from).collect();
    crate::dashboard::cli::render_table(&rows)
}
