//! The EVM rail: deposit addresses from the `ForwarderFactory`, and the watcher shared by every EVM
//! chain (Ethereum, Polygon, BSC, Arbitrum, Optimism), generic over the chain's configuration.

pub mod client;
pub mod contracts;
pub mod heads;
pub mod nonce;
pub mod sweep;
pub mod watcher;

pub use client::EvmClient;
pub use payrail_core::chain::evm::{address, deposit_address, deposit_salt, payment_uri, uri};
pub use sweep::{SweepError, SweepPass, Sweeper};
pub use watcher::{EvmSource, EvmWatcher};
