//! payrail's vocabulary and pure rules: exact money, ledger entries, invoice states and the payment
//! plans, reorg bookkeeping, ids and the clock. Nothing here touches a database, a socket or a
//! runtime, so every rule is testable as a plain function; the stores and adapters above apply it.
// Unit tests may cast small generated numbers; the library's own code is checked without cfg(test).
#![cfg_attr(test, allow(clippy::as_conversions))]

pub mod access;
pub mod chain;
pub mod clock;
pub mod credits;
pub mod csv;
pub mod ids;
pub mod lang;
pub mod ledger;
pub mod markets;
pub mod metrics;
pub mod money;
pub mod payment;
pub mod subscription;
pub mod uri;
