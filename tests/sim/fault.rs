//! Fault injection: deterministic under a seed, each fault kind as a client meets it, in each
//! provider's own words.

use std::time::{Duration, Instant};

use baseaim_worker::sim::facebook::{FacebookConfig, FacebookSim};
use baseaim_worker::sim::google_drive::{GoogleDriveConfig, GoogleDriveSim};
use baseaim_worker::sim::resend::{ResendConfig, ResendSim};
use baseaim_worker::sim::stripe::{StripeConfig, StripeSim};
use baseaim_worker::sim::{FaultConfig, FaultKind};
use serde_json::{Value, json};

use crate::client;

async fn resend() -> ResendSim {
    ResendSim::start(ResendConfig {
        rate_limit_per_second: 10_000,
        ..ResendConfig::default()
    })
    .await
    .expect("start")
}

fn email(i: usize) -> Value {
    json!({"from": "a@baseaim.test", "to": format!("u{i}@example.com"), "subject": "s", "text": "t"})
}

async fn statuses(sim: &ResendSim, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for i in 0..n {
        let response = client()
            .post(format!("{}/emails", sim.base_url()))
            .bearer_auth(sim.api_key())
            .json(&email(i))
            .send()
            .await
            .expect("send");
        out.push(response.status().as_u16());
    }
    out
}

fn flaky(seed: u64) -> FaultConfig {
    FaultConfig {
        seed,
        server_error_rate: 0.3,
        too_many_requests_rate: 0.1,
        ..FaultConfig::default()
    }
}

#[tokio::test]
async fn the_same_seed_replays_the_same_faults() {
    let sim = resend().await;
    sim.faults().set(flaky(11));
    let first = statuses(&sim, 40).await;
    sim.faults().set(flaky(11));
    let again = statuses(&sim, 40).await;
    assert_eq!(first, again);
    assert!(first.contains(&200));
    assert!(first.iter().any(|s| *s == 500 || *s == 503));
    assert!(first.contains(&429));

    sim.faults().set(flaky(12));
    let other = statuses(&sim, 40).await;
    assert_ne!(first, other, "another seed gives another sequence");

    // Faulted requests were not processed: one email per 200.
    let ok = first
        .iter()
        .chain(&again)
        .chain(&other)
        .filter(|s| **s == 200)
        .count();
    assert_eq!(sim.emails().len(), ok);
    assert_eq!(
        sim.calls()
            .all()
            .iter()
            .filter(|c| c.fault.is_some())
            .count() as u64,
        sim.faults().injected()
    );
}

#[tokio::test]
async fn injected_errors_wear_each_providers_error_body() {
    let resend = resend().await;
    resend.faults().next(FaultKind::ServerError(500));
    let response = client()
        .post(format!("{}/emails", resend.base_url()))
        .bearer_auth(resend.api_key())
        .json(&email(0))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 500);
    assert_eq!(
        response.json::<Value>().await.expect("json")["name"],
        "application_error"
    );

    let facebook = FacebookSim::start(FacebookConfig::default())
        .await
        .expect("start");
    facebook.faults().next(FaultKind::Throttled);
    let account = facebook.accounts()[0].id.clone();
    let body: Value = client()
        .get(format!(
            "{}/v22.0/act_{account}/insights?level=campaign&access_token={}",
            facebook.base_url(),
            facebook.access_token()
        ))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(body["error"]["code"], 80000);

    let drive = GoogleDriveSim::start(GoogleDriveConfig::default())
        .await
        .expect("start");
    drive.faults().next(FaultKind::Throttled);
    let response = client()
        .get(format!("{}/drive/v3/files", drive.base_url()))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.expect("json");
    assert_eq!(
        body["error"]["errors"][0]["reason"],
        "userRateLimitExceeded"
    );

    let stripe = StripeSim::start(StripeConfig::default())
        .await
        .expect("start");
    stripe.faults().next(FaultKind::TooManyRequests);
    let response = client()
        .get(format!("{}/v1/subscriptions", stripe.base_url()))
        .bearer_auth(stripe.api_key())
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 429);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "rate_limit");
}

#[tokio::test]
async fn a_cut_body_fails_the_read_but_the_effect_happened() {
    let sim = resend().await;
    sim.faults().next(FaultKind::CutBody);
    let response = client()
        .post(format!("{}/emails", sim.base_url()))
        .bearer_auth(sim.api_key())
        .json(&email(0))
        .send()
        .await
        .expect("headers arrive");
    assert_eq!(response.status(), 200);
    assert!(response.bytes().await.is_err(), "the body must be cut");
    assert_eq!(sim.emails().len(), 1);
}

#[tokio::test]
async fn a_hang_outlasts_the_client_timeout_after_the_effect() {
    let sim = resend().await;
    sim.faults().set(FaultConfig {
        hang_for: Duration::from_secs(5),
        ..FaultConfig::default()
    });
    sim.faults().next(FaultKind::Hang);
    let started = Instant::now();
    let result = client()
        .post(format!("{}/emails", sim.base_url()))
        .bearer_auth(sim.api_key())
        .timeout(Duration::from_millis(300))
        .json(&email(0))
        .send()
        .await;
    assert!(result.is_err_and(|e| e.is_timeout()));
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(sim.emails().len(), 1, "the email went out before the hang");
}

#[tokio::test]
async fn a_fixed_latency_delays_every_request() {
    let sim = resend().await;
    sim.faults().set(FaultConfig {
        latency: Duration::from_millis(250),
        ..FaultConfig::default()
    });
    let started = Instant::now();
    assert_eq!(statuses(&sim, 2).await, [200, 200]);
    assert!(started.elapsed() >= Duration::from_millis(500));
}

#[tokio::test]
async fn a_path_prefix_spares_other_paths() {
    let drive = GoogleDriveSim::start(GoogleDriveConfig {
        faults: FaultConfig {
            server_error_rate: 1.0,
            path_prefix: Some("/drive/".into()),
            ..FaultConfig::default()
        },
        ..GoogleDriveConfig::default()
    })
    .await
    .expect("start");
    let account = drive.service_account();
    let assertion = account
        .sign_assertion(&account.claims(
            "https://www.googleapis.com/auth/drive",
            baseaim_worker::sim::google_drive::GOOGLE_TOKEN_URL,
        ))
        .expect("sign");
    let token = client()
        .post(drive.token_uri())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(crate::form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", assertion.as_str()),
        ]))
        .send()
        .await
        .expect("send");
    assert_eq!(token.status(), 200, "the token endpoint is spared");
    let list = client()
        .get(format!("{}/drive/v3/files", drive.base_url()))
        .send()
        .await
        .expect("send");
    assert!(list.status().is_server_error());
}
