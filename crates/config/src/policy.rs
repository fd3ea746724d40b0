//! `ConfirmationPolicy`: how many confirmations a payment needs, growing with its value.
//!
//! Invariants (checked by [`ConfirmationPolicy::new`], so every policy that exists holds them):
//! - There is at least one tier, and exactly one catch-all tier (without `up_to_usd`),
//!   which is the last: every value has an answer.
//! - Thresholds strictly increase and confirmation counts never decrease from one tier to
//!   the next: a larger payment never needs fewer confirmations than a smaller one.
//! - Every count is at least 1: an unconfirmed payment can be replaced (RBF) or reorged
//!   away at no cost to the payer, so it is never enough.
//!
//! Thresholds are USD minor units (cents). A tier covers values up to and including its
//! threshold.

use crate::money::Amount;

use super::error::InvalidKey;

/// Largest confirmation count accepted in any tier; deeper than any chain's finality.
pub const CONFIRMATIONS_MAX: u32 = 10_000;

/// Minor units of the policy's currency, USD.
pub const USD_MINOR_UNITS: u8 = 2;

/// One tier as written in a chain file: a threshold in USD cents (none for the catch-all)
/// and the confirmations a payment of at most that value needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfirmationTier {
    pub up_to_usd_minor: Option<Amount>,
    pub confirmations: u32,
}

/// Confirmations required by payment value; see the module docs for the invariants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfirmationPolicy {
    /// Bounded tiers, thresholds strictly increasing.
    bounded: Vec<(Amount, u32)>,
    /// Confirmations for any value above the last bounded threshold.
    above: u32,
}

impl ConfirmationPolicy {
    /// Validates `tiers` in the order written. Error keys are `[index].field`, relative to
    /// the list, so the caller can place them under its own key.
    pub fn new(tiers: &[ConfirmationTier]) -> Result<Self, InvalidKey> {
        let Some((last, init)) = tiers.split_last() else {
            return Err(InvalidKey::new("", "at least one tier is required"));
        };
        let mut bounded = Vec::with_capacity(init.len());
        for (index, tier) in tiers.iter().enumerate() {
            if !(1..=CONFIRMATIONS_MAX).contains(&tier.confirmations) {
                return Err(InvalidKey::new(
                    format!("[{index}].confirmations"),
                    format!(
                        "{} is out of range: expected 1 to {CONFIRMATIONS_MAX}",
                        tier.confirmations
                    ),
                ));
            }
        }
        for (index, tier) in init.iter().enumerate() {
            let Some(threshold) = tier.up_to_usd_minor else {
                return Err(InvalidKey::new(
                    format!("[{index}].up_to_usd"),
                    "missing: only the last tier may omit up_to_usd (it covers every larger value)",
                ));
            };
            if let Some(&(previous, previous_confirmations)) = bounded.last() {
                if threshold <= previous {
                    return Err(InvalidKey::new(
                        format!("[{index}].up_to_usd"),
                        "thresholds must strictly increase from one tier to the next",
                    ));
                }
                if tier.confirmations < previous_confirmations {
                    return Err(InvalidKey::new(
                        format!("[{index}].confirmations"),
                        "confirmations must not decrease as the value grows",
                    ));
                }
            }
            bounded.push((threshold, tier.confirmations));
        }
        let last_index = tiers.len() - 1;
        if last.up_to_usd_minor.is_some() {
            return Err(InvalidKey::new(
                format!("[{last_index}].up_to_usd"),
                "the last tier must omit up_to_usd, so that it covers every larger value",
            ));
        }
        if bounded
            .last()
            .is_some_and(|&(_, previous)| last.confirmations < previous)
        {
            return Err(InvalidKey::new(
                format!("[{last_index}].confirmations"),
                "confirmations must not decrease as the value grows",
            ));
        }
        Ok(ConfirmationPolicy {
            bounded,
            above: last.confirmations,
        })
    }

    /// Confirmations a payment worth `value_usd_minor` US cents needs.
    pub fn confirmations_for(&self, value_usd_minor: Amount) -> u32 {
        self.bounded
            .iter()
            .find(|(threshold, _)| value_usd_minor <= *threshold)
            .map_or(self.above, |&(_, confirmations)| confirmations)
    }

    /// The deepest requirement: what the largest payment needs.
    pub fn confirmations_max(&self) -> u32 {
        self.above
    }

    /// The tiers in order, the catch-all last.
    pub fn tiers(&self) -> Vec<ConfirmationTier> {
        self.bounded
            .iter()
            .map(|&(threshold, confirmations)| ConfirmationTier {
                up_to_usd_minor: Some(threshold),
                confirmations,
            })
            .chain(std::iter::once(ConfirmationTier {
                up_to_usd_minor: None,
                confirmations: self.above,
            }))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(dollars: u64) -> Amount {
        Amount::from_u64(dollars * 100)
    }

    fn tier(up_to_dollars: Option<u64>, confirmations: u32) -> ConfirmationTier {
        ConfirmationTier {
            up_to_usd_minor: up_to_dollars.map(usd),
            confirmations,
        }
    }

    fn bitcoin_like() -> ConfirmationPolicy {
        ConfirmationPolicy::new(&[tier(Some(1_000), 1), tier(Some(10_000), 3), tier(None, 6)])
            .expect("valid tiers")
    }

    #[test]
    fn picks_the_first_tier_that_covers_the_value() {
        let policy = bitcoin_like();
        assert_eq!(policy.confirmations_for(Amount::ZERO), 1);
        assert_eq!(policy.confirmations_for(usd(999)), 1);
        // Thresholds are inclusive: exactly $1000 is still the first tier.
        assert_eq!(policy.confirmations_for(usd(1_000)), 1);
        assert_eq!(
            policy.confirmations_for(usd(1_000).checked_add(Amount::from_u64(1)).expect("small")),
            3
        );
        assert_eq!(policy.confirmations_for(usd(10_000)), 3);
        assert_eq!(policy.confirmations_for(usd(10_001)), 6);
        assert_eq!(policy.confirmations_for(Amount::MAX), 6);
        assert_eq!(policy.confirmations_max(), 6);
    }

    #[test]
    fn grows_with_value() {
        let policy = bitcoin_like();
        let mut previous = 0;
        for dollars in (0..50_000).step_by(250) {
            let needed = policy.confirmations_for(usd(dollars));
            assert!(needed >= previous, "${dollars} needs {needed} < {previous}");
            previous = needed;
        }
    }

    #[test]
    fn a_lone_catch_all_applies_to_everything() {
        let policy = ConfirmationPolicy::new(&[tier(None, 2)]).expect("valid tiers");
        assert_eq!(policy.confirmations_for(Amount::ZERO), 2);
        assert_eq!(policy.confirmations_for(Amount::MAX), 2);
        assert_eq!(policy.tiers(), vec![tier(None, 2)]);
    }

    #[test]
    fn tiers_round_trip() {
        let tiers = [tier(Some(1_000), 1), tier(Some(10_000), 3), tier(None, 6)];
        assert_eq!(bitcoin_like().tiers(), tiers.to_vec());
    }

    #[test]
    fn rejects_bad_tiers() {
        let cases: [(&[ConfirmationTier], &str); 8] = [
            (&[], ""),
            (&[tier(Some(1_000), 1)], "[0].up_to_usd"),
            (&[tier(None, 1), tier(None, 3)], "[0].up_to_usd"),
            (&[tier(None, 3), tier(Some(1_000), 6)], "[0].up_to_usd"),
            (
                &[tier(Some(1_000), 1), tier(Some(1_000), 3), tier(None, 6)],
                "[1].up_to_usd",
            ),
            (
                &[tier(Some(10_000), 1), tier(Some(1_000), 3), tier(None, 6)],
                "[1].up_to_usd",
            ),
            (
                &[tier(Some(1_000), 3), tier(Some(10_000), 2), tier(None, 6)],
                "[1].confirmations",
            ),
            (&[tier(Some(1_000), 3), tier(None, 2)], "[1].confirmations"),
        ];
        for (tiers, key) in cases {
            let error = ConfirmationPolicy::new(tiers);
            assert_eq!(
                error.as_ref().map_err(|e| e.key.as_str()).err(),
                Some(key),
                "{tiers:?}"
            );
        }
        let zero = ConfirmationPolicy::new(&[tier(Some(1_000), 0), tier(None, 6)]);
        assert_eq!(
            zero.err().map(|e| e.key),
            Some("[0].confirmations".to_owned())
        );
        let huge = ConfirmationPolicy::new(&[tier(None, CONFIRMATIONS_MAX + 1)]);
        assert_eq!(
            huge.err().map(|e| e.key),
            Some("[0].confirmations".to_owned())
        );
    }
}
