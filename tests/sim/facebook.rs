//! Facebook Graph insights: rows and paging as the generator predicts, metrics as strings,
//! throttling with the usage headers, token and too-much-data errors, revised days.

use baseaim_worker::sim::facebook::{
    AccountThrottle, FacebookConfig, FacebookSim, GraphError, InsightRow,
};
use chrono::NaiveDate;
use serde_json::Value;

use crate::client;

const FIELDS: &str = "campaign_id,campaign_name,impressions,clicks,spend,reach,ctr,cpc,actions";

fn day(s: &str) -> NaiveDate {
    s.parse().expect("date")
}

async fn start(config: FacebookConfig) -> FacebookSim {
    FacebookSim::start(config)
        .await
        .expect("start facebook sim")
}

fn insights_url(sim: &FacebookSim, account: &str, extra: &[(&str, &str)]) -> String {
    let mut url =
        url::Url::parse(&format!("{}/v22.0/act_{account}/insights", sim.base_url())).expect("url");
    url.query_pairs_mut()
        .append_pair("level", "campaign")
        .append_pair("fields", FIELDS)
        .append_pair("time_increment", "1")
        .append_pair("access_token", &sim.access_token());
    for (k, v) in extra {
        url.query_pairs_mut().append_pair(k, v);
    }
    url.to_string()
}

async fn get_json(url: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    let response = client().get(url).send().await.expect("send");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.json().await.expect("json"))
}

/// Follows `paging.next` from `url`; returns every row and the number of pages.
async fn fetch_all(url: &str) -> (Vec<Value>, usize) {
    let mut rows = Vec::new();
    let mut next = Some(url.to_owned());
    let mut pages = 0;
    while let Some(url) = next {
        let (status, _, body) = get_json(&url).await;
        assert_eq!(status, 200, "{body}");
        rows.extend(body["data"].as_array().expect("data").iter().cloned());
        next = body["paging"]["next"].as_str().map(str::to_owned);
        pages += 1;
        assert!(pages < 100, "paging does not end");
    }
    (rows, pages)
}

fn key(row: &Value) -> (String, String) {
    (
        row["date_start"].as_str().expect("date_start").to_owned(),
        row["campaign_id"].as_str().expect("campaign_id").to_owned(),
    )
}

fn expected_key(row: &InsightRow) -> (String, String) {
    (row.date_start.to_string(), row.campaign_id.clone())
}

#[tokio::test]
async fn paging_returns_exactly_the_generated_daily_rows_with_metrics_as_strings() {
    let sim = start(FacebookConfig::default()).await;
    let account = sim.accounts()[0].id.clone();
    let range = r#"{"since":"2025-03-01","until":"2025-03-10"}"#;
    let (rows, pages) = fetch_all(&insights_url(
        &sim,
        &account,
        &[("time_range", range), ("limit", "7")],
    ))
    .await;

    let expected = sim
        .data()
        .daily_rows(&account, day("2025-03-01"), day("2025-03-10"));
    assert!(
        expected.len() > 14,
        "the generator should give several pages"
    );
    assert_eq!(pages, expected.len().div_ceil(7));
    assert_eq!(
        rows.iter().map(key).collect::<Vec<_>>(),
        expected.iter().map(expected_key).collect::<Vec<_>>()
    );
    for (row, want) in rows.iter().zip(&expected) {
        assert_eq!(row["impressions"], want.impressions.to_string());
        assert_eq!(row["spend"], want.spend());
        assert_eq!(row["date_stop"], row["date_start"]);
        for metric in ["impressions", "clicks", "spend", "reach", "ctr"] {
            assert!(row[metric].is_string(), "{metric} is not a string: {row}");
        }
        if let Some(actions) = row["actions"].as_array() {
            assert!(
                actions
                    .iter()
                    .all(|a| a["action_type"].is_string() && a["value"].is_string())
            );
        }
    }
}

#[tokio::test]
async fn a_page_carries_cursors_and_the_last_page_has_no_next() {
    let sim = start(FacebookConfig::default()).await;
    let account = sim.accounts()[0].id.clone();
    let range = r#"{"since":"2025-03-01","until":"2025-03-02"}"#;
    let (_, _, first) = get_json(&insights_url(
        &sim,
        &account,
        &[("time_range", range), ("limit", "2")],
    ))
    .await;
    assert!(first["paging"]["cursors"]["before"].is_string());
    let after = first["paging"]["cursors"]["after"]
        .as_str()
        .expect("after")
        .to_owned();
    let next = first["paging"]["next"].as_str().expect("next");
    assert!(next.starts_with(sim.base_url()));
    assert!(next.contains(&format!("after={}", urlencode(&after))));

    let (_, _, whole) = get_json(&insights_url(
        &sim,
        &account,
        &[("time_range", range), ("limit", "500")],
    ))
    .await;
    assert!(whole["paging"]["next"].is_null());
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn date_preset_last_7d_ends_yesterday() {
    let sim = start(FacebookConfig {
        today: Some(day("2025-06-15")),
        ..FacebookConfig::default()
    })
    .await;
    let account = sim.accounts()[1].id.clone();
    let (rows, _) = fetch_all(&insights_url(
        &sim,
        &account,
        &[("date_preset", "last_7d"), ("limit", "500")],
    ))
    .await;
    let dates: std::collections::BTreeSet<String> = rows
        .iter()
        .map(|r| r["date_start"].as_str().expect("date").to_owned())
        .collect();
    assert_eq!(dates.first().map(String::as_str), Some("2025-06-08"));
    assert_eq!(dates.last().map(String::as_str), Some("2025-06-14"));
}

#[tokio::test]
async fn a_revised_day_changes_only_that_day() {
    let sim = start(FacebookConfig::default()).await;
    let account = sim.accounts()[0].id.clone();
    let range = r#"{"since":"2025-04-01","until":"2025-04-02"}"#;
    let url = insights_url(&sim, &account, &[("time_range", range), ("limit", "500")]);
    let (before, _) = fetch_all(&url).await;
    sim.revise_day(&account, day("2025-04-02"));
    let (after, _) = fetch_all(&url).await;

    let on = |rows: &[Value], d: &str| -> Vec<Value> {
        rows.iter()
            .filter(|r| r["date_start"] == d)
            .cloned()
            .collect()
    };
    assert_eq!(on(&before, "2025-04-01"), on(&after, "2025-04-01"));
    assert_ne!(on(&before, "2025-04-02"), on(&after, "2025-04-02"));
    // The test's copy of the data predicts the revised numbers too.
    let predicted = sim
        .data()
        .daily_rows(&account, day("2025-04-02"), day("2025-04-02"));
    let got = on(&after, "2025-04-02");
    assert_eq!(got.len(), predicted.len());
    for (row, want) in got.iter().zip(&predicted) {
        assert_eq!(row["clicks"], want.clicks.to_string());
    }
}

#[tokio::test]
async fn an_account_over_its_limit_is_throttled_with_regain_time_and_others_are_not() {
    let sim = start(FacebookConfig {
        account_calls_per_window: 3,
        ..FacebookConfig::default()
    })
    .await;
    let accounts = sim.accounts();
    let busy = insights_url(&sim, &accounts[0].id, &[("date_preset", "yesterday")]);

    let mut last = None;
    for _ in 0..3 {
        let (status, headers, _) = get_json(&busy).await;
        assert_eq!(status, 200);
        last = Some(headers);
    }
    let usage: Value = serde_json::from_str(
        last.expect("headers")["x-business-use-case-usage"]
            .to_str()
            .expect("ascii"),
    )
    .expect("usage json");
    assert_eq!(usage[&accounts[0].id][0]["call_count"], 100);
    assert_eq!(
        usage[&accounts[0].id][0]["estimated_time_to_regain_access"],
        0
    );

    let (status, headers, body) = get_json(&busy).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], 80000);
    assert_eq!(body["error"]["is_transient"], true);
    assert!(body["error"]["fbtrace_id"].is_string());
    let usage: Value = serde_json::from_str(
        headers["x-business-use-case-usage"]
            .to_str()
            .expect("ascii"),
    )
    .expect("usage json");
    assert_eq!(
        usage[&accounts[0].id][0]["estimated_time_to_regain_access"],
        5
    );
    let account_usage: Value =
        serde_json::from_str(headers["x-ad-account-usage"].to_str().expect("ascii")).expect("json");
    assert_eq!(account_usage["acc_id_util_pct"], 100);
    assert!(account_usage["reset_time_duration"].as_u64().expect("secs") > 0);
    assert_eq!(sim.rate_limit_hits(), 1);

    let (status, _, _) = get_json(&insights_url(
        &sim,
        &accounts[1].id,
        &[("date_preset", "yesterday")],
    ))
    .await;
    assert_eq!(status, 200, "another account is not throttled");
}

#[tokio::test]
async fn the_throttle_error_code_is_configurable() {
    let sim = start(FacebookConfig {
        account_calls_per_window: 1,
        account_throttle: AccountThrottle::AdAccountCalls,
        ..FacebookConfig::default()
    })
    .await;
    let url = insights_url(&sim, &sim.accounts()[0].id, &[("date_preset", "yesterday")]);
    get_json(&url).await;
    let (_, _, body) = get_json(&url).await;
    assert_eq!(body["error"]["code"], 613);
    assert_eq!(body["error"]["error_subcode"], 1487742);
}

#[tokio::test]
async fn the_app_limit_answers_code_4_across_accounts() {
    let sim = start(FacebookConfig {
        app_calls_per_window: 2,
        ..FacebookConfig::default()
    })
    .await;
    let accounts = sim.accounts();
    for account in &accounts[..2] {
        let (status, _, _) = get_json(&insights_url(
            &sim,
            &account.id,
            &[("date_preset", "yesterday")],
        ))
        .await;
        assert_eq!(status, 200);
    }
    let (status, _, body) = get_json(&insights_url(
        &sim,
        &accounts[2].id,
        &[("date_preset", "yesterday")],
    ))
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], 4);
}

#[tokio::test]
async fn token_errors_use_code_190_and_a_missing_token_104() {
    let sim = start(FacebookConfig {
        expired_tokens: vec!["old-token".into()],
        ..FacebookConfig::default()
    })
    .await;
    let account = sim.accounts()[0].id.clone();
    let base = format!(
        "{}/v22.0/act_{account}/insights?level=campaign",
        sim.base_url()
    );

    let (status, _, body) = get_json(&format!("{base}&access_token=garbage")).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], 190);
    assert_eq!(body["error"]["type"], "OAuthException");
    assert!(body["error"]["error_subcode"].is_null());

    let (_, _, body) = get_json(&format!("{base}&access_token=old-token")).await;
    assert_eq!(body["error"]["code"], 190);
    assert_eq!(body["error"]["error_subcode"], 463);

    let (_, _, body) = get_json(&base).await;
    assert_eq!(body["error"]["code"], 104);

    // The token also works as a bearer header.
    let response = client()
        .get(format!("{base}&date_preset=yesterday"))
        .bearer_auth(sim.access_token())
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn too_long_a_range_is_too_much_data() {
    let sim = start(FacebookConfig {
        max_days_per_request: Some(31),
        ..FacebookConfig::default()
    })
    .await;
    let account = sim.accounts()[0].id.clone();
    let ok = r#"{"since":"2025-01-01","until":"2025-01-31"}"#;
    let too_long = r#"{"since":"2025-01-01","until":"2025-02-01"}"#;
    let (status, _, _) = get_json(&insights_url(&sim, &account, &[("time_range", ok)])).await;
    assert_eq!(status, 200);
    let (status, _, body) =
        get_json(&insights_url(&sim, &account, &[("time_range", too_long)])).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], 100);
    assert_eq!(body["error"]["error_subcode"], 1487534);
}

#[tokio::test]
async fn unknown_fields_accounts_and_versions_are_graph_errors() {
    let sim = start(FacebookConfig::default()).await;
    let account = sim.accounts()[0].id.clone();
    let token = sim.access_token();

    let (_, _, body) = get_json(&format!(
        "{}/v22.0/act_{account}/insights?level=campaign&fields=impressions,clikcs&access_token={token}",
        sim.base_url()
    ))
    .await;
    assert_eq!(body["error"]["code"], 100);
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("clikcs")
    );

    let (_, _, body) = get_json(&format!(
        "{}/v22.0/act_999/insights?level=campaign&access_token={token}",
        sim.base_url()
    ))
    .await;
    assert_eq!(body["error"]["code"], 100);
    assert_eq!(body["error"]["error_subcode"], 33);

    // Any v{N}.0 is accepted.
    let (status, _, _) = get_json(&format!(
        "{}/v25.0/act_{account}/insights?level=campaign&date_preset=yesterday&access_token={token}",
        sim.base_url()
    ))
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_pushed_error_answers_the_next_request_only() {
    let sim = start(FacebookConfig::default()).await;
    let url = insights_url(&sim, &sim.accounts()[0].id, &[("date_preset", "yesterday")]);
    sim.push_error(GraphError::sync_timeout());
    let (_, _, body) = get_json(&url).await;
    assert_eq!(body["error"]["code"], 100);
    assert_eq!(body["error"]["error_subcode"], 1504018);
    let (status, _, _) = get_json(&url).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn empty_days_come_back_as_zero_rows_when_not_omitted() {
    let sim = start(FacebookConfig {
        data: baseaim_worker::sim::facebook::FacebookDataSpec {
            omit_empty_days: false,
            ..Default::default()
        },
        ..FacebookConfig::default()
    })
    .await;
    let account = sim.accounts()[0].clone();
    let range = r#"{"since":"2025-03-01","until":"2025-03-31"}"#;
    let (rows, _) = fetch_all(&insights_url(
        &sim,
        &account.id,
        &[("time_range", range), ("limit", "500")],
    ))
    .await;
    // Every campaign has started by March (they start within 20 days of 2025-01-01).
    assert_eq!(rows.len(), 31 * account.campaigns.len());
    let zeros: Vec<&Value> = rows.iter().filter(|r| r["impressions"] == "0").collect();
    assert!(!zeros.is_empty(), "some days have no delivery");
    assert!(
        zeros
            .iter()
            .all(|r| r["spend"] == "0.00" && r.get("cpc").is_none())
    );
}
