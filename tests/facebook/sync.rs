//! What a user of the dashboard would notice: the stored metrics equal what Facebook serves.

use std::time::Duration;

use baseaim_worker::sim::facebook::{FacebookConfig, FacebookDataSpec, GraphError};
use baseaim_worker::sim::fault::FaultConfig;
use chrono::{Days, Utc};

use crate::Harness;

fn sim(accounts: usize) -> FacebookConfig {
    FacebookConfig {
        data: FacebookDataSpec {
            seed: 7,
            accounts,
            campaigns_per_account: 4,
            ..FacebookDataSpec::default()
        },
        ..FacebookConfig::default()
    }
}

async fn runs(h: &Harness) -> Vec<(String, String, i64, i32, Option<String>)> {
    sqlx::query_as(
        "select client_id, outcome, rows, calls, error from facebook_sync_runs order by id",
    )
    .fetch_all(h.pool())
    .await
    .unwrap()
}

#[tokio::test]
async fn a_first_sync_stores_90_days_exactly_as_served_across_pages_and_halved_ranges() {
    let mut h = Harness::start(
        FacebookConfig {
            // 90 days is too much for one request: the sync halves the range.
            max_days_per_request: Some(30),
            ..sim(2)
        },
        &[],
    )
    .await;
    h.tick().await;
    h.drain_until_done(3, Duration::ZERO).await;

    for account in h.accounts() {
        let expected = h.expected(&account, 90);
        assert!(expected.len() > 200, "{} rows", expected.len());
        assert_eq!(
            h.stored(&account.id).await,
            expected,
            "account {}",
            account.id
        );
    }
    let synced: i64 = sqlx::query_scalar(
        "select count(*) from clients where facebook_last_sync_at > now() - interval '1 minute'",
    )
    .fetch_one(h.pool())
    .await
    .unwrap();
    assert_eq!(synced, 2);
    let runs = runs(&h).await;
    assert_eq!(runs.len(), 2, "{runs:?}");
    for (_, outcome, rows, calls, error) in &runs {
        assert_eq!(outcome, "ok", "{error:?}");
        assert!(*rows > 200);
        // 40 rows a page, and at least 4 ranges of at most 30 days.
        assert!(*calls >= 7, "{calls} calls");
    }
    for (kind, state, attempt, _) in h.job_states().await {
        assert_eq!((state.as_str(), attempt), ("completed", 1), "{kind}");
    }
}

#[tokio::test]
async fn a_second_sync_changes_nothing_but_synced_at() {
    let mut h = Harness::start(sim(1), &[]).await;
    let account = h.accounts()[0].id.clone();
    h.tick().await;
    h.drain_until_done(3, Duration::ZERO).await;
    let before = h.stored(&account).await;
    let synced_before: Vec<chrono::DateTime<Utc>> = sqlx::query_scalar(
        "select synced_at from campaign_metrics where date >= current_date - 6 order by date, campaign_id",
    )
    .fetch_all(h.pool())
    .await
    .unwrap();

    h.tick().await;
    h.drain_until_done(3, Duration::ZERO).await;

    assert_eq!(h.stored(&account).await, before);
    let synced_after: Vec<chrono::DateTime<Utc>> = sqlx::query_scalar(
        "select synced_at from campaign_metrics where date >= current_date - 6 order by date, campaign_id",
    )
    .fetch_all(h.pool())
    .await
    .unwrap();
    assert!(!synced_after.is_empty());
    assert!(
        synced_after.iter().zip(&synced_before).all(|(a, b)| a > b),
        "the look-back window was re-fetched"
    );
    // The second run fetched only the 7-day look-back.
    let rows: Vec<i64> = sqlx::query_scalar("select rows from facebook_sync_runs order by id")
        .fetch_all(h.pool())
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows[1] <= 7 * 4 && rows[1] > 0, "{rows:?}");
}

#[tokio::test]
async fn a_sync_after_an_outage_longer_than_the_look_back_fetches_every_day_missed() {
    let mut h = Harness::start(sim(1), &[]).await;
    let account = h.accounts()[0].clone();
    // The last good sync was 20 days ago (the token was refused since, say).
    sqlx::query("update clients set facebook_last_sync_at = now() - interval '20 days'")
        .execute(h.pool())
        .await
        .unwrap();
    h.tick().await;
    h.drain_until_done(3, Duration::ZERO).await;
    // From the day before the last sync to today: 22 days, not the 7-day look-back.
    let expected = h.expected(&account, 22);
    let stored = h.stored(&account.id).await;
    assert_eq!(
        stored.first().map(|m| m.date),
        Some(Utc::now().date_naive() - Days::new(21))
    );
    assert_eq!(stored, expected);
}

#[tokio::test]
async fn too_much_data_on_a_later_page_halves_the_range_instead_of_retrying_it() {
    let mut h = Harness::start(sim(1), &[]).await;
    let account = h.accounts()[0].clone();
    // Graph times out on later pages (40 rows a page, 4 campaigns: a range over 10 days has
    // one) nine times in a row: a retry of the same request would meet it nine times too.
    for _ in 0..9 {
        h.sim.push_error_on_a_later_page(GraphError::sync_timeout());
    }
    h.tick().await;
    h.drain_until_done(20, Duration::ZERO).await;
    let jobs = h.job_states().await;
    let sync = jobs
        .iter()
        .find(|j| j.0 == "facebook_sync_account")
        .unwrap();
    assert_eq!((sync.1.as_str(), sync.2), ("completed", 1), "{jobs:?}");
    let refused = h
        .sim
        .calls()
        .all()
        .iter()
        .filter(|c| c.status != 200)
        .count();
    assert_eq!(refused, 9, "every timeout was met");
    assert_eq!(h.stored(&account.id).await, h.expected(&account, 90));
}

#[tokio::test]
async fn a_revised_day_is_updated_by_the_next_sync() {
    let mut h = Harness::start(sim(1), &[]).await;
    let account = h.accounts()[0].clone();
    h.tick().await;
    h.drain_until_done(3, Duration::ZERO).await;
    let before = h.stored(&account.id).await;
    let day = Utc::now().date_naive() - Days::new(2);

    h.sim.revise_day(&account.id, day);
    h.tick().await;
    h.drain_until_done(3, Duration::ZERO).await;

    let after = h.stored(&account.id).await;
    assert_eq!(after, h.expected(&account, 90));
    assert_ne!(after, before);
    let changed: Vec<_> = after
        .iter()
        .filter(|row| !before.contains(row))
        .map(|row| row.date)
        .collect();
    assert!(!changed.is_empty());
    assert!(changed.iter().all(|d| *d == day), "{changed:?}");
}

#[tokio::test]
async fn throttling_mid_sync_finishes_with_the_same_rows_and_no_attempt_spent() {
    let mut h = Harness::start(
        FacebookConfig {
            // A 90-day backfill at 40 rows a page takes about 9 calls: blocked after every 3.
            account_calls_per_window: 3,
            block_for: Duration::from_millis(500),
            ..sim(1)
        },
        &[],
    )
    .await;
    let account = h.accounts()[0].clone();
    h.tick().await;
    h.drain_until_done(40, Duration::from_millis(600)).await;

    assert_eq!(h.stored(&account.id).await, h.expected(&account, 90));
    assert!(h.sim.rate_limit_hits() > 0, "the simulator never throttled");
    for (kind, state, attempt, _) in h.job_states().await {
        assert_eq!((state.as_str(), attempt), ("completed", 1), "{kind}");
    }
    let outcomes: Vec<String> = runs(&h).await.into_iter().map(|r| r.1).collect();
    assert!(outcomes.iter().any(|o| o == "snoozed"), "{outcomes:?}");
    assert_eq!(outcomes.last().map(String::as_str), Some("ok"));
    let errors: Option<serde_json::Value> =
        sqlx::query_scalar("select errors from jobs where kind = 'facebook_sync_account'")
            .fetch_one(h.pool())
            .await
            .unwrap();
    assert!(
        errors
            .as_ref()
            .is_none_or(|e| e.as_array().is_none_or(Vec::is_empty)),
        "{errors:?}"
    );
}

#[tokio::test]
async fn a_refused_token_on_one_client_does_not_stop_the_others() {
    let mut h = Harness::start(sim(3), &[]).await;
    h.sim.push_error(GraphError::new(
        190,
        Some(463),
        "Error validating access token: Session has expired on Tuesday, 01-Jul-25 10:00:00 PDT.",
    ));
    h.tick().await;
    h.drain_until_done(3, Duration::ZERO).await;

    let jobs = h.job_states().await;
    let discarded: Vec<_> = jobs.iter().filter(|j| j.1 == "discarded").collect();
    assert_eq!(discarded.len(), 1, "{jobs:?}");
    let bad_client = discarded[0].3["client_id"].as_str().unwrap().to_owned();
    let bad_account = discarded[0].3["ad_account_id"].as_str().unwrap().to_owned();
    assert_eq!(discarded[0].2, 1, "not retried");
    let error: String =
        sqlx::query_scalar("select errors -> -1 ->> 'error' from jobs where state = 'discarded'")
            .fetch_one(h.pool())
            .await
            .unwrap();
    assert!(error.contains(&bad_client), "{error}");
    assert!(error.contains("access token"), "{error}");

    for account in h.accounts() {
        let stored = h.stored(&account.id).await;
        if account.id == bad_account {
            assert!(stored.is_empty());
        } else {
            assert_eq!(stored, h.expected(&account, 90));
        }
    }
    let runs = runs(&h).await;
    let unhealthy: Vec<_> = runs.iter().filter(|r| r.1 == "token_invalid").collect();
    assert_eq!(unhealthy.len(), 1, "{runs:?}");
    assert_eq!(unhealthy[0].0, bad_client);
    assert_eq!(runs.iter().filter(|r| r.1 == "ok").count(), 2);
}

#[tokio::test]
async fn a_sync_completes_through_30_percent_server_errors() {
    let mut h = Harness::start(
        FacebookConfig {
            faults: FaultConfig {
                seed: 42,
                server_error_rate: 0.3,
                ..FaultConfig::default()
            },
            ..sim(3)
        },
        &[("BAW__FACEBOOK__PAGE_SIZE", "100")],
    )
    .await;
    h.tick().await;
    h.drain_until_done(40, Duration::ZERO).await;

    assert!(h.sim.faults().injected() > 0);
    for account in h.accounts() {
        assert_eq!(h.stored(&account.id).await, h.expected(&account, 90));
    }
    for (kind, state, _, _) in h.job_states().await {
        assert_eq!(state, "completed", "{kind}");
    }
}

#[tokio::test]
async fn high_ad_account_usage_pauses_the_sync_before_facebook_throttles_and_it_resumes() {
    let mut h = Harness::start(
        FacebookConfig {
            // About 9 calls are needed; usage reaches 75% at the 6th of 8 allowed.
            account_calls_per_window: 8,
            ..sim(1)
        },
        &[],
    )
    .await;
    let account = h.accounts()[0].clone();
    h.tick().await;
    h.drain().await;

    let jobs = h.job_states().await;
    let sync = jobs
        .iter()
        .find(|j| j.0 == "facebook_sync_account")
        .unwrap();
    assert_eq!((sync.1.as_str(), sync.2), ("scheduled", 0), "{jobs:?}");
    assert_eq!(h.sim.rate_limit_hits(), 0);
    let partial = h.stored(&account.id).await;
    assert!(!partial.is_empty(), "the pages fetched so far are kept");
    let waits_until: chrono::DateTime<Utc> =
        sqlx::query_scalar("select run_at from jobs where kind = 'facebook_sync_account'")
            .fetch_one(h.pool())
            .await
            .unwrap();
    assert!(waits_until > Utc::now() + chrono::Duration::minutes(30));

    // A tick while it waits does not start a second sync of the account.
    h.tick().await;
    h.drain().await;
    let syncs: i64 =
        sqlx::query_scalar("select count(*) from jobs where kind = 'facebook_sync_account'")
            .fetch_one(h.pool())
            .await
            .unwrap();
    assert_eq!(syncs, 1);

    // The usage window resets: the sync goes on from where it stopped.
    h.sim.reset_throttling();
    h.make_due().await;
    h.drain_until_done(3, Duration::ZERO).await;
    assert_eq!(h.stored(&account.id).await, h.expected(&account, 90));
    assert_eq!(h.sim.rate_limit_hits(), 0);
    let calls: i64 = sqlx::query_scalar("select sum(calls) from facebook_sync_runs")
        .fetch_one(h.pool())
        .await
        .unwrap();
    assert!(calls <= 10, "{calls} calls: the sync started over");
}

#[tokio::test]
async fn an_empty_cluster_wide_bucket_snoozes_the_sync_without_spending_an_attempt() {
    let mut h = Harness::start(
        sim(1),
        &[
            ("BAW__RATE_LIMITS__FACEBOOK__RATE", "1"),
            ("BAW__RATE_LIMITS__FACEBOOK__PER", "1h"),
            ("BAW__RATE_LIMITS__FACEBOOK__BURST", "2"),
        ],
    )
    .await;
    let account = h.accounts()[0].clone();
    h.tick().await;
    h.drain().await;

    assert_eq!(h.sim.calls().all().len(), 2, "two tokens, two calls");
    let (state, attempt): (String, i32) =
        sqlx::query_as("select state, attempt from jobs where kind = 'facebook_sync_account'")
            .fetch_one(h.pool())
            .await
            .unwrap();
    assert_eq!((state.as_str(), attempt), ("scheduled", 0));
    assert_eq!(h.stored(&account.id).await.len(), 80);
}

/// How long the account's sync waits from now (its `run_at`), in seconds.
async fn sync_waits(h: &Harness) -> i64 {
    let run_at: chrono::DateTime<Utc> =
        sqlx::query_scalar("select run_at from jobs where kind = 'facebook_sync_account'")
            .fetch_one(h.pool())
            .await
            .unwrap();
    (run_at - Utc::now()).num_seconds()
}

#[tokio::test]
async fn throttles_without_a_usage_hint_back_off_exponentially_and_a_page_fetched_resets_it() {
    use baseaim_worker::sim::FaultKind;
    let mut h = Harness::start(sim(1), &[]).await;
    let account = h.accounts()[0].clone();
    h.tick().await;
    // The fan-out, then the sync's first call: throttled by the fault layer, which sends no
    // usage headers, so Graph says nothing about when access is back.
    h.sim.faults().next(FaultKind::Throttled);
    h.drain().await;
    let mut waits = vec![sync_waits(&h).await];
    for _ in 0..3 {
        h.sim.faults().next(FaultKind::Throttled);
        h.make_due().await;
        let report = h.drain().await;
        assert_eq!(report.snoozed, 1, "{report:?}");
        waits.push(sync_waits(&h).await);
    }
    // 60 s doubling, plus at most a tenth of jitter (a second lost to the clock).
    for (wait, base) in waits.iter().zip([60, 120, 240, 480]) {
        assert!(
            (base - 1..=base + base / 10).contains(wait),
            "waits {waits:?}, expected about {base} s"
        );
    }
    // A page comes through, then Graph throttles again: back to a minute.
    h.sim.faults().script([None, Some(FaultKind::Throttled)]);
    h.make_due().await;
    assert_eq!(h.drain().await.snoozed, 1);
    let wait = sync_waits(&h).await;
    assert!((59..=66).contains(&wait), "after a page fetched: {wait} s");

    h.make_due().await;
    h.drain_until_done(3, Duration::ZERO).await;
    assert_eq!(h.stored(&account.id).await, h.expected(&account, 90));
    for (kind, state, attempt, _) in h.job_states().await {
        assert_eq!((state.as_str(), attempt), ("completed", 1), "{kind}");
    }
    let outcomes: Vec<String> = runs(&h).await.into_iter().map(|r| r.1).collect();
    assert_eq!(outcomes.iter().filter(|o| *o == "snoozed").count(), 5);
}
