//! `send_email`: renders one templated email and sends it through Resend, exactly once.
//!
//! Templates live in `templates/email/<name>.{subject,html,txt}` and are compiled into the binary
//! (minijinja; HTML parts auto-escape, every variable must be given). [`enqueue_email`] renders
//! before enqueueing, so a missing variable is refused to the caller instead of mailing a blank.
//!
//! Exactly once on an at-least-once queue: the `Idempotency-Key` is derived from the job's unique
//! key (or its id), and rendering is deterministic, so a retry after a timeout or a cut connection
//! sends the same key with the same body and Resend answers the first id without sending again.
//! `email_log` keeps one row per key; a row already `sent` is not sent again even after Resend
//! forgot the key (24 h). Errors are classified in `integrations::resend::error`: 429 snoozes
//! (no attempt spent), 5xx and transport errors retry, other 4xx discard with Resend's message.
//!
//! The key protects only for 24 h, and retries (21 h of backoff, nearly 23 h with jitter) plus
//! snoozes (a used-up quota waits an hour at a time, without limit) can outlast it. So before each
//! send the row's `unknown_since` is set, on the database's clock, unless an earlier attempt
//! already set it; a refusal Resend answered (4xx, 429) or a connection never made takes it back,
//! while a timeout, a cut connection, a 5xx or a node lost mid-send leave it: the email may have
//! been accepted then. Once `unknown_since` is [`UNKNOWN_OUTCOME_WINDOW`] old
//! (`email.unknown_outcome_window`), whatever brought the job back (a retry, a snooze, an
//! operator), it does not send: the row becomes `unknown` and the job is discarded saying why. An
//! operator then looks the key up in Resend and, if the email never went out, sends it again by
//! hand (under another unique key).

use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use minijinja::{Environment, UndefinedBehavior};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use super::AppState;
use crate::integrations::resend::{ResendError, SendEmailRequest, Tag};
use crate::queue::{
    Backoff, Db, EnqueueError, Enqueued, Job, JobArgs, JobContext, JobError, JobResult, NewJob,
    Policy,
};

/// How long after the first attempt whose outcome is unknown an email may still be sent: Resend
/// keeps an `Idempotency-Key` 24 h (PROVIDERS.md §C.4); the hour left covers the rate-limit wait,
/// the request itself and the clocks. The default of `email.unknown_outcome_window`.
pub const UNKNOWN_OUTCOME_WINDOW: Duration = Duration::from_secs(23 * 3600);

/// The templates this binary can send.
pub const TEMPLATES: [&str; 4] = [
    "welcome",
    "milestone_update",
    "invoice_sent",
    "payment_failed",
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendEmail {
    /// One of [`TEMPLATES`].
    pub template: String,
    /// One recipient address.
    pub to: String,
    /// The template's variables (an object).
    pub data: serde_json::Map<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
    /// Resend delivers at this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_at: Option<DateTime<Utc>>,
}

impl JobArgs for SendEmail {
    const KIND: &'static str = "send_email";

    fn policy() -> Policy {
        Policy {
            queue: "email",
            // 10 attempts, 3 min doubling up to 8 h apart: the last about 21 h after the first.
            max_attempts: 10,
            backoff: Backoff {
                base: Duration::from_secs(180),
                max: Duration::from_secs(8 * 3600),
                jitter: 0.1,
            },
            timeout: Some(Duration::from_secs(120)),
            rate_limit: Some("resend"),
            ..Policy::default()
        }
    }
}

/// One rendered email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub html: String,
    pub text: String,
}

#[derive(Debug, thiserror::Error)]
pub enum EmailError {
    #[error("unknown email template `{0}`")]
    UnknownTemplate(String),
    #[error("email template `{template}`: {detail}")]
    Render { template: String, detail: String },
    #[error(transparent)]
    Enqueue(#[from] EnqueueError),
}

static ENVIRONMENT: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    // A missing variable is an error, never an empty string in a customer's inbox.
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // The default escaping callback escapes `*.html` and leaves `.subject` / `.txt` as they are.
    let sources = [
        (
            "layout.html",
            include_str!("../../templates/email/layout.html"),
        ),
        (
            "welcome.subject",
            include_str!("../../templates/email/welcome.subject"),
        ),
        (
            "welcome.html",
            include_str!("../../templates/email/welcome.html"),
        ),
        (
            "welcome.txt",
            include_str!("../../templates/email/welcome.txt"),
        ),
        (
            "milestone_update.subject",
            include_str!("../../templates/email/milestone_update.subject"),
        ),
        (
            "milestone_update.html",
            include_str!("../../templates/email/milestone_update.html"),
        ),
        (
            "milestone_update.txt",
            include_str!("../../templates/email/milestone_update.txt"),
        ),
        (
            "invoice_sent.subject",
            include_str!("../../templates/email/invoice_sent.subject"),
        ),
        (
            "invoice_sent.html",
            include_str!("../../templates/email/invoice_sent.html"),
        ),
        (
            "invoice_sent.txt",
            include_str!("../../templates/email/invoice_sent.txt"),
        ),
        (
            "payment_failed.subject",
            include_str!("../../templates/email/payment_failed.subject"),
        ),
        (
            "payment_failed.html",
            include_str!("../../templates/email/payment_failed.html"),
        ),
        (
            "payment_failed.txt",
            include_str!("../../templates/email/payment_failed.txt"),
        ),
    ];
    for (name, source) in sources {
        env.add_template(name, source)
            .unwrap_or_else(|e| panic!("email template {name} does not compile: {e:#}"));
    }
    env
});

/// Renders `template` with `data`: subject (one line), HTML and plain text.
pub fn render(
    template: &str,
    data: &serde_json::Map<String, serde_json::Value>,
) -> Result<Rendered, EmailError> {
    if !TEMPLATES.contains(&template) {
        return Err(EmailError::UnknownTemplate(template.into()));
    }
    let part = |ext: &str| {
        ENVIRONMENT
            .get_template(&format!("{template}.{ext}"))
            .and_then(|t| t.render(data))
            .map_err(|e| {
                let mut detail = describe(&e);
                let missing = missing_variables(template, data);
                if e.kind() == minijinja::ErrorKind::UndefinedError && !missing.is_empty() {
                    detail = format!("{detail}; missing variable(s): {}", missing.join(", "));
                }
                EmailError::Render {
                    template: template.into(),
                    detail,
                }
            })
    };
    Ok(Rendered {
        subject: part("subject")?
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .into(),
        html: part("html")?,
        text: part("txt")?,
    })
}

/// The top-level variables `template` (subject, HTML with its layout, text) uses that `data`
/// lacks, sorted. minijinja's own error says only "undefined value"; callers need the name.
pub fn missing_variables(
    template: &str,
    data: &serde_json::Map<String, serde_json::Value>,
) -> Vec<String> {
    let mut missing: Vec<String> = ["subject", "html", "txt"]
        .iter()
        .map(|ext| format!("{template}.{ext}"))
        .chain(["layout.html".to_string()])
        .filter_map(|name| ENVIRONMENT.get_template(&name).ok())
        .flat_map(|t| t.undeclared_variables(false))
        .filter(|name| !data.contains_key(name))
        .collect();
    missing.sort();
    missing.dedup();
    missing
}

/// minijinja's error with its location, e.g. "undefined value (in welcome.txt:1)".
fn describe(error: &minijinja::Error) -> String {
    let mut text = error.to_string();
    if let Some(detail) = error.detail() {
        text = format!("{text}: {detail}");
    }
    text
}

/// Validates by rendering, then enqueues. `unique_key` makes the enqueue idempotent and is the
/// root of the Resend `Idempotency-Key` (e.g. `email:payment_failed:<invoice id>`).
pub async fn enqueue_email<'c>(
    db: impl Into<Db<'c>>,
    email: SendEmail,
    unique_key: Option<&str>,
) -> Result<Enqueued, EmailError> {
    render(&email.template, &email.data)?;
    let mut job = NewJob::of(&email)?;
    if let Some(key) = unique_key {
        job = job.unique_key(key);
    }
    Ok(crate::queue::enqueue(db, job).await?)
}

/// The `Idempotency-Key`: from the job's unique key, else its id (at most 256 characters). A key
/// too long, or with a character a header value cannot carry (anything but printable ASCII:
/// `welcome:José`), is hashed, so every unique key makes a key Resend accepts.
pub fn idempotency_key(unique_key: Option<&str>, job_id: i64) -> String {
    match unique_key {
        Some(key) if key.len() <= 240 && key.chars().all(|c| c == ' ' || c.is_ascii_graphic()) => {
            format!("send_email/{key}")
        }
        Some(key) => {
            let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
            let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
            format!("send_email/sha256:{hex}")
        }
        None => format!("send_email/job:{job_id}"),
    }
}

/// `jane.doe@example.com` -> `j***@example.com`: enough for an operator to tell logs apart,
/// without the address (personal data) in log files.
pub fn mask_address(address: &str) -> String {
    match address.rsplit_once('@') {
        Some((local, domain)) => {
            format!("{}***@{domain}", local.chars().next().unwrap_or('?'))
        }
        None => "***".into(),
    }
}

impl Job<AppState> for SendEmail {
    async fn perform(self, ctx: JobContext<AppState>) -> JobResult {
        let key = idempotency_key(ctx.unique_key.as_deref(), ctx.id);
        let to = mask_address(&self.to);
        let rendered = render(&self.template, &self.data);
        let subject = rendered.as_ref().map_or("", |r| r.subject.as_str());
        let begun = email_log_begin(&ctx, &key, &self, subject).await?;
        if begun.status == "sent" {
            tracing::info!(job = ctx.id, %to, template = %self.template, "already sent; not sending again");
            return Ok(Some(
                serde_json::json!({ "resend_id": begun.resend_id, "already_sent": true }),
            ));
        }
        if let (UNKNOWN, Some(since)) = (begun.status.as_str(), begun.unknown_since) {
            let reason = format!(
                "not sent again: an attempt at {since} may have reached Resend without an answer, \
                 and Resend keeps the Idempotency-Key only 24 h, so sending now could deliver the \
                 email twice; an operator must check in Resend whether key {key} was sent and, if \
                 not, send the email again by hand"
            );
            tracing::error!(job = ctx.id, %to, template = %self.template, %key, %since,
                "email outcome unknown past the idempotency window; not sending");
            email_log_note(&ctx.pool, &key, &reason).await?;
            return Err(JobError::Discard(reason));
        }
        let rendered = match rendered {
            Ok(rendered) => rendered,
            Err(error) => {
                let reason = error.to_string();
                email_log_failed(&ctx.pool, &key, &reason).await?;
                return Err(JobError::Discard(reason));
            }
        };
        let Some(client) = ctx.state.resend.as_ref() else {
            let reason = "RESEND_API_KEY is not set: cannot send email";
            email_log_failed(&ctx.pool, &key, reason).await?;
            return Err(JobError::discard(reason));
        };
        let request = SendEmailRequest {
            from: ctx.state.config.email.from.clone(),
            to: vec![self.to.clone()],
            subject: rendered.subject,
            html: rendered.html,
            text: rendered.text,
            reply_to: self.reply_to.clone(),
            tags: self.tags.clone(),
            scheduled_at: self
                .scheduled_at
                .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        };
        // From here until Resend answers, the email may be accepted without our learning it.
        let marked: Option<DateTime<Utc>> = sqlx::query_scalar(EMAIL_LOG_SENDING)
            .bind(&key)
            .fetch_optional(&ctx.pool)
            .await?;
        match client.send(&request, &key).await {
            Ok(sent) => {
                sqlx::query(EMAIL_LOG_SENT)
                    .bind(&key)
                    .bind(&sent.id)
                    .execute(&ctx.pool)
                    .await?;
                tracing::info!(job = ctx.id, %to, template = %self.template, resend_id = %sent.id, "email sent");
                Ok(Some(serde_json::json!({ "resend_id": sent.id })))
            }
            Err(error) => {
                let message = error.to_string();
                if let (false, None, Some(marked)) =
                    (error.may_have_been_accepted(), begun.unknown_since, marked)
                {
                    // Refused before anything was accepted: this attempt does not count.
                    sqlx::query(EMAIL_LOG_REFUSED)
                        .bind(&key)
                        .bind(marked)
                        .execute(&ctx.pool)
                        .await?;
                }
                if let ResendError::IdempotencyConflict { .. } = &error {
                    tracing::error!(job = ctx.id, %key, %message,
                        "BUG: the same idempotency key was sent with another email; discarding");
                }
                let outcome = JobError::from(error);
                match &outcome {
                    JobError::Discard(_) => email_log_failed(&ctx.pool, &key, &message).await?,
                    JobError::Retry { .. } if ctx.is_last_attempt() => {
                        email_log_failed(&ctx.pool, &key, &message).await?
                    }
                    _ => email_log_note(&ctx.pool, &key, &message).await?,
                }
                Err(outcome)
            }
        }
    }
}

/// The `email_log` status of an email not sent because an earlier attempt's outcome is unknown
/// and Resend may have forgotten its key: for an operator to check.
pub const UNKNOWN: &str = "unknown";

/// Creates the row of this email, or takes it up again (a retry, a snooze, a rescue): answers its
/// status, Resend id and `unknown_since`. `attempts` is the job's attempt (a snooze gives it
/// back). A row not sent whose `unknown_since` is older than the window ($7, seconds) becomes
/// `unknown` (and stays so).
const EMAIL_LOG_BEGIN: &str = "
insert into email_log (idempotency_key, job_id, template, recipient, subject, attempts)
values ($1, $2, $3, $4, $5, $6)
on conflict (idempotency_key) do update
    set job_id = excluded.job_id,
        status = case when email_log.status = 'sent' then 'sent'
                      when email_log.unknown_since <= now() - make_interval(secs => $7)
                          then 'unknown'
                      else 'queued' end,
        attempts = case when email_log.status = 'sent' then email_log.attempts
                        else excluded.attempts end,
        subject = case when excluded.subject = '' then email_log.subject else excluded.subject end,
        updated_at = now()
returning status, resend_id, unknown_since";

/// Just before a request leaves: the first attempt that may reach Resend starts the window.
/// Answers `unknown_since`.
const EMAIL_LOG_SENDING: &str = "
update email_log set unknown_since = coalesce(unknown_since, now()), updated_at = now()
 where idempotency_key = $1
returning unknown_since";

/// Resend refused the attempt that set `unknown_since` ($2): it does not count.
const EMAIL_LOG_REFUSED: &str = "
update email_log set unknown_since = null
 where idempotency_key = $1 and unknown_since = $2";

const EMAIL_LOG_SENT: &str = "
update email_log
   set status = 'sent', resend_id = $2, sent_at = now(), last_error = null, updated_at = now()
 where idempotency_key = $1";

const EMAIL_LOG_FAILED: &str = "
update email_log set status = 'failed', last_error = $2, updated_at = now()
 where idempotency_key = $1 and status <> 'sent'";

const EMAIL_LOG_NOTE: &str = "
update email_log set last_error = $2, updated_at = now()
 where idempotency_key = $1 and status <> 'sent'";

/// Deletes rows created before `before`, in batches of `batch`; answers how many.
const EMAIL_LOG_PRUNE: &str = "
delete from email_log
 where id in (select id from email_log where created_at < $1 order by id limit $2)";

/// An email's row as [`EMAIL_LOG_BEGIN`] leaves it.
#[derive(sqlx::FromRow)]
struct Begun {
    status: String,
    resend_id: Option<String>,
    /// When the first attempt that may have reached Resend unanswered started.
    unknown_since: Option<DateTime<Utc>>,
}

async fn email_log_begin(
    ctx: &JobContext<AppState>,
    key: &str,
    email: &SendEmail,
    subject: &str,
) -> Result<Begun, sqlx::Error> {
    let window = ctx.state.config.email.unknown_outcome_window;
    sqlx::query_as(EMAIL_LOG_BEGIN)
        .bind(key)
        .bind(ctx.id)
        .bind(&email.template)
        .bind(&email.to)
        .bind(subject)
        .bind(ctx.attempt)
        .bind(window.as_secs_f64())
        .fetch_one(&ctx.pool)
        .await
}

async fn email_log_failed(pool: &PgPool, key: &str, error: &str) -> Result<(), sqlx::Error> {
    sqlx::query(EMAIL_LOG_FAILED)
        .bind(key)
        .bind(error)
        .execute(pool)
        .await?;
    Ok(())
}

async fn email_log_note(pool: &PgPool, key: &str, error: &str) -> Result<(), sqlx::Error> {
    sqlx::query(EMAIL_LOG_NOTE)
        .bind(key)
        .bind(error)
        .execute(pool)
        .await?;
    Ok(())
}

/// Deletes `email_log` rows created before `before` (recipients are personal data), in batches.
pub async fn prune_email_log(
    pool: &PgPool,
    before: DateTime<Utc>,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    // `limit 0` deletes nothing and never comes short: it would loop for ever.
    let batch = batch.max(1);
    let mut total = 0;
    loop {
        let deleted = sqlx::query(EMAIL_LOG_PRUNE)
            .bind(before)
            .bind(batch)
            .execute(pool)
            .await?
            .rows_affected();
        total += deleted;
        if deleted < batch as u64 {
            return Ok(total);
        }
    }
}
