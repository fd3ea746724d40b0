//! Reconciliation: the chain (and the card processor) re-read independently and compared with the
//! ledger.
//!
//! The chain side never comes from the watcher's tables: deposits are read from the chain for
//! payrail's own deposit addresses, payouts from the batcher's `PayoutSent` events, sweeps from the
//! factory's `Swept` events. The ledger side is every entry on the chain's asset account. Each item
//! lands in one category — matched, missing in the ledger, missing on chain, amount mismatch,
//! orphaned, unswept — and per-asset totals of money in and out must agree for a healthy system.
//! Scans run in chunks that commit with the run's progress, so a long run resumes where it stopped.
//!
//! Sources: EVM chains ([`evm`]) and Bitcoin ([`bitcoin`]) through [`Reconciler`] by block range;
//! the card processor ([`stripe`]) through [`reconcile_stripe`] by time range.

use payrail_chains as chain;
use payrail_config as config;
use payrail_core::{ids, money};
use payrail_payments::invoice;

pub mod bitcoin;
pub mod compare;
pub mod error;
pub mod evm;
pub mod ledger_side;
pub mod model;
pub mod run;
pub mod store;
pub mod stripe;

pub use bitcoin::BitcoinReader;
pub use error::{ReconcileError, Result};
pub use model::{AssetTotals, Category, ChainObservation, Item, ItemKind, LedgerMovement, Report};
pub use run::{Reconciler, ScanProgress, CHUNK_BLOCKS};
pub use stripe::reconcile_stripe;
