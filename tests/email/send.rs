//! The `send_email` job against the simulator: one send per email whatever fails on the way.

use std::time::Duration;

use baseaim_worker::config::SecretString;
use baseaim_worker::integrations::resend::{ResendClient, SendEmailRequest};
use baseaim_worker::jobs::send_email::{EmailError, SendEmail, enqueue_email};
use baseaim_worker::jobs::{AppState, Prune};
use baseaim_worker::queue::JobError;
use baseaim_worker::queue::testing::drain;
use baseaim_worker::queue::{NewJob, enqueue};
use baseaim_worker::sim::fault::FaultKind;
use baseaim_worker::sim::resend::Quota;
use serde_json::json;

use crate::common::{Env, payment_failed_data, setup};

fn payment_failed(to: &str) -> SendEmail {
    SendEmail {
        template: "payment_failed".into(),
        to: to.into(),
        data: payment_failed_data(),
        reply_to: None,
        tags: Vec::new(),
        scheduled_at: None,
    }
}

fn email_request() -> SendEmailRequest {
    SendEmailRequest {
        from: "BaseAim <notifications@baseaim.com>".into(),
        to: vec!["jose@example.com".into()],
        subject: "Hi".into(),
        html: "<p>Hi</p>".into(),
        text: "Hi".into(),
        reply_to: None,
        tags: Vec::new(),
        scheduled_at: None,
    }
}

async fn enqueue_payment_failed(env: &Env, to: &str, invoice: &str) -> i64 {
    let key = format!("email:payment_failed:{invoice}");
    enqueue_email(&env.db.pool, payment_failed(to), Some(&key))
        .await
        .expect("enqueue")
        .id
}

#[tokio::test]
async fn an_email_lands_once_in_the_inbox_and_in_the_log() {
    let env = setup().await;
    let id = enqueue_payment_failed(&env, "jane@example.com", "in_1").await;

    let report = env.drain().await;
    assert_eq!(report.completed, 1, "{report:?}");

    let emails = env.sim.emails();
    assert_eq!(emails.len(), 1);
    let email = &emails[0];
    assert_eq!(email.to, vec!["jane@example.com".to_string()]);
    assert_eq!(email.from, "BaseAim <notifications@baseaim.com>");
    assert_eq!(email.subject, "Payment failed: 120.00 EUR");
    assert!(
        email
            .html
            .as_deref()
            .unwrap()
            .contains("Hi Acme &amp; Sons,"),
        "{:?}",
        email.html
    );
    assert!(
        email
            .text
            .as_deref()
            .unwrap()
            .starts_with("Hi Acme & Sons,")
    );
    assert_eq!(
        email.idempotency_key.as_deref(),
        Some("send_email/email:payment_failed:in_1")
    );

    assert_eq!(env.job(id).await.0, "completed");
    let log = env.log().await;
    assert_eq!(log.len(), 1);
    let row = &log[0];
    assert_eq!(row.idempotency_key, "send_email/email:payment_failed:in_1");
    assert_eq!(row.template, "payment_failed");
    assert_eq!(row.recipient, "jane@example.com");
    assert_eq!(row.subject, "Payment failed: 120.00 EUR");
    assert_eq!(row.status, "sent");
    assert_eq!(row.resend_id.as_deref(), Some(email.id.as_str()));
    assert_eq!(row.attempts, 1);
    assert!(row.sent);
}

#[tokio::test]
async fn asking_again_for_an_email_already_sent_does_not_mail_twice() {
    let env = setup().await;
    enqueue_payment_failed(&env, "jane@example.com", "in_1").await;
    env.drain().await;
    // The first job finished, so its unique key is free: a second job is enqueued and runs.
    enqueue_payment_failed(&env, "jane@example.com", "in_1").await;
    // Even once Resend has forgotten the key, the log knows the email went out.
    env.sim.forget_idempotency_keys();
    let report = env.drain().await;
    assert_eq!(report.completed, 1, "{report:?}");
    assert_eq!(env.sim.emails().len(), 1, "mailed twice");
    assert_eq!(env.log().await.len(), 1);
}

#[tokio::test]
async fn timeouts_cut_connections_and_500s_on_the_first_tries_still_deliver_exactly_once() {
    let env = setup().await;
    let mut faults = env.sim.faults().config();
    faults.hang_for = Duration::from_secs(3); // beyond the client's 500 ms timeout
    env.sim.faults().set(faults);
    // The hang and the cut body are processed by Resend (the email is accepted) but the client
    // never learns it: only the idempotency key keeps the retries from sending again.
    env.sim.faults().script([
        Some(FaultKind::Hang),
        Some(FaultKind::CutBody),
        Some(FaultKind::ServerError(500)),
        None,
    ]);
    let id = enqueue_payment_failed(&env, "jane@example.com", "in_2").await;

    for attempt in 1..=3 {
        let report = env.drain().await;
        assert_eq!(report.retried, 1, "attempt {attempt}: {report:?}");
        let (state, _, _) = env.job(id).await;
        assert_eq!(state, "retryable");
        env.make_due(id).await;
    }
    let report = env.drain().await;
    assert_eq!(report.completed, 1, "{report:?}");

    assert_eq!(env.sim.emails().len(), 1, "exactly one email");
    let (state, attempt, errors) = env.job(id).await;
    assert_eq!((state.as_str(), attempt), ("completed", 4));
    let errors = errors.unwrap().to_string();
    assert!(errors.contains("timed out"), "{errors}");
    assert!(errors.contains("500"), "{errors}");
    let row = &env.log().await[0];
    assert_eq!(row.status, "sent");
    assert_eq!(row.attempts, 4);
    assert_eq!(
        row.resend_id.as_deref(),
        Some(env.sim.emails()[0].id.as_str())
    );
}

#[tokio::test]
async fn a_429_snoozes_without_spending_an_attempt() {
    let env = setup().await;
    env.sim.faults().script([
        Some(FaultKind::TooManyRequests),
        Some(FaultKind::TooManyRequests),
    ]);
    let id = enqueue_payment_failed(&env, "jane@example.com", "in_3").await;

    for _ in 0..2 {
        let report = env.drain().await;
        assert_eq!(report.snoozed, 1, "{report:?}");
        let due: bool =
            sqlx::query_scalar("select run_at > now() + interval '500 ms' from jobs where id = $1")
                .bind(id)
                .fetch_one(&env.db.pool)
                .await
                .unwrap();
        assert!(due, "snoozed until Resend's retry-after (1 s)");
        let (_, attempt, errors) = env.job(id).await;
        assert_eq!(attempt, 0, "the attempt is given back");
        assert_eq!(errors, None);
        env.make_due(id).await;
    }
    let report = env.drain().await;
    assert_eq!(report.completed, 1, "{report:?}");
    assert_eq!(env.job(id).await.1, 1, "one attempt in all");
    assert_eq!(env.sim.emails().len(), 1);
}

#[tokio::test]
async fn a_used_up_sending_quota_waits_for_the_reset_without_failing_the_email() {
    let env = setup().await;
    env.sim.set_quota_exceeded(Some(Quota::Daily));
    let id = enqueue_payment_failed(&env, "jane@example.com", "in_quota").await;
    // More refusals than the email has attempts (10).
    for _ in 0..12 {
        let report = env.drain().await;
        assert_eq!(report.snoozed, 1, "{report:?}");
        let (state, attempt, _) = env.job(id).await;
        assert_eq!((state.as_str(), attempt), ("scheduled", 0));
        let waits_an_hour: bool = sqlx::query_scalar(
            "select run_at > now() + interval '50 minutes' from jobs where id = $1",
        )
        .bind(id)
        .fetch_one(&env.db.pool)
        .await
        .unwrap();
        assert!(waits_an_hour, "the quota is not back in a few seconds");
        assert_eq!(env.log().await[0].status, "queued");
        env.make_due(id).await;
    }
    env.sim.set_quota_exceeded(None);
    let report = env.drain().await;
    assert_eq!(report.completed, 1, "{report:?}");
    assert_eq!(env.sim.emails().len(), 1);
    assert_eq!(env.log().await[0].status, "sent");
}

#[tokio::test]
async fn a_unique_key_with_accents_sends_once() {
    let env = setup().await;
    let welcome = SendEmail {
        template: "welcome".into(),
        to: "jose@example.com".into(),
        data: json!({"client_name": "José", "dashboard_url": "https://app.example.com"})
            .as_object()
            .unwrap()
            .clone(),
        reply_to: None,
        tags: Vec::new(),
        scheduled_at: None,
    };
    let id = enqueue_email(&env.db.pool, welcome, Some("welcome:José"))
        .await
        .unwrap()
        .id;
    let report = env.drain().await;
    assert_eq!(report.completed, 1, "{report:?}");
    assert_eq!(env.job(id).await.1, 1, "sent on the first attempt");
    let emails = env.sim.emails();
    assert_eq!(emails.len(), 1);
    let key = emails[0].idempotency_key.clone().unwrap();
    assert!(key.starts_with("send_email/sha256:"), "{key}");
    assert_eq!(env.log().await[0].status, "sent");
}

#[tokio::test]
async fn a_key_no_header_can_carry_is_a_permanent_error_and_nothing_is_sent() {
    let env = setup().await;
    let client = ResendClient::new(
        env.sim.base_url(),
        SecretString::from(env.sim.api_key()),
        Duration::from_secs(5),
    )
    .unwrap();
    let error = client
        .send(&email_request(), "send_email/line\nbreak")
        .await
        .unwrap_err();
    assert!(
        matches!(JobError::from(error.clone()), JobError::Discard(_)),
        "{error}"
    );
    assert!(env.sim.calls().all().is_empty());
}

#[tokio::test]
async fn an_absurd_retry_after_is_clamped_to_a_day_instead_of_panicking() {
    use axum::http::{HeaderValue, StatusCode};
    use axum::response::IntoResponse;

    // A Resend stand-in whose 429 says `retry-after: 1e20`.
    let app = axum::Router::new().route(
        "/emails",
        axum::routing::post(|| async {
            let mut response = (
                StatusCode::TOO_MANY_REQUESTS,
                axum::Json(json!({"statusCode": 429, "name": "rate_limit_exceeded",
                                  "message": "Too many requests."})),
            )
                .into_response();
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from_static("1e20"));
            response
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client =
        ResendClient::new(&base, SecretString::from("re_key"), Duration::from_secs(5)).unwrap();
    let error = client
        .send(&email_request(), "send_email/clamped")
        .await
        .unwrap_err();
    assert!(
        matches!(JobError::from(error.clone()), JobError::Snooze(wait) if wait == Duration::from_secs(86_400)),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_422_is_discarded_with_resends_message_in_the_job_and_the_log() {
    let env = setup().await;
    let id = enqueue_payment_failed(&env, "not-an-address", "in_4").await;

    let report = env.drain().await;
    assert_eq!(report.discarded, 1, "{report:?}");
    assert!(env.sim.emails().is_empty());
    let (state, attempt, errors) = env.job(id).await;
    assert_eq!((state.as_str(), attempt), ("discarded", 1));
    let message = "Invalid `to` field. The email address needs to follow the `email@example.com` or `Name <email@example.com>` format. Received: not-an-address";
    let errors = errors.unwrap().to_string();
    assert!(errors.contains("422 validation_error"), "{errors}");
    assert!(errors.contains(message), "{errors}");
    let row = &env.log().await[0];
    assert_eq!(row.status, "failed");
    let last_error = row.last_error.as_deref().unwrap();
    assert!(last_error.contains(message), "{last_error}");
    assert!(!row.sent);
}

#[tokio::test]
async fn a_missing_template_variable_is_refused_at_enqueue_and_nothing_is_queued() {
    let env = setup().await;
    let mut email = payment_failed("jane@example.com");
    email.data.remove("invoice_url");
    let refused = enqueue_email(&env.db.pool, email, Some("email:payment_failed:in_5")).await;
    match refused {
        Err(EmailError::Render { template, detail }) => {
            assert_eq!(template, "payment_failed");
            assert!(detail.contains("undefined"), "{detail}");
        }
        other => panic!("expected a render error, got {other:?}"),
    }
    let jobs: i64 = sqlx::query_scalar("select count(*) from jobs")
        .fetch_one(&env.db.pool)
        .await
        .unwrap();
    assert_eq!(jobs, 0);
}

#[tokio::test]
async fn a_job_whose_variables_do_not_render_is_discarded_without_sending() {
    let env = setup().await;
    // Enqueued around the validation (as an old payload or a changed template could be).
    let mut email = payment_failed("jane@example.com");
    email.data.remove("amount");
    let id = enqueue(&env.db.pool, NewJob::of(&email).unwrap())
        .await
        .unwrap()
        .id;
    let report = env.drain().await;
    assert_eq!(report.discarded, 1, "{report:?}");
    assert!(env.sim.emails().is_empty());
    let errors = env.job(id).await.2.unwrap().to_string();
    assert!(errors.contains("payment_failed"), "{errors}");
    assert_eq!(env.log().await[0].status, "failed");
}

#[tokio::test]
async fn without_an_api_key_the_job_is_discarded_with_a_clear_error() {
    let env = setup().await;
    let state = AppState {
        resend: None,
        ..env.state.clone()
    };
    let id = enqueue_payment_failed(&env, "jane@example.com", "in_6").await;
    let report = drain(&env.db.pool, &env.registry, state, "email")
        .await
        .unwrap();
    assert_eq!(report.discarded, 1, "{report:?}");
    let errors = env.job(id).await.2.unwrap().to_string();
    assert!(errors.contains("RESEND_API_KEY is not set"), "{errors}");
    assert!(env.sim.emails().is_empty());
}

#[tokio::test]
async fn the_same_key_with_another_email_is_discarded_not_sent() {
    let env = setup().await;
    enqueue_payment_failed(&env, "jane@example.com", "in_7").await;
    env.drain().await;
    // The log row is gone (pruned) and a different email comes with the same key: Resend still
    // remembers the key and refuses the other body.
    sqlx::query("delete from email_log")
        .execute(&env.db.pool)
        .await
        .unwrap();
    let mut other = payment_failed("jane@example.com");
    other.data.insert("amount".into(), json!("999.00"));
    let id = enqueue_email(&env.db.pool, other, Some("email:payment_failed:in_7"))
        .await
        .unwrap()
        .id;
    let report = env.drain().await;
    assert_eq!(report.discarded, 1, "{report:?}");
    assert_eq!(env.sim.emails().len(), 1);
    let errors = env.job(id).await.2.unwrap().to_string();
    assert!(errors.contains("idempotency conflict"), "{errors}");
}

#[tokio::test]
async fn the_prune_job_deletes_email_log_rows_past_the_retention() {
    let env = setup().await;
    enqueue_payment_failed(&env, "old@example.com", "in_8").await;
    enqueue_payment_failed(&env, "new@example.com", "in_9").await;
    env.drain().await;
    sqlx::query(
        "update email_log set created_at = now() - interval '91 days' where recipient = 'old@example.com'",
    )
    .execute(&env.db.pool)
    .await
    .unwrap();

    let id = enqueue(&env.db.pool, NewJob::of(&Prune::default()).unwrap())
        .await
        .unwrap()
        .id;
    let report = drain(&env.db.pool, &env.registry, env.state.clone(), "default")
        .await
        .unwrap();
    assert_eq!(report.completed, 1, "{report:?}");
    let recipients: Vec<String> = env.log().await.into_iter().map(|r| r.recipient).collect();
    assert_eq!(recipients, vec!["new@example.com".to_string()]);
    let result: serde_json::Value = sqlx::query_scalar("select result from jobs where id = $1")
        .bind(id)
        .fetch_one(&env.db.pool)
        .await
        .unwrap();
    assert_eq!(result["email_log_pruned"], 1, "{result}");
}
