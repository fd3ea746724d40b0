//! payrail: a payment daemon. Watchers observe chains, payments are matched to invoices, a
//! double-entry ledger in PostgreSQL is credited exactly once, and merchants read it all over HTTP.
// Unit tests may cast small generated numbers; the daemon's own code is checked without cfg(test).
#![cfg_attr(test, allow(clippy::as_conversions))]

pub mod api;
pub mod app;
pub mod chain;
pub mod clock;
pub mod config;
pub mod creator;
pub mod csv;

pub mod db;
pub mod devnet;
pub mod ids;
pub mod invoice;
pub mod ledger;
pub mod merchant;
pub mod metrics;
pub mod money;
pub mod payout;
pub mod rates;
pub mod reconcile;
pub mod secrets;
pub mod stripe;
pub mod webhook;
