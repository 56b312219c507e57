//! `prune`: deletes finished jobs (completed, discarded, cancelled) older than an age, in small
//! batches, and records how many in its result. Scheduled hourly by `[schedules.prune]`, so an
//! operator sees each run (and its count) in `schedules list` and the jobs table; the leader's
//! maintenance pruner does the same work continuously. It also deletes `email_log` rows older than
//! `email.log_retention` (recipients are personal data) and staged bytes an upload left behind
//! (`drive_upload::prune_uploaded_chunks`).

use std::time::Duration;

use chrono::Utc;
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
        let age = chrono::Duration::from_std(age).map_err(JobError::discard)?;
        let before = Utc::now() - age;
        let pruned =
            maintenance::prune_once(&ctx.pool, before, settings.prune_batch as i64).await?;
        // The email log holds recipients (personal data): kept `email.log_retention`.
        let retention = chrono::Duration::from_std(ctx.state.config.email.log_retention)
            .map_err(JobError::discard)?;
        let emails_pruned = super::send_email::prune_email_log(
            &ctx.pool,
            Utc::now() - retention,
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
