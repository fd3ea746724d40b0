//! `Amount`: a non-negative integer count of an asset's smallest unit (sats, wei, token base
//! units, fiat minor units).
//!
//! Invariants:
//! - The value is a `U256` behind a private field; it is built only through the constructors
//!   here and changed only through checked (or explicitly saturating) arithmetic, so it can
//!   never wrap.
//! - An `Amount` carries no unit: the asset or currency travels beside it. Decimal strings
//!   exist only at the edges (`parse_decimal`, `to_decimal_string`) and are exact: a value
//!   with more fractional digits than the asset has is refused, never rounded.
//! - On the wire it is an integer string in smallest units ("2500"), which holds every
//!   `U256` and matches PostgreSQL `NUMERIC(78,0)`.

use std::fmt;
use std::str::FromStr;

use alloy_primitives::U256;

use super::decimal::{self, SyntaxError};
use super::serde_str::impl_serde_via_str;

/// Longest decimal string accepted; `U256::MAX` has 78 digits, which leaves room for
/// leading zeros and a fraction without letting input size drive work.
pub const DECIMAL_INPUT_LEN_MAX: usize = 100;

/// Errors from parsing an amount; each carries the refused input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("amount is empty")]
    Empty,
    #[error("amount is {len} characters long, more than the maximum of {max}")]
    TooLong { len: usize, max: usize },
    #[error("amount {input:?} contains a character that is not a digit or a single decimal point")]
    InvalidCharacter { input: String },
    #[error("amount {input:?} needs digits on both sides of the decimal point")]
    MissingDigits { input: String },
    #[error("amount {input:?} has more fractional digits than the asset's {decimals} decimals")]
    TooPrecise { input: String, decimals: u8 },
    #[error("amount {input:?} does not fit in 256 bits")]
    Overflow { input: String },
}

impl AmountError {
    fn from_syntax(error: SyntaxError, input: &str) -> Self {
        match error {
            SyntaxError::Empty => Self::Empty,
            SyntaxError::TooLong { len } => Self::TooLong {
                len,
                max: DECIMAL_INPUT_LEN_MAX,
            },
            SyntaxError::InvalidCharacter => Self::InvalidCharacter {
                input: input.to_owned(),
            },
            SyntaxError::MissingDigits => Self::MissingDigits {
                input: input.to_owned(),
            },
        }
    }
}

/// A non-negative amount in an asset's smallest unit.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Amount(U256);

impl Amount {
    pub const ZERO: Amount = Amount(U256::ZERO);
    pub const MAX: Amount = Amount(U256::MAX);

    pub const fn from_u256(value: U256) -> Amount {
        Amount(value)
    }

    pub fn from_u64(value: u64) -> Amount {
        Amount(U256::from(value))
    }

    pub fn from_u128(value: u128) -> Amount {
        Amount(U256::from(value))
    }

    pub const fn as_u256(&self) -> U256 {
        self.0
    }

    pub fn is_zero(&self) -> bool {
        self.0.is_zero()
    }

    pub fn checked_add(self, rhs: Amount) -> Option<Amount> {
        self.0.checked_add(rhs.0).map(Amount)
    }

    pub fn checked_sub(self, rhs: Amount) -> Option<Amount> {
        self.0.checked_sub(rhs.0).map(Amount)
    }

    pub fn checked_mul(self, rhs: Amount) -> Option<Amount> {
        self.0.checked_mul(rhs.0).map(Amount)
    }

    pub fn checked_mul_u64(self, rhs: u64) -> Option<Amount> {
        self.0.checked_mul(U256::from(rhs)).map(Amount)
    }

    /// `self - rhs`, or zero when `rhs` is larger: for "how much is still due" questions.
    pub fn saturating_sub(self, rhs: Amount) -> Amount {
        Amount(self.0.saturating_sub(rhs.0))
    }

    /// Sum of all amounts; `None` if the total does not fit.
    pub fn checked_sum<I: IntoIterator<Item = Amount>>(amounts: I) -> Option<Amount> {
        amounts
            .into_iter()
            .try_fold(Amount::ZERO, Amount::checked_add)
    }

    /// Parses a human decimal ("25.00", "25", "0.5") into smallest units of an asset with
    /// `decimals` decimals. Exact: more fractional digits than `decimals` is `TooPrecise`,
    /// even when they are zeros, because the caller's notion of the asset disagrees with ours.
    pub fn parse_decimal(s: &str, decimals: u8) -> Result<Amount, AmountError> {
        let parts = decimal::split_decimal(s, DECIMAL_INPUT_LEN_MAX)
            .map_err(|e| AmountError::from_syntax(e, s))?;
        if parts.frac.len() > usize::from(decimals) {
            return Err(AmountError::TooPrecise {
                input: s.to_owned(),
                decimals,
            });
        }
        let overflow = || AmountError::Overflow {
            input: s.to_owned(),
        };
        let units = decimal::accumulate_digits(U256::ZERO, parts.int).ok_or_else(overflow)?;
        let units = decimal::accumulate_digits(units, parts.frac).ok_or_else(overflow)?;
        let padding = usize::from(decimals) - parts.frac.len();
        let units = decimal::append_zeros(units, padding).ok_or_else(overflow)?;
        Ok(Amount(units))
    }

    /// Formats with exactly `decimals` fractional digits ("25.00"); no dot when 0.
    pub fn to_decimal_string(&self, decimals: u8) -> String {
        decimal::format_scaled(self.0, decimals)
    }
}

impl fmt::Display for Amount {
    /// The integer in smallest units.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for Amount {
    type Err = AmountError;

    /// Parses a plain integer in smallest units: ASCII digits only.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts = decimal::split_decimal(s, DECIMAL_INPUT_LEN_MAX)
            .map_err(|e| AmountError::from_syntax(e, s))?;
        // An integer string has no dot at all; "25.00" is not a count of smallest units.
        if s.contains('.') {
            return Err(AmountError::InvalidCharacter {
                input: s.to_owned(),
            });
        }
        decimal::accumulate_digits(U256::ZERO, parts.int)
            .map(Amount)
            .ok_or_else(|| AmountError::Overflow {
                input: s.to_owned(),
            })
    }
}

impl_serde_via_str!(Amount);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn amount(v: u64) -> Amount {
        Amount::from_u64(v)
    }

    #[test]
    fn parses_examples() {
        assert_eq!(Amount::parse_decimal("25.00", 2), Ok(amount(2500)));
        assert_eq!(Amount::parse_decimal("25", 2), Ok(amount(2500)));
        assert_eq!(Amount::parse_decimal("0.5", 2), Ok(amount(50)));
        assert_eq!(Amount::parse_decimal("007.10", 2), Ok(amount(710)));
        assert_eq!(Amount::parse_decimal("0", 0), Ok(Amount::ZERO));
        assert_eq!(Amount::parse_decimal("0.00000001", 8), Ok(amount(1)));
        assert_eq!(
            Amount::parse_decimal("1", 18),
            Ok(Amount::from_u128(10u128.pow(18)))
        );
    }

    #[test]
    fn zero_is_valid_at_any_decimals() {
        assert_eq!(Amount::parse_decimal("0", 255), Ok(Amount::ZERO));
        assert_eq!(Amount::parse_decimal("0.0", 255), Ok(Amount::ZERO));
    }

    #[test]
    fn refuses_malformed_input() {
        assert_eq!(Amount::parse_decimal("", 2), Err(AmountError::Empty));
        for bad in [
            "+1", "-1", "1e2", "1E2", " 1", "1 ", "1\n", "1,00", "1.0.0", "abc", "0x10", "１",
        ] {
            assert_eq!(
                Amount::parse_decimal(bad, 2),
                Err(AmountError::InvalidCharacter {
                    input: bad.to_owned()
                }),
                "{bad:?}"
            );
        }
        for bad in ["1.", ".5", "."] {
            assert_eq!(
                Amount::parse_decimal(bad, 2),
                Err(AmountError::MissingDigits {
                    input: bad.to_owned()
                }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn refuses_extra_precision_instead_of_rounding() {
        assert_eq!(
            Amount::parse_decimal("0.001", 2),
            Err(AmountError::TooPrecise {
                input: "0.001".to_owned(),
                decimals: 2
            })
        );
        assert_eq!(
            Amount::parse_decimal("1.0", 0),
            Err(AmountError::TooPrecise {
                input: "1.0".to_owned(),
                decimals: 0
            })
        );
    }

    #[test]
    fn refuses_overflow_and_long_input() {
        let max = U256::MAX.to_string();
        assert_eq!(Amount::parse_decimal(&max, 0), Ok(Amount::MAX));
        assert_eq!(
            Amount::parse_decimal(&max, 1),
            Err(AmountError::Overflow { input: max.clone() })
        );
        assert_eq!(
            Amount::parse_decimal("1", 78),
            Err(AmountError::Overflow {
                input: "1".to_owned()
            })
        );
        let long = "1".repeat(DECIMAL_INPUT_LEN_MAX + 1);
        assert_eq!(
            Amount::parse_decimal(&long, 0),
            Err(AmountError::TooLong {
                len: DECIMAL_INPUT_LEN_MAX + 1,
                max: DECIMAL_INPUT_LEN_MAX
            })
        );
        let zeros = "0".repeat(DECIMAL_INPUT_LEN_MAX);
        assert_eq!(Amount::parse_decimal(&zeros, 0), Ok(Amount::ZERO));
    }

    #[test]
    fn formats_with_fixed_decimals() {
        assert_eq!(amount(2500).to_decimal_string(2), "25.00");
        assert_eq!(amount(50).to_decimal_string(2), "0.50");
        assert_eq!(amount(1).to_decimal_string(8), "0.00000001");
        assert_eq!(amount(2500).to_decimal_string(0), "2500");
        assert_eq!(Amount::ZERO.to_decimal_string(3), "0.000");
    }

    #[test]
    fn display_and_from_str_are_plain_integers() {
        assert_eq!(amount(2500).to_string(), "2500");
        assert_eq!("2500".parse::<Amount>(), Ok(amount(2500)));
        assert_eq!("0002500".parse::<Amount>(), Ok(amount(2500)));
        assert_eq!("".parse::<Amount>(), Err(AmountError::Empty));
        for bad in ["25.00", "-1", "1e3", " 1"] {
            assert_eq!(
                bad.parse::<Amount>(),
                Err(AmountError::InvalidCharacter {
                    input: bad.to_owned()
                }),
                "{bad:?}"
            );
        }
        let over = format!("{}0", U256::MAX);
        assert_eq!(
            over.parse::<Amount>(),
            Err(AmountError::Overflow {
                input: over.clone()
            })
        );
    }

    #[test]
    fn checked_arithmetic_refuses_wrapping() {
        assert_eq!(amount(2).checked_add(amount(3)), Some(amount(5)));
        assert_eq!(Amount::MAX.checked_add(amount(1)), None);
        assert_eq!(amount(2).checked_sub(amount(3)), None);
        assert_eq!(amount(5).checked_sub(amount(3)), Some(amount(2)));
        assert_eq!(amount(2).saturating_sub(amount(3)), Amount::ZERO);
        assert_eq!(amount(6).checked_mul(amount(7)), Some(amount(42)));
        assert_eq!(Amount::MAX.checked_mul(amount(2)), None);
        assert_eq!(amount(6).checked_mul_u64(7), Some(amount(42)));
        assert_eq!(Amount::MAX.checked_mul_u64(2), None);
        assert_eq!(Amount::checked_sum([amount(1), amount(2)]), Some(amount(3)));
        assert_eq!(Amount::checked_sum([Amount::MAX, amount(1)]), None);
        assert!(Amount::ZERO.is_zero() && !amount(1).is_zero());
        assert_eq!(Amount::default(), Amount::ZERO);
        assert_eq!(
            Amount::from_u128(u128::MAX).as_u256(),
            U256::from(u128::MAX)
        );
    }

    #[test]
    fn serde_is_an_integer_string() {
        assert_eq!(
            serde_json::to_string(&amount(2500)).ok().as_deref(),
            Some("\"2500\"")
        );
        assert_eq!(
            serde_json::from_str::<Amount>("\"2500\"").ok(),
            Some(amount(2500))
        );
        assert!(serde_json::from_str::<Amount>("2500").is_err());
        assert!(serde_json::from_str::<Amount>("\"25.00\"").is_err());
        assert!(serde_json::from_str::<Amount>("\"-1\"").is_err());
    }

    fn any_u256() -> impl Strategy<Value = U256> {
        any::<[u64; 4]>().prop_map(U256::from_limbs)
    }

    proptest! {
        #[test]
        fn decimal_round_trip(value in any_u256(), decimals in 0u8..=30) {
            let a = Amount::from_u256(value);
            let text = a.to_decimal_string(decimals);
            let frac_len = text.split_once('.').map_or(0, |(_, frac)| frac.len());
            prop_assert_eq!(frac_len, usize::from(decimals));
            prop_assert_eq!(Amount::parse_decimal(&text, decimals), Ok(a));
        }

        #[test]
        fn parse_matches_integer_arithmetic(int in any::<u64>(), frac in any::<u32>(), decimals in 10u8..=19) {
            // `frac` has at most 10 digits, so it always fits in `decimals` places.
            let text = format!("{int}.{frac:010}");
            let expected = U256::from(int) * U256::from(10u8).pow(U256::from(decimals))
                + U256::from(frac) * U256::from(10u8).pow(U256::from(decimals - 10));
            prop_assert_eq!(Amount::parse_decimal(&text, decimals), Ok(Amount::from_u256(expected)));
        }

        #[test]
        fn serde_round_trip(value in any_u256()) {
            let a = Amount::from_u256(value);
            let json = serde_json::to_string(&a).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&json, &format!("\"{value}\""));
            let back: Amount = serde_json::from_str(&json).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(back, a);
        }
    }
}
