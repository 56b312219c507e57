//! Test job kinds, their shared state, and an engine config with short intervals.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baseaim_worker::config::RateLimitConfig;
use baseaim_worker::queue::admin_query::JobQuery;
use baseaim_worker::queue::maintenance::MaintenanceSettings;
use baseaim_worker::queue::{
    Backoff, Engine, EngineConfig, Job, JobArgs, JobContext, JobError, JobResult, Policy, Registry,
};
use serde::{Deserialize, Serialize};

/// What the test kinds did, as a user of the queue would observe it: effects per job id.
#[derive(Clone, Default)]
pub struct Effects {
    pub runs: Arc<Mutex<HashMap<i64, u32>>>,
    pub started: Arc<Mutex<Vec<Instant>>>,
    /// Job ids in the order their effects happened.
    pub order: Arc<Mutex<Vec<i64>>>,
}

impl Effects {
    pub fn record(&self, id: i64) {
        *self.runs.lock().unwrap().entry(id).or_default() += 1;
        self.started.lock().unwrap().push(Instant::now());
        self.order.lock().unwrap().push(id);
    }

    pub fn runs_of(&self, id: i64) -> u32 {
        self.runs.lock().unwrap().get(&id).copied().unwrap_or(0)
    }
}

/// Records an effect and completes.
#[derive(Debug, Serialize, Deserialize)]
pub struct Count {
    pub n: u32,
}
impl JobArgs for Count {
    const KIND: &'static str = "test_count";
}
impl Job<Effects> for Count {
    async fn perform(self, ctx: JobContext<Effects>) -> JobResult {
        ctx.state.record(ctx.id);
        Ok(Some(serde_json::json!({ "n": self.n })))
    }
}

/// Fails every time, with a fast backoff.
#[derive(Debug, Serialize, Deserialize)]
pub struct Fail {
    pub message: String,
}
impl JobArgs for Fail {
    const KIND: &'static str = "test_fail";
    fn policy() -> Policy {
        Policy {
            max_attempts: 3,
            backoff: Backoff {
                base: Duration::from_secs(30),
                max: Duration::from_secs(60),
                jitter: 0.0,
            },
            ..Policy::default()
        }
    }
}
impl Job<Effects> for Fail {
    async fn perform(self, ctx: JobContext<Effects>) -> JobResult {
        ctx.state.record(ctx.id);
        Err(JobError::retry(self.message))
    }
}

/// Snoozes for `secs` the first time, then completes.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnoozeOnce {
    pub secs: u64,
}
impl JobArgs for SnoozeOnce {
    const KIND: &'static str = "test_snooze_once";
}
impl Job<Effects> for SnoozeOnce {
    async fn perform(self, ctx: JobContext<Effects>) -> JobResult {
        let first = ctx.state.runs_of(ctx.id) == 0;
        ctx.state.record(ctx.id);
        if first {
            Err(JobError::Snooze(Duration::from_secs(self.secs)))
        } else {
            Ok(None)
        }
    }
}

/// Sleeps, then records its effect (so an interrupted run has no effect).
#[derive(Debug, Serialize, Deserialize)]
pub struct Sleep {
    pub ms: u64,
}
impl JobArgs for Sleep {
    const KIND: &'static str = "test_sleep";
    fn policy() -> Policy {
        Policy {
            timeout: Some(Duration::from_secs(120)),
            ..Policy::default()
        }
    }
}
impl Job<Effects> for Sleep {
    async fn perform(self, ctx: JobContext<Effects>) -> JobResult {
        tokio::time::sleep(Duration::from_millis(self.ms)).await;
        ctx.state.record(ctx.id);
        Ok(None)
    }
}

/// Panics.
#[derive(Debug, Serialize, Deserialize)]
pub struct Panic {}
impl JobArgs for Panic {
    const KIND: &'static str = "test_panic";
}
impl Job<Effects> for Panic {
    async fn perform(self, _ctx: JobContext<Effects>) -> JobResult {
        panic!("the job blew up")
    }
}

/// Outlives its timeout.
#[derive(Debug, Serialize, Deserialize)]
pub struct Slow {}
impl JobArgs for Slow {
    const KIND: &'static str = "test_slow";
    fn policy() -> Policy {
        Policy {
            timeout: Some(Duration::from_millis(100)),
            ..Policy::default()
        }
    }
}
impl Job<Effects> for Slow {
    async fn perform(self, _ctx: JobContext<Effects>) -> JobResult {
        tokio::time::sleep(Duration::from_secs(10)).await;
        Ok(None)
    }
}

/// Discards itself (a permanent error).
#[derive(Debug, Serialize, Deserialize)]
pub struct Reject {}
impl JobArgs for Reject {
    const KIND: &'static str = "test_reject";
}
impl Job<Effects> for Reject {
    async fn perform(self, _ctx: JobContext<Effects>) -> JobResult {
        Err(JobError::discard("the recipient does not exist"))
    }
}

/// Takes a token from the `tight` bucket before running.
#[derive(Debug, Serialize, Deserialize)]
pub struct Limited {}
impl JobArgs for Limited {
    const KIND: &'static str = "test_limited";
    fn policy() -> Policy {
        Policy {
            rate_limit: Some("tight"),
            ..Policy::default()
        }
    }
}
impl Job<Effects> for Limited {
    async fn perform(self, ctx: JobContext<Effects>) -> JobResult {
        ctx.state.record(ctx.id);
        Ok(None)
    }
}

pub fn registry() -> Registry<Effects> {
    let mut registry = Registry::new();
    registry
        .register::<Count>()
        .register::<Fail>()
        .register::<SnoozeOnce>()
        .register::<Sleep>()
        .register::<Panic>()
        .register::<Slow>()
        .register::<Reject>()
        .register::<Limited>();
    registry
}

/// An engine config with short intervals, one `default` queue of `concurrency` slots.
pub fn engine_config(concurrency: usize) -> EngineConfig {
    EngineConfig {
        node: format!("test-{:08x}", rand::random::<u32>()),
        role: "all".into(),
        queues: BTreeMap::from([("default".to_string(), concurrency)]),
        lease: Duration::from_secs(30),
        heartbeat: Duration::from_millis(500),
        poll_interval: Duration::from_millis(500),
        claim_batch: 100,
        shutdown_grace: Duration::from_secs(5),
        maintenance: Some(MaintenanceSettings {
            lease: Duration::from_secs(30),
            leader_ttl: Duration::from_secs(3),
            rescue_interval: Duration::from_millis(200),
            prune_after: Duration::from_secs(7 * 86400),
            prune_interval: Duration::from_secs(60),
            prune_batch: 1000,
        }),
        rate_limits: BTreeMap::from([(
            "tight".to_string(),
            RateLimitConfig {
                rate: 10.0,
                per: Duration::from_secs(1),
                burst: 1.0,
            },
        )]),
    }
}

/// The state of job `id`.
pub async fn state_of(pool: &sqlx::PgPool, id: i64) -> String {
    sqlx::query_scalar("select state from jobs where id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Inserts `n` completed `noop` jobs tagged `tag`, in a queue no test engine works (so that a
/// retry leaves them available), and returns the filter that matches them. A retry of one twice
/// would count twice: what the bulk action tests count on.
pub async fn completed_jobs_tagged(pool: &sqlx::PgPool, tag: &str, n: i64) -> JobQuery {
    sqlx::query(
        "insert into jobs (kind, queue, tags, state, attempt, finished_at)
         select 'noop', 'elsewhere', array[$1], 'completed', 1, now() from generate_series(1, $2)",
    )
    .bind(tag)
    .bind(n)
    .execute(pool)
    .await
    .unwrap();
    JobQuery {
        tag: Some(tag.into()),
        ..JobQuery::default()
    }
}

/// How many jobs are in `state`.
pub async fn jobs_in_state(pool: &sqlx::PgPool, state: &str) -> i64 {
    sqlx::query_scalar("select count(*) from jobs where state = $1")
        .bind(state)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Makes job `id` due now, as if its wait had passed.
pub async fn make_due(pool: &sqlx::PgPool, id: i64) {
    sqlx::query("update jobs set run_at = now() where id = $1")
        .bind(id)
        .execute(pool)
        .await
        .unwrap();
}

/// An engine on `pool` running [`registry`]'s kinds, recording into `effects`.
pub async fn start_engine(
    pool: &sqlx::PgPool,
    effects: &Effects,
    config: EngineConfig,
) -> Engine<Effects> {
    Engine::start(pool.clone(), registry(), effects.clone(), config)
        .await
        .unwrap()
}
