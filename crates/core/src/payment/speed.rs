//! An invoice's speed policy: how long its payments wait before they count, traded against the
//! risk the merchant takes that one is replaced or reorged away.
//!
//! - `medium` (the default): the chain's confirmation tiers, growing with the payment's value.
//! - `slow`: the chain's deepest tier for every payment, whatever its value.
//! - `fast`: no confirmation at all (a Bitcoin payment counts from the mempool; an EVM payment
//!   from its first block) for a payment worth at most what the chain allows
//!   (`zero_conf_up_to_usd` in its chain file); above that, or on a chain that allows none, the
//!   tiers as for `medium`. A payment counted early and then replaced is reversed, as one whose
//!   block left the chain.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SpeedPolicy {
    Fast,
    #[default]
    Medium,
    Slow,
}

impl SpeedPolicy {
    pub const ALL: [Self; 3] = [Self::Fast, Self::Medium, Self::Slow];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fast => "fast",
            Self::Medium => "medium",
            Self::Slow => "slow",
        }
    }
}

impl fmt::Display for SpeedPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A speed policy that is not one of `fast`, `medium`, `slow`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a speed policy: expected fast, medium or slow")]
pub struct UnknownSpeedPolicy(pub String);

impl FromStr for SpeedPolicy {
    type Err = UnknownSpeedPolicy;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|s| s.as_str() == text).ok_or_else(|| UnknownSpeedPolicy(text.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_others_are_refused() {
        for speed in SpeedPolicy::ALL {
            assert_eq!(speed.as_str().parse::<SpeedPolicy>(), Ok(speed));
            assert_eq!(serde_json::to_value(speed).ok(), Some(serde_json::json!(speed.as_str())));
        }
        assert_eq!(SpeedPolicy::default(), SpeedPolicy::Medium);
        assert!("FAST".parse::<SpeedPolicy>().is_err());
        assert!("".parse::<SpeedPolicy>().is_err());
    }
}
