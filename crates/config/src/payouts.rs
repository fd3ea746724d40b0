//! `[payouts]`: when creators are paid, above what balance, and the limits of a payout transaction.
//!
//! Fee caps are wei amounts written as decimal strings (they do not fit every integer TOML reader);
//! a cap is a hard limit: a batch waits rather than pay more gas than the operator allowed.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

use crate::money::Amount;

use super::error::InvalidKey;

/// The contract refuses larger batches (`PayoutBatcher.MAX_RECIPIENTS`).
pub const RECIPIENTS_PER_BATCH_LIMIT: u32 = 500;
/// Longest takeover delay of a payout address change: 30 days.
pub const ADDRESS_CHANGE_DELAY_S_LIMIT: u64 = 30 * 86_400;
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
    /// A merchant's settlement to a payout address set or changed less than this many seconds ago
    /// is refused until it has passed: an attacker holding a merchant's key cannot send its balance
    /// to an address of theirs at once. 0 turns the delay off.
    pub address_change_delay_s: u64,
    /// Fee caps of one chain (by name), replacing the two above there: gas prices differ by orders
    /// of magnitude between chains (Polygon refuses tips under 25 gwei; BSC runs at a few).
    pub chains: BTreeMap<String, FeeCaps>,
}

/// `[payouts.chains.<name>]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeeCaps {
    #[serde(deserialize_with = "wei")]
    pub max_fee_per_gas_wei_max: Amount,
    #[serde(deserialize_with = "wei")]
    pub priority_fee_per_gas_wei_max: Amount,
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
            address_change_delay_s: 86_400,
            chains: BTreeMap::new(),
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
        check_caps(&self.caps_default(), "")?;
        for (chain, caps) in &self.chains {
            check_caps(caps, &format!("chains.{chain}."))?;
        }
        if !(FEE_BUMP_BPS_MIN..=10_000).contains(&self.fee_bump_bps) {
            return Err(InvalidKey::new(
                "fee_bump_bps",
                format!("{} is out of range: expected {FEE_BUMP_BPS_MIN} to 10000", self.fee_bump_bps),
            ));
        }
        if self.address_change_delay_s > ADDRESS_CHANGE_DELAY_S_LIMIT {
            return Err(InvalidKey::new(
                "address_change_delay_s",
                format!("{} is out of range: expected at most {ADDRESS_CHANGE_DELAY_S_LIMIT} (30 days)", self.address_change_delay_s),
            ));
        }
        if self.poll_interval_ms == 0 {
            return Err(InvalidKey::new("poll_interval_ms", "expected more than 0"));
        }
        Ok(self)
    }
}

fn check_caps(caps: &FeeCaps, prefix: &str) -> Result<(), InvalidKey> {
    if caps.max_fee_per_gas_wei_max.is_zero() {
        return Err(InvalidKey::new(format!("{prefix}max_fee_per_gas_wei_max"), "expected more than 0 wei"));
    }
    if caps.priority_fee_per_gas_wei_max > caps.max_fee_per_gas_wei_max {
        return Err(InvalidKey::new(
            format!("{prefix}priority_fee_per_gas_wei_max"),
            "must not exceed max_fee_per_gas_wei_max",
        ));
    }
    Ok(())
}

impl PayoutsConfig {
    fn caps_default(&self) -> FeeCaps {
        FeeCaps {
            max_fee_per_gas_wei_max: self.max_fee_per_gas_wei_max,
            priority_fee_per_gas_wei_max: self.priority_fee_per_gas_wei_max,
        }
    }

    /// The fee caps on the chain named `chain`: its own table, else the defaults.
    pub fn fee_caps(&self, chain: &str) -> FeeCaps {
        self.chains.get(chain).cloned().unwrap_or_else(|| self.caps_default())
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
        assert!(parse("[chains.polygon]\nmax_fee_per_gas_wei_max = \"8\"\npriority_fee_per_gas_wei_max = \"9\"").is_err());
    }

    #[test]
    fn a_chain_may_have_its_own_fee_caps() {
        let config = parse(
            "[chains.polygon]\nmax_fee_per_gas_wei_max = \"2000000000000\"\npriority_fee_per_gas_wei_max = \"200000000000\"",
        )
        .expect("valid");
        assert_eq!(config.fee_caps("polygon").priority_fee_per_gas_wei_max, Amount::from_u64(200_000_000_000));
        assert_eq!(config.fee_caps("bsc"), config.caps_default());
    }
}
