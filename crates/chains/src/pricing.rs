//! How many confirmations a payment needs: the chain's policy grows with the payment's value in
//! USD, and the invoice's speed policy chooses how to read it (see [`SpeedPolicy`]). A payment
//! that cannot be valued (no USD rate) gets the policy's maximum, never the minimum, and never
//! counts unconfirmed.

use chrono::{DateTime, Utc};

use crate::config::ChainSpec;
use crate::money::{asset_to_fiat, Amount, Fiat, Rounding};
use crate::rates::RateSource;

pub use payrail_core::payment::SpeedPolicy;

/// A payment to value: its asset's symbol and decimals, and its amount.
#[derive(Debug, Clone, Copy)]
pub struct Payment<'a> {
    pub symbol: &'a str,
    pub decimals: u8,
    pub amount: Amount,
}

pub fn confirmations_required(spec: &ChainSpec, speed: SpeedPolicy, rates: &dyn RateSource, payment: Payment<'_>, now: DateTime<Utc>) -> u32 {
    let policy = &spec.confirmations;
    if speed == SpeedPolicy::Slow {
        return policy.confirmations_max();
    }
    let usd = Fiat::USD;
    let value = rates
        .quote(payment.symbol, usd, now)
        .ok()
        .and_then(|q| asset_to_fiat(payment.amount, payment.decimals, &q.rate, usd, Rounding::Up).ok());
    match value {
        Some(value) if speed == SpeedPolicy::Fast && spec.zero_conf_up_to_usd_minor.is_some_and(|limit| value <= limit) => 0,
        Some(value) => policy.confirmations_for(value),
        None => policy.confirmations_max(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rates::{FixedFeed, RateSource};

    fn bitcoin() -> ChainSpec {
        let config = payrail_config::Config::load(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../config.dev.toml")))
            .unwrap_or_else(|e| panic!("{e}"));
        config.chain("bitcoin").unwrap_or_else(|| panic!("bitcoin")).clone()
    }

    #[test]
    fn the_speed_policy_reads_the_tiers_fast_unconfirmed_only_below_the_chains_limit() {
        let spec = bitcoin();
        let feed = FixedFeed::new([(("BTC".to_owned(), "USD".to_owned()), "50000".parse().unwrap_or_else(|e| panic!("{e:?}")))]);
        let rates: &dyn RateSource = &feed;
        let now = Utc::now();
        // 0.0008 BTC = 40 USD; 0.002 BTC = 100 USD; 0.1 BTC = 5,000 USD; 1 BTC = 50,000 USD.
        let sats = |n: u64| Payment { symbol: "BTC", decimals: 8, amount: Amount::from_u64(n) };
        let required = |speed, n| confirmations_required(&spec, speed, rates, sats(n), now);
        assert_eq!(spec.zero_conf_up_to_usd_minor, Some(Amount::from_u64(5_000)), "the chain file allows 50 USD");
        assert_eq!([80_000, 200_000, 10_000_000, 100_000_000].map(|n| required(SpeedPolicy::Medium, n)), [1, 1, 3, 6]);
        assert_eq!([80_000, 200_000, 10_000_000, 100_000_000].map(|n| required(SpeedPolicy::Fast, n)), [0, 1, 3, 6]);
        assert_eq!([80_000, 200_000, 10_000_000, 100_000_000].map(|n| required(SpeedPolicy::Slow, n)), [6, 6, 6, 6]);
        // Without a rate nothing counts early.
        let unpriced = Payment { symbol: "DOGE", decimals: 8, amount: Amount::from_u64(1) };
        assert_eq!(confirmations_required(&spec, SpeedPolicy::Fast, rates, unpriced, now), 6);
        // A chain that allows no unconfirmed payment: fast is the tiers.
        let strict = ChainSpec { zero_conf_up_to_usd_minor: None, ..spec.clone() };
        assert_eq!(confirmations_required(&strict, SpeedPolicy::Fast, rates, sats(80_000), now), 1);
    }
}
