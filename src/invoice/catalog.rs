//! The assets invoices can be paid in: every native coin and token of the configured chains, with
//! the symbol that prices it and its decimals.

use crate::money::{AssetId, ChainId};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogAsset {
    pub asset: AssetId,
    pub symbol: String,
    pub decimals: u8,
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
