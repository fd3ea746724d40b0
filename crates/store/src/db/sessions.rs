//! Whether the database URL gives payrail real sessions.
//!
//! The job locks ([`super::leader`]) are session advisory locks, held as long as the connection that
//! took them. Behind a connection pooler in transaction (or statement) mode a client's statements run
//! on whichever server connection is free, so a "held" lock belongs to a server connection that other
//! clients use next — two replicas could both believe they lead. Session pooling (and a direct
//! connection) keeps one server session per client connection and works.
//!
//! The probe, on two client connections: the first sets a session setting to a random value; the
//! second opens a transaction, so that a pooler sharing server connections must give the first
//! another one (or make it wait); the first then reads its setting back. A session of its own reads
//! the value; a shared server connection reads nothing, or answers only after the second commits.

use std::time::Duration;

use sqlx::{Connection, PgConnection};
use sqlx::postgres::PgConnectOptions;
use thiserror::Error;

/// How long the read-back may wait before the wait itself shows a shared server connection: long
/// enough that a slow server is not mistaken for a pooler (a session of its own never waits on
/// another client's transaction for a read).
const PROBE_WAIT_MS: u64 = 5_000;

#[derive(Debug, Error)]
pub enum SessionError {
    #[error(
        "the database connection does not keep sessions (a connection pooler in transaction or statement \
         mode?): {detail}. payrail's job locks are session locks; connect to PostgreSQL directly or through a \
         session-mode pool (see docs/database.md)"
    )]
    NotSessions { detail: String },
    #[error("probing the database sessions: {0}")]
    Database(#[from] sqlx::Error),
}

/// Refuses a connection whose server session is not its own (see the module docs).
pub async fn check_sessions(options: &PgConnectOptions) -> Result<(), SessionError> {
    let mut first = PgConnection::connect_with(options).await?;
    let mut second = PgConnection::connect_with(options).await?;
    let token = format!("{:032x}", rand::random::<u128>());
    // Unnamed statements: named ones would collide on a shared server connection before the probe
    // could tell (that collision is reported as the same finding).
    sqlx::query("SELECT set_config('payrail.session_probe', $1, false)")
        .bind(&token)
        .persistent(false)
        .execute(&mut first)
        .await
        .map_err(classify)?;
    let mut holding = second.begin().await.map_err(classify)?;
    sqlx::query("SELECT 1").persistent(false).execute(&mut *holding).await.map_err(classify)?;
    let read = tokio::time::timeout(
        Duration::from_millis(PROBE_WAIT_MS),
        sqlx::query_scalar::<_, Option<String>>("SELECT current_setting('payrail.session_probe', true)")
            .persistent(false)
            .fetch_one(&mut first),
    )
    .await;
    let _ = holding.rollback().await;
    let outcome = match read {
        Err(_) => Err(SessionError::NotSessions { detail: format!("a statement waited over {PROBE_WAIT_MS} ms for another client's transaction") }),
        Ok(Ok(value)) if value.as_deref() == Some(token.as_str()) => Ok(()),
        Ok(Ok(_)) => Err(SessionError::NotSessions { detail: "a session setting was gone at the next statement".to_owned() }),
        Ok(Err(error)) => Err(classify(error)),
    };
    let _ = first.close().await;
    let _ = second.close().await;
    outcome
}

/// A prepared statement that already exists (42P05) or no longer does (26000) on "this" session:
/// the server connection is shared.
fn classify(error: sqlx::Error) -> SessionError {
    match error.as_database_error().and_then(|e| e.code()).as_deref() {
        Some("42P05" | "26000") => SessionError::NotSessions { detail: format!("prepared statements of other clients seen ({error})") },
        _ => SessionError::Database(error),
    }
}
