//! What can go wrong with a payout, and whether trying again makes sense.

use thiserror::Error;

use crate::ledger::LedgerError;

pub type Result<T, E = PayoutError> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum PayoutError {
    #[error("chain {chain:?} is not configured for payouts (no payout_batcher)")]
    ChainNotPayable { chain: String },
    #[error("asset {asset:?} is not paid out on chain {chain}")]
    AssetNotPayable { chain: String, asset: String },
    #[error("payout {id} not found")]
    NotFound { id: String },
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// A request the balances or settings do not allow; `code` names the rule.
    #[error("{reason}")]
    Refused { code: &'static str, reason: String },
    #[error("invalid hot wallet key")]
    Key,
    #[error("chain {chain}: no endpoint answers: {message}")]
    Rpc { chain: String, message: String },
    #[error("payout {id}: {message}")]
    Send { id: String, message: String },
    #[error("payout {id}: the mined transaction {tx_hash} does not match the batch: {message}")]
    ReceiptMismatch { id: String, tx_hash: String, message: String },
    #[error("value {value:?} read from the database is invalid")]
    Corrupt { value: String },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// A crypto refund's own rules (its state, the merchant's balance for a difference).
    #[error(transparent)]
    Refund(#[from] payrail_payments::invoice::InvoiceError),
    /// Reading the merchant's credit currencies for what its credits earned others.
    #[error(transparent)]
    Credits(#[from] payrail_credits::CreditsError),
    /// The executor's lock: not taken, or its session ended (another process may execute now).
    #[error(transparent)]
    Leader(#[from] crate::db::leader::LeaderError),
}

impl PayoutError {
    /// Endpoint and database troubles pass; configuration and mismatches need a person.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Rpc { .. } | Self::Send { .. } | Self::Database(_) => true,
            Self::Ledger(error) => error.is_retryable(),
            Self::Credits(payrail_credits::CreditsError::Database(_)) => true,
            _ => false,
        }
    }
}
