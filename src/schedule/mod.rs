//! Cron schedules from config, turned into queue jobs with unique keys so that any number of nodes
//! enqueue each tick exactly once. Filled by the schedules issue.
