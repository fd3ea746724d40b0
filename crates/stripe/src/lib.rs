//! The card rail: Stripe as the fallback for payers who cannot or will not pay on a chain.
//!
//! Flow: the payer chooses card on the checkout page → [`attempt::start`] creates a PaymentIntent
//! (test cards, confirmed at once) or a Checkout Session (Stripe's page) for what is still due, with
//! the invoice id in its metadata and an idempotency key derived from the invoice → Stripe calls
//! `POST /v1/stripe/webhook` → [`webhook::receive`] verifies the signature and credits the invoice.
//!
//! Invariants:
//! - Money moves in the ledger only on a verified webhook (or, for refunds the merchant asks for,
//!   on Stripe's answer): `assets:stripe:{currency}` is debited and the merchant credited through
//!   [`crate::invoice::apply_card_payment`], the same path and split rules as a chain payment, in one
//!   transaction with the payment row, the invoice status and the outbox row.
//! - Every verified event is stored once by its id, whatever it is about; an event that names no
//!   known invoice is kept for review. A copy of a delivery already accepted (same event, same
//!   signed timestamp) is refused.
//! - Refunds and disputes reverse the payment's entry in proportion ([`reversal`]), driven by the
//!   cumulative amount returned, so reports in any order and from either path post each cent once.
//! - The secret key and the webhook secret are never logged; only [`client`] sends the key.

use payrail_config as config;
use payrail_core::{ids, metrics, money};
use payrail_payments::invoice;
use payrail_store::ledger;

pub mod attempt;
pub mod client;
pub mod error;
pub mod event;
pub mod refund;
pub mod renewal;
pub mod returns;
pub mod settlement;
pub mod webhook;

pub use attempt::{start as start_card_payment, CardAttemptView, TEST_CARDS};
pub use client::{StripeClient, STRIPE_API_VERSION};
pub use error::{Result, StripeError};
pub use refund::{refund_invoice, RefundRequest, RefundView, RefundsView};
pub use webhook::{receive, Received, Refusal};

use crate::config::{CardCheckout, Config, StripeConfig};

/// The metadata key that names the invoice on PaymentIntents, sessions and refunds.
pub const METADATA_INVOICE_ID: &str = "invoice_id";
/// The metadata key that names the card attempt.
pub const METADATA_ATTEMPT_ID: &str = "payrail_attempt_id";
/// The header Stripe signs webhooks with.
pub const SIGNATURE_HEADER: &str = "Stripe-Signature";

/// The configured card rail. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CardRail {
    pub client: StripeClient,
    pub config: StripeConfig,
    /// Base of the links Stripe sends payers back to (`{public_url}/pay/{id}`).
    pub public_url: String,
}

impl CardRail {
    /// The rail when the configuration has Stripe's secrets, else `None`.
    pub fn from_config(config: &Config) -> Result<Option<Self>> {
        let rail = StripeClient::new(&config.stripe)?.map(|client| Self {
            client,
            config: config.stripe.clone(),
            public_url: config.server.public_url.clone(),
        });
        if rail.is_some() {
            crate::metrics::gauge(
                "payrail_rail_healthy",
                "Whether a payment rail is healthy (1) or not (0); chains by CAIP-2 id, card as \"card\".",
                &[("rail", "card")],
                1,
            );
        }
        Ok(rail)
    }

    /// Whether the checkout page offers Stripe's test cards (test mode) or Stripe's own page.
    pub fn uses_test_cards(&self) -> bool {
        self.config.checkout == CardCheckout::TestCards
    }
}
