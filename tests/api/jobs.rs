//! `POST /v1/jobs`: any registered kind, args checked against its struct, options applied; bad
//! input is a 4xx naming what was wrong, with nothing stored.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::helpers::{Api, email_data};
use crate::support::noise;

#[tokio::test]
async fn bad_requests_are_refused_naming_what_was_wrong_and_store_nothing() {
    let api = Api::new().await;
    let token = api.token(&["jobs:write"]).await;
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"kind": "no_such_kind"}),
            "unknown kind `no_such_kind`",
        ),
        (
            json!({"kind": "send_email", "args": {"template": "welcome", "data": {}}}),
            "missing field `to`",
        ),
        (
            json!({"kind": "send_email", "args": {
                "template": "payment_failed", "to": "jane@example.com",
                "data": {"amount": "1.00", "currency": "EUR", "invoice_url": "https://x.example"}}}),
            "client_name",
        ),
        (
            json!({"kind": "noop", "args": [1, 2]}),
            "`args` must be a JSON object",
        ),
        (json!({"kind": "noop", "priority": "high"}), "priority"),
        (json!({"kind": "noop", "queeu": "q"}), "queeu"),
        (json!({"kind": "noop", "max_attempts": 0}), "max_attempts"),
        (
            json!({"kind": "noop", "queue": ""}),
            "`queue` must not be empty",
        ),
        (
            json!({"kind": "noop", "args": {"note": ["a\u{0}b"]}}),
            "`args` must not contain NUL",
        ),
        (
            json!({"kind": "noop", "queue": "defualt"}),
            "`queue` `defualt` is not worked",
        ),
        (
            json!({"kind": "noop", "run_at": "2030-01-01T00:00:00Z", "delay_seconds": 5}),
            "not both",
        ),
        (json!({"kind": "noop", "run_at": "tomorrow"}), "run_at"),
        (
            json!({"kind": "noop", "run_at": "-5000-01-01T00:00:00Z"}),
            "`run_at` must be within a year",
        ),
        (
            json!({"kind": "noop", "run_at": "9999-12-31T23:59:59Z"}),
            "`run_at` must be within a year",
        ),
        (
            json!({"kind": "noop", "run_at": "0001-01-01T00:00:00Z"}),
            "`run_at` must be within a year",
        ),
        (
            json!({"kind": "noop", "delay_seconds": -1}),
            "delay_seconds",
        ),
        (json!({"kind": "noop", "tags": ["ok", ""]}), "tags"),
        (json!({"args": {}}), "missing field `kind`"),
    ];
    api.assert_each_unprocessable("/v1/jobs", &token, &cases)
        .await;
    // Not JSON at all, and JSON without its content type.
    for (content_type, body) in [
        ("application/json", "{not json"),
        ("text/plain", r#"{"kind":"noop"}"#),
    ] {
        let request = Request::post("/v1/jobs")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body))
            .unwrap();
        let answer = api.send(request).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.text);
        assert!(answer.body["error"].is_string(), "{}", answer.text);
    }
    assert_eq!(api.job_count().await, 0, "nothing half-stored");
}

#[derive(sqlx::FromRow)]
struct JobRow {
    kind: String,
    args: Value,
    queue: String,
    priority: i16,
    max_attempts: i32,
    tags: Vec<String>,
    unique_key: Option<String>,
    state: String,
    run_at: DateTime<Utc>,
}

#[tokio::test]
async fn a_job_is_enqueued_with_its_options_and_a_unique_key_answers_the_first_job() {
    let api = Api::new().await;
    let token = api.token(&["jobs:write"]).await;
    let request = json!({
        "kind": "noop",
        "args": {"fail": "on purpose"},
        "queue": "api_q",
        "priority": 3,
        "delay_seconds": 60,
        "max_attempts": 2,
        "tags": ["client:42", "from-api"],
        "unique_key": "api-test-1",
    });
    let first = api
        .call(
            Method::POST,
            "/v1/jobs",
            Some(&token),
            Some(request.clone()),
        )
        .await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    assert_eq!(first.body["duplicate"], false);
    let id = first.body["id"].as_i64().unwrap();

    let row: JobRow = sqlx::query_as(
        "select kind, args, queue, priority, max_attempts, tags, unique_key, state, run_at
           from jobs where id = $1",
    )
    .bind(id)
    .fetch_one(&api.db.pool)
    .await
    .unwrap();
    assert_eq!(row.kind, "noop");
    assert_eq!(row.args, json!({"fail": "on purpose"}));
    assert_eq!(
        (row.queue.as_str(), row.priority, row.max_attempts),
        ("api_q", 3, 2)
    );
    assert_eq!(row.tags, vec!["client:42".to_string(), "from-api".into()]);
    assert_eq!(row.unique_key.as_deref(), Some("api:api-test-1"));
    assert_eq!(row.state, "scheduled");
    let delay = (row.run_at - Utc::now()).num_seconds();
    assert!((55..=60).contains(&delay), "run_at {delay}s ahead");

    let again = api
        .call(Method::POST, "/v1/jobs", Some(&token), Some(request))
        .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_eq!(again.body, json!({"id": id, "duplicate": true}));
    assert_eq!(api.job_count().await, 1);

    // Without options, the kind's policy applies: send_email runs on `email` with 10 attempts.
    let email = api
        .call(
            Method::POST,
            "/v1/jobs",
            Some(&token),
            Some(json!({"kind": "send_email", "args": {
                "template": "payment_failed", "to": "jane@example.com", "data": email_data()}})),
        )
        .await;
    assert_eq!(email.status, StatusCode::CREATED, "{}", email.text);
    let (queue, max_attempts): (String, i32) =
        sqlx::query_as("select queue, max_attempts from jobs where id = $1")
            .bind(email.body["id"].as_i64().unwrap())
            .fetch_one(&api.db.pool)
            .await
            .unwrap();
    assert_eq!((queue.as_str(), max_attempts), ("email", 10));
    let report = api.drain("email").await;
    assert_eq!(report.completed, 1, "{report:?}");
    assert_eq!(api.sim.emails().len(), 1);
}

/// A token scoped to one kind (`jobs:write:<kind>`) enqueues that kind and nothing else.
#[tokio::test]
async fn a_kind_scoped_token_enqueues_its_kind_and_nothing_else() {
    let api = Api::new().await;
    let token = api.token(&["jobs:write:noop"]).await;
    let answer = api
        .call(
            Method::POST,
            "/v1/jobs",
            Some(&token),
            Some(json!({"kind": "noop"})),
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text);
    // A kind it was not given, however valid the request: 403 naming what it may do, and nothing
    // stored. `send_email` through here would skip `emails:send`'s checks.
    let email = json!({"kind": "send_email", "args": {
        "template": "welcome", "to": "jane@example.com", "data": {"client_name": "Jane"}}});
    for request in [
        email,
        json!({"kind": "prune"}),
        json!({"kind": "no_such_kind"}),
    ] {
        let answer = api
            .call(
                Method::POST,
                "/v1/jobs",
                Some(&token),
                Some(request.clone()),
            )
            .await;
        assert_eq!(
            answer.status,
            StatusCode::FORBIDDEN,
            "{request}: {}",
            answer.text
        );
        let kind = request["kind"].as_str().unwrap();
        assert_eq!(
            answer.body["error"],
            format!(
                "this token may enqueue only `noop`: kind `{kind}` needs `jobs:write` or \
                 `jobs:write:{kind}`"
            )
        );
    }
    assert_eq!(api.job_count().await, 1);
    // `jobs:write` still means every kind.
    let all = api.token(&["jobs:write"]).await;
    let answer = api
        .call(
            Method::POST,
            "/v1/jobs",
            Some(&all),
            Some(json!({"kind": "prune"})),
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text);
}

/// A caller's key lives apart from the daemon's own (schedule ticks, kinds' keys): taking the key
/// of a coming tick does not keep the tick's job from being enqueued.
#[tokio::test]
async fn a_callers_unique_key_cannot_hold_one_of_the_daemons_own() {
    let api = Api::new().await;
    let token = api.token(&["jobs:write"]).await;
    let tick_key = "schedule:stripe_reconcile:2026-07-01T03:00:00+00:00";
    let taken = api
        .call(
            Method::POST,
            "/v1/jobs",
            Some(&token),
            Some(json!({"kind": "noop", "unique_key": tick_key, "run_at": Utc::now() + chrono::Duration::days(300)})),
        )
        .await;
    assert_eq!(taken.status, StatusCode::CREATED, "{}", taken.text);
    let tick: i64 = sqlx::query_scalar("select enqueue_job('noop', '{}', unique_key => $1)")
        .bind(tick_key)
        .fetch_one(&api.db.pool)
        .await
        .unwrap();
    assert_ne!(
        Some(tick),
        taken.body["id"].as_i64(),
        "the tick gets a job of its own"
    );
    assert_eq!(api.job_count().await, 2);
}

#[tokio::test]
async fn a_body_past_the_configured_limit_is_413_and_stores_nothing() {
    let api = Api::new().await;
    let token = api.token(&["jobs:write", "emails:send"]).await;
    let limit = api.state.config.http.body_limit;
    let pad = "x".repeat(limit + 1);
    let job = json!({"kind": "noop", "args": {"pad": pad}});
    let answer = api
        .call(Method::POST, "/v1/jobs", Some(&token), Some(job))
        .await;
    assert_eq!(
        answer.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        answer.text
    );
    assert_eq!(answer.body, json!({"error": "request body too large"}));
    let mut data = email_data();
    data["client_name"] = json!(pad);
    let email = json!({"template": "welcome", "to": "a@example.com", "data": data});
    let answer = api
        .call(Method::POST, "/v1/emails", Some(&token), Some(email))
        .await;
    assert_eq!(
        answer.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        answer.text
    );
    assert_eq!(api.job_count().await, 0);
}

/// A kind's own unique key is built from its args (`stripe_event:<event_id>`): ids long enough
/// to make a key past PostgreSQL's index entry limit (2704 bytes) used to fail the insert (500).
/// They are refused naming the key; a long but storable id still goes in.
#[tokio::test]
async fn a_kind_key_built_from_overlong_args_is_422_naming_it_and_stores_nothing() {
    let api = Api::new().await;
    let token = api.token(&["jobs:write"]).await;
    let long = noise(6000);
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"kind": "stripe_event", "args": {"event_id": long}}),
            "`unique_key`",
        ),
        (
            json!({"kind": "facebook_sync_account",
                   "args": {"client_id": "c1", "ad_account_id": long}}),
            "`unique_key`",
        ),
        (
            json!({"kind": "drive_delete", "args": {"drive_file_id": long}}),
            "`unique_key`",
        ),
        // Few characters, many bytes: 1,000 of them are 4,000 bytes.
        (
            json!({"kind": "stripe_event", "args": {"event_id": noise(1000).replace('a', "é")}}),
            "`unique_key`",
        ),
    ];
    api.assert_each_unprocessable("/v1/jobs", &token, &cases)
        .await;
    assert_eq!(api.job_count().await, 0, "nothing stored");
    let fits = api
        .call(
            Method::POST,
            "/v1/jobs",
            Some(&token),
            Some(json!({"kind": "stripe_event", "args": {"event_id": noise(400)}})),
        )
        .await;
    assert_eq!(fits.status, StatusCode::CREATED, "{}", fits.text);
}

/// What the caller sent is repeated in a refusal shortened: an unknown kind, template or state
/// of 100,000 characters (or a field, variant or value serde quotes) used to be echoed whole.
#[tokio::test]
async fn a_refusal_repeats_at_most_64_characters_of_the_input() {
    let api = Api::new().await;
    let token = api
        .token(&["jobs:write", "emails:send", "admin:read", "admin:write"])
        .await;
    let long = "k".repeat(100_000);
    let shown = format!("`{}…`", "k".repeat(64));
    let posts = [
        ("/v1/jobs", json!({"kind": long})),
        (
            "/v1/jobs",
            json!({"kind": "send_email", "args": {"template": long, "to": "a@example.com", "data": {}}}),
        ),
        (
            "/v1/emails",
            json!({"template": long, "to": "a@example.com", "data": {}}),
        ),
        (
            "/v1/admin/jobs/bulk",
            json!({"action": "cancel", "filter": {"state": long}}),
        ),
        ("/v1/admin/jobs/bulk", json!({"action": long, "ids": [1]})),
        ("/v1/jobs", json!({"kind": "noop", long.clone(): 1})),
    ];
    for (path, body) in posts {
        let answer = api.call(Method::POST, path, Some(&token), Some(body)).await;
        assert_eq!(
            answer.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{path}: {}",
            &answer.text[..answer.text.len().min(300)]
        );
        assert!(
            answer.text.len() < 1000 && answer.text.contains(&shown),
            "{path}: a {}-byte answer: {}",
            answer.text.len(),
            &answer.text[..answer.text.len().min(300)]
        );
    }
    let path = format!("/v1/admin/jobs?state={}", &long[..10_000]);
    let answer = api.call(Method::GET, &path, Some(&token), None).await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        answer.text.len() < 1000 && answer.text.contains(&shown),
        "a {}-byte answer",
        answer.text.len()
    );
    assert_eq!(api.job_count().await, 0);
}
