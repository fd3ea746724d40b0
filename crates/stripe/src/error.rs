//! Errors of the card rail. Variants carry the failing key (invoice, PaymentIntent, endpoint) and
//! [`StripeError::is_retryable`] says whether the same call may succeed later.

use thiserror::Error;

use crate::invoice::InvoiceError;
use crate::ledger::LedgerError;

use super::client::PaymentIntent;

pub type Result<T, E = StripeError> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum StripeError {
    /// No answer: the connection failed or timed out. The request may or may not have arrived.
    #[error("stripe did not answer {endpoint}: {reason}")]
    Transport { endpoint: String, reason: String },
    /// Stripe answered with an error object.
    #[error("stripe refused {endpoint} ({status}): {message}")]
    Api {
        endpoint: String,
        status: u16,
        code: Option<String>,
        decline_code: Option<String>,
        message: String,
        /// A card error on a PaymentIntent carries the PaymentIntent as it now stands.
        payment_intent: Option<Box<PaymentIntent>>,
    },
    #[error("stripe's answer to {endpoint} cannot be read: {reason}")]
    Decode { endpoint: String, reason: String },
    #[error("card payments are not configured")]
    NotConfigured,
    #[error("invoice {invoice_id} cannot be paid by card: {reason}")]
    CardUnavailable { invoice_id: String, reason: String },
    #[error("a card payment of invoice {invoice_id} is already under way or done")]
    AttemptInProgress { invoice_id: String },
    #[error("invoice {invoice_id} has had {attempts} card attempts, the most it may have")]
    AttemptsExhausted { invoice_id: String, attempts: i64 },
    #[error("invoice {invoice_id} takes its next card attempt in {wait_s} s")]
    AttemptCooldown { invoice_id: String, wait_s: u64 },
    #[error("invoice {invoice_id} has no card payment to refund")]
    NothingToRefund { invoice_id: String },
    #[error("refund of invoice {invoice_id} refused: {reason}")]
    RefundRefused { invoice_id: String, reason: String },
    #[error("card settlement {id} not found")]
    SettlementNotFound { id: String },
    #[error("card settlement refused: {reason}")]
    SettlementInvalid { reason: String },
    #[error("the card balance in {currency} does not cover it: {available} available")]
    SettlementFunds { currency: String, available: String },
    #[error(transparent)]
    Invoice(#[from] InvoiceError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl StripeError {
    /// Transport failures, rate limits, Stripe's own failures and lost database connections may
    /// succeed when retried (with the same idempotency key); refusals never will.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Transport { .. } => true,
            Self::Api { status, .. } => *status == 429 || *status >= 500,
            Self::Ledger(e) => e.is_retryable(),
            Self::Invoice(
                InvoiceError::Database(_)
                | InvoiceError::Credits(payrail_credits::CreditsError::Database(_))
                | InvoiceError::Subscriptions(payrail_subscriptions::SubscriptionsError::Database(_)),
            )
            | Self::Database(_) => true,
            _ => false,
        }
    }
}
