//! The Facebook Graph (Marketing API) simulator: `GET /v{N}.0/act_{id}/insights` (PROVIDERS.md §A).
//!
//! - Data: [`FacebookData`], a deterministic generator of ad accounts, campaigns and daily
//!   metrics under a seed. Tests hold their own copy (via [`FacebookSim::data`]) to know the
//!   expected rows, and [`FacebookSim::revise_day`] changes a day's numbers (Facebook revises
//!   recent days for a while).
//! - Request: `level=campaign`, `fields` (checked against the official `AdsInsights` field list),
//!   `time_increment` (`1`, any N days, or `all_days`), `time_range={"since","until"}` or
//!   `date_preset` (relative to [`FacebookConfig::today`]), cursor paging with `limit`/`after`.
//!   The token comes as `access_token` or `Authorization: Bearer`.
//! - Response: rows with every metric as a string, `date_start`/`date_stop`, and
//!   `paging.cursors.{before,after}` plus `paging.next` (a full URL carrying every parameter,
//!   including the token, as Graph's do) while more rows remain. Days without delivery are
//!   omitted (\[I\], [`FacebookDataSpec::omit_empty_days`]).
//! - Errors: Graph's body `{"error":{"message","type","code","error_subcode","fbtrace_id",...}}`
//!   on HTTP 400 (as the contract advises for a fake, \[I\]). Token errors: 104 (missing), 190
//!   (unparseable), 190/463 (configured expired tokens). Unknown account: 100/33. Too much data:
//!   100/1487534 when the range exceeds [`FacebookConfig::max_days_per_request`]. Tests can
//!   queue any Graph error with [`FacebookSim::push_error`] (e.g. the sync timeout 100/1504018),
//!   or for a later page only with [`FacebookSim::push_error_on_a_later_page`].
//! - Throttling: calls are counted per ad account and per app in a window; past the limit the
//!   account (or app) is blocked for [`FacebookConfig::block_for`] and answers the configured
//!   throttle error (80000 by default; 17/2446079 or 613/1487742) or app error 4/1504022. Every
//!   answer carries `X-Business-Use-Case-Usage`, `X-Ad-Account-Usage` and
//!   `X-FB-Ads-Insights-Throttle` with the utilisation and `estimated_time_to_regain_access`.
//!
//! Not simulated: async report runs (`POST .../insights`), levels other than `campaign`,
//! breakdowns, filtering, `time_increment=monthly`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use chrono::{Datelike, Days, NaiveDate};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::fault::{FaultConfig, FaultResponder, Faults};
use super::{CallLog, SimServer, hash_str, lock, mix};

const INSIGHTS_FIELDS: &str = include_str!("fixtures/facebook_ads_insights_fields.json");

/// What the generator produces.
#[derive(Clone, Debug)]
pub struct FacebookDataSpec {
    pub seed: u64,
    pub accounts: usize,
    pub campaigns_per_account: usize,
    /// The first day any campaign delivers; campaigns start on staggered days after it.
    pub first_day: NaiveDate,
    pub currency: String,
    /// Leave out campaign-days without delivery, as Graph usually does (\[I\]); when false they
    /// come back as rows of zeros.
    pub omit_empty_days: bool,
}

impl Default for FacebookDataSpec {
    fn default() -> Self {
        Self {
            seed: 0,
            accounts: 3,
            campaigns_per_account: 4,
            first_day: NaiveDate::from_ymd_opt(2025, 1, 1).unwrap_or_default(),
            currency: "USD".to_owned(),
            omit_empty_days: true,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdAccount {
    /// The numeric id, without `act_`.
    pub id: String,
    pub name: String,
    pub currency: String,
    pub campaigns: Vec<Campaign>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Campaign {
    pub id: String,
    pub name: String,
    /// The first day it delivers.
    pub start: NaiveDate,
}

/// One campaign-day (or campaign-period) of metrics, in numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InsightRow {
    pub account_id: String,
    pub campaign_id: String,
    pub campaign_name: String,
    pub date_start: NaiveDate,
    pub date_stop: NaiveDate,
    pub impressions: u64,
    pub reach: u64,
    pub clicks: u64,
    /// Spend in the currency's minor unit (cents).
    pub spend_cents: u64,
    pub link_clicks: u64,
    pub purchases: u64,
}

impl InsightRow {
    /// `"12.34"`, as Graph sends money.
    pub fn spend(&self) -> String {
        format!("{}.{:02}", self.spend_cents / 100, self.spend_cents % 100)
    }

    /// Click-through rate in percent, six decimals (`"4.538088"`).
    pub fn ctr(&self) -> String {
        if self.impressions == 0 {
            return "0".to_owned();
        }
        format!(
            "{:.6}",
            self.clicks as f64 * 100.0 / self.impressions as f64
        )
    }

    /// Cost per click, six decimals; `None` without clicks (Graph omits it).
    pub fn cpc(&self) -> Option<String> {
        (self.clicks > 0).then(|| {
            format!(
                "{:.6}",
                self.spend_cents as f64 / 100.0 / self.clicks as f64
            )
        })
    }

    /// The row as Graph renders it for `fields` (metrics as strings; dates always present).
    pub fn to_graph_json(&self, fields: &[String], account: &AdAccount) -> Value {
        let mut row = serde_json::Map::new();
        for field in fields {
            let value = match field.as_str() {
                "account_id" => json!(self.account_id),
                "account_name" => json!(account.name),
                "account_currency" => json!(account.currency),
                "campaign_id" => json!(self.campaign_id),
                "campaign_name" => json!(self.campaign_name),
                "impressions" => json!(self.impressions.to_string()),
                "reach" => json!(self.reach.to_string()),
                "clicks" => json!(self.clicks.to_string()),
                "spend" => json!(self.spend()),
                "ctr" => json!(self.ctr()),
                "cpc" => match self.cpc() {
                    Some(cpc) => json!(cpc),
                    None => continue,
                },
                "actions" => {
                    let actions: Vec<Value> = [
                        ("link_click", self.link_clicks),
                        ("purchase", self.purchases),
                    ]
                    .into_iter()
                    .filter(|(_, n)| *n > 0)
                    .map(|(kind, n)| json!({"action_type": kind, "value": n.to_string()}))
                    .collect();
                    if actions.is_empty() {
                        continue;
                    }
                    json!(actions)
                }
                // A valid field the generator has no value for: Graph omits empty fields.
                _ => continue,
            };
            row.insert(field.clone(), value);
        }
        row.insert("date_start".into(), json!(self.date_start.to_string()));
        row.insert("date_stop".into(), json!(self.date_stop.to_string()));
        Value::Object(row)
    }
}

/// The deterministic data behind the simulator.
#[derive(Clone, Debug)]
pub struct FacebookData {
    seed: u64,
    omit_empty_days: bool,
    accounts: Vec<AdAccount>,
    /// (account id, day) -> revision; a revised day draws different numbers.
    revisions: BTreeMap<(String, NaiveDate), u64>,
}

impl FacebookData {
    pub fn generate(spec: &FacebookDataSpec) -> Self {
        let accounts = (0..spec.accounts as u64)
            .map(|a| {
                let id = (100_000_000_000_000 + mix(spec.seed, &[a, 1]) % 899_999_999_999_999)
                    .to_string();
                let campaigns = (0..spec.campaigns_per_account as u64)
                    .map(|c| Campaign {
                        id: format!(
                            "1202{:014}",
                            mix(spec.seed, &[a, c, 2]) % 100_000_000_000_000
                        ),
                        name: format!(
                            "{} {}",
                            [
                                "Spring Sale",
                                "Brand Awareness",
                                "Retargeting",
                                "Lead Gen",
                                "Launch"
                            ][(c % 5) as usize],
                            a * 100 + c + 1
                        ),
                        start: spec.first_day + Days::new(mix(spec.seed, &[a, c, 3]) % 20),
                    })
                    .collect();
                AdAccount {
                    id,
                    name: format!("Sim Client {}", a + 1),
                    currency: spec.currency.clone(),
                    campaigns,
                }
            })
            .collect();
        Self {
            seed: spec.seed,
            omit_empty_days: spec.omit_empty_days,
            accounts,
            revisions: BTreeMap::new(),
        }
    }

    pub fn accounts(&self) -> &[AdAccount] {
        &self.accounts
    }

    /// The account with numeric id `id` (with or without `act_`).
    pub fn account(&self, id: &str) -> Option<&AdAccount> {
        let id = id.strip_prefix("act_").unwrap_or(id);
        self.accounts.iter().find(|a| a.id == id)
    }

    /// Changes every number of `day` for the account (each call draws anew).
    pub fn revise(&mut self, account_id: &str, day: NaiveDate) {
        let id = account_id
            .strip_prefix("act_")
            .unwrap_or(account_id)
            .to_owned();
        *self.revisions.entry((id, day)).or_default() += 1;
    }

    /// One campaign's metrics for one day; `None` before it started, or when it did not deliver
    /// and empty days are omitted.
    pub fn day(
        &self,
        account: &AdAccount,
        campaign: &Campaign,
        day: NaiveDate,
    ) -> Option<InsightRow> {
        if day < campaign.start {
            return None;
        }
        let revision = self
            .revisions
            .get(&(account.id.clone(), day))
            .copied()
            .unwrap_or(0);
        let r = |k: u64| {
            mix(
                self.seed,
                &[
                    hash_str(&campaign.id),
                    day.num_days_from_ce() as u64,
                    revision,
                    k,
                ],
            )
        };
        // About one campaign-day in ten has no delivery.
        let delivered = r(0) % 10 != 0;
        if !delivered && self.omit_empty_days {
            return None;
        }
        let impressions = if delivered { 500 + r(1) % 5000 } else { 0 };
        let reach = impressions * (60 + r(2) % 36) / 100;
        let clicks = impressions * (5 + r(3) % 46) / 1000;
        let spend_cents = clicks * (10 + r(4) % 140) + if delivered { r(5) % 100 } else { 0 };
        let link_clicks = clicks * (80 + r(6) % 21) / 100;
        let purchases = link_clicks * (r(7) % 11) / 100;
        Some(InsightRow {
            account_id: account.id.clone(),
            campaign_id: campaign.id.clone(),
            campaign_name: campaign.name.clone(),
            date_start: day,
            date_stop: day,
            impressions,
            reach,
            clicks,
            spend_cents,
            link_clicks,
            purchases,
        })
    }

    /// The daily rows (`time_increment=1`) the simulator answers for `since..=until`, in its
    /// order: by day, then campaign id. Days without delivery are absent.
    pub fn daily_rows(
        &self,
        account_id: &str,
        since: NaiveDate,
        until: NaiveDate,
    ) -> Vec<InsightRow> {
        let Some(account) = self.account(account_id) else {
            return Vec::new();
        };
        let mut campaigns: Vec<&Campaign> = account.campaigns.iter().collect();
        campaigns.sort_by(|a, b| a.id.cmp(&b.id));
        since
            .iter_days()
            .take_while(|d| *d <= until)
            .flat_map(|day| {
                campaigns
                    .iter()
                    .filter_map(move |c| self.day(account, c, day))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Rows summed over buckets of `increment` days starting at `since` (`None`: the whole range).
    pub fn rows(
        &self,
        account_id: &str,
        since: NaiveDate,
        until: NaiveDate,
        increment: Option<u64>,
    ) -> Vec<InsightRow> {
        let daily = self.daily_rows(account_id, since, until);
        if increment == Some(1) {
            return daily;
        }
        let mut buckets: BTreeMap<(NaiveDate, String), InsightRow> = BTreeMap::new();
        for row in daily {
            let offset = (row.date_start - since).num_days() as u64;
            let (start, stop) = match increment {
                Some(n) => {
                    let start = since
                        .checked_add_days(Days::new(offset / n * n))
                        .unwrap_or(until);
                    let stop = start.checked_add_days(Days::new(n - 1)).unwrap_or(until);
                    (start, stop.min(until))
                }
                None => (since, until),
            };
            let entry = buckets
                .entry((start, row.campaign_id.clone()))
                .or_insert_with(|| InsightRow {
                    date_start: start,
                    date_stop: stop,
                    impressions: 0,
                    reach: 0,
                    clicks: 0,
                    spend_cents: 0,
                    link_clicks: 0,
                    purchases: 0,
                    ..row.clone()
                });
            entry.impressions += row.impressions;
            // Reach is not additive; the maximum is a plausible stand-in.
            entry.reach = entry.reach.max(row.reach);
            entry.clicks += row.clicks;
            entry.spend_cents += row.spend_cents;
            entry.link_clicks += row.link_clicks;
            entry.purchases += row.purchases;
        }
        buckets.into_values().collect()
    }
}

/// Which error an ad account past its limit answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccountThrottle {
    /// 80000, the `ads_insights` business-use-case limit.
    BucInsights,
    /// 17 / 2446079, user request limit (ad-account API score).
    UserRequestLimit,
    /// 613 / 1487742, too many calls from this ad account.
    AdAccountCalls,
}

impl AccountThrottle {
    fn error(self) -> GraphError {
        match self {
            Self::BucInsights => GraphError::new(
                80000,
                None,
                "There have been too many calls from this ad-account. Wait a bit and try again. For more info, please refer to https://developers.facebook.com/docs/graph-api/overview/rate-limiting#ads-insights.",
            ),
            Self::UserRequestLimit => GraphError::new(17, Some(2446079), "User request limit reached"),
            Self::AdAccountCalls => GraphError::new(
                613,
                Some(1487742),
                "There have been too many calls from this ad-account. Please wait a bit and try again.",
            ),
        }
        .transient()
    }
}

/// A Graph error to answer (see [`FacebookSim::push_error`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GraphError {
    pub status: u16,
    pub code: i64,
    pub subcode: Option<i64>,
    pub error_type: String,
    pub message: String,
    pub is_transient: bool,
    pub user_title: Option<String>,
    pub user_msg: Option<String>,
}

impl GraphError {
    /// HTTP 400, type `OAuthException` (Graph uses it for most errors), not transient.
    pub fn new(code: i64, subcode: Option<i64>, message: &str) -> Self {
        Self {
            status: 400,
            code,
            subcode,
            error_type: "OAuthException".to_owned(),
            message: message.to_owned(),
            is_transient: false,
            user_title: None,
            user_msg: None,
        }
    }

    pub fn transient(mut self) -> Self {
        self.is_transient = true;
        self
    }

    pub fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// The sync-request timeout (100 / 1504018): "use async jobs".
    pub fn sync_timeout() -> Self {
        Self::new(
            100,
            Some(1504018),
            "The request was timed out. Try a smaller date range, fetch less data, or use async jobs.",
        )
        .transient()
    }

    fn response(&self, trace: u64) -> Response {
        let mut error = json!({
            "message": self.message,
            "type": self.error_type,
            "code": self.code,
            "fbtrace_id": fbtrace(trace),
            "is_transient": self.is_transient,
        });
        if let Some(subcode) = self.subcode {
            error["error_subcode"] = json!(subcode);
        }
        if let Some(title) = &self.user_title {
            error["error_user_title"] = json!(title);
        }
        if let Some(msg) = &self.user_msg {
            error["error_user_msg"] = json!(msg);
        }
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        (status, axum::Json(json!({"error": error}))).into_response()
    }
}

fn fbtrace(n: u64) -> String {
    let bytes = mix(0xFB, &[n]).to_be_bytes();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes[..8])
}

#[derive(Clone, Debug)]
pub struct FacebookConfig {
    pub bind: Option<SocketAddr>,
    pub data: FacebookDataSpec,
    /// Tokens that work.
    pub access_tokens: Vec<String>,
    /// Tokens that answer 190 / 463 (session expired).
    pub expired_tokens: Vec<String>,
    /// "Today" for `date_preset`; `None`: the real UTC date.
    pub today: Option<NaiveDate>,
    /// Rows per page without `limit` (25, \[I\]).
    pub default_limit: usize,
    pub max_limit: usize,
    /// A range longer than this many days answers 100 / 1487534 (too much data).
    pub max_days_per_request: Option<u32>,
    /// Calls per ad account per window before it is blocked.
    pub account_calls_per_window: u32,
    /// Calls per app (all accounts) per window before the app is blocked.
    pub app_calls_per_window: u32,
    pub window: Duration,
    /// How long a blocked account or app stays blocked.
    pub block_for: Duration,
    pub account_throttle: AccountThrottle,
    /// `ads_api_access_tier` in the usage headers.
    pub access_tier: String,
    pub faults: FaultConfig,
}

impl Default for FacebookConfig {
    fn default() -> Self {
        Self {
            bind: None,
            data: FacebookDataSpec::default(),
            access_tokens: vec!["fb_sim_system_user_token".to_owned()],
            expired_tokens: Vec::new(),
            today: None,
            default_limit: 25,
            max_limit: 5000,
            max_days_per_request: Some(400),
            account_calls_per_window: 600,
            app_calls_per_window: 10_000,
            window: Duration::from_secs(3600),
            block_for: Duration::from_secs(300),
            account_throttle: AccountThrottle::BucInsights,
            access_tier: "development_access".to_owned(),
            faults: FaultConfig::default(),
        }
    }
}

#[derive(Debug)]
struct Window {
    started: Instant,
    calls: u32,
    blocked_until: Option<Instant>,
}

impl Window {
    fn new(now: Instant) -> Self {
        Self {
            started: now,
            calls: 0,
            blocked_until: None,
        }
    }
}

#[derive(Debug)]
struct FbState {
    config: FacebookConfig,
    data: FacebookData,
    accounts: HashMap<String, Window>,
    app: Option<Window>,
    queued_errors: VecDeque<GraphError>,
    /// Errors for the next requests of a later page (ones with an `after` cursor).
    queued_page_errors: VecDeque<GraphError>,
    rate_limit_hits: u64,
    traces: u64,
}

/// A running Graph API simulator. Dropping it stops the server.
#[derive(Debug)]
pub struct FacebookSim {
    server: SimServer,
    state: Arc<Mutex<FbState>>,
}

impl FacebookSim {
    pub async fn start(config: FacebookConfig) -> std::io::Result<Self> {
        let faults = Faults::new(config.faults.clone());
        let bind = config.bind;
        let state = Arc::new(Mutex::new(FbState {
            data: FacebookData::generate(&config.data),
            config,
            accounts: HashMap::new(),
            app: None,
            queued_errors: VecDeque::new(),
            queued_page_errors: VecDeque::new(),
            rate_limit_hits: 0,
            traces: 0,
        }));
        let router = Router::new()
            .route("/{version}/{node}/insights", get(insights))
            .fallback(|| async {
                GraphError::new(
                    100,
                    None,
                    "Unsupported get request. Please read the Graph API documentation at https://developers.facebook.com/docs/graph-api",
                )
                .response(0)
            })
            .with_state(state.clone());
        let server = SimServer::start(router, bind, faults, Arc::new(FbFaults)).await?;
        Ok(Self { server, state })
    }

    /// The base URL to configure instead of `https://graph.facebook.com` (append `/v22.0/...`).
    pub fn base_url(&self) -> &str {
        self.server.base_url()
    }

    /// The first valid access token.
    pub fn access_token(&self) -> String {
        lock(&self.state)
            .config
            .access_tokens
            .first()
            .cloned()
            .unwrap_or_default()
    }

    /// A copy of the data (accounts, campaigns, revisions) to compute expected rows.
    pub fn data(&self) -> FacebookData {
        lock(&self.state).data.clone()
    }

    /// The generated ad accounts.
    pub fn accounts(&self) -> Vec<AdAccount> {
        lock(&self.state).data.accounts.clone()
    }

    /// Revises a day's numbers for an account (later requests see the new numbers).
    pub fn revise_day(&self, account_id: &str, day: NaiveDate) {
        lock(&self.state).data.revise(account_id, day);
    }

    /// Answers the next insights request (after the token check) with `error`.
    pub fn push_error(&self, error: GraphError) {
        lock(&self.state).queued_errors.push_back(error);
    }

    /// Answers the next insights request for a later page (one with an `after` cursor) with
    /// `error`; first pages go through.
    pub fn push_error_on_a_later_page(&self, error: GraphError) {
        lock(&self.state).queued_page_errors.push_back(error);
    }

    /// Requests refused by the throttle model (not by injected faults).
    pub fn rate_limit_hits(&self) -> u64 {
        lock(&self.state).rate_limit_hits
    }

    /// Changes the per-account call limit at run time.
    pub fn set_account_calls_per_window(&self, calls: u32) {
        lock(&self.state).config.account_calls_per_window = calls;
    }

    /// Lifts every block and resets the counters.
    pub fn reset_throttling(&self) {
        let mut s = lock(&self.state);
        s.accounts.clear();
        s.app = None;
    }

    /// The date `date_preset` is computed from.
    pub fn today(&self) -> NaiveDate {
        today(&lock(&self.state).config)
    }

    pub fn calls(&self) -> &CallLog {
        self.server.calls()
    }

    pub fn faults(&self) -> &Faults {
        self.server.faults()
    }

    pub fn server(&self) -> &SimServer {
        &self.server
    }
}

fn today(config: &FacebookConfig) -> NaiveDate {
    config
        .today
        .unwrap_or_else(|| chrono::Utc::now().date_naive())
}

struct FbFaults;

impl FaultResponder for FbFaults {
    fn server_error(&self, status: StatusCode) -> Response {
        let error = if status == StatusCode::SERVICE_UNAVAILABLE {
            GraphError::new(2, None, "Service temporarily unavailable")
        } else {
            GraphError::new(1, None, "An unknown error has occurred.")
        };
        error.transient().with_status(status.as_u16()).response(1)
    }

    fn too_many_requests(&self) -> Response {
        GraphError::new(4, None, "Application request limit reached")
            .transient()
            .with_status(429)
            .response(2)
    }

    fn throttled(&self) -> Response {
        AccountThrottle::BucInsights.error().response(3)
    }
}

fn bad_param(message: &str) -> GraphError {
    GraphError::new(100, None, message)
}

async fn insights(
    State(state): State<Arc<Mutex<FbState>>>,
    Path((version, node)): Path<(String, String)>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    let mut s = lock(&state);
    s.traces += 1;
    let trace = s.traces;
    match answer(&mut s, &version, &node, &params, &headers) {
        Ok((body, usage)) => {
            let mut response = (StatusCode::OK, axum::Json(body)).into_response();
            add_usage(&mut response, usage);
            response
        }
        Err(refused) => {
            let (error, usage) = *refused;
            let mut response = error.response(trace);
            add_usage(&mut response, usage);
            response
        }
    }
}

fn add_usage(response: &mut Response, usage: Option<Vec<(&'static str, String)>>) {
    for (name, value) in usage.into_iter().flatten() {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, value);
        }
    }
}

type Usage = Option<Vec<(&'static str, String)>>;

fn answer(
    s: &mut FbState,
    version: &str,
    node: &str,
    params: &[(String, String)],
    headers: &HeaderMap,
) -> Result<(Value, Usage), Box<(GraphError, Usage)>> {
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let base = format!(
        "http://{}",
        headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("127.0.0.1")
    );
    let version_ok = version
        .strip_prefix('v')
        .and_then(|v| v.strip_suffix(".0"))
        .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
    if !version_ok {
        return Err(Box::new((
            bad_param(&format!("Unknown path components: /{version}")),
            None,
        )));
    }
    // Token.
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = param("access_token").or(bearer) else {
        return Err(Box::new((
            GraphError::new(
                104,
                None,
                "An access token is required to request this resource.",
            ),
            None,
        )));
    };
    if s.config.expired_tokens.iter().any(|t| t == token) {
        return Err(Box::new((
            GraphError::new(
                190,
                Some(463),
                "Error validating access token: Session has expired on Tuesday, 01-Jul-25 10:00:00 PDT. The current time is Wednesday, 02-Jul-25 10:00:00 PDT.",
            ),
            None,
        )));
    }
    if !s.config.access_tokens.iter().any(|t| t == token) {
        return Err(Box::new((
            GraphError::new(
                190,
                None,
                "Invalid OAuth access token - Cannot parse access token",
            ),
            None,
        )));
    }
    let account_id = node.strip_prefix("act_").unwrap_or_default().to_owned();
    let Some(account) = s.data.account(&account_id).cloned() else {
        let mut error = GraphError::new(
            100,
            Some(33),
            &format!(
                "Unsupported get request. Object with ID '{node}' does not exist, cannot be loaded due to missing permissions, or does not support this operation. Please read the Graph API documentation at https://developers.facebook.com/docs/graph-api"
            ),
        );
        error.error_type = "GraphMethodException".to_owned();
        return Err(Box::new((error, None)));
    };

    // Throttling: count the call, then refuse if the app or the account is blocked.
    let usage = throttle(s, &account.id);
    if let Err(error) = usage.1 {
        s.rate_limit_hits += 1;
        return Err(Box::new((error, Some(usage.0))));
    }
    let usage = Some(usage.0);
    if let Some(error) = s.queued_errors.pop_front() {
        return Err(Box::new((error, usage)));
    }
    if param("after").is_some()
        && let Some(error) = s.queued_page_errors.pop_front()
    {
        return Err(Box::new((error, usage)));
    }

    let fail = |message: &str| Err(Box::new((bad_param(message), usage.clone())));
    match param("level") {
        Some("campaign") => {}
        Some(level @ ("account" | "adset" | "ad")) => {
            return fail(&format!(
                "(simulator) level={level} is not simulated; use level=campaign"
            ));
        }
        Some(_) => return fail("(#100) param level must be one of {account, ad, adset, campaign}"),
        None => return fail("(simulator) only level=campaign is simulated; pass level=campaign"),
    }
    let known: Vec<String> = serde_json::from_str::<Value>(INSIGHTS_FIELDS)
        .ok()
        .and_then(|v| v.get("fields").cloned())
        .and_then(|f| f.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|f| f.get("name").and_then(Value::as_str).map(str::to_owned))
        .collect();
    let fields: Vec<String> = match param("fields") {
        Some(list) => list
            .split(',')
            .map(|f| f.trim().to_owned())
            .filter(|f| !f.is_empty())
            .collect(),
        None => vec!["impressions".to_owned(), "spend".to_owned()],
    };
    if let Some(bad) = fields.iter().find(|f| !known.contains(f)) {
        return fail(&format!(
            "(#100) {bad} is not valid for fields param. please check https://developers.facebook.com/docs/marketing-api/reference/ads-insights/ for all valid values"
        ));
    }
    let (since, until) = match (param("time_range"), param("date_preset")) {
        (Some(range), _) => {
            let parsed: Option<(NaiveDate, NaiveDate)> =
                serde_json::from_str::<Value>(range).ok().and_then(|v| {
                    let date = |k: &str| v.get(k)?.as_str()?.parse::<NaiveDate>().ok();
                    Some((date("since")?, date("until")?))
                });
            match parsed {
                Some((since, until)) if since <= until => (since, until),
                Some(_) => return fail("(#100) time_range: since must be on or before until"),
                None => {
                    return fail(
                        "(#100) param time_range must be a JSON object {\"since\":\"YYYY-MM-DD\",\"until\":\"YYYY-MM-DD\"}",
                    );
                }
            }
        }
        (None, preset) => match preset_range(preset.unwrap_or("last_30d"), today(&s.config)) {
            Some(range) => range,
            None => {
                return fail(
                    "(#100) date_preset is not one of the simulated presets (today, yesterday, last_Nd, this_month, last_month)",
                );
            }
        },
    };
    let days = (until - since).num_days() + 1;
    if s.config
        .max_days_per_request
        .is_some_and(|max| days > i64::from(max))
    {
        let mut error = GraphError::new(
            100,
            Some(1487534),
            "Please reduce the amount of data you're asking for, then retry your request",
        );
        error.user_title = Some("Too much data requested".to_owned());
        return Err(Box::new((error, usage)));
    }
    let increment = match param("time_increment") {
        None | Some("all_days") => None,
        Some(n) => match n.parse::<u64>() {
            Ok(n) if (1..=90).contains(&n) => Some(n),
            _ => {
                return fail(
                    "(#100) param time_increment must be 'monthly', 'all_days' or an integer between 1 and 90 (monthly is not simulated)",
                );
            }
        },
    };
    let limit = match param("limit").map(str::parse::<usize>) {
        None => s.config.default_limit,
        Some(Ok(n)) if n >= 1 => n.min(s.config.max_limit),
        Some(_) => return fail("(#100) param limit must be a positive integer"),
    };
    let start = match param("after") {
        None => 0,
        Some(cursor) => match decode_cursor(cursor) {
            Some(last) => last + 1,
            None => return fail("(#100) Invalid cursor"),
        },
    };

    let rows = s.data.rows(&account.id, since, until, increment);
    let page: Vec<Value> = rows
        .iter()
        .skip(start)
        .take(limit)
        .map(|r| r.to_graph_json(&fields, &account))
        .collect();
    let mut body = json!({ "data": page });
    if !page.is_empty() {
        let last = start + page.len() - 1;
        let mut paging =
            json!({"cursors": {"before": encode_cursor(start), "after": encode_cursor(last)}});
        if last + 1 < rows.len() {
            paging["next"] = json!(next_url(&base, version, node, params, &encode_cursor(last)));
        }
        body["paging"] = paging;
    }
    Ok((body, usage))
}

/// The absolute `paging.next` link: every parameter of this request (token included, as Graph
/// does) with `after` replaced.
fn next_url(
    base: &str,
    version: &str,
    node: &str,
    params: &[(String, String)],
    after: &str,
) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in params.iter().filter(|(k, _)| k != "after") {
        query.append_pair(k, v);
    }
    query.append_pair("after", after);
    format!("{base}/{version}/{node}/insights?{}", query.finish())
}

fn encode_cursor(index: usize) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("sim:{index}"))
}

fn decode_cursor(cursor: &str) -> Option<usize> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(cursor)
        .ok()?;
    String::from_utf8(raw)
        .ok()?
        .strip_prefix("sim:")?
        .parse()
        .ok()
}

/// `date_preset` ranges; the `last_Nd` presets end yesterday (\[I\]).
fn preset_range(preset: &str, today: NaiveDate) -> Option<(NaiveDate, NaiveDate)> {
    let yesterday = today.pred_opt()?;
    let first_of_month = today.with_day(1)?;
    match preset {
        "today" => Some((today, today)),
        "yesterday" => Some((yesterday, yesterday)),
        "this_month" => Some((first_of_month, today)),
        "last_month" => {
            let end = first_of_month.pred_opt()?;
            Some((end.with_day(1)?, end))
        }
        other => {
            let n: u64 = other
                .strip_prefix("last_")?
                .strip_suffix('d')?
                .parse()
                .ok()?;
            if ![3, 7, 14, 28, 30, 90].contains(&n) {
                return None;
            }
            Some((today.checked_sub_days(Days::new(n))?, yesterday))
        }
    }
}

/// Counts one call for the account and the app; returns the usage headers and, if blocked, the
/// throttle error.
fn throttle(
    s: &mut FbState,
    account_id: &str,
) -> (Vec<(&'static str, String)>, Result<(), GraphError>) {
    let now = Instant::now();
    let config = s.config.clone();
    let tick = |w: &mut Window, limit: u32| -> bool {
        if w.blocked_until.is_some_and(|until| now >= until) {
            *w = Window::new(now);
        }
        if w.blocked_until.is_none() && now.duration_since(w.started) >= config.window {
            *w = Window::new(now);
        }
        w.calls += 1;
        if w.blocked_until.is_none() && w.calls > limit {
            w.blocked_until = Some(now + config.block_for);
        }
        w.blocked_until.is_some()
    };
    let app = s.app.get_or_insert_with(|| Window::new(now));
    let app_blocked = tick(app, config.app_calls_per_window);
    let app_pct = pct(app, config.app_calls_per_window);
    let account = s
        .accounts
        .entry(account_id.to_owned())
        .or_insert_with(|| Window::new(now));
    let account_blocked = tick(account, config.account_calls_per_window);
    let account_pct = pct(account, config.account_calls_per_window);
    let regain = account
        .blocked_until
        .map(|until| until.saturating_duration_since(now).as_secs().div_ceil(60))
        .unwrap_or(0);
    let reset = account
        .blocked_until
        .unwrap_or(account.started + config.window)
        .saturating_duration_since(now)
        .as_secs();
    let tier = &config.access_tier;
    let headers = vec![
        (
            "x-business-use-case-usage",
            json!({ account_id: [{
                "type": "ads_insights",
                "call_count": account_pct,
                "total_cputime": account_pct / 3,
                "total_time": account_pct / 2,
                "estimated_time_to_regain_access": regain,
                "ads_api_access_tier": tier,
            }]})
            .to_string(),
        ),
        (
            "x-ad-account-usage",
            json!({"acc_id_util_pct": account_pct, "reset_time_duration": reset, "ads_api_access_tier": tier}).to_string(),
        ),
        (
            "x-fb-ads-insights-throttle",
            json!({"app_id_util_pct": app_pct, "acc_id_util_pct": account_pct, "ads_api_access_tier": tier}).to_string(),
        ),
    ];
    let verdict = if app_blocked {
        Err(GraphError::new(
            4,
            Some(1504022),
            "There have been too many calls from this app. Wait a bit and try again.",
        )
        .transient())
    } else if account_blocked {
        Err(config.account_throttle.error())
    } else {
        Ok(())
    };
    (headers, verdict)
}

fn pct(w: &Window, limit: u32) -> u64 {
    if w.blocked_until.is_some() {
        return 100;
    }
    (u64::from(w.calls) * 100 / u64::from(limit.max(1))).min(100)
}
