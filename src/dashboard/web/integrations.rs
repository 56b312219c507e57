//! Integrations: per provider the last success and failure, the cluster's rate-limit budgets,
//! Facebook token health (a 190 is recorded as `token_invalid` in `facebook_sync_runs`), each
//! client's last Facebook sync, Stripe events with their processing status and "replay", the
//! email log with search, and documents pending or failed in Google Drive.
//!
//! Every list is bounded (newest first, `limit`). The documents panel reads the `documents`
//! table of the Drive issue; a database without it shows the panel as unavailable.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use sqlx::PgPool;

use super::{Chrome, FormData, WebError, ago, time};
use crate::auth::Operator;
use crate::http::HttpState;
use crate::http::error::ApiError;
use crate::jobs::stripe_event::{self, ReplayError};

/// Rows per list.
const LIST_LIMIT: i64 = 50;

#[derive(Deserialize)]
pub struct Params {
    notice: Option<String>,
    /// Email log search: recipient, subject or template.
    email: Option<String>,
    /// Stripe events of this status only.
    stripe_status: Option<String>,
}

/// Last success and failure of each provider, from the rows its jobs write. One row per
/// provider: (provider, last success, last failure, last failure's error). An email left
/// `unknown` (it may have gone out; an operator must check Resend) counts as a failure.
const PROVIDER_HEALTH: &str = "
select 'Facebook Ads' as provider,
       (select finished_at from facebook_sync_runs where outcome = 'ok' order by id desc limit 1),
       f.finished_at, f.error
  from (select 1) one
  left join lateral (select finished_at, error from facebook_sync_runs
                      where outcome in ('failed', 'token_invalid', 'retry')
                      order by id desc limit 1) f on true
union all
select 'Stripe',
       (select max(processed_at) from stripe_events where status = 'processed'),
       f.received_at, f.last_error
  from (select 1) one
  left join lateral (select received_at, last_error from stripe_events where status = 'failed'
                      order by received_at desc limit 1) f on true
union all
select 'Resend (email)',
       (select sent_at from email_log where status = 'sent' order by created_at desc limit 1),
       f.updated_at, f.last_error
  from (select 1) one
  left join lateral (select updated_at, last_error from email_log
                      where status in ('failed', 'unknown')
                      order by created_at desc limit 1) f on true";

/// The same for Google Drive, from `documents` (a separate statement: the table may be absent).
const DRIVE_HEALTH: &str = "
select (select uploaded_at from documents where status = 'UPLOADED'
         order by uploaded_at desc nulls last limit 1),
       f.updated_at, f.failure_reason
  from (select 1) one
  left join lateral (select updated_at, failure_reason from documents where status = 'FAILED'
                      order by updated_at desc limit 1) f on true";

/// Each bucket's tokens now: the stored tokens plus the refill since, capped at the burst.
const RATE_LIMIT_BUDGETS: &str = "
select name, rate_per_s, burst,
       least(burst, tokens + rate_per_s * extract(epoch from now() - updated_at))::float8
  from rate_limits order by name";

/// The latest run that says something about the token: ok, or refused (190).
const FACEBOOK_TOKEN_STATE: &str = "
select outcome, finished_at, error from facebook_sync_runs
 where outcome in ('ok', 'token_invalid') order by id desc limit 1";

/// Clients with a Facebook ad account, stalest sync first, with their latest run.
const FACEBOOK_CLIENTS: &str = "
select c.id, c.name, c.facebook_ad_account_id, c.facebook_last_sync_at,
       r.outcome, r.finished_at, r.error
  from clients c
  left join lateral (select outcome, finished_at, error from facebook_sync_runs
                      where client_id = c.id order by started_at desc limit 1) r on true
 where c.facebook_ad_account_id is not null
 order by c.facebook_last_sync_at asc nulls first, c.id
 limit $1";

const STRIPE_EVENTS: &str = "
select id, type, status, received_at, processed_at, last_error from stripe_events
 where ($1::text is null or status = $1)
 order by received_at desc limit $2";

/// Newest first. The substring search reads only the newest [`EMAIL_SEARCH_WINDOW`] rows (through
/// `email_log_created_idx`: a substring cannot use an index, and the log holds months of mail);
/// an exact address ($3) is found at any age through `email_log_recipient_idx`.
const EMAIL_SEARCH: &str = "
select id, template, recipient, subject, status, attempts, last_error, created_at, sent_at
  from email_log
 where id in (select id from (select id, recipient, subject, template from email_log
                               order by created_at desc limit $4) recent
               where $1::text is null or recipient ilike $1 or subject ilike $1
                     or template ilike $1
              union all
              select id from email_log where recipient = $3)
 order by created_at desc limit $2";

const EMAIL_NEWEST: &str = "
select id, template, recipient, subject, status, attempts, last_error, created_at, sent_at
  from email_log order by created_at desc limit $1";

/// Emails a substring search reads at most (the newest).
const EMAIL_SEARCH_WINDOW: i64 = 20_000;

/// Through `documents_status_idx` (status <> 'UPLOADED').
const DOCUMENTS_UNFINISHED: &str = "
select d.id::text, d.client_id, d.title, d.file_name, d.status, d.failure_reason, d.created_at,
       d.updated_at
  from documents d
 where d.status <> 'UPLOADED'
 order by d.created_at desc limit $1";

struct Provider {
    name: String,
    last_success: String,
    last_failure: String,
    error: String,
}

struct Budget {
    name: String,
    rate: String,
    burst: String,
    tokens: String,
    percent: i64,
}

struct TokenHealth {
    healthy: bool,
    text: String,
}

struct FacebookClient {
    id: String,
    name: String,
    account: String,
    last_sync: String,
    outcome: String,
    error: String,
}

struct StripeLine {
    id: String,
    kind: String,
    status: String,
    received: String,
    processed: String,
    error: String,
}

struct EmailLine {
    id: i64,
    template: String,
    recipient: String,
    subject: String,
    status: String,
    attempts: i32,
    error: String,
    created: String,
}

struct DocumentLine {
    id: String,
    client: String,
    title: String,
    status: String,
    reason: String,
    created: String,
}

#[derive(Template)]
#[template(path = "dashboard/integrations.html")]
struct IntegrationsPage {
    chrome: Chrome,
    providers: Vec<Provider>,
    budgets: Vec<Budget>,
    token: TokenHealth,
    clients: Vec<FacebookClient>,
    stripe: Vec<StripeLine>,
    stripe_status: String,
    emails: Vec<EmailLine>,
    email_query: String,
    email_window: String,
    /// None: the `documents` table is not in this database.
    documents: Option<Vec<DocumentLine>>,
}

type HealthRow = (
    String,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Option<String>,
);

pub async fn page(
    State(state): State<HttpState>,
    operator: Operator,
    Query(params): Query<Params>,
) -> Result<Response, WebError> {
    let pool = &state.pool;
    let now = Utc::now();
    // PostgreSQL refuses NUL in text (22021): the caller's mistake, not a failure.
    for (field, value) in [
        ("email", &params.email),
        ("stripe_status", &params.stripe_status),
    ] {
        if value.as_deref().is_some_and(|v| v.contains('\0')) {
            return Err(ApiError::BadRequest(format!(
                "`{field}` must not contain NUL (\\u0000) characters"
            ))
            .into());
        }
    }
    let stripe_status = params
        .stripe_status
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    let email_query = params
        .email
        .as_deref()
        .unwrap_or_default()
        .trim()
        .to_owned();

    // Independent reads, each on its own connection: the page takes as long as the slowest.
    let (health, drive, budgets, token, clients, stripe, emails, documents) = futures::try_join!(
        sqlx::query_as::<_, HealthRow>(PROVIDER_HEALTH).fetch_all(pool),
        async {
            optional_table(
                sqlx::query_as::<_, DriveHealthRow>(DRIVE_HEALTH)
                    .fetch_one(pool)
                    .await,
            )
        },
        sqlx::query_as::<_, (String, f64, f64, f64)>(RATE_LIMIT_BUDGETS).fetch_all(pool),
        sqlx::query_as::<_, (String, DateTime<Utc>, Option<String>)>(FACEBOOK_TOKEN_STATE)
            .fetch_optional(pool),
        sqlx::query_as::<_, ClientRow>(FACEBOOK_CLIENTS)
            .bind(LIST_LIMIT)
            .fetch_all(pool),
        sqlx::query_as::<_, StripeRow>(STRIPE_EVENTS)
            .bind(&stripe_status)
            .bind(LIST_LIMIT)
            .fetch_all(pool),
        emails(pool, &email_query),
        documents(pool),
    )?;

    let mut health = health;
    if let Some((ok, failed, error)) = drive {
        health.push(("Google Drive".into(), ok, failed, error));
    }
    let providers = health
        .into_iter()
        .map(|(name, ok, failed, error)| Provider {
            name,
            last_success: ago(ok, now),
            last_failure: ago(failed, now),
            error: error
                .map(|e| super::jobs::shorten(&e, 200))
                .unwrap_or_default(),
        })
        .collect();

    let budgets = budgets
        .into_iter()
        .map(|(name, rate, burst, tokens)| Budget {
            name,
            rate: format!("{rate:.2}/s"),
            burst: format!("{burst:.0}"),
            tokens: format!("{:.1}", tokens.max(0.0)),
            percent: (tokens.max(0.0) / burst * 100.0).round() as i64,
        })
        .collect();

    let token = match token {
        None => TokenHealth {
            healthy: true,
            text: "no sync has run yet".into(),
        },
        Some((outcome, at, _)) if outcome == "ok" => TokenHealth {
            healthy: true,
            text: format!("accepted by the last sync, {}", ago(Some(at), now)),
        },
        Some((_, at, error)) => TokenHealth {
            healthy: false,
            text: format!(
                "INVALID since {} (Graph error 190: the token expired or was revoked; set a new FACEBOOK_ACCESS_TOKEN){}",
                ago(Some(at), now),
                error.map(|e| format!(": {e}")).unwrap_or_default()
            ),
        },
    };

    let clients = clients
        .into_iter()
        .map(
            |(id, name, account, last_sync, outcome, at, error)| FacebookClient {
                id,
                name,
                account: account.unwrap_or_default(),
                last_sync: ago(last_sync, now),
                outcome: match (outcome, at) {
                    (Some(o), Some(at)) => format!("{o} {}", ago(Some(at), now)),
                    _ => "never ran".into(),
                },
                error: error
                    .map(|e| super::jobs::shorten(&e, 160))
                    .unwrap_or_default(),
            },
        )
        .collect();

    let stripe = stripe
        .into_iter()
        .map(
            |(id, kind, status, received, processed, error)| StripeLine {
                id,
                kind,
                status,
                received: time(Some(received)),
                processed: time(processed),
                error: error
                    .map(|e| super::jobs::shorten(&e, 160))
                    .unwrap_or_default(),
            },
        )
        .collect();

    let emails = emails
        .into_iter()
        .map(
            |(id, template, recipient, subject, status, attempts, error, created, _sent)| {
                EmailLine {
                    id,
                    template,
                    recipient,
                    subject,
                    status,
                    attempts,
                    error: error
                        .map(|e| super::jobs::shorten(&e, 160))
                        .unwrap_or_default(),
                    created: ago(Some(created), now),
                }
            },
        )
        .collect();

    let documents = documents.map(|rows| {
        rows.into_iter()
            .map(
                |(id, client, title, file_name, status, reason, created, _updated)| DocumentLine {
                    id,
                    client,
                    title: if title.is_empty() { file_name } else { title },
                    status,
                    reason: reason.unwrap_or_default(),
                    created: ago(Some(created), now),
                },
            )
            .collect()
    });

    super::render(&IntegrationsPage {
        chrome: Chrome::new(&operator, "integrations", params.notice),
        providers,
        budgets,
        token,
        clients,
        stripe,
        stripe_status: stripe_status.unwrap_or_default(),
        emails,
        email_query,
        email_window: super::thousands(EMAIL_SEARCH_WINDOW),
        documents,
    })
}

type DriveHealthRow = (Option<DateTime<Utc>>, Option<DateTime<Utc>>, Option<String>);

type ClientRow = (
    String,
    String,
    Option<String>,
    Option<DateTime<Utc>>,
    Option<String>,
    Option<DateTime<Utc>>,
    Option<String>,
);

type StripeRow = (
    String,
    String,
    String,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<String>,
);

type EmailRow = (
    i64,
    String,
    String,
    String,
    String,
    i32,
    Option<String>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
);

type DocumentRow = (
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    DateTime<Utc>,
    DateTime<Utc>,
);

/// The newest emails, or those matching `query` (see [`EMAIL_SEARCH`]).
async fn emails(pool: &PgPool, query: &str) -> Result<Vec<EmailRow>, sqlx::Error> {
    if query.is_empty() {
        return sqlx::query_as(EMAIL_NEWEST)
            .bind(LIST_LIMIT)
            .fetch_all(pool)
            .await;
    }
    let escaped: String = query
        .chars()
        .flat_map(|c| match c {
            '\\' | '%' | '_' => vec!['\\', c],
            c => vec![c],
        })
        .collect();
    sqlx::query_as(EMAIL_SEARCH)
        .persistent(false)
        .bind(format!("%{escaped}%"))
        .bind(LIST_LIMIT)
        .bind(query)
        .bind(EMAIL_SEARCH_WINDOW)
        .fetch_all(pool)
        .await
}

async fn documents(pool: &PgPool) -> Result<Option<Vec<DocumentRow>>, sqlx::Error> {
    optional_table(
        sqlx::query_as(DOCUMENTS_UNFINISHED)
            .bind(LIST_LIMIT)
            .fetch_all(pool)
            .await,
    )
}

/// A statement's result, or None when it failed because its table does not exist (42P01).
fn optional_table<T>(result: Result<T, sqlx::Error>) -> Result<Option<T>, sqlx::Error> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => Ok(None),
        Err(e) => Err(e),
    }
}

/// `POST /dashboard/stripe/{id}/replay`: re-applies a stored event through a new job.
pub async fn replay(
    State(state): State<HttpState>,
    operator: Operator,
    Path(id): Path<String>,
    form: FormData,
) -> Result<Response, WebError> {
    operator.authorize_action(form.csrf())?;
    let job = stripe_event::replay(&state.pool, &id)
        .await
        .map_err(|e| match e {
            ReplayError::NotFound(id) => ApiError::NotFound(format!("no stored Stripe event {id}")),
            ReplayError::Database(e) => e.into(),
            e => ApiError::Internal(e.into()),
        })?;
    tracing::info!(operator = %operator.username, event = %id, job, "Stripe event replayed from the dashboard");
    Ok(super::redirect_with_notice(
        &operator,
        "/dashboard/integrations",
        &format!("Stripe event {id} replayed as job {job}."),
    ))
}
