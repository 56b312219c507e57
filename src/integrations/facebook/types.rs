//! Graph's insights answer. Every metric is a JSON string; the numbers are checked here and
//! kept as strings so PostgreSQL parses them exactly into `numeric` (no float money).

use chrono::NaiveDate;
use serde::Deserialize;

use super::error::FacebookError;

#[derive(Debug, Deserialize)]
pub(crate) struct InsightsBody {
    #[serde(default)]
    pub data: Vec<RawRow>,
    #[serde(default)]
    pub paging: Option<Paging>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Paging {
    #[serde(default)]
    pub cursors: Option<Cursors>,
    /// Present while more rows remain. Carries the token: never logged.
    #[serde(default)]
    pub next: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Cursors {
    #[serde(default)]
    pub after: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RawRow {
    pub campaign_id: String,
    #[serde(default)]
    pub campaign_name: String,
    pub date_start: NaiveDate,
    #[serde(default)]
    pub impressions: Option<String>,
    #[serde(default)]
    pub clicks: Option<String>,
    #[serde(default)]
    pub spend: Option<String>,
    #[serde(default)]
    pub reach: Option<String>,
    #[serde(default)]
    pub ctr: Option<String>,
    #[serde(default)]
    pub cpc: Option<String>,
    #[serde(default)]
    pub actions: Option<serde_json::Value>,
}

/// One campaign-day, checked. Decimals stay the exact strings Graph sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InsightRow {
    pub campaign_id: String,
    pub campaign_name: String,
    pub date: NaiveDate,
    pub impressions: i64,
    pub clicks: i64,
    pub spend: String,
    pub reach: i64,
    pub ctr: String,
    /// Absent without clicks.
    pub cpc: Option<String>,
    /// The `actions` list as JSON text (`[]` when absent).
    pub actions: String,
}

impl TryFrom<RawRow> for InsightRow {
    type Error = FacebookError;

    fn try_from(raw: RawRow) -> Result<Self, Self::Error> {
        let count = |name: &str, v: &Option<String>| -> Result<i64, FacebookError> {
            match v.as_deref() {
                None => Ok(0),
                Some(s) => s.parse::<i64>().map_err(|_| bad(name, s)),
            }
        };
        let decimal = |name: &str, v: Option<String>| -> Result<Option<String>, FacebookError> {
            match v {
                None => Ok(None),
                Some(s) if is_decimal(&s) => Ok(Some(s)),
                Some(s) => Err(bad(name, &s)),
            }
        };
        Ok(InsightRow {
            impressions: count("impressions", &raw.impressions)?,
            clicks: count("clicks", &raw.clicks)?,
            reach: count("reach", &raw.reach)?,
            spend: decimal("spend", raw.spend)?.unwrap_or_else(|| "0".into()),
            ctr: decimal("ctr", raw.ctr)?.unwrap_or_else(|| "0".into()),
            cpc: decimal("cpc", raw.cpc)?,
            actions: raw
                .actions
                .unwrap_or_else(|| serde_json::Value::Array(Vec::new()))
                .to_string(),
            campaign_id: raw.campaign_id,
            campaign_name: raw.campaign_name,
            date: raw.date_start,
        })
    }
}

fn bad(field: &str, value: &str) -> FacebookError {
    let value: String = value.chars().take(40).collect();
    FacebookError::Permanent(format!(
        "unreadable `{field}` in an insights row: {value:?}"
    ))
}

/// `123`, `12.34`, `-0.5`: what PostgreSQL's `numeric` input accepts, without exponents.
fn is_decimal(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    let mut parts = digits.splitn(2, '.');
    let whole = parts.next().unwrap_or_default();
    let frac = parts.next();
    let ok = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    !whole.is_empty() && ok(whole) && frac.is_none_or(|f| !f.is_empty() && ok(f))
}

#[cfg(test)]
mod tests {
    use super::is_decimal;

    #[test]
    fn decimals_are_plain_digits_with_one_point() {
        for good in ["0", "12.34", "4.538088", "-1.5"] {
            assert!(is_decimal(good), "{good}");
        }
        for bad in ["", ".5", "1.", "1e5", "NaN", "1.2.3", "12,34"] {
            assert!(!is_decimal(bad), "{bad}");
        }
    }
}
