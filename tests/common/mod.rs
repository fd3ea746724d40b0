//! Shared setup for integration tests. Each `#[sqlx::test]` gets a fresh database with the
//! migrations applied, on the PostgreSQL named by `DATABASE_URL`.
#![allow(dead_code)]

use payrail::ledger::{AccountCode, NewEntry};
use payrail::money::Amount;

pub const USD: &str = "iso4217:USD";

pub fn amount(v: u64) -> Amount {
    Amount::from_u64(v)
}

/// An entry moving `value` of `asset` from `from` (debited) to `to` (credited).
pub fn transfer(key: &str, from: AccountCode, to: AccountCode, asset: &str, value: u64) -> NewEntry {
    NewEntry::new(key, "test").debit(from, asset, amount(value)).credit(to, asset, amount(value))
}
