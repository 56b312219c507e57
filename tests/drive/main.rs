//! Google Drive uploads end to end, against the real PostgreSQL and the Drive simulator: the
//! intake (`POST /v1/uploads`), the `drive_upload`, `drive_delete` and `drive_import` jobs, and
//! what a user would notice: the bytes in Drive, one file per document, the document's status.

#[path = "../support/mod.rs"]
mod support;

mod intake;
mod jobs;
mod proxy;
mod resume;
mod staging;

use std::sync::Arc;
use std::time::Duration;

use baseaim_worker::config::{Config, RateLimitConfig, SecretString, Secrets};
use baseaim_worker::db::DbHealth;
use baseaim_worker::http::{self, HttpState};
use baseaim_worker::jobs::{AppState, DriveDelete};
use baseaim_worker::queue::NewJob;
use baseaim_worker::queue::rate_limit;
use baseaim_worker::queue::testing::{DrainReport, drain};
use baseaim_worker::sim::google_drive::{GoogleDriveConfig, GoogleDriveSim};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::support::TestDb;

pub const CLIENT: &str = "client-1";
pub const FOLDER: &str = "folder-client-1";
/// Small requests and odd-sized staging chunks, so a test file spans several of each.
pub const REQUEST_BYTES: usize = 256 * 1024;
pub const STAGING_BYTES: usize = 8_000;

/// A migrated database with one client, the Drive simulator, the intake on a free port and the
/// state the jobs run with.
pub struct Env {
    pub db: TestDb,
    pub sim: GoogleDriveSim,
    pub state: AppState,
    /// `http://127.0.0.1:port`.
    pub base: String,
    pub http: reqwest::Client,
    /// A bearer token with `uploads:write`.
    pub token: String,
    stop: CancellationToken,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Knobs a test may turn before the environment starts.
#[derive(Default)]
pub struct Options {
    pub sim: GoogleDriveConfig,
    /// Where the Drive client connects (e.g. a cutting proxy); default the simulator.
    pub api_base: Option<String>,
    pub config: Vec<(String, String)>,
}

pub async fn setup() -> Env {
    setup_with(Options::default()).await
}

pub async fn start_sim(config: GoogleDriveConfig) -> GoogleDriveSim {
    GoogleDriveSim::start(config)
        .await
        .expect("start the Drive simulator")
}

pub async fn setup_with(options: Options) -> Env {
    let sim = start_sim(options.sim).await;
    setup_on(sim, options.api_base, options.config).await
}

pub async fn setup_on(
    sim: GoogleDriveSim,
    api_base: Option<String>,
    extra: Vec<(String, String)>,
) -> Env {
    baseaim_worker::tls::install_crypto_provider();
    let db = TestDb::new().await;
    let mut env = vec![
        (
            "BAW__DRIVE__API_BASE".to_string(),
            api_base.unwrap_or_else(|| sim.base_url().to_string()),
        ),
        (
            "BAW__DRIVE__UPLOAD_CHUNK_BYTES".to_string(),
            REQUEST_BYTES.to_string(),
        ),
        (
            "BAW__UPLOADS__CHUNK_BYTES".to_string(),
            STAGING_BYTES.to_string(),
        ),
        ("BAW__DRIVE__REQUEST_TIMEOUT".to_string(), "10s".to_string()),
    ];
    env.extend(extra);
    let mut config = Config::load_from(None, env).expect("config");
    config.rate_limits.insert(
        "drive".into(),
        RateLimitConfig {
            rate: 1000.0,
            per: Duration::from_secs(1),
            burst: 1000.0,
        },
    );
    rate_limit::declare(&db.pool, &config.rate_limits)
        .await
        .expect("declare rate limits");
    let secrets = Secrets {
        google_service_account_key: Some(SecretString::from(sim.key_file_json())),
        ..Secrets::default()
    };
    sqlx::query("insert into clients (id, name, email, drive_folder_id) values ($1, 'Acme', 'a@example.com', $2)")
        .bind(CLIENT)
        .bind(FOLDER)
        .execute(&db.pool)
        .await
        .unwrap();
    let state = AppState::new(db.pool.clone(), Arc::new(config), Arc::new(secrets)).unwrap();
    let stop = CancellationToken::new();
    let health = DbHealth::spawn(db.pool.clone(), Duration::from_secs(1), stop.child_token());
    let app = http::router(HttpState::new(state.clone(), health));
    let (addr, _task) = http::serve("127.0.0.1:0".parse().unwrap(), app, stop.clone())
        .await
        .unwrap();
    let token = api_token(&db.pool, &["uploads:write"]).await;
    Env {
        db,
        sim,
        state,
        base: format!("http://{addr}"),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap(),
        token,
        stop,
    }
}

/// A bearer token for the API with `scopes`.
pub async fn api_token(pool: &PgPool, scopes: &[&str]) -> String {
    baseaim_worker::auth::tokens::create(pool, "drive-tests", scopes)
        .await
        .expect("create an API token")
}

/// Deterministic bytes that do not compress (so sizes mean what they say).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A `multipart/form-data` body: text fields, then the file part (if any).
pub fn form(fields: &[(&str, &str)], file: Option<(&str, &str, &[u8])>) -> (String, Vec<u8>) {
    let boundary = "drive-test-boundary-7d3f";
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    if let Some((file_name, mime, bytes)) = file {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{file_name}\"\r\nContent-Type: {mime}\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

impl Env {
    /// `POST /v1/uploads` with our token.
    pub async fn post(&self, content_type: &str, body: Vec<u8>) -> reqwest::Response {
        self.post_as(Some(&self.token), content_type, body).await
    }

    pub async fn post_as(
        &self,
        token: Option<&str>,
        content_type: &str,
        body: Vec<u8>,
    ) -> reqwest::Response {
        let mut request = self
            .http
            .post(format!("{}/v1/uploads", self.base))
            .header("content-type", content_type)
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("send the upload")
    }

    /// Uploads `bytes` as a PDF for [`CLIENT`]; returns the document id.
    pub async fn upload_pdf(&self, bytes: &[u8]) -> Uuid {
        let (ct, body) = form(
            &[("client_id", CLIENT), ("title", "Q3 report")],
            Some(("report.pdf", "application/pdf", bytes)),
        );
        let response = self.post(&ct, body).await;
        let status = response.status();
        let json: serde_json::Value = response.json().await.unwrap();
        assert_eq!(status, 202, "{json}");
        json["document_id"].as_str().unwrap().parse().unwrap()
    }

    /// Runs the drive queue until nothing is runnable now.
    /// Uploads `bytes` and runs the upload job in the background until Drive has the file, with
    /// the last upload request's answer held by the simulator (its `Hang` fault: set `hang_for`
    /// and `path_prefix: "/upload/"`); `bytes` must take four requests. Returns the document and
    /// the running drain.
    pub async fn upload_until_the_last_answer_hangs(
        &self,
        bytes: &[u8],
    ) -> (Uuid, tokio::task::JoinHandle<DrainReport>) {
        use baseaim_worker::sim::FaultKind;
        let id = self.upload_pdf(bytes).await;
        // Initiation and three chunks go through; the last is stored, its answer held.
        self.sim
            .faults()
            .script([None, None, None, None, Some(FaultKind::Hang)]);
        let (pool, state) = (self.db.pool.clone(), self.state.clone());
        let run = tokio::spawn(async move {
            drain(&pool, &baseaim_worker::jobs::registry(), state, "drive")
                .await
                .expect("drain")
        });
        crate::support::eventually(10, "Drive has the file", || async {
            self.sim.files().len() == 1
        })
        .await;
        (id, run)
    }

    /// Enqueues a `drive_delete` job.
    pub async fn enqueue_delete(&self, job: DriveDelete) {
        baseaim_worker::queue::enqueue(&self.db.pool, NewJob::of(&job).unwrap())
            .await
            .unwrap();
    }

    pub async fn drain(&self) -> DrainReport {
        drain(
            &self.db.pool,
            &baseaim_worker::jobs::registry(),
            self.state.clone(),
            "drive",
        )
        .await
        .expect("drain")
    }

    /// Makes every unfinished job due now (a backoff or a snooze passed).
    pub async fn make_due(&self) {
        sqlx::query(
            "update jobs set run_at = now() where state in ('scheduled', 'retryable', 'available')",
        )
        .execute(&self.db.pool)
        .await
        .unwrap();
    }

    pub async fn count(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
    }

    pub async fn document(&self, id: Uuid) -> Document {
        sqlx::query_as(
            "select status, drive_file_id, web_view_link, file_url, failure_reason, size_bytes,
                    sha256, upload_offset, upload_session_uri is not null as has_session,
                    throttle_count
               from documents where id = $1",
        )
        .bind(id)
        .fetch_one(&self.db.pool)
        .await
        .unwrap()
    }

    /// (state, attempt) of the only job of `kind`.
    pub async fn job(&self, kind: &str) -> (String, i32) {
        sqlx::query_as("select state, attempt from jobs where kind = $1 order by id desc limit 1")
            .bind(kind)
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
    }
}

#[derive(Debug, sqlx::FromRow)]
pub struct Document {
    pub status: String,
    pub drive_file_id: Option<String>,
    pub web_view_link: Option<String>,
    pub file_url: Option<String>,
    pub failure_reason: Option<String>,
    pub size_bytes: Option<i64>,
    pub sha256: Option<String>,
    pub upload_offset: i64,
    pub has_session: bool,
    pub throttle_count: i32,
}
