//! Exact arithmetic on rates for aggregation, and prices read from the literal text of a feed.
//!
//! Invariants:
//! - No value ever passes through a binary floating-point type: a JSON number is read from
//!   its literal text (`97231.5`, `1.2e-5`) and rewritten as a plain decimal before it becomes
//!   a [`Rate`].
//! - Comparisons lift both rates to a common scale in 512 bits, where a 256-bit mantissa times
//!   `10^37` times a basis-point factor cannot overflow.

use alloy_primitives::{U256, U512};

use crate::money::{Rate, RateError};

/// Largest decimal exponent accepted in a JSON number; real prices are nowhere near it.
pub const JSON_EXPONENT_MAX: i64 = 60;

/// Why a price read from a feed is refused; carries what was wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PriceError {
    #[error("not a decimal number")]
    NotANumber,
    #[error("a price must be written as a decimal string")]
    NotAString,
    #[error("negative price")]
    Negative,
    #[error("exponent out of range")]
    Exponent,
    #[error(transparent)]
    Rate(#[from] RateError),
}

/// Parses a decimal string such as `"97215.99000000"`; a leading minus is reported as negative.
pub fn parse_decimal_text(text: &str) -> Result<Rate, PriceError> {
    if text.starts_with('-') {
        return Err(PriceError::Negative);
    }
    Ok(text.parse::<Rate>()?)
}

/// Parses the literal text of a JSON number (`97231`, `0.999842`, `1.2e-5`) exactly.
pub fn parse_json_number(text: &str) -> Result<Rate, PriceError> {
    let unsigned = match text.strip_prefix('-') {
        Some(_) => return Err(PriceError::Negative),
        None => text,
    };
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(at) => (&unsigned[..at], Some(&unsigned[at + 1..])),
        None => (unsigned, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits_only = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !digits_only(int) || !digits_only(frac) || (mantissa.contains('.') && frac.is_empty()) {
        return Err(PriceError::NotANumber);
    }
    let Some(exponent) = exponent else {
        return Ok(unsigned.parse::<Rate>()?);
    };
    let exponent_digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
    if exponent_digits.is_empty() || !digits_only(exponent_digits) {
        return Err(PriceError::NotANumber);
    }
    if exponent_digits.len() > 4 {
        return Err(PriceError::Exponent);
    }
    let magnitude: i64 = exponent_digits.parse().map_err(|_| PriceError::Exponent)?;
    if magnitude > JSON_EXPONENT_MAX {
        return Err(PriceError::Exponent);
    }
    let exponent = if exponent.starts_with('-') { -magnitude } else { magnitude };
    // The value is 0.DIGITS × 10^point with the decimal point `point` digits into DIGITS.
    let digits = format!("{int}{frac}");
    let point = i64::try_from(int.len()).map_err(|_| PriceError::Exponent)? + exponent;
    let len = i64::try_from(digits.len()).map_err(|_| PriceError::Exponent)?;
    let plain = if point <= 0 {
        let zeros = usize::try_from(-point).map_err(|_| PriceError::Exponent)?;
        format!("0.{}{digits}", "0".repeat(zeros))
    } else if point >= len {
        let zeros = usize::try_from(point - len).map_err(|_| PriceError::Exponent)?;
        format!("{digits}{}", "0".repeat(zeros))
    } else {
        let at = usize::try_from(point).map_err(|_| PriceError::Exponent)?;
        format!("{}.{}", &digits[..at], &digits[at..])
    };
    Ok(plain.parse::<Rate>()?)
}

fn pow10(exponent: u8) -> U512 {
    let ten = U512::from(10u8);
    (0..exponent).fold(U512::from(1u8), |acc, _| acc.saturating_mul(ten))
}

/// Both mantissas at the larger of the two scales, and that scale.
fn common_scale(a: &Rate, b: &Rate) -> (U512, U512, u8) {
    let scale = a.scale().max(b.scale());
    let lift = |rate: &Rate| {
        let mantissa = U512::from_limbs_slice(rate.mantissa().as_limbs());
        mantissa.saturating_mul(pow10(scale - rate.scale()))
    };
    (lift(a), lift(b), scale)
}

/// Whether `value` lies more than `bps` basis points of `reference` away from it.
pub fn deviates_bps(value: &Rate, reference: &Rate, bps: u32) -> bool {
    let (value, reference, _) = common_scale(value, reference);
    let distance = if value >= reference { value - reference } else { reference - value };
    distance.saturating_mul(U512::from(crate::money::BPS_WHOLE)) > reference.saturating_mul(U512::from(bps))
}

/// The exact mean of two rates, `None` when it needs more than the 36 fractional digits a
/// rate may have.
pub fn midpoint(a: &Rate, b: &Rate) -> Option<Rate> {
    let (a, b, scale) = common_scale(a, b);
    // (a + b) / 2 = (a + b) × 5 / 10: one more fractional digit, no rounding.
    let scaled = a.checked_add(b)?.checked_mul(U512::from(5u8))?;
    let mantissa = U256::checked_from_limbs_slice(scaled.as_limbs())?;
    Rate::new(mantissa, scale.checked_add(1)?).ok()
}

/// The rate 1.
#[allow(clippy::expect_used, reason = "a constant that is valid by inspection")]
pub fn one() -> Rate {
    Rate::new(U256::from(1u8), 0).expect("1 is positive and has no fractional digits")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(s: &str) -> Rate {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn json_numbers_are_read_from_their_text() {
        for (text, expected) in [
            ("97231", "97231"),
            ("0.999842", "0.999842"),
            ("93112.42", "93112.42"),
            ("1.0", "1"),
            ("1.2e-5", "0.000012"),
            ("1.23E+4", "12300"),
            ("5e3", "5000"),
            ("0.0001e2", "0.01"),
            ("123.456e-1", "12.3456"),
            ("12345e-2", "123.45"),
            ("0.1", "0.1"),
        ] {
            assert_eq!(parse_json_number(text).map(|r| r.to_string()), Ok(expected.to_owned()), "{text}");
        }
        // A value no float can hold survives exactly.
        assert_eq!(
            parse_json_number("0.1000000000000000055511151231257827").map(|r| r.to_string()),
            Ok("0.1000000000000000055511151231257827".to_owned())
        );
    }

    #[test]
    fn bad_json_numbers_are_refused() {
        assert_eq!(parse_json_number("-1"), Err(PriceError::Negative));
        assert_eq!(parse_json_number("-0.5e1"), Err(PriceError::Negative));
        assert!(matches!(parse_json_number("0"), Err(PriceError::Rate(RateError::Zero { .. }))));
        assert!(matches!(parse_json_number("0.0e5"), Err(PriceError::Rate(RateError::Zero { .. }))));
        for bad in ["", ".5", "1.", "1e", "1e+", "abc", "1.2.3", "0x10", "1e5.5", "true", "null", "\"1\""] {
            assert_eq!(parse_json_number(bad), Err(PriceError::NotANumber), "{bad}");
        }
        assert_eq!(parse_json_number("1e61"), Err(PriceError::Exponent));
        assert_eq!(parse_json_number("1e99999"), Err(PriceError::Exponent));
        assert!(matches!(parse_json_number("1e-40"), Err(PriceError::Rate(RateError::TooPrecise { .. }))));
    }

    #[test]
    fn decimal_text_refuses_negative_and_zero() {
        assert_eq!(parse_decimal_text("97215.99000000"), Ok(rate("97215.99")));
        assert_eq!(parse_decimal_text("-3"), Err(PriceError::Negative));
        assert!(matches!(parse_decimal_text("0.00000000"), Err(PriceError::Rate(RateError::Zero { .. }))));
        assert!(matches!(parse_decimal_text("N/A"), Err(PriceError::Rate(RateError::InvalidCharacter { .. }))));
    }

    #[test]
    fn deviation_is_exact_in_basis_points() {
        let median = rate("100");
        assert!(!deviates_bps(&rate("101"), &median, 100), "exactly 100 bps is within");
        assert!(deviates_bps(&rate("101.0000001"), &median, 100));
        assert!(!deviates_bps(&rate("99"), &median, 100));
        assert!(deviates_bps(&rate("98.99"), &median, 100));
        assert!(!deviates_bps(&rate("0.995"), &one(), 50));
        assert!(deviates_bps(&rate("0.9949"), &one(), 50));
        assert!(!deviates_bps(&median, &median, 0));
    }

    #[test]
    fn midpoint_is_exact() {
        assert_eq!(midpoint(&rate("1"), &rate("2")), Some(rate("1.5")));
        assert_eq!(midpoint(&rate("97215.99"), &rate("97234.515")), Some(rate("97225.2525")));
        assert_eq!(midpoint(&rate("3"), &rate("3")), Some(rate("3")));
        let fine = format!("0.{}1", "0".repeat(35));
        assert_eq!(midpoint(&rate(&fine), &rate("1")), None, "needs 37 fractional digits");
    }
}
