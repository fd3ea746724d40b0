//! Errors of customers and credits.

use payrail_store::ledger::LedgerError;

#[derive(Debug, thiserror::Error)]
pub enum CreditsError {
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    #[error("{what} {id} already exists")]
    Exists { what: &'static str, id: String },
    /// The customer's spendable credits do not cover the movement.
    #[error("insufficient credits: {available} {currency} available")]
    Insufficient { currency: String, available: String },
    /// A promo code that exists but may not be used here and now.
    #[error("promo code {code:?} cannot be used: {reason}")]
    PromoRefused { code: String, reason: String },
    /// A per-customer limit of the merchant would be passed.
    #[error("the customer's {limit} limit would be passed: {remaining} {currency} remain")]
    LimitExceeded { limit: &'static str, currency: String, remaining: String },
    /// The idempotency key was used for a different movement.
    #[error("idempotency key {key:?} was already used for another movement")]
    KeyReused { key: String },
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl CreditsError {
    /// Whether the same movement may succeed when tried again: the database was out of reach or a
    /// race was lost. A watcher committing a payment whose credits failed this way retries the step
    /// instead of stopping.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Database(e) => payrail_store::db::is_retryable(e),
            Self::Ledger(e) => e.is_retryable(),
            _ => false,
        }
    }
}

pub type Result<T, E = CreditsError> = std::result::Result<T, E>;

pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> CreditsError {
    CreditsError::Invalid { field, reason: reason.into() }
}
