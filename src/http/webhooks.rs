//! `POST /webhooks/stripe`: verify, store durably, answer; the work happens in the `stripe_event`
//! job (PROVIDERS.md §B.1).
//!
//! Order of checks: body over `stripe.webhook_body_limit` -> 413; `Stripe-Signature` not valid for
//! the exact bytes (any configured secret, 300 s tolerance) -> 400; not an event envelope -> 400;
//! an envelope we could not store (an `id` that is not a Stripe event id, NUL or an absurd length
//! in `type` or `api_version`) -> 400 naming the field ([`check_envelope`]), before it joins a
//! shared commit, where the database refusing it would fail every delivery of the batch.
//! Nothing is stored for any of these. A valid event's raw payload is inserted into
//! `stripe_events` and its job enqueued in ONE transaction, and 200 is answered only after the
//! commit; a duplicate `evt_` id inserts nothing and answers 200 (Stripe stops resending). The
//! object is not parsed here, so an event whose object we cannot read is still kept; a type we
//! do not apply is stored with status `ignored` and no job. If the database cannot be reached
//! we answer 503 and Stripe resends later.
//!
//! **Group commit.** A commit costs a WAL flush, so one transaction per delivery caps the intake
//! at the database's single-row commit rate. Verified deliveries are therefore handed to a few
//! committer tasks over a channel: each takes whatever is waiting (up to [`MAX_BATCH`]), stores
//! the events and enqueues their jobs in one transaction, and answers every delivery of the
//! batch. A lone delivery is committed at once (no timer); under load the batches grow by
//! themselves while the previous commit is in flight. A batch either commits whole or fails whole
//! (all its deliveries get 503), so the guarantee per delivery is unchanged.
//!
//! **Two ways to store a batch.** Normally none of a batch's events is stored yet, and two binary
//! `COPY`s (events, then jobs) store it at about half PostgreSQL's CPU per event of an `INSERT`
//! (see `db::copy`). A `COPY` cannot skip a row that exists, so a redelivered event fails it with
//! a unique violation; nothing of it is kept, and the batch goes again through
//! [`STRIPE_EVENT_COMMIT`], one statement that skips stored events. After such a conflict the
//! committer uses that statement alone for [`CONFLICT_COOLDOWN`] (Stripe resends in bursts after
//! an outage), then tries `COPY` again.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use sqlx::{PgConnection, PgPool};
use tokio::sync::{Mutex, mpsc, oneshot};

use super::HttpState;
use super::error::ApiError;
use crate::db::copy::CopyRows;
use crate::integrations::stripe::Verifier;
use crate::integrations::stripe::types::EventEnvelope;
use crate::jobs::stripe_event::{APPLIED_TYPES, StripeEvent};
use crate::queue::notify::Waker;
use crate::queue::{EnqueueError, NewJob};

/// Most deliveries one shared commit takes.
pub const MAX_BATCH: usize = 128;
/// Committer tasks: while one waits for its commit, the other fills and sends the next batch.
/// Two beat four on the intake benchmark (same run, alternating: 7,740-8,416 against
/// 5,320-8,220 events/s, half-load p99 11-12 against 15-207 ms): batches twice as large cost
/// PostgreSQL about 20% less CPU per event, and one commit in flight already hides the other's
/// wait. With the `COPY` path one and two measured alike (64 senders: 8,254-8,898 against
/// 8,498-8,626/s; 256: 10,994-12,304 against 11,844-12,511/s); one spends less CPU per event on
/// larger batches, two answer a lone delivery sooner while a batch is in flight.
const COMMITTERS: usize = 2;
/// How long a committer stores with [`STRIPE_EVENT_COMMIT`] alone after a batch's `COPY` met an
/// event already stored.
const CONFLICT_COOLDOWN: Duration = Duration::from_secs(1);

/// What the Stripe endpoint needs beyond the pool.
#[derive(Clone, Debug)]
pub struct WebhookSettings {
    /// None when `STRIPE_WEBHOOK_SECRET` is unset: every delivery gets 503 until it is set.
    pub stripe: Option<Arc<Verifier>>,
    pub body_limit: usize,
    /// The committers' inbox, started on the first delivery (they need the pool and a runtime).
    /// They stop when the last copy of these settings is dropped.
    committers: Arc<OnceLock<mpsc::Sender<Pending>>>,
}

impl WebhookSettings {
    pub fn new(stripe: Option<Arc<Verifier>>, body_limit: usize) -> Self {
        WebhookSettings {
            stripe,
            body_limit,
            committers: Arc::default(),
        }
    }

    /// The settings `config` and `secrets` describe.
    pub fn from_config(config: &crate::config::Config, secrets: &crate::config::Secrets) -> Self {
        let verifier = secrets
            .stripe_webhook_secret
            .as_ref()
            .and_then(|s| Verifier::new(s, config.stripe.webhook_tolerance))
            .map(Arc::new);
        WebhookSettings::new(verifier, config.stripe.webhook_body_limit)
    }

    /// Stores a verified event (`payload` is its exact body) and enqueues its job, in a shared
    /// commit with the deliveries waiting alongside it; returns whether it was new (false: the id
    /// was stored already). What the endpoint does after verifying and checking the envelope
    /// (an envelope the database refuses fails the whole shared commit); public so the intake
    /// benchmark can measure the store without HTTP.
    pub async fn store(
        &self,
        pool: &PgPool,
        envelope: EventEnvelope,
        payload: String,
    ) -> Result<bool, StoreError> {
        let applied = APPLIED_TYPES.contains(&envelope.event_type.as_str());
        let (done, outcome) = oneshot::channel();
        let pending = Pending {
            envelope,
            payload,
            applied,
            done,
        };
        if self.inbox(pool).send(pending).await.is_err() {
            return Err(StoreError::Unavailable);
        }
        outcome.await.unwrap_or(Err(StoreError::Unavailable))
    }

    fn inbox(&self, pool: &PgPool) -> &mpsc::Sender<Pending> {
        self.committers.get_or_init(|| {
            let (tx, rx) = mpsc::channel(MAX_BATCH * COMMITTERS * 2);
            let rx = Arc::new(Mutex::new(rx));
            let waker = Waker::default();
            for _ in 0..COMMITTERS {
                tokio::spawn(committer(pool.clone(), rx.clone(), waker.clone()));
            }
            tx
        })
    }
}

/// A verified delivery waiting for its commit; `done` gets whether it was new.
#[derive(Debug)]
struct Pending {
    envelope: EventEnvelope,
    payload: String,
    applied: bool,
    done: oneshot::Sender<Result<bool, StoreError>>,
}

impl Pending {
    /// The status the event is stored with: `ignored` for a type we do not apply.
    fn status(&self) -> &'static str {
        if self.applied { "received" } else { "ignored" }
    }
}

/// Why a batch did not commit (the same for each of its deliveries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// The database could not be reached: Stripe should resend (503).
    Unavailable,
    /// The database refused the batch (logged by the committer).
    Internal,
}

/// The `COPY` path's transaction: the jobs trigger's NOTIFY is off in it, as in `quiet` below.
const QUIET_BEGIN: &str = "begin; set local baw.notify = 'off'";
const EVENTS_COPY: &str = "copy stripe_events (id, type, created, livemode, api_version, payload, \
     status, processed_at) from stdin with (format binary)";
const JOBS_COPY: &str = "copy jobs (kind, queue, priority, max_attempts, args, unique_key) \
     from stdin with (format binary)";

/// One batch in one autocommitted statement (one round trip): inserts the delivered events
/// unless their id is already stored, enqueues a `stripe_event` job for each newly inserted event
/// we apply, and returns the ids inserted. `$1` holds distinct ids (the committer folds repeats);
/// `$12` and `$13` hold each event's job args and unique key, null for a type we do not apply.
///
/// The jobs are inserted here rather than through `queue::enqueue_many` to save its round trip
/// and the transaction's BEGIN and COMMIT; the job's kind, queue, priority and attempts still
/// come from its [`JobArgs`](crate::queue::JobArgs) policy (`$8..$11`). `quiet` switches the jobs
/// trigger's NOTIFY off for this statement's transaction (see `queue::notify`: it would serialise
/// the committers' flushes); the insert reads from it, so it is set before any job row exists,
/// and the committer wakes the workers after the commit instead.
const STRIPE_EVENT_COMMIT: &str = r#"
with quiet as (
    select set_config('baw.notify', 'off', true)
), new_events as (
    insert into stripe_events (id, type, created, livemode, api_version, payload, status,
                               processed_at)
    select id, type, created, livemode, api_version, payload, status,
           case when status = 'ignored' then now() end
    from unnest($1::text[], $2::text[], $3::int8[], $4::bool[], $5::text[], $6::text[],
                $7::text[])
        as t (id, type, created, livemode, api_version, payload, status)
    on conflict (id) do nothing
    returning id, status
), new_jobs as (
    insert into jobs (kind, queue, priority, max_attempts, args, unique_key)
    select $8, $9, $10, $11, j.args, j.unique_key
    from new_events e
    join unnest($1::text[], $12::jsonb[], $13::text[]) as j (id, args, unique_key) on j.id = e.id
    cross join quiet
    where e.status = 'received'
    -- A new event's key is free unless an unfinished job already holds it (that one runs it).
    on conflict (unique_key)
        where unique_key is not null
          and state in ('scheduled', 'available', 'running', 'retryable')
        do nothing
    returning id
)
select id from new_events
"#;

pub fn router(settings: &WebhookSettings) -> Router<HttpState> {
    Router::new()
        .route("/webhooks/stripe", post(stripe))
        .layer(DefaultBodyLimit::max(settings.body_limit))
}

async fn stripe(
    state: State<HttpState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, &'static str), ApiError> {
    let answer = stripe_delivery(state, headers, body).await;
    let result = match &answer {
        Ok((_, "ok\n")) => "accepted",
        Ok(_) => "duplicate",
        Err(ApiError::PayloadTooLarge) => "too_large",
        Err(ApiError::BadRequest(_)) => "rejected",
        Err(ApiError::Unavailable) => "unavailable",
        Err(_) => "error",
    };
    metrics::counter!("baw_webhooks_total", "provider" => "stripe", "result" => result)
        .increment(1);
    answer
}

async fn stripe_delivery(
    State(state): State<HttpState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, &'static str), ApiError> {
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
        _ => ApiError::BadRequest("unreadable body".into()),
    })?;
    let Some(verifier) = state.webhooks.stripe.as_deref() else {
        tracing::error!("a Stripe webhook arrived but STRIPE_WEBHOOK_SECRET is not set");
        return Err(ApiError::Unavailable);
    };
    let signature = headers
        .get("stripe-signature")
        .map(|v| v.to_str().unwrap_or("\u{0}"));
    verifier
        .verify(signature, &body, chrono::Utc::now().timestamp())
        .map_err(|error| ApiError::BadRequest(error.to_string()))?;
    let envelope: EventEnvelope = serde_json::from_slice(&body)
        .map_err(|_| ApiError::BadRequest("the body is not a Stripe event".into()))?;
    check_envelope(&envelope)?;
    // Stored as text: Stripe sends UTF-8 JSON, and serde_json has just checked it is.
    let payload = std::str::from_utf8(&body)
        .map_err(|_| ApiError::BadRequest("the body is not UTF-8".into()))?;
    match state
        .webhooks
        .store(&state.pool, envelope, payload.to_owned())
        .await
    {
        Ok(true) => Ok((StatusCode::OK, "ok\n")),
        Ok(false) => Ok((StatusCode::OK, "duplicate\n")),
        Err(StoreError::Unavailable) => Err(ApiError::Unavailable),
        Err(StoreError::Internal) => Err(ApiError::Internal(anyhow::anyhow!(
            "storing a Stripe event failed (logged by the committer)"
        ))),
    }
}

/// Longest part of an event id after `evt_` (Stripe's are about 24 characters; the simulator's 24).
const MAX_EVENT_ID_TAIL: usize = 255;
/// Longest `type` or `api_version` (Stripe's are under 50 characters).
const MAX_ENVELOPE_TEXT: usize = 255;

/// Refuses (400, naming the field) an envelope the database would refuse or that is no Stripe
/// event's: it must not reach a shared commit, which would then fail for every delivery in it.
/// `id` is `evt_` and 1 to 255 ASCII letters, digits or `_` (what Stripe, its fixtures and our
/// simulator send); the job's unique key and the event's primary key are built from it, and
/// PostgreSQL refuses index entries past 2704 bytes. Text cannot hold NUL.
fn check_envelope(envelope: &EventEnvelope) -> Result<(), ApiError> {
    let tail = envelope.id.strip_prefix("evt_").unwrap_or_default();
    let is_event_id = (1..=MAX_EVENT_ID_TAIL).contains(&tail.len())
        && tail.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !is_event_id {
        return Err(ApiError::BadRequest(format!(
            "`id` is not a Stripe event id (`evt_` and 1 to {MAX_EVENT_ID_TAIL} letters, digits or `_`)"
        )));
    }
    for (field, value) in [
        ("type", Some(envelope.event_type.as_str())),
        ("api_version", envelope.api_version.as_deref()),
    ] {
        let Some(value) = value else { continue };
        if value.contains('\0') {
            return Err(ApiError::BadRequest(format!(
                "`{field}` must not contain NUL (\\u0000) characters"
            )));
        }
        if value.chars().count() > MAX_ENVELOPE_TEXT {
            return Err(ApiError::BadRequest(format!(
                "`{field}` must be at most {MAX_ENVELOPE_TEXT} characters"
            )));
        }
    }
    Ok(())
}

/// Takes whatever deliveries are waiting, commits them together, answers each.
async fn committer(pool: PgPool, inbox: Arc<Mutex<mpsc::Receiver<Pending>>>, waker: Waker) {
    let mut last_conflict: Option<Instant> = None;
    loop {
        let mut batch = Vec::new();
        {
            let mut inbox = inbox.lock().await;
            match inbox.recv().await {
                Some(pending) => batch.push(pending),
                None => return,
            }
            while batch.len() < MAX_BATCH {
                match inbox.try_recv() {
                    Ok(pending) => batch.push(pending),
                    Err(_) => break,
                }
            }
        }
        let started = std::time::Instant::now();
        let result = commit(&pool, &batch, &waker, &mut last_conflict).await;
        tracing::debug!(
            events = batch.len(),
            ms = started.elapsed().as_secs_f64() * 1000.0,
            "stripe webhook batch committed"
        );
        match result {
            Ok(mut inserted) => {
                for pending in batch {
                    let new = inserted.remove(&pending.envelope.id);
                    let _ = pending.done.send(Ok(new));
                }
            }
            Err(failed) => {
                for pending in batch {
                    let _ = pending.done.send(Err(failed));
                }
            }
        }
    }
}

/// Stores a batch, with `COPY` unless a `COPY` met a stored event less than
/// [`CONFLICT_COOLDOWN`] ago; returns the ids newly inserted.
async fn commit(
    pool: &PgPool,
    batch: &[Pending],
    waker: &Waker,
    last_conflict: &mut Option<Instant>,
) -> Result<HashSet<String>, StoreError> {
    // A repeated id within the batch is stored once; every copy gets the same answer.
    let mut seen = HashSet::new();
    let events: Vec<&Pending> = batch
        .iter()
        .filter(|p| seen.insert(p.envelope.id.as_str()))
        .collect();
    let jobs = job_columns(&events).map_err(|error| {
        tracing::error!(%error, "building stripe_event jobs");
        StoreError::Internal
    })?;
    let copied = if last_conflict.is_some_and(|at| at.elapsed() < CONFLICT_COOLDOWN) {
        false
    } else {
        match copy_new(pool, &events, &jobs).await {
            Ok(()) => true,
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                tracing::debug!(constraint = ?db.constraint(), "a batch holds a stored event");
                *last_conflict = Some(Instant::now());
                false
            }
            Err(error) => return Err(failed(error)),
        }
    };
    let inserted: HashSet<String> = if copied {
        events.iter().map(|p| p.envelope.id.clone()).collect()
    } else {
        insert_new(pool, &events, &jobs)
            .await
            .map_err(failed)?
            .into_iter()
            .collect()
    };
    let path = if copied { "copy" } else { "statement" };
    metrics::counter!("baw_stripe_commits_total", "path" => path).increment(1);
    metrics::counter!("baw_stripe_committed_events_total", "path" => path)
        .increment(events.len() as u64);
    if let Some(job) = &jobs.template
        && events
            .iter()
            .any(|p| p.applied && inserted.contains(&p.envelope.id))
    {
        waker.poke(pool, &job.queue);
    }
    Ok(inserted)
}

/// The batch's events, then their jobs, each with one binary `COPY`, in one transaction. Fails
/// whole with a unique violation if an event is stored already (or, in theory, an unfinished job
/// holds a new event's unique key).
async fn copy_new(pool: &PgPool, events: &[&Pending], jobs: &JobColumns) -> sqlx::Result<()> {
    let mut tx = pool.begin_with(QUIET_BEGIN).await?;
    // An ignored event is processed as it is stored: by this node, now.
    let ignored_at = chrono::Utc::now();
    let mut rows = CopyRows::with_capacity(events.iter().map(|p| p.payload.len() + 160).sum());
    for p in events {
        rows.row(8);
        rows.text(Some(&p.envelope.id));
        rows.text(Some(&p.envelope.event_type));
        rows.int8(p.envelope.created);
        rows.bool(p.envelope.livemode);
        rows.text(p.envelope.api_version.as_deref());
        rows.text(Some(&p.payload));
        rows.text(Some(p.status()));
        rows.timestamptz((!p.applied).then_some(ignored_at));
    }
    copy_in(&mut tx, EVENTS_COPY, rows).await?;
    if let Some(job) = &jobs.template {
        let mut rows = CopyRows::with_capacity(events.len() * 128);
        for (args, key) in jobs.args.iter().zip(&jobs.keys) {
            let Some(args) = args else { continue };
            rows.row(6);
            rows.text(Some(&job.kind));
            rows.text(Some(&job.queue));
            rows.int2(job.priority);
            rows.int4(job.max_attempts);
            rows.jsonb(Some(args));
            rows.text(key.as_deref());
        }
        copy_in(&mut tx, JOBS_COPY, rows).await?;
    }
    tx.commit().await
}

async fn copy_in(conn: &mut PgConnection, statement: &str, rows: CopyRows) -> sqlx::Result<u64> {
    let mut copy = conn.copy_in_raw(statement).await?;
    copy.send(rows.finish()).await?;
    copy.finish().await
}

/// The batch with [`STRIPE_EVENT_COMMIT`], skipping stored events; returns the ids inserted.
async fn insert_new(
    pool: &PgPool,
    events: &[&Pending],
    jobs: &JobColumns,
) -> sqlx::Result<Vec<String>> {
    let template = jobs.template.as_ref();
    let column = |f: fn(&Pending) -> String| events.iter().map(|p| f(p)).collect::<Vec<_>>();
    sqlx::query_scalar(STRIPE_EVENT_COMMIT)
        .bind(column(|p| p.envelope.id.clone()))
        .bind(column(|p| p.envelope.event_type.clone()))
        .bind(
            events
                .iter()
                .map(|p| p.envelope.created)
                .collect::<Vec<_>>(),
        )
        .bind(
            events
                .iter()
                .map(|p| p.envelope.livemode)
                .collect::<Vec<_>>(),
        )
        .bind(
            events
                .iter()
                .map(|p| p.envelope.api_version.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            events
                .iter()
                .map(|p| p.payload.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(events.iter().map(|p| p.status()).collect::<Vec<_>>())
        .bind(template.map(|j| j.kind.as_str()))
        .bind(template.map(|j| j.queue.as_str()))
        .bind(template.map(|j| j.priority))
        .bind(template.map(|j| j.max_attempts))
        .bind(&jobs.args)
        .bind(&jobs.keys)
        .fetch_all(pool)
        .await
}

/// The `stripe_event` job every applied event gets (its policy, from the first event's job) and
/// each event's job args and unique key (None for a type we do not apply).
fn job_columns(events: &[&Pending]) -> Result<JobColumns, EnqueueError> {
    let jobs = events
        .iter()
        .map(|p| {
            p.applied
                .then(|| {
                    NewJob::of(&StripeEvent {
                        event_id: p.envelope.id.clone(),
                    })
                })
                .transpose()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let template = jobs.iter().flatten().next().cloned();
    let (args, keys) = jobs
        .into_iter()
        .map(|job| match job {
            Some(j) => (Some(j.args), j.unique_key),
            None => (None, None),
        })
        .unzip();
    Ok(JobColumns {
        template,
        args,
        keys,
    })
}

struct JobColumns {
    /// None when no event of the batch is applied.
    template: Option<NewJob>,
    args: Vec<Option<serde_json::Value>>,
    keys: Vec<Option<String>>,
}

/// A database error at the intake: anything but a statement the server refused means we could
/// not reach it (pool timeout, cut connection), and so does a server shutting down or starting up
/// ([`super::error::database_unavailable`]): 503, so Stripe resends.
fn failed(error: sqlx::Error) -> StoreError {
    match error {
        sqlx::Error::Database(ref db) if !super::error::database_unavailable(&error) => {
            tracing::error!(error = %db, "storing Stripe events failed");
            StoreError::Internal
        }
        other => {
            tracing::warn!(error = %other, "database unavailable for Stripe webhooks");
            StoreError::Unavailable
        }
    }
}
