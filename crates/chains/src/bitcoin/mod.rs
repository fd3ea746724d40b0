//! The Bitcoin rail: deposit addresses derived from each merchant's watch-only output descriptor,
//! BIP21 payment requests, and the watcher that follows the chain through Electrum servers.
//!
//! Invariants:
//! - payrail holds no Bitcoin private key: descriptors with one are refused.
//! - Every invoice gets a fresh child index of its merchant's descriptor, allocated in the
//!   invoice's own transaction (`payrail_payments::merchant::bitcoin`); an index (and its address)
//!   is never reused or recycled.
//! - Only [`electrum`] and [`subscriptions`] talk to Electrum servers.

pub mod electrum;
pub mod subscriptions;
pub mod watcher;

pub use payrail_core::chain::bitcoin::{descriptor, network_of, payment_uri, uri, DescriptorError, WatchDescriptor};
pub use watcher::{BitcoinSource, BitcoinWatcher};
