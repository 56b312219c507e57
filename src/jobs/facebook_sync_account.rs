//! `facebook_sync_account`: one ad account's campaign-level daily insights into
//! `campaign_metrics`. The window is the last `lookback_days` (Facebook revises recent days),
//! reaching back to the day before the last successful sync when that is older (so days missed
//! during an outage are fetched), or `backfill_days` for a client never synced (also the
//! furthest any sync reaches back); every page is fetched and upserted in batches on
//! (ad account, campaign, date), then `clients.facebook_last_sync_at` is set. Each attempt is
//! recorded in `facebook_sync_runs` (rows, calls, outcome), which is where the dashboard sees a
//! refused token (`token_invalid`).
//!
//! Pacing: each call takes a token from the cluster-wide `[rate_limits.facebook]` bucket; above
//! `usage_threshold_pct` ad-account utilisation, or when Graph throttles, the job snoozes until
//! the usage would be low (no attempt spent). A throttle whose answer carries no usage hint
//! (`estimated_time_to_regain_access`, `reset_time_duration`) snoozes 1, 2, 4, ... up to 15
//! minutes, plus jitter (PROVIDERS.md §A.8), counting the throttles in a row in the checkpoint;
//! a page fetched resets the count. A snoozed or retried sync resumes where it stopped:
//! the rows fetched so far are stored, then a checkpoint (ranges left, next cursor) keyed by the
//! job id in `facebook_sync_checkpoints`. A too-much-data answer halves the date range and goes
//! on.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Days, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::AppState;
use crate::integrations::facebook::{FacebookClient, FacebookError, InsightRow, throttle_backoff};
use crate::queue::{Backoff, Job, JobArgs, JobContext, JobError, JobResult, Policy, rate_limit};

/// The `[rate_limits.*]` bucket every Graph call takes a token from.
const BUCKET: &str = "facebook";
/// A rate-limit wait this short is slept through instead of snoozing the sync.
const SHORT_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FacebookSyncAccount {
    pub client_id: String,
    /// Without `act_`.
    pub ad_account_id: String,
    /// The schedule tick's key that fanned it out, for the record.
    #[serde(default)]
    pub tick: Option<String>,
}

impl JobArgs for FacebookSyncAccount {
    const KIND: &'static str = "facebook_sync_account";

    fn policy() -> Policy {
        Policy {
            queue: "facebook",
            max_attempts: 10,
            backoff: Backoff {
                base: Duration::from_secs(30),
                max: Duration::from_secs(900),
                jitter: 0.2,
            },
            timeout: Some(Duration::from_secs(1800)),
            ..Policy::default()
        }
    }

    /// Never two syncs of one account at once.
    fn unique_key(&self) -> Option<String> {
        Some(format!("facebook:account:{}", self.ad_account_id))
    }
}

const CLIENT_SYNC_STATE: &str = "select name, facebook_last_sync_at from clients where id = $1 and facebook_ad_account_id is not null";

/// Upserts one batch; `synced_at` moves even when the numbers are the same.
const CAMPAIGN_METRICS_UPSERT: &str = r#"
insert into campaign_metrics (client_id, ad_account_id, campaign_id, campaign_name, date,
                              impressions, clicks, spend, reach, ctr, cpc, actions, synced_at)
select $1, $2, r.campaign_id, r.campaign_name, r.date, r.impressions, r.clicks,
       r.spend::numeric, r.reach, r.ctr::numeric, r.cpc::numeric, r.actions::jsonb, now()
from unnest($3::text[], $4::text[], $5::date[], $6::int8[], $7::int8[], $8::text[], $9::int8[],
            $10::text[], $11::text[], $12::text[])
     as r(campaign_id, campaign_name, date, impressions, clicks, spend, reach, ctr, cpc, actions)
on conflict (ad_account_id, campaign_id, date) do update set
    client_id = excluded.client_id,
    campaign_name = excluded.campaign_name,
    impressions = excluded.impressions,
    clicks = excluded.clicks,
    spend = excluded.spend,
    reach = excluded.reach,
    ctr = excluded.ctr,
    cpc = excluded.cpc,
    actions = excluded.actions,
    synced_at = excluded.synced_at
"#;

const CLIENT_SYNCED: &str = "update clients set facebook_last_sync_at = $2 where id = $1";

const CHECKPOINT_GET: &str = "select state from facebook_sync_checkpoints where job_id = $1";

const CHECKPOINT_PUT: &str = r#"
insert into facebook_sync_checkpoints (job_id, ad_account_id, state) values ($1, $2, $3)
on conflict (job_id) do update set state = excluded.state, updated_at = now()
"#;

const CHECKPOINT_DELETE: &str = "delete from facebook_sync_checkpoints where job_id = $1";

const SYNC_RUN_INSERT: &str = r#"
insert into facebook_sync_runs (client_id, ad_account_id, started_at, rows, calls, outcome, error)
values ($1, $2, $3, $4, $5, $6, $7)
"#;

/// Where an unfinished sync stands: the window, the date ranges still to fetch (the last one is
/// next) and the cursor of the next page of that range. Written only after the rows before it
/// are stored.
#[derive(Debug, Serialize, Deserialize)]
struct Checkpoint {
    since: NaiveDate,
    until: NaiveDate,
    ranges: Vec<(NaiveDate, NaiveDate)>,
    after: Option<String>,
    /// Throttles in a row since the last page fetched: the exponent of the backoff when Graph
    /// says nothing about when access is back (so a long throttle is not polled every minute).
    #[serde(default)]
    throttles: u32,
}

/// What one attempt did, for `facebook_sync_runs`.
#[derive(Default)]
struct Progress {
    rows: i64,
    calls: i32,
    token_invalid: bool,
}

impl Job<AppState> for FacebookSyncAccount {
    async fn perform(self, ctx: JobContext<AppState>) -> JobResult {
        let started = Utc::now();
        let mut progress = Progress::default();
        let result = self.sync(&ctx, &mut progress).await;
        let (outcome, error) = match &result {
            Ok(_) => ("ok", None),
            Err(JobError::Snooze(_)) => ("snoozed", None),
            Err(JobError::Retry { error, .. }) => ("retry", Some(error.clone())),
            Err(e) if progress.token_invalid => ("token_invalid", Some(e.to_string())),
            Err(e) => ("failed", Some(e.to_string())),
        };
        if !matches!(result, Err(JobError::Snooze(_) | JobError::Retry { .. })) {
            sqlx::query(CHECKPOINT_DELETE)
                .bind(ctx.id)
                .execute(&ctx.pool)
                .await?;
        }
        sqlx::query(SYNC_RUN_INSERT)
            .bind(&self.client_id)
            .bind(&self.ad_account_id)
            .bind(started)
            .bind(progress.rows)
            .bind(progress.calls)
            .bind(outcome)
            .bind(error)
            .execute(&ctx.pool)
            .await?;
        result
    }
}

impl FacebookSyncAccount {
    async fn sync(&self, ctx: &JobContext<AppState>, progress: &mut Progress) -> JobResult {
        let settings = &ctx.state.config.facebook;
        let Some((name, last_sync)) =
            sqlx::query_as::<_, (String, Option<DateTime<Utc>>)>(CLIENT_SYNC_STATE)
                .bind(&self.client_id)
                .fetch_optional(&ctx.pool)
                .await?
        else {
            return Err(JobError::Cancel(format!(
                "client {} no longer has an ad account",
                self.client_id
            )));
        };
        let token = ctx
            .state
            .secrets
            .facebook_access_token
            .clone()
            .ok_or(FacebookError::NotConfigured)?;
        let client = FacebookClient::new(
            &settings.api_base,
            &settings.api_version,
            token,
            settings.page_size,
            settings.connect_timeout,
            settings.request_timeout,
        )?;
        let mut checkpoint = match sqlx::query_scalar::<_, serde_json::Value>(CHECKPOINT_GET)
            .bind(ctx.id)
            .fetch_optional(&ctx.pool)
            .await?
        {
            Some(state) => serde_json::from_value::<Checkpoint>(state)?,
            None => {
                let until = Utc::now().date_naive();
                let back = |days: u32| until - Days::new(u64::from(days.max(1) - 1));
                let (lookback, backfill) =
                    (back(settings.lookback_days), back(settings.backfill_days));
                // After an outage longer than the look-back (a refused token, say), from the
                // day before the last good sync, so the days missed are fetched too; never
                // further back than a first sync goes.
                let since = match last_sync {
                    Some(at) => lookback
                        .min(at.date_naive() - Days::new(1))
                        .max(backfill.min(lookback)),
                    None => backfill,
                };
                Checkpoint {
                    since,
                    until,
                    ranges: vec![(since, until)],
                    after: None,
                    throttles: 0,
                }
            }
        };
        let mut batch: BTreeMap<(String, NaiveDate), InsightRow> = BTreeMap::new();
        while let Some(&(from, to)) = checkpoint.ranges.last() {
            let fetched = match self.pace(ctx, &client).await {
                Ok(()) => {
                    progress.calls += 1;
                    client
                        .insights_page(&self.ad_account_id, from, to, checkpoint.after.as_deref())
                        .await
                }
                Err(wait) => {
                    self.save(ctx, &mut batch, &checkpoint, progress).await?;
                    return Err(wait);
                }
            };
            match fetched {
                Ok(page) => {
                    checkpoint.throttles = 0;
                    for row in page.rows {
                        batch.insert((row.campaign_id.clone(), row.date), row);
                    }
                    checkpoint.after = page.after;
                    if checkpoint.after.is_none() {
                        checkpoint.ranges.pop();
                    }
                    if batch.len() >= settings.upsert_batch {
                        self.save(ctx, &mut batch, &checkpoint, progress).await?;
                    }
                }
                Err(FacebookError::TooMuchData { .. }) if from < to => {
                    let mid = from + Days::new(((to - from).num_days() / 2) as u64);
                    tracing::info!(%from, %to, "facebook: too much data, halving the range");
                    // Also on a later page: its cursor belongs to the whole range, so the halves
                    // start from their first page (rows are upserted; re-fetching is harmless).
                    checkpoint.after = None;
                    // The earlier half first.
                    checkpoint.ranges.pop();
                    checkpoint.ranges.push((mid + Days::new(1), to));
                    checkpoint.ranges.push((from, mid));
                }
                Err(error @ FacebookError::Token { .. }) => {
                    self.flush(ctx, &mut batch, progress).await?;
                    progress.token_invalid = true;
                    return Err(JobError::discard(format!(
                        "client {} ({name}), ad account {}: {error}; issue a new FACEBOOK_ACCESS_TOKEN",
                        self.client_id, self.ad_account_id
                    )));
                }
                Err(FacebookError::Throttled { code, wait }) => {
                    let n = checkpoint.throttles;
                    checkpoint.throttles = n.saturating_add(1);
                    let wait = wait.unwrap_or_else(|| throttle_backoff(n));
                    tracing::info!(account = %self.ad_account_id, code, throttles = n + 1, ?wait, "facebook: throttled, waiting");
                    self.save(ctx, &mut batch, &checkpoint, progress).await?;
                    return Err(JobError::Snooze(wait));
                }
                Err(error) => {
                    self.save(ctx, &mut batch, &checkpoint, progress).await?;
                    return Err(error.into());
                }
            }
        }
        let Checkpoint { since, until, .. } = checkpoint;
        self.flush(ctx, &mut batch, progress).await?;
        sqlx::query(CLIENT_SYNCED)
            .bind(&self.client_id)
            .bind(Utc::now())
            .execute(&ctx.pool)
            .await?;
        tracing::info!(
            client = %self.client_id,
            rows = progress.rows,
            calls = progress.calls,
            %since,
            %until,
            "facebook_sync_account done"
        );
        Ok(Some(
            json!({"rows": progress.rows, "calls": progress.calls, "since": since, "until": until}),
        ))
    }

    /// Before a call: snooze while the account's usage is high, then take a token from the
    /// cluster-wide bucket (sleeping through a short wait, snoozing through a long one).
    async fn pace(
        &self,
        ctx: &JobContext<AppState>,
        client: &FacebookClient,
    ) -> Result<(), JobError> {
        let threshold = ctx.state.config.facebook.usage_threshold_pct;
        if let Some(usage) = client.last_usage().filter(|u| u.pct >= threshold) {
            let wait = usage.wait(Duration::from_secs(60));
            tracing::info!(account = %self.ad_account_id, pct = usage.pct, ?wait, "facebook: ad account usage high, waiting");
            return Err(JobError::Snooze(wait));
        }
        loop {
            match rate_limit::take(&ctx.pool, BUCKET).await {
                Ok(None) => return Ok(()),
                Ok(Some(wait)) if wait <= SHORT_WAIT => tokio::time::sleep(wait).await,
                Ok(Some(wait)) => return Err(JobError::Snooze(wait)),
                Err(error) => return Err(JobError::retry(error)),
            }
        }
    }

    /// Stores the rows fetched so far, then the checkpoint that follows them.
    async fn save(
        &self,
        ctx: &JobContext<AppState>,
        batch: &mut BTreeMap<(String, NaiveDate), InsightRow>,
        checkpoint: &Checkpoint,
        progress: &mut Progress,
    ) -> Result<(), JobError> {
        self.flush(ctx, batch, progress).await?;
        sqlx::query(CHECKPOINT_PUT)
            .bind(ctx.id)
            .bind(&self.ad_account_id)
            .bind(serde_json::to_value(checkpoint)?)
            .execute(&ctx.pool)
            .await?;
        Ok(())
    }

    async fn flush(
        &self,
        ctx: &JobContext<AppState>,
        batch: &mut BTreeMap<(String, NaiveDate), InsightRow>,
        progress: &mut Progress,
    ) -> Result<(), JobError> {
        if batch.is_empty() {
            return Ok(());
        }
        let rows: Vec<InsightRow> = std::mem::take(batch).into_values().collect();
        let col = |f: fn(&InsightRow) -> String| rows.iter().map(f).collect::<Vec<_>>();
        let num = |f: fn(&InsightRow) -> i64| rows.iter().map(f).collect::<Vec<_>>();
        sqlx::query(CAMPAIGN_METRICS_UPSERT)
            .bind(&self.client_id)
            .bind(&self.ad_account_id)
            .bind(col(|r| r.campaign_id.clone()))
            .bind(col(|r| r.campaign_name.clone()))
            .bind(rows.iter().map(|r| r.date).collect::<Vec<_>>())
            .bind(num(|r| r.impressions))
            .bind(num(|r| r.clicks))
            .bind(col(|r| r.spend.clone()))
            .bind(num(|r| r.reach))
            .bind(col(|r| r.ctr.clone()))
            .bind(rows.iter().map(|r| r.cpc.clone()).collect::<Vec<_>>())
            .bind(col(|r| r.actions.clone()))
            .execute(&ctx.pool)
            .await?;
        progress.rows += rows.len() as i64;
        Ok(())
    }
}
