//! Customers and credits: the merchant's end users, the credit currencies it issues to them, and
//! every movement of those credits as a balanced, idempotent ledger entry (see
//! [`payrail_core::credits`] for the chart of accounts and the spending order).
//!
//! Invariants:
//! - A customer's balance is the sum of its lots' ledger accounts, each guarded non-negative: no
//!   spend, transfer or expiry can overdraw, whatever runs at once. Movements of one customer are
//!   also serialised on its row, so the spending order is the one planned.
//! - Every movement carries an idempotency key (the caller's `Idempotency-Key`, or derived from
//!   what caused it): its ledger entry and history rows are written once; a retry answers what was
//!   done.
//! - A movement, its ledger entry, its history rows and its webhook events commit together.

pub mod currency;
pub mod customer;
pub mod error;
pub mod limits;
pub mod movement;
pub mod pack;
pub mod promo;
pub mod purchase;
pub mod view;

use payrail_core::{ids, money};
use payrail_store::ledger;

pub use error::{CreditsError, Result};
