//! Payments in: merchants and their keys, invoices and how payments apply to them (the stores
//! around the pure core in `payrail_core::payment`), creators and revenue splits, and the webhook
//! outbox that announces every change.

pub mod billing;
pub mod creator;
pub mod invoice;
pub mod merchant;
pub mod refund;
pub mod webhook;

use payrail_core::{chain, clock, ids, lang, metrics, money};
use payrail_rates as rates;
use payrail_store::{db, ledger, secrets};
