//! Chain watchers: one task per configured chain turns what the chain says into observed payments.
//!
//! Every watcher follows one discipline. A batch of blocks is processed in one database transaction
//! that writes the observed payments, the ledger entries they cause, the outbox rows and the chain
//! cursor together, so a crash at any point replays without double-crediting and without losing a
//! payment. Recent block hashes are kept; a parent-hash mismatch rolls back to the fork point and
//! orphans the payments of the dropped blocks. A reorg deeper than the stored window stops the
//! watcher with an alert: it is never guessed at.

pub mod bitcoin;
pub mod cursor;
pub mod evm;
pub mod follower;
pub mod health;
pub mod pricing;
pub mod reorg;
pub mod source;
pub mod store;
pub mod summary;

pub use follower::{ChainEvent, FollowError, Follower};
pub use source::ChainSource;
