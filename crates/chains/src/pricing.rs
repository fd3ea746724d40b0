//! How many confirmations a payment needs: the chain's policy grows with the payment's value in USD.
//! A payment that cannot be valued (no USD rate) gets the policy's maximum, never the minimum.

use chrono::{DateTime, Utc};

use crate::config::ConfirmationPolicy;
use crate::money::{asset_to_fiat, Amount, Fiat, Rounding};
use crate::rates::RateSource;

pub fn confirmations_required(
    policy: &ConfirmationPolicy,
    rates: &dyn RateSource,
    symbol: &str,
    decimals: u8,
    amount: Amount,
    now: DateTime<Utc>,
) -> u32 {
    let usd = Fiat::USD;
    let value = rates
        .quote(symbol, usd, now)
        .ok()
        .and_then(|q| asset_to_fiat(amount, decimals, &q.rate, usd, Rounding::Up).ok());
    match value {
        Some(value_usd_minor) => policy.confirmations_for(value_usd_minor),
        None => policy.confirmations_max(),
    }
}
