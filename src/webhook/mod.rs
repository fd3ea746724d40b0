//! Events for merchants. Every event is written to the outbox in the same transaction as the change
//! it announces, so an event exists if and only if its change committed.

pub mod outbox;

pub use outbox::{emit, OutboxEvent};
