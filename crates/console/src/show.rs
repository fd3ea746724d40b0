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

/// `minor` smallest units of `asset` in whole units with its symbol: "12.50 USDC", "0.006667 ETH".
/// A fiat currency keeps its minor units; a coin or token drops trailing zeros past two decimals
/// (exactly the same number, easier to read than eighteen places).
pub fn amount(state: &AppState, asset: &str, minor: &str) -> String {
    let whole = units(minor, payrail_api::balances::decimals_of(state, asset));
    let whole = if asset.starts_with("iso4217:") { whole } else { trim_zeros(&whole) };
    format!("{whole} {}", symbol(state, asset))
}

/// `"0.006667000000000000"` → `"0.006667"`, `"5.000000"` → `"5.00"`.
fn trim_zeros(decimal: &str) -> String {
    let Some((int, frac)) = decimal.split_once('.') else { return decimal.to_owned() };
    let kept = frac.trim_end_matches('0');
    let kept = if kept.len() < 2 { &frac[..frac.len().min(2)] } else { kept };
    format!("{int}.{kept}")
}

/// The decimals of the merchants' credit currencies (assets `credit:{merchant}/{code}`), for pages
/// whose rows may hold credits (the trial balance).
#[derive(Debug, Default)]
pub struct Credits(std::collections::HashMap<String, u8>);

impl Credits {
    pub async fn load(pool: &sqlx::PgPool) -> Result<Self, sqlx::Error> {
        let rows: Vec<(String, i16)> =
            sqlx::query_as("SELECT 'credit:' || merchant_id || '/' || code, decimals FROM credit_currencies").fetch_all(pool).await?;
        Ok(Self(rows.into_iter().filter_map(|(asset, d)| u8::try_from(d).ok().map(|d| (asset, d))).collect()))
    }

    /// "coins (mer_…)" for a credit asset (codes are each merchant's own), else as [`asset`].
    pub fn asset(&self, state: &AppState, asset: &str) -> String {
        match asset.strip_prefix("credit:").and_then(|rest| rest.split_once('/')) {
            Some((merchant, code)) => format!("{code} ({merchant})"),
            None => self::asset(state, asset),
        }
    }

    /// "2.50 coins" for a credit asset, else as [`amount`].
    pub fn amount(&self, state: &AppState, asset: &str, minor: &str) -> String {
        match credit_code(asset) {
            Some(code) => format!("{} {code}", units(minor, self.0.get(asset).copied())),
            None => amount(state, asset, minor),
        }
    }
}

/// The code of a credit asset `credit:{merchant}/{code}`.
fn credit_code(asset: &str) -> Option<&str> {
    asset.strip_prefix("credit:")?.split_once('/').map(|(_, code)| code)
}

/// `minor` of a fiat currency (`USD`) in whole units: "25.00 USD".
pub fn fiat(currency: &str, minor: &str) -> String {
    let decimals = currency.parse::<payrail_core::money::Fiat>().ok().map(|f| f.minor_units());
    format!("{} {currency}", units(minor, decimals))
}

#[cfg(test)]
mod tests {
    #[test]
    fn trailing_zeros_go_past_two_decimals() {
        assert_eq!(super::trim_zeros("0.006667000000000000"), "0.006667");
        assert_eq!(super::trim_zeros("5.000000"), "5.00");
        assert_eq!(super::trim_zeros("5.1"), "5.1");
        assert_eq!(super::trim_zeros("12"), "12");
        assert_eq!(super::trim_zeros("-0.500000"), "-0.50");
    }
}
