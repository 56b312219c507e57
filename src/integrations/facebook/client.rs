//! The insights client: one request per page of `GET /{version}/act_{id}/insights` at campaign
//! level with one row per day, cursor paging with `after`. Base URL, API version and timeouts are
//! configurable (the simulator in tests). The token goes as the `access_token` parameter and is
//! never logged; neither is any URL (Graph's `paging.next` carries the token too), which is why
//! transport errors are stripped of their URL.
//!
//! Every answer's `X-Ad-Account-Usage` and `X-Business-Use-Case-Usage` headers are read into the
//! [`AccountUsage`] of the last call, so the caller can slow down before Graph throttles it.

use std::sync::Mutex;
use std::time::Duration;

use chrono::NaiveDate;
use reqwest::header::HeaderMap;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::error::FacebookError;
use super::types::{InsightRow, InsightsBody};

const FIELDS: &str = "campaign_id,campaign_name,impressions,clicks,spend,reach,ctr,cpc,actions";

/// What the usage headers of the last answer said about the ad account.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct AccountUsage {
    /// The highest utilisation percentage reported (`acc_id_util_pct`, and each BUC
    /// `call_count` / `total_cputime` / `total_time`).
    pub pct: f64,
    /// When the usage window resets (`reset_time_duration`).
    pub reset_in: Option<Duration>,
    /// When a blocked account regains access (`estimated_time_to_regain_access`, minutes).
    pub regain_in: Option<Duration>,
}

impl AccountUsage {
    /// How long to wait before the usage would be low again: Graph's regain estimate, else the
    /// window reset, else `fallback`.
    pub fn wait(&self, fallback: Duration) -> Duration {
        self.regain_in.or(self.reset_in).unwrap_or(fallback)
    }
}

/// One page of rows and the cursor of the next one (None: the last page).
#[derive(Debug)]
pub struct InsightsPage {
    pub rows: Vec<InsightRow>,
    pub after: Option<String>,
}

pub struct FacebookClient {
    http: reqwest::Client,
    base: url::Url,
    version: String,
    token: SecretString,
    page_size: u32,
    usage: Mutex<Option<AccountUsage>>,
}

impl std::fmt::Debug for FacebookClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FacebookClient")
            .field("base", &self.base.as_str())
            .field("version", &self.version)
            .finish()
    }
}

impl FacebookClient {
    pub fn new(
        base: &str,
        version: &str,
        token: SecretString,
        page_size: u32,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<Self, FacebookError> {
        let base = url::Url::parse(base)
            .map_err(|e| FacebookError::Permanent(format!("invalid facebook.api_base: {e}")))?;
        let http = crate::tls::http_client_builder()
            .connect_timeout(connect_timeout)
            .timeout(request_timeout)
            .build()
            .map_err(|e| FacebookError::Permanent(format!("building the HTTP client: {e}")))?;
        Ok(FacebookClient {
            http,
            base,
            version: version.to_owned(),
            token,
            page_size,
            usage: Mutex::new(None),
        })
    }

    /// The ad-account usage the last answer reported, if it carried the headers.
    pub fn last_usage(&self) -> Option<AccountUsage> {
        *self.usage.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One page of daily campaign rows of `account` (without `act_`) for `since..=until`.
    pub async fn insights_page(
        &self,
        account: &str,
        since: NaiveDate,
        until: NaiveDate,
        after: Option<&str>,
    ) -> Result<InsightsPage, FacebookError> {
        let result = self.insights_page_once(account, since, until, after).await;
        crate::telemetry::provider_call("facebook", result.as_ref().err().map(error_class));
        result
    }

    async fn insights_page_once(
        &self,
        account: &str,
        since: NaiveDate,
        until: NaiveDate,
        after: Option<&str>,
    ) -> Result<InsightsPage, FacebookError> {
        let mut url = self
            .base
            .join(&format!("{}/act_{account}/insights", self.version))
            .map_err(|e| FacebookError::Permanent(e.to_string()))?;
        {
            let range = serde_json::json!({"since": since.to_string(), "until": until.to_string()});
            let mut query = url.query_pairs_mut();
            query
                .append_pair("level", "campaign")
                .append_pair("fields", FIELDS)
                .append_pair("time_increment", "1")
                .append_pair("time_range", &range.to_string())
                .append_pair("limit", &self.page_size.to_string());
            if let Some(cursor) = after {
                query.append_pair("after", cursor);
            }
            query.append_pair("access_token", self.token.expose_secret());
        }
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| FacebookError::Transient(e.without_url().to_string()))?;
        let status = response.status().as_u16();
        let usage = read_usage(response.headers(), account);
        *self.usage.lock().unwrap_or_else(|e| e.into_inner()) = usage;
        // A connection cut mid-body shows here.
        let bytes = response
            .bytes()
            .await
            .map_err(|e| FacebookError::Transient(e.without_url().to_string()))?;
        if (200..300).contains(&status) {
            let body: InsightsBody = serde_json::from_slice(&bytes)
                .map_err(|e| FacebookError::Transient(format!("unreadable insights page: {e}")))?;
            let rows = body
                .data
                .into_iter()
                .map(InsightRow::try_from)
                .collect::<Result<Vec<_>, _>>()?;
            let after = body
                .paging
                .filter(|p| p.next.is_some())
                .and_then(|p| p.cursors)
                .and_then(|c| c.after);
            return Ok(InsightsPage { rows, after });
        }
        Err(classify(status, &bytes, usage))
    }
}

/// The `class` label of `baw_provider_errors_total`.
fn error_class(error: &FacebookError) -> &'static str {
    match error {
        FacebookError::NotConfigured => "not_configured",
        FacebookError::Token { .. } => "token",
        FacebookError::Throttled { .. } => "throttled",
        FacebookError::TooMuchData { .. } => "too_much_data",
        FacebookError::Transient(_) => "transient",
        FacebookError::Permanent(_) => "permanent",
    }
}

fn classify(status: u16, body: &[u8], usage: Option<AccountUsage>) -> FacebookError {
    let wait = usage.and_then(|u| u.regain_in.or(u.reset_in));
    let error = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("error").cloned());
    match error {
        Some(e) => FacebookError::from_graph(
            status,
            e["code"].as_i64().unwrap_or_default(),
            e["error_subcode"].as_i64(),
            e["is_transient"].as_bool().unwrap_or(false),
            e["message"].as_str().unwrap_or_default(),
            wait,
        ),
        None if status >= 500 || status == 429 => {
            FacebookError::Transient(format!("HTTP {status}"))
        }
        None => FacebookError::Permanent(format!("HTTP {status} without a Graph error")),
    }
}

/// The ad account's utilisation from `X-Ad-Account-Usage` and `X-Business-Use-Case-Usage`
/// (entries of this account only); None when neither header is there or readable.
fn read_usage(headers: &HeaderMap, account: &str) -> Option<AccountUsage> {
    let json = |name: &str| -> Option<Value> {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| serde_json::from_str(v).ok())
    };
    let mut usage = AccountUsage::default();
    let mut seen = false;
    if let Some(acc) = json("x-ad-account-usage") {
        seen = true;
        usage.pct = usage
            .pct
            .max(acc["acc_id_util_pct"].as_f64().unwrap_or(0.0));
        usage.reset_in = acc["reset_time_duration"]
            .as_f64()
            .filter(|s| *s > 0.0)
            .and_then(crate::integrations::provider_wait);
    }
    if let Some(buc) = json("x-business-use-case-usage") {
        let entries = buc
            .get(account)
            .or_else(|| buc.get(format!("act_{account}")))
            .and_then(Value::as_array);
        for entry in entries.into_iter().flatten() {
            seen = true;
            for key in ["call_count", "total_cputime", "total_time"] {
                usage.pct = usage.pct.max(entry[key].as_f64().unwrap_or(0.0));
            }
            let minutes = entry["estimated_time_to_regain_access"]
                .as_f64()
                .unwrap_or(0.0);
            if minutes > 0.0
                && let Some(regain) = crate::integrations::provider_wait(minutes * 60.0)
            {
                usage.regain_in = Some(usage.regain_in.map_or(regain, |r| r.max(regain)));
            }
        }
    }
    seen.then_some(usage)
}
