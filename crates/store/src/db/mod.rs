//! The PostgreSQL pool, the embedded migrations, and the advisory locks that keep each background
//! job on one replica ([`leader`]).

pub mod clock;
pub mod leader;
pub mod primary;
pub mod replicas;
pub mod sessions;

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use thiserror::Error;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// How long a request waits for a pooled connection before giving up: short, so that with the
/// database down the API answers 503 promptly instead of holding every client.
pub const POOL_ACQUIRE_TIMEOUT_MS: u64 = 2_000;

#[derive(Debug, Error)]
pub enum DbError {
    #[error("invalid database url: {0}")]
    Url(#[source] sqlx::Error),
    #[error("cannot connect to the database: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// A pool on `url`; a URL naming several hosts (`postgres://u@db1,db2/payrail`) gets a pool that
/// follows the primary among them ([`primary`]).
pub async fn connect(url: &str, pool_max: u32) -> Result<PgPool, DbError> {
    if let Some(hosts) = primary::split_hosts(url) {
        return primary::connect(&hosts, pool_max).await;
    }
    let options: PgConnectOptions = url.parse().map_err(DbError::Url)?;
    connect_with(options, pool_max).await
}

/// The daemon's pool over `options`: at most `pool_max` connections, a request waits at most
/// [`POOL_ACQUIRE_TIMEOUT_MS`] for one.
pub async fn connect_with(options: PgConnectOptions, pool_max: u32) -> Result<PgPool, DbError> {
    PgPoolOptions::new()
        .max_connections(pool_max)
        .acquire_timeout(Duration::from_millis(POOL_ACQUIRE_TIMEOUT_MS))
        .connect_with(options)
        .await
        .map_err(DbError::Connect)
}

/// A pool on a read replica (`[database] read_url`) that connects on first use: a replica that is
/// down when the daemon starts costs the reads sent to it (answered 503), not the daemon.
pub fn connect_lazy(url: &str, pool_max: u32) -> Result<PgPool, DbError> {
    let options: PgConnectOptions = url.parse().map_err(DbError::Url)?;
    Ok(PgPoolOptions::new()
        .max_connections(pool_max)
        .acquire_timeout(Duration::from_millis(POOL_ACQUIRE_TIMEOUT_MS))
        .connect_lazy_with(options))
}

/// Applies every migration not yet applied; migrations are forward-only.
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// Creates the database named in `url` when it does not exist yet (connecting to the server's
/// `postgres` database to do so). For the dev stack and first runs; production creates its
/// database ahead of time.
pub async fn ensure_database(url: &str) -> Result<(), DbError> {
    let options: PgConnectOptions = url.parse().map_err(DbError::Url)?;
    let name = options.get_database().unwrap_or("postgres").to_owned();
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_millis(POOL_ACQUIRE_TIMEOUT_MS))
        .connect_with(options.database("postgres"))
        .await
        .map_err(DbError::Connect)?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(&name)
        .fetch_one(&admin)
        .await
        .map_err(DbError::Connect)?;
    if !exists {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        match sqlx::query(&format!("CREATE DATABASE {quoted}")).execute(&admin).await {
            Ok(_) => {}
            // Another process created it in between.
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P04") => {}
            Err(error) => return Err(DbError::Connect(error)),
        }
    }
    admin.close().await;
    Ok(())
}

/// Whether `error` says the database cannot do the work right now: a lost or refused connection (a
/// restart, a failover, a full server), a pool that had no connection in time, or a server short of
/// something that comes back (class 53: disk full, out of memory, too many connections; a
/// statement cancelled by `statement_timeout` or `lock_timeout`, 57014 and 55P03). Each of these
/// fails the whole transaction, so the same work may simply be done again later.
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || code.starts_with("53") || matches!(code.as_ref(), "57014" | "55P03" | "57P01" | "57P02" | "57P03")
        }),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

/// Whether `error` may go away by itself: the database is unavailable ([`is_unavailable`]), or a
/// serialization failure (40001) or deadlock (40P01) lost a race. Constraint violations and other
/// refusals are not: retrying them repeats the same answer.
pub fn is_transient(error: &sqlx::Error) -> bool {
    is_unavailable(error)
        || matches!(error, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("40001" | "40P01")))
}

/// Whether a job that met `error` may just try again at its next pass: the error is transient
/// ([`is_transient`]), or it arose on this side of the connection (decoding, the pool) rather
/// than as the server refusing the statement. A refusal repeats itself: retrying it only hides it.
pub fn is_retryable(error: &sqlx::Error) -> bool {
    is_transient(error) || !matches!(error, sqlx::Error::Database(_))
}
