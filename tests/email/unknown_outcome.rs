//! An email whose send went unanswered (it may have been accepted) is not sent again once Resend
//! may have forgotten its Idempotency-Key: Resend keeps keys 24 h, the job stops at 23 h. Here the
//! simulator forgets after 2 s and the job's window is 1.5 s.

use std::time::Duration;

use baseaim_worker::config::SecretString;
use baseaim_worker::integrations::resend::{ResendClient, ResendError, SendEmailRequest};
use baseaim_worker::jobs::send_email::{SendEmail, enqueue_email};
use baseaim_worker::queue::{JobError, admin};
use baseaim_worker::sim::fault::FaultKind;
use baseaim_worker::sim::resend::Quota;
use chrono::{DateTime, Utc};

use crate::common::{Env, payment_failed_data, setup_with_key_ttl};

const KEY_TTL: Duration = Duration::from_secs(2);
const WINDOW: Duration = Duration::from_millis(1500);

async fn enqueue(env: &Env, invoice: &str) -> i64 {
    let email = SendEmail {
        template: "payment_failed".into(),
        to: "jane@example.com".into(),
        data: payment_failed_data(),
        reply_to: None,
        tags: Vec::new(),
        scheduled_at: None,
    };
    let key = format!("email:payment_failed:{invoice}");
    enqueue_email(&env.db.pool, email, Some(&key))
        .await
        .expect("enqueue")
        .id
}

async fn unknown_since(env: &Env) -> Option<DateTime<Utc>> {
    sqlx::query_scalar("select unknown_since from email_log")
        .fetch_one(&env.db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn an_unanswered_send_is_not_repeated_once_resend_may_have_forgotten_the_key() {
    let env = setup_with_key_ttl(KEY_TTL, WINDOW).await;
    let mut faults = env.sim.faults().config();
    faults.hang_for = Duration::from_secs(3); // beyond the client's 500 ms timeout
    env.sim.faults().set(faults);
    // Resend accepts the first request (and sends the email), but its answer never arrives.
    env.sim.faults().script([Some(FaultKind::Hang)]);
    let id = enqueue(&env, "in_unknown").await;

    let report = env.drain().await;
    assert_eq!(report.retried, 1, "{report:?}");
    assert_eq!(
        env.sim.emails().len(),
        1,
        "Resend accepted the first request"
    );

    // The retry meets a used-up quota: snoozed, again and again, until after Resend forgot the key.
    env.sim.set_quota_exceeded(Some(Quota::Daily));
    env.make_due(id).await;
    let report = env.drain().await;
    assert_eq!(report.snoozed, 1, "{report:?}");
    tokio::time::sleep(KEY_TTL + Duration::from_millis(200)).await;
    env.sim.set_quota_exceeded(None);
    env.make_due(id).await;
    let report = env.drain().await;

    assert_eq!(
        env.sim.emails().len(),
        1,
        "the customer got the email twice"
    );
    assert_eq!(report.discarded, 1, "{report:?}");
    let (state, _, errors) = env.job(id).await;
    assert_eq!(state, "discarded");
    let errors = errors.unwrap().to_string();
    assert!(errors.contains("24 h"), "{errors}");
    assert!(errors.contains("operator must check in Resend"), "{errors}");
    let row = &env.log().await[0];
    assert_eq!(row.status, "unknown");
    assert!(unknown_since(&env).await.is_some());
    assert!(!row.sent);
    let last_error = row.last_error.as_deref().unwrap();
    assert!(
        last_error.contains("send_email/email:payment_failed:in_unknown"),
        "{last_error}"
    );

    // Run again (an operator's retry): still not sent, still for the operator.
    let mut conn = env.db.pool.acquire().await.unwrap();
    assert_eq!(admin::retry(&mut conn, &[id]).await.unwrap(), 1);
    drop(conn);
    let report = env.drain().await;
    assert_eq!(report.discarded, 1, "{report:?}");
    assert_eq!(env.sim.emails().len(), 1);
    assert_eq!(env.log().await[0].status, "unknown");
}

#[tokio::test]
async fn an_email_refused_before_it_was_accepted_still_sends_after_the_window() {
    let env = setup_with_key_ttl(KEY_TTL, WINDOW).await;
    // Two refusals Resend answers before accepting anything: a 429 and a used-up quota.
    env.sim
        .faults()
        .script([Some(FaultKind::TooManyRequests), None]);
    let id = enqueue(&env, "in_refused").await;
    let report = env.drain().await;
    assert_eq!(report.snoozed, 1, "{report:?}");
    env.sim.set_quota_exceeded(Some(Quota::Monthly));
    env.make_due(id).await;
    let report = env.drain().await;
    assert_eq!(report.snoozed, 1, "{report:?}");
    assert_eq!(unknown_since(&env).await, None, "refusals do not count");

    tokio::time::sleep(KEY_TTL + Duration::from_millis(200)).await;
    env.sim.set_quota_exceeded(None);
    env.make_due(id).await;
    let report = env.drain().await;
    assert_eq!(report.completed, 1, "{report:?}");
    assert_eq!(env.sim.emails().len(), 1);
    assert_eq!(env.log().await[0].status, "sent");
}

#[tokio::test]
async fn a_connection_never_made_is_not_an_unknown_outcome() {
    // A port nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let client =
        ResendClient::new(&base, SecretString::from("re_key"), Duration::from_secs(5)).unwrap();
    let email = SendEmailRequest {
        from: "BaseAim <notifications@baseaim.com>".into(),
        to: vec!["jane@example.com".into()],
        subject: "Hi".into(),
        html: "<p>Hi</p>".into(),
        text: "Hi".into(),
        reply_to: None,
        tags: Vec::new(),
        scheduled_at: None,
    };
    let error = client
        .send(&email, "send_email/unreached")
        .await
        .unwrap_err();
    assert!(matches!(error, ResendError::Unreached(_)), "{error:?}");
    assert!(!error.may_have_been_accepted());
    assert!(
        matches!(JobError::from(error), JobError::Retry { .. }),
        "retried"
    );
}
