//! The pages and actions as an admin uses them over HTTP.

use baseaim_worker::auth::Role;
use baseaim_worker::queue::testing::{JobFactory, insert_job};
use reqwest::StatusCode;
use serde_json::json;

use crate::{App, Session, discarded_job, location};

async fn page(app: &App, session: &Session, path: &str) -> String {
    let response = app.get(path, Some(&session.cookie)).await;
    assert_eq!(response.status(), StatusCode::OK, "GET {path}");
    response.text().await.unwrap()
}

/// An attribute value as the browser reads it.
fn unescape(s: &str) -> String {
    s.replace("&#38;", "&")
        .replace("&amp;", "&")
        .replace("&#61;", "=")
}

/// Job ids listed in the jobs table of `html`, in order.
fn listed(html: &str) -> Vec<i64> {
    html.split("data-job=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next()?.parse().ok())
        .collect()
}

#[tokio::test]
async fn filters_find_jobs_by_args_error_and_state_newest_first() {
    let app = App::start().await;
    let admin = app.login_as("admin", Role::Admin).await;
    let wanted = discarded_job(&app.db, json!({"order": "A-1001", "client_id": "c1"})).await;
    let other = discarded_job(&app.db, json!({"order": "B-2002", "client_id": "c2"})).await;
    let done = insert_job(
        &app.db.pool,
        JobFactory {
            args: json!({"order": "A-1001"}),
            state: "completed".into(),
            finished_at: Some(chrono::Utc::now()),
            ..JobFactory::default()
        },
    )
    .await;

    let html = page(&app, &admin, "/dashboard/jobs?state=discarded&args=A-1001").await;
    assert_eq!(listed(&html), vec![wanted]);
    assert!(
        html.contains("card_declined: insufficient funds"),
        "last error shown"
    );
    let html = page(&app, &admin, "/dashboard/jobs?args=A-1001").await;
    assert_eq!(
        listed(&html),
        vec![done, wanted],
        "every state, newest first"
    );
    let html = page(
        &app,
        &admin,
        "/dashboard/jobs?args=%7B%22client_id%22%3A%22c2%22%7D",
    )
    .await;
    assert_eq!(
        listed(&html),
        vec![other],
        "a JSON object is matched by containment"
    );
    let html = page(&app, &admin, "/dashboard/jobs?error=CARD_DECLINED").await;
    assert_eq!(listed(&html), vec![other, wanted]);
    let html = page(&app, &admin, "/dashboard/jobs?state=completed&kind=other").await;
    assert!(listed(&html).is_empty());
    assert!(html.contains("No job matches"));
    let html = page(
        &app,
        &admin,
        "/dashboard/jobs?from=2000-01-01T00:00&to=2000-01-02T00:00",
    )
    .await;
    assert!(listed(&html).is_empty(), "time range");

    let bad = app
        .get("/dashboard/jobs?from=yesterday", Some(&admin.cookie))
        .await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert!(bad.text().await.unwrap().contains("is not a time"));
}

/// Values PostgreSQL would refuse (NUL in text or in the args' JSON, a year it cannot store) are
/// the operator's typo: a 400 naming the field, on the jobs page (which still shows the form),
/// on a bulk action and on the integrations page; never a database error's 500.
#[tokio::test]
async fn odd_filter_values_are_a_400_naming_the_field() {
    let app = App::start().await;
    let admin = app.login_as("admin", Role::Admin).await;
    let job = discarded_job(&app.db, json!({"a": "b"})).await;
    for (query, field) in [
        ("kind=a%00b", "`kind`"),
        ("queue=%00", "`queue`"),
        ("error=x%00", "`error`"),
        ("args=%7B%22a%22%3A%22%5Cu0000%22%7D", "`args`"),
        ("args=a%00", "`args`"),
        ("from=-5000-01-01T00:00", "`from`"),
        ("to=10000-01-01T00:00:00Z", "`to`"),
        ("state=discarded&from=0000-12-31T23:59", "`from`"),
    ] {
        let path = format!("/dashboard/jobs?{query}");
        let response = app.get(&path, Some(&admin.cookie)).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{path}");
        let html = unescape(&response.text().await.unwrap());
        assert!(html.contains(field), "{path}: {html}");
        assert!(
            html.contains("id=\"filters\""),
            "the form to correct it: {path}"
        );

        let mut fields = vec![
            ("csrf", admin.csrf.as_str()),
            ("action", "retry"),
            ("scope", "filter"),
            ("confirm", "yes"),
        ];
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        fields.extend(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let refused = app
            .post_form("/dashboard/jobs/bulk", Some(&admin.cookie), &fields)
            .await;
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST, "bulk {query}");
    }
    assert_eq!(app.job_state(job).await, "discarded");

    for query in [
        "email=%00",
        "stripe_status=%00",
        "email=a%00b&stripe_status=failed",
    ] {
        let path = format!("/dashboard/integrations?{query}");
        let response = app.get(&path, Some(&admin.cookie)).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{path}");
        let name = query.split('=').next().unwrap();
        let html = response.text().await.unwrap();
        assert!(html.contains(&format!("`{name}`")), "{path}: {html}");
    }
}

#[tokio::test]
async fn pages_are_keyset_and_completed_listings_stop_at_the_scan_window() {
    let app = App::start().await;
    let admin = app.login_as("admin", Role::Admin).await;
    // One old completed job with a distinctive kind, then 100,000 newer completed jobs.
    let old = insert_job(
        &app.db.pool,
        JobFactory {
            kind: "rare".into(),
            state: "completed".into(),
            finished_at: Some(chrono::Utc::now()),
            ..JobFactory::default()
        },
    )
    .await;
    sqlx::query(
        "insert into jobs (kind, state, finished_at, attempt)
         select 'noop', 'completed', now(), 1 from generate_series(1, 100000)",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();

    let first = page(&app, &admin, "/dashboard/jobs?state=completed").await;
    let ids = listed(&first);
    assert_eq!(ids.len(), 50);
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first");
    let older = first
        .split("id=\"older\"")
        .next()
        .and_then(|s| s.rsplit("href=\"").next())
        .and_then(|s| s.split('"').next())
        .map(unescape)
        .expect("an older link");
    let second = page(&app, &admin, &older).await;
    let next_ids = listed(&second);
    assert_eq!(next_ids.len(), 50);
    assert!(
        next_ids[0] < ids[49],
        "the next page continues below the first"
    );

    let rare = page(&app, &admin, "/dashboard/jobs?state=completed&kind=rare").await;
    assert!(listed(&rare).is_empty(), "outside the first window");
    assert!(
        rare.contains("Searched job ids down to"),
        "the page says why"
    );
    let link = rare
        .split("id=\"older\"")
        .next()
        .and_then(|s| s.rsplit("href=\"").next())
        .and_then(|s| s.split('"').next())
        .map(unescape)
        .expect("a link to search further");
    let further = page(&app, &admin, &link).await;
    assert_eq!(listed(&further), vec![old]);
}

/// A cursor near i64::MIN (typed, or a link edited by hand) is an empty last page: no panic,
/// and no "older" link wrapping round to the newest jobs.
#[tokio::test]
async fn a_cursor_at_the_bottom_of_the_ids_is_an_empty_last_page() {
    let app = App::start().await;
    let admin = app.login_as("admin", Role::Admin).await;
    let job = discarded_job(&app.db, json!({})).await;
    for query in [
        "before=-9223372036854775808",
        "before=-9223372036854700000",
        "before=1",
        "before=0&state=discarded",
        "before=-9223372036854775808&kind=noop",
    ] {
        let html = page(&app, &admin, &format!("/dashboard/jobs?{query}")).await;
        assert!(listed(&html).is_empty(), "{query}");
        assert!(html.contains("No job matches"), "{query}");
        assert!(!html.contains("id=\"older\""), "{query}: {html}");
    }
    let html = page(&app, &admin, "/dashboard/jobs?before=9223372036854775807").await;
    assert_eq!(
        listed(&html),
        vec![job],
        "the top of the ids lists everything"
    );
}

#[tokio::test]
async fn bulk_retry_of_everything_matching_asks_first_then_acts() {
    let app = App::start().await;
    let admin = app.login_as("admin", Role::Admin).await;
    let mut failed = Vec::new();
    for n in 0..3 {
        failed.push(discarded_job(&app.db, json!({"batch": "x", "n": n})).await);
    }
    let bystander = discarded_job(&app.db, json!({"batch": "y"})).await;
    let fields = [
        ("csrf", admin.csrf.as_str()),
        ("action", "retry"),
        ("scope", "filter"),
        ("state", "discarded"),
        ("args", r#"{"batch": "x"}"#),
    ];
    let confirm = app
        .post_form("/dashboard/jobs/bulk", Some(&admin.cookie), &fields)
        .await;
    assert_eq!(confirm.status(), StatusCode::OK);
    let html = confirm.text().await.unwrap();
    assert!(html.contains("3 jobs"), "{html}");
    assert!(html.contains("id=\"confirm\""));
    for id in &failed {
        assert_eq!(
            app.job_state(*id).await,
            "discarded",
            "nothing before confirming"
        );
    }

    let mut confirmed = fields.to_vec();
    confirmed.push(("confirm", "yes"));
    let done = app
        .post_form("/dashboard/jobs/bulk", Some(&admin.cookie), &confirmed)
        .await;
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    let back = location(&done);
    assert!(
        back.starts_with("/dashboard/jobs?state=discarded"),
        "{back}"
    );
    let html = page(&app, &admin, &back).await;
    assert!(html.contains("3 jobs set to run again"), "{html}");
    for id in &failed {
        assert_eq!(app.job_state(*id).await, "available");
    }
    assert_eq!(app.job_state(bystander).await, "discarded");

    // The selection: cancel two of them, after confirming.
    let ids = [failed[0].to_string(), failed[1].to_string()];
    let selection = [
        ("csrf", admin.csrf.as_str()),
        ("action", "cancel"),
        ("scope", "selected"),
        ("id", ids[0].as_str()),
        ("id", ids[1].as_str()),
        ("confirm", "yes"),
    ];
    let done = app
        .post_form("/dashboard/jobs/bulk", Some(&admin.cookie), &selection)
        .await;
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    assert_eq!(app.job_state(failed[0]).await, "cancelled");
    assert_eq!(app.job_state(failed[1]).await, "cancelled");
    assert_eq!(app.job_state(failed[2]).await, "available");
}

/// Any site can link to a dashboard page with a `notice` of its choosing: the page shows only
/// notices this session's own actions left (signed), never an outsider's text, nor another
/// session's notice.
#[tokio::test]
async fn only_the_sessions_own_notices_are_shown() {
    let app = App::start().await;
    let admin = app.login_as("admin", Role::Admin).await;
    let other = app.login_as("other", Role::Admin).await;
    for path in [
        "/dashboard/jobs?notice=Your+session+expired%3A+log+in+again+at+evil.example",
        "/dashboard?notice=Your+session+expired%3A+log+in+again+at+evil.example",
        "/dashboard/queues?notice=AAAAAAAAAAAAAAAAAAAAAA.Your+session+expired%3A+log+in+again+at+evil.example",
        "/dashboard/schedules?notice=.Your+session+expired%3A+log+in+again+at+evil.example",
    ] {
        let html = unescape(&page(&app, &admin, path).await);
        assert!(!html.contains("evil.example"), "{path}: {html}");
        assert!(!html.contains("class=\"notice\""), "{path}");
    }

    let paused = app
        .post_form(
            "/dashboard/queues/email/pause",
            Some(&admin.cookie),
            &[("csrf", &admin.csrf)],
        )
        .await;
    assert_eq!(paused.status(), StatusCode::SEE_OTHER);
    let back = location(&paused);
    let html = page(&app, &admin, &back).await;
    assert!(html.contains("class=\"notice\""), "{html}");
    assert!(
        html.contains("Queue email paused"),
        "the real notice: {html}"
    );
    let html = page(&app, &other, &back).await;
    assert!(
        !html.contains("Queue email paused"),
        "another session's notice: {html}"
    );
    let edited = back.replace("paused", "deleted");
    let html = page(&app, &admin, &edited).await;
    assert!(
        !html.contains("class=\"notice\""),
        "an edited notice: {html}"
    );
}

/// "… all matching" on the unfiltered listing would act on the whole table: the button is not
/// offered there, and a post without a condition (none, blank, or `args={}`) is refused, with or
/// without the confirmation, changing nothing.
#[tokio::test]
async fn an_action_on_everything_matching_needs_a_filter() {
    let app = App::start().await;
    let admin = app.login_as("admin", Role::Admin).await;
    let failed = discarded_job(&app.db, json!({"batch": "x"})).await;

    let html = page(&app, &admin, "/dashboard/jobs").await;
    assert!(!html.contains("id=\"retry-all\""), "{html}");
    assert!(html.contains("filter first"), "{html}");
    let html = page(&app, &admin, "/dashboard/jobs?state=discarded").await;
    assert!(html.contains("id=\"retry-all\""), "{html}");

    for filter in [
        &[][..],
        &[("args", "{}"), ("error", " ")],
        &[("kind", ""), ("from", "")],
    ] {
        for confirm in [None, Some(("confirm", "yes"))] {
            let mut fields = vec![
                ("csrf", admin.csrf.as_str()),
                ("action", "retry"),
                ("scope", "filter"),
            ];
            fields.extend_from_slice(filter);
            fields.extend(confirm);
            let refused = app
                .post_form("/dashboard/jobs/bulk", Some(&admin.cookie), &fields)
                .await;
            assert_eq!(refused.status(), StatusCode::BAD_REQUEST, "{fields:?}");
            let text = refused.text().await.unwrap();
            assert!(text.contains("needs a filter"), "{text}");
        }
    }
    assert_eq!(app.job_state(failed).await, "discarded");
    let records: i64 = sqlx::query_scalar("select count(*) from bulk_actions")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(records, 0, "no bulk action started");
}

/// A bulk action under way has a Stop button on the jobs page; stopping it leaves the jobs it
/// changed, changes no more, and the page shows it stopped, by whom, without the button.
#[tokio::test]
async fn a_bulk_action_under_way_can_be_stopped_from_the_jobs_page() {
    let app = App::start_with(vec![(
        "BAW__HTTP__BULK_ANSWER_WITHIN".into(),
        "20ms".into(),
    )])
    .await;
    let admin = app.login_as("admin", Role::Admin).await;
    let viewer = app.login_as("viewer", Role::ReadOnly).await;
    sqlx::query(
        "insert into jobs (kind, tags) select 'noop', '{runaway}' from generate_series(1, 50000)",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();
    let started = app
        .post_form(
            "/dashboard/jobs/bulk",
            Some(&admin.cookie),
            &[
                ("csrf", admin.csrf.as_str()),
                ("action", "cancel"),
                ("scope", "filter"),
                ("tag", "runaway"),
                ("confirm", "yes"),
            ],
        )
        .await;
    assert_eq!(started.status(), StatusCode::SEE_OTHER);
    let id: i64 = sqlx::query_scalar("select id from bulk_actions")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    let button = format!("id=\"stop-bulk-{id}\"");
    let html = page(&app, &admin, "/dashboard/jobs").await;
    assert!(html.contains(&button), "{html}");
    let html = page(&app, &viewer, "/dashboard/jobs").await;
    assert!(!html.contains(&button), "a viewer cannot act: {html}");

    let stop = format!("/dashboard/bulk-actions/{id}/stop");
    let refused = app
        .post_form(&stop, Some(&admin.cookie), &[("csrf", "forged")])
        .await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let stopped = app
        .post_form(&stop, Some(&admin.cookie), &[("csrf", admin.csrf.as_str())])
        .await;
    assert_eq!(stopped.status(), StatusCode::SEE_OTHER);
    let cancelled = || async {
        sqlx::query_scalar::<_, i64>("select count(*) from jobs where state = 'cancelled'")
            .fetch_one(&app.db.pool)
            .await
            .unwrap()
    };
    let at_stop = cancelled().await;
    assert!(at_stop < 50_000, "stopped part-way: {at_stop}");
    let html = unescape(&page(&app, &admin, &location(&stopped)).await);
    assert!(
        html.contains(&format!("Bulk action {id} stopped after")),
        "{html}"
    );
    assert!(html.contains("state-stopped"), "{html}");
    assert!(!html.contains(&button), "{html}");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(cancelled().await, at_stop, "no batch after the stop");
    let (changed, by): (i64, String) =
        sqlx::query_as("select changed, stopped_by from bulk_actions")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(changed, at_stop);
    assert_eq!(by, "operator admin");
}

/// A retry of more matching jobs than `http.bulk_answer_within` allows: the operator is told how
/// many so far and that it goes on, and it does.
#[tokio::test]
async fn a_long_bulk_retry_answers_with_its_progress_and_goes_on() {
    let app = App::start_with(vec![(
        "BAW__HTTP__BULK_ANSWER_WITHIN".into(),
        "20ms".into(),
    )])
    .await;
    let admin = app.login_as("admin", Role::Admin).await;
    sqlx::query(
        "insert into jobs (kind, state, attempt, max_attempts, tags, finished_at) \
         select 'noop', 'discarded', 3, 3, '{incident}', now() from generate_series(1, 30000)",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();
    let done = app
        .post_form(
            "/dashboard/jobs/bulk",
            Some(&admin.cookie),
            &[
                ("csrf", admin.csrf.as_str()),
                ("action", "retry"),
                ("scope", "filter"),
                ("tag", "incident"),
                ("confirm", "yes"),
            ],
        )
        .await;
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    let html = unescape(&page(&app, &admin, &location(&done)).await);
    assert!(
        html.contains("set to run again so far; the action goes on in the background"),
        "{html}"
    );
    assert!(html.contains("Recent bulk actions"), "{html}");
    assert!(html.contains("operator admin"), "who asked: {html}");
    assert!(html.contains("tag: incident"), "the filter: {html}");
    let pool = app.db.pool.clone();
    crate::support::eventually(120, "every matching job set to run again", || {
        let pool = pool.clone();
        async move {
            let available: i64 =
                sqlx::query_scalar("select count(*) from jobs where state = 'available'")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            available == 30_000
        }
    })
    .await;
    crate::support::eventually(30, "the jobs page shows it finished", || async {
        let html = page(&app, &admin, "/dashboard/jobs").await;
        html.contains("state-finished") && html.contains("30,000")
    })
    .await;
}

#[tokio::test]
async fn a_job_page_shows_args_attempts_node_and_escapes_everything() {
    let app = App::start().await;
    let admin = app.login_as("admin", Role::Admin).await;
    let id = discarded_job(&app.db, json!({"note": "<script>alert(1)</script>"})).await;
    let html = page(&app, &admin, &format!("/dashboard/jobs/{id}")).await;
    assert!(!html.contains("<script>alert(1)"), "escaped");
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;/script&gt;") || html.contains("&#60;script&#62;")
    );
    assert!(html.contains("upstream timed out"));
    assert!(html.contains("card_declined: insufficient funds"));
    assert!(html.contains("node-a-1234"), "the node that ran it");
    assert!(html.contains("3 of 3"));
    assert!(html.contains("id=\"retry\""));
    let list = page(&app, &admin, "/dashboard/jobs").await;
    assert!(!list.contains("<script>alert(1)"));

    let missing = app.get("/dashboard/jobs/999999", Some(&admin.cookie)).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn queues_pause_and_resume_and_schedules_run_now() {
    let app = App::start().await;
    let admin = app.login_as("admin", Role::Admin).await;
    let response = app
        .post_form(
            "/dashboard/queues/email/pause",
            Some(&admin.cookie),
            &[("csrf", &admin.csrf)],
        )
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let html = page(&app, &admin, &location(&response)).await;
    assert!(html.contains("Queue email paused"));
    let paused = html.split("data-queue=\"email\"").nth(1).unwrap();
    assert!(paused.split("</tr>").next().unwrap().contains("paused"));
    app.post_form(
        "/dashboard/queues/email/resume",
        Some(&admin.cookie),
        &[("csrf", &admin.csrf)],
    )
    .await;
    let paused: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("select paused_at from queues where name = 'email'")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(paused, None);

    let html = page(&app, &admin, "/dashboard/schedules").await;
    assert!(html.contains("every 30 minutes"), "facebook_sync in words");
    assert!(
        html.contains("every day at 04:00"),
        "stripe_reconcile in words"
    );
    let response = app
        .post_form(
            "/dashboard/schedules/prune/run",
            Some(&admin.cookie),
            &[("csrf", &admin.csrf)],
        )
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let kind: String = sqlx::query_scalar("select kind from jobs order by id desc limit 1")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(kind, "prune");
}

/// The action of the form in `html`'s row marked `marker` whose button reads `button`.
fn form_action(html: &str, marker: &str, button: &str) -> String {
    let row = html
        .split(marker)
        .nth(1)
        .and_then(|s| s.split("</tr>").next())
        .unwrap_or_else(|| panic!("a row {marker}: {html}"));
    row.split("<form")
        .filter(|f| f.contains(&format!(">{button}</button>")))
        .find_map(|f| f.split("action=\"").nth(1)?.split('"').next())
        .map(unescape)
        .unwrap_or_else(|| panic!("a {button} button in {row}"))
}

/// Queue names (from the config, or any a job was enqueued on) may hold a `/`: the buttons'
/// paths encode it, so Pause and Resume reach their route. (Schedule names cannot: the config
/// refuses them.)
#[tokio::test]
async fn pause_and_resume_work_for_a_queue_name_with_a_slash() {
    let app = App::start_with(vec![(
        "BAW__QUEUES__REPORTS/DAILY__CONCURRENCY".into(),
        "1".into(),
    )])
    .await;
    let admin = app.login_as("admin", Role::Admin).await;
    let paused_at = || async {
        sqlx::query_scalar::<_, Option<chrono::DateTime<chrono::Utc>>>(
            "select paused_at from queues where name = 'reports/daily'",
        )
        .fetch_optional(&app.db.pool)
        .await
        .unwrap()
        .flatten()
    };

    let html = page(&app, &admin, "/dashboard/queues").await;
    let pause = form_action(&html, "data-queue=\"reports/daily\"", "Pause");
    let response = app
        .post_form(&pause, Some(&admin.cookie), &[("csrf", &admin.csrf)])
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER, "POST {pause}");
    assert!(paused_at().await.is_some(), "paused");
    let html = page(&app, &admin, &location(&response)).await;
    assert!(html.contains("Queue reports/daily paused"), "{html}");
    let resume = form_action(&html, "data-queue=\"reports/daily\"", "Resume");
    let response = app
        .post_form(&resume, Some(&admin.cookie), &[("csrf", &admin.csrf)])
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER, "POST {resume}");
    assert_eq!(paused_at().await, None, "resumed");
    let html = page(&app, &admin, "/dashboard").await;
    assert!(
        html.contains("/dashboard/jobs?queue=reports%2Fdaily"),
        "the overview's links encode it too: {html}"
    );
}

#[tokio::test]
async fn the_overview_and_integrations_show_what_needs_an_operator() {
    let app = App::start().await;
    let admin = app.login_as("admin", Role::Admin).await;
    discarded_job(&app.db, json!({})).await;
    for statement in [
        "insert into nodes (name, role, version) values ('node-a-1234', 'all', '0.1.0')",
        "insert into clients (id, name, email, facebook_ad_account_id)
              values ('c1', 'Acme Dental', 'a@example.com', '123')",
        "insert into facebook_sync_runs (client_id, ad_account_id, started_at, outcome, error)
              values ('c1', '123', now(), 'token_invalid', 'Error validating access token')",
        "insert into stripe_events (id, type, created, payload, status, last_error)
              values ('evt_9', 'invoice.payment_failed', 1, '{}', 'failed', 'no such client')",
        "insert into email_log (idempotency_key, template, recipient, subject, status)
              values ('k1', 'welcome', 'dora@example.com', 'Welcome aboard', 'sent'),
                     ('k2', 'invoice', 'eve@example.com', 'Your invoice', 'failed')",
        "insert into email_log (idempotency_key, template, recipient, subject, status,
                                last_error, created_at)
              values ('k3', 'invoice', 'fay@example.com', 'Your invoice', 'unknown',
                      'outcome unknown past Resend''s 24 h: check Resend', now() + '1 s')",
        "insert into documents (id, client_id, title, file_name, mime_type, status,
                                failure_reason)
              values (gen_random_uuid(), 'c1', 'Signed contract', 'contract.pdf',
                      'application/pdf', 'FAILED', 'Drive refused the upload'),
                     (gen_random_uuid(), 'c1', 'Old invoice', 'invoice.pdf',
                      'application/pdf', 'UPLOADED', null)",
    ] {
        sqlx::query(statement).execute(&app.db.pool).await.unwrap();
    }

    let html = page(&app, &admin, "/dashboard").await;
    assert!(html.contains("node-a-1234"), "node alive");
    assert!(html.contains("<svg class=\"chart\""));
    let discarded_total = html.split("<tfoot>").nth(1).unwrap();
    assert!(discarded_total.contains(">1<"), "{discarded_total}");

    let html = page(&app, &admin, "/dashboard/integrations?email=dora").await;
    assert!(html.contains("INVALID"), "token health");
    assert!(html.contains("Acme Dental"));
    assert!(html.contains("evt_9"));
    assert!(html.contains("dora@example.com"));
    assert!(
        html.contains("outcome unknown past Resend&#x27;s 24 h: check Resend")
            || html.contains("outcome unknown past Resend&#39;s 24 h: check Resend"),
        "an email left unknown is Resend's last failure: {html}"
    );
    assert!(
        !html.contains("eve@example.com"),
        "the search narrows the email log"
    );
    let documents = html
        .split("id=\"documents\"")
        .nth(1)
        .expect("documents panel");
    assert!(documents.contains("Signed contract"));
    assert!(documents.contains("Drive refused the upload"));
    assert!(
        !documents.contains("Old invoice"),
        "uploaded documents are not listed"
    );

    let response = app
        .post_form(
            "/dashboard/stripe/evt_9/replay",
            Some(&admin.cookie),
            &[("csrf", &admin.csrf)],
        )
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let kind: String = sqlx::query_scalar("select kind from jobs order by id desc limit 1")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(kind, "stripe_event");
}

#[tokio::test]
async fn a_state_too_big_to_count_quickly_shows_the_planners_estimate() {
    let app = App::start().await;
    let admin = app.login_as("admin", Role::Admin).await;
    sqlx::query(
        "insert into jobs (kind, queue, state, attempt, finished_at)
         select 'noop', 'email', 'discarded', 1, now() from generate_series(1, 6000)",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();
    discarded_job(&app.db, json!({})).await;
    sqlx::query("analyze jobs")
        .execute(&app.db.pool)
        .await
        .unwrap();
    let html = page(&app, &admin, "/dashboard").await;
    let email = html
        .split("/dashboard/jobs?queue=email\">email</a>")
        .nth(1)
        .and_then(|s| s.split("</tr>").next())
        .expect("a row for the email queue");
    assert!(email.contains("≈ 6,000"), "{email}");
    assert!(html.contains("planner&#39;s estimate") || html.contains("planner's estimate"));
}
