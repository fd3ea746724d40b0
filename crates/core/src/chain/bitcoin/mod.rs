//! Bitcoin helpers that need no node: BIP21 payment URIs and watch-only descriptors.

pub mod descriptor;
pub mod uri;

pub use descriptor::{network_of, DescriptorError, WatchDescriptor};
pub use uri::payment_uri;
