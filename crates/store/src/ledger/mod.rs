//! The double-entry ledger.
//!
//! Entries are append-only and balance per asset; balances move in the same transaction as the
//! postings that cause them; accounts that may not go negative are guarded. Each of these is
//! enforced by PostgreSQL (see `migrations/0001_ledger.sql`), and the pure checks in [`entry`] catch
//! the same mistakes before a round trip. Corrections are new entries that reverse old ones.

pub mod error;
pub mod export;
pub mod statement;
pub mod store;

pub use error::{LedgerError, Result};
pub use statement::{statement, statement_csv, StatementLine, StatementRange, STATEMENT_PAGE_LIMIT_MAX};
pub use payrail_core::ledger::{
    account, entry, returned_shares, reversal, reversal_delta, signed, AccountCode, AccountType, EntryError, NewEntry, Posting, Side,
    SignedAmount,
    POSTINGS_PER_ENTRY_MAX,
};
pub use store::{Entry, Ledger, Posted};
