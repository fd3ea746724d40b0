//! Errors of the ledger. Variants carry the failing key; `is_retryable` says whether trying the same
//! entry again can succeed.

use thiserror::Error;

pub type Result<T, E = LedgerError> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum LedgerError {
    #[error(transparent)]
    Invalid(#[from] payrail_core::ledger::EntryError),
    #[error("idempotency key {key:?} was already used for a different entry")]
    IdempotencyConflict { key: String },
    #[error("entry {key:?} refused: {message}")]
    InsufficientBalance { key: String, message: String },
    #[error("journal entry {entry_id} not found")]
    EntryNotFound { entry_id: i64 },
    #[error("journal entry {entry_id} was already reversed")]
    AlreadyReversed { entry_id: i64 },
    #[error("amount {value:?} read from the database is not a valid amount")]
    CorruptAmount { value: String },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl LedgerError {
    /// Serialization failures, deadlocks and lost connections may succeed when retried; invalid or
    /// refused entries never will.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Database(e) => crate::db::is_transient(e),
            _ => false,
        }
    }
}
