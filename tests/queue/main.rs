//! The queue engine against the real PostgreSQL: state machine, enqueue, concurrency, leases,
//! rate limits, shutdown, operations.

#[path = "../support/mod.rs"]
mod support;

mod cli;
mod common;
mod engine;
mod enqueue;
mod operations;
mod states;
