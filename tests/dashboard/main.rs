//! The operator dashboard against the real PostgreSQL: its pages and actions over HTTP
//! (`pages`), who may see and do what (`auth`), and a real headless Chromium driving it
//! (`browser`).

#[path = "../support/mod.rs"]
mod support;

mod auth;
mod browser;
mod pages;

use std::sync::Arc;
use std::time::Duration;

use baseaim_worker::auth::{Role, operators};
use baseaim_worker::config::{Config, Secrets};
use baseaim_worker::db::DbHealth;
use baseaim_worker::http::{self, HttpState};
use baseaim_worker::jobs::AppState;
use baseaim_worker::queue::testing::{JobFactory, insert_job};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use support::TestDb;

pub const PASSWORD: &str = "correct horse battery staple";

/// A node's HTTP surface on a free port over a fresh database.
pub struct App {
    pub base: String,
    pub db: TestDb,
    pub state: AppState,
    pub client: reqwest::Client,
    stop: CancellationToken,
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl App {
    pub async fn start() -> App {
        App::start_with(Vec::new()).await
    }

    /// With config overrides as environment variables (`BAW__HTTP__SECURE_COOKIES`, ...).
    pub async fn start_with(env: Vec<(String, String)>) -> App {
        let db = TestDb::new().await;
        let config = Config::load_from(None, env).expect("config");
        let stop = CancellationToken::new();
        let health = DbHealth::spawn(db.pool.clone(), Duration::from_secs(1), stop.child_token());
        let state = AppState::new(
            db.pool.clone(),
            Arc::new(config),
            Arc::new(Secrets::default()),
        )
        .expect("state");
        let router = http::router(HttpState::new(state.clone(), health));
        let (addr, _task) = http::serve("127.0.0.1:0".parse().unwrap(), router, stop.clone())
            .await
            .expect("serve");
        App {
            base: format!("http://{addr}"),
            db,
            state,
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            stop,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Posts the login form as a browser does: first the form (its CSRF token and cookie), then
    /// the credentials with them.
    pub async fn post_login(&self, name: &str, password: &str) -> reqwest::Response {
        self.post_login_with(name, password, &[]).await
    }

    /// [`App::post_login`] with extra request headers on the post.
    pub async fn post_login_with(
        &self,
        name: &str,
        password: &str,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let form = self.get("/dashboard/login", None).await;
        let cookie = form
            .headers()
            .get(SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .expect("the login form sets its CSRF cookie")
            .to_owned();
        let html = form.text().await.unwrap();
        let csrf = csrf_in(&html).expect("the login form carries its CSRF token");
        self.post_form_with(
            "/dashboard/login",
            Some(&cookie),
            &[("csrf", &csrf), ("username", name), ("password", password)],
            headers,
        )
        .await
    }

    /// Creates an operator and logs in through the form; returns its session.
    pub async fn login_as(&self, name: &str, role: Role) -> Session {
        operators::add(&self.db.pool, name, PASSWORD, role)
            .await
            .expect("add operator");
        let response = self.post_login(name, PASSWORD).await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER, "login redirects");
        let cookie = response
            .headers()
            .get(SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .expect("a session cookie")
            .to_owned();
        assert!(cookie.contains("HttpOnly"), "{cookie}");
        assert!(cookie.contains("SameSite=Strict"), "{cookie}");
        let cookie = cookie.split(';').next().unwrap().to_owned();
        let overview = self.get("/dashboard", Some(&cookie)).await;
        assert_eq!(overview.status(), StatusCode::OK);
        let html = overview.text().await.unwrap();
        Session {
            csrf: csrf_in(&html).expect("the page carries the CSRF token"),
            cookie,
        }
    }

    pub async fn get(&self, path: &str, cookie: Option<&str>) -> reqwest::Response {
        let mut request = self.client.get(self.url(path));
        if let Some(cookie) = cookie {
            request = request.header(COOKIE, cookie);
        }
        request.send().await.expect("GET")
    }

    pub async fn post_form(
        &self,
        path: &str,
        cookie: Option<&str>,
        fields: &[(&str, &str)],
    ) -> reqwest::Response {
        self.post_form_with(path, cookie, fields, &[]).await
    }

    pub async fn post_form_with(
        &self,
        path: &str,
        cookie: Option<&str>,
        fields: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        let mut request = self
            .client
            .post(self.url(path))
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body);
        if let Some(cookie) = cookie {
            request = request.header(COOKIE, cookie);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("POST")
    }

    pub async fn job_state(&self, id: i64) -> String {
        sqlx::query_scalar("select state from jobs where id = $1")
            .bind(id)
            .fetch_one(&self.db.pool)
            .await
            .expect("job exists")
    }
}

/// A logged-in operator: the cookie to send and the CSRF token its forms carry.
pub struct Session {
    pub cookie: String,
    pub csrf: String,
}

/// The value of the first hidden `csrf` input in `html`.
pub fn csrf_in(html: &str) -> Option<String> {
    let start = html.find(r#"name="csrf" value=""#)? + r#"name="csrf" value=""#.len();
    let end = html[start..].find('"')?;
    Some(html[start..start + end].to_owned())
}

/// Where a redirect points.
pub fn location(response: &reqwest::Response) -> String {
    response
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// A discarded `noop` job with `args`, its attempts used up by errors an operator would read.
pub async fn discarded_job(db: &TestDb, args: serde_json::Value) -> i64 {
    let id = insert_job(
        &db.pool,
        JobFactory {
            args,
            state: "discarded".into(),
            attempt: 3,
            max_attempts: 3,
            finished_at: Some(chrono::Utc::now()),
            ..JobFactory::default()
        },
    )
    .await;
    sqlx::query(
        "update jobs set errors = $2, lease_owner = 'node-a-1234' where id = $1",
    )
    .bind(id)
    .bind(json!([
        {"attempt": 1, "at": "2026-11-30T07:00:00Z", "error": "upstream timed out"},
        {"attempt": 2, "at": "2026-11-30T07:00:05Z", "error": "upstream timed out"},
        {"attempt": 3, "at": "2026-11-30T07:00:30Z", "error": "card_declined: insufficient funds"},
    ]))
    .execute(&db.pool)
    .await
    .unwrap();
    id
}
