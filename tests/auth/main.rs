//! Who may do what: operator accounts and sessions, CSRF and roles, scoped bearer tokens, and
//! their command line, against the real PostgreSQL and the real binary.

#[path = "../support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use axum::routing::get;
use baseaim_worker::auth::{self, ApiCaller, Operator, Role};
use baseaim_worker::config::{Config, Secrets};
use baseaim_worker::db::DbHealth;
use baseaim_worker::http::HttpState;
use baseaim_worker::http::error::ApiError;
use baseaim_worker::jobs::AppState;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use support::TestDb;

const PASSWORD: &str = "correct horse battery";

/// The application state and database health a router serves with, on `db` with `config`.
fn app_state(db: &TestDb, config: Config) -> (AppState, DbHealth) {
    let state = AppState::new(
        db.pool.clone(),
        Arc::new(config),
        Arc::new(Secrets::default()),
    )
    .unwrap();
    let health = DbHealth::spawn(
        db.pool.clone(),
        Duration::from_secs(1),
        CancellationToken::new(),
    );
    (state, health)
}

/// A router with one bearer-protected and one session-protected route, as the real surfaces use
/// the extractors.
fn app(db: &TestDb) -> Router {
    let config = Config::load_from(None, Vec::<(String, String)>::new()).unwrap();
    let (state, health) = app_state(db, config);
    Router::new()
        .route(
            "/v1/thing",
            get(|caller: ApiCaller| async move {
                caller.require("jobs:write")?;
                Ok::<_, ApiError>(caller.name)
            }),
        )
        .route(
            "/dashboard/act",
            axum::routing::post(|operator: Operator, body: String| async move {
                let csrf = body.strip_prefix("csrf=");
                operator.authorize_action(csrf)?;
                Ok::<_, ApiError>(format!("done by {}", operator.username))
            }),
        )
        .with_state(HttpState::new(state, health))
}

async fn call(app: &Router, request: Request<Body>) -> (StatusCode, String, header::HeaderMap) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&body).into_owned(), headers)
}

fn bearer(token: &str) -> Request<Body> {
    Request::get("/v1/thing")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn bearer_tokens_authenticate_by_scope_and_stop_when_revoked() {
    let db = TestDb::new().await;
    let app = app(&db);
    let writer = auth::tokens::create(&db.pool, "dashboard-app", &["jobs:write"])
        .await
        .unwrap();
    let reader = auth::tokens::create(&db.pool, "grafana", &["admin:read"])
        .await
        .unwrap();

    let (status, body, _) = call(&app, bearer(&writer)).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "dashboard-app"));

    let (status, body, _) = call(&app, bearer(&reader)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("jobs:write"), "{body}");

    // Missing, malformed and unknown credentials are all the same bare 401.
    let missing = Request::get("/v1/thing").body(Body::empty()).unwrap();
    let basic = Request::get("/v1/thing")
        .header(header::AUTHORIZATION, "Basic cm9vdDpyb290")
        .body(Body::empty())
        .unwrap();
    let forged = format!("{}x", &writer[..writer.len() - 1]);
    for request in [missing, basic, bearer(&forged), bearer("baw_")] {
        let (status, body, headers) = call(&app, request).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body, r#"{"error":"authentication required"}"#);
        assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
    }

    // Only the hash is stored.
    let stored: Vec<Vec<u8>> = sqlx::query_scalar("select token_hash from api_tokens")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert!(
        stored
            .iter()
            .all(|h| h.len() == 32 && !writer.as_bytes().starts_with(h))
    );

    let id = auth::tokens::list(&db.pool).await.unwrap()[0].id;
    assert!(auth::tokens::revoke(&db.pool, id).await.unwrap());
    let (status, _, _) = call(&app, bearer(&writer)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_token_needs_known_scopes_and_a_name() {
    let db = TestDb::new().await;
    let error = auth::tokens::create(&db.pool, "x", &["jobs:delete"])
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("unknown scope `jobs:delete`"), "{error}");
    assert!(error.contains("emails:send"), "{error}");
    assert!(error.contains("jobs:write:<kind>"), "{error}");
    // One kind: a kind this binary runs, named; an unknown one is refused listing the kinds.
    let error = auth::tokens::create(&db.pool, "x", &["jobs:write:send_emial"])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("no job kind `send_emial`") && error.contains("send_email"),
        "{error}"
    );
    assert!(auth::tokens::create(&db.pool, "x", &[]).await.is_err());
    assert!(
        auth::tokens::create(&db.pool, " ", &["jobs:write"])
            .await
            .is_err()
    );
    let count: i64 = sqlx::query_scalar("select count(*) from api_tokens")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(count, 0);
    auth::tokens::create(&db.pool, "x", &["jobs:write:facebook_sync"])
        .await
        .unwrap();
}

fn act(cookie: Option<&str>, body: &str) -> Request<Body> {
    let mut request = Request::post("/dashboard/act");
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, format!("theme=dark; baw_session={cookie}"));
    }
    request.body(Body::from(body.to_owned())).unwrap()
}

#[tokio::test]
async fn sessions_need_the_password_and_actions_need_csrf_and_the_admin_role() {
    let db = TestDb::new().await;
    let app = app(&db);
    auth::operators::add(&db.pool, "ada", PASSWORD, Role::Admin)
        .await
        .unwrap();
    auth::operators::add(&db.pool, "rory", PASSWORD, Role::ReadOnly)
        .await
        .unwrap();

    for (user, password) in [("ada", "wrong password!!"), ("nobody", PASSWORD)] {
        let session = auth::session::login(&db.pool, user, password, None)
            .await
            .unwrap();
        assert!(session.is_none(), "{user} logged in with a wrong password");
    }

    let admin = auth::session::login(&db.pool, "ada", PASSWORD, None)
        .await
        .unwrap()
        .expect("ada logs in");
    let cookie = auth::session::set_cookie(&admin.token, true);
    let cookie = cookie.to_str().unwrap();
    for attribute in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }

    let csrf = format!("csrf={}", admin.operator.csrf_token);
    let (status, body, _) = call(&app, act(Some(&admin.token), &csrf)).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "done by ada"));

    // No CSRF token, a wrong one, another session's: refused.
    let other = auth::session::login(&db.pool, "ada", PASSWORD, None)
        .await
        .unwrap()
        .unwrap();
    for body in [
        String::new(),
        "csrf=nope".to_owned(),
        format!("csrf={}", other.operator.csrf_token),
    ] {
        let (status, answer, _) = call(&app, act(Some(&admin.token), &body)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}: {answer}");
    }

    // A read-only operator with a valid CSRF token still cannot act.
    let viewer = auth::session::login(&db.pool, "rory", PASSWORD, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(viewer.operator.role, Role::ReadOnly);
    let body = format!("csrf={}", viewer.operator.csrf_token);
    let (status, answer, _) = call(&app, act(Some(&viewer.token), &body)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(answer.contains("read-only"), "{answer}");

    // No cookie, or an unknown one: 401 pointing at the login page.
    for cookie in [None, Some("forged-session-token")] {
        let (status, body, _) = call(&app, act(cookie, &csrf)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(body.contains("/dashboard/login"), "{body}");
    }

    // Logging out and disabling end sessions.
    auth::session::logout(&db.pool, &admin.token).await.unwrap();
    let (status, _, _) = call(&app, act(Some(&admin.token), &csrf)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(auth::operators::disable(&db.pool, "ada").await.unwrap());
    let csrf = format!("csrf={}", other.operator.csrf_token);
    let (status, _, _) = call(&app, act(Some(&other.token), &csrf)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        auth::session::login(&db.pool, "ada", PASSWORD, None)
            .await
            .unwrap()
            .is_none()
    );
}

async fn cli(db: &TestDb, args: &[&str], stdin: &str) -> (bool, String, String) {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_baseaim-worker"))
        .args(args)
        .env("DATABASE_URL", &db.url)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    let out = child.wait_with_output().await.unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Typed at a terminal, the password is not echoed: `operators add` runs in a pseudo-terminal
/// (`script`), the password is typed once the prompt shows, and the terminal's transcript holds
/// the prompt and the result but not the password.
#[tokio::test]
async fn operators_add_at_a_terminal_does_not_echo_the_password() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = TestDb::new().await;
    let command = format!(
        "'{}' operators add ada --role admin",
        env!("CARGO_BIN_EXE_baseaim-worker")
    );
    let mut child = tokio::process::Command::new("script")
        .args(["--quiet", "--return", "--command", &command, "/dev/null"])
        .env("DATABASE_URL", &db.url)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("util-linux `script` runs the command in a pseudo-terminal");
    let mut input = child.stdin.take().unwrap();
    let mut output = child.stdout.take().unwrap();
    let mut transcript = Vec::new();
    let session = async {
        let mut chunk = [0u8; 4096];
        while !String::from_utf8_lossy(&transcript).contains("password (at least") {
            let n = output.read(&mut chunk).await.unwrap();
            assert!(n > 0, "no prompt: {}", String::from_utf8_lossy(&transcript));
            transcript.extend_from_slice(&chunk[..n]);
        }
        // The prompt goes out just before echo is turned off (the next few system calls): let
        // that happen, as a person would, with room for a loaded machine.
        tokio::time::sleep(Duration::from_secs(1)).await;
        input
            .write_all(format!("{PASSWORD}\n").as_bytes())
            .await
            .unwrap();
        output.read_to_end(&mut transcript).await.unwrap();
        child.wait().await.unwrap()
    };
    let status = tokio::time::timeout(Duration::from_secs(30), session)
        .await
        .expect("operators add finishes");
    let transcript = String::from_utf8_lossy(&transcript).into_owned();
    assert!(status.success(), "{transcript}");
    assert!(
        transcript.contains("operator ada (admin) created"),
        "{transcript}"
    );
    assert!(
        !transcript.contains(PASSWORD),
        "the password was echoed: {transcript}"
    );
    assert!(
        auth::session::login(&db.pool, "ada", PASSWORD, None)
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn the_command_line_creates_operators_and_tokens() {
    let db = TestDb::new().await;
    let (ok, out, err) = cli(
        &db,
        &["operators", "add", "grace", "--role", "admin"],
        &format!("{PASSWORD}\n"),
    )
    .await;
    assert!(ok, "{out}{err}");
    assert!(!out.contains(PASSWORD) && !err.contains(PASSWORD));
    assert!(
        auth::session::login(&db.pool, "grace", PASSWORD, None)
            .await
            .unwrap()
            .is_some()
    );

    let (ok, _, err) = cli(
        &db,
        &["operators", "add", "grace"],
        &format!("{PASSWORD}\n"),
    )
    .await;
    assert!(!ok && err.contains("already exists"), "{err}");
    let (ok, _, err) = cli(&db, &["operators", "add", "tim"], "short\n").await;
    assert!(!ok && err.contains("at least 12 characters"), "{err}");
    let (ok, _, err) = cli(
        &db,
        &["operators", "add", "bad name"],
        &format!("{PASSWORD}\n"),
    )
    .await;
    assert!(!ok && err.contains("operator name"), "{err}");

    let (ok, out, err) = cli(
        &db,
        &[
            "tokens",
            "create",
            "--name",
            "app",
            "--scope",
            "emails:send",
            "--scope",
            "jobs:write",
        ],
        "",
    )
    .await;
    assert!(ok, "{err}");
    let token = out.trim();
    assert!(token.starts_with("baw_") && token.len() > 40, "{token}");
    let caller = auth::tokens::authenticate(&db.pool, token)
        .await
        .unwrap()
        .expect("the printed token works");
    assert_eq!(caller.scopes, ["emails:send", "jobs:write"]);

    let (ok, out, _) = cli(&db, &["tokens", "list", "--json"], "").await;
    assert!(ok);
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed[0]["name"], "app");
    assert!(!out.contains(token), "the list shows the token itself");

    let (ok, _, err) = cli(
        &db,
        &["tokens", "create", "--name", "x", "--scope", "root"],
        "",
    )
    .await;
    assert!(!ok && err.contains("unknown scope `root`"), "{err}");
}

#[tokio::test]
async fn operators_unlock_lifts_a_login_lock_out() {
    use auth::session::{LoginError, MAX_FAILURES};
    let db = TestDb::new().await;
    auth::operators::add(&db.pool, "ada", PASSWORD, Role::Admin)
        .await
        .unwrap();
    for _ in 0..MAX_FAILURES {
        let session = auth::session::login(&db.pool, "ada", "wrong password!!", None)
            .await
            .unwrap();
        assert!(session.is_none());
    }
    let locked = auth::session::login(&db.pool, "ada", PASSWORD, None).await;
    assert!(
        matches!(locked, Err(LoginError::Locked { .. })),
        "not locked"
    );
    let (ok, out, err) = cli(&db, &["operators", "unlock", "ada"], "").await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("lock-out lifted"), "{out}");
    let session = auth::session::login(&db.pool, "ada", PASSWORD, None)
        .await
        .unwrap();
    assert!(session.is_some(), "unlocked, the right password works");
    let (ok, out, _) = cli(&db, &["operators", "unlock", "ada"], "").await;
    assert!(ok && out.contains("no failed logins"), "{out}");
}

/// One password tried against many user names from one address locks the address (not the
/// names, which each saw one failure): every login from it is refused, the right password too,
/// while other addresses log in; `operators unlock <address>` lifts it, and a successful login
/// does not clear an address's count.
#[tokio::test]
async fn many_names_guessed_from_one_address_lock_the_address() {
    use auth::session::{LockedBy, LoginError, MAX_ADDRESS_FAILURES};
    let db = TestDb::new().await;
    auth::operators::add(&db.pool, "ada", PASSWORD, Role::Admin)
        .await
        .unwrap();
    let sprayer: std::net::IpAddr = "203.0.113.9".parse().unwrap();
    let elsewhere: std::net::IpAddr = "2001:db8::7".parse().unwrap();
    let login = |name: String, password: &'static str, from| {
        let pool = db.pool.clone();
        async move { auth::session::login(&pool, &name, password, Some(from)).await }
    };
    // A successful login midway does not reset the address's count.
    for n in 0..MAX_ADDRESS_FAILURES {
        if n == MAX_ADDRESS_FAILURES / 2 {
            let ok = login("ada".into(), PASSWORD, sprayer).await.unwrap();
            assert!(ok.is_some(), "not locked yet");
        }
        let guess = login(format!("user{n}"), "Summer2026!", sprayer)
            .await
            .unwrap();
        assert!(guess.is_none());
    }
    let locked = login("ada".into(), PASSWORD, sprayer).await;
    assert!(
        matches!(
            locked,
            Err(LoginError::Locked {
                by: LockedBy::Address,
                ..
            })
        ),
        "{:?}",
        locked.as_ref().err()
    );
    let other = login("ada".into(), PASSWORD, elsewhere).await.unwrap();
    assert!(other.is_some(), "another address is not locked");
    let name_locked = login("user0".into(), "Summer2026!", elsewhere)
        .await
        .unwrap();
    assert!(name_locked.is_none(), "the names themselves are not locked");

    let (ok, out, err) = cli(&db, &["operators", "unlock", "203.0.113.9"], "").await;
    assert!(ok && out.contains("lock-out lifted"), "{out}{err}");
    let unlocked = login("ada".into(), PASSWORD, sprayer).await.unwrap();
    assert!(unlocked.is_some(), "unlocked, the address logs in again");

    // IPv6: stepping through the addresses of one /64 does not escape its count.
    for n in 0..MAX_ADDRESS_FAILURES {
        let own: std::net::IpAddr = format!("2001:db8:0:1::{:x}", n + 1).parse().unwrap();
        let guess = login(format!("user{n}"), "Summer2026!", own).await.unwrap();
        assert!(guess.is_none());
    }
    let next_door: std::net::IpAddr = "2001:db8:0:1:ffff::1".parse().unwrap();
    let locked = login("ada".into(), PASSWORD, next_door).await;
    assert!(
        matches!(
            locked,
            Err(LoginError::Locked {
                by: LockedBy::Address,
                ..
            })
        ),
        "the whole /64 is locked"
    );
    let other_network: std::net::IpAddr = "2001:db8:0:2::1".parse().unwrap();
    let other = login("ada".into(), PASSWORD, other_network).await.unwrap();
    assert!(other.is_some(), "another /64 is not");
    let (ok, out, err) = cli(&db, &["operators", "unlock", "2001:db8:0:1::/64"], "").await;
    assert!(ok && out.contains("lock-out lifted"), "{out}{err}");
    let unlocked = login("ada".into(), PASSWORD, next_door).await.unwrap();
    assert!(
        unlocked.is_some(),
        "unlocked by its network, as the log names it"
    );
}

/// A user name no operator can have, posted through the real login form: a NUL in it, or a
/// megabyte of it, used to fail the database's statements (500, an error logged per request),
/// the megabyte after the address's failure was already counted. Both get the page every wrong
/// login gets, 401, and nothing is recorded; the operator still logs in from that address.
#[tokio::test]
async fn a_user_name_no_operator_can_have_is_a_wrong_login_recording_nothing() {
    let db = TestDb::new().await;
    auth::operators::add(&db.pool, "ada", PASSWORD, Role::Admin)
        .await
        .unwrap();
    let mut config = Config::load_from(None, Vec::<(String, String)>::new()).unwrap();
    config.http.client_address_header = "x-forwarded-for".into();
    let (state, health) = app_state(&db, config);
    let app = baseaim_worker::http::router(HttpState::new(state, health));
    let post = |username: String, password: &'static str| {
        let app = app.clone();
        async move {
            let (_, form, headers) = call(
                &app,
                Request::get("/dashboard/login")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
            let start =
                form.find(r#"name="csrf" value=""#).unwrap() + r#"name="csrf" value=""#.len();
            let csrf = &form[start..start + form[start..].find('"').unwrap()];
            let cookie = headers[header::SET_COOKIE]
                .to_str()
                .unwrap()
                .split(';')
                .next()
                .unwrap();
            let body = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs([
                    ("csrf", csrf),
                    ("username", &username),
                    ("password", password),
                ])
                .finish();
            let request = Request::post("/dashboard/login")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header(header::COOKIE, cookie)
                .header("x-forwarded-for", "198.51.100.7")
                .body(Body::from(body))
                .unwrap();
            call(&app, request).await
        }
    };
    let megabyte: String = (0..1_000_000u32)
        .map(|i| char::from(b'a' + (i.wrapping_mul(2_654_435_761) >> 27) as u8 % 26))
        .collect();
    for username in [
        "ada\u{0}".to_owned(),
        "a\u{0}da".to_owned(),
        megabyte,
        "a d a".into(),
    ] {
        let (status, page, _) = post(username.clone(), "wrong password!!").await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{}",
            &page[..page.len().min(300)]
        );
        assert!(page.contains("Wrong user name or password."));
        assert!(page.len() < 100_000, "the name is not shown back");
    }
    let recorded: i64 = sqlx::query_scalar(
        "select (select count(*) from login_failures)
              + (select count(*) from login_failures_by_address)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        recorded, 0,
        "nothing recorded for names no operator can have"
    );
    let (status, _, headers) = post("ada".into(), PASSWORD).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(
        headers[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .starts_with("baw_session=")
    );
}
