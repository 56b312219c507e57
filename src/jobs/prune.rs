//! `prune`: deletes finished jobs (completed, discarded, cancelled) older than an age, in small
//! batches, and records how many in its result. Scheduled hourly by `[schedules.prune]`, so an
//! operator sees each run (and its count) in `schedules list` and the jobs table; the leader's
//! maintenance pruner does the same work continuously. It also deletes `email_log` rows older than
//! `email.log_retention` (recipients are personal data) and staged bytes an upload left behind
//! (`drive_upload::prune_uploaded_chunks`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::AppState;
use crate::queue::{Job, JobArgs, JobContext, JobError, JobResult, Policy, maintenance};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prune {
    /// Overrides `maintenance.prune_after` (e.g. "30d").
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub older_than: Option<Duration>,
}

impl JobArgs for Prune {
    const KIND: &'static str = "prune";

    fn policy() -> Policy {
        Policy {
            max_attempts: 3,
            ..Policy::default()
        }
    }
}

impl Job<AppState> for Prune {
    async fn perform(self, ctx: JobContext<AppState>) -> JobResult {
        let settings = &ctx.state.config.maintenance;
        let age = self.older_than.unwrap_or(settings.prune_after);
        let before = cut_off(age, "older_than")?;
        let pruned =
            maintenance::prune_once(&ctx.pool, before, settings.prune_batch as i64).await?;
        // The email log holds recipients (personal data): kept `email.log_retention`.
        let emails_before = cut_off(ctx.state.config.email.log_retention, "email.log_retention")?;
        let emails_pruned = super::send_email::prune_email_log(
            &ctx.pool,
            emails_before,
            settings.prune_batch as i64,
        )
        .await?;
        let chunks_pruned = super::drive_upload::prune_uploaded_chunks(&ctx.pool).await?;
        Ok(Some(serde_json::json!({
            "pruned": pruned,
            "before": before,
            "email_log_pruned": emails_pruned,
            "uploaded_chunks_pruned": chunks_pruned,
        })))
    }
}

/// Now less `age`; an age reaching beyond the calendar discards the job (it would panic).
fn cut_off(age: Duration, what: &str) -> Result<DateTime<Utc>, JobError> {
    chrono::Duration::from_std(age)
        .ok()
        .and_then(|age| Utc::now().checked_sub_signed(age))
        .ok_or_else(|| {
            let age = humantime::format_duration(age);
            JobError::discard(format!("{what} = {age} reaches back beyond the calendar"))
        })
}
