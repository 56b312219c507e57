//! A real browser: headless Chromium driven through chromedriver (Debian packages `chromium`
//! and `chromium-driver`; `.ci/run` installs them) logs in, finds a failed job by filtering on
//! its args, retries it, and sees it complete, run by an engine in this test. Every page it
//! visits is saved as a screenshot under `target/dashboard-screenshots/` for people to look at.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use baseaim_worker::auth::Role;
use baseaim_worker::auth::operators;
use baseaim_worker::jobs;
use baseaim_worker::queue::testing::{JobFactory, insert_job};
use baseaim_worker::queue::{Engine, EngineConfig};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::{App, PASSWORD, discarded_job};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// chromedriver on a free port, killed when dropped.
struct Driver {
    url: String,
    _child: tokio::process::Child,
}

impl Driver {
    async fn start() -> Driver {
        assert!(
            std::path::Path::new(CHROMEDRIVER).exists() && std::path::Path::new(CHROMIUM).exists(),
            "the browser test needs {CHROMIUM} and {CHROMEDRIVER}: \
             apt-get install -y chromium chromium-driver (.ci/run does)"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = tokio::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        let status = format!("{url}/status");
        crate::support::eventually(20, "chromedriver answers", || {
            let status = status.clone();
            async move { reqwest::get(&status).await.is_ok() }
        })
        .await;
        Driver { url, _child: child }
    }

    async fn browser(&self) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                         "--disable-gpu", "--window-size=1400,1000"],
            }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a Chromium session")
    }
}

/// Waits until the browser's URL contains `part` (a submitted form has navigated).
async fn wait_for_url(browser: &Client, part: &str) -> Result<(), fantoccini::error::CmdError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let url = browser.current_url().await?;
        if url.as_str().contains(part) {
            return Ok(());
        }
        assert!(std::time::Instant::now() < deadline, "still at {url}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("dashboard-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

async fn screenshot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    std::fs::write(screenshot_dir().join(format!("{name}.png")), png).expect("write screenshot");
}

#[tokio::test]
async fn an_operator_finds_a_failed_job_by_its_args_retries_it_and_sees_it_complete() {
    let app = App::start().await;
    operators::add(&app.db.pool, "ops", PASSWORD, Role::Admin)
        .await
        .unwrap();
    // The job to find, among others an operator has to look past.
    let failed = discarded_job(&app.db, json!({"order": "A-1001", "client_id": "c1"})).await;
    for n in 0..5 {
        discarded_job(&app.db, json!({"order": format!("B-{n}")})).await;
        insert_job(
            &app.db.pool,
            JobFactory {
                args: json!({"order": format!("A-1001-{n}")}),
                state: "completed".into(),
                finished_at: Some(chrono::Utc::now()),
                ..JobFactory::default()
            },
        )
        .await;
    }
    let mut engine_config = EngineConfig::from_config(&app.state.config, "all");
    engine_config.queues = [("default".to_string(), 5)].into();
    engine_config.maintenance = None;
    engine_config.poll_interval = Duration::from_millis(200);
    let engine = Engine::start(
        app.db.pool.clone(),
        jobs::registry(),
        app.state.clone(),
        engine_config,
    )
    .await
    .expect("engine");

    let driver = Driver::start().await;
    let browser = driver.browser().await;
    let outcome = async {
        // Logging in.
        browser.goto(&app.url("/dashboard/login")).await?;
        screenshot(&browser, "01-login").await;
        browser
            .find(Locator::Id("username"))
            .await?
            .send_keys("ops")
            .await?;
        browser
            .find(Locator::Id("password"))
            .await?
            .send_keys(PASSWORD)
            .await?;
        browser.find(Locator::Id("login")).await?.click().await?;
        browser
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Id("counts"))
            .await?;
        assert_eq!(browser.current_url().await?.path(), "/dashboard");
        let nodes = browser.find(Locator::Id("nodes")).await?.text().await?;
        assert!(
            nodes.contains(engine.node()),
            "the engine's node is alive: {nodes}"
        );
        // The vendored htmx is served from the binary and allowed by the page's CSP.
        let htmx = browser.execute("return typeof htmx", vec![]).await?;
        assert_eq!(htmx, json!("object"), "htmx loaded");
        screenshot(&browser, "02-overview").await;

        // Finding the failed job by its args.
        browser
            .find(Locator::Css("nav a[href='/dashboard/jobs']"))
            .await?
            .click()
            .await?;
        let state = browser
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Id("f-state"))
            .await?;
        state.select_by_value("discarded").await?;
        browser
            .find(Locator::Id("f-args"))
            .await?
            .send_keys("A-1001")
            .await?;
        browser
            .find(Locator::Id("apply-filter"))
            .await?
            .click()
            .await?;
        wait_for_url(&browser, "args=A-1001").await?;
        let rows = browser
            .find_all(Locator::Css("#jobs tbody tr[data-job]"))
            .await?;
        assert_eq!(rows.len(), 1, "only the failed A-1001 job matches");
        let row = &rows[0];
        assert_eq!(
            row.attr("data-job").await?.as_deref(),
            Some(failed.to_string().as_str())
        );
        assert!(
            row.text().await?.contains("card_declined"),
            "its last error is shown"
        );
        screenshot(&browser, "03-jobs-filtered").await;

        // Retrying it: select, retry, confirm.
        row.find(Locator::Css("input[type=checkbox]"))
            .await?
            .click()
            .await?;
        browser
            .find(Locator::Id("retry-selected"))
            .await?
            .click()
            .await?;
        let confirm = browser
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Id("confirm"))
            .await?;
        let heading = browser.find(Locator::Css("h1")).await?.text().await?;
        assert!(heading.contains("retry 1 job"), "{heading}");
        screenshot(&browser, "04-confirm-retry").await;
        confirm.click().await?;
        let notice = browser
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(".notice"))
            .await?;
        assert!(notice.text().await?.contains("1 job set to run again"));

        // Seeing it complete: the job page, reloaded until the engine has run it.
        browser
            .goto(&app.url(&format!("/dashboard/jobs/{failed}")))
            .await?;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let state = browser.find(Locator::Id("job-state")).await?.text().await?;
            if state == "completed" {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "job still {state}");
            tokio::time::sleep(Duration::from_millis(300)).await;
            browser.refresh().await?;
        }
        let attempts = browser.find(Locator::Id("attempts")).await?.text().await?;
        assert!(
            attempts.contains("upstream timed out"),
            "earlier errors are kept"
        );
        let args = browser.find(Locator::Id("args")).await?.text().await?;
        assert!(
            args.contains("\"order\": \"A-1001\""),
            "formatted args: {args}"
        );
        screenshot(&browser, "05-job-completed").await;

        for (name, path) in [
            ("06-queues", "/dashboard/queues"),
            ("07-schedules", "/dashboard/schedules"),
            ("08-integrations", "/dashboard/integrations"),
            ("09-jobs-all", "/dashboard/jobs"),
        ] {
            browser.goto(&app.url(path)).await?;
            browser
                .wait()
                .at_most(Duration::from_secs(10))
                .for_element(Locator::Css("main h1"))
                .await?;
            screenshot(&browser, name).await;
        }

        // Logging out ends the session.
        browser.find(Locator::Id("logout")).await?.click().await?;
        browser
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Id("username"))
            .await?;
        browser.goto(&app.url("/dashboard")).await?;
        let body = browser.find(Locator::Css("body")).await?.text().await?;
        assert!(body.contains("Login required"), "{body}");
        Ok::<(), Box<dyn std::error::Error>>(())
    }
    .await;
    let _ = browser.close().await;
    engine.shutdown().await;
    outcome.expect("the browser session");
    assert_eq!(app.job_state(failed).await, "completed");
}
