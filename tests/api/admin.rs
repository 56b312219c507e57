//! `/v1/admin/*` end to end: list with filters and keyset pages, one job, actions on one and in
//! bulk, counts, queues, schedules, Stripe replay.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Api, query};

async fn enqueue(api: &Api, token: &str, body: Value) -> i64 {
    let answer = api
        .call(Method::POST, "/v1/jobs", Some(token), Some(body))
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text);
    answer.body["id"].as_i64().unwrap()
}

#[tokio::test]
async fn operators_find_fix_and_clean_up_jobs_through_the_admin_api() {
    let api = Api::new().await;
    let writer = api.token(&["jobs:write"]).await;
    let admin = api.token(&["admin:read", "admin:write"]).await;
    let get = |path: String| {
        let (api, admin) = (&api, admin.clone());
        async move { api.call(Method::GET, &path, Some(&admin), None).await }
    };

    let ok1 = enqueue(
        &api,
        &writer,
        json!({"kind": "noop", "args": {}, "tags": ["batch-a"]}),
    )
    .await;
    let ok2 = enqueue(&api, &writer, json!({"kind": "noop", "tags": ["batch-a"]})).await;
    let failing = enqueue(
        &api,
        &writer,
        json!({"kind": "noop", "args": {"fail": "order A-17 exploded"}, "max_attempts": 1}),
    )
    .await;
    let report = api.drain("default").await;
    assert_eq!((report.completed, report.discarded), (2, 1), "{report:?}");

    // Filter by state, by text in the args, by JSON containment, by tag.
    let discarded = get(format!(
        "/v1/admin/jobs?{}",
        query(&[("state", "discarded")])
    ))
    .await;
    assert_eq!(discarded.status, StatusCode::OK, "{}", discarded.text);
    let jobs = discarded.body["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["id"], failing);
    assert!(
        jobs[0]["errors"][0]["error"]
            .as_str()
            .unwrap()
            .contains("exploded")
    );
    let by_text = get(format!("/v1/admin/jobs?{}", query(&[("args", "A-17")]))).await;
    assert_eq!(by_text.body["jobs"][0]["id"], failing, "{}", by_text.text);
    let by_json = get(format!(
        "/v1/admin/jobs?{}",
        query(&[
            ("args", r#"{"fail": "order A-17 exploded"}"#),
            ("kind", "noop")
        ])
    ))
    .await;
    assert_eq!(
        by_json.body["jobs"].as_array().unwrap().len(),
        1,
        "{}",
        by_json.text
    );
    let by_tag = get(format!("/v1/admin/jobs?{}", query(&[("tag", "batch-a")]))).await;
    assert_eq!(by_tag.body["jobs"].as_array().unwrap().len(), 2);

    // Keyset pages, newest first.
    let page1 = get("/v1/admin/jobs?limit=2".into()).await;
    let ids: Vec<i64> = page1.body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![failing, ok2]);
    let after = page1.body["next_after"].as_i64().unwrap();
    let page2 = get(format!("/v1/admin/jobs?limit=2&after={after}")).await;
    let ids: Vec<i64> = page2.body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![ok1]);
    assert_eq!(page2.body["next_after"], Value::Null);

    // Bad parameters name themselves.
    for (path, needle) in [
        ("/v1/admin/jobs?state=exploded", "unknown state `exploded`"),
        ("/v1/admin/jobs?limit=0", "limit"),
        ("/v1/admin/jobs?after=abc", "after"),
        ("/v1/admin/jobs?colour=red", "colour"),
        ("/v1/admin/jobs?kind=no%00pe", "`kind` must not contain NUL"),
    ] {
        let answer = get(path.into()).await;
        assert_eq!(
            answer.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{path}: {}",
            answer.text
        );
        assert!(answer.text.contains(needle), "{path}: {}", answer.text);
    }

    // One job; a missing one; a malformed id.
    let one = get(format!("/v1/admin/jobs/{failing}")).await;
    assert_eq!(
        (one.status, one.body["state"].as_str()),
        (StatusCode::OK, Some("discarded"))
    );
    assert_eq!(
        get("/v1/admin/jobs/999999".into()).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get("/v1/admin/jobs/abc".into()).await.status,
        StatusCode::BAD_REQUEST
    );

    // Retry the failed job, cancel it, refuse a second cancel, delete it.
    let act = |method: Method, path: String| {
        let (api, admin) = (&api, admin.clone());
        async move { api.call(method, &path, Some(&admin), None).await }
    };
    let retried = act(Method::POST, format!("/v1/admin/jobs/{failing}/retry")).await;
    assert_eq!(retried.status, StatusCode::OK, "{}", retried.text);
    assert_eq!(retried.body["state"], "available");
    let cancelled = act(Method::POST, format!("/v1/admin/jobs/{failing}/cancel")).await;
    assert_eq!(cancelled.body["state"], "cancelled", "{}", cancelled.text);
    let again = act(Method::POST, format!("/v1/admin/jobs/{failing}/cancel")).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text);
    assert!(again.text.contains("cancelled"), "{}", again.text);
    let deleted = act(Method::DELETE, format!("/v1/admin/jobs/{failing}")).await;
    assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.text);
    assert_eq!(
        get(format!("/v1/admin/jobs/{failing}")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        act(Method::POST, "/v1/admin/jobs/999999/retry".into())
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    // Bulk: by ids, by filter; refused without exactly one of them or with an empty filter.
    let bulk = |body: Value| api.bulk(&admin, body);
    for body in [
        json!({"action": "retry"}),
        json!({"action": "retry", "ids": [ok1], "filter": {"kind": "noop"}}),
        json!({"action": "delete", "filter": {}}),
        json!({"action": "delete", "filter": {"args": "{}", "error": " "}}),
        json!({"action": "explode", "ids": [ok1]}),
        json!({"action": "delete", "filter": {"state": "gone"}}),
    ] {
        let answer = bulk(body.clone()).await;
        assert_eq!(
            answer.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            answer.text
        );
    }
    assert_eq!(
        api.job_count().await,
        2,
        "refused bulk actions changed nothing"
    );
    let done_with_two = |answer: crate::helpers::Answer, record: Value| {
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
        let expected = json!({"changed": 2, "finished": true, "bulk_action": record});
        assert_eq!(answer.body, expected, "{}", answer.text);
    };
    done_with_two(
        bulk(json!({"action": "retry", "ids": [ok1, ok2, 999999]})).await,
        Value::Null,
    );
    assert_eq!(api.drain("default").await.completed, 2);
    done_with_two(
        bulk(json!({"action": "delete", "filter": {"kind": "noop", "state": "completed"}})).await,
        json!(1),
    );
    assert_eq!(api.job_count().await, 0);
}

#[tokio::test]
async fn queues_counts_schedules_and_stripe_replay() {
    let api = Api::new().await;
    let writer = api.token(&["jobs:write"]).await;
    let admin = api.token(&["admin:read", "admin:write"]).await;
    enqueue(&api, &writer, json!({"kind": "noop", "queue": "reports"})).await;

    let counts = api
        .call(Method::GET, "/v1/admin/counts", Some(&admin), None)
        .await;
    assert_eq!(counts.status, StatusCode::OK, "{}", counts.text);
    assert!(
        counts
            .body
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["queue"] == "reports" && c["state"] == "available" && c["count"] == 1),
        "{}",
        counts.text
    );

    let paused = api
        .call(
            Method::POST,
            "/v1/admin/queues/reports/pause",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(
        paused.body,
        json!({"name": "reports", "paused": true}),
        "{}",
        paused.text
    );
    assert_eq!(
        api.drain("reports").await.total(),
        0,
        "a paused queue is not claimed"
    );
    let queues = api
        .call(Method::GET, "/v1/admin/queues", Some(&admin), None)
        .await;
    let reports = queues
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "reports")
        .cloned();
    assert_eq!(
        reports.as_ref().map(|q| q["paused"].clone()),
        Some(json!(true)),
        "{}",
        queues.text
    );
    assert_eq!(reports.map(|q| q["concurrency"].clone()), Some(json!(2)));
    let resumed = api
        .call(
            Method::POST,
            "/v1/admin/queues/reports/resume",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(resumed.body["paused"], false);
    assert_eq!(api.drain("reports").await.completed, 1);

    sqlx::query(
        "insert into nodes (name, role, version, heartbeat_at) values
             ('alive-1', 'worker', 'test', now()), ('dead-1', 'worker', 'test', now() - interval '1 day')",
    )
    .execute(&api.db.pool)
    .await
    .unwrap();
    let nodes = api
        .call(Method::GET, "/v1/admin/nodes", Some(&admin), None)
        .await;
    assert_eq!(nodes.status, StatusCode::OK, "{}", nodes.text);
    let names: Vec<&str> = nodes
        .body
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["alive-1"],
        "only nodes heartbeating within the lease"
    );

    let schedules = api
        .call(Method::GET, "/v1/admin/schedules", Some(&admin), None)
        .await;
    assert_eq!(schedules.status, StatusCode::OK, "{}", schedules.text);
    let names: Vec<&str> = schedules
        .body
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert!(names.contains(&"prune"), "{names:?}");
    let run = api
        .call(
            Method::POST,
            "/v1/admin/schedules/prune/run",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(run.status, StatusCode::ACCEPTED, "{}", run.text);
    let kind: String = sqlx::query_scalar("select kind from jobs where id = $1")
        .bind(run.body["id"].as_i64().unwrap())
        .fetch_one(&api.db.pool)
        .await
        .unwrap();
    assert_eq!(kind, "prune");
    let missing = api
        .call(
            Method::POST,
            "/v1/admin/schedules/nope/run",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND, "{}", missing.text);

    sqlx::query(
        "insert into stripe_events (id, type, created, livemode, api_version, payload, status)
         values ('evt_api_1', 'invoice.paid', 1700000000, false, '2024-06-20', '{}', 'processed')",
    )
    .execute(&api.db.pool)
    .await
    .unwrap();
    let replay = api
        .call(
            Method::POST,
            "/v1/admin/stripe/events/evt_api_1/replay",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(replay.status, StatusCode::ACCEPTED, "{}", replay.text);
    let args: Value =
        sqlx::query_scalar("select args from jobs where id = $1 and kind = 'stripe_event'")
            .bind(replay.body["id"].as_i64().unwrap())
            .fetch_one(&api.db.pool)
            .await
            .unwrap();
    assert_eq!(args["event_id"], "evt_api_1");
    let unknown = api
        .call(
            Method::POST,
            "/v1/admin/stripe/events/evt_nope/replay",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.text);
}

#[tokio::test]
async fn retrying_a_job_whose_unique_key_is_taken_again_is_a_409_saying_so() {
    let api = Api::new().await;
    let writer = api.token(&["jobs:write"]).await;
    let admin = api.token(&["admin:write"]).await;
    let job = json!({"kind": "noop", "unique_key": "nightly-report"});
    let first = enqueue(&api, &writer, job.clone()).await;
    assert_eq!(api.drain("default").await.completed, 1);
    let second = enqueue(&api, &writer, job).await;
    assert_ne!(first, second, "a finished job frees its key");
    let answer = api
        .call(
            Method::POST,
            &format!("/v1/admin/jobs/{first}/retry"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(answer.status, StatusCode::CONFLICT, "{}", answer.text);
    assert!(answer.text.contains("unique key"), "{}", answer.text);
}

/// An action by filter that outlasts `http.bulk_answer_within` answers 202 with what it changed
/// so far, and goes on to the last matching job after the answer.
#[tokio::test]
async fn a_long_bulk_action_by_filter_answers_in_time_and_finishes_in_the_background() {
    let api = Api::with(|config| config.http.bulk_answer_within = Duration::from_millis(20)).await;
    let admin = api.token(&["admin:write"]).await;
    tagged_jobs(&api, "long", 50_000).await;
    let bystander: i64 = sqlx::query_scalar("insert into jobs (kind) values ('noop') returning id")
        .fetch_one(&api.db.pool)
        .await
        .unwrap();
    let answer = api
        .bulk(
            &admin,
            json!({"action": "cancel", "filter": {"tag": "long"}}),
        )
        .await;
    let cancelled_then = cancelled_jobs(&api).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.text);
    assert_eq!(answer.body["finished"], false, "{}", answer.text);
    let so_far = answer.body["changed"].as_i64().expect("changed");
    assert!(
        so_far <= cancelled_then && cancelled_then < 50_000,
        "answered {so_far} changed so far; {cancelled_then} cancelled right after"
    );

    // Its record follows it, for any node and any caller with admin:read.
    let record = answer.body["bulk_action"]
        .as_i64()
        .expect("a bulk_action id");
    let reader = api.token(&["admin:read"]).await;
    let path = format!("/v1/admin/bulk-actions/{record}");
    let followed = api.call(Method::GET, &path, Some(&reader), None).await;
    assert_eq!(followed.status, StatusCode::OK, "{}", followed.text);
    assert_eq!(followed.body["action"], "cancel");
    assert_eq!(followed.body["filter"]["tag"], "long");
    assert_eq!(followed.body["requested_by"], "token test-caller");
    assert!(
        followed.body["changed"].as_i64().unwrap() >= so_far,
        "{}",
        followed.text
    );
    let forbidden = api.call(Method::GET, &path, Some(&admin), None).await;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN, "admin:write alone");

    crate::support::eventually(120, "every matching job cancelled", || async {
        cancelled_jobs(&api).await == 50_000
    })
    .await;
    crate::support::eventually(30, "the record says finished", || async {
        let now = api.call(Method::GET, &path, Some(&reader), None).await;
        now.body["status"] == "finished"
    })
    .await;
    let done = api.call(Method::GET, &path, Some(&reader), None).await;
    assert_eq!(done.body["changed"], 50_000, "{}", done.text);
    assert!(done.body["finished_at"].is_string(), "{}", done.text);
    assert!(done.body["error"].is_null(), "{}", done.text);

    // A record that stopped moving without finishing (its node went away) is `stalled`.
    sqlx::query(
        "update bulk_actions set finished_at = null, updated_at = now() - interval '2 minutes'",
    )
    .execute(&api.db.pool)
    .await
    .unwrap();
    let stalled = api.call(Method::GET, &path, Some(&reader), None).await;
    assert_eq!(stalled.body["status"], "stalled", "{}", stalled.text);
    let listed = api
        .call(Method::GET, "/v1/admin/bulk-actions", Some(&reader), None)
        .await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.text);
    assert_eq!(listed.body[0]["id"], record, "{}", listed.text);
    assert_eq!(listed.body[0]["status"], "stalled", "{}", listed.text);
    let missing = api
        .call(
            Method::GET,
            "/v1/admin/bulk-actions/999999",
            Some(&reader),
            None,
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(
        missing.text.contains("no bulk action 999999"),
        "{}",
        missing.text
    );

    let state: String = sqlx::query_scalar("select state from jobs where id = $1")
        .bind(bystander)
        .fetch_one(&api.db.pool)
        .await
        .unwrap();
    assert_eq!(state, "available", "a job the filter does not match");
}

/// An operator stops a long action by filter: the answer comes once the batch under way has
/// committed, with exactly the jobs changed; none changes after, and no node resumes it.
#[tokio::test]
async fn a_bulk_action_by_filter_can_be_stopped_and_stays_stopped() {
    let api = Api::with(|config| config.http.bulk_answer_within = Duration::from_millis(20)).await;
    let admin = api.token(&["admin:write"]).await;
    let reader = api.token(&["admin:read"]).await;
    tagged_jobs(&api, "halt", 50_000).await;
    let answer = api
        .bulk(
            &admin,
            json!({"action": "cancel", "filter": {"tag": "halt"}}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.text);
    let record = answer.body["bulk_action"].as_i64().unwrap();
    let path = format!("/v1/admin/bulk-actions/{record}/stop");

    let forbidden = api.call(Method::POST, &path, Some(&reader), None).await;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN, "admin:read alone");
    let stopped = api.call(Method::POST, &path, Some(&admin), None).await;
    assert_eq!(stopped.status, StatusCode::OK, "{}", stopped.text);
    assert_eq!(stopped.body["status"], "stopped", "{}", stopped.text);
    assert_eq!(stopped.body["stopped_by"], "token test-caller");
    assert!(stopped.body["finished_at"].is_string(), "{}", stopped.text);
    let changed = stopped.body["changed"].as_i64().unwrap();
    assert!(changed < 50_000, "{}", stopped.text);
    assert_eq!(
        cancelled_jobs(&api).await,
        changed,
        "the record is the jobs"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        cancelled_jobs(&api).await,
        changed,
        "no batch after the stop"
    );

    // A stopped action is over: not stopped twice, not resumed by the maintenance leader.
    let again = api.call(Method::POST, &path, Some(&admin), None).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text);
    assert!(
        again.text.contains("over already (stopped)"),
        "{}",
        again.text
    );
    let resumed = baseaim_worker::queue::bulk::resume_stalled(&api.db.pool, Duration::ZERO)
        .await
        .unwrap();
    assert!(resumed.is_empty());
    let followed = api
        .call(
            Method::GET,
            &format!("/v1/admin/bulk-actions/{record}"),
            Some(&reader),
            None,
        )
        .await;
    assert_eq!(followed.body["status"], "stopped", "{}", followed.text);
    assert_eq!(followed.body["changed"], changed, "{}", followed.text);
    assert_eq!(followed.body["resumed"], 0, "{}", followed.text);

    let missing = api
        .call(
            Method::POST,
            "/v1/admin/bulk-actions/999999/stop",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND, "{}", missing.text);
    assert!(
        missing.text.contains("no bulk action 999999"),
        "{}",
        missing.text
    );
}

/// `n` available noop jobs tagged `tag`.
async fn tagged_jobs(api: &Api, tag: &str, n: i32) {
    sqlx::query(
        "insert into jobs (kind, tags) select 'noop', array[$1] from generate_series(1, $2)",
    )
    .bind(tag)
    .bind(n)
    .execute(&api.db.pool)
    .await
    .unwrap();
}

async fn cancelled_jobs(api: &Api) -> i64 {
    sqlx::query_scalar("select count(*) from jobs where state = 'cancelled'")
        .fetch_one(&api.db.pool)
        .await
        .unwrap()
}

/// An action by filter covers every matching job even when the request that started it goes away
/// part-way (a client that timed out, a closed browser tab): it does not stop after the batches
/// done so far.
#[tokio::test]
async fn a_bulk_action_by_filter_finishes_after_its_request_goes_away() {
    let api = Api::new().await;
    let admin = api.token(&["admin:write"]).await;
    tagged_jobs(&api, "abandoned", 50_000).await;
    let request = api.bulk(
        &admin,
        json!({"action": "cancel", "filter": {"tag": "abandoned"}}),
    );
    // Fifty batches of 1,000 take far longer than the client waits.
    let answered = tokio::time::timeout(std::time::Duration::from_millis(30), request).await;
    assert!(answered.is_err(), "the action finished within 30 ms");
    crate::support::eventually(120, "every matching job cancelled", || async {
        cancelled_jobs(&api).await == 50_000
    })
    .await;
}

/// Times outside PostgreSQL's range (4713 BC to 294276 AD) in a filter used to reach the
/// database and fail there (500): they are refused naming the parameter, in a listing and in a
/// bulk action's filter, and nothing is touched.
#[tokio::test]
async fn a_filter_time_outside_years_1_to_9999_is_422_naming_it() {
    let api = Api::new().await;
    let admin = api
        .token(&["admin:read", "admin:write", "jobs:write"])
        .await;
    let job = enqueue(&api, &admin, json!({"kind": "noop"})).await;
    for (field, time) in [
        ("created_from", "-5000-01-01T00:00:00Z"),
        ("created_to", "-5000-01-01T00:00:00Z"),
        ("created_from", "0000-12-31T00:00:00Z"),
        ("created_to", "+10000-01-01T00:00:00Z"),
    ] {
        let path = format!("/v1/admin/jobs?{}", query(&[(field, time)]));
        let answer = api.call(Method::GET, &path, Some(&admin), None).await;
        assert_eq!(
            answer.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{path}: {}",
            answer.text
        );
        assert!(answer.text.contains(field), "{path}: {}", answer.text);
        let bulk = api
            .bulk(&admin, json!({"action": "cancel", "filter": {field: time}}))
            .await;
        assert_eq!(
            bulk.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "bulk {field}={time}: {}",
            bulk.text
        );
        assert!(bulk.text.contains(field), "bulk {field}: {}", bulk.text);
    }
    let state: String = sqlx::query_scalar("select state from jobs where id = $1")
        .bind(job)
        .fetch_one(&api.db.pool)
        .await
        .unwrap();
    assert_eq!(state, "available", "no bulk action ran");
    // The edges of the range are fine.
    let path = format!(
        "/v1/admin/jobs?{}",
        query(&[
            ("created_from", "0001-01-01T00:00:00Z"),
            ("created_to", "9999-12-31T23:59:59Z")
        ])
    );
    let answer = api.call(Method::GET, &path, Some(&admin), None).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    assert_eq!(answer.body["jobs"][0]["id"], json!(job));
}

/// An `args` filter that is a JSON object is matched as jsonb, which cannot hold NUL: a `\u0000`
/// escape in a value or a key used to fail in the database (500). Refused naming `args`, in a
/// listing and in a bulk action's filter; the same escape in a plain text search is only text.
#[tokio::test]
async fn a_nul_escape_in_an_args_filter_is_422_naming_it() {
    let api = Api::new().await;
    let admin = api
        .token(&["admin:read", "admin:write", "jobs:write"])
        .await;
    let job = enqueue(
        &api,
        &admin,
        json!({"kind": "noop", "args": {"client": "c1"}}),
    )
    .await;
    for args in [
        r#"{"client": "c\u0000"}"#,
        r#"{"c\u0000": "c1"}"#,
        r#" {"nested": {"list": ["\u0000"]}} "#,
    ] {
        let path = format!("/v1/admin/jobs?{}", query(&[("args", args)]));
        let answer = api.call(Method::GET, &path, Some(&admin), None).await;
        assert_eq!(
            answer.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{args}: {}",
            answer.text
        );
        assert!(answer.text.contains("`args`"), "{args}: {}", answer.text);
        let bulk = api
            .bulk(
                &admin,
                json!({"action": "cancel", "filter": {"args": args}}),
            )
            .await;
        assert_eq!(
            bulk.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "bulk {args}: {}",
            bulk.text
        );
        assert!(bulk.text.contains("`args`"), "bulk {args}: {}", bulk.text);
    }
    let state: String = sqlx::query_scalar("select state from jobs where id = $1")
        .bind(job)
        .fetch_one(&api.db.pool)
        .await
        .unwrap();
    assert_eq!(state, "available", "no bulk action ran");
    // Not an object: searched as text, finds nothing.
    let path = format!("/v1/admin/jobs?{}", query(&[("args", r#""\u0000""#)]));
    let answer = api.call(Method::GET, &path, Some(&admin), None).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    assert_eq!(answer.body["jobs"], json!([]));
}

/// `after` is a job id: an extreme one used to overflow the listing's scan-window arithmetic
/// (a panic, answered 500). Anything under 1 is refused naming it; the largest id lists all.
#[tokio::test]
async fn an_after_cursor_under_1_is_422_naming_it() {
    let api = Api::new().await;
    let admin = api.token(&["admin:read", "jobs:write"]).await;
    let job = enqueue(&api, &admin, json!({"kind": "noop"})).await;
    for after in ["-9223372036854775808", "-1", "0"] {
        for state in ["", "&state=completed", "&state=available"] {
            let path = format!("/v1/admin/jobs?after={after}{state}");
            let answer = api.call(Method::GET, &path, Some(&admin), None).await;
            assert_eq!(
                answer.status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{path}: {}",
                answer.text
            );
            assert!(
                answer.text.contains("`after` must be a job id, 1 or more"),
                "{path}: {}",
                answer.text
            );
        }
    }
    let path = format!("/v1/admin/jobs?after={}", i64::MAX);
    let answer = api.call(Method::GET, &path, Some(&admin), None).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    assert_eq!(answer.body["jobs"][0]["id"], json!(job));
}
