//! Resend: the requests and responses against `resend.openapi.json`, idempotency and the rate
//! limit.

use std::time::Duration;

use baseaim_worker::sim::resend::{ResendConfig, ResendSim};
use serde_json::{Value, json};

use crate::{client, fixture};

/// A validator for `components.schemas.<name>` of the Resend OpenAPI document.
fn schema(name: &str) -> jsonschema::Validator {
    let spec = fixture("resend.openapi.json");
    let schema = json!({
        "$ref": format!("#/components/schemas/{name}"),
        "components": spec["components"],
    });
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .build(&schema)
        .expect("compile schema")
}

async fn start(config: ResendConfig) -> ResendSim {
    ResendSim::start(config).await.expect("start resend sim")
}

fn unlimited() -> ResendConfig {
    ResendConfig {
        rate_limit_per_second: 1000,
        ..ResendConfig::default()
    }
}

async fn post(sim: &ResendSim, path: &str, body: &Value, key: Option<&str>) -> reqwest::Response {
    let mut request = client()
        .post(format!("{}{path}", sim.base_url()))
        .bearer_auth(sim.api_key())
        .json(body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    request.send().await.expect("send")
}

fn welcome(to: &str) -> Value {
    json!({
        "from": "BaseAim <billing@baseaim.test>",
        "to": [to],
        "subject": "Your invoice",
        "html": "<p>Paid, thanks.</p>",
        "tags": [{"name": "category", "value": "invoice"}],
    })
}

#[tokio::test]
async fn a_valid_send_is_accepted_and_both_sides_match_the_openapi_schemas() {
    let sim = start(unlimited()).await;
    let request = welcome("ann@example.com");
    assert!(schema("SendEmailRequest").is_valid(&request));

    let response = post(&sim, "/emails", &request, None).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert!(schema("SendEmailResponse").is_valid(&body), "{body}");

    let emails = sim.emails();
    assert_eq!(emails.len(), 1);
    assert_eq!(Some(emails[0].id.as_str()), body["id"].as_str());
    assert_eq!(emails[0].to, vec!["ann@example.com".to_owned()]);
    assert_eq!(emails[0].subject, "Your invoice");
}

#[tokio::test]
async fn the_simulator_refuses_what_the_schema_refuses() {
    let sim = start(unlimited()).await;
    let validator = schema("SendEmailRequest");
    let mut no_subject = welcome("a@example.com");
    no_subject
        .as_object_mut()
        .expect("object")
        .remove("subject");
    let mut too_many = welcome("a@example.com");
    too_many["to"] = json!(
        (0..51)
            .map(|i| format!("u{i}@example.com"))
            .collect::<Vec<_>>()
    );
    let mut to_a_number = welcome("a@example.com");
    to_a_number["to"] = json!(42);

    for bad in [no_subject, too_many, to_a_number] {
        assert!(!validator.is_valid(&bad), "the schema accepts {bad}");
        let response = post(&sim, "/emails", &bad, None).await;
        assert_eq!(response.status(), 422, "{bad}");
        let error: Value = response.json().await.expect("json");
        assert_eq!(error["statusCode"], 422);
        assert!(
            error["name"].is_string() && error["message"].is_string(),
            "{error}"
        );
    }
    assert!(sim.emails().is_empty());
}

#[tokio::test]
async fn a_batch_answers_one_id_per_email_in_the_schema_shape() {
    let sim = start(unlimited()).await;
    let batch = json!([welcome("a@example.com"), welcome("b@example.com")]);
    let response = post(&sim, "/emails/batch", &batch, None).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert!(
        schema("CreateBatchEmailsResponse").is_valid(&body),
        "{body}"
    );
    assert_eq!(body["data"].as_array().map(Vec::len), Some(2));
    assert_eq!(sim.emails().len(), 2);
    assert!(sim.emails().iter().all(|e| e.batch));
}

#[tokio::test]
async fn a_strict_batch_with_one_bad_email_sends_nothing_and_a_permissive_one_sends_the_rest() {
    let sim = start(unlimited()).await;
    let batch = json!([welcome("a@example.com"), {"from": "x@y.test", "to": "b@example.com"}]);

    let strict = post(&sim, "/emails/batch", &batch, None).await;
    assert_eq!(strict.status(), 422);
    assert!(sim.emails().is_empty());

    let permissive = client()
        .post(format!("{}/emails/batch", sim.base_url()))
        .bearer_auth(sim.api_key())
        .header("x-batch-validation", "permissive")
        .json(&batch)
        .send()
        .await
        .expect("send");
    assert_eq!(permissive.status(), 200);
    let body: Value = permissive.json().await.expect("json");
    assert_eq!(body["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(body["errors"][0]["index"], 1);
    assert_eq!(sim.emails().len(), 1);
}

#[tokio::test]
async fn the_same_idempotency_key_replays_the_first_answer_and_mails_once() {
    let sim = start(unlimited()).await;
    let request = welcome("ann@example.com");
    let first: Value = post(&sim, "/emails", &request, Some("invoice-paid/in_1"))
        .await
        .json()
        .await
        .expect("json");
    let again = post(&sim, "/emails", &request, Some("invoice-paid/in_1")).await;
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.expect("json");
    assert_eq!(first["id"], again["id"]);
    assert_eq!(sim.emails().len(), 1);
}

#[tokio::test]
async fn the_same_key_with_another_payload_is_a_conflict() {
    let sim = start(unlimited()).await;
    post(&sim, "/emails", &welcome("ann@example.com"), Some("k-1")).await;
    let response = post(&sim, "/emails", &welcome("bob@example.com"), Some("k-1")).await;
    assert_eq!(response.status(), 409);
    let error: Value = response.json().await.expect("json");
    assert_eq!(error["name"], "invalid_idempotent_request");
    assert_eq!(sim.emails().len(), 1);
}

#[tokio::test]
async fn the_same_key_while_the_first_is_in_flight_is_a_retryable_conflict() {
    let sim = start(ResendConfig {
        processing_delay: Duration::from_millis(400),
        ..unlimited()
    })
    .await;
    let request = welcome("ann@example.com");
    let (first, second) = tokio::join!(post(&sim, "/emails", &request, Some("k-2")), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        post(&sim, "/emails", &request, Some("k-2")).await
    });
    assert_eq!(first.status(), 200);
    assert_eq!(second.status(), 409);
    let error: Value = second.json().await.expect("json");
    assert_eq!(error["name"], "concurrent_idempotent_requests");
    assert_eq!(sim.emails().len(), 1);
}

#[tokio::test]
async fn an_overlong_idempotency_key_is_refused() {
    let sim = start(unlimited()).await;
    let key = "k".repeat(257);
    let response = post(&sim, "/emails", &welcome("a@example.com"), Some(&key)).await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.expect("json");
    assert_eq!(error["name"], "invalid_idempotency_key");
}

#[tokio::test]
async fn the_third_request_in_a_second_is_refused_with_the_rate_limit_headers() {
    let sim = start(ResendConfig::default()).await;
    let mut statuses = Vec::new();
    let mut last = None;
    for i in 0..3 {
        let response = post(
            &sim,
            "/emails",
            &welcome(&format!("u{i}@example.com")),
            None,
        )
        .await;
        statuses.push(response.status().as_u16());
        last = Some(response);
    }
    assert_eq!(statuses, [200, 200, 429]);
    let refused = last.expect("a response");
    let header = |name: &str| {
        refused
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    assert_eq!(header("ratelimit-limit").as_deref(), Some("2"));
    assert_eq!(header("ratelimit-remaining").as_deref(), Some("0"));
    let retry_after: u64 = header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("retry-after");
    assert_eq!(retry_after, 1);
    let error: Value = refused.json().await.expect("json");
    assert_eq!(error["name"], "rate_limit_exceeded");
    assert_eq!(sim.emails().len(), 2);
    assert_eq!(sim.rate_limit_hits(), 1);

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let later = post(&sim, "/emails", &welcome("late@example.com"), None).await;
    assert_eq!(later.status(), 200);
}

#[tokio::test]
async fn missing_wrong_key_and_missing_user_agent_are_refused_like_resend() {
    let sim = start(unlimited()).await;
    let url = format!("{}/emails", sim.base_url());
    let body = welcome("a@example.com");

    let missing = client().post(&url).json(&body).send().await.expect("send");
    assert_eq!(missing.status(), 401);
    assert_eq!(
        missing.json::<Value>().await.expect("json")["name"],
        "missing_api_key"
    );

    let wrong = client()
        .post(&url)
        .bearer_auth("re_wrong")
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(wrong.status(), 403);
    assert_eq!(
        wrong.json::<Value>().await.expect("json")["name"],
        "invalid_api_key"
    );

    baseaim_worker::tls::install_crypto_provider();
    let bare = reqwest::Client::new();
    let no_agent = bare
        .post(&url)
        .bearer_auth(sim.api_key())
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(no_agent.status(), 403);
    assert!(sim.emails().is_empty());
}
