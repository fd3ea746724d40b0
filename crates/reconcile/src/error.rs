//! What can stop a reconciliation.

use thiserror::Error;

pub type Result<T, E = ReconcileError> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum ReconcileError {
    #[error("chain {chain:?} is not configured")]
    UnknownChain { chain: String },
    #[error("chain {chain}: {what} is not supported by this reconciliation")]
    Unsupported { chain: String, what: &'static str },
    #[error("invalid range: {message}")]
    Range { message: String },
    #[error("reconciliation {id} not found")]
    NotFound { id: String },
    #[error("chain {chain}: {message}")]
    Chain { chain: String, message: String },
    #[error("value {value:?} read from the database is invalid")]
    Corrupt { value: String },
    /// The card processor failed or refused a read; `retryable` says whether a later try may work.
    #[error("{processor}: {message}")]
    Processor { processor: &'static str, message: String, retryable: bool },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl ReconcileError {
    /// Node, processor and database troubles pass; a bad range or chain will not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Chain { .. } | Self::Database(_) => true,
            Self::Processor { retryable, .. } => *retryable,
            _ => false,
        }
    }
}
