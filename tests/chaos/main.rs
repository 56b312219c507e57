//! Chaos harness (the three-node run lands in the next commit) and regression tests for what it
//! finds.

#[path = "../support/mod.rs"]
mod support;

mod regressions;
