//! `facebook_sync`: the 30-minute schedule's tick (`[schedules.facebook_sync]`). Fans out one
//! [`FacebookSyncAccount`] per client with an ad account, all in one statement; each carries
//! the tick's key for the record and is unique per ad account while unfinished, so a tick never
//! starts a second sync of an account whose previous one is still running or waiting.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::AppState;
use super::facebook_sync_account::FacebookSyncAccount;
use crate::queue::{Job, JobArgs, JobContext, JobResult, NewJob, Policy, enqueue_many};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FacebookSync {}

impl JobArgs for FacebookSync {
    const KIND: &'static str = "facebook_sync";

    fn policy() -> Policy {
        Policy {
            queue: "facebook",
            max_attempts: 5,
            ..Policy::default()
        }
    }
}

/// Clients the sync covers: those with an ad account.
const CLIENTS_WITH_AD_ACCOUNT: &str = r#"
select id, facebook_ad_account_id from clients
where coalesce(facebook_ad_account_id, '') <> ''
order by id
"#;

impl Job<AppState> for FacebookSync {
    async fn perform(self, ctx: JobContext<AppState>) -> JobResult {
        let clients: Vec<(String, String)> = sqlx::query_as(CLIENTS_WITH_AD_ACCOUNT)
            .fetch_all(&ctx.pool)
            .await?;
        let tick = ctx.unique_key.clone();
        let jobs = clients
            .into_iter()
            .map(|(client_id, account)| {
                NewJob::of(&FacebookSyncAccount {
                    client_id,
                    ad_account_id: account.trim().trim_start_matches("act_").to_owned(),
                    tick: tick.clone(),
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(crate::queue::JobError::discard)?;
        let enqueued = enqueue_many(&ctx.pool, jobs)
            .await
            .map_err(crate::queue::JobError::retry)?;
        let fresh = enqueued.iter().filter(|e| e.inserted).count();
        tracing::info!(
            accounts = enqueued.len(),
            enqueued = fresh,
            "facebook_sync fanned out"
        );
        Ok(Some(json!({"accounts": enqueued.len(), "enqueued": fresh})))
    }
}
