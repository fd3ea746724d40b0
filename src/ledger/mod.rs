//! The double-entry ledger.
//!
//! Entries are append-only and balance per asset; balances move in the same transaction as the
//! postings that cause them; accounts that may not go negative are guarded. Each of these is
//! enforced by PostgreSQL (see `migrations/0001_ledger.sql`), and the pure checks in [`entry`] catch
//! the same mistakes before a round trip. Corrections are new entries that reverse old ones.

pub mod account;
pub mod entry;
pub mod error;
pub mod export;
pub mod signed;
pub mod store;

pub use account::{AccountCode, AccountType};
pub use entry::{NewEntry, Posting, Side, POSTINGS_PER_ENTRY_MAX};
pub use error::{LedgerError, Result};
pub use signed::SignedAmount;
pub use store::{Entry, Ledger, Posted};
