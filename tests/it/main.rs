//! payrail's integration tests, in one binary: each module drives the real parts — PostgreSQL,
//! anvil, the regtest Electrum node, localstripe, the `payrail` binary — over real sockets. One
//! binary links the library once instead of once per file. Run one area with a filter:
//! `cargo test --test it evm::`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::as_conversions, reason = "test and benchmark code: a failure is a loud stop")]

#[path = "../common/mod.rs"]
mod common;

mod api;
mod bitcoin;
mod checkout;
mod cli;
mod console;
mod contracts;
mod crash;
mod creators;
mod credits;
mod evm;
mod invoice;
mod leader;
mod ledger;
mod ledger_export;
mod pagination;
mod payouts;
mod rates;
mod reconcile;
mod reconcile_bitcoin;
mod reconcile_stripe;
mod regtest;
mod replicas;
mod security;
mod refunds;
mod settlements;
mod stripe;
mod subscriptions;
mod webhooks;
