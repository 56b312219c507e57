//! What a `[schedules.<name>]` section of the config says. Parsed into a [`Schedule`] (cron and
//! zone checked) by [`Schedule::from_config`]; the config module calls that at load so a bad
//! schedule stops start-up naming its key.
//!
//! [`Schedule`]: super::Schedule
//! [`Schedule::from_config`]: super::Schedule::from_config

use serde::{Deserialize, Serialize};

/// One schedule as written in config (`[schedules.<name>]`, or `BAW__SCHEDULES__<NAME>__<KEY>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Five fields (`minute hour day-of-month month day-of-week`), or six with seconds first.
    pub cron: String,
    /// IANA zone the cron is read in (`Europe/Berlin`); ticks are keyed in UTC.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// The job kind each tick enqueues; must be a kind this binary runs while enabled.
    pub kind: String,
    /// The job's args (a TOML table, stored as a JSON object).
    #[serde(default)]
    pub args: serde_json::Map<String, serde_json::Value>,
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// What to do with a tick every node missed (all were down): enqueue the latest one, or none.
    #[serde(default)]
    pub catch_up: CatchUp,
    /// The queue of the tick's job; unset: the kind's own queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
}

/// The catch-up policy for ticks that passed while no node evaluated the schedule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CatchUp {
    /// Enqueue the latest missed tick once (never every missed tick).
    #[default]
    Latest,
    /// Enqueue nothing for missed ticks; wait for the next one.
    Skip,
}

impl CatchUp {
    pub fn as_str(self) -> &'static str {
        match self {
            CatchUp::Latest => "latest",
            CatchUp::Skip => "skip",
        }
    }
}

fn default_timezone() -> String {
    "UTC".into()
}

fn default_enabled() -> bool {
    true
}
