//! Daylight saving time in Europe/Berlin: ticks are computed on the zone's wall clock and keyed
//! in UTC; across both changes no tick is enqueued twice and none is skipped.

use std::time::Duration;

use baseaim_worker::schedule::{CatchUp, Schedule, Scheduler};
use chrono::{DateTime, Utc};

use super::support::TestDb;
use super::{at, complete_all, expected, keys_of, schedule};

/// Three skewed schedulers, one simulated minute per step, over [from, to].
async fn simulate(from: &str, to: &str) -> TestDb {
    let schedules = vec![
        schedule("hourly", "30 * * * *", "Europe/Berlin", CatchUp::Latest),
        schedule(
            "half_hourly",
            "*/30 * * * *",
            "Europe/Berlin",
            CatchUp::Latest,
        ),
        schedule("daily", "30 2 * * *", "Europe/Berlin", CatchUp::Latest),
    ];
    simulate_schedules(schedules, from, to).await
}

/// Schedules whose minute and hour are lists: fixed times of day, like a single time.
fn fixed_time_lists() -> Vec<Schedule> {
    vec![
        schedule("twice", "0 2,14 * * *", "Europe/Berlin", CatchUp::Latest),
        schedule(
            "quarters",
            "15,45 2 * * *",
            "Europe/Berlin",
            CatchUp::Latest,
        ),
        schedule("range", "0 1-3 * * *", "Europe/Berlin", CatchUp::Latest),
        schedule(
            "new_york",
            "30 1,13 * * *",
            "America/New_York",
            CatchUp::Latest,
        ),
    ]
}

async fn simulate_schedules(schedules: Vec<Schedule>, from: &str, to: &str) -> TestDb {
    let db = TestDb::new().await;
    let nodes: Vec<Scheduler> = (0..3)
        .map(|_| Scheduler::new(db.pool.clone(), schedules.clone()))
        .collect();
    let skew = [0, 20, -15].map(chrono::Duration::seconds);
    let (mut now, end): (DateTime<Utc>, _) = (at(from), at(to));
    while now <= end {
        let (a, b, c) = tokio::join!(
            nodes[0].run_once(now + skew[0]),
            nodes[1].run_once(now + skew[1]),
            nodes[2].run_once(now + skew[2]),
        );
        a.unwrap();
        b.unwrap();
        c.unwrap();
        complete_all(&db.pool).await;
        now += Duration::from_secs(60);
    }
    db
}

#[tokio::test]
async fn spring_forward_neither_repeats_nor_skips() {
    // 2025-03-30 in Berlin: 02:00 CET (01:00Z) jumps to 03:00 CEST; 02:xx does not exist.
    // Simulated 00:40 CET - 05:20 CEST.
    let db = simulate("2025-03-29T23:40:00Z", "2025-03-30T03:20:00Z").await;
    // 01:30 CET, then 03:30 CEST one real hour later (02:30 does not exist), then 04:30 CEST.
    assert_eq!(
        keys_of(&db.pool, "hourly").await,
        expected(
            "hourly",
            &[
                "2025-03-30T00:30:00Z",
                "2025-03-30T01:30:00Z",
                "2025-03-30T02:30:00Z"
            ]
        )
    );
    // Every 30 real minutes: 01:00, 01:30 CET, 03:00 (= 02:00 CET), 03:30 CEST, ...
    assert_eq!(
        keys_of(&db.pool, "half_hourly").await,
        expected(
            "half_hourly",
            &[
                "2025-03-30T00:00:00Z",
                "2025-03-30T00:30:00Z",
                "2025-03-30T01:00:00Z",
                "2025-03-30T01:30:00Z",
                "2025-03-30T02:00:00Z",
                "2025-03-30T02:30:00Z",
                "2025-03-30T03:00:00Z",
            ]
        )
    );
    // 02:30 does not exist that day: the daily job runs once, at the first instant after the gap
    // (03:00 CEST), rather than losing the day.
    assert_eq!(
        keys_of(&db.pool, "daily").await,
        expected("daily", &["2025-03-30T01:00:00Z"])
    );
}

#[tokio::test]
async fn fall_back_neither_repeats_nor_skips() {
    // 2025-10-26 in Berlin: 03:00 CEST (01:00Z) goes back to 02:00 CET; 02:xx happens twice.
    // Simulated 01:40 CEST - 04:20 CET.
    let db = simulate("2025-10-25T23:40:00Z", "2025-10-26T03:20:00Z").await;
    // 02:30 CEST and 02:30 CET are an hour apart: both run, under different keys; one per hour.
    assert_eq!(
        keys_of(&db.pool, "hourly").await,
        expected(
            "hourly",
            &[
                "2025-10-26T00:30:00Z",
                "2025-10-26T01:30:00Z",
                "2025-10-26T02:30:00Z"
            ]
        )
    );
    assert_eq!(
        keys_of(&db.pool, "half_hourly").await,
        expected(
            "half_hourly",
            &[
                "2025-10-26T00:00:00Z",
                "2025-10-26T00:30:00Z",
                "2025-10-26T01:00:00Z",
                "2025-10-26T01:30:00Z",
                "2025-10-26T02:00:00Z",
                "2025-10-26T02:30:00Z",
                "2025-10-26T03:00:00Z",
            ]
        )
    );
    // The daily 02:30 runs once, on the first pass (CEST), not again an hour later.
    assert_eq!(
        keys_of(&db.pool, "daily").await,
        expected("daily", &["2025-10-26T00:30:00Z"])
    );
}

#[tokio::test]
async fn fixed_times_given_as_lists_run_once_across_spring_forward() {
    // Berlin 2025-03-30: 02:00 CET (01:00Z) jumps to 03:00 CEST. New York 2025-03-09: 02:00 EST
    // (07:00Z) jumps to 03:00 EDT; its 01:30 is untouched.
    let db = simulate_schedules(
        fixed_time_lists(),
        "2025-03-29T23:40:00Z",
        "2025-03-30T03:20:00Z",
    )
    .await;
    // 02:00 does not exist: it runs at the first instant after the gap, 03:00 CEST (01:00Z).
    assert_eq!(
        keys_of(&db.pool, "twice").await,
        expected("twice", &["2025-03-30T01:00:00Z"])
    );
    // 02:15 and 02:45 both fall in the gap: both are due at 03:00 CEST, one instant, one run.
    assert_eq!(
        keys_of(&db.pool, "quarters").await,
        expected("quarters", &["2025-03-30T01:00:00Z"])
    );
    // 01:00 CET, 02:00 (in the gap: 03:00 CEST), 03:00 CEST: the last two are one instant.
    assert_eq!(
        keys_of(&db.pool, "range").await,
        expected("range", &["2025-03-30T00:00:00Z", "2025-03-30T01:00:00Z"])
    );
    let db = simulate_schedules(
        fixed_time_lists(),
        "2025-03-09T05:40:00Z",
        "2025-03-09T08:20:00Z",
    )
    .await;
    assert_eq!(
        keys_of(&db.pool, "new_york").await,
        expected("new_york", &["2025-03-09T06:30:00Z"])
    );
}

#[tokio::test]
async fn fixed_times_given_as_lists_run_once_across_fall_back() {
    // Berlin 2025-10-26: 03:00 CEST (01:00Z) goes back to 02:00 CET; 02:xx happens twice.
    let db = simulate_schedules(
        fixed_time_lists(),
        "2025-10-25T23:40:00Z",
        "2025-10-26T03:20:00Z",
    )
    .await;
    // 02:00 runs once, on the first pass (CEST), not again at 02:00 CET (01:00Z).
    assert_eq!(
        keys_of(&db.pool, "twice").await,
        expected("twice", &["2025-10-26T00:00:00Z"])
    );
    assert_eq!(
        keys_of(&db.pool, "quarters").await,
        expected(
            "quarters",
            &["2025-10-26T00:15:00Z", "2025-10-26T00:45:00Z"]
        )
    );
    // (01:00 CEST was before the schedule was first seen.) 02:00 CEST, on the first pass only,
    // then 03:00 CET.
    assert_eq!(
        keys_of(&db.pool, "range").await,
        expected("range", &["2025-10-26T00:00:00Z", "2025-10-26T02:00:00Z"])
    );
    // New York 2025-11-02: 02:00 EDT (06:00Z) goes back to 01:00 EST; 01:30 runs once, in EDT.
    let db = simulate_schedules(
        fixed_time_lists(),
        "2025-11-02T04:40:00Z",
        "2025-11-02T07:20:00Z",
    )
    .await;
    assert_eq!(
        keys_of(&db.pool, "new_york").await,
        expected("new_york", &["2025-11-02T05:30:00Z"])
    );
}

#[test]
fn ticks_found_backwards_are_ticks_found_forwards_across_both_changes() {
    // The scheduler finds the due tick backwards from `now` and the next one forwards; the two
    // searches must agree on every instant around the changes, or a tick could be doubled or lost.
    for cron in [
        "30 * * * *",
        "*/30 * * * *",
        "30 2 * * *",
        "0 */2 * * *",
        "0 2,14 * * *",
        "15,45 2 * * *",
        "0 1-3 * * *",
        "30 1,2 * * *",
    ] {
        let s = schedule("s", cron, "Europe/Berlin", CatchUp::Latest);
        for (from, to) in [
            ("2025-03-29T22:00:00Z", "2025-03-30T04:00:00Z"),
            ("2025-10-25T22:00:00Z", "2025-10-26T04:00:00Z"),
        ] {
            let mut forward = Vec::new();
            let mut tick = s.next_after(at(from) - chrono::Duration::days(1)).unwrap();
            while tick <= at(to) + chrono::Duration::days(2) {
                forward.push(tick);
                tick = s.next_after(tick).unwrap();
            }
            let mut now = at(from);
            while now <= at(to) {
                let due = s.latest_at_or_before(now).unwrap();
                assert!(
                    forward.contains(&due),
                    "{cron}: tick {due} due at {now} is not in the forward sequence"
                );
                let next = s.next_after(now).unwrap();
                assert!(due <= now && now < next, "{cron} at {now}: {due} / {next}");
                assert_eq!(
                    forward.iter().find(|t| **t > due),
                    Some(&next),
                    "{cron} at {now}"
                );
                now += chrono::Duration::seconds(97);
            }
        }
    }
}
