//! Who may see and do what: no session, no page; a read-only operator looks but cannot act; an
//! action without the session's CSRF token is refused; logging out ends the session.

use baseaim_worker::auth::Role;
use reqwest::StatusCode;
use serde_json::json;

use crate::{App, csrf_in, discarded_job, location};

/// Every page and every action, with a job, a queue, a schedule and a Stripe event that exist.
fn routes(job: i64) -> (Vec<String>, Vec<String>) {
    let gets = vec![
        "/dashboard".to_string(),
        "/dashboard/jobs".into(),
        "/dashboard/jobs?state=discarded&args=A-1".into(),
        format!("/dashboard/jobs/{job}"),
        "/dashboard/queues".into(),
        "/dashboard/schedules".into(),
        "/dashboard/integrations".into(),
    ];
    let posts = vec![
        "/dashboard/logout".to_string(),
        "/dashboard/jobs/bulk".into(),
        format!("/dashboard/jobs/{job}/retry"),
        format!("/dashboard/jobs/{job}/cancel"),
        format!("/dashboard/jobs/{job}/delete"),
        "/dashboard/queues/default/pause".into(),
        "/dashboard/queues/default/resume".into(),
        "/dashboard/schedules/prune/run".into(),
        "/dashboard/stripe/evt_1/replay".into(),
    ];
    (gets, posts)
}

async fn stripe_event(app: &App) {
    sqlx::query(
        "insert into stripe_events (id, type, created, payload, status)
         values ('evt_1', 'invoice.paid', 1, '{}', 'processed')",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn every_dashboard_route_without_a_session_is_401() {
    let app = App::start().await;
    let job = discarded_job(&app.db, json!({"order": "A-1"})).await;
    stripe_event(&app).await;
    let (gets, posts) = routes(job);
    for path in &gets {
        for cookie in [None, Some("baw_session=not-a-real-session")] {
            let response = app.get(path, cookie).await;
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "GET {path}");
            let body = response.text().await.unwrap();
            assert!(body.contains("/dashboard/login"), "GET {path}: {body}");
            assert!(!body.contains("A-1"), "GET {path} revealed data: {body}");
        }
    }
    for path in &posts {
        let response = app
            .post_form(path, None, &[("action", "retry"), ("scope", "filter")])
            .await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "POST {path}");
    }
    assert_eq!(app.job_state(job).await, "discarded");
    // The login page and the stylesheet/script it needs are public.
    assert_eq!(
        app.get("/dashboard/login", None).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.get("/dashboard/assets/htmx.min.js", None)
            .await
            .status(),
        StatusCode::OK
    );
}

/// Login CSRF: a login posted from elsewhere (without the form's token and cookie, or with a
/// token of another form) is refused even with the right password, and opens no session.
#[tokio::test]
async fn a_login_posted_without_the_forms_token_is_refused() {
    let app = App::start().await;
    baseaim_worker::auth::operators::add(&app.db.pool, "alice", crate::PASSWORD, Role::Admin)
        .await
        .unwrap();
    let form = app.get("/dashboard/login", None).await;
    let cookie = form
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap().to_owned())
        .unwrap();
    let csrf = csrf_in(&form.text().await.unwrap()).unwrap();
    let other = csrf_in(
        &app.get("/dashboard/login", None)
            .await
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    let credentials = [("username", "alice"), ("password", crate::PASSWORD)];
    let attempts: [(Option<&str>, Option<&str>); 4] = [
        (None, None),
        (Some(&cookie), None),
        (None, Some(&csrf)),
        (Some(&cookie), Some(&other)),
    ];
    for (cookie, token) in attempts {
        let mut fields = credentials.to_vec();
        if let Some(token) = token {
            fields.push(("csrf", token));
        }
        let response = app.post_form("/dashboard/login", cookie, &fields).await;
        assert_eq!(
            response.status(),
            StatusCode::FORBIDDEN,
            "{cookie:?} {token:?}"
        );
        let set = response
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.starts_with("baw_session="));
        assert!(!set, "a session was opened");
    }
    let count: i64 = sqlx::query_scalar("select count(*) from operator_sessions")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(count, 0);
    // The same form, posted as the browser does, logs in.
    let response = app.post_login("alice", crate::PASSWORD).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
}

/// Five wrong passwords for a user name lock it for a while, cluster-wide: the right password is
/// refused with 429 and Retry-After (without checking it), other operators are unaffected, an
/// unknown name is locked the same way (no hint which names exist), and once the lock-out ends
/// the right password works and clears the count.
#[tokio::test]
async fn repeated_wrong_passwords_lock_the_user_name_for_a_while() {
    use baseaim_worker::auth::session::MAX_FAILURES;
    let app = App::start().await;
    for name in ["alice", "bob"] {
        baseaim_worker::auth::operators::add(&app.db.pool, name, crate::PASSWORD, Role::Admin)
            .await
            .unwrap();
    }
    for name in ["alice", "mallory"] {
        for _ in 0..MAX_FAILURES {
            let response = app.post_login(name, "wrong password!!").await;
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{name}");
        }
    }
    let locked = app.post_login("alice", crate::PASSWORD).await;
    assert_eq!(locked.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = locked.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=15 * 60).contains(&retry_after), "{retry_after}");
    assert!(
        !locked
            .headers()
            .get_all("set-cookie")
            .iter()
            .any(|v| v.to_str().unwrap().starts_with("baw_session=")),
        "a locked name got a session"
    );
    let page = locked.text().await.unwrap();
    assert!(
        page.contains("Too many failed logins for this user name: try again in 15 minutes."),
        "{page}"
    );
    let unknown = app.post_login("mallory", "anything at all!").await;
    assert_eq!(unknown.status(), StatusCode::TOO_MANY_REQUESTS);
    // Another operator logs in as usual.
    let bob = app.post_login("bob", crate::PASSWORD).await;
    assert_eq!(bob.status(), StatusCode::SEE_OTHER);

    // The lock-out runs out: the right password works and the count starts again.
    sqlx::query("update login_failures set locked_until = now() - interval '1 second'")
        .execute(&app.db.pool)
        .await
        .unwrap();
    let alice = app.post_login("alice", crate::PASSWORD).await;
    assert_eq!(alice.status(), StatusCode::SEE_OTHER);
    let left: i64 =
        sqlx::query_scalar("select count(*) from login_failures where username = 'alice'")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(left, 0, "a successful login clears the failures");
    let wrong = app.post_login("alice", "wrong password!!").await;
    assert_eq!(
        wrong.status(),
        StatusCode::UNAUTHORIZED,
        "one failure is not a lock"
    );
}

/// One password tried against many user names locks the client's address. Served directly,
/// the address is the TCP peer's; behind a proxy that passes it in `http.client_address_header`,
/// it is the header's last entry (the proxy's), so a client varying the entries before it does
/// not escape, and other clients of the same proxy still log in.
#[tokio::test]
async fn many_names_guessed_from_one_address_lock_that_address() {
    use baseaim_worker::auth::session::MAX_ADDRESS_FAILURES;
    let direct = App::start().await;
    baseaim_worker::auth::operators::add(&direct.db.pool, "alice", crate::PASSWORD, Role::Admin)
        .await
        .unwrap();
    for n in 0..MAX_ADDRESS_FAILURES {
        let guess = direct.post_login(&format!("user{n}"), "Summer2026!").await;
        assert_eq!(guess.status(), StatusCode::UNAUTHORIZED);
    }
    let locked = direct.post_login("alice", crate::PASSWORD).await;
    assert_eq!(locked.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(locked.headers().contains_key("retry-after"));
    let page = locked.text().await.unwrap();
    assert!(
        page.contains("Too many failed logins from this address: try again in 15 minutes."),
        "{page}"
    );

    let proxied = App::start_with(vec![(
        "BAW__HTTP__CLIENT_ADDRESS_HEADER".into(),
        "x-forwarded-for".into(),
    )])
    .await;
    baseaim_worker::auth::operators::add(&proxied.db.pool, "alice", crate::PASSWORD, Role::Admin)
        .await
        .unwrap();
    for n in 0..MAX_ADDRESS_FAILURES {
        let spoofed = format!("10.0.0.{n}, 203.0.113.5");
        let guess = proxied
            .post_login_with(
                &format!("user{n}"),
                "Summer2026!",
                &[("x-forwarded-for", &spoofed)],
            )
            .await;
        assert_eq!(guess.status(), StatusCode::UNAUTHORIZED);
    }
    let locked = proxied
        .post_login_with(
            "alice",
            crate::PASSWORD,
            &[("x-forwarded-for", "203.0.113.5")],
        )
        .await;
    assert_eq!(locked.status(), StatusCode::TOO_MANY_REQUESTS);
    let neighbour = proxied
        .post_login_with(
            "alice",
            crate::PASSWORD,
            &[("x-forwarded-for", "203.0.113.6")],
        )
        .await;
    assert_eq!(
        neighbour.status(),
        StatusCode::SEE_OTHER,
        "another client behind the same proxy logs in"
    );
}

#[tokio::test]
async fn a_wrong_password_gets_no_session() {
    let app = App::start().await;
    app.login_as("alice", Role::Admin).await;
    let response = app.post_login("alice", "wrong password!!").await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // A new form token for the retry, but no session.
    let session_set = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.starts_with("baw_session="));
    assert!(!session_set, "a wrong password opened a session");
    let unknown = app.post_login("mallory", "wrong password!!").await;
    assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
    let (a, b) = (
        response.text().await.unwrap(),
        unknown.text().await.unwrap(),
    );
    assert!(a.contains("Wrong user name or password"), "{a}");
    // Same answer for an unknown user as for a wrong password (the echoed name and the fresh
    // form token aside).
    let (csrf_a, csrf_b) = (csrf_in(&a).unwrap(), csrf_in(&b).unwrap());
    assert_eq!(
        a.replace("alice", "X").replace(&csrf_a, "T"),
        b.replace("mallory", "X").replace(&csrf_b, "T")
    );
}

#[tokio::test]
async fn a_read_only_operator_sees_everything_and_changes_nothing() {
    let app = App::start().await;
    let job = discarded_job(&app.db, json!({"order": "A-1"})).await;
    stripe_event(&app).await;
    let viewer = app.login_as("viewer", Role::ReadOnly).await;
    let (gets, posts) = routes(job);
    for path in &gets {
        let response = app.get(path, Some(&viewer.cookie)).await;
        assert_eq!(response.status(), StatusCode::OK, "GET {path}");
        let html = response.text().await.unwrap();
        assert!(
            !html.contains("Retry selected"),
            "no action buttons: {path}"
        );
    }
    for path in posts.iter().filter(|p| !p.ends_with("logout")) {
        let response = app
            .post_form(
                path,
                Some(&viewer.cookie),
                &[
                    ("csrf", &viewer.csrf),
                    ("action", "retry"),
                    ("scope", "filter"),
                    ("confirm", "yes"),
                ],
            )
            .await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "POST {path}");
        let body = response.text().await.unwrap();
        assert!(body.contains("read-only"), "POST {path}: {body}");
    }
    assert_eq!(app.job_state(job).await, "discarded");
    let paused: i64 = sqlx::query_scalar("select count(*) from queues where paused_at is not null")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(paused, 0, "no queue paused");
    let jobs: i64 = sqlx::query_scalar("select count(*) from jobs")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(jobs, 1, "no schedule run, no replay enqueued");
}

#[tokio::test]
async fn an_action_without_the_csrf_token_is_refused() {
    let app = App::start().await;
    let job = discarded_job(&app.db, json!({"order": "A-1"})).await;
    let admin = app.login_as("admin", Role::Admin).await;
    let path = format!("/dashboard/jobs/{job}/retry");
    for fields in [vec![], vec![("csrf", "forged-token")]] {
        let response = app.post_form(&path, Some(&admin.cookie), &fields).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert!(response.text().await.unwrap().contains("CSRF"));
    }
    let bulk = app
        .post_form(
            "/dashboard/jobs/bulk",
            Some(&admin.cookie),
            &[("action", "retry"), ("scope", "filter"), ("confirm", "yes")],
        )
        .await;
    assert_eq!(bulk.status(), StatusCode::FORBIDDEN);
    assert_eq!(app.job_state(job).await, "discarded");

    // With the token, the same action works.
    let response = app
        .post_form(&path, Some(&admin.cookie), &[("csrf", &admin.csrf)])
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(app.job_state(job).await, "available");
}

#[tokio::test]
async fn logout_ends_the_session() {
    let app = App::start().await;
    let admin = app.login_as("admin", Role::Admin).await;
    let refused = app
        .post_form("/dashboard/logout", Some(&admin.cookie), &[])
        .await;
    assert_eq!(
        refused.status(),
        StatusCode::FORBIDDEN,
        "logout needs the token"
    );
    assert_eq!(
        app.get("/dashboard", Some(&admin.cookie)).await.status(),
        StatusCode::OK
    );

    let response = app
        .post_form(
            "/dashboard/logout",
            Some(&admin.cookie),
            &[("csrf", &admin.csrf)],
        )
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&response), "/dashboard/login");
    let cleared = response
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    // The old cookie no longer opens anything.
    assert_eq!(
        app.get("/dashboard", Some(&admin.cookie)).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn the_session_cookie_is_secure_when_configured_for_tls() {
    for (secure, env) in [
        (false, vec![]),
        (
            true,
            vec![("BAW__HTTP__SECURE_COOKIES".to_string(), "true".to_string())],
        ),
    ] {
        let app = App::start_with(env).await;
        baseaim_worker::auth::operators::add(&app.db.pool, "alice", crate::PASSWORD, Role::Admin)
            .await
            .unwrap();
        let response = app.post_login("alice", crate::PASSWORD).await;
        let cookie = response
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(cookie.starts_with("baw_session="), "{cookie}");
        assert_eq!(cookie.contains("; Secure"), secure, "{cookie}");
    }
}
