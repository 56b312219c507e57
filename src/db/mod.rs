//! The database: the pool, the embedded migrations, creating the database when it is missing
//! (for `serve`, `migrate` and `demo` only: other commands refuse a database that does not exist),
//! and a health monitor that `/readyz` reads.
//!
//! Migrations are plain numbered SQL files in `migrations/`, compiled into the binary; an applied
//! migration is never edited (sqlx checks its checksum and refuses to start otherwise).

pub mod copy;
mod health;

use std::sync::LazyLock;
use std::time::Duration;

use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

pub use health::{DbHealth, DbState};

use crate::config::{DatabaseConfig, redact_url};

/// The migrations in `migrations/`, embedded at compile time. Applied migrations it does not
/// carry are ignored: a newer release migrated the database, and this one runs on it (see
/// [`migrate`]).
pub static MIGRATOR: LazyLock<Migrator> = LazyLock::new(|| {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_ignore_missing(true);
    migrator
});

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot create database {url}: {source}")]
    Create { url: String, source: sqlx::Error },
    #[error(
        "database {url} does not exist (check DATABASE_URL or database.url; \
         `baseaim-worker migrate` creates and migrates it)"
    )]
    Missing { url: String },
    #[error("cannot connect to {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// An applied migration is not the one this binary carries (its checksum differs).
    #[error(
        "migration {0} as applied to the database differs from this binary's: an applied \
         migration was edited, or the database belongs to another build; restore the original \
         migration"
    )]
    ModifiedMigration(i64),
    /// A migration failed part-way and left its row marked unsuccessful.
    #[error(
        "migration {0} failed part-way and the database is marked dirty: repair it by hand, \
         then delete that version's row from _sqlx_migrations"
    )]
    Dirty(i64),
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
}

/// Opens a pool on the configured database, which must exist: a command given a mistyped URL
/// says so ([`DbError::Missing`], with the hint to run `migrate`) instead of creating a database
/// under that name. Only `serve`, `migrate` and `demo` create it ([`connect_or_create`]).
///
/// The pool connects lazily; when the server cannot be reached yet, the first statement says so.
pub async fn connect(config: &DatabaseConfig) -> Result<PgPool, DbError> {
    crate::tls::install_crypto_provider();
    let url = &with_default_user(&config.url);
    let shown = redact_url(url);
    match Postgres::database_exists(url).await {
        Ok(true) => {}
        Ok(false) => return Err(DbError::Missing { url: shown }),
        Err(error) => tracing::warn!(database = %shown, %error, "cannot check the database yet"),
    }
    pool(config)
}

/// Creates the database if it does not exist, then opens a pool: for `serve`, `migrate` and
/// `demo`, which migrate it next. Every other command uses [`connect`].
///
/// The pool connects lazily: a node started while PostgreSQL is down comes up, reports not-ready
/// and recovers by itself when the database returns.
pub async fn connect_or_create(config: &DatabaseConfig) -> Result<PgPool, DbError> {
    crate::tls::install_crypto_provider();
    let url = &with_default_user(&config.url);
    let shown = redact_url(url);
    match Postgres::database_exists(url).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::info!(database = %shown, "database does not exist; creating it");
            Postgres::create_database(url)
                .await
                .map_err(|source| DbError::Create {
                    url: shown.clone(),
                    source,
                })?;
        }
        // Unreachable server: carry on with a lazy pool; readiness will say so.
        Err(error) => tracing::warn!(database = %shown, %error, "cannot check the database yet"),
    }
    pool(config)
}

/// The daemon's pool settings (the benchmarks use them too).
pub fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .idle_timeout(Duration::from_secs(300))
        // sqlx pings every connection it hands out by default: a round trip before each
        // statement on the hot paths (claim, finish, enqueue). Only a connection idle for a while
        // is checked; one that died under a busy node fails its statement, which every caller
        // handles (the engine backs off and retries, the intake answers 503).
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= IDLE_CHECK_AFTER {
                    use sqlx::Connection;
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
}

/// A pooled connection idle at least this long is pinged before it is handed out.
const IDLE_CHECK_AFTER: Duration = Duration::from_secs(1);

/// A lazily connecting pool with the configured limits.
pub fn pool(config: &DatabaseConfig) -> Result<PgPool, DbError> {
    let options: PgConnectOptions =
        with_default_user(&config.url)
            .parse()
            .map_err(|source| DbError::Connect {
                url: redact_url(&config.url),
                source,
            })?;
    let options = options.application_name("baseaim-worker");
    Ok(pool_options(config.max_connections)
        .acquire_timeout(config.acquire_timeout)
        .connect_lazy_with(options))
}

/// A URL without a user gets the login user, as libpq does (`PGUSER`, else `USER`), so
/// `postgres://localhost/db` works on a machine with peer or trust authentication.
pub fn with_default_user(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return url.to_string();
    };
    if parsed.username().is_empty() {
        let user = ["PGUSER", "USER", "LOGNAME"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
            .or_else(login_name);
        if let Some(user) = user {
            let _ = parsed.set_username(&user);
            return parsed.to_string();
        }
    }
    url.to_string()
}

/// The name of the user running this process, from `/etc/passwd` (when the environment has no
/// `USER`, as under systemd or in CI).
fn login_name() -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let uid = std::fs::metadata("/proc/self").ok()?.uid();
        let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
        passwd.lines().find_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let id: u32 = fields.nth(1)?.parse().ok()?;
            (id == uid).then(|| name.to_string())
        })
    }
    #[cfg(not(unix))]
    None
}

/// Applies the pending migrations; a second run is a no-op.
///
/// A database a newer release migrated (migrations this binary does not carry) is run on, with
/// a warning: migrations only add (a table, a column with a default, a looser constraint), so the
/// release before keeps working on the newer schema. That is what a rolling deploy needs (an old
/// node restarting mid-rollout) and what makes rolling a release back possible. An applied
/// migration that differs from this binary's, or one left half-applied, is fatal
/// ([`DbError::is_fatal`]).
///
/// sqlx's migrator takes a session-level advisory lock (`pg_advisory_lock`) before the first
/// migration and releases it after the last, but returns early on any error in between, lock
/// still held. On a pooled connection that lock would outlive the error: every later `migrate`,
/// on this node or another, would wait for it forever. So the migrations run on a connection of
/// their own that is closed afterwards, never handed back to the pool: closing it ends the
/// session, and the lock with it, before this returns.
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    let mut conn = pool.acquire().await?;
    // Also if this future is dropped half-way (a node stopped while migrating).
    conn.close_on_drop();
    // `run` with a `&mut PgConnection` is what this is, but its `Acquire` bound makes the
    // future not `Send` (sqlx's own `run` calls this for that reason).
    let result = MIGRATOR.run_direct(None, &mut *conn, false).await;
    // Bounded: a connection that hangs is dropped instead, which closes its socket.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, conn.close()).await;
    result.map_err(|error| match error {
        sqlx::migrate::MigrateError::VersionMismatch(version) => {
            DbError::ModifiedMigration(version)
        }
        sqlx::migrate::MigrateError::Dirty(version) => DbError::Dirty(version),
        error => DbError::Migrate(error),
    })?;
    warn_if_newer(pool).await
}

/// Logs that a newer release migrated the database, when one did.
async fn warn_if_newer(pool: &PgPool) -> Result<(), DbError> {
    let newest: Option<i64> =
        sqlx::query_scalar("select max(version) from _sqlx_migrations where success")
            .fetch_one(pool)
            .await?;
    if let Some(newest) = newest.filter(|&v| v > latest_migration()) {
        tracing::warn!(
            database = newest,
            binary = latest_migration(),
            "a newer release migrated this database (migration {newest}, this binary's newest is \
             {}); running on it, as migrations only add: finish rolling that release out",
            latest_migration()
        );
    }
    Ok(())
}

/// Checks, without migrating, that the database's applied migrations this binary carries are
/// unedited and complete: what `migrate` refuses ([`DbError::is_fatal`]) is refused here too, for
/// `serve --no-migrate`. A database not migrated yet, or missing only this binary's newest
/// migrations, passes (the engine's start says what is missing); one a newer release migrated
/// passes with the same warning as [`migrate`]'s.
pub async fn check_migrations(pool: &PgPool) -> Result<(), DbError> {
    let applied: Vec<(i64, Vec<u8>, bool)> =
        match sqlx::query_as("select version, checksum, success from _sqlx_migrations")
            .fetch_all(pool)
            .await
        {
            Ok(applied) => applied,
            // Not migrated yet.
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P01") => {
                return Ok(());
            }
            Err(error) => return Err(error.into()),
        };
    for (version, checksum, success) in applied {
        if !success {
            return Err(DbError::Dirty(version));
        }
        if let Some(known) = MIGRATOR.iter().find(|m| m.version == version)
            && *known.checksum != *checksum
        {
            return Err(DbError::ModifiedMigration(version));
        }
    }
    warn_if_newer(pool).await
}

/// How long closing the migrations' connection may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

impl DbError {
    /// Whether no retry can mend this: the database's migrations disagree with this binary's (an
    /// applied migration edited, or one left dirty). A node must stop rather than wait: an
    /// operator has to act.
    pub fn is_fatal(&self) -> bool {
        matches!(self, DbError::ModifiedMigration(_) | DbError::Dirty(_))
    }
}

/// True when a string or a key anywhere in `value` holds U+0000, which PostgreSQL's text and
/// jsonb cannot store: callers refuse such input up front, naming it, instead of failing in the
/// database.
pub fn json_has_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(a) => a.iter().any(json_has_nul),
        serde_json::Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || json_has_nul(v)),
        _ => false,
    }
}

/// The newest migration compiled into this binary.
pub fn latest_migration() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}

/// Whether `error` means the database could not be reached or is restarting (the caller should
/// retry), rather than a statement it refused. Besides a refused or timed-out connection, a
/// connection cut while it is being set up surfaces as a TLS or protocol error (what a proxy or
/// a restarting server in front of a dead backend gives), and a server going down or coming up
/// answers with SQLSTATE class 08 (connection exception), 57P01-57P03 (shut down, crashed, not
/// accepting connections yet) or 53300 (too many connections).
pub fn database_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02" | "57P03" | "53300")
        }),
        _ => false,
    }
}

/// True when the database answers and has every migration this binary knows.
pub async fn is_ready(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let applied: Option<i64> =
        sqlx::query_scalar("select max(version) from _sqlx_migrations where success")
            .fetch_one(pool)
            .await
            .or_else(|e| match &e {
                // No migrations table yet: reachable, but not migrated.
                sqlx::Error::Database(db) if db.code().as_deref() == Some("42P01") => Ok(None),
                _ => Err(e),
            })?;
    Ok(applied.unwrap_or(0) >= latest_migration())
}
