//! The job engine: durable jobs in PostgreSQL, claimed with `SKIP LOCKED`, run under leases.
//!
//! # The state machine
//!
//! ```text
//!  enqueue ──▶ scheduled ─(run_at passes)─┐
//!          └─▶ available ◀────────────────┤◀── retry (operator)
//!                  │ claim (lease)        │
//!                  ▼                      │
//!               running ──▶ completed     │
//!                  ├──────▶ retryable ────┘  (attempt spent; run_at = now + backoff)
//!                  ├──────▶ scheduled        (snooze, or a kind this node does not know:
//!                  │                          attempt given back)
//!                  ├──────▶ discarded        (permanent error, attempts used up, or a kind
//!                  │                          no node knew through a day of give-backs)
//!                  ├──────▶ cancelled        (by the job or an operator)
//!                  └──────▶ available        (released at shutdown: attempt given back)
//! ```
//!
//! `scheduled` and `retryable` rows are claimable as soon as `run_at` passes; no promotion step
//! rewrites them. A claim increments `attempt` and sets `lease_owner` and `lease_expires_at`. The
//! owning node renews all its leases at once by heartbeating its row in `nodes` (one row per
//! node, not one write per running job); a job whose lease expired and whose node stopped
//! heartbeating (it died) is rescued by the leader to `retryable` with its attempt counted (after
//! a backoff of 2 s doubled per attempt, at most an hour, in case the job is what killed the node),
//! or `discarded` when none is left. A claim that committed but whose answer was lost with the
//! connection is given back by the owning node itself after a lease. Every write that finishes an attempt is fenced on (id, attempt, `running`, owner): a
//! node that lost a job (rescued, cancelled) cannot overwrite what happened since.
//!
//! Delivery is at least once (a node can die after the effect and before the finish is written);
//! job kinds make their effects idempotent (see ARCHITECTURE.md).
//!
//! # Parts
//! - [`job`]: the `JobArgs` / `Job` traits, policy, backoff, what `perform` returns.
//! - [`enqueue`](mod@enqueue): one or many jobs, on a pool or in a caller's transaction.
//! - [`worker`]: producers, completer, listener, heartbeat; the [`Engine`].
//! - [`execute`]: running one job and writing finishes.
//! - [`maintenance`]: leader election, rescuer, pruner.
//! - [`rate_limit`]: cluster-wide token buckets.
//! - [`admin`]: operators' operations on given jobs (retry, cancel, delete) and queues (pause).
//! - [`admin_query`]: operators' listings and counts over a big table.
//! - [`bulk`]: retry, cancel or delete every job a filter matches, with a recorded progress.
//! - [`testing`]: `drain`, `assert_enqueued`, a row factory.
//! - `sql`: every statement, named.

pub mod admin;
pub mod admin_query;
pub mod bulk;
pub mod enqueue;
pub mod execute;
pub mod job;
pub mod maintenance;
pub mod notify;
pub mod rate_limit;
pub mod registry;
mod sql;
pub mod testing;
pub mod worker;

pub use enqueue::{Db, EnqueueError, Enqueued, NewJob, enqueue, enqueue_many};
pub use job::{Backoff, Job, JobArgs, JobContext, JobError, JobResult, Policy};
pub use registry::{Noop, Registry};
pub use worker::{Engine, EngineConfig, EngineError};
