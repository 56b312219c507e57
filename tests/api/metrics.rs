//! `/metrics` after jobs ran, and job fields on every JSON log line inside a job.

use axum::http::{Method, StatusCode, header};
use serde_json::{Value, json};

use baseaim_worker::queue::{Engine, EngineConfig};
use baseaim_worker::sim::fault::FaultKind;

use crate::helpers::{Api, email_data};
use crate::support::CapturedLog;

#[tokio::test]
async fn metrics_show_job_outcomes_durations_queue_depth_and_provider_calls() {
    let api = Api::new().await;
    let writer = api.token(&["jobs:write", "emails:send"]).await;
    let reader = api.token(&["admin:read"]).await;
    for body in [
        json!({"kind": "noop", "queue": "metrics_q"}),
        json!({"kind": "noop", "queue": "metrics_q", "args": {"fail": "x"}, "max_attempts": 1}),
        json!({"kind": "noop", "queue": "metrics_later", "delay_seconds": 3600}),
    ] {
        let answer = api
            .call(Method::POST, "/v1/jobs", Some(&writer), Some(body))
            .await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text);
    }
    let email = api
        .call(
            Method::POST,
            "/v1/emails",
            Some(&writer),
            Some(json!({"template": "payment_failed", "to": "jane@example.com", "data": email_data()})),
        )
        .await;
    assert_eq!(email.status, StatusCode::ACCEPTED, "{}", email.text);
    api.drain("metrics_q").await;
    // Resend fails once (a 500: retried), then sends.
    api.sim
        .faults()
        .script([Some(FaultKind::ServerError(500)), None]);
    assert_eq!(api.drain("email").await.retried, 1);
    sqlx::query("update jobs set run_at = now() where queue = 'email'")
        .execute(&api.db.pool)
        .await
        .unwrap();
    assert_eq!(api.drain("email").await.completed, 1);
    // An empty bucket whose next token is far off: the next email is snoozed.
    sqlx::query(
        "update rate_limits set tokens = 0, rate_per_s = 0.01, updated_at = now()
          where name = 'resend'",
    )
    .execute(&api.db.pool)
    .await
    .unwrap();
    let email = api
        .call(
            Method::POST,
            "/v1/emails",
            Some(&writer),
            Some(json!({"template": "payment_failed", "to": "john@example.com", "data": email_data()})),
        )
        .await;
    assert_eq!(email.status, StatusCode::ACCEPTED, "{}", email.text);
    assert_eq!(api.drain("email").await.snoozed, 1);
    // A webhook while STRIPE_WEBHOOK_SECRET is unset: 503, counted.
    let webhook = api
        .call(Method::POST, "/webhooks/stripe", None, Some(json!({})))
        .await;
    assert_eq!(webhook.status, StatusCode::SERVICE_UNAVAILABLE);

    let answer = api.call(Method::GET, "/metrics", Some(&reader), None).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(
        answer.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = answer.text;
    for needle in [
        r#"baw_jobs_total{queue="metrics_q",kind="noop",outcome="completed"} 1"#,
        r#"baw_jobs_total{queue="metrics_q",kind="noop",outcome="discarded"} 1"#,
        r#"baw_job_duration_seconds_bucket{queue="metrics_q",kind="noop",le="0.005"}"#,
        r#"baw_job_duration_seconds_count{queue="metrics_q",kind="noop"} 2"#,
        r#"baw_provider_requests_total{provider="resend",result="ok"}"#,
        r#"baw_provider_requests_total{provider="resend",result="server"}"#,
        r#"baw_provider_errors_total{provider="resend",class="server"}"#,
        r#"baw_jobs_total{queue="email",kind="send_email",outcome="retry"}"#,
        r#"baw_jobs_total{queue="email",kind="send_email",outcome="snooze"}"#,
        r#"baw_rate_limit_snoozes_total{bucket="resend"}"#,
        r#"baw_webhooks_total{provider="stripe",result="unavailable"}"#,
        r#"baw_queue_depth{queue="metrics_later"} 1"#,
        r#"baw_queue_jobs{queue="metrics_later",state="scheduled"} 1"#,
        r#"baw_queue_oldest_runnable_age_seconds{queue="metrics_later"} 0"#,
        "# TYPE baw_job_duration_seconds histogram",
    ] {
        assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
    }
}

#[tokio::test]
async fn every_json_log_line_inside_a_job_carries_its_id_kind_and_attempt() {
    let api = Api::new().await;
    let writer = api.token(&["emails:send"]).await;
    let captured = CapturedLog::default();
    let sink = captured.clone();
    let subscriber = baseaim_worker::telemetry::json_subscriber(
        tracing_subscriber::EnvFilter::new("info"),
        move || sink.clone(),
    );
    let send = |to: &'static str| {
        let (api, writer) = (&api, writer.clone());
        async move {
            let answer = api
                .call(
                    Method::POST,
                    "/v1/emails",
                    Some(&writer),
                    Some(json!({"template": "payment_failed", "to": to, "data": email_data()})),
                )
                .await;
            answer.body["id"].as_i64().unwrap()
        }
    };
    let drained = send("jane@example.com").await;
    let by_engine = send("john@example.com").await;
    {
        // This test's runtime is single-threaded: the jobs (and the engine's tasks) run on this
        // thread, under this subscriber.
        let _guard = tracing::subscriber::set_default(subscriber);
        // One through `drain`...
        sqlx::query("update jobs set run_at = now() + interval '1 hour' where id = $1")
            .bind(by_engine)
            .execute(&api.db.pool)
            .await
            .unwrap();
        assert_eq!(api.drain("email").await.completed, 1);
        // ...and one through the engine, as in production.
        sqlx::query("update jobs set run_at = now() where id = $1")
            .bind(by_engine)
            .execute(&api.db.pool)
            .await
            .unwrap();
        let mut config = EngineConfig::from_config(&api.state.config, "all");
        config.maintenance = None;
        let engine = Engine::start(
            api.db.pool.clone(),
            baseaim_worker::jobs::registry(),
            api.state.clone(),
            config,
        )
        .await
        .unwrap();
        crate::support::eventually(10, "the engine sent the second email", || async {
            api.sim.emails().len() == 2
        })
        .await;
        engine.shutdown().await;
    }
    let output = captured.text();
    let lines: Vec<Value> = output
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let sent: Vec<&Value> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "email sent")
        .collect();
    assert_eq!(sent.len(), 2, "{output}");
    for (line, id) in sent.iter().zip([drained, by_engine]) {
        assert_eq!(line["span"]["name"], "job", "{line}");
        assert_eq!(line["span"]["id"], id, "{line}");
        assert_eq!(line["span"]["kind"], "send_email", "{line}");
        assert_eq!(line["span"]["attempt"], 1, "{line}");
        let job_spans = line["spans"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["name"] == "job")
            .count();
        assert_eq!(job_spans, 1, "one job span, not nested twice: {line}");
    }
    // Addresses are masked in logs.
    assert!(!output.contains("jane@example.com"), "{output}");
}
