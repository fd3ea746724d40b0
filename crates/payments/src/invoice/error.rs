//! Errors of the invoice module. Variants carry the failing key.

use thiserror::Error;

use crate::ledger::LedgerError;

use super::plan::PlanError;

pub type Result<T, E = InvoiceError> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum InvoiceError {
    #[error("invoice {id} not found")]
    NotFound { id: String },
    #[error("payment {id} not found")]
    PaymentNotFound { id: String },
    #[error("refund {id} not found")]
    RefundNotFound { id: String },
    /// The merchant asked for what the facts do not allow; `code` names the rule.
    #[error("{reason}")]
    Refused { code: &'static str, reason: String },
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("currency {code:?} is not supported")]
    UnsupportedCurrency { code: String },
    #[error("asset {asset} is not accepted here")]
    UnsupportedAsset { asset: String },
    #[error("no rate for {asset}: {reason}")]
    RateUnavailable { asset: String, reason: String },
    #[error("idempotency key {key:?} was used for a different request")]
    IdempotencyConflict { key: String },
    #[error("payment {tx_ref} was seen before with {stored}, now reported with {reported}")]
    PaymentMismatch { tx_ref: String, stored: String, reported: String },
    #[error("invoice {id} is {status} and cannot be {action}")]
    WrongState { id: String, status: String, action: &'static str },
    #[error("stored value {value:?} in {column} is not valid")]
    Corrupt { column: &'static str, value: String },
    /// A plan's facts were not loaded as it asked: a programming error.
    #[error(transparent)]
    Plan(PlanError),
    /// What a paid invoice delivers (a credit pack's credits) could not be granted or reversed.
    #[error(transparent)]
    Credits(#[from] payrail_credits::CreditsError),
    #[error(transparent)]
    Subscriptions(#[from] payrail_subscriptions::SubscriptionsError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl InvoiceError {
    /// Whether the same write may succeed when tried again: the database (directly, or under the
    /// ledger, the credits or the subscriptions an invoice's status change carries) was out of reach
    /// or lost a race. A chain watcher retries such a step; it stops only on the others.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Database(_) => true,
            Self::Ledger(e) => e.is_retryable(),
            Self::Credits(e) => e.is_retryable(),
            Self::Subscriptions(e) => e.is_retryable(),
            _ => false,
        }
    }
}

impl From<payrail_core::payment::split::SplitInvalid> for InvoiceError {
    fn from(error: payrail_core::payment::split::SplitInvalid) -> Self {
        Self::Invalid { field: "splits", reason: error.0 }
    }
}

/// A plan's errors keep the variants (and messages) the invoice module has always reported.
impl From<PlanError> for InvoiceError {
    fn from(error: PlanError) -> Self {
        match error {
            PlanError::Invalid { field, reason } => Self::Invalid { field, reason },
            PlanError::Mismatch { tx_ref, stored, reported } => Self::PaymentMismatch { tx_ref, stored, reported },
            PlanError::Corrupt { column, value } => Self::Corrupt { column, value },
            PlanError::Refused { code, reason } => Self::Refused { code, reason },
            other @ PlanError::NotLoaded { .. } => Self::Plan(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use payrail_credits::CreditsError;
    use payrail_subscriptions::SubscriptionsError;

    use super::InvoiceError;

    fn gone() -> sqlx::Error {
        sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection reset"))
    }

    /// A payment's commit that failed inside the credits or the subscription period it carries
    /// because the database went away is retried like any other lost connection (it used to stop the
    /// chain watcher for good); a refusal is not.
    #[test]
    fn an_outage_under_the_status_hooks_is_retryable_and_a_refusal_is_not() {
        assert!(InvoiceError::Credits(CreditsError::Database(gone())).is_retryable());
        assert!(InvoiceError::Subscriptions(SubscriptionsError::Database(gone())).is_retryable());
        assert!(InvoiceError::Subscriptions(SubscriptionsError::Credits(CreditsError::Database(gone()))).is_retryable());
        assert!(InvoiceError::Database(gone()).is_retryable());
        assert!(!InvoiceError::Credits(CreditsError::KeyReused { key: "k".to_owned() }).is_retryable());
        assert!(!InvoiceError::Subscriptions(SubscriptionsError::Refused("paused".to_owned())).is_retryable());
    }
}
