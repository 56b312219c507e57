//! One typed config tree for the whole daemon.
//!
//! Layers, later wins: `config/default.toml` (compiled in, documents every key) < the file named
//! by `--config` / `BAW_CONFIG` < environment variables `BAW__SECTION__KEY` < `DATABASE_URL`.
//! Secrets are not part of the tree: [`Secrets`] reads them from the environment only and keeps
//! them in [`SecretString`]s, so they cannot reach a log line or `config check` by accident.

mod secrets;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

pub use secrecy::SecretString;
pub use secrets::{Secrets, redact_url};

/// The defaults, compiled into the binary so a bare `baseaim-worker serve` needs no files.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub database: DatabaseConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
    pub node: NodeConfig,
    pub worker: WorkerConfig,
    /// Queues this node works, by name.
    pub queues: BTreeMap<String, QueueConfig>,
    pub maintenance: MaintenanceConfig,
    /// Cluster-wide token buckets, by name (job kinds refer to them).
    #[serde(default)]
    pub rate_limits: BTreeMap<String, RateLimitConfig>,
    /// Cron schedules, by name; each tick becomes one job (see `crate::schedule`).
    #[serde(default)]
    pub schedules: BTreeMap<String, crate::schedule::ScheduleConfig>,
    /// The Resend API (the `send_email` job's provider).
    #[serde(default)]
    pub resend: ResendSettings,
    /// Transactional email: sender and how long the email log is kept.
    #[serde(default)]
    pub email: EmailSettings,
    pub stripe: StripeConfig,
    /// The Facebook Marketing API (`facebook_sync_account`).
    #[serde(default)]
    pub facebook: FacebookSettings,
    /// `POST /v1/uploads`: size limit, accepted media types, staging chunk size.
    #[serde(default)]
    pub uploads: UploadSettings,
    /// The Google Drive API (`drive_upload`, `drive_delete`, `drive_import`).
    #[serde(default)]
    pub drive: DriveSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// May carry a password: print it through [`redact_url`] only.
    pub url: String,
    pub max_connections: u32,
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub bind: SocketAddr,
    pub body_limit: usize,
    /// Marks the dashboard's session cookie `Secure`: set it when browsers reach the node over
    /// TLS (the node itself speaks plain HTTP, so a TLS proxy in front is the usual case).
    #[serde(default)]
    pub secure_cookies: bool,
    /// How long a bulk action by filter (dashboard or admin API) holds its request before it
    /// answers with what changed so far and goes on in the background.
    #[serde(with = "humantime_serde")]
    pub bulk_answer_within: Duration,
    /// Behind a proxy: the header in which it passes the client's address (its last entry is
    /// taken), for the login lock-out per address. Empty: the TCP peer's address.
    #[serde(default)]
    pub client_address_header: String,
    /// Where a node that does not run the intake (`--role worker|scheduler`) serves `/healthz`,
    /// `/readyz` and `/metrics`. Empty: it binds nothing. See [`HttpConfig::ops_addr`].
    #[serde(default)]
    pub ops_bind: String,
}

impl HttpConfig {
    /// `ops_bind` as an address; None when empty (validated at load).
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops_bind.parse().ok()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Empty: `<hostname>-<pid>`.
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    pub claim_batch: u32,
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    pub concurrency: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceConfig {
    #[serde(with = "humantime_serde")]
    pub leader_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub rescue_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub prune_after: Duration,
    #[serde(with = "humantime_serde")]
    pub prune_interval: Duration,
    pub prune_batch: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Tokens added per `per`.
    pub rate: f64,
    #[serde(with = "humantime_serde")]
    pub per: Duration,
    /// Most tokens the bucket holds (how many calls may go at once after a quiet spell).
    pub burst: f64,
}

/// The Stripe integration: the API the reconciliation reads, and the webhook intake.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StripeConfig {
    /// `https://api.stripe.com`, or a simulator.
    pub api_base: String,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Largest webhook body accepted (bytes); larger ones get 413.
    pub webhook_body_limit: usize,
    /// Oldest accepted `Stripe-Signature` timestamp, relative to now.
    #[serde(with = "humantime_serde")]
    pub webhook_tolerance: Duration,
}

/// The Resend API: where it is (a simulator in tests) and how long one request may take.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResendSettings {
    pub api_base: String,
    /// A whole request; past it the send is retried with the same idempotency key.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for ResendSettings {
    fn default() -> Self {
        ResendSettings {
            api_base: "https://api.resend.com".into(),
            timeout: Duration::from_secs(15),
        }
    }
}

/// The Facebook Marketing API and how the insights sync uses it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FacebookSettings {
    /// `https://graph.facebook.com`, or a simulator.
    pub api_base: String,
    /// The Graph version in every path, e.g. `v22.0`.
    pub api_version: String,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Rows per page (`limit`).
    pub page_size: u32,
    /// Days re-fetched on every sync (Facebook revises recent days). After a longer outage a sync
    /// reaches back to the day before its last success instead, at most `backfill_days`.
    pub lookback_days: u32,
    /// Days fetched for a client never synced, and the furthest any sync reaches back.
    pub backfill_days: u32,
    /// Ad-account utilisation (percent, from `X-Ad-Account-Usage`) above which a sync waits.
    pub usage_threshold_pct: f64,
    /// Rows per upsert statement.
    pub upsert_batch: usize,
}

impl Default for FacebookSettings {
    fn default() -> Self {
        FacebookSettings {
            api_base: "https://graph.facebook.com".into(),
            api_version: "v22.0".into(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(60),
            page_size: 500,
            lookback_days: 7,
            backfill_days: 90,
            usage_threshold_pct: 75.0,
            upsert_batch: 1000,
        }
    }
}

/// The upload intake (`POST /v1/uploads`) and the staging of files in the database.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadSettings {
    /// Largest file accepted, in bytes (413 beyond); also the largest `drive_import` download.
    pub max_bytes: u64,
    /// Accepted media types of the file part (415 otherwise), compared without parameters.
    pub allowed_mime_types: Vec<String>,
    /// Bytes per staged chunk row, at most [`MAX_STAGED_CHUNK_BYTES`].
    pub chunk_bytes: usize,
    /// Uploads staged at once by this node; more get 503 with `Retry-After`. Each holds a pooled
    /// connection (its transaction) for as long as its client takes to send the file.
    pub max_concurrent: usize,
    /// Longest wait for the next bytes of an upload's body; a client that stalls longer gets 408
    /// and its connection back to the pool.
    #[serde(with = "humantime_serde")]
    pub read_timeout: Duration,
    /// Longest a whole upload may take, however steadily its bytes come; past it 408 and its
    /// connection back to the pool (a client trickling a byte at a time held a slot for ever).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

/// The largest staged chunk: a `document_chunks` row (24-byte tuple header, document id, seq,
/// 4-byte length, data) must fit one 8 KB page (8160 bytes), since the column's storage is PLAIN
/// (migration 0011: no TOAST, no compression).
pub const MAX_STAGED_CHUNK_BYTES: usize = 8112;

impl Default for UploadSettings {
    fn default() -> Self {
        UploadSettings {
            max_bytes: 100 * 1024 * 1024,
            allowed_mime_types: vec!["application/pdf".into()],
            chunk_bytes: MAX_STAGED_CHUNK_BYTES,
            max_concurrent: 4,
            read_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(15 * 60),
        }
    }
}

/// The Google Drive API and how uploads use it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveSettings {
    /// `https://www.googleapis.com`, or a simulator.
    pub api_base: String,
    /// The OAuth scope the service account asks for.
    pub scope: String,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// One API call or one upload request.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Bytes per resumable upload request (a multiple of 256 KiB).
    pub upload_chunk_bytes: usize,
    /// Grant "anyone with the link" read access after upload (off by default).
    pub share_with_link: bool,
    pub supports_all_drives: bool,
    /// In-run resumes after a cut connection or a 5xx before the run gives up.
    pub resume_retries: u32,
}

impl Default for DriveSettings {
    fn default() -> Self {
        DriveSettings {
            api_base: "https://www.googleapis.com".into(),
            scope: "https://www.googleapis.com/auth/drive.file".into(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(120),
            upload_chunk_bytes: 8 * 1024 * 1024,
            share_with_link: false,
            supports_all_drives: true,
            resume_retries: 3,
        }
    }
}

/// Transactional email (`send_email`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailSettings {
    /// The sender, `"Name <address>"` on a domain verified in Resend.
    pub from: String,
    /// `email_log` rows (recipients are personal data) older than this are deleted by `prune`.
    #[serde(with = "humantime_serde")]
    pub log_retention: Duration,
    /// An email whose first attempt that may have reached Resend unanswered is older than this is
    /// not sent again (Resend forgets the Idempotency-Key after 24 h): `send_email`.
    #[serde(with = "humantime_serde", default = "unknown_outcome_window")]
    pub unknown_outcome_window: Duration,
}

fn unknown_outcome_window() -> Duration {
    crate::jobs::send_email::UNKNOWN_OUTCOME_WINDOW
}

impl Default for EmailSettings {
    fn default() -> Self {
        EmailSettings {
            from: "BaseAim <notifications@baseaim.com>".into(),
            log_retention: Duration::from_secs(90 * 86400),
            unknown_outcome_window: unknown_outcome_window(),
        }
    }
}

/// The longest duration any key accepts: cut-offs like `now - maintenance.prune_after` and ticker
/// deadlines like `now + worker.heartbeat` stay far inside the calendar.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86400);

/// How long Resend remembers an Idempotency-Key: `email.unknown_outcome_window` must be shorter.
const IDEMPOTENCY_KEY_MEMORY: Duration = Duration::from_secs(24 * 3600);

/// A config that loaded but makes no sense, naming the key and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}", describe_figment(.0))]
    Load(#[from] Box<figment::Error>),
    #[error("invalid value for `{key}`: expected {expected}")]
    Invalid { key: String, expected: String },
}

impl Config {
    /// Loads the layers from this process's environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    /// Loads the layers with an explicit environment, so tests need not touch the process's.
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let env: BTreeMap<String, String> = env.into_iter().collect();
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::Invalid {
                    key: "--config".into(),
                    expected: format!("an existing file, but {} does not exist", file.display()),
                });
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        // `BAW__HTTP__BIND` -> `http.bind`. Single-underscore names (BAW_CONFIG) are not keys.
        let vars: Vec<(String, String)> = env
            .iter()
            .filter_map(|(k, v)| {
                let key = k.strip_prefix("BAW__")?;
                Some((key.to_ascii_lowercase().replace("__", "."), v.clone()))
            })
            .collect();
        for (key, value) in vars {
            // Env values are parsed like TOML values (numbers, booleans), else taken as strings.
            figment = figment.merge(Serialized::default(&key, parse_env_value(&value)));
        }
        if let Some(url) = env.get("DATABASE_URL").filter(|u| !u.is_empty()) {
            figment = figment.merge(Serialized::default("database.url", url));
        }
        let config: Config = figment.extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, expected: &str| {
            Err(ConfigError::Invalid {
                key: key.into(),
                expected: expected.into(),
            })
        };
        if url::Url::parse(&self.database.url).map(|u| u.scheme().starts_with("postgres"))
            != Ok(true)
        {
            return invalid("database.url", "a postgres:// or postgresql:// URL");
        }
        if self.database.max_connections < 2 {
            return invalid("database.max_connections", "at least 2");
        }
        // Periods, timeouts and windows: zero panics a tokio interval (heartbeat, maintenance
        // tickers), spins (poll), or fails or refuses everything (timeouts, tolerance).
        let non_zero = [
            ("database.acquire_timeout", self.database.acquire_timeout),
            ("http.bulk_answer_within", self.http.bulk_answer_within),
            ("worker.lease", self.worker.lease),
            ("worker.heartbeat", self.worker.heartbeat),
            ("worker.poll_interval", self.worker.poll_interval),
            (
                "maintenance.rescue_interval",
                self.maintenance.rescue_interval,
            ),
            (
                "maintenance.prune_interval",
                self.maintenance.prune_interval,
            ),
            ("stripe.connect_timeout", self.stripe.connect_timeout),
            ("stripe.request_timeout", self.stripe.request_timeout),
            ("stripe.webhook_tolerance", self.stripe.webhook_tolerance),
            ("resend.timeout", self.resend.timeout),
            ("facebook.connect_timeout", self.facebook.connect_timeout),
            ("facebook.request_timeout", self.facebook.request_timeout),
            ("uploads.read_timeout", self.uploads.read_timeout),
            ("uploads.request_timeout", self.uploads.request_timeout),
            ("drive.connect_timeout", self.drive.connect_timeout),
            ("drive.request_timeout", self.drive.request_timeout),
        ];
        for (key, value) in non_zero {
            if value.is_zero() {
                return invalid(key, "a non-zero duration");
            }
        }
        // Every duration is added to an instant or subtracted from now somewhere (ticker
        // deadlines, retention cut-offs): beyond the calendar those panic.
        let bounded = non_zero.into_iter().chain([
            ("worker.shutdown_grace", self.worker.shutdown_grace),
            ("maintenance.leader_ttl", self.maintenance.leader_ttl),
            ("maintenance.prune_after", self.maintenance.prune_after),
            ("email.log_retention", self.email.log_retention),
            (
                "email.unknown_outcome_window",
                self.email.unknown_outcome_window,
            ),
        ]);
        for (key, value) in bounded {
            if value > MAX_DURATION {
                return invalid(key, "a duration of at most 100 years");
            }
        }
        // Renewed every ttl/3 and written to expire 2/3 ttl later (`queue::maintenance`).
        if self.maintenance.leader_ttl < Duration::from_secs(1) {
            return invalid("maintenance.leader_ttl", "a duration of at least 1s");
        }
        // `DELETE ... LIMIT 0` deletes nothing, and the pruners delete until a batch comes short.
        if self.maintenance.prune_batch == 0 {
            return invalid("maintenance.prune_batch", "at least 1");
        }
        let window = self.email.unknown_outcome_window;
        if window.is_zero() || window >= IDEMPOTENCY_KEY_MEMORY {
            return invalid(
                "email.unknown_outcome_window",
                "a non-zero duration under 24h (Resend forgets an Idempotency-Key after 24 h)",
            );
        }
        // `send_email` reads an email's row so as not to send it twice; a row pruned while its
        // job may still run again would let it send once more after Resend forgot the key.
        if self.email.log_retention < IDEMPOTENCY_KEY_MEMORY {
            return invalid(
                "email.log_retention",
                "a duration of at least 24h (send_email relies on the rows of recent emails)",
            );
        }
        if self.worker.heartbeat >= self.worker.lease {
            return invalid("worker.heartbeat", "a duration shorter than worker.lease");
        }
        let header = &self.http.client_address_header;
        if !header.is_empty() && axum::http::HeaderName::try_from(header.as_str()).is_err() {
            return invalid(
                "http.client_address_header",
                "empty, or an HTTP header name such as x-forwarded-for",
            );
        }
        if !self.http.ops_bind.is_empty() && self.http.ops_addr().is_none() {
            return invalid(
                "http.ops_bind",
                "empty, or an address and port such as 127.0.0.1:9090",
            );
        }
        if self.worker.claim_batch == 0 {
            return invalid("worker.claim_batch", "at least 1");
        }
        if !["trace", "debug", "info", "warn", "error"].contains(&self.log.level.as_str()) {
            return invalid("log.level", "one of trace, debug, info, warn, error");
        }
        for (name, queue) in &self.queues {
            if queue.concurrency == 0 {
                return invalid(&format!("queues.{name}.concurrency"), "at least 1");
            }
        }
        for (name, schedule) in &self.schedules {
            // A bad cron or zone stops start-up, naming `schedules.<name>.<key>`.
            if let Err(crate::schedule::ScheduleError::Invalid { key, expected }) =
                crate::schedule::Schedule::from_config(name, schedule)
            {
                return Err(ConfigError::Invalid { key, expected });
            }
        }
        if self.uploads.max_bytes == 0 {
            return invalid("uploads.max_bytes", "at least 1");
        }
        if !(1024..=MAX_STAGED_CHUNK_BYTES).contains(&self.uploads.chunk_bytes) {
            return invalid(
                "uploads.chunk_bytes",
                "between 1024 and 8112 (a staged chunk is stored inline in one 8 KB page)",
            );
        }
        if self.uploads.max_concurrent == 0 {
            return invalid("uploads.max_concurrent", "at least 1");
        }
        let granularity = 256 * 1024;
        if self.drive.upload_chunk_bytes == 0
            || !self.drive.upload_chunk_bytes.is_multiple_of(granularity)
        {
            return invalid("drive.upload_chunk_bytes", "a positive multiple of 262144");
        }
        for (name, limit) in &self.rate_limits {
            if !(limit.rate > 0.0 && limit.burst >= 1.0 && !limit.per.is_zero()) {
                return invalid(
                    &format!("rate_limits.{name}"),
                    "rate > 0, burst >= 1 and a non-zero `per`",
                );
            }
        }
        Ok(())
    }

    /// The effective config as TOML with the password of `database.url` redacted: what
    /// `config check` prints. Secrets are not in the tree at all.
    pub fn to_redacted_toml(&self) -> String {
        let mut shown = self.clone();
        shown.database.url = redact_url(&shown.database.url);
        toml_string(&shown)
    }

    /// This node's display name.
    pub fn node_name(&self) -> String {
        if self.node.name.is_empty() {
            let host = hostname::get()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "node".into());
            format!("{host}-{}", std::process::id())
        } else {
            self.node.name.clone()
        }
    }
}

/// One line per problem: the key, what was wrong, and where the value came from.
fn describe_figment(error: &figment::Error) -> String {
    error
        .clone()
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let name = e
                .metadata
                .as_ref()
                .map(|m| m.name.to_string())
                .unwrap_or_default();
            // Values merged from the environment carry a Rust type name as their source.
            let source = if name.contains("::") {
                if key == "database.url" {
                    "DATABASE_URL".to_string()
                } else {
                    format!(
                        "environment variable BAW__{}",
                        key.to_uppercase().replace('.', "__")
                    )
                }
            } else {
                name
            };
            let key = if key.is_empty() {
                String::from("<config>")
            } else {
                key
            };
            format!("invalid value for `{key}`: {} (from {source})", e.kind)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Env values are read as TOML values (numbers, booleans, arrays, inline tables) when they
/// parse as one, else as plain strings: `BAW__QUEUES__DEFAULT__CONCURRENCY=8` is a number,
/// `BAW__HTTP__BIND=127.0.0.1:9000` a string.
fn parse_env_value(value: &str) -> toml::Value {
    match toml::from_str::<toml::Table>(&format!("v = {value}")) {
        Ok(mut table) => table
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(value.into())),
        Err(_) => toml::Value::String(value.into()),
    }
}

fn toml_string(config: &Config) -> String {
    toml::to_string(config).unwrap_or_else(|e| format!("# cannot render the config: {e}\n"))
}
