//! Tests for `convert`: worked examples, edge cases, and properties checked against
//! straightforward 512-bit cross-multiplication (no cancelled powers of ten).

use alloy_primitives::{U256, U512};
use proptest::prelude::*;

use super::*;
use crate::money::decimal::widen;

fn amount(v: u64) -> Amount {
    Amount::from_u64(v)
}

fn rate(s: &str) -> Rate {
    s.parse().unwrap_or_else(|e| panic!("{s:?}: {e}"))
}

fn fiat(code: &str) -> Fiat {
    code.parse().unwrap_or_else(|e| panic!("{code:?}: {e}"))
}

fn pow10(exp: u32) -> U512 {
    U512::from(10u8).pow(U512::from(exp))
}

#[test]
fn usd_to_btc_rounds_as_asked() {
    let r = rate("65000");
    assert_eq!(
        fiat_to_asset(amount(2500), Fiat::USD, &r, 8, Rounding::Up),
        Ok(amount(38462))
    );
    assert_eq!(
        fiat_to_asset(amount(2500), Fiat::USD, &r, 8, Rounding::Down),
        Ok(amount(38461))
    );
    // 38462 sats are worth 25.0003 USD.
    assert_eq!(
        asset_to_fiat(amount(38462), 8, &r, Fiat::USD, Rounding::Down),
        Ok(amount(2500))
    );
    assert_eq!(
        asset_to_fiat(amount(38462), 8, &r, Fiat::USD, Rounding::Up),
        Ok(amount(2501))
    );
}

#[test]
fn fractional_rates_and_other_minor_units() {
    // 10.00 USD at 3000.5 USD/ETH = 0.003332777870354940843... ETH.
    let eth = rate("3000.5");
    let due = fiat_to_asset(amount(1000), Fiat::USD, &eth, 18, Rounding::Up);
    assert_eq!(due, Ok(amount(3_332_777_870_354_941)));
    // JPY has no minor unit: 1000 JPY at 10,000,000 JPY/BTC is exactly 10,000 sats.
    let btc_jpy = rate("10000000");
    for rounding in [Rounding::Up, Rounding::Down] {
        assert_eq!(
            fiat_to_asset(amount(1000), Fiat::JPY, &btc_jpy, 8, rounding),
            Ok(amount(10_000))
        );
    }
    // KWD has three: 1.000 KWD at 0.5 KWD per token is exactly 2 tokens of 8 decimals.
    let kwd = fiat("KWD");
    assert_eq!(
        fiat_to_asset(amount(1000), kwd, &rate("0.5"), 8, Rounding::Up),
        Ok(amount(200_000_000))
    );
    assert_eq!(
        asset_to_fiat(amount(200_000_000), 8, &rate("0.5"), kwd, Rounding::Down),
        Ok(amount(1000))
    );
    // A stablecoin at par with 6 decimals.
    assert_eq!(
        fiat_to_asset(amount(2599), Fiat::USD, &rate("1"), 6, Rounding::Up),
        Ok(amount(25_990_000))
    );
    assert_eq!(
        asset_to_fiat(amount(25_990_001), 6, &rate("1"), Fiat::USD, Rounding::Up),
        Ok(amount(2600))
    );
}

#[test]
fn zero_converts_to_zero() {
    let r = rate("0.000001");
    assert_eq!(
        fiat_to_asset(Amount::ZERO, Fiat::USD, &r, 255, Rounding::Up),
        Ok(Amount::ZERO)
    );
    assert_eq!(
        asset_to_fiat(Amount::ZERO, 255, &r, Fiat::USD, Rounding::Up),
        Ok(Amount::ZERO)
    );
}

#[test]
fn extreme_decimals_are_handled_exactly() {
    let tiny = rate(&format!("0.{}1", "0".repeat(35)));
    // The true result is astronomically large: an error, not a wrapped value.
    assert_eq!(
        fiat_to_asset(amount(1), Fiat::USD, &tiny, 255, Rounding::Down),
        Err(ConvertError::Overflow)
    );
    // The true result is a tiny positive fraction: 0 rounded down, 1 rounded up.
    let r = rate("65000");
    assert_eq!(
        asset_to_fiat(amount(1), 255, &r, Fiat::USD, Rounding::Down),
        Ok(Amount::ZERO)
    );
    assert_eq!(
        asset_to_fiat(amount(1), 255, &r, Fiat::USD, Rounding::Up),
        Ok(amount(1))
    );
    // A huge rate times a huge amount overflows.
    let huge = Rate::new(U256::MAX, 0).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        asset_to_fiat(Amount::MAX, 0, &huge, Fiat::USD, Rounding::Down),
        Err(ConvertError::Overflow)
    );
    // Exactly U256::MAX still fits.
    assert_eq!(
        asset_to_fiat(Amount::MAX, 2, &rate("1"), Fiat::USD, Rounding::Up),
        Ok(Amount::MAX)
    );
}

#[test]
fn mul_div_examples() {
    assert_eq!(
        mul_div(amount(7), amount(3), amount(2), Rounding::Down),
        Ok(amount(10))
    );
    assert_eq!(
        mul_div(amount(7), amount(3), amount(2), Rounding::Up),
        Ok(amount(11))
    );
    assert_eq!(
        mul_div(amount(6), amount(3), amount(2), Rounding::Up),
        Ok(amount(9))
    );
    assert_eq!(
        mul_div(Amount::MAX, Amount::MAX, Amount::MAX, Rounding::Up),
        Ok(Amount::MAX)
    );
    assert_eq!(
        mul_div(Amount::MAX, amount(2), amount(1), Rounding::Down),
        Err(ConvertError::Overflow)
    );
    assert_eq!(
        mul_div(amount(1), amount(1), Amount::ZERO, Rounding::Down),
        Err(ConvertError::DivisionByZero)
    );
    assert_eq!(
        mul_div(Amount::ZERO, amount(1), Amount::ZERO, Rounding::Down),
        Err(ConvertError::DivisionByZero)
    );
    assert_eq!(
        mul_div(Amount::ZERO, Amount::MAX, amount(3), Rounding::Up),
        Ok(Amount::ZERO)
    );
}

#[test]
fn split_examples() {
    let split = split_bps(amount(1001), &[7000, 3000]);
    assert_eq!(
        split,
        Ok(Split {
            shares: vec![amount(700), amount(300)],
            remainder: amount(1)
        })
    );
    let split = split_bps(amount(1000), &[2500]);
    assert_eq!(
        split,
        Ok(Split {
            shares: vec![amount(250)],
            remainder: amount(750)
        })
    );
    let split = split_bps(amount(5), &[]);
    assert_eq!(
        split,
        Ok(Split {
            shares: vec![],
            remainder: amount(5)
        })
    );
    let split = split_bps(Amount::MAX, &[BPS_WHOLE]);
    assert_eq!(
        split,
        Ok(Split {
            shares: vec![Amount::MAX],
            remainder: Amount::ZERO
        })
    );
}

#[test]
fn split_refuses_more_than_the_whole() {
    assert_eq!(
        split_bps(amount(100), &[6000, 5000]),
        Err(ConvertError::SharesExceedWhole { bps_total: 11_000 })
    );
    assert_eq!(
        split_bps(amount(100), &[u32::MAX, u32::MAX]),
        Err(ConvertError::SharesExceedWhole {
            bps_total: 2 * u64::from(u32::MAX)
        })
    );
    let many = vec![0; SPLIT_SHARES_MAX + 1];
    assert_eq!(
        split_bps(amount(100), &many),
        Err(ConvertError::TooManyShares {
            count: SPLIT_SHARES_MAX + 1,
            max: SPLIT_SHARES_MAX
        })
    );
}

fn any_u256() -> impl Strategy<Value = U256> {
    any::<[u64; 4]>().prop_map(U256::from_limbs)
}

fn any_fiat() -> impl Strategy<Value = Fiat> {
    let all: Vec<Fiat> = Fiat::all().collect();
    prop::sample::select(all)
}

fn any_rounding() -> impl Strategy<Value = Rounding> {
    prop_oneof![Just(Rounding::Up), Just(Rounding::Down)]
}

/// Checks that `result` is `numerator / denominator` rounded as asked, or that the rounded
/// value really exceeds `U256::MAX` when `result` is `Overflow`.
fn check_rounded(
    result: Result<Amount, ConvertError>,
    numerator: U512,
    denominator: U512,
    rounding: Rounding,
) -> Result<(), TestCaseError> {
    match result {
        Ok(r) => {
            let below = widen(r.as_u256()) * denominator;
            let above = below + denominator;
            match rounding {
                // r >= exact > r - 1
                Rounding::Up => prop_assert!(below >= numerator && below < numerator + denominator),
                // r <= exact < r + 1
                Rounding::Down => prop_assert!(below <= numerator && above > numerator),
            }
        }
        Err(ConvertError::Overflow) => {
            let max = widen(U256::MAX) * denominator;
            match rounding {
                Rounding::Up => prop_assert!(numerator > max),
                Rounding::Down => prop_assert!(numerator >= max + denominator),
            }
        }
        Err(other) => prop_assert!(false, "unexpected error {other}"),
    }
    Ok(())
}

proptest! {
    #[test]
    fn fiat_to_asset_is_the_exact_value_rounded(
        fiat_minor in any::<u128>(),
        mantissa in 1u128..,
        scale in 0u8..=18,
        asset_decimals in 0u8..=18,
        currency in any_fiat(),
        rounding in any_rounding(),
    ) {
        let r = Rate::new(U256::from(mantissa), scale).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let result = fiat_to_asset(Amount::from_u128(fiat_minor), currency, &r, asset_decimals, rounding);
        // Use the un-normalized inputs so the check does not share the rate's arithmetic.
        let numerator = U512::from(fiat_minor) * pow10(u32::from(asset_decimals) + u32::from(scale));
        let denominator = U512::from(mantissa) * pow10(u32::from(currency.minor_units()));
        prop_assert!(result.is_ok(), "{:?}", result);
        check_rounded(result, numerator, denominator, rounding)?;
    }

    #[test]
    fn asset_to_fiat_is_the_exact_value_rounded(
        asset_minor in any::<u128>(),
        mantissa in 1u128..,
        scale in 0u8..=18,
        asset_decimals in 0u8..=18,
        currency in any_fiat(),
        rounding in any_rounding(),
    ) {
        let r = Rate::new(U256::from(mantissa), scale).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let result = asset_to_fiat(Amount::from_u128(asset_minor), asset_decimals, &r, currency, rounding);
        let numerator = U512::from(asset_minor) * U512::from(mantissa) * pow10(u32::from(currency.minor_units()));
        let denominator = pow10(u32::from(asset_decimals) + u32::from(scale));
        check_rounded(result, numerator, denominator, rounding)?;
    }

    #[test]
    fn merchant_is_never_short(
        fiat_minor in any::<u64>(),
        mantissa in 1u64..,
        scale in 0u8..=12,
        asset_decimals in 0u8..=24,
        currency in any_fiat(),
    ) {
        // What the payer is asked for, converted back at the same rate, covers the price.
        let r = Rate::new(U256::from(mantissa), scale).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let due = fiat_to_asset(Amount::from_u64(fiat_minor), currency, &r, asset_decimals, Rounding::Up)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let back = asset_to_fiat(due, asset_decimals, &r, currency, Rounding::Down)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(back >= Amount::from_u64(fiat_minor), "due {} back {}", due, back);
    }

    #[test]
    fn mul_div_is_the_exact_value_rounded(
        a in any_u256(),
        b in any_u256(),
        c in any_u256(),
        rounding in any_rounding(),
    ) {
        prop_assume!(!c.is_zero());
        let result = mul_div(Amount::from_u256(a), Amount::from_u256(b), Amount::from_u256(c), rounding);
        check_rounded(result, widen(a) * widen(b), widen(c), rounding)?;
    }

    #[test]
    fn mul_div_small_values_match_u128(a in any::<u64>(), b in any::<u64>(), c in 1u64.., rounding in any_rounding()) {
        let exact = u128::from(a) * u128::from(b);
        let divisor = u128::from(c);
        let expected = match rounding {
            Rounding::Down => exact / divisor,
            Rounding::Up => exact.div_ceil(divisor),
        };
        let result = mul_div(Amount::from_u64(a), Amount::from_u64(b), Amount::from_u64(c), rounding);
        prop_assert_eq!(result, Ok(Amount::from_u128(expected)));
    }

    #[test]
    fn split_loses_nothing(
        total in any_u256(),
        bps in prop::collection::vec(0u32..=1250, 0..=8),
        complete in any::<bool>(),
    ) {
        let mut bps = bps;
        let used: u32 = bps.iter().sum();
        if complete {
            bps.push(BPS_WHOLE - used);
        }
        let split = split_bps(Amount::from_u256(total), &bps).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(split.shares.len(), bps.len());
        let shares_sum = split.shares.iter().fold(U512::ZERO, |acc, s| acc + widen(s.as_u256()));
        prop_assert_eq!(shares_sum + widen(split.remainder.as_u256()), widen(total));
        let whole = U512::from(BPS_WHOLE);
        for (share, weight) in split.shares.iter().zip(&bps) {
            let exact = widen(total) * U512::from(*weight);
            let share = widen(share.as_u256());
            // share == floor(total * bps / 10000)
            prop_assert!(share * whole <= exact && (share + U512::from(1u8)) * whole > exact);
        }
        if complete {
            // Only rounding dust is left, less than one unit per share.
            prop_assert!(widen(split.remainder.as_u256()) < U512::from(bps.len()));
        }
    }
}
