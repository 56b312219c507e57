//! The operator web UI and its JSON admin API, server-rendered over the queue's admin queries.
//! Filled by the dashboard issue; the queue's operations it will call live in `queue::admin`.

pub mod cli;
