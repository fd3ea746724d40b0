//! EVM helpers that need no node: EIP-681 payment URIs and CREATE2 deposit addresses.

pub mod address;
pub mod uri;

pub use address::{deposit_address, deposit_salt};
pub use uri::payment_uri;
