//! `bench -- dashboard`: every dashboard page, logged in, through the real router over HTTP,
//! with 1,000,000 finished jobs in the table (spread over the 7 days `prune_after` keeps them,
//! 1 % discarded and 0.4 % cancelled) and a few thousand jobs in every other state, after
//! `vacuum analyze` (what autovacuum does to such a table in production). Each page is requested
//! once to warm up, then 5 times; its figure is the median. Target: every page under 200 ms.
//!
//! Last line: `{"jobs_in_table", "slowest_page", "slowest_page_ms", ...}`.

use std::time::Instant;

use anyhow::Context;
use baseaim_worker::auth::{Role, operators};
use serde_json::json;

use super::{BenchDb, HttpNode, median};

const FINISHED: i64 = 1_000_000;
const BATCH: i64 = 100_000;
const RUNS: usize = 5;
const PASSWORD: &str = "bench password, long enough";

/// Finished jobs `$1..=$2` of `$3`, newest last, finishing evenly over the last 7 days.
const SEED_FINISHED: &str = "
insert into jobs (kind, queue, args, state, attempt, max_attempts, run_at, created_at,
                  attempted_at, finished_at, lease_owner, errors, result, tags)
select (array['send_email', 'facebook_sync_account', 'stripe_event', 'noop', 'prune'])[1 + g % 5],
       (array['default', 'email', 'facebook', 'drive'])[1 + g % 4],
       jsonb_build_object('client_id', 'c' || (g % 5000), 'n', g),
       case when g % 100 = 0 then 'discarded' when g % 250 = 1 then 'cancelled'
            else 'completed' end,
       case when g % 100 = 0 then 3 else 1 end, 3,
       t - interval '2 seconds', t - interval '2 seconds', t - interval '1 second', t,
       'bench-node-' || (g % 3),
       case when g % 100 = 0 then jsonb_build_array(
                jsonb_build_object('attempt', 1, 'at', t, 'error', 'upstream timed out'),
                jsonb_build_object('attempt', 3, 'at', t, 'error', 'card_declined ' || g))
            end,
       case when g % 100 <> 0 then '{\"ok\": true}'::jsonb end,
       case when g % 7 = 0 then array['billing'] else '{}'::text[] end
  from generate_series($1::bigint, $2::bigint) g,
       lateral (select now() - ($3 - g) * interval '604.8 milliseconds' as t) tt";

/// Unfinished jobs: available (some waiting for minutes), scheduled, retryable, running.
const SEED_UNFINISHED: &[&str] = &[
    "insert into jobs (kind, queue, args, state, run_at)
     select 'send_email', (array['default', 'email', 'facebook', 'drive'])[1 + g % 4],
            jsonb_build_object('client_id', 'c' || g), 'available',
            now() - (g % 600) * interval '1 second'
       from generate_series(1, 3000) g",
    "insert into jobs (kind, queue, args, state, run_at)
     select 'facebook_sync_account', 'facebook', jsonb_build_object('client_id', 'c' || g),
            'scheduled', now() + (g % 3600) * interval '1 second'
       from generate_series(1, 1000) g",
    "insert into jobs (kind, queue, args, state, attempt, run_at, errors)
     select 'stripe_event', 'default', jsonb_build_object('event_id', 'evt_' || g), 'retryable',
            1, now() + interval '30 seconds',
            jsonb_build_array(jsonb_build_object('attempt', 1, 'at', now(), 'error', 'timeout'))
       from generate_series(1, 500) g",
    "insert into jobs (kind, queue, args, state, attempt, run_at, attempted_at, lease_owner,
                       lease_expires_at)
     select 'drive_upload', 'drive', jsonb_build_object('document_id', g), 'running', 1, now(),
            now(), 'bench-node-' || (g % 3), now() + interval '30 seconds'
       from generate_series(1, 40) g",
    "insert into nodes (name, role, version)
     select 'bench-node-' || g, 'all', '0.1.0' from generate_series(0, 2) g",
    "insert into clients (id, name, email, facebook_ad_account_id, facebook_last_sync_at)
     select 'c' || g, 'Client ' || g, 'client' || g || '@example.com', '10' || g,
            now() - (g % 90) * interval '1 minute'
       from generate_series(0, 4999) g",
    "insert into facebook_sync_runs (client_id, ad_account_id, started_at, finished_at, rows,
                                     calls, outcome, error)
     select 'c' || (g % 5000), '10' || (g % 5000), now() - g * interval '1 second',
            now() - g * interval '1 second', 140, 3,
            case when g % 500 = 0 then 'token_invalid' else 'ok' end,
            case when g % 500 = 0 then 'Error validating access token' end
       from generate_series(1, 20000) g",
    "insert into stripe_events (id, type, created, payload, status, processed_at, received_at,
                                last_error)
     select 'evt_bench_' || g, 'invoice.paid', 1700000000 + g, '{}',
            case when g % 200 = 0 then 'failed' else 'processed' end,
            now() - g * interval '1 minute', now() - g * interval '1 minute',
            case when g % 200 = 0 then 'no such client' end
       from generate_series(1, 10000) g",
    "insert into email_log (idempotency_key, template, recipient, subject, status, attempts,
                            created_at, sent_at)
     select 'k' || g, 'invoice', 'person' || g || '@example.com', 'Invoice ' || g,
            case when g % 100 = 0 then 'failed' else 'sent' end, 1,
            now() - g * interval '10 seconds', now() - g * interval '10 seconds'
       from generate_series(1, 100000) g",
];

/// Documents, when the table exists in this build's migrations.
const SEED_DOCUMENTS: &str = "
insert into documents (id, client_id, title, file_name, mime_type, status, failure_reason)
select gen_random_uuid(), 'c' || (g % 5000), 'Contract ' || g, 'contract.pdf',
       'application/pdf', case when g % 10 = 0 then 'FAILED' when g % 10 = 1 then 'PENDING'
                               else 'UPLOADED' end,
       case when g % 10 = 0 then 'Drive refused the upload' end
  from generate_series(1, 20000) g";

pub async fn run() -> anyhow::Result<()> {
    let db = BenchDb::create().await?;
    let pool = db.pool(20).await?;

    let t0 = Instant::now();
    let mut from = 1;
    while from <= FINISHED {
        let to = (from + BATCH - 1).min(FINISHED);
        sqlx::query(SEED_FINISHED)
            .bind(from)
            .bind(to)
            .bind(FINISHED)
            .execute(&pool)
            .await
            .context("seeding finished jobs")?;
        from = to + 1;
    }
    for statement in SEED_UNFINISHED {
        sqlx::query(*statement).execute(&pool).await?;
    }
    let documents = sqlx::query(SEED_DOCUMENTS).execute(&pool).await.is_ok();
    sqlx::query("vacuum analyze").execute(&pool).await?;
    let jobs_in_table: i64 = sqlx::query_scalar("select count(*) from jobs")
        .fetch_one(&pool)
        .await?;
    let finished: i64 = sqlx::query_scalar(
        "select count(*) from jobs where state in ('completed', 'discarded', 'cancelled')",
    )
    .fetch_one(&pool)
    .await?;
    println!(
        "{}",
        json!({"phase": "seeded", "jobs": jobs_in_table, "finished": finished,
               "documents": documents, "seconds": t0.elapsed().as_secs_f64().round()})
    );

    // A node's HTTP surface, as `serve` builds it.
    let node = HttpNode::start(&pool, Default::default()).await?;
    let (addr, stop) = (node.addr, node.stop);
    let base = format!("http://{addr}");
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;

    operators::add(&pool, "bench", PASSWORD, Role::Admin).await?;
    // Through the login form, as a browser: its CSRF cookie and the same token in the post.
    let form = client.get(format!("{base}/dashboard/login")).send().await?;
    let form_cookie = session_cookie(&form).context("the login form set no CSRF cookie")?;
    let form_csrf = csrf_in(&form.text().await?).context("no CSRF token on the login form")?;
    let login = client
        .post(format!("{base}/dashboard/login"))
        .header("cookie", &form_cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs([
                    ("csrf", form_csrf.as_str()),
                    ("username", "bench"),
                    ("password", PASSWORD),
                ])
                .finish(),
        )
        .send()
        .await?;
    let cookie = session_cookie(&login).context("login gave no session cookie")?;
    let overview = client
        .get(format!("{base}/dashboard"))
        .header("cookie", &cookie)
        .send()
        .await?
        .text()
        .await?;
    let csrf = csrf_in(&overview).context("no CSRF token on the overview")?;

    let discarded: i64 = sqlx::query_scalar(
        "select id from jobs where state = 'discarded' order by id desc limit 1 offset 500",
    )
    .fetch_one(&pool)
    .await?;
    let middle = FINISHED / 2;
    let mut pages: Vec<(String, String)> = vec![
        ("overview".into(), "/dashboard".into()),
        ("jobs: all".into(), "/dashboard/jobs".into()),
    ];
    for s in baseaim_worker::queue::admin::STATES {
        pages.push((format!("jobs: {s}"), format!("/dashboard/jobs?state={s}")));
    }
    pages.extend([
        (
            "jobs: completed, a page in the middle".to_string(),
            format!("/dashboard/jobs?state=completed&before={middle}"),
        ),
        (
            "jobs: completed, kind + args JSON".into(),
            "/dashboard/jobs?state=completed&kind=prune&args=%7B%22client_id%22%3A%22c42%22%7D"
                .into(),
        ),
        (
            "jobs: discarded, args text".into(),
            "/dashboard/jobs?state=discarded&args=c4200".into(),
        ),
        (
            "jobs: error text, every state".into(),
            "/dashboard/jobs?error=card_declined%20999".into(),
        ),
        (
            "jobs: queue + time range".into(),
            "/dashboard/jobs?queue=email&from=2000-01-01T00:00&to=2100-01-01T00:00".into(),
        ),
        ("job detail".into(), format!("/dashboard/jobs/{discarded}")),
        ("queues".into(), "/dashboard/queues".into()),
        ("schedules".into(), "/dashboard/schedules".into()),
        ("integrations".into(), "/dashboard/integrations".into()),
        (
            "integrations: email search".into(),
            "/dashboard/integrations?email=person4242&stripe_status=failed".into(),
        ),
    ]);

    let mut results = Vec::new();
    for (name, path) in &pages {
        let mut times = Vec::new();
        for i in 0..=RUNS {
            let t = Instant::now();
            let response = client
                .get(format!("{base}{path}"))
                .header("cookie", &cookie)
                .send()
                .await?;
            let status = response.status();
            let body = response.text().await?;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            anyhow::ensure!(status.is_success(), "{path}: {status}: {body}");
            if i > 0 {
                times.push(ms);
            }
        }
        results.push((name.clone(), times));
    }
    // The confirmation step of a bulk action over a filter (a page too: it counts, bounded).
    let mut times = Vec::new();
    for i in 0..=RUNS {
        let t = Instant::now();
        let response = client
            .post(format!("{base}/dashboard/jobs/bulk"))
            .header("cookie", &cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "csrf={csrf}&action=delete&scope=filter&state=completed&kind=noop"
            ))
            .send()
            .await?;
        let status = response.status();
        let body = response.text().await?;
        anyhow::ensure!(status.is_success(), "bulk confirm: {status}: {body}");
        if i > 0 {
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    results.push(("jobs: bulk delete confirmation (filter)".into(), times));

    let mut slowest = (String::new(), 0.0_f64);
    let mut worst_single = 0.0_f64;
    for (name, times) in &results {
        let max = times.iter().copied().fold(0.0, f64::max);
        let p50 = median(times.clone());
        println!(
            "{}",
            json!({"page": name, "p50_ms": round(p50), "max_ms": round(max)})
        );
        worst_single = worst_single.max(max);
        if p50 > slowest.1 {
            slowest = (name.clone(), p50);
        }
    }
    stop.cancel();
    pool.close().await;
    // BENCH_KEEP_DB=1 keeps the seeded database for EXPLAIN sessions.
    if std::env::var_os("BENCH_KEEP_DB").is_some() {
        eprintln!("kept database {}", db.url);
    } else {
        db.drop_db().await?;
    }
    println!(
        "{}",
        json!({
            "jobs_in_table": jobs_in_table,
            "finished_jobs": finished,
            "pages": results.len(),
            "slowest_page": slowest.0,
            "slowest_page_ms": round(slowest.1),
            "slowest_single_request_ms": round(worst_single),
            "target_ms": 200,
        })
    );
    Ok(())
}

fn round(ms: f64) -> f64 {
    (ms * 10.0).round() / 10.0
}

/// The `name=value` of the cookie `response` sets.
fn session_cookie(response: &reqwest::Response) -> Option<String> {
    let header = response.headers().get("set-cookie")?.to_str().ok()?;
    Some(header.split(';').next()?.to_owned())
}

/// The CSRF token of the first form in `html`.
fn csrf_in(html: &str) -> Option<String> {
    let field = r#"name="csrf" value=""#;
    let start = html.find(field)? + field.len();
    let end = html[start..].find('"')?;
    Some(html[start..start + end].to_owned())
}
