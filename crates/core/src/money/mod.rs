//! Money: exact amounts, chain and asset identifiers, fiat currencies, rates, and the
//! conversions between them. Pure code: no I/O, no clocks, no floats.
//!
//! Invariants:
//! - Amounts are unsigned integers of an asset's smallest unit (`Amount`, a `U256` with
//!   checked arithmetic); decimal strings appear only at the edges and are parsed exactly.
//! - Rates are exact positive decimals; every conversion names its `Rounding`.
//! - Identifiers follow the standards: CAIP-2 chains, CAIP-19 assets, ISO 4217 currencies,
//!   each with one canonical spelling so they can key ledger accounts.
//! - Every type here is a string on the wire and is re-validated when deserialized.

pub mod amount;
pub mod asset;
pub mod chain;
pub mod convert;
mod decimal;
pub mod display;
pub mod fiat;
pub mod pair;
pub mod rate;
mod serde_str;

pub use amount::{Amount, AmountError};
pub use asset::{AssetId, AssetIdError};
pub use chain::{ChainId, ChainIdError};
pub use convert::{
    asset_to_fiat, fiat_to_asset, mul_div, split_bps, ConvertError, Rounding, Split,
};
pub use fiat::{Fiat, FiatError};
pub use pair::{Pair, PairError, SYMBOL_LEN_MAX};
pub use rate::{Rate, RateError};

/// One whole in basis points: 10_000 bps = 100 %.
pub const BPS_WHOLE: u32 = 10_000;
