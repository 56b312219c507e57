//! Cron schedules from config, turned into queue jobs so that any number of nodes enqueue each
//! tick exactly once, and a tick that every node missed is caught up once (never a burst).
//!
//! Neighbours: [`crate::config`] holds the `[schedules.<name>]` sections ([`ScheduleConfig`]) and
//! calls [`Schedule::from_config`] while loading, so a bad cron or zone stops start-up naming the
//! schedule; [`load`] checks the rest against the kinds this binary runs and the config's
//! `[queues]` (a kind's args, a queue nobody works). [`crate::queue`] receives the jobs.
//! [`crate::app`] starts [`Scheduler::run`] on nodes of role `all` and `scheduler`; the CLI's
//! `schedules list|run` land in [`command`].
//!
//! # Why every node evaluates, and why that is safe
//!
//! A cron library inside each process (tokio-cron-scheduler, apalis-cron) fires in every process:
//! two copies gave two runs per tick. A leader-only scheduler would fix that, but then a tick is
//! lost whenever the leader dies just before it and the next leader is not yet elected. So here
//! every node with the scheduler role evaluates every schedule, and the database decides which
//! node's evaluation counts. Two guards do it, in one transaction per tick:
//!
//! 1. **The `schedules` row is a compare-and-set watermark.** Each schedule has a row whose
//!    `last_tick_at` is the latest tick that has been dealt with. A node that finds tick `T` due
//!    runs `update schedules set last_tick_at = T ... where last_tick_at < T` and only if that
//!    touched the row does it enqueue `T`'s job, in the same transaction (through the queue's
//!    SQL function `enqueue_job`, see [`scheduler`]). Concurrent nodes queue
//!    up on the row lock; when the first commits, the others' `where` no longer holds (PostgreSQL
//!    re-checks it against the committed row) and they enqueue nothing. This holds however late
//!    a node is, and however long ago `T`'s job finished: a node whose clock lags or that was
//!    paused for a minute cannot enqueue a tick again, because the watermark only moves forward.
//! 2. **The job's unique key is `schedule:<name>:<tick in UTC, RFC 3339>`.** The queue refuses a
//!    second unfinished job with the same key, so while a tick's job waits or runs, no path at
//!    all (this scheduler, a hand-run `enqueue_job`, a reset `schedules` row) can add a twin. The
//!    key also names the tick on the job row, for operators and for job kinds that derive
//!    provider idempotency keys from `ctx.unique_key`. On its own the key would not be enough:
//!    it guards only *unfinished* jobs, so a node arriving after a fast job completed would
//!    enqueue the tick again. That is what the watermark is for.
//!
//! No leader is needed for correctness and a node's death costs nothing: the survivors keep
//! evaluating. A node whose clock is set back cannot repeat a tick either: the watermark only
//! moves forward. Clock skew between nodes only changes which node enqueues a tick, not whether:
//! the tick's identity is the schedule's time, not the evaluating node's, and no node may move a
//! watermark past the *database's* clock (see "The clock").
//!
//! # Catch-up after downtime
//!
//! Ticks are found backwards from `now`: the *due* tick is the latest tick at or before `now`.
//! It is enqueued when it is later than the watermark. Ticks between the watermark and the due
//! tick were missed by every node (all were down or cut off from the database); they are never
//! enqueued: catching up means running the work once, not replaying every missed half hour.
//! What happens to the due tick itself depends on how late it is seen:
//! - on time (seen within [`MISFIRE_GRACE`] of its time, as in normal running): enqueued;
//! - late, policy `latest` (the default): enqueued, once: the one catch-up job;
//! - late, policy `skip`: not enqueued; the watermark moves past it and the schedule waits for
//!   its next tick.
//!
//! A schedule seen for the first time (a new deployment, a new section) starts with its *next*
//! tick: its row is created with the due tick as the watermark, so deploying never fires a daily
//! job at a random hour. `schedules run <name>` fires one by hand. So does a schedule whose cron
//! or zone changed: the row records what its ticks were computed from (`defined_by`, e.g.
//! `0 4 * * * UTC`), and a node configured otherwise moves the watermark to the latest tick of
//! its own definition (never back) without enqueueing it, and logs that the schedule changed;
//! moving a daily job from 04:00 to 09:00 at 10:00 runs it at 09:00 the next day, not at deploy
//! time. While nodes disagree about a schedule's definition (a rolling deploy), each takes the
//! other's writes for a change and that schedule enqueues nothing until they agree.
//!
//! A disabled schedule is not evaluated; enabled again, it catches up per its policy (with an
//! unchanged definition: changed, it starts with its next tick). A schedule removed from the
//! config keeps its row, so one added back later under the same name is the same: with the same
//! cron and zone it catches up per its policy (under `latest`, one job at deploy time for the
//! latest tick it missed), otherwise it starts with its next tick. To have it start afresh, set
//! `catch_up = "skip"` or delete its row (`delete from schedules where name = '<name>'`) first.
//!
//! # Time zones and DST
//!
//! Ticks are computed on the wall clock of the schedule's zone (croner walks the zone's civil
//! time, chrono-tz supplies the offsets) and every tick is then an instant, keyed in UTC. So:
//! - spring forward (Europe/Berlin 02:00 -> 03:00): wall times in the gap do not exist. An
//!   interval schedule (`*/30 * * * *`) has no tick there and loses no real time (01:30 CET is
//!   followed by 03:00 CEST, 30 minutes later); a fixed-time schedule (`30 2 * * *`) runs at the
//!   first instant after the gap (03:00 CEST) so its day is not skipped;
//! - fall back (03:00 -> 02:00): the hour repeats. An interval schedule ticks on both passes,
//!   which are different instants and therefore different keys, exactly as often as real time
//!   passes; a fixed-time schedule runs once, on the first pass.
//!
//! No duplicate (keys are instants, and the watermark orders them) and no gap (the due tick is
//! the zone's own answer for "the latest tick before now").
//!
//! Which schedules are *fixed-time* is Vixie cron's rule: those whose hour and minute fields
//! (and seconds, if given) name times of day without `*` or a step: single values, lists and
//! ranges (`30 2`, `0 2,14`, `15,45 2`, `0 1-3`). croner alone counts only single values as
//! fixed-time, so such a schedule is expanded into one croner expression per (minute, hour)
//! pair, each of which croner handles as fixed-time; the schedule's ticks are their union (the
//! latest of their latest ticks, the earliest of their next ones). Two times of day that fall in
//! the same spring-forward gap are both due at its end: one instant, so one run. A `*` or a step
//! in the hour or minute (`*/30 * * * *`, `0 */2 * * *`, `* 2 * * *`, `0 0-23/6 * * *`) makes an
//! interval schedule, as does more than one second.
//!
//! # The clock
//!
//! [`Scheduler::run_once`] takes `now` as an argument, so tests drive several schedulers over
//! simulated hours deterministically. [`Scheduler::run`] is the production loop: it calls
//! `run_once(Utc::now())`, then sleeps until the earliest next tick (at most
//! [`MAX_SLEEP`], so a changed system clock is noticed), and logs a database error once and
//! retries with backoff instead of dying.
//!
//! Because the watermark only moves forward, a node whose clock ran ahead could otherwise
//! silence a schedule everywhere: a node a day ahead would enqueue tomorrow's tick and move the
//! watermark there, and no node (itself included, once its clock is fixed) would enqueue anything
//! until real time caught up. So the database's clock is the bound: no watermark is written
//! later than the database's `now()` plus [`CLOCK_SKEW_GRACE`] (the compare-and-set and the
//! first-sight insert both say so), a node whose `now` is further ahead enqueues nothing and logs
//! a warning naming the skew, and [`Scheduler::run`] reads the database's clock each pass and,
//! when the node's disagrees with it by more than the grace (ahead or behind), evaluates on the
//! database's instead, saying so. A skew within the grace only moves a tick by that much.
//!
//! # Parts
//! - [`config`](mod@config): the config section.
//! - [`scheduler`]: evaluation, the compare-and-set, the loop.
//! - [`command`]: `schedules list` and `schedules run` for operators.
//! - `sql`: every statement, named.

pub mod command;
pub mod config;
pub mod scheduler;
mod sql;

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds};
use croner::{Cron, CronComponent, JobType};

pub use command::{ScheduleCommand, ScheduleStatus, run_now, status};
pub use config::{CatchUp, ScheduleConfig};
pub use scheduler::{RunReport, Scheduler};

use crate::queue::enqueue::MAX_UNIQUE_KEY;
use crate::queue::{EnqueueError, NewJob, Registry};

/// A tick first seen later than this after its time was missed (every node was down or cut off):
/// policy `skip` drops it. Like Quartz's misfire threshold.
pub const MISFIRE_GRACE: Duration = Duration::from_secs(60);

/// The production loop re-evaluates at least this often, whatever the next tick.
pub const MAX_SLEEP: Duration = Duration::from_secs(30);

/// How far ahead of the database's clock a node may deal with ticks. A node whose clock is
/// further ahead enqueues nothing (its ticks would be in everyone's future), and the production
/// loop evaluates on the database's clock instead of a node clock this far off.
pub const CLOCK_SKEW_GRACE: Duration = Duration::from_secs(10);

/// The longest schedule name: the unique keys of its jobs must fit [`MAX_UNIQUE_KEY`], and a run
/// by hand's, `schedule:<name>:manual:<32 hex digits>`, is longer than a tick's
/// (`schedule:<name>:<20-character time>`).
pub const MAX_NAME: usize = MAX_UNIQUE_KEY - "schedule::manual:".len() - 32;

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// A schedule's config does not make sense; `key` is its full config key.
    #[error("invalid value for `{key}`: expected {expected}")]
    Invalid { key: String, expected: String },
    #[error(
        "schedule `{name}` enqueues kind `{kind}`, which this binary does not run; register the kind or set `schedules.{name}.enabled = false`"
    )]
    UnknownKind { name: String, kind: String },
    #[error("no schedule named `{name}` (configured: {known})")]
    NotFound { name: String, known: String },
    #[error(transparent)]
    Enqueue(#[from] EnqueueError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// A schedule, checked: its cron parsed, its zone known, its job's queue and policy resolved.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub name: String,
    /// The expression as configured (for display).
    pub expression: String,
    cron: Cron,
    /// A fixed-time schedule croner would take for an interval one (lists or ranges of hours or
    /// minutes), as one single-time expression per (minute, hour); empty: `cron` says it all.
    /// See "Time zones and DST".
    fixed_times: Vec<Cron>,
    pub timezone: Tz,
    pub kind: String,
    pub args: serde_json::Value,
    pub enabled: bool,
    pub catch_up: CatchUp,
    pub queue: String,
    /// Whether `queue` came from the config (else the kind's policy may supply it).
    queue_configured: bool,
    pub priority: i16,
    pub max_attempts: i32,
}

impl Schedule {
    /// Checks one `[schedules.<name>]` section. The job's queue is the configured one, else
    /// `default` until [`Schedule::adopt_policy`] learns the kind's.
    pub fn from_config(name: &str, config: &ScheduleConfig) -> Result<Self, ScheduleError> {
        let invalid = |field: &str, expected: String| ScheduleError::Invalid {
            key: if field.is_empty() {
                format!("schedules.{name}")
            } else {
                format!("schedules.{name}.{field}")
            },
            expected,
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(invalid(
                "",
                "a schedule name of lowercase letters, digits and `_` (so that \
                 BAW__SCHEDULES__<NAME>__* can address it)"
                    .into(),
            ));
        }
        if name.len() > MAX_NAME {
            return Err(invalid(
                "",
                format!(
                    "a schedule name of at most {MAX_NAME} characters (its jobs' unique keys, \
                     `schedule:<name>:manual:<id>` the longest, must fit {MAX_UNIQUE_KEY}), but \
                     this one has {}",
                    name.len()
                ),
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(&config.cron)
            .map_err(|error| {
                invalid(
                    "cron",
                    format!(
                        "a cron expression of 5 fields (or 6, seconds first), but `{}` is not: {error}",
                        config.cron
                    ),
                )
            })?;
        let timezone = Tz::from_str(&config.timezone).map_err(|_| {
            invalid(
                "timezone",
                format!(
                    "an IANA time zone such as `UTC` or `Europe/Berlin`, but `{}` is not one",
                    config.timezone
                ),
            )
        })?;
        if config.kind.trim().is_empty() {
            return Err(invalid("kind", "a job kind".into()));
        }
        let args = serde_json::Value::Object(config.args.clone());
        if crate::db::json_has_nul(&args) {
            return Err(invalid(
                "args",
                "args without NUL characters (PostgreSQL's jsonb cannot store \\u0000)".into(),
            ));
        }
        if config.queue.as_deref().is_some_and(|q| q.trim().is_empty()) {
            return Err(invalid("queue", "a queue name, or no `queue` key".into()));
        }
        let schedule = Schedule {
            name: name.into(),
            expression: config.cron.clone(),
            fixed_times: fixed_times(&cron),
            cron,
            timezone,
            kind: config.kind.clone(),
            args,
            enabled: config.enabled,
            catch_up: config.catch_up,
            queue: config.queue.clone().unwrap_or_else(|| "default".into()),
            queue_configured: config.queue.is_some(),
            priority: 0,
            max_attempts: 25,
        };
        if schedule.next_after(Utc::now()).is_none() {
            return Err(invalid(
                "cron",
                format!(
                    "a cron expression that fires, but `{}` never does",
                    config.cron
                ),
            ));
        }
        Ok(schedule)
    }

    /// Takes the kind's policy (queue unless configured, priority, attempts) from `registry`.
    /// Refuses an enabled schedule whose kind the registry cannot run, and args the kind does
    /// not accept (enabled or not, like a bad cron): their jobs would only be discarded.
    pub fn adopt_policy<S: Clone + Send + Sync + 'static>(
        &mut self,
        registry: &Registry<S>,
    ) -> Result<(), ScheduleError> {
        match registry.get(&self.kind) {
            Some(entry) => {
                // The kind's own check: its args deserialise, as they will when each tick's job
                // is performed.
                entry
                    .new_job(self.args.clone())
                    .map_err(|error| ScheduleError::Invalid {
                        key: format!("schedules.{}.args", self.name),
                        expected: format!("args that kind `{}` accepts, but {error}", self.kind),
                    })?;
                if !self.queue_configured {
                    self.queue = entry.policy.queue.into();
                }
                self.priority = entry.policy.priority;
                self.max_attempts = entry.policy.max_attempts;
                Ok(())
            }
            None if self.enabled => Err(ScheduleError::UnknownKind {
                name: self.name.clone(),
                kind: self.kind.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Refuses a queue (configured, or the kind's once [`Schedule::adopt_policy`] ran) that is
    /// not one of `config`'s `[queues]`, naming `schedules.<name>.queue` and the queues there are
    /// (as `POST /v1/jobs` does): its jobs would wait forever.
    pub fn check_queue(&self, config: &crate::config::Config) -> Result<(), ScheduleError> {
        if config.queues.contains_key(&self.queue) {
            return Ok(());
        }
        let whose = if self.queue_configured {
            "the queue"
        } else {
            "its kind's queue"
        };
        Err(ScheduleError::Invalid {
            key: format!("schedules.{}.queue", self.name),
            expected: format!(
                "a queue of `[queues]` (configured: {}), but {whose} `{}` is not one: its jobs \
                 would wait forever",
                config.queues.keys().cloned().collect::<Vec<_>>().join(", "),
                self.queue
            ),
        })
    }

    /// The first tick strictly after `t`. None: the expression never fires again.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = t.trunc_subsecs(0).with_timezone(&self.timezone);
        let next = |cron: &Cron| {
            cron.find_next_occurrence(&local, false)
                .ok()
                .map(|tick| tick.with_timezone(&Utc))
        };
        if self.fixed_times.is_empty() {
            return next(&self.cron);
        }
        self.fixed_times.iter().filter_map(next).min()
    }

    /// The latest tick at or before `t`. None: the expression never fired before `t`.
    pub fn latest_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = t.trunc_subsecs(0).with_timezone(&self.timezone);
        let latest = |cron: &Cron| {
            cron.find_previous_occurrence(&local, true)
                .ok()
                .map(|tick| tick.with_timezone(&Utc))
        };
        if self.fixed_times.is_empty() {
            return latest(&self.cron);
        }
        self.fixed_times.iter().filter_map(latest).max()
    }

    /// What defines this schedule's tick times, as stored on its row (`defined_by`): the cron
    /// expression (blanks normalised) and the zone, e.g. `0 4 * * * UTC`. A row defined
    /// otherwise was counting another schedule's ticks (see "Catch-up").
    pub fn definition(&self) -> String {
        let cron: Vec<&str> = self.expression.split_whitespace().collect();
        format!("{} {}", cron.join(" "), self.timezone.name())
    }

    /// The unique key of the job of tick `tick`: `schedule:<name>:<tick in UTC, RFC 3339>`.
    pub fn tick_key(&self, tick: DateTime<Utc>) -> String {
        format!(
            "schedule:{}:{}",
            self.name,
            tick.to_rfc3339_opts(SecondsFormat::Secs, true)
        )
    }

    /// The job of tick `tick` (or of a manual run, with its own `key`).
    fn job(&self, key: String) -> NewJob {
        NewJob::raw(self.kind.clone(), self.args.clone())
            .queue(self.queue.clone())
            .priority(self.priority)
            .max_attempts(self.max_attempts)
            .unique_key(key)
            .tags([format!("schedule:{}", self.name)])
    }
}

/// croner's `ALL_BIT` (not exported): a value the field matches without a modifier.
const ALL_BIT: u8 = 1;

/// A fixed-time schedule by Vixie cron's rule that croner would take for an interval one (see
/// "Time zones and DST"): one expression per (minute, hour) pair, each a single time of day that
/// croner handles as fixed-time. Empty when croner already sees a fixed time (single values) or
/// the schedule is an interval one.
fn fixed_times(cron: &Cron) -> Vec<Cron> {
    let pattern = &cron.pattern;
    let plain =
        |field: &CronComponent| field.step == 1 && !field.from_wildcard && !field.has_modifiers();
    if cron.determine_job_type() == JobType::FixedTime
        || !(plain(&pattern.seconds)
            && pattern.seconds.values().len() == 1
            && plain(&pattern.minutes)
            && plain(&pattern.hours))
    {
        return Vec::new();
    }
    let only = |field: &mut CronComponent, value: u16| {
        for other in field.values().into_iter().filter(|v| *v != value) {
            field
                .unset_bit(other, ALL_BIT)
                .expect("a value the field holds");
        }
    };
    let mut times = Vec::new();
    for minute in pattern.minutes.values() {
        for hour in pattern.hours.values() {
            let mut time = cron.clone();
            only(&mut time.pattern.minutes, minute);
            only(&mut time.pattern.hours, hour);
            debug_assert_eq!(time.determine_job_type(), JobType::FixedTime);
            times.push(time);
        }
    }
    times
}

/// Every schedule of `config`, checked as [`from_config`] does, and each one's queue (configured,
/// or its kind's) one of the config's `[queues]`: a queue no node works would keep every tick's
/// job waiting forever, most likely a typo. What a node checks before it evaluates schedules.
pub fn load<S: Clone + Send + Sync + 'static>(
    config: &crate::config::Config,
    registry: &Registry<S>,
) -> Result<Vec<Schedule>, ScheduleError> {
    let schedules = from_config(&config.schedules, registry)?;
    for schedule in &schedules {
        schedule.check_queue(config)?;
    }
    Ok(schedules)
}

/// Every schedule of the config, checked, with its kind's policy from `registry`. Fails on the
/// first bad one, naming it.
pub fn from_config<S: Clone + Send + Sync + 'static>(
    configs: &BTreeMap<String, ScheduleConfig>,
    registry: &Registry<S>,
) -> Result<Vec<Schedule>, ScheduleError> {
    configs
        .iter()
        .map(|(name, config)| {
            let mut schedule = Schedule::from_config(name, config)?;
            schedule.adopt_policy(registry)?;
            Ok(schedule)
        })
        .collect()
}
