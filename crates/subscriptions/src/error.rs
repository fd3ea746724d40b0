//! Errors of plans, subscriptions and access.

use payrail_credits::CreditsError;
use payrail_store::ledger::LedgerError;

#[derive(Debug, thiserror::Error)]
pub enum SubscriptionsError {
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    /// The subscription's state does not allow what was asked.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Credits(#[from] CreditsError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl SubscriptionsError {
    /// Whether the same step may succeed when tried again (see `CreditsError::is_retryable`).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Database(e) => payrail_store::db::is_retryable(e),
            Self::Ledger(e) => e.is_retryable(),
            Self::Credits(e) => e.is_retryable(),
            _ => false,
        }
    }
}

pub type Result<T, E = SubscriptionsError> = std::result::Result<T, E>;

pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> SubscriptionsError {
    SubscriptionsError::Invalid { field, reason: reason.into() }
}

impl From<payrail_core::subscription::Refused> for SubscriptionsError {
    fn from(refused: payrail_core::subscription::Refused) -> Self {
        Self::Refused(refused.to_string())
    }
}
