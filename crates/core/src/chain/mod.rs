//! The pure side of following a chain: blocks and their typed hashes, reorg bookkeeping, and the
//! per-family helpers that need no node (payment URIs, EVM deposit addresses, Bitcoin descriptors).

pub mod bitcoin;
pub mod block;
pub mod evm;
pub mod reorg;

pub use block::{Block, BlockHash, BlockId, Observed, RefundSeen};
