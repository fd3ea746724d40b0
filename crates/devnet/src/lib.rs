//! The local development stack. Development only: production points payrail at its own
//! PostgreSQL and real chain endpoints.
//!
//! Never run by `payrail serve`: a broken dev stack stops with a message to the developer, so
//! the daemon's no-panic rules are relaxed here.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic, clippy::as_conversions, reason = "development stack only")]

use payrail_chains as chain;
use payrail_config as config;
use payrail_core::{ids, money};

pub mod anvil;
pub mod merchant;
pub mod pay;
pub mod postgres;
pub mod regtest;

pub use postgres::{EphemeralPostgres, PostgresError};
