//! The ledger's vocabulary: account codes, journal entries and their postings, and the rules an
//! entry must meet (balanced per asset, no zero postings) before it is written.

pub mod account;
pub mod entry;
pub mod error;
pub mod reversal;
pub mod signed;

pub use account::{AccountCode, AccountType};
pub use entry::{NewEntry, Posting, Side, POSTINGS_PER_ENTRY_MAX};
pub use error::EntryError;
pub use reversal::{returned_shares, reversal_delta};
pub use signed::SignedAmount;
