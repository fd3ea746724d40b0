//! Plans, subscriptions and access.
//!
//! A plan is sold by the period; its terms are versioned, and a subscription keeps the version it
//! was sold until it changes plan. A subscription's life is the state machine of
//! [`payrail_core::subscription`]; its periods follow each other from an anchor, never drifting.
//! Each period after a trial is paid by an invoice of its own (on any rail): the invoice store
//! calls [`period::on_invoice_status`] in the transaction that makes the invoice paid, so a
//! period is paid together with its invoice or not at all. The scheduler ([`schedule`]) moves
//! subscriptions through time — period ends, grace, cancellations at period end — and says which
//! periods need an invoice; the payments layer makes them (its invoices need prices and addresses
//! this crate does not know) and attaches each to its period with [`schedule::attach`].
//!
//! Invariants:
//! - One row per (subscription, period): a period is billed, paid and credited once, whatever the
//!   replicas and restarts (the invoice's idempotency key is derived from the period).
//! - A period's credits are granted once (`credits_granted`, in the transaction that starts it).
//! - Access: an unlock charges its credits once per (customer, resource).

pub mod access;
pub mod error;
pub mod period;
pub mod plan;
pub mod report;
pub mod schedule;
pub mod subscription;

use payrail_core::{ids, money};

pub use error::{Result, SubscriptionsError};
