//! Blocks as every chain family sees them: a typed hash, a height, a parent; and what a scan of
//! watched addresses found. The follower stores and compares these; the reorg rules read them.

use std::collections::HashSet;
use std::fmt::{Debug, Display};
use std::hash::Hash;

use crate::payment::ObservedPayment;

/// A block hash as its chain family types it; stored as text (`chain_blocks`, `chain_cursors`,
/// `payments.block_hash`) in the family's usual spelling.
pub trait BlockHash: Copy + Eq + Hash + Debug + Display + Send + Sync + 'static {
    fn to_stored(&self) -> String;
    fn from_stored(text: &str) -> Option<Self>;
}

impl BlockHash for bitcoin::BlockHash {
    fn to_stored(&self) -> String {
        self.to_string()
    }

    fn from_stored(text: &str) -> Option<Self> {
        text.parse().ok()
    }
}

impl BlockHash for alloy_primitives::B256 {
    fn to_stored(&self) -> String {
        format!("{self:#x}")
    }

    fn from_stored(text: &str) -> Option<Self> {
        text.parse().ok()
    }
}

/// A block by height and hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockId<H> {
    pub height: u64,
    pub hash: H,
}

/// A block with its parent's hash, as the follower checks and stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block<H> {
    pub height: u64,
    pub hash: H,
    pub parent: H,
}

impl<H: Copy> Block<H> {
    pub fn id(&self) -> BlockId<H> {
        BlockId { height: self.height, hash: self.hash }
    }
}

/// What a scan found.
#[derive(Debug, Default)]
pub struct Observed {
    pub payments: Vec<ObservedPayment>,
    /// Addresses whose every payment this scan read: a payment to one of them that was seen
    /// before and is not among `payments` has vanished (replaced, double-spent).
    pub complete: HashSet<String>,
    /// Payments to refund addresses the merchant pays (Bitcoin), with their depth.
    pub refunds: Vec<RefundSeen>,
}

/// A transaction paying a watched refund address at least the refund's amount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundSeen {
    pub refund_id: String,
    pub txid: String,
    /// 0 in the mempool.
    pub confirmations: u64,
}

