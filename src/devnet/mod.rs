//! The local development stack. Development only: production points payrail at its own
//! PostgreSQL and real chain endpoints.

pub mod anvil;
pub mod merchant;
pub mod pay;
pub mod postgres;
pub mod regtest;

pub use postgres::{EphemeralPostgres, PostgresError};
