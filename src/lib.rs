//! payrail: a payment daemon. Watchers observe chains, payments are matched to invoices, a
//! double-entry ledger in PostgreSQL is credited exactly once, and merchants read it all over HTTP.
//!
//! The layers are crates under `crates/`, each depending only on those below it:
//! `core` (money, ledger entries, invoice states, pure plans) ← `config` ← `store` (PostgreSQL) ←
//! `rates` ← `credits` ← `subscriptions` ← `payments` (merchants, invoices, creators, webhooks) ← `chains` (followers) ←
//! `payouts`, `stripe` ← `reconcile` ← `api` ← `console`. This crate assembles them into the daemon ([`app`])
//! and the `payrail` command (`src/cli`); `payrail-devnet` is the development stack.
// Unit tests may cast small generated numbers; the daemon's own code is checked without cfg(test).
#![cfg_attr(test, allow(clippy::as_conversions))]

pub mod app;

pub use payrail_api as api;
pub use payrail_console as console;
pub use payrail_chains as chain;
pub use payrail_config as config;
pub use payrail_core::{clock, csv, ids, metrics, money};
pub use payrail_payments::{billing, creator, invoice, merchant, refund, webhook};
pub use payrail_payouts as payout;
pub use payrail_rates as rates;
pub use payrail_reconcile as reconcile;
pub use payrail_store::{db, ledger, page, secrets};
pub use payrail_stripe as stripe;
pub use payrail_credits as credits;
pub use payrail_subscriptions as subscriptions;
