//! The programmatic surfaces: `/v1/jobs`, `/v1/emails`, `/v1/admin/*`, `/v1/openapi.json` and
//! `/metrics`, through the real router against the real PostgreSQL and the Resend simulator.

#[path = "../support/mod.rs"]
mod support;

mod admin;
mod auth;
mod cli;
mod emails;
mod helpers;
mod jobs;
mod metrics;
mod openapi;
