//! `baseaim-worker demo` and `sim send-webhook`, run as the real binary: a newcomer's first
//! minute.

#[path = "../support/mod.rs"]
mod support;

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncBufReadExt;

use support::{TestDb, eventually};

const BIN: &str = env!("CARGO_BIN_EXE_baseaim-worker");

#[tokio::test]
async fn the_demo_runs_jobs_and_applies_a_signed_webhook_end_to_end() {
    let db = TestDb::empty().await;
    let state = tempfile::NamedTempFile::new().unwrap();
    let state_path = state.path().to_str().unwrap().to_string();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut demo = tokio::process::Command::new(BIN)
        .args([
            "demo",
            "--database-url",
            &db.url,
            "--bind",
            &format!("127.0.0.1:{port}"),
        ])
        .env("BAW_DEMO_STATE", &state_path)
        .env("STRIPE_WEBHOOK_SECRET", "whsec_must_not_be_used")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // The banner names the dashboard and a working login for it.
    let mut lines = tokio::io::BufReader::new(demo.stdout.take().unwrap()).lines();
    let mut banner = String::new();
    let dashboard_line = tokio::time::timeout(Duration::from_secs(90), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            banner.push_str(&line);
            banner.push('\n');
            if line.contains("dashboard:") {
                return line;
            }
        }
        panic!("the demo ended before printing the dashboard: {banner}");
    })
    .await
    .expect("the demo printed its banner");
    assert!(
        dashboard_line.contains(&format!("http://127.0.0.1:{port}/dashboard")),
        "{dashboard_line}"
    );
    let login = dashboard_line
        .split("log in as ")
        .nth(1)
        .and_then(|rest| rest.strip_suffix(')'))
        .expect("the login is printed");
    let (user, password) = login.split_once(" / ").unwrap();
    // Through the real dashboard: its login form takes them, and the overview answers.
    baseaim_worker::tls::install_crypto_provider();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let anonymous = http.get(format!("{base}/dashboard")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    // As a browser does: the form (its CSRF token and cookie), then the credentials with them.
    let form = http
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
        .expect("the login form carries a CSRF token")
        .to_owned();
    // The password, user name and token are letters, digits, `-` and `_`: nothing to encode.
    let answer = http
        .post(format!("{base}/dashboard/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("cookie", form_cookie)
        .body(format!("csrf={csrf}&username={user}&password={password}"))
        .send()
        .await
        .unwrap();
    let cookie = answer
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or_else(|| panic!("the printed login does not work: {login}"))
        .to_owned();
    let overview = http
        .get(format!("{base}/dashboard"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(overview.status(), 200);

    // The seeded jobs flow: the welcome emails reach the Resend simulator.
    eventually(60, "the three welcome emails were sent", || async {
        sqlx::query_scalar::<_, i64>(
            "select count(*) from email_log where template = 'welcome' and status = 'sent'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap_or(0)
            == 3
    })
    .await;

    let out = tokio::process::Command::new(BIN)
        .args(["sim", "send-webhook", "invoice.payment_failed"])
        .env("BAW_DEMO_STATE", &state_path)
        .output()
        .await
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        printed.contains("invoice.payment_failed -> HTTP 200"),
        "{printed}"
    );

    eventually(30, "the payment-failed email was sent", || async {
        sqlx::query_scalar::<_, i64>(
            "select count(*) from email_log where template = 'payment_failed' and status = 'sent'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap_or(0)
            == 1
    })
    .await;
    let status: String = sqlx::query_scalar(
        "select status from stripe_events where type = 'invoice.payment_failed'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(status, "processed");

    // The Facebook sync ran at start against the simulator's ad accounts.
    eventually(
        60,
        "campaign metrics arrived for the three clients",
        || async {
            sqlx::query_scalar::<_, i64>(
                "select count(distinct ad_account_id) from campaign_metrics",
            )
            .fetch_one(&db.pool)
            .await
            .unwrap_or(0)
                == 3
        },
    )
    .await;

    let bad = tokio::process::Command::new(BIN)
        .args(["sim", "send-webhook", "invoice.exploded"])
        .env("BAW_DEMO_STATE", &state_path)
        .output()
        .await
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown event type `invoice.exploded`"));

    let pid = demo.id().unwrap();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), demo.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    while let Some(line) = lines.next_line().await.unwrap() {
        banner.push_str(&line);
        banner.push('\n');
    }
    assert!(
        banner.contains("baseaim-worker sim send-webhook invoice.payment_failed"),
        "{banner}"
    );
}
