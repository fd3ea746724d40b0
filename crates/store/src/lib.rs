//! PostgreSQL: the pool and migrations, job leadership and transient-error handling ([`db`]), the
//! double-entry ledger store and its exports ([`ledger`]), and secrets sealed at rest ([`secrets`]).

pub mod db;
pub mod ledger;
pub mod secrets;

use payrail_core::{csv, ids, metrics};
