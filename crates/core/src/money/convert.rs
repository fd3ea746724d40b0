//! Exact conversions between fiat and asset amounts, `a * b / c`, and basis-point splits.
//!
//! Invariants:
//! - Every division names its `Rounding`; nothing rounds implicitly.
//! - Intermediates are 512-bit with checked operations; a result that does not fit `U256`
//!   is `ConvertError::Overflow`, never a wrapped or truncated value.
//! - Powers of ten from decimals, minor units and rate scale are cancelled against each
//!   other before multiplying, so only a genuinely out-of-range result can overflow.
//! - `split_bps` loses nothing: shares plus remainder always equal the total.

use alloy_primitives::{U256, U512};

use super::amount::Amount;
use super::decimal::{narrow, pow10_u512, widen};
use super::fiat::Fiat;
use super::rate::Rate;
use super::BPS_WHOLE;

/// Most shares one `split_bps` call accepts.
pub const SPLIT_SHARES_MAX: usize = 1_000;

/// Which way a division that does not come out even goes.
///
/// Policy: an amount due from a payer rounds `Up` to the asset's smallest unit, so the
/// merchant is never short; a share paid out (to a creator, a merchant, the platform)
/// rounds `Down`, and the remainder goes to a named account, so every entry still sums to
/// zero.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Rounding {
    /// Towards positive infinity (ceiling): amounts due from a payer.
    Up,
    /// Towards zero (floor): shares paid out.
    Down,
}

/// Errors from the conversions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("conversion result does not fit in 256 bits")]
    Overflow,
    #[error("division by zero")]
    DivisionByZero,
    #[error("shares add up to {bps_total} basis points, more than the whole of 10000")]
    SharesExceedWhole { bps_total: u64 },
    #[error("{count} shares requested, more than the maximum of {max}")]
    TooManyShares { count: usize, max: usize },
}

/// A total divided into shares; `shares` sum with `remainder` to the total.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// One share per requested basis-point weight, in the same order, rounded down.
    pub shares: Vec<Amount>,
    /// The unallocated part plus the rounding dust; goes to a named account.
    pub remainder: Amount,
}

/// `a * b * 10^exp10 / c`, rounded as asked, computed exactly.
fn scaled_ratio(
    a: U256,
    b: U256,
    c: U256,
    exp10: i32,
    rounding: Rounding,
) -> Result<Amount, ConvertError> {
    if c.is_zero() {
        return Err(ConvertError::DivisionByZero);
    }
    // (2^256 - 1)^2 < 2^512, so the product of two U256 always fits.
    let mut numerator = widen(a)
        .checked_mul(widen(b))
        .ok_or(ConvertError::Overflow)?;
    if numerator.is_zero() {
        return Ok(Amount::ZERO);
    }
    let mut denominator = widen(c);
    let shift = exp10.unsigned_abs();
    if exp10 >= 0 {
        // If numerator * 10^shift exceeds 512 bits, dividing by c < 2^256 leaves more than
        // 2^256: a true overflow of the result, not just of the intermediate.
        numerator = pow10_u512(shift)
            .and_then(|p| numerator.checked_mul(p))
            .ok_or(ConvertError::Overflow)?;
    } else {
        match pow10_u512(shift).and_then(|p| denominator.checked_mul(p)) {
            Some(d) => denominator = d,
            // A denominator beyond 512 bits exceeds any numerator: the quotient is
            // below one unit and non-zero.
            None => return round_fraction(U512::ZERO, true, rounding),
        }
    }
    let (quotient, remainder) = numerator.div_rem(denominator);
    round_fraction(quotient, !remainder.is_zero(), rounding)
}

/// Applies the rounding to a floor quotient and narrows it to an `Amount`.
fn round_fraction(floor: U512, inexact: bool, rounding: Rounding) -> Result<Amount, ConvertError> {
    let rounded = match rounding {
        Rounding::Up if inexact => floor
            .checked_add(U512::from(1u8))
            .ok_or(ConvertError::Overflow)?,
        Rounding::Up | Rounding::Down => floor,
    };
    narrow(rounded)
        .map(Amount::from_u256)
        .ok_or(ConvertError::Overflow)
}

/// Converts a fiat amount (in the currency's minor units) to the asset's smallest units:
/// `fiat_minor * 10^asset_decimals * 10^rate.scale / (rate.mantissa * 10^fiat.minor_units)`.
///
/// Example: 2500 USD cents at 65000 USD per BTC, 8 decimals, `Up` -> 38462 sats.
pub fn fiat_to_asset(
    fiat_minor: Amount,
    fiat: Fiat,
    rate: &Rate,
    asset_decimals: u8,
    rounding: Rounding,
) -> Result<Amount, ConvertError> {
    let exp10 = i32::from(asset_decimals) + i32::from(rate.scale()) - i32::from(fiat.minor_units());
    scaled_ratio(
        fiat_minor.as_u256(),
        U256::from(1u8),
        rate.mantissa(),
        exp10,
        rounding,
    )
}

/// Converts an asset amount (in smallest units) to the currency's minor units:
/// `asset_minor * rate.mantissa * 10^fiat.minor_units / (10^asset_decimals * 10^rate.scale)`.
pub fn asset_to_fiat(
    asset_minor: Amount,
    asset_decimals: u8,
    rate: &Rate,
    fiat: Fiat,
    rounding: Rounding,
) -> Result<Amount, ConvertError> {
    let exp10 = i32::from(fiat.minor_units()) - i32::from(asset_decimals) - i32::from(rate.scale());
    scaled_ratio(
        asset_minor.as_u256(),
        rate.mantissa(),
        U256::from(1u8),
        exp10,
        rounding,
    )
}

/// `a * b / c` exactly, with a 512-bit intermediate, rounded as asked.
pub fn mul_div(
    a: Amount,
    b: Amount,
    c: Amount,
    rounding: Rounding,
) -> Result<Amount, ConvertError> {
    scaled_ratio(a.as_u256(), b.as_u256(), c.as_u256(), 0, rounding)
}

/// Splits `total` by basis-point weights: share `i` is `floor(total * bps[i] / 10000)`,
/// and the remainder (unallocated basis points plus rounding dust) is returned separately
/// so that `sum(shares) + remainder == total`.
pub fn split_bps(total: Amount, bps: &[u32]) -> Result<Split, ConvertError> {
    if bps.len() > SPLIT_SHARES_MAX {
        return Err(ConvertError::TooManyShares {
            count: bps.len(),
            max: SPLIT_SHARES_MAX,
        });
    }
    // At most SPLIT_SHARES_MAX * u32::MAX, far below u64::MAX.
    let bps_total: u64 = bps.iter().map(|b| u64::from(*b)).sum();
    if bps_total > u64::from(BPS_WHOLE) {
        return Err(ConvertError::SharesExceedWhole { bps_total });
    }
    let whole = Amount::from_u64(u64::from(BPS_WHOLE));
    let shares = bps
        .iter()
        .map(|b| {
            mul_div(
                total,
                Amount::from_u64(u64::from(*b)),
                whole,
                Rounding::Down,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    #[allow(clippy::expect_used, reason = "an invariant of the shares, proven above")]
    let allocated = Amount::checked_sum(shares.iter().copied())
        .expect("floored shares of at most 10000 bps in total sum to at most the total");
    #[allow(clippy::expect_used, reason = "an invariant of the shares, proven above")]
    let remainder = total
        .checked_sub(allocated)
        .expect("floored shares of at most 10000 bps in total sum to at most the total");
    Ok(Split { shares, remainder })
}

#[cfg(test)]
mod tests;
