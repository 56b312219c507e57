//! `baseaim-worker demo`: the whole daemon against local simulators, for a newcomer without
//! credentials or internet, and `baseaim-worker sim send-webhook` to poke it.
//!
//! The demo starts the four provider simulators on loopback, points every integration at them
//! with throw-away credentials, creates and migrates its own database (never the production
//! default), seeds three demo clients and a few jobs, and runs a node with every role. It writes
//! where its webhook endpoint is, and the throw-away signing secret, to a state file readable
//! only by the user, which `sim send-webhook` reads to deliver a signed Stripe event.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::app::Node;
use crate::cli::Role;
use crate::config::{Config, Secrets};
use crate::jobs::send_email::{SendEmail, enqueue_email};
use crate::queue::{NewJob, enqueue_many};
use crate::sim::Simulators;
use crate::sim::stripe::{EVENT_TYPES, WebhookSender};

/// The demo's database unless told otherwise: never the production default.
pub const DEMO_DATABASE_URL: &str = "postgres://localhost/baseaim_worker_demo";

/// The demo database's name, on whichever server it runs.
const DEMO_DATABASE: &str = "baseaim_worker_demo";

/// The demo's dashboard account (admin); its password is new each run and printed.
const DEMO_OPERATOR: &str = "demo";
/// Where demo uploads land in the Drive simulator.
const DEMO_DRIVE_FOLDER: &str = "demo-client-documents";

/// The customer the Stripe sample events carry; the first demo client owns it.
const SAMPLE_CUSTOMER: &str = "cus_QXg1o8vcGmoR32";

const DEMO_CLIENTS: [(&str, &str, &str); 3] = [
    ("demo-acme", "Acme Dental", "owner@acme-dental.example"),
    (
        "demo-birch",
        "Birch & Co Roofing",
        "hello@birch-roofing.example",
    ),
    (
        "demo-cedar",
        "Cedar Yoga Studio",
        "studio@cedar-yoga.example",
    ),
];

#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// Send a signed Stripe event to the running demo's webhook endpoint.
    SendWebhook {
        /// One of: checkout.session.completed, customer.subscription.updated,
        /// customer.subscription.deleted, invoice.paid, invoice.payment_failed.
        event_type: String,
        /// The demo client the event is about.
        #[arg(long, default_value = "demo-acme")]
        client: String,
    },
}

/// What `demo` tells `sim send-webhook`.
#[derive(Serialize, Deserialize)]
struct DemoState {
    webhook_url: String,
    /// Throw-away, generated per demo run, for the local endpoint only.
    webhook_secret: String,
}

/// Where the demo keeps its state (`BAW_DEMO_STATE` overrides it).
fn state_path() -> PathBuf {
    std::env::var_os("BAW_DEMO_STATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("baseaim-worker-demo.json"))
}

/// The demo's database: `--database-url` as given, else the database `baseaim_worker_demo` on
/// the server `DATABASE_URL` names (its own database is left alone: it may be production's), else
/// [`DEMO_DATABASE_URL`].
fn demo_database(flag: Option<String>, database_url: Option<String>) -> anyhow::Result<String> {
    if let Some(url) = flag {
        return Ok(url);
    }
    let Some(server) = database_url.filter(|u| !u.is_empty()) else {
        return Ok(DEMO_DATABASE_URL.to_owned());
    };
    let mut url =
        url::Url::parse(&server).map_err(|e| anyhow::anyhow!("DATABASE_URL is not a URL ({e})"))?;
    url.set_path(&format!("/{DEMO_DATABASE}"));
    Ok(url.to_string())
}

/// Runs the demo until Ctrl-C or SIGTERM.
pub async fn run(
    base: Config,
    database_url: Option<String>,
    bind: SocketAddr,
) -> anyhow::Result<()> {
    let database_url = demo_database(database_url, std::env::var("DATABASE_URL").ok())?;
    crate::telemetry::init(base.log.format, &base.log.level);
    let sims = Simulators::start()
        .await
        .context("starting the simulators")?;
    let mut config = base;
    config.database.url = database_url;
    config.http.bind = bind;
    config.stripe.api_base = sims.stripe.base_url().to_string();
    config.resend.api_base = sims.resend.base_url().to_string();
    config.facebook.api_base = sims.facebook.base_url().to_string();
    config.drive.api_base = sims.google_drive.base_url().to_string();
    let webhook_secret = format!("whsec_demo{:032x}", rand::random::<u128>());
    let secrets = Secrets {
        stripe_webhook_secret: Some(SecretString::from(webhook_secret.clone())),
        stripe_secret_key: Some(SecretString::from(sims.stripe.api_key())),
        resend_api_key: Some(SecretString::from(sims.resend.api_key())),
        facebook_access_token: Some(SecretString::from(sims.facebook.access_token())),
        google_service_account_key: Some(SecretString::from(sims.google_drive.key_file_json())),
        google_drive_folder_id: Some(SecretString::from(DEMO_DRIVE_FOLDER)),
    };

    let pool = crate::db::connect_or_create(&config.database).await?;
    crate::db::migrate(&pool)
        .await
        .context("migrating the demo database")?;
    let ad_accounts: Vec<String> = sims
        .facebook
        .accounts()
        .iter()
        .map(|a| format!("act_{}", a.id))
        .collect();
    seed(&pool, &ad_accounts)
        .await
        .context("seeding the demo")?;
    // A fresh throw-away password per run, for the demo database only.
    let password = format!("demo-{:016x}", rand::random::<u64>());
    crate::auth::operators::upsert(&pool, DEMO_OPERATOR, &password, crate::auth::Role::Admin)
        .await
        .context("creating the demo operator")?;
    let schedules = crate::schedule::load(&config, &crate::jobs::registry())?;

    let stop = CancellationToken::new();
    tokio::spawn(crate::app::cancel_on_signal(stop.clone()));
    let node = Node::start(config, secrets, Role::All, true, stop.clone()).await?;
    let addr = node.addr.context("the demo's node listens (role all)")?;
    // Metrics from the Facebook simulator now, not at the next half hour.
    if let Some(sync) = schedules.iter().find(|s| s.name == "facebook_sync") {
        crate::schedule::command::run_now(&pool, sync).await?;
    }
    let webhook_url = format!("http://{addr}/webhooks/stripe");
    write_state(&DemoState {
        webhook_url,
        webhook_secret,
    })?;

    println!();
    println!("baseaim-worker demo is running (Ctrl-C stops it).");
    println!("  dashboard:   http://{addr}/dashboard   (log in as {DEMO_OPERATOR} / {password})");
    println!("  health:      http://{addr}/readyz");
    println!(
        "  simulators:  Stripe {}  Resend {}",
        sims.stripe.base_url(),
        sims.resend.base_url()
    );
    println!(
        "  Facebook {}  Google Drive {}",
        sims.facebook.base_url(),
        sims.google_drive.base_url()
    );
    println!("Watch the jobs flow (in another terminal, same DATABASE_URL as the demo):");
    println!(
        "  DATABASE_URL={} baseaim-worker jobs list",
        crate::config::redact_url(&pool_url(&pool))
    );
    println!("Send a signed Stripe event to it:");
    println!("  baseaim-worker sim send-webhook invoice.payment_failed");
    println!();

    stop.cancelled().await;
    tracing::info!("stopping the demo");
    node.stop().await?;
    let _ = std::fs::remove_file(state_path());
    Ok(())
}

fn pool_url(pool: &sqlx::PgPool) -> String {
    let options = pool.connect_options();
    format!(
        "postgres://{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("")
    )
}

/// Three clients (the first owns the Stripe sample customer; each has one of the Facebook
/// simulator's ad accounts), a welcome email each, and a few no-op jobs. A second demo run on the
/// same database mails nobody twice (the email log keys).
async fn seed(pool: &sqlx::PgPool, ad_accounts: &[String]) -> anyhow::Result<()> {
    for (i, (id, name, email)) in DEMO_CLIENTS.iter().enumerate() {
        let customer = (i == 0).then_some(SAMPLE_CUSTOMER);
        sqlx::query(
            "insert into clients (id, name, email, stripe_customer_id, facebook_ad_account_id)
             values ($1, $2, $3, $4, $5)
             on conflict (id) do update set facebook_ad_account_id = excluded.facebook_ad_account_id",
        )
        .bind(id)
        .bind(name)
        .bind(email)
        .bind(customer)
        .bind(ad_accounts.get(i))
        .execute(pool)
        .await?;
        let data = json!({"client_name": name, "dashboard_url": "https://app.baseaim.example/"});
        let email = SendEmail {
            template: "welcome".into(),
            to: (*email).into(),
            data: data.as_object().cloned().unwrap_or_default(),
            reply_to: None,
            tags: Vec::new(),
            scheduled_at: None,
        };
        enqueue_email(pool, email, Some(&format!("email:welcome:{id}"))).await?;
    }
    let noops = (0..20).map(|_| NewJob::raw("noop", json!({}))).collect();
    enqueue_many(pool, noops).await?;
    Ok(())
}

fn write_state(state: &DemoState) -> anyhow::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let path = state_path();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(serde_json::to_string(state)?.as_bytes())?;
    Ok(())
}

/// `sim send-webhook`: one signed event to the running demo.
pub async fn sim_command(command: SimCommand) -> anyhow::Result<()> {
    let SimCommand::SendWebhook { event_type, client } = command;
    anyhow::ensure!(
        EVENT_TYPES.contains(&event_type.as_str()),
        "unknown event type `{event_type}`; one of: {}",
        EVENT_TYPES.join(", ")
    );
    let path = state_path();
    let state: DemoState = serde_json::from_slice(
        &std::fs::read(&path)
            .with_context(|| format!("no running demo ({} is missing)", path.display()))?,
    )
    .context("the demo state file is unreadable")?;
    let sender = WebhookSender::new(state.webhook_secret.clone());
    let sample = sender
        .event(&event_type)
        .context("no sample for that event type")?;
    let mut object = sample.value()["data"]["object"].clone();
    if event_type == "checkout.session.completed" {
        object["metadata"]["clientId"] = json!(client);
    }
    let event = sender
        .event_with_object(&event_type, object, None)
        .with_id(&format!("evt_demo{:024x}", rand::random::<u128>() >> 32));
    let status = tokio::time::timeout(
        Duration::from_secs(30),
        sender.send(&state.webhook_url, &event),
    )
    .await
    .ok()
    .flatten()
    .context("the demo did not answer")?;
    println!("{} {} -> HTTP {status}", event.id, event_type);
    anyhow::ensure!(status == 200, "the demo refused the event (HTTP {status})");
    Ok(())
}
