//! Shared decimal-string syntax and wide-integer helpers for `Amount`, `Rate` and the
//! conversions.
//!
//! Invariants:
//! - The only accepted decimal syntax is `DIGITS` or `DIGITS.DIGITS` with ASCII digits on
//!   both sides of at most one dot. Signs, exponents, whitespace, separators and a bare
//!   leading or trailing dot are refused, so one value has few spellings and none of them is
//!   guessed at.
//! - Digit accumulation is checked: an input that does not fit `U256` is an error, never a
//!   wrapped value.
//! - `widen` and `pow10_u512` never lose information; narrowing is always checked by callers.

use alloy_primitives::{U256, U512};

/// Why a string is not a well-formed unsigned decimal; callers attach the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SyntaxError {
    Empty,
    TooLong { len: usize },
    InvalidCharacter,
    MissingDigits,
}

/// The two digit runs of a well-formed decimal; `frac` is empty when there was no dot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DecimalParts<'a> {
    pub(crate) int: &'a str,
    pub(crate) frac: &'a str,
}

/// Splits `s` into integer and fraction digits, refusing anything but `D+` or `D+.D+`.
///
/// The length is checked first so that no work (and no error payload) scales with an
/// attacker-sized input.
pub(crate) fn split_decimal(s: &str, len_max: usize) -> Result<DecimalParts<'_>, SyntaxError> {
    if s.len() > len_max {
        return Err(SyntaxError::TooLong { len: s.len() });
    }
    if s.is_empty() {
        return Err(SyntaxError::Empty);
    }
    let (int, frac, had_dot) = match s.split_once('.') {
        Some((int, frac)) => (int, frac, true),
        None => (s, "", false),
    };
    let all_digits = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
    // A second dot lands in `frac` and is refused here as an invalid character.
    if !all_digits(int) || !all_digits(frac) {
        return Err(SyntaxError::InvalidCharacter);
    }
    // "1." and ".5" are refused: a lone dot usually means a truncated or mangled value.
    if int.is_empty() || (had_dot && frac.is_empty()) {
        return Err(SyntaxError::MissingDigits);
    }
    Ok(DecimalParts { int, frac })
}

/// Accumulates ASCII digits into a `U256`; `None` on overflow. Callers have already checked
/// that every byte is a digit; a non-digit also yields `None` rather than a wrong value.
pub(crate) fn accumulate_digits(acc: U256, digits: &str) -> Option<U256> {
    let ten = U256::from(10u8);
    digits.bytes().try_fold(acc, |acc, b| {
        let digit = b.checked_sub(b'0').filter(|d| *d <= 9)?;
        acc.checked_mul(ten)?.checked_add(U256::from(digit))
    })
}

/// Appends `count` zero digits to `acc` (multiplies by `10^count`); `None` on overflow.
/// Zero stays zero for any `count`, so "0" is valid at every scale.
pub(crate) fn append_zeros(acc: U256, count: usize) -> Option<U256> {
    if acc.is_zero() {
        return Some(acc);
    }
    let ten = U256::from(10u8);
    (0..count).try_fold(acc, |acc, _| acc.checked_mul(ten))
}

/// Formats `value / 10^scale` with exactly `scale` fractional digits (no dot when 0).
pub(crate) fn format_scaled(value: U256, scale: u8) -> String {
    let digits = value.to_string();
    let scale = usize::from(scale);
    if scale == 0 {
        return digits;
    }
    // Left-pad so there is at least one integer digit before the dot.
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{int}.{frac}")
}

/// Zero-extends a `U256` into a `U512`; lossless by construction.
pub(crate) fn widen(value: U256) -> U512 {
    let mut limbs = [0u64; 8];
    limbs[..4].copy_from_slice(value.as_limbs());
    U512::from_limbs(limbs)
}

/// Narrows a `U512` to a `U256`; `None` when the value does not fit.
pub(crate) fn narrow(value: U512) -> Option<U256> {
    U256::checked_from_limbs_slice(value.as_limbs())
}

/// `10^exp` as a `U512`; `None` once it exceeds 512 bits (exp > 154).
pub(crate) fn pow10_u512(exp: u32) -> Option<U512> {
    U512::from(10u8).checked_pow(U512::from(exp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_accepts_plain_and_dotted() {
        assert_eq!(
            split_decimal("12.50", 100),
            Ok(DecimalParts {
                int: "12",
                frac: "50"
            })
        );
        assert_eq!(
            split_decimal("007", 100),
            Ok(DecimalParts {
                int: "007",
                frac: ""
            })
        );
    }

    #[test]
    fn split_refuses_malformed() {
        for bad in ["+1", "-1", "1e5", " 1", "1 ", "1,0", "1.2.3", "1_0", "٣"] {
            assert_eq!(
                split_decimal(bad, 100),
                Err(SyntaxError::InvalidCharacter),
                "{bad}"
            );
        }
        for bad in ["1.", ".5", "."] {
            assert_eq!(
                split_decimal(bad, 100),
                Err(SyntaxError::MissingDigits),
                "{bad}"
            );
        }
        assert_eq!(split_decimal("", 100), Err(SyntaxError::Empty));
        assert_eq!(
            split_decimal("1234", 3),
            Err(SyntaxError::TooLong { len: 4 })
        );
    }

    #[test]
    fn accumulate_detects_overflow_at_the_boundary() {
        let max = U256::MAX.to_string();
        assert_eq!(accumulate_digits(U256::ZERO, &max), Some(U256::MAX));
        // U256::MAX ends in ...935; one more unit must overflow.
        let over = format!("{}6", &max[..max.len() - 1]);
        assert_eq!(accumulate_digits(U256::ZERO, &over), None);
        assert_eq!(accumulate_digits(U256::ZERO, "12a"), None);
    }

    #[test]
    fn append_zeros_keeps_zero_and_checks_overflow() {
        assert_eq!(append_zeros(U256::ZERO, 500), Some(U256::ZERO));
        assert_eq!(append_zeros(U256::from(7u8), 3), Some(U256::from(7000u32)));
        assert_eq!(append_zeros(U256::from(1u8), 78), None);
    }

    #[test]
    fn format_pads_and_places_the_dot() {
        assert_eq!(format_scaled(U256::from(2500u32), 2), "25.00");
        assert_eq!(format_scaled(U256::from(5u8), 3), "0.005");
        assert_eq!(format_scaled(U256::ZERO, 2), "0.00");
        assert_eq!(format_scaled(U256::from(42u8), 0), "42");
    }

    #[test]
    fn widen_and_narrow_round_trip() {
        assert_eq!(narrow(widen(U256::MAX)), Some(U256::MAX));
        assert_eq!(narrow(widen(U256::MAX) + U512::from(1u8)), None);
        assert!(pow10_u512(154).is_some());
        assert!(pow10_u512(155).is_none());
    }
}
