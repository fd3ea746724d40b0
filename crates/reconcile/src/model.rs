//! What a reconciliation compares and reports. Plain data: no I/O.

use serde::{Deserialize, Serialize};

use crate::money::Amount;

/// How an item came out of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// On chain and in the ledger, same amount.
    Matched,
    /// On chain, not in the ledger.
    MissingInLedger,
    /// In the ledger, not on chain (or an entry with no chain counterpart at all).
    MissingOnChain,
    /// On both, different amounts.
    AmountMismatch,
    /// A ledger credit whose block is no longer part of the chain.
    Orphaned,
    /// A matched deposit still sitting at its deposit address (not yet swept to the treasury).
    Unswept,
}

impl Category {
    /// Whether the item is an accounting difference. Unswept funds are an operational state: the
    /// ledger is right about them, they just have not moved yet.
    pub fn is_difference(self) -> bool {
        !matches!(self, Self::Matched | Self::Unswept)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Matched => "matched",
            Self::MissingInLedger => "missing_in_ledger",
            Self::MissingOnChain => "missing_on_chain",
            Self::AmountMismatch => "amount_mismatch",
            Self::Orphaned => "orphaned",
            Self::Unswept => "unswept",
        }
    }
}

/// What moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ItemKind {
    /// Money in: a payment to a deposit address.
    Deposit,
    /// Money out: a payout through the batcher, or a card settlement's payout to the bank.
    Payout,
    /// Money moved from a deposit address to the treasury.
    Sweep,
    /// A ledger entry on the chain's asset account that names nothing on chain.
    Manual,
    /// A card charge (Stripe).
    Charge,
    /// A card refund (Stripe).
    Refund,
}

impl ItemKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deposit => "deposit",
            Self::Payout => "payout",
            Self::Sweep => "sweep",
            Self::Manual => "manual",
            Self::Charge => "charge",
            Self::Refund => "refund",
        }
    }
}

/// Something the chain itself says happened, read without the watcher's tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainObservation {
    pub kind: ItemKind,
    /// The key the ledger uses for it: `{caip2}:{tx}:{log index | vout | native}` for a deposit,
    /// the batch's bytes32 id for a payout, `{caip2}:{tx}:{log index}` for a sweep.
    pub reference: String,
    pub tx_hash: String,
    pub block_number: u64,
    pub asset: String,
    pub address: String,
    pub amount: Amount,
}

/// A ledger entry on the chain's asset account, as the comparison needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerMovement {
    pub kind: ItemKind,
    /// Same key space as [`ChainObservation::reference`].
    pub reference: String,
    pub entry_id: i64,
    pub idempotency_key: String,
    pub asset: String,
    /// Magnitude: money in for deposits, money out for payouts.
    pub amount: Amount,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Item {
    pub category: Category,
    pub kind: ItemKind,
    pub reference: String,
    pub asset: String,
    pub address: Option<String>,
    pub tx_hash: Option<String>,
    pub block_number: Option<u64>,
    /// What the chain says, in the asset's smallest unit.
    pub chain_amount_minor: Option<String>,
    /// What the ledger says.
    pub ledger_amount_minor: Option<String>,
    pub entry_id: Option<i64>,
    pub detail: Option<String>,
}

/// Per asset: money in and out as the chain and the ledger see it. A healthy system shows zero
/// differences.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AssetTotals {
    pub asset: String,
    pub chain_in_minor: String,
    pub ledger_in_minor: String,
    /// chain in − ledger in, signed.
    pub in_difference_minor: String,
    pub chain_out_minor: String,
    pub ledger_out_minor: String,
    /// chain out − ledger out, signed.
    pub out_difference_minor: String,
}

/// A finished comparison.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Report {
    pub run_id: String,
    /// CAIP-2.
    pub chain: String,
    pub from_block: u64,
    pub to_block: u64,
    /// Items by category.
    pub counts: std::collections::BTreeMap<String, usize>,
    pub totals: Vec<AssetTotals>,
    /// Number of items that are accounting differences (not matched, not unswept).
    pub differences: usize,
    pub ok: bool,
    pub items: Vec<Item>,
}
