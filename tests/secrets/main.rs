//! No secret leaks: the daemon runs as a real process with known secret values (and a database
//! password) through every path that logs or answers: `config check`, start-up, provider calls
//! that fail in every way the simulators can (5xx, 429, throttling, hangs past the timeout, cut
//! bodies) and then with every credential refused (401/403, Graph 190), forged and genuine webhook
//! deliveries, refused and accepted API calls, `/metrics`, the operators' job listings (which
//! show each attempt's error) and every dashboard page, logged in through its form. Then none of the values may appear in stdout/stderr (debug level,
//! JSON and text), in any HTTP answer, or in any text or JSON column of any table.
//!
//! The values are canaries: `LEAKCANARY` plus the secret's name. The checks run against places
//! where the values must be (what the simulators received) so the search itself is proven to work.

#[path = "../support/mod.rs"]
mod support;

use std::process::Stdio;
use std::time::Duration;

use baseaim_worker::jobs::send_email::{SendEmail, enqueue_email};
use baseaim_worker::jobs::{FacebookSync, StripeReconcile};
use baseaim_worker::queue::{NewJob, enqueue};
use baseaim_worker::sim::facebook::{FacebookConfig, FacebookSim};
use baseaim_worker::sim::fault::FaultConfig;
use baseaim_worker::sim::resend::{ResendConfig, ResendSim};
use baseaim_worker::sim::stripe::{Signing, StripeConfig, StripeSim, WebhookSender};
use serde_json::json;
use sqlx::PgPool;

use support::{TestDb, eventually};

const BIN: &str = env!("CARGO_BIN_EXE_baseaim-worker");

const FACEBOOK_TOKEN: &str = "EAALEAKCANARYfacebooktoken0123456789";
const STRIPE_KEY: &str = "sk_test_LEAKCANARYstripekey0123456789";
const WEBHOOK_SECRET: &str = "whsec_LEAKCANARYwebhooksecret0123456789";
const RESEND_KEY: &str = "re_LEAKCANARYresendkey0123456789";
const PRIVATE_KEY_BODY: &str = "LEAKCANARYprivatekeybodyMIIEvQIBADANBgkqhkiG9w0BAQEFAASC";
const FOLDER_ID: &str = "LEAKCANARYdrivefolder0123456789";
const DB_PASSWORD: &str = "LEAKCANARYdbpassword0123";

/// What must never be seen: each full value and its distinctive core (a partial leak counts).
fn canaries() -> Vec<(&'static str, String)> {
    let mut all = vec![
        ("FACEBOOK_ACCESS_TOKEN", FACEBOOK_TOKEN.to_owned()),
        ("STRIPE_SECRET_KEY", STRIPE_KEY.to_owned()),
        ("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET.to_owned()),
        ("RESEND_API_KEY", RESEND_KEY.to_owned()),
        ("GOOGLE_SERVICE_ACCOUNT_KEY", PRIVATE_KEY_BODY.to_owned()),
        ("GOOGLE_DRIVE_FOLDER_ID", FOLDER_ID.to_owned()),
        ("database password", DB_PASSWORD.to_owned()),
    ];
    all.push(("any secret (canary core)", "LEAKCANARY".to_owned()));
    all
}

fn leaks(text: &str) -> Vec<String> {
    canaries()
        .into_iter()
        .filter(|(_, value)| text.contains(value.as_str()))
        .map(|(name, _)| name.to_owned())
        .collect()
}

fn service_account_key(token_uri: &str) -> String {
    json!({
        "type": "service_account",
        "project_id": "baseaim-test",
        "private_key_id": "0123456789abcdef",
        "private_key": format!("-----BEGIN PRIVATE KEY-----\n{PRIVATE_KEY_BODY}\n-----END PRIVATE KEY-----\n"),
        "client_email": "worker@baseaim-test.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "token_uri": token_uri,
    })
    .to_string()
}

/// The database URL with the canary password (the test server trusts local connections, so the
/// password is carried everywhere but never checked).
fn url_with_password(db: &TestDb) -> String {
    let mut url = url::Url::parse(&db.url).unwrap();
    url.set_password(Some(DB_PASSWORD)).unwrap();
    url.to_string()
}

struct Sims {
    resend: ResendSim,
    facebook: FacebookSim,
    stripe: StripeSim,
}

/// Simulators that accept our credentials but fail `faults` of the requests, or (`refuse`)
/// simulators that know other credentials only.
async fn sims(refuse: bool, faults: FaultConfig) -> Sims {
    let resend = ResendSim::start(ResendConfig {
        api_keys: vec![if refuse {
            "re_someone_else".into()
        } else {
            RESEND_KEY.into()
        }],
        rate_limit_per_second: 50,
        faults: faults.clone(),
        ..ResendConfig::default()
    })
    .await
    .unwrap();
    let facebook = FacebookSim::start(FacebookConfig {
        access_tokens: if refuse {
            vec!["someone_else".into()]
        } else {
            vec![FACEBOOK_TOKEN.into()]
        },
        expired_tokens: if refuse {
            vec![FACEBOOK_TOKEN.into()]
        } else {
            Vec::new()
        },
        faults: faults.clone(),
        ..FacebookConfig::default()
    })
    .await
    .unwrap();
    let stripe = StripeSim::start(StripeConfig {
        api_key: if refuse {
            "sk_test_someone_else".into()
        } else {
            STRIPE_KEY.into()
        },
        faults,
        ..StripeConfig::default()
    })
    .await
    .unwrap();
    Sims {
        resend,
        facebook,
        stripe,
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn secret_env(db: &TestDb) -> Vec<(String, String)> {
    vec![
        ("DATABASE_URL".into(), url_with_password(db)),
        ("FACEBOOK_ACCESS_TOKEN".into(), FACEBOOK_TOKEN.into()),
        ("STRIPE_SECRET_KEY".into(), STRIPE_KEY.into()),
        ("STRIPE_WEBHOOK_SECRET".into(), WEBHOOK_SECRET.into()),
        ("RESEND_API_KEY".into(), RESEND_KEY.into()),
        (
            "GOOGLE_SERVICE_ACCOUNT_KEY".into(),
            service_account_key("http://127.0.0.1:9/token"),
        ),
        ("GOOGLE_DRIVE_FOLDER_ID".into(), FOLDER_ID.into()),
    ]
}

/// Runs `serve` against `sims` while `work` is enqueued and driven, for `secs` seconds; returns
/// everything the process wrote and every HTTP answer collected.
async fn run_phase(db: &TestDb, sims: &Sims, format: &str, secs: u64) -> (String, String) {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let log = tempfile::NamedTempFile::new().unwrap();
    // One open file for both streams, so their writes share one offset.
    let file = log.reopen().unwrap();
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(secret_env(db))
        .env("RUST_LOG", "debug")
        .env("BAW__LOG__FORMAT", format)
        .env("BAW__HTTP__BIND", format!("127.0.0.1:{port}"))
        .env("BAW__WORKER__POLL_INTERVAL", "200ms")
        .env("BAW__WORKER__SHUTDOWN_GRACE", "3s")
        .env("BAW__RESEND__API_BASE", sims.resend.base_url())
        .env("BAW__RESEND__TIMEOUT", "1s")
        .env("BAW__FACEBOOK__API_BASE", sims.facebook.base_url())
        .env("BAW__FACEBOOK__REQUEST_TIMEOUT", "1s")
        .env("BAW__FACEBOOK__BACKFILL_DAYS", "3")
        .env("BAW__STRIPE__API_BASE", sims.stripe.base_url())
        .env("BAW__STRIPE__REQUEST_TIMEOUT", "1s")
        .env("BAW__RATE_LIMITS__RESEND__RATE", "20")
        .env("BAW__RATE_LIMITS__RESEND__PER", "1s")
        .stdin(Stdio::null())
        // Files, not pipes: a debug-level daemon fills a pipe nobody reads and blocks on it.
        .stdout(Stdio::from(file.try_clone().unwrap()))
        .stderr(Stdio::from(file))
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    eventually(30, "serve answers readyz", || async {
        client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;

    let mut answers = String::new();
    let mut record = |what: &str, status: u16, body: String| {
        answers.push_str(&format!("{what} -> {status}: {body}\n"));
    };

    // Work for every provider.
    for n in 0..6 {
        let data =
            json!({"client_name": format!("Leak {n}"), "dashboard_url": "https://app.example/"});
        let email = SendEmail {
            template: "welcome".into(),
            to: format!("leak-{format}-{n}@example.com"),
            data: data.as_object().cloned().unwrap(),
            reply_to: None,
            tags: Vec::new(),
            scheduled_at: None,
        };
        enqueue_email(&db.pool, email, Some(&format!("leak:{format}:{n}")))
            .await
            .unwrap();
    }
    enqueue(
        &db.pool,
        NewJob::of(&FacebookSync {})
            .unwrap()
            .unique_key(format!("leak:fb:{format}")),
    )
    .await
    .unwrap();
    enqueue(
        &db.pool,
        NewJob::of(&StripeReconcile {})
            .unwrap()
            .unique_key(format!("leak:stripe:{format}")),
    )
    .await
    .unwrap();

    // Webhooks: genuine, forged, stale, unsigned, garbage.
    let url = format!("{base}/webhooks/stripe");
    let sender = WebhookSender::new(WEBHOOK_SECRET);
    for signing in [
        Signing::Valid,
        Signing::WrongSecret("whsec_forger".into()),
        Signing::Stale(Duration::from_secs(3600)),
        Signing::Unsigned,
        Signing::ExtraSignatures,
    ] {
        let event = sender.event("invoice.payment_failed").unwrap();
        let response = client
            .post(&url)
            .header("content-type", "application/json")
            .header(
                "stripe-signature",
                sender
                    .header_for(event.payload(), &signing)
                    .unwrap_or_default(),
            )
            .body(event.payload().to_owned())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        record(
            &format!("webhook {signing:?}"),
            status,
            response.text().await.unwrap_or_default(),
        );
    }
    // The API: refused tokens, then an admin token reading what operators read.
    let token = baseaim_worker::auth::tokens::create(
        &db.pool,
        &format!("leak-check-{format}"),
        &["admin:read", "jobs:write", "uploads:write"],
    )
    .await
    .unwrap();
    // A document for Drive: the service-account key and the folder id are used by its job.
    let boundary = "leakboundary";
    let form = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"client_id\"\r\n\r\nleak-client-0\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\nContent-Type: text/plain\r\n\r\nhello\r\n--{boundary}--\r\n"
    );
    let response = client
        .post(format!("{base}/v1/uploads"))
        .bearer_auth(&token)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(form)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    record(
        "POST /v1/uploads",
        status,
        response.text().await.unwrap_or_default(),
    );
    for (method, path, bearer, body) in [
        (
            "POST",
            "/v1/jobs",
            Some(RESEND_KEY),
            Some(json!({"kind": "noop"})),
        ),
        ("POST", "/v1/jobs", None, Some(json!({"kind": "noop"}))),
        (
            "POST",
            "/v1/jobs",
            Some(token.as_str()),
            Some(json!({"kind": "nope"})),
        ),
        ("GET", "/healthz", None, None),
        ("GET", "/readyz", None, None),
        ("GET", "/v1/openapi.json", None, None),
    ] {
        let mut request = client.request(method.parse().unwrap(), format!("{base}{path}"));
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        record(
            &format!("{method} {path}"),
            status,
            response.text().await.unwrap_or_default(),
        );
    }

    // Let every job try (and fail) a few times, pulling retries to now.
    let until = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let _ =
            sqlx::query("update jobs set run_at = now() where state in ('retryable', 'scheduled')")
                .execute(&db.pool)
                .await;
    }
    // What operators see: every job with every attempt's error, and the metrics.
    for path in [
        "/v1/admin/counts",
        "/v1/admin/jobs?limit=200",
        "/v1/admin/jobs?state=retryable&limit=200",
        "/v1/admin/jobs?state=discarded&limit=200",
        "/v1/admin/counts",
        "/metrics",
    ] {
        let t = std::time::Instant::now();
        let response = client
            .get(format!("{base}{path}"))
            .bearer_auth(&token)
            .timeout(Duration::from_secs(60))
            .send()
            .await;
        let response =
            response.unwrap_or_else(|e| panic!("GET {path} after {:?}: {e}", t.elapsed()));
        let status = response.status().as_u16();
        record(path, status, response.text().await.unwrap_or_default());
    }
    let ids: Vec<i64> = sqlx::query_scalar("select id from jobs order by id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    for &id in &ids {
        let path = format!("/v1/admin/jobs/{id}");
        let response = client
            .get(format!("{base}{path}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        record(&path, status, response.text().await.unwrap_or_default());
    }

    // And what they see on the dashboard: logged in through its form, every page.
    baseaim_worker::auth::operators::upsert(
        &db.pool,
        "auditor",
        "an operator password",
        baseaim_worker::auth::Role::ReadOnly,
    )
    .await
    .unwrap();
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let form = browser
        .get(format!("{base}/dashboard/login"))
        .send()
        .await
        .unwrap();
    let form_cookie = form.headers()["set-cookie"].to_str().unwrap();
    let form_cookie = form_cookie.split(';').next().unwrap().to_owned();
    let html = form.text().await.unwrap();
    let csrf = html
        .split(r#"name="csrf" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    let login = browser
        .post(format!("{base}/dashboard/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("cookie", form_cookie)
        .body(format!(
            "csrf={csrf}&username=auditor&password=an+operator+password"
        ))
        .send()
        .await
        .unwrap();
    let session = login.headers()["set-cookie"].to_str().unwrap();
    let session = session.split(';').next().unwrap().to_owned();
    let mut pages: Vec<String> = [
        "/dashboard",
        "/dashboard/jobs",
        "/dashboard/jobs?state=retryable",
        "/dashboard/jobs?state=discarded",
        "/dashboard/jobs?state=completed",
        "/dashboard/queues",
        "/dashboard/schedules",
        "/dashboard/integrations",
    ]
    .map(str::to_owned)
    .to_vec();
    pages.extend(ids.iter().map(|id| format!("/dashboard/jobs/{id}")));
    for path in pages {
        let response = browser
            .get(format!("{base}{path}"))
            .header("cookie", &session)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        assert_eq!(status, 200, "GET {path}");
        record(&path, status, response.text().await.unwrap_or_default());
    }

    let pid = child.id().unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("serve stops after SIGTERM")
        .unwrap();
    let output = String::from_utf8_lossy(&std::fs::read(log.path()).unwrap()).into_owned();
    (output, answers)
}

/// Every text, varchar and JSON column of every table: (table.column, rows holding `needle`).
async fn database_leaks(pool: &PgPool) -> Vec<String> {
    let columns: Vec<(String, String)> = sqlx::query_as(
        "select table_name::text, column_name::text from information_schema.columns
         where table_schema = 'public'
           and data_type in ('text', 'character varying', 'character', 'json', 'jsonb', 'ARRAY', 'bytea')",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(columns.len() > 20, "the scan sees the schema: {columns:?}");
    let mut found = Vec::new();
    for (table, column) in columns {
        for (name, value) in canaries() {
            let sql = format!(
                "select count(*) from \"{table}\" where strpos(\"{column}\"::text, $1) > 0"
            );
            let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .bind(&value)
                .fetch_one(pool)
                .await
                .unwrap();
            if n > 0 {
                found.push(format!("{table}.{column}: {n} row(s) hold {name}"));
            }
        }
    }
    found
}

fn fault_mix(seed: u64) -> FaultConfig {
    FaultConfig {
        seed,
        server_error_rate: 0.2,
        too_many_requests_rate: 0.15,
        throttle_rate: 0.1,
        hang_rate: 0.15,
        cut_body_rate: 0.15,
        hang_for: Duration::from_secs(2),
        ..FaultConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_appears_in_output_answers_or_the_database() {
    let db = TestDb::new().await;
    // `config check`.
    let out = tokio::process::Command::new(BIN)
        .args(["config", "check"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(secret_env(&db))
        .output()
        .await
        .unwrap();
    let config_check = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{config_check}");
    assert!(
        config_check.contains("RESEND_API_KEY = \"<set>\""),
        "{config_check}"
    );

    // Phase 1: our credentials accepted, 75% of provider requests failing in every way.
    let faulty = sims(false, fault_mix(7)).await;
    // Clients with the simulator's ad accounts, so the sync calls Graph with the token.
    for (i, account) in faulty.facebook.accounts().iter().enumerate() {
        sqlx::query(
            "insert into clients (id, name, email, facebook_ad_account_id) values ($1, $2, $3, $4)",
        )
        .bind(format!("leak-client-{i}"))
        .bind(format!("Leak Client {i}"))
        .bind(format!("leak-client-{i}@example.com"))
        .bind(format!("act_{}", account.id))
        .execute(&db.pool)
        .await
        .unwrap();
    }
    let (out1, answers1) = run_phase(&db, &faulty, "json", 12).await;
    // Phase 2: every credential refused.
    let refusing = sims(true, FaultConfig::default()).await;
    let (out2, answers2) = run_phase(&db, &refusing, "text", 6).await;

    // The search works: the providers did receive the values (so they were in play).
    let fb_calls = faulty.facebook.calls().all();
    assert!(
        fb_calls.iter().any(|c| c
            .query
            .as_deref()
            .is_some_and(|q| q.contains(FACEBOOK_TOKEN))),
        "the Facebook token reached the simulator: {fb_calls:?}"
    );
    assert!(!faulty.resend.calls().all().is_empty(), "Resend was called");
    assert!(!faulty.stripe.calls().all().is_empty(), "Stripe was called");
    assert!(
        !refusing.resend.calls().all().is_empty(),
        "Resend was called with a refused key"
    );
    assert!(
        faulty.resend.faults().injected() + faulty.facebook.faults().injected() > 5,
        "faults were injected"
    );
    // And the failures were recorded (the error paths ran).
    let errors: i64 = sqlx::query_scalar(
        "select count(*) from jobs where errors is not null and jsonb_array_length(errors) > 0",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(errors >= 3, "jobs recorded errors: {errors}");
    assert!(
        out1.contains("\"level\"") && out2.contains("DEBUG"),
        "both log formats at debug level were written"
    );

    assert!(
        answers1.contains("POST /v1/uploads -> 202")
            && answers2.contains("POST /v1/uploads -> 202"),
        "the uploads were accepted: {answers1}"
    );
    let drive_failures: i64 = sqlx::query_scalar(
        "select count(*) from jobs where kind = 'drive_upload'
         and (state = 'discarded' or jsonb_array_length(coalesce(errors, '[]')) > 0)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(drive_failures >= 1, "the Drive job ran into its error path");
    // Both runs went through the error paths: failures retried under faults, refusals discarded.
    assert!(out1.contains("job failed; will retry"), "phase 1 retried");
    assert!(out2.contains("job discarded"), "phase 2 discarded");
    assert!(
        out2.contains("refused the access token") && out2.contains("Resend rejected the email"),
        "the refusals were logged"
    );
    let mut problems = Vec::new();
    for (what, text) in [
        ("config check", &config_check),
        ("serve output (json, faults)", &out1),
        ("serve output (text, refused)", &out2),
        ("HTTP answers (faults)", &answers1),
        ("HTTP answers (refused)", &answers2),
    ] {
        let found = leaks(text);
        if !found.is_empty() {
            let line = text
                .lines()
                .find(|l| !leaks(l).is_empty())
                .unwrap_or_default();
            problems.push(format!("{what} leaks {found:?}, e.g.: {line}"));
        }
    }
    problems.extend(database_leaks(&db.pool).await);
    assert!(
        problems.is_empty(),
        "secrets leaked:\n{}",
        problems.join("\n")
    );
}
