//! The worker side of a node: one producer per queue, the completer, the listener and the
//! heartbeat, all under one cancellation tree.
//!
//! Who talks to whom:
//! - A **producer** (one per queue) owns the queue's semaphore. It takes a permit *before* it
//!   claims, and claims at most as many jobs as it holds permits, so a node never holds a job it
//!   has no slot for. Each claimed job is spawned with its own permit, which it drops when
//!   `perform` returns.
//! - A finished job sends its [`Finish`] to the **completer**, which writes whatever has piled up
//!   in one statement; under load, finishes batch themselves while the previous write is in
//!   flight.
//! - The **listener** (LISTEN `baw_jobs`, `baw_control`) wakes a queue's producer when jobs are
//!   inserted and cancels a running job an operator cancelled. A producer with nothing to do
//!   sleeps until the earliest `run_at` of its queue, a notification, or the slow poll.
//! - The **heartbeat** renews this node's row in `nodes` (which extends the leases of all its
//!   jobs), stops the jobs the node no longer holds (cancelled, rescued) and gives back claims
//!   whose answer was lost with a connection.
//!
//! Shutdown (SIGTERM and Ctrl-C alike): producers stop claiming (a claim under way gives back
//! what it got, unstarted) and are waited for; then running jobs get the grace period; the rest
//! are interrupted and released (available again, attempt given back); the completer drains;
//! nothing of this node stays `running`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::execute::{self, ClaimedJob, Finish, Outcome};
use super::maintenance::{self, MaintenanceSettings};
use super::rate_limit;
use super::registry::Registry;
use super::sql;
use crate::config::{Config, RateLimitConfig};

/// The notification channels.
pub const CHANNEL_JOBS: &str = "baw_jobs";
pub const CHANNEL_CONTROL: &str = "baw_control";

/// Everything an engine needs to know, usually derived from [`Config`].
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// This node's lease-owner name; unique per process.
    pub node: String,
    /// Shown in the `nodes` table.
    pub role: String,
    /// Queue name -> this node's slots for it. Empty: the node runs no jobs.
    pub queues: BTreeMap<String, usize>,
    pub lease: Duration,
    pub heartbeat: Duration,
    pub poll_interval: Duration,
    pub claim_batch: usize,
    pub shutdown_grace: Duration,
    /// Leader-only services (rescuer, pruner); None: this node never runs them.
    pub maintenance: Option<MaintenanceSettings>,
    pub rate_limits: BTreeMap<String, RateLimitConfig>,
}

impl EngineConfig {
    pub fn from_config(config: &Config, role: &str) -> Self {
        let suffix: u16 = rand::random();
        EngineConfig {
            node: format!("{}-{suffix:04x}", config.node_name()),
            role: role.into(),
            queues: config
                .queues
                .iter()
                .map(|(n, q)| (n.clone(), q.concurrency as usize))
                .collect(),
            lease: config.worker.lease,
            heartbeat: config.worker.heartbeat,
            poll_interval: config.worker.poll_interval,
            claim_batch: config.worker.claim_batch as usize,
            shutdown_grace: config.worker.shutdown_grace,
            maintenance: Some(MaintenanceSettings::from_config(
                &config.maintenance,
                config.worker.lease,
            )),
            rate_limits: config.rate_limits.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(
        "kind `{kind}` names rate limit `{bucket}`, which is not configured ([rate_limits.{bucket}])"
    )]
    UnknownRateLimit { kind: String, bucket: String },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// A queue's wake-up: notified by the listener (new jobs) and by this node's own retries and
/// snoozes (which also note when they are due).
#[derive(Default)]
struct QueueWaker {
    notify: Notify,
    /// Earliest run_at this node set on the queue since the producer last looked.
    local_due: Mutex<Option<DateTime<Utc>>>,
}

impl QueueWaker {
    fn due_at(&self, at: DateTime<Utc>) {
        let mut due = self.local_due.lock().expect("waker lock");
        if due.is_none_or(|d| at < d) {
            *due = Some(at);
        }
        drop(due);
        self.notify.notify_one();
    }
}

/// A job running on this node.
struct Running {
    cancel: CancellationToken,
    claimed_at: Instant,
    attempt: i32,
}

struct Inner<S> {
    pool: PgPool,
    registry: Registry<S>,
    state: S,
    config: EngineConfig,
    /// Jobs running on this node: their cancel token, when they were claimed and the attempt (a
    /// job re-claimed after its lease was lost may meet its older run here). Written by the
    /// producers and job tasks; read by the listener (cancel) and the heartbeat (lost jobs).
    running: Mutex<HashMap<i64, Running>>,
    /// Jobs that finished here but whose finish the completer has not written yet. Written by the
    /// job tasks, emptied by the completer; the heartbeat must not take them for lost claims.
    unwritten: Arc<Mutex<HashSet<i64>>>,
    wakers: HashMap<String, Arc<QueueWaker>>,
    finish_tx: mpsc::UnboundedSender<Finish>,
    /// Producers stop claiming.
    stop_claiming: CancellationToken,
    /// Running jobs are interrupted (after the grace period) and released.
    hard_stop: CancellationToken,
    /// Listener, heartbeat and maintenance stop.
    stop_services: CancellationToken,
    /// Claim statements run by the producers (see [`Engine::claims`]).
    claims: AtomicU64,
}

/// A started engine. Call [`Engine::shutdown`] to stop it cleanly.
pub struct Engine<S> {
    inner: Arc<Inner<S>>,
    /// The producers: shutdown waits for them before it waits for the jobs, so no job starts
    /// after that.
    producers: TaskTracker,
    jobs: TaskTracker,
    services: TaskTracker,
    completer: tokio::task::JoinHandle<()>,
}

impl<S: Clone + Send + Sync + 'static> Engine<S> {
    /// Checks the registry against the config, declares the rate limits, registers the node and
    /// starts the producers and services.
    pub async fn start(
        pool: PgPool,
        registry: Registry<S>,
        state: S,
        config: EngineConfig,
    ) -> Result<Self, EngineError> {
        for (kind, bucket) in registry.rate_limits() {
            if !config.rate_limits.contains_key(bucket) {
                return Err(EngineError::UnknownRateLimit {
                    kind: kind.into(),
                    bucket: bucket.into(),
                });
            }
        }
        rate_limit::declare(&pool, &config.rate_limits).await?;
        sqlx::query(sql::NODE_UPSERT)
            .bind(&config.node)
            .bind(&config.role)
            .bind(env!("CARGO_PKG_VERSION"))
            .execute(&pool)
            .await?;

        let (finish_tx, finish_rx) = mpsc::unbounded_channel();
        let unwritten = Arc::new(Mutex::new(HashSet::new()));
        let wakers = config
            .queues
            .keys()
            .map(|q| (q.clone(), Arc::new(QueueWaker::default())))
            .collect();
        let inner = Arc::new(Inner {
            pool,
            registry,
            state,
            config,
            running: Mutex::new(HashMap::new()),
            unwritten: unwritten.clone(),
            wakers,
            finish_tx,
            stop_claiming: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            stop_services: CancellationToken::new(),
            claims: AtomicU64::new(0),
        });
        let jobs = TaskTracker::new();
        let producers = TaskTracker::new();
        let services = TaskTracker::new();
        let completer = tokio::spawn(complete(
            inner.pool.clone(),
            inner.config.node.clone(),
            finish_rx,
            unwritten,
        ));
        services.spawn(listen(inner.clone()));
        services.spawn(heartbeat(inner.clone()));
        if let Some(settings) = inner.config.maintenance.clone() {
            services.spawn(maintenance::run(
                inner.pool.clone(),
                inner.config.node.clone(),
                settings,
                inner.stop_services.clone(),
            ));
        }
        for (queue, &concurrency) in &inner.config.queues {
            producers.spawn(produce(
                inner.clone(),
                queue.clone(),
                concurrency,
                jobs.clone(),
            ));
        }
        tracing::info!(node = %inner.config.node, queues = ?inner.config.queues, "engine started");
        Ok(Engine {
            inner,
            producers,
            jobs,
            services,
            completer,
        })
    }

    /// This node's lease-owner name.
    pub fn node(&self) -> &str {
        &self.inner.config.node
    }

    /// Jobs running on this node now.
    pub fn running(&self) -> usize {
        self.inner.running.lock().expect("running lock").len()
    }

    /// Claim statements this engine's producers have run: a producer with nothing to do runs one
    /// per wake-up (a notification, a due `run_at`, the poll), so this shows an idle node idling.
    pub fn claims(&self) -> u64 {
        self.inner.claims.load(Ordering::Relaxed)
    }

    /// Stops claiming, gives running jobs the grace period, releases the rest, writes every
    /// finish and leaves nothing of this node `running`.
    pub async fn shutdown(self) {
        let Engine {
            inner,
            producers,
            jobs,
            services,
            completer,
        } = self;
        inner.stop_claiming.cancel();
        // A producer in the middle of a claim gives back what it got (see `produce`); after
        // this, no job starts.
        producers.close();
        producers.wait().await;
        jobs.close();
        if tokio::time::timeout(inner.config.shutdown_grace, jobs.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                running = inner.running.lock().expect("running lock").len(),
                "shutdown grace elapsed; releasing the jobs still running"
            );
            inner.hard_stop.cancel();
            jobs.wait().await;
        }
        tracing::debug!("jobs done; stopping services");
        inner.stop_services.cancel();
        services.close();
        services.wait().await;
        tracing::debug!("services stopped; draining the completer");
        let pool = inner.pool.clone();
        let node = inner.config.node.clone();
        // The completer ends when the last sender (held by `inner`) is gone.
        drop(inner);
        let _ = completer.await;
        tracing::debug!("completer drained; releasing");
        if let Err(error) = sqlx::query(sql::JOB_RELEASE_NODE)
            .bind(&node)
            .execute(&pool)
            .await
        {
            tracing::error!(%error, "could not release this node's jobs; the rescuer will");
        }
        let _ = sqlx::query(sql::NODE_DELETE)
            .bind(&node)
            .execute(&pool)
            .await;
        tracing::info!(%node, "engine stopped");
    }
}

/// One queue's producer: claim as many jobs as there are free slots, run each in its own task.
async fn produce<S: Clone + Send + Sync + 'static>(
    inner: Arc<Inner<S>>,
    queue: String,
    concurrency: usize,
    jobs: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(concurrency));
    let waker = inner.wakers[&queue].clone();
    let config = &inner.config;
    let mut outage = Outage::new("claiming jobs");
    loop {
        // Biased: once the node stops claiming, a free slot must not win the race.
        let mut permit = tokio::select! {
            biased;
            _ = inner.stop_claiming.cancelled() => break,
            permit = slots.clone().acquire_owned() => permit.expect("semaphore never closed"),
        };
        // Take whatever else is free, up to the batch size, without waiting for more.
        let extra = slots
            .available_permits()
            .min(config.claim_batch.saturating_sub(1));
        if extra > 0
            && let Ok(more) = slots.clone().try_acquire_many_owned(extra as u32)
        {
            permit.merge(more);
        }
        let wanted = permit.num_permits();
        inner.claims.fetch_add(1, Ordering::Relaxed);
        let claimed: Result<Vec<ClaimedJob>, sqlx::Error> = sqlx::query_as(sql::JOB_CLAIM)
            .bind(&queue)
            .bind(wanted as i64)
            .bind(&config.node)
            .bind(config.lease.as_secs_f64())
            .bind(None::<DateTime<Utc>>)
            .fetch_all(&inner.pool)
            .await;
        let claimed = match claimed {
            Ok(claimed) => {
                outage.recovered();
                claimed
            }
            Err(error) => {
                drop(permit);
                let wait = outage.failed(&error);
                tokio::select! {
                    biased;
                    _ = inner.stop_claiming.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
                continue;
            }
        };
        if inner.stop_claiming.is_cancelled() {
            // The node began stopping while the claim was on its way: these jobs are not started
            // here but given back at once (or, failing that, by the shutdown's final release).
            release_unstarted(&inner, &claimed).await;
            break;
        }
        let got = claimed.len();
        for job in claimed {
            let job_permit = permit.split(1).expect("one permit per claimed job");
            spawn_job(&inner, &jobs, &waker, job, job_permit);
        }
        drop(permit);
        if got < wanted {
            wait_for_work(&inner, &queue, &waker).await;
        }
    }
}

/// Gives back jobs claimed but not started: available at once, attempt not counted.
async fn release_unstarted<S>(inner: &Inner<S>, claimed: &[ClaimedJob]) {
    if claimed.is_empty() {
        return;
    }
    let (ids, attempts): (Vec<i64>, Vec<i32>) = claimed.iter().map(|j| (j.id, j.attempt)).unzip();
    match sqlx::query(sql::JOB_RELEASE_MANY)
        .bind(&inner.config.node)
        .bind(&ids)
        .bind(&attempts)
        .execute(&inner.pool)
        .await
    {
        Ok(_) => tracing::info!(jobs = ?ids, "gave back jobs claimed as the node began stopping"),
        Err(error) => {
            tracing::warn!(%error, jobs = ?ids, "could not give back jobs claimed as the node began stopping; the shutdown's release will")
        }
    }
}

fn spawn_job<S: Clone + Send + Sync + 'static>(
    inner: &Arc<Inner<S>>,
    jobs: &TaskTracker,
    waker: &Arc<QueueWaker>,
    job: ClaimedJob,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let cancel = inner.hard_stop.child_token();
    let run = Running {
        cancel: cancel.clone(),
        claimed_at: Instant::now(),
        attempt: job.attempt,
    };
    if let Some(older) = inner
        .running
        .lock()
        .expect("running lock")
        .insert(job.id, run)
    {
        // This node lost the job (its lease lapsed, it was rescued) and has now claimed it
        // again: the older run must not go on beside the new one.
        tracing::warn!(
            job = job.id,
            attempt = older.attempt,
            "stopping an older run of a re-claimed job"
        );
        older.cancel.cancel();
    }
    let span = tracing::info_span!("job", id = job.id, kind = %job.kind, attempt = job.attempt);
    let entry = RunningEntry {
        inner: inner.clone(),
        id: job.id,
        attempt: job.attempt,
    };
    let inner = inner.clone();
    let waker = waker.clone();
    jobs.spawn(
        async move {
            let id = job.id;
            let finish = execute::run(
                &inner.registry,
                job,
                inner.state.clone(),
                inner.pool.clone(),
                cancel,
                &inner.hard_stop,
            )
            .await;
            // Known as unwritten before it stops being known as running (see `heartbeat`).
            inner.unwritten.lock().expect("unwritten lock").insert(id);
            drop(entry);
            match &finish.outcome {
                Outcome::Completed(_) | Outcome::Released => {}
                Outcome::Retry { error, run_at } => {
                    tracing::warn!(%error, %run_at, "job failed; will retry");
                    waker.due_at(*run_at);
                }
                Outcome::Snooze { run_at } => {
                    tracing::debug!(%run_at, "job snoozed");
                    waker.due_at(*run_at);
                }
                Outcome::GivenBack { error, run_at } => {
                    tracing::warn!(%error, %run_at, "job given back");
                    waker.due_at(*run_at);
                }
                Outcome::Discarded(error) => tracing::error!(%error, "job discarded"),
                Outcome::Cancelled(reason) => tracing::info!(%reason, "job cancelled"),
            }
            // The completer outlives every job task (shutdown waits for them first).
            let _ = inner.finish_tx.send(finish);
            drop(permit);
        }
        .instrument(span),
    );
}

/// The shortest sleep before looking again for work that is already due but was not claimed
/// (another node took it first, or the clocks disagree): a floor so that such work cannot turn
/// the producer into a busy loop of claims.
const MIN_WAIT: Duration = Duration::from_millis(50);

/// A job's entry in `running`, removed when its task ends however it ends: a panic outside
/// `perform`'s own catch would otherwise leave the job running on this node forever, where the
/// heartbeat's release of lost claims (which skips jobs the node knows) could not reach it.
struct RunningEntry<S> {
    inner: Arc<Inner<S>>,
    id: i64,
    attempt: i32,
}

impl<S> Drop for RunningEntry<S> {
    fn drop(&mut self) {
        let mut running = self
            .inner
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Only this run's entry: a newer run of the same job may have replaced it.
        if running
            .get(&self.id)
            .is_some_and(|r| r.attempt == self.attempt)
        {
            running.remove(&self.id);
        }
    }
}

/// Sleeps until a notification, this node's own next retry, the queue's earliest `run_at` or the
/// slow poll, whichever comes first, but at least [`MIN_WAIT`].
async fn wait_for_work<S>(inner: &Inner<S>, queue: &str, waker: &QueueWaker) {
    let mut sleep = inner.config.poll_interval;
    // Seconds until the earliest run_at, on the database's clock; None: nothing due (or paused).
    if let Ok(Some(secs)) = sqlx::query_scalar::<_, Option<f64>>(sql::JOB_NEXT_DUE)
        .bind(queue)
        .fetch_one(&inner.pool)
        .await
    {
        sleep = sleep.min(Duration::try_from_secs_f64(secs.max(0.0)).unwrap_or(Duration::MAX));
    }
    {
        // Kept until it has passed: a wake-up that finds nothing (the finish setting run_at may
        // not be written yet) must not lose it. Once passed, one more look shortly after.
        let now = Utc::now();
        let mut local = waker.local_due.lock().expect("waker lock");
        match *local {
            Some(due) if due > now => {
                sleep = sleep.min((due - now).to_std().unwrap_or_default());
            }
            Some(_) => {
                *local = None;
                sleep = sleep.min(Duration::from_millis(100));
            }
            None => {}
        }
    }
    tokio::select! {
        biased;
        _ = inner.stop_claiming.cancelled() => {}
        _ = waker.notify.notified() => {}
        _ = tokio::time::sleep(sleep.max(MIN_WAIT)) => {}
    }
}

/// Writes finishes in batches: whatever arrived while the previous writes were in flight goes in
/// the next statement. Up to [`FLUSHES_IN_FLIGHT`] statements run at once (PostgreSQL spreads them
/// over its cores). A failed write is retried, its finishes kept, until the database answers; the
/// channel closing ends it after the last write.
async fn complete(
    pool: PgPool,
    node: String,
    mut rx: mpsc::UnboundedReceiver<Finish>,
    unwritten: Arc<Mutex<HashSet<i64>>>,
) {
    const MAX_BATCH: usize = 2000;
    let outage = Arc::new(Mutex::new(Outage::new("recording job outcomes")));
    let node: Arc<str> = node.into();
    let mut in_flight = tokio::task::JoinSet::new();
    loop {
        while in_flight.len() >= FLUSHES_IN_FLIGHT {
            in_flight.join_next().await;
        }
        let Some(first) = rx.recv().await else { break };
        let mut batch = Vec::with_capacity(64);
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(finish) => batch.push(finish),
                Err(_) => break,
            }
        }
        let (pool, node, outage, unwritten) = (
            pool.clone(),
            node.clone(),
            outage.clone(),
            unwritten.clone(),
        );
        in_flight.spawn(async move {
            loop {
                let t0 = Instant::now();
                let result = execute::finish_many(&pool, &node, &batch).await;
                tracing::trace!(n = batch.len(), took = ?t0.elapsed(), "finish batch");
                let wait = match result {
                    Ok(written) => {
                        outage.lock().expect("outage lock").recovered();
                        let mut pending = unwritten.lock().expect("unwritten lock");
                        for finish in &batch {
                            pending.remove(&finish.id);
                        }
                        drop(pending);
                        if (written as usize) < batch.len() {
                            tracing::debug!(
                                lost = batch.len() - written as usize,
                                "some finished jobs were no longer held by this node"
                            );
                        }
                        return;
                    }
                    Err(error) => outage.lock().expect("outage lock").failed(&error),
                };
                tokio::time::sleep(wait).await;
            }
        });
    }
    while in_flight.join_next().await.is_some() {}
}

/// Finish statements the completer keeps in flight at once.
const FLUSHES_IN_FLIGHT: usize = 2;

/// LISTEN for inserted jobs and control messages; reconnects by itself.
async fn listen<S>(inner: Arc<Inner<S>>) {
    let mut outage = Outage::new("listening for notifications");
    loop {
        let connected = async {
            let mut listener = PgListener::connect_with(&inner.pool).await?;
            listener.listen_all([CHANNEL_JOBS, CHANNEL_CONTROL]).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = tokio::select! {
            result = connected => match result {
                Ok(listener) => listener,
                Err(error) => {
                    let wait = outage.failed(&error);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => continue,
                        _ = inner.stop_services.cancelled() => return,
                    }
                }
            },
            _ = inner.stop_services.cancelled() => return,
        };
        outage.recovered();
        // Anything inserted while we were not listening would otherwise wait for the poll.
        wake_all(&inner);
        loop {
            let next = tokio::select! {
                next = listener.try_recv() => next,
                _ = inner.stop_services.cancelled() => return,
            };
            match next {
                Ok(Some(notification)) => {
                    dispatch(&inner, notification.channel(), notification.payload())
                }
                // The connection dropped and will be re-established by the next call.
                Ok(None) => wake_all(&inner),
                Err(error) => {
                    let wait = outage.failed(&error);
                    tokio::time::sleep(wait).await;
                    break;
                }
            }
        }
    }
}

fn wake_all<S>(inner: &Inner<S>) {
    for waker in inner.wakers.values() {
        waker.notify.notify_one();
    }
}

fn dispatch<S>(inner: &Inner<S>, channel: &str, payload: &str) {
    match channel {
        CHANNEL_JOBS => {
            if let Some(waker) = inner.wakers.get(payload) {
                waker.notify.notify_one();
            }
        }
        CHANNEL_CONTROL => match payload.split_once(':') {
            Some(("cancel", id)) => {
                if let Ok(id) = id.parse::<i64>()
                    && let Some(run) = inner.running.lock().expect("running lock").get(&id)
                {
                    run.cancel.cancel();
                }
            }
            Some(("resume", queue)) | Some(("wake", queue)) => {
                if let Some(waker) = inner.wakers.get(queue) {
                    waker.notify.notify_one();
                }
            }
            _ => {}
        },
        _ => {}
    }
}

/// Renews this node's leases and its `nodes` row; stops local jobs the node no longer holds.
async fn heartbeat<S>(inner: Arc<Inner<S>>) {
    let config = &inner.config;
    let mut ticker = tokio::time::interval(config.heartbeat);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut outage = Outage::new("heartbeating");
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = inner.stop_services.cancelled() => return,
        }
        let started = Instant::now();
        // Jobs this node knows: running, or finished with the finish not written yet.
        let (local, known): (Vec<(i64, i32)>, Vec<i64>) = {
            let running = inner.running.lock().expect("running lock");
            // Only jobs claimed before this point can be judged by JOB_HELD below.
            let local = running
                .iter()
                .filter(|(_, run)| run.claimed_at < started)
                .map(|(id, run)| (*id, run.attempt))
                .collect();
            let mut known: Vec<i64> = running.keys().copied().collect();
            drop(running);
            known.extend(
                inner
                    .unwritten
                    .lock()
                    .expect("unwritten lock")
                    .iter()
                    .copied(),
            );
            (local, known)
        };
        let renewed = async {
            // One row renews the leases of all this node's jobs (see sql::JOB_RESCUE).
            sqlx::query(sql::NODE_UPSERT)
                .bind(&config.node)
                .bind(&config.role)
                .bind(env!("CARGO_PKG_VERSION"))
                .execute(&inner.pool)
                .await?;
            let orphans: Vec<i64> = sqlx::query_scalar(sql::JOB_RELEASE_ORPHANS)
                .bind(&config.node)
                .bind(config.lease.as_secs_f64())
                .bind(&known)
                .fetch_all(&inner.pool)
                .await?;
            if !orphans.is_empty() {
                tracing::warn!(jobs = ?orphans, "released jobs whose claim answer was lost");
                wake_all(&inner);
            }
            if local.is_empty() {
                return Ok(Vec::new());
            }
            let (ids, attempts): (Vec<i64>, Vec<i32>) = local.iter().copied().unzip();
            sqlx::query_scalar::<_, i64>(sql::JOB_HELD)
                .bind(&config.node)
                .bind(&ids)
                .bind(&attempts)
                .fetch_all(&inner.pool)
                .await
        }
        .await;
        match renewed {
            Ok(held) => {
                outage.recovered();
                let held: HashSet<i64> = held.into_iter().collect();
                let running = inner.running.lock().expect("running lock");
                for (id, attempt) in local.iter().filter(|(id, _)| !held.contains(id)) {
                    // Still running here (not finished meanwhile) but no longer ours.
                    if let Some(run) = running.get(id).filter(|run| run.attempt == *attempt) {
                        tracing::warn!(job = id, "this node no longer holds the job; stopping it");
                        run.cancel.cancel();
                    }
                }
            }
            Err(error) => {
                outage.failed(&error);
            }
        }
    }
}

/// Logs a failing dependency once when it starts failing and once when it recovers, not on
/// every retry, and hands out a capped exponential backoff meanwhile.
pub(crate) struct Outage {
    what: &'static str,
    failures: u32,
}

impl Outage {
    pub(crate) fn new(what: &'static str) -> Self {
        Outage { what, failures: 0 }
    }

    /// Records a failure; returns how long to wait before trying again.
    pub(crate) fn failed(&mut self, error: &dyn std::fmt::Display) -> Duration {
        if self.failures == 0 {
            tracing::error!(%error, "{} failed; retrying until the database answers", self.what);
        }
        self.failures = self.failures.saturating_add(1);
        let exp = self.failures.min(6);
        Duration::from_millis(50 * 2u64.pow(exp)).min(Duration::from_secs(3))
    }

    pub(crate) fn recovered(&mut self) {
        if self.failures > 0 {
            tracing::info!(failures = self.failures, "{} works again", self.what);
            self.failures = 0;
        }
    }
}
