//! Facebook Ads insights sync (`facebook_sync` fan-out, `facebook_sync_account`) against the real
//! PostgreSQL and the Graph simulator, driven with `queue::testing::drain`.

#[path = "../support/mod.rs"]
mod support;

mod sync;

use std::sync::Arc;

use baseaim_worker::config::{Config, SecretString, Secrets};
use baseaim_worker::jobs::{self, AppState, FacebookSync};
use baseaim_worker::queue::testing::{DrainReport, drain};
use baseaim_worker::queue::{NewJob, enqueue, rate_limit};
use baseaim_worker::sim::facebook::{AdAccount, FacebookConfig, FacebookSim};
use chrono::{Days, NaiveDate, Utc};
use serde_json::Value;

use support::TestDb;

/// A database, the simulator, one client per simulated ad account, and the jobs' state.
pub struct Harness {
    pub db: TestDb,
    pub sim: FacebookSim,
    pub state: AppState,
    ticks: u32,
}

/// One `campaign_metrics` row as the dashboard reads it (numerics as their text).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Metric {
    pub campaign_id: String,
    pub campaign_name: String,
    pub date: NaiveDate,
    pub impressions: i64,
    pub clicks: i64,
    pub spend: String,
    pub reach: i64,
    pub ctr: String,
    pub cpc: Option<String>,
    pub actions: Value,
}

const FIELDS: [&str; 9] = [
    "campaign_id",
    "campaign_name",
    "impressions",
    "clicks",
    "spend",
    "reach",
    "ctr",
    "cpc",
    "actions",
];

impl Harness {
    /// `env` adds config overrides (`BAW__FACEBOOK__...`); the page size is small so a sync
    /// takes several pages.
    pub async fn start(sim_config: FacebookConfig, env: &[(&str, &str)]) -> Self {
        let db = TestDb::new().await;
        let sim = FacebookSim::start(sim_config).await.expect("start sim");
        let mut vars = vec![
            (
                "BAW__FACEBOOK__API_BASE".to_owned(),
                sim.base_url().to_owned(),
            ),
            ("BAW__FACEBOOK__PAGE_SIZE".to_owned(), "40".to_owned()),
        ];
        vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let config = Config::load_from(None, vars).expect("config");
        rate_limit::declare(&db.pool, &config.rate_limits)
            .await
            .expect("declare rate limits");
        let secrets = Secrets {
            facebook_access_token: Some(SecretString::from(sim.access_token())),
            ..Secrets::default()
        };
        for (i, account) in sim.accounts().iter().enumerate() {
            sqlx::query(
                "insert into clients (id, name, email, facebook_ad_account_id) values ($1, $2, $3, $4)",
            )
            .bind(format!("client-{i}"))
            .bind(format!("Client {i}"))
            .bind(format!("c{i}@example.com"))
            .bind(format!("act_{}", account.id))
            .execute(&db.pool)
            .await
            .expect("insert client");
        }
        let state =
            AppState::new(db.pool.clone(), Arc::new(config), Arc::new(secrets)).expect("state");
        Harness {
            db,
            sim,
            state,
            ticks: 0,
        }
    }

    pub fn pool(&self) -> &sqlx::PgPool {
        &self.db.pool
    }

    pub fn accounts(&self) -> Vec<AdAccount> {
        self.sim.accounts()
    }

    /// Enqueues one schedule tick of `facebook_sync`, as the scheduler does.
    pub async fn tick(&mut self) {
        self.ticks += 1;
        let job = NewJob::of(&FacebookSync {})
            .unwrap()
            .unique_key(format!("schedule:facebook_sync:tick-{}", self.ticks));
        enqueue(self.pool(), job).await.expect("enqueue");
    }

    pub async fn drain(&self) -> DrainReport {
        drain(
            self.pool(),
            &jobs::registry(),
            self.state.clone(),
            "facebook",
        )
        .await
        .expect("drain")
    }

    /// Makes every waiting job (snoozed or retrying) due now.
    pub async fn make_due(&self) {
        sqlx::query(
            "update jobs set run_at = now() where state in ('scheduled', 'retryable', 'available')",
        )
        .execute(self.pool())
        .await
        .expect("make due");
    }

    /// Drains until no facebook job is unfinished, making waits due in between.
    pub async fn drain_until_done(&self, rounds: usize, between: std::time::Duration) {
        for _ in 0..rounds {
            self.drain().await;
            if self.unfinished().await == 0 {
                return;
            }
            tokio::time::sleep(between).await;
            self.make_due().await;
        }
        panic!(
            "facebook jobs still unfinished after {rounds} rounds: {:?}",
            self.job_states().await
        );
    }

    pub async fn unfinished(&self) -> i64 {
        sqlx::query_scalar(
            "select count(*) from jobs where kind like 'facebook%' and state not in ('completed', 'discarded', 'cancelled')",
        )
        .fetch_one(self.pool())
        .await
        .unwrap()
    }

    /// (kind, state, attempt) of every facebook job.
    pub async fn job_states(&self) -> Vec<(String, String, i32, Value)> {
        sqlx::query_as(
            "select kind, state, attempt, args from jobs where kind like 'facebook%' order by id",
        )
        .fetch_all(self.pool())
        .await
        .unwrap()
    }

    /// The rows stored for `account`, by date then campaign id.
    pub async fn stored(&self, account: &str) -> Vec<Metric> {
        sqlx::query_as(
            "select campaign_id, campaign_name, date, impressions, clicks, spend::text as spend,
                    reach, ctr::text as ctr, cpc::text as cpc, actions
             from campaign_metrics where ad_account_id = $1 order by date, campaign_id",
        )
        .bind(account)
        .fetch_all(self.pool())
        .await
        .unwrap()
    }

    /// What the simulator serves for `account` over the last `days` days, as stored rows.
    pub fn expected(&self, account: &AdAccount, days: u64) -> Vec<Metric> {
        let until = Utc::now().date_naive();
        let since = until - Days::new(days - 1);
        let fields: Vec<String> = FIELDS.iter().map(|f| f.to_string()).collect();
        let mut rows: Vec<Metric> = self
            .sim
            .data()
            .daily_rows(&account.id, since, until)
            .into_iter()
            .map(|r| {
                let graph = r.to_graph_json(&fields, account);
                Metric {
                    campaign_id: r.campaign_id.clone(),
                    campaign_name: r.campaign_name.clone(),
                    date: r.date_start,
                    impressions: r.impressions as i64,
                    clicks: r.clicks as i64,
                    spend: r.spend(),
                    reach: r.reach as i64,
                    ctr: r.ctr(),
                    cpc: r.cpc(),
                    actions: graph
                        .get("actions")
                        .cloned()
                        .unwrap_or(Value::Array(Vec::new())),
                }
            })
            .collect();
        rows.sort_by(|a, b| (a.date, &a.campaign_id).cmp(&(b.date, &b.campaign_id)));
        rows
    }
}
