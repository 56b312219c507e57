//! The foundation: config layering, migrations, readiness through a database outage, clean
//! SIGTERM, secrets kept out of output, TLS clients on one crypto provider.

#[path = "../support/mod.rs"]
mod support;

mod config;
mod serve;
