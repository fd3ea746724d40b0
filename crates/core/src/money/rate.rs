//! `Rate`: an exact, strictly positive decimal price.
//!
//! Meaning: the price of ONE WHOLE unit of an asset in WHOLE units of the quote currency,
//! as price feeds publish it ("BTC = 65000.12 USD" is `Rate` 65000.12). Conversions in
//! `convert` bring in the asset's decimals and the currency's minor units.
//!
//! Invariants:
//! - value = `mantissa / 10^scale`, with `mantissa > 0` and `scale <= RATE_SCALE_MAX`.
//! - Normalized: the mantissa has no trailing decimal zero when `scale > 0`, so each value
//!   has one representation; derived `Eq` and `Hash` are therefore equality of values, and
//!   `Ord` compares values.
//! - Parsed from the feed's decimal string exactly; zero, negative, exponent and
//!   over-precise rates are refused, never rounded or replaced.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use alloy_primitives::U256;

use super::decimal::{self, SyntaxError};
use super::serde_str::impl_serde_via_str;

/// Most fractional digits a rate may have (after trailing zeros are dropped).
pub const RATE_SCALE_MAX: u8 = 36;
/// Longest rate string accepted.
pub const RATE_INPUT_LEN_MAX: usize = 100;

/// Errors from parsing or building a rate; each carries the refused input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    #[error("rate is empty")]
    Empty,
    #[error("rate is {len} characters long, more than the maximum of {max}")]
    TooLong { len: usize, max: usize },
    #[error("rate {input:?} contains a character that is not a digit or a single decimal point")]
    InvalidCharacter { input: String },
    #[error("rate {input:?} needs digits on both sides of the decimal point")]
    MissingDigits { input: String },
    #[error("rate {input:?} has more than {scale_max} fractional digits")]
    TooPrecise { input: String, scale_max: u8 },
    #[error("rate {input:?} is zero; a price must be positive")]
    Zero { input: String },
    #[error("rate {input:?} does not fit in 256 bits")]
    Overflow { input: String },
}

/// An exact positive decimal price; see the module docs for its meaning.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rate {
    mantissa: U256,
    scale: u8,
}

impl Rate {
    /// Builds `mantissa / 10^scale`, normalizing trailing zeros away.
    pub fn new(mantissa: U256, scale: u8) -> Result<Rate, RateError> {
        let input = || decimal::format_scaled(mantissa, scale);
        if mantissa.is_zero() {
            return Err(RateError::Zero { input: input() });
        }
        let (mantissa_normal, scale_normal) = normalize(mantissa, scale);
        if scale_normal > RATE_SCALE_MAX {
            return Err(RateError::TooPrecise {
                input: input(),
                scale_max: RATE_SCALE_MAX,
            });
        }
        Ok(Rate {
            mantissa: mantissa_normal,
            scale: scale_normal,
        })
    }

    pub fn mantissa(&self) -> U256 {
        self.mantissa
    }

    pub fn scale(&self) -> u8 {
        self.scale
    }
}

/// Strips trailing decimal zeros of the fraction; the mantissa is non-zero, so this ends.
fn normalize(mut mantissa: U256, mut scale: u8) -> (U256, u8) {
    let ten = U256::from(10u8);
    while scale > 0 {
        let (quotient, remainder) = mantissa.div_rem(ten);
        if !remainder.is_zero() {
            break;
        }
        mantissa = quotient;
        scale -= 1;
    }
    (mantissa, scale)
}

impl Ord for Rate {
    /// By value: cross-multiplies to a common scale in 512 bits, which cannot overflow
    /// (a 256-bit mantissa times `10^36` needs at most 376 bits).
    fn cmp(&self, other: &Self) -> Ordering {
        #[allow(clippy::expect_used, reason = "both bounds are checked where a Rate is built")]
        let lift = |rate: &Rate, to_scale: u8| {
            let factor = decimal::pow10_u512(u32::from(to_scale - rate.scale))
                .expect("10^36 fits in 512 bits and scales never exceed 36");
            decimal::widen(rate.mantissa)
                .checked_mul(factor)
                .expect("a 256-bit mantissa times 10^36 fits in 512 bits")
        };
        let common = self.scale.max(other.scale);
        lift(self, common).cmp(&lift(other, common))
    }
}

impl PartialOrd for Rate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Rate {
    /// The canonical decimal: "65000.12", "1", "0.000123".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&decimal::format_scaled(self.mantissa, self.scale))
    }
}

impl FromStr for Rate {
    type Err = RateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let input = || s.to_owned();
        let parts = decimal::split_decimal(s, RATE_INPUT_LEN_MAX).map_err(|e| match e {
            SyntaxError::Empty => RateError::Empty,
            SyntaxError::TooLong { len } => RateError::TooLong {
                len,
                max: RATE_INPUT_LEN_MAX,
            },
            SyntaxError::InvalidCharacter => RateError::InvalidCharacter { input: input() },
            SyntaxError::MissingDigits => RateError::MissingDigits { input: input() },
        })?;
        // Trailing zeros carry no value; dropping them first keeps "1.50" and "1.5" equal
        // and lets an exactly representable rate through whatever its spelling.
        let frac = parts.frac.trim_end_matches('0');
        if frac.len() > usize::from(RATE_SCALE_MAX) {
            return Err(RateError::TooPrecise {
                input: input(),
                scale_max: RATE_SCALE_MAX,
            });
        }
        let overflow = || RateError::Overflow { input: input() };
        let mantissa = decimal::accumulate_digits(U256::ZERO, parts.int).ok_or_else(overflow)?;
        let mantissa = decimal::accumulate_digits(mantissa, frac).ok_or_else(overflow)?;
        if mantissa.is_zero() {
            return Err(RateError::Zero { input: input() });
        }
        #[allow(clippy::expect_used, reason = "the length was checked just above")]
        let scale = u8::try_from(frac.len()).expect("checked against RATE_SCALE_MAX above");
        Ok(Rate { mantissa, scale })
    }
}

impl_serde_via_str!(Rate);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rate(s: &str) -> Rate {
        s.parse().unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    #[test]
    fn parses_and_displays_canonically() {
        for (input, mantissa, scale, canonical) in [
            ("65000.12", 6_500_012u64, 2u8, "65000.12"),
            ("1", 1, 0, "1"),
            ("0.000123", 123, 6, "0.000123"),
            ("1.50", 15, 1, "1.5"),
            ("100.000", 100, 0, "100"),
            ("007.5", 75, 1, "7.5"),
        ] {
            let r = rate(input);
            assert_eq!(
                (r.mantissa(), r.scale()),
                (U256::from(mantissa), scale),
                "{input}"
            );
            assert_eq!(r.to_string(), canonical, "{input}");
        }
        let tiny = format!("0.{}1", "0".repeat(35));
        assert_eq!(rate(&tiny).scale(), 36);
    }

    #[test]
    fn refuses_bad_rates() {
        assert_eq!("".parse::<Rate>(), Err(RateError::Empty));
        for zero in ["0", "0.000", "000"] {
            assert_eq!(
                zero.parse::<Rate>(),
                Err(RateError::Zero {
                    input: zero.to_owned()
                })
            );
        }
        for bad in [
            "-1", "+1", "1e5", "6.5E4", " 1", "NaN", "inf", "1,5", "1.2.3",
        ] {
            assert_eq!(
                bad.parse::<Rate>(),
                Err(RateError::InvalidCharacter {
                    input: bad.to_owned()
                }),
                "{bad}"
            );
        }
        for bad in ["1.", ".5"] {
            assert_eq!(
                bad.parse::<Rate>(),
                Err(RateError::MissingDigits {
                    input: bad.to_owned()
                })
            );
        }
        let too_fine = format!("0.{}1", "0".repeat(36));
        assert_eq!(
            too_fine.parse::<Rate>(),
            Err(RateError::TooPrecise {
                input: too_fine.clone(),
                scale_max: RATE_SCALE_MAX
            })
        );
        let huge = format!("{}0", U256::MAX);
        assert_eq!(
            huge.parse::<Rate>(),
            Err(RateError::Overflow {
                input: huge.clone()
            })
        );
        let long = "1".repeat(RATE_INPUT_LEN_MAX + 1);
        assert_eq!(
            long.parse::<Rate>(),
            Err(RateError::TooLong {
                len: RATE_INPUT_LEN_MAX + 1,
                max: RATE_INPUT_LEN_MAX
            })
        );
    }

    #[test]
    fn new_normalizes_and_validates() {
        assert_eq!(Rate::new(U256::from(1500u32), 3), Ok(rate("1.5")));
        assert_eq!(
            Rate::new(U256::ZERO, 2),
            Err(RateError::Zero {
                input: "0.00".to_owned()
            })
        );
        assert_eq!(
            Rate::new(U256::from(10u8).pow(U256::from(40u8)), 40),
            Ok(rate("1"))
        );
        assert!(matches!(
            Rate::new(U256::from(1u8), 37),
            Err(RateError::TooPrecise { .. })
        ));
    }

    #[test]
    fn orders_by_value() {
        assert!(rate("0.9") < rate("1"));
        assert!(rate("10") > rate("9.999999"));
        assert_eq!(rate("2.50").cmp(&rate("2.5")), Ordering::Equal);
        assert!(rate("0.000123") < rate("0.00013"));
    }

    #[test]
    fn serde_is_a_string() {
        assert_eq!(
            serde_json::to_string(&rate("65000.12")).ok().as_deref(),
            Some("\"65000.12\"")
        );
        assert_eq!(
            serde_json::from_str::<Rate>("\"1.0\"").ok(),
            Some(rate("1"))
        );
        assert!(serde_json::from_str::<Rate>("1.0").is_err());
        assert!(serde_json::from_str::<Rate>("\"0\"").is_err());
    }

    proptest! {
        #[test]
        fn display_from_str_round_trip(limbs in any::<[u64; 4]>(), scale in 0u8..=RATE_SCALE_MAX) {
            let mantissa = U256::from_limbs(limbs);
            prop_assume!(!mantissa.is_zero());
            let r = Rate::new(mantissa, scale).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let text = r.to_string();
            prop_assert!(!(text.contains('.') && text.ends_with('0')), "not canonical: {}", text);
            prop_assert_eq!(text.parse::<Rate>(), Ok(r.clone()));
            // Normalization only drops trailing zeros: the value is unchanged.
            prop_assert!(r.scale() <= scale);
            let lifted = U256::from(10u8)
                .checked_pow(U256::from(scale - r.scale()))
                .and_then(|factor| r.mantissa().checked_mul(factor));
            prop_assert_eq!(lifted, Some(mantissa));
        }

        #[test]
        fn order_matches_cross_multiplication(
            a in 1u64.., a_scale in 0u8..=18, b in 1u64.., b_scale in 0u8..=18,
        ) {
            let ra = Rate::new(U256::from(a), a_scale).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let rb = Rate::new(U256::from(b), b_scale).map_err(|e| TestCaseError::fail(e.to_string()))?;
            // a / 10^as vs b / 10^bs  <=>  a * 10^(18-as) vs b * 10^(18-bs); fits u128.
            let lhs = u128::from(a) * 10u128.pow(u32::from(18 - a_scale));
            let rhs = u128::from(b) * 10u128.pow(u32::from(18 - b_scale));
            prop_assert_eq!(ra.cmp(&rb), lhs.cmp(&rhs));
            prop_assert_eq!(ra == rb, lhs == rhs);
        }
    }
}
