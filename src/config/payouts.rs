//! `[payouts]`: when creators are paid, above what balance, and the limits of a payout transaction.
//!
//! Fee caps are wei amounts written as decimal strings (they do not fit every integer TOML reader);
//! a cap is a hard limit: a batch waits rather than pay more gas than the operator allowed.

use serde::{Deserialize, Deserializer};

use crate::money::Amount;

use super::error::InvalidKey;

/// The contract refuses larger batches (`PayoutBatcher.MAX_RECIPIENTS`).
pub const RECIPIENTS_PER_BATCH_LIMIT: u32 = 500;
/// Geth and most nodes refuse a replacement that raises the fee by less than 10%.
pub const FEE_BUMP_BPS_MIN: u32 = 1_000;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PayoutsConfig {
    /// A scheduled run every this many seconds; 0 runs payouts only on demand.
    pub interval_s: u64,
    /// A creator's balance in an asset is paid out once it is worth at least this much (USD, a
    /// decimal string); smaller balances stay and add up.
    #[serde(rename = "threshold_usd", deserialize_with = "usd_cents")]
    pub threshold_usd_cents: Amount,
    /// Most recipients in one batch (the contract's own limit is 500).
    pub recipients_per_batch_max: u32,
    /// Most gas one payout transaction may use; batches are planned to fit under it.
    pub gas_per_batch_max: u64,
    /// Highest `maxFeePerGas` ever offered, in wei (decimal string).
    #[serde(deserialize_with = "wei")]
    pub max_fee_per_gas_wei_max: Amount,
    /// Highest priority fee (tip) ever offered, in wei (decimal string).
    #[serde(deserialize_with = "wei")]
    pub priority_fee_per_gas_wei_max: Amount,
    /// A sent transaction still unmined after this long is replaced with a higher fee.
    pub replace_after_s: u64,
    /// How much a replacement raises both fees, in basis points (at least 1000 = 10%).
    pub fee_bump_bps: u32,
    /// How often open batches are advanced.
    pub poll_interval_ms: u64,
}

impl Default for PayoutsConfig {
    fn default() -> Self {
        Self {
            interval_s: 86_400,
            threshold_usd_cents: Amount::from_u64(1_000),
            recipients_per_batch_max: 200,
            gas_per_batch_max: 10_000_000,
            max_fee_per_gas_wei_max: Amount::from_u64(500_000_000_000),
            priority_fee_per_gas_wei_max: Amount::from_u64(5_000_000_000),
            replace_after_s: 180,
            fee_bump_bps: 1_250,
            poll_interval_ms: 2_000,
        }
    }
}

fn usd_cents<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Amount, D::Error> {
    let text = String::deserialize(deserializer)?;
    Amount::parse_decimal(&text, 2)
        .map_err(|_| serde::de::Error::custom(format!("{text:?} is not a USD amount with at most 2 decimals, e.g. \"10\"")))
}

fn wei<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Amount, D::Error> {
    let text = String::deserialize(deserializer)?;
    Amount::parse_decimal(&text, 0)
        .map_err(|_| serde::de::Error::custom(format!("{text:?} is not a whole number of wei, e.g. \"500000000000\"")))
}

impl PayoutsConfig {
    pub(crate) fn check(self) -> Result<Self, InvalidKey> {
        if !(1..=RECIPIENTS_PER_BATCH_LIMIT).contains(&self.recipients_per_batch_max) {
            return Err(InvalidKey::new(
                "recipients_per_batch_max",
                format!("{} is out of range: expected 1 to {RECIPIENTS_PER_BATCH_LIMIT}", self.recipients_per_batch_max),
            ));
        }
        if self.gas_per_batch_max < 100_000 {
            return Err(InvalidKey::new("gas_per_batch_max", "expected at least 100000 gas"));
        }
        if self.max_fee_per_gas_wei_max.is_zero() {
            return Err(InvalidKey::new("max_fee_per_gas_wei_max", "expected more than 0 wei"));
        }
        if self.priority_fee_per_gas_wei_max > self.max_fee_per_gas_wei_max {
            return Err(InvalidKey::new("priority_fee_per_gas_wei_max", "must not exceed max_fee_per_gas_wei_max"));
        }
        if !(FEE_BUMP_BPS_MIN..=10_000).contains(&self.fee_bump_bps) {
            return Err(InvalidKey::new(
                "fee_bump_bps",
                format!("{} is out of range: expected {FEE_BUMP_BPS_MIN} to 10000", self.fee_bump_bps),
            ));
        }
        if self.poll_interval_ms == 0 {
            return Err(InvalidKey::new("poll_interval_ms", "expected more than 0"));
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<PayoutsConfig, String> {
        toml::from_str::<PayoutsConfig>(text).map_err(|e| e.to_string()).and_then(|c| c.check().map_err(|e| e.to_string()))
    }

    #[test]
    fn defaults_and_overrides() {
        let config = parse("threshold_usd = \"2.50\"\nmax_fee_per_gas_wei_max = \"100000000000\"").expect("valid");
        assert_eq!(config.threshold_usd_cents, Amount::from_u64(250));
        assert_eq!(config.max_fee_per_gas_wei_max, Amount::from_u64(100_000_000_000));
        assert_eq!(config.recipients_per_batch_max, PayoutsConfig::default().recipients_per_batch_max);
    }

    #[test]
    fn refuses_what_cannot_work() {
        assert!(parse("threshold_usd = \"0.001\"").is_err());
        assert!(parse("recipients_per_batch_max = 501").is_err());
        assert!(parse("fee_bump_bps = 500").is_err());
        assert!(parse("max_fee_per_gas_wei_max = \"1.5\"").is_err());
        assert!(parse("priority_fee_per_gas_wei_max = \"9\"\nmax_fee_per_gas_wei_max = \"8\"").is_err());
        assert!(parse("unknown = 1").is_err());
    }
}
