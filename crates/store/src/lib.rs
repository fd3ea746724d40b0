//! PostgreSQL: the pool and migrations, job leadership and transient-error handling ([`db`]), the
//! double-entry ledger store and its exports ([`ledger`]), secrets sealed at rest ([`secrets`]), and
//! the tables every money-moving crate writes beside its entries: the webhook [`outbox`] and the
//! merchants' revenue [`splits`] rules.

pub mod db;
pub mod invoice_links;
pub mod ledger;
pub mod outbox;
pub mod page;
pub mod secrets;
pub mod splits;

use payrail_core::{csv, ids, metrics};
