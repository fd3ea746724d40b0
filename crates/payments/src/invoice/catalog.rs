//! The assets invoices can be paid in: every native coin and token of the configured chains, with
//! the symbol that prices it and its decimals.

use alloy_primitives::Address;

use crate::money::{AssetId, ChainId};

/// How a chain gives an invoice its deposit address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DepositScheme {
    /// CREATE2 forwarders of a `ForwarderFactory`; the address is computed, nothing is deployed.
    Create2Forwarder { factory: Address, implementation: Address },
    /// The next child index of the merchant's watch-only descriptor, allocated in the invoice's
    /// transaction ([`crate::merchant::bitcoin::allocate`]); a merchant without a descriptor on the
    /// chain is not offered the chain's coin.
    Bitcoin,
}

impl DepositScheme {
    /// The forwarder scheme of `factory`: its implementation is the first contract it created
    /// (contract nonces start at 1).
    pub fn create2_forwarder(factory: Address) -> Self {
        Self::Create2Forwarder { factory, implementation: factory.create(1) }
    }

    /// The deposit address computed from the invoice id alone; `None` for schemes that allocate
    /// addresses in the database.
    pub fn address_for(&self, invoice_id: &str) -> Option<String> {
        match self {
            Self::Create2Forwarder { factory, implementation } => {
                Some(crate::chain::evm::deposit_address(*factory, *implementation, invoice_id).to_checksum(None))
            }
            Self::Bitcoin => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogAsset {
    pub asset: AssetId,
    pub symbol: String,
    pub decimals: u8,
    /// Decimals a payer is asked to send: quotes are rounded up to them.
    pub display_decimals: u8,
    /// `None` while no rail derives addresses for this chain.
    pub deposit: Option<DepositScheme>,
}

impl CatalogAsset {
    pub fn chain(&self) -> &ChainId {
        self.asset.chain()
    }
}

/// Ordered as configured: that order is the order of an invoice's payment options.
#[derive(Debug, Clone, Default)]
pub struct AssetCatalog {
    assets: Vec<CatalogAsset>,
}

impl AssetCatalog {
    pub fn new(assets: Vec<CatalogAsset>) -> Self {
        Self { assets }
    }

    pub fn get(&self, asset: &AssetId) -> Option<&CatalogAsset> {
        self.assets.iter().find(|a| &a.asset == asset)
    }

    pub fn all(&self) -> &[CatalogAsset] {
        &self.assets
    }
}
