//! The Bitcoin rail: deposit addresses derived from each merchant's watch-only output descriptor,
//! BIP21 payment requests, and the watcher that follows the chain through Electrum servers.
//!
//! Invariants:
//! - payrail holds no Bitcoin private key: descriptors with one are refused.
//! - Every invoice gets a fresh child index of its merchant's descriptor, allocated in the
//!   invoice's own transaction; an index (and its address) is never reused or recycled.
//! - Only [`electrum`] talks to Electrum servers; everything else here is pure or talks to
//!   PostgreSQL.

pub mod allocate;
pub mod descriptor;
pub mod electrum;
pub mod uri;
pub mod watcher;

pub use allocate::{
    allocate, bitcoin_settings, set_descriptor, AddressAllocation, AllocationError, BitcoinSettings, SetDescriptor, GAP_LIMIT_DEFAULT,
};
pub use descriptor::{network_of, DescriptorError, WatchDescriptor};
pub use uri::payment_uri;
pub use watcher::{BitcoinSource, BitcoinWatcher};

/// What the Bitcoin follower fails with (one error for every chain family).
pub type WatchError = crate::chain::follower::FollowError;
