//! Shared setup for integration tests. Each `#[sqlx::test]` gets a fresh database with the
//! migrations applied, on the PostgreSQL named by `DATABASE_URL`.
#![allow(dead_code)]

pub mod evm;

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

use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use payrail::api::AppState;
use payrail::clock::ManualClock;
use payrail::config::Config;
use sqlx::PgPool;

/// The shipped configuration (`config.toml` and `chains/`), as the daemon loads it.
pub fn repo_config() -> Config {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
    Config::from_str_with_env(&std::fs::read_to_string(&path).expect("config.toml"), &path, &[]).expect("config loads")
}

pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).single().expect("valid time")
}

/// Application state over `pool` with a clock that only moves when the test says so.
pub fn state_with_clock(pool: PgPool) -> (AppState, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(t0()));
    (payrail::app::state(&repo_config(), pool, clock.clone()), clock)
}

/// The dev stack's test tokens (config.toml replaces the mainnet contracts with them).
pub const USDC_POLYGON: &str = "eip155:137/erc20:0xe7f1725e7734ce288f8367e1bb143e90bb3f0512";
pub const USDT_POLYGON: &str = "eip155:137/erc20:0x9fe46736679d2d9a65f0992f2272de9f3c7fa6e0";
/// Bitcoin on the dev stack: config.toml follows regtest.
pub const BTC: &str = "bip122:0f9188f13cb7b2c71f2a335e3a4fc328/slip44:0";
