//! The facts the payment plans read: the invoice as stored, and a payment as a rail observed it.

use chrono::{DateTime, Utc};

use crate::money::{Amount, AssetId, ChainId, Fiat};

use super::plan::BlockRef;
use super::status::InvoiceStatus;

/// The invoice row with its amounts parsed.
#[derive(Debug, Clone)]
pub struct InvoiceRow {
    pub id: String,
    pub merchant_id: String,
    pub status: InvoiceStatus,
    pub currency: Fiat,
    pub amount_minor: Amount,
    pub tolerance_bps: u32,
    pub expires_at: DateTime<Utc>,
}

/// A payment as a watcher (or the card rail) reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedPayment {
    pub invoice_id: String,
    pub chain: ChainId,
    pub asset: AssetId,
    /// Unique per credited output: `{caip2}:{txid}:{vout}` or `{caip2}:{tx hash}:{log index}`.
    pub tx_ref: String,
    pub address: Option<String>,
    pub amount: Amount,
    pub confirmations: u32,
    /// What the chain's policy demands for this payment's value.
    pub confirmations_required: u32,
    /// The block that holds it (`None` for a mempool payment).
    pub block: Option<BlockRef>,
}
