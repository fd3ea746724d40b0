//! How the console writes rails, assets and amounts: whole units with the asset's symbol, chains by
//! name, the card rail as "Card". Amounts stay exact decimal strings throughout.

use payrail_api::AppState;
use payrail_core::money::AssetId;
use payrail_core::payment::plan::CARD_RAIL;

use crate::page::units;

/// `eip155:137` → "Polygon", the card rail → "Card".
pub fn rail(chain: &str) -> String {
    if chain == CARD_RAIL {
        "Card".to_owned()
    } else {
        payrail_api::checkout::chain_name(chain).to_owned()
    }
}

/// An asset's symbol (`USDC`), or the id when it is not configured.
pub fn symbol(state: &AppState, asset: &str) -> String {
    if let Some(code) = asset.strip_prefix("iso4217:") {
        return code.to_owned();
    }
    asset.parse::<AssetId>().ok().and_then(|id| state.catalog.get(&id).map(|a| a.symbol.clone())).unwrap_or_else(|| asset.to_owned())
}

/// "USDC on Polygon", "USD by card".
pub fn asset(state: &AppState, asset: &str) -> String {
    if let Some(code) = asset.strip_prefix("iso4217:") {
        return format!("{code} by card");
    }
    match asset.parse::<AssetId>() {
        Ok(id) => format!("{} on {}", symbol(state, asset), payrail_api::checkout::chain_name(&id.chain().to_string())),
        Err(_) => asset.to_owned(),
    }
}

/// `minor` smallest units of `asset` in whole units with its symbol: "12.50 USDC".
pub fn amount(state: &AppState, asset: &str, minor: &str) -> String {
    format!("{} {}", units(minor, payrail_api::balances::decimals_of(state, asset)), symbol(state, asset))
}

/// `minor` of a fiat currency (`USD`) in whole units: "25.00 USD".
pub fn fiat(currency: &str, minor: &str) -> String {
    let decimals = currency.parse::<payrail_core::money::Fiat>().ok().map(|f| f.minor_units());
    format!("{} {currency}", units(minor, decimals))
}
