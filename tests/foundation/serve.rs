use std::process::Stdio;
use std::time::Duration;

use baseaim_worker::app::Node;
use baseaim_worker::cli::Role;
use baseaim_worker::config::{Config, Secrets};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use crate::support::{PgProxy, TestDb, eventually};

const BIN: &str = env!("CARGO_BIN_EXE_baseaim-worker");

async fn status(url: &str) -> Option<u16> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .ok()?;
    client
        .get(url)
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

#[tokio::test]
async fn migrate_twice_is_a_no_op() {
    let db = TestDb::empty().await;
    baseaim_worker::db::migrate(&db.pool).await.unwrap();
    let first: Vec<(i64, Vec<u8>)> =
        sqlx::query_as("select version, checksum from _sqlx_migrations order by version")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    baseaim_worker::db::migrate(&db.pool).await.unwrap();
    let second: Vec<(i64, Vec<u8>)> =
        sqlx::query_as("select version, checksum from _sqlx_migrations order by version")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert!(!first.is_empty());
    assert_eq!(first, second);
    assert!(baseaim_worker::db::is_ready(&db.pool).await.unwrap());
}

/// Migration 0017 (bulk actions resumed by the maintenance leader) on a database with actions
/// recorded before it: one already stalled has no cursor to resume from, so it ends saying to run
/// it again; one still moving is left to the node running it; neither is taken over.
#[tokio::test]
async fn migration_0017_ends_the_bulk_actions_already_stalled() {
    let db = TestDb::empty().await;
    baseaim_worker::db::MIGRATOR
        .run_to(16, &db.pool)
        .await
        .unwrap();
    sqlx::query(
        "insert into bulk_actions (action, filter, requested_by, updated_at)
         values ('retry', '{}', 'stalled', now() - interval '5 minutes'),
                ('cancel', '{}', 'moving', now())",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    baseaim_worker::db::migrate(&db.pool).await.unwrap();
    let rows: Vec<(String, bool, Option<String>)> = sqlx::query_as(
        "select requested_by, finished_at is not null, error from bulk_actions order by id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(rows[0].0, "stalled");
    assert!(rows[0].1, "ended: {rows:?}");
    assert!(
        rows[0]
            .2
            .as_deref()
            .is_some_and(|e| e.contains("run it again")),
        "{rows:?}"
    );
    assert_eq!(rows[1], ("moving".to_string(), false, None));
    let taken = baseaim_worker::queue::bulk::resume_stalled(&db.pool, Duration::ZERO)
        .await
        .unwrap();
    assert!(taken.is_empty(), "an action from before 0017 has no cursor");
}

#[tokio::test]
async fn the_migrate_command_creates_the_database() {
    let name = format!("baw_test_{}", uuid::Uuid::new_v4().simple());
    let url = format!("{}/{name}", crate::support::server_url());
    for _ in 0..2 {
        let out = tokio::process::Command::new(BIN)
            .arg("migrate")
            .env("DATABASE_URL", &url)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let n: i64 = sqlx::query_scalar("select count(*) from _sqlx_migrations")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n as usize, baseaim_worker::db::MIGRATOR.iter().count());
    pool.close().await;
    let admin = sqlx::PgPool::connect(&format!("{}/postgres", crate::support::server_url()))
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "drop database {name} with (force)"
    )))
    .execute(&admin)
    .await
    .unwrap();
}

#[tokio::test]
async fn readyz_follows_the_database_through_an_outage() {
    let db = TestDb::new().await;
    let proxy = PgProxy::start().await;
    let env = vec![
        ("DATABASE_URL".to_string(), db.url_via(proxy.addr)),
        ("BAW__HTTP__BIND".to_string(), "127.0.0.1:0".to_string()),
        (
            "BAW__DATABASE__ACQUIRE_TIMEOUT".to_string(),
            "500ms".to_string(),
        ),
    ];
    let config = Config::load_from(None, env).unwrap();
    let stop = CancellationToken::new();
    let node = Node::start(config, Secrets::default(), Role::All, true, stop.clone())
        .await
        .unwrap();
    let base = format!("http://{}", node.addr.expect("a node of role all listens"));

    assert_eq!(status(&format!("{base}/healthz")).await, Some(200));
    eventually(10, "readyz 200", || async {
        status(&format!("{base}/readyz")).await == Some(200)
    })
    .await;

    proxy.down();
    eventually(10, "readyz 503 while the database is away", || async {
        status(&format!("{base}/readyz")).await == Some(503)
    })
    .await;
    assert_eq!(
        status(&format!("{base}/healthz")).await,
        Some(200),
        "the process stays alive"
    );

    proxy.up();
    eventually(15, "readyz 200 again", || async {
        status(&format!("{base}/readyz")).await == Some(200)
    })
    .await;

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), node.stop())
        .await
        .expect("stops in time")
        .unwrap();
}

/// A `serve` process, its output read as it is written (a debug-level run writes more than a
/// pipe holds: unread, the daemon would block on its next log line and never exit).
struct Serve {
    child: tokio::process::Child,
    output: tokio::task::JoinHandle<String>,
}

/// Starts `serve` as a real process with the given extra env; returns it and its port once it
/// answers `/readyz` 200.
async fn spawn_serve(db: &TestDb, extra: &[(&str, &str)]) -> (Serve, u16) {
    let (serve, port) = start_serve(db, &[], extra);
    let base = format!("http://127.0.0.1:{port}");
    eventually(20, "serve answers readyz", || async {
        status(&format!("{base}/readyz")).await == Some(200)
    })
    .await;
    (serve, port)
}

/// A free port on loopback (free when this returns).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Starts `serve` with `args` (e.g. `--role worker`) and the extra env, bound to a free port
/// (returned), without waiting for anything.
fn start_serve(db: &TestDb, args: &[&str], extra: &[(&str, &str)]) -> (Serve, u16) {
    let port = free_port();
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.arg("serve")
        .args(args)
        .env("DATABASE_URL", &db.url)
        .env("BAW__HTTP__BIND", format!("127.0.0.1:{port}"))
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let (mut stdout, mut stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let output = tokio::spawn(async move {
        let (mut out, mut err) = (String::new(), String::new());
        let _ = tokio::join!(
            stdout.read_to_string(&mut out),
            stderr.read_to_string(&mut err)
        );
        out + &err
    });
    (Serve { child, output }, port)
}

async fn sigterm_and_collect(serve: Serve) -> (std::process::ExitStatus, String) {
    let Serve { mut child, output } = serve;
    let pid = child.id().unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    (status, output.await.unwrap())
}

#[tokio::test]
async fn sigterm_stops_serve_cleanly_with_exit_code_zero() {
    let db = TestDb::new().await;
    let (serve, _) = spawn_serve(&db, &[]).await;
    // readyz only says the database is ready; wait until the engine has registered its node too.
    eventually(20, "the engine registered its node", || async {
        sqlx::query_scalar::<_, i64>("select count(*) from nodes")
            .fetch_one(&db.pool)
            .await
            .unwrap()
            == 1
    })
    .await;
    let (status, output) = sigterm_and_collect(serve).await;
    assert_eq!(status.code(), Some(0), "{output}");
    assert!(output.contains("engine stopped"), "{output}");
    let nodes: i64 = sqlx::query_scalar("select count(*) from nodes")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(nodes, 0, "a cleanly stopped node removes itself");
}

const SECRETS: [(&str, &str); 6] = [
    ("FACEBOOK_ACCESS_TOKEN", "EAAsecretfacebook123"),
    ("STRIPE_SECRET_KEY", "sk_test_secretstripe456"),
    ("STRIPE_WEBHOOK_SECRET", "whsec_secretwebhook789"),
    ("RESEND_API_KEY", "re_secretresend012"),
    (
        "GOOGLE_SERVICE_ACCOUNT_KEY",
        "{\"private_key\":\"secretgooglekey345\"}",
    ),
    ("GOOGLE_DRIVE_FOLDER_ID", "secretfolder678"),
];

fn assert_no_secret(output: &str) {
    for (name, value) in SECRETS {
        assert!(
            !output.contains(value),
            "{name}'s value leaked into: {output}"
        );
    }
    assert!(
        !output.contains("dbpassword901"),
        "the database password leaked into: {output}"
    );
}

#[tokio::test]
async fn no_secret_appears_in_config_check_or_logs() {
    let out = tokio::process::Command::new(BIN)
        .args(["config", "check"])
        .envs(SECRETS)
        .env("DATABASE_URL", "postgres://app:dbpassword901@127.0.0.1/x")
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        shown.contains("STRIPE_WEBHOOK_SECRET = \"<set>\""),
        "{shown}"
    );
    assert!(shown.contains("postgres://app:***@127.0.0.1/x"), "{shown}");
    assert_no_secret(&shown);

    // A whole serve run at debug level, in JSON, with every secret set.
    let db = TestDb::new().await;
    let mut extra: Vec<(&str, &str)> = SECRETS.to_vec();
    extra.push(("RUST_LOG", "debug"));
    extra.push(("BAW__LOG__FORMAT", "json"));
    let (serve, _) = spawn_serve(&db, &extra).await;
    let (status, output) = sigterm_and_collect(serve).await;
    assert_eq!(status.code(), Some(0));
    assert!(
        output.contains("\"level\""),
        "JSON logs were written: {output}"
    );
    assert_no_secret(&output);
}

#[tokio::test]
async fn an_invalid_config_exits_non_zero_naming_the_key() {
    let out = tokio::process::Command::new(BIN)
        .args(["config", "check"])
        .env("BAW__QUEUES__DEFAULT__CONCURRENCY", "zero")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("queues.default.concurrency"), "{err}");
}

/// Marks `db` as migrated by a newer release: a version this binary does not know.
async fn seed_newer_migration(db: &TestDb) {
    sqlx::query("insert into _sqlx_migrations values (99, 'x', now(), true, '\\x00', 1)")
        .execute(&db.pool)
        .await
        .unwrap();
}

/// Makes `db`'s applied migration 1 differ from this binary's (its checksum), as an edited
/// migration would.
async fn seed_modified_migration(db: &TestDb) {
    sqlx::query("update _sqlx_migrations set checksum = '\\x00' where version = 1")
        .execute(&db.pool)
        .await
        .unwrap();
}

/// The advisory locks held on `db`'s server by sessions connected to `db`.
async fn advisory_locks(db: &TestDb) -> i64 {
    sqlx::query_scalar(
        "select count(*) from pg_locks l join pg_database d on d.oid = l.database
         where l.locktype = 'advisory' and d.datname = current_database()",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

/// sqlx's migrator returns on an error without releasing its session-level advisory lock: the
/// failed run must not leave it held on a pooled connection, or every later `migrate` waits.
#[tokio::test]
async fn a_failed_migration_leaves_no_lock_behind() {
    let db = TestDb::new().await;
    seed_modified_migration(&db).await;
    let error = baseaim_worker::db::migrate(&db.pool).await.unwrap_err();
    assert!(
        matches!(error, baseaim_worker::db::DbError::ModifiedMigration(1)),
        "{error}"
    );
    assert!(error.is_fatal());
    assert!(error.to_string().contains("migration 1 "), "{error}");
    assert_eq!(advisory_locks(&db).await, 0, "the migrator's lock is gone");
    // Another node's migrate (its own pool) gets the lock and its own clear error.
    let other = sqlx::PgPool::connect(&db.url).await.unwrap();
    let again = tokio::time::timeout(Duration::from_secs(10), baseaim_worker::db::migrate(&other))
        .await
        .expect("a second migrate does not wait for the first one's lock");
    assert!(matches!(
        again,
        Err(baseaim_worker::db::DbError::ModifiedMigration(1))
    ));
    other.close().await;
}

/// A database whose applied migration differs from this binary's: `serve` says so and exits
/// non-zero instead of answering ready while running nothing, and a `migrate` run at the same
/// time returns at once.
#[tokio::test]
async fn serve_exits_non_zero_on_a_database_whose_applied_migration_differs() {
    let db = TestDb::new().await;
    seed_modified_migration(&db).await;
    let (serve, port) = start_serve(&db, &[], &[]);
    let migrate = tokio::process::Command::new(BIN)
        .arg("migrate")
        .env("DATABASE_URL", &db.url)
        .env_remove("RUST_LOG")
        .kill_on_drop(true)
        .output();
    let Serve { mut child, output } = serve;
    let readyz = format!("http://127.0.0.1:{port}/readyz");
    let watch = async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert_ne!(status(&readyz).await, Some(200), "readyz said ready");
            assert!(
                tokio::time::Instant::now() < deadline,
                "serve still runs 15 s after start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let (exit, migrate) = tokio::join!(
        watch,
        tokio::time::timeout(Duration::from_secs(15), migrate)
    );
    let output = output.await.unwrap();
    assert!(!exit.success(), "{output}");
    assert!(output.contains("migration 1 "), "{output}");
    assert!(output.contains("differs from this binary"), "{output}");
    let migrate = migrate.expect("a concurrent migrate returns").unwrap();
    let migrate_err = String::from_utf8_lossy(&migrate.stderr);
    assert!(!migrate.status.success());
    assert!(migrate_err.contains("migration 1 "), "{migrate_err}");
    // And one run afterwards.
    let after = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new(BIN)
            .arg("migrate")
            .env("DATABASE_URL", &db.url)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("a migrate after the node returns")
    .unwrap();
    assert!(!after.status.success());
    assert_eq!(advisory_locks(&db).await, 0);
}

/// A node of the release before, on a database a newer release migrated (a rolling deploy, or a
/// release rolled back): it runs on it, saying so, with or without migrating first.
#[tokio::test]
async fn an_older_release_runs_on_a_database_a_newer_release_migrated() {
    let db = TestDb::new().await;
    seed_newer_migration(&db).await;
    baseaim_worker::db::migrate(&db.pool).await.unwrap();
    baseaim_worker::db::check_migrations(&db.pool)
        .await
        .unwrap();
    assert_eq!(advisory_locks(&db).await, 0);
    for args in [&[][..], &["--no-migrate"][..]] {
        let (serve, port) = start_serve(&db, args, &[]);
        let readyz = format!("http://127.0.0.1:{port}/readyz");
        eventually(15, "readyz 200", || async {
            status(&readyz).await == Some(200)
        })
        .await;
        let (exit, output) = sigterm_and_collect(serve).await;
        assert!(exit.success(), "{args:?}: {output}");
        assert!(
            output.contains("a newer release migrated this database (migration 99"),
            "{args:?}: {output}"
        );
    }
}

/// `/readyz` says ready only once the engine runs: a migrated database is not enough while the
/// node is still waiting to migrate (here, for another node's migrator lock).
#[tokio::test]
async fn readyz_waits_for_the_engine() {
    use sqlx::Connection;
    use sqlx::migrate::Migrate;
    let db = TestDb::new().await;
    let mut other_migrator = sqlx::PgConnection::connect(&db.url).await.unwrap();
    other_migrator.lock().await.unwrap();
    let env = vec![
        ("DATABASE_URL".to_string(), db.url.clone()),
        ("BAW__HTTP__BIND".to_string(), "127.0.0.1:0".to_string()),
    ];
    let config = Config::load_from(None, env).unwrap();
    let stop = CancellationToken::new();
    let node = Node::start(config, Secrets::default(), Role::All, true, stop.clone())
        .await
        .unwrap();
    let readyz = format!(
        "http://{}/readyz",
        node.addr.expect("a node of role all listens")
    );
    // The health monitor checks every second: by now it has seen the database ready.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let answer = reqwest::get(&readyz).await.unwrap();
    assert_eq!(answer.status().as_u16(), 503);
    assert_eq!(answer.text().await.unwrap(), "engine not running\n");

    other_migrator.unlock().await.unwrap();
    eventually(15, "readyz 200 once the engine runs", || async {
        status(&readyz).await == Some(200)
    })
    .await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), node.stop())
        .await
        .expect("stops in time")
        .unwrap();
}

/// Enqueues a `noop` job and waits until a node of `db` completed it.
async fn a_node_completes_a_job(db: &TestDb) {
    let job: i64 = sqlx::query_scalar("select enqueue_job('noop')")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    eventually(20, "the worker completed the job", || async {
        sqlx::query_scalar::<_, String>("select state::text from jobs where id = $1")
            .bind(job)
            .fetch_one(&db.pool)
            .await
            .unwrap()
            == "completed"
    })
    .await;
}

/// A `--role worker` node binds no HTTP port (a web node sharing its env file binds it), and
/// works jobs all the same.
#[tokio::test]
async fn a_worker_node_listens_on_nothing_and_works_jobs() {
    let db = TestDb::new().await;
    let (serve, port) = start_serve(&db, &["--role", "worker"], &[]);
    a_node_completes_a_job(&db).await;
    let connect = tokio::net::TcpStream::connect(("127.0.0.1", port)).await;
    assert!(
        connect.is_err(),
        "nothing listens on the configured bind while the worker runs"
    );
    let (status, output) = sigterm_and_collect(serve).await;
    assert_eq!(status.code(), Some(0), "{output}");
    assert!(output.contains("without an HTTP listener"), "{output}");
}

/// Given `http.ops_bind`, a `--role worker` node serves its health and its own metrics there
/// (the job counters of its process, which no web node has), and nothing else: no dashboard, no
/// intake.
#[tokio::test]
async fn a_worker_node_serves_health_and_metrics_on_its_ops_bind() {
    let db = TestDb::new().await;
    let ops = format!("127.0.0.1:{}", free_port());
    let (serve, port) = start_serve(
        &db,
        &["--role", "worker"],
        &[("BAW__HTTP__OPS_BIND", ops.as_str())],
    );
    let token = baseaim_worker::auth::tokens::create(&db.pool, "prometheus", &["admin:read"])
        .await
        .unwrap();
    eventually(20, "readyz 200 on the ops address", || async {
        status(&format!("http://{ops}/readyz")).await == Some(200)
    })
    .await;
    a_node_completes_a_job(&db).await;
    let client = reqwest::Client::new();
    let metrics = client
        .get(format!("http://{ops}/metrics"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status().as_u16(), 200);
    let metrics = metrics.text().await.unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("baw_jobs_total{")
            && l.contains("noop")
            && l.contains("completed")),
        "{metrics}"
    );
    for path in ["/dashboard", "/webhooks/stripe", "/v1/jobs"] {
        assert_eq!(
            status(&format!("http://{ops}{path}")).await,
            Some(404),
            "{path} is not served on the ops address"
        );
    }
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
    );
    let (status, output) = sigterm_and_collect(serve).await;
    assert_eq!(status.code(), Some(0), "{output}");
    assert!(output.contains("serving health and metrics"), "{output}");
}

/// Starts `serve` with `grace`, opens a request whose headers never end (kept open by the
/// returned connection), then sends SIGTERM.
async fn sigterm_with_a_request_hanging(
    db: &TestDb,
    grace: &str,
) -> (Serve, tokio::net::TcpStream) {
    let (serve, port) = spawn_serve(db, &[("BAW__WORKER__SHUTDOWN_GRACE", grace)]).await;
    let conn = half_a_request(port).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    kill(serve.child.id().unwrap(), "TERM");
    (serve, conn)
}

/// Opens a connection to `port` and sends the start of a request whose headers never end.
async fn half_a_request(port: u16) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .await
        .unwrap();
    conn
}

fn kill(pid: u32, name: &str) {
    let sent = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// A client that never finishes its request does not keep a stopping node alive: the HTTP
/// server gets what is left of the shutdown grace, then its connections are dropped.
#[tokio::test]
async fn sigterm_stops_serve_within_the_grace_despite_a_half_sent_request() {
    let db = TestDb::new().await;
    let (Serve { mut child, output }, _conn) = sigterm_with_a_request_hanging(&db, "2s").await;
    let status = tokio::time::timeout(Duration::from_secs(2 + 4), child.wait())
        .await
        .expect("exits within the grace and a few seconds")
        .unwrap();
    let output = output.await.unwrap();
    assert_eq!(status.code(), Some(0), "{output}");
    assert!(output.contains("HTTP connections still open"), "{output}");
}

/// A second SIGTERM while the node waits for the grace exits at once, non-zero, saying so.
#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let db = TestDb::new().await;
    let (Serve { mut child, output }, _conn) = sigterm_with_a_request_hanging(&db, "60s").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "still waiting for the connection"
    );
    kill(child.id().unwrap(), "TERM");
    let status = tokio::time::timeout(Duration::from_secs(3), child.wait())
        .await
        .expect("the second signal exits at once")
        .unwrap();
    let output = output.await.unwrap();
    assert_eq!(status.code(), Some(143), "{output}");
    assert!(output.contains("second signal"), "{output}");
}

/// `config check` adopts the schedules as `serve` does: one whose kind this binary does not run
/// fails the check (exit 2, the configuration errors' code), naming the schedule's key.
#[tokio::test]
async fn config_check_refuses_a_schedule_of_an_unknown_kind() {
    for (key, value, named) in [
        ("BAW__SCHEDULES__PRUNE__KIND", "prnue", "prnue"),
        // A queue no node works: serve refuses it too (its jobs would wait forever).
        (
            "BAW__SCHEDULES__PRUNE__QUEUE",
            "reprots",
            "schedules.prune.queue",
        ),
    ] {
        let out = tokio::process::Command::new(BIN)
            .args(["config", "check"])
            .env(key, value)
            .output()
            .await
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{key}: {err}");
        assert!(err.contains("schedules.prune"), "{err}");
        assert!(err.contains(named), "{err}");
    }
}

/// A command other than `serve`, `migrate` and `demo` given a database that does not exist (a
/// mistyped URL) says so, with the hint, and creates nothing.
#[tokio::test]
async fn tokens_list_on_a_missing_database_creates_nothing() {
    let name = format!("baw_test_{}", uuid::Uuid::new_v4().simple());
    let url = format!("{}/{name}", crate::support::server_url());
    let out = tokio::process::Command::new(BIN)
        .args(["tokens", "list"])
        .env("DATABASE_URL", &url)
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&format!("{name} does not exist")), "{err}");
    assert!(err.contains("baseaim-worker migrate"), "{err}");
    let admin = sqlx::PgPool::connect(&format!("{}/postgres", crate::support::server_url()))
        .await
        .unwrap();
    let exists: bool =
        sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
            .bind(&name)
            .fetch_one(&admin)
            .await
            .unwrap();
    if exists {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "drop database {name} with (force)"
        )))
        .execute(&admin)
        .await;
    }
    assert!(!exists, "tokens list created the database");
}

/// `demo` uses DATABASE_URL's server when it is set, as the README says, but its own database
/// there: here a server on a port nothing listens on, which the demo names when it cannot reach it.
#[tokio::test]
async fn demo_uses_database_urls_server_not_its_database() {
    let port = free_port();
    let url = format!("postgres://127.0.0.1:{port}/baw_demo_elsewhere");
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(BIN)
            .args(["demo", "--bind", "127.0.0.1:0"])
            .env("DATABASE_URL", &url)
            .env("BAW__DATABASE__ACQUIRE_TIMEOUT", "500ms")
            .env(
                "BAW_DEMO_STATE",
                std::env::temp_dir().join("baw-demo-url-test.json"),
            )
            .env_remove("RUST_LOG")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the demo gives up on an unreachable database")
    .unwrap();
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{output}");
    // That server, but the demo's own database: DATABASE_URL's may be production's.
    assert!(
        output.contains(&format!("127.0.0.1:{port}/baseaim_worker_demo")),
        "{output}"
    );
    assert!(!output.contains("baw_demo_elsewhere"), "{output}");
}
