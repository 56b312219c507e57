//! The operator's tools over the queue's admin queries (`queue::admin`, `queue::admin_query`):
//! the web UI at `/dashboard` ([`web`]) and the CLI's table output ([`cli`]).

pub mod cli;
pub mod web;
