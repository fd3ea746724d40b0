//! Amounts a person can send: a quote rounded up to the decimals a payer types, and shown with
//! them (`25.00` USDC, `0.008334` ETH), instead of every last unit the asset has.
//!
//! Invariants:
//! - the rounded amount is never below the exact one (the merchant never receives less than the
//!   price at the locked rate);
//! - it exceeds the exact one by at most [`DISPLAY_EXCESS_PER_MILLE`] per mille: where rounding to
//!   the display decimals would add more (a tiny invoice in a dear coin), more decimals are kept,
//!   up to all the asset has (then it is exact).

use super::{mul_div, Amount, Rounding};

/// The most the rounding may add to an amount: 1 per mille (0.1 %).
pub const DISPLAY_EXCESS_PER_MILLE: u64 = 1;

/// Decimals a payer is asked for unless configured otherwise: stablecoins to the cent, bitcoin to
/// the satoshi, other coins to six places — never more than the asset has.
pub fn default_display_decimals(symbol: &str, decimals: u8) -> u8 {
    let stable = ["USDC", "USDT", "DAI"].contains(&symbol) || symbol.contains("USD");
    let wanted = if stable {
        2
    } else if symbol == "BTC" {
        8
    } else {
        6
    };
    wanted.min(decimals)
}

/// `exact` (in an asset of `decimals`) rounded up to `display` decimals, or to as few more as keep
/// the increase within [`DISPLAY_EXCESS_PER_MILLE`] per mille of `exact`; and the decimals used.
pub fn round_for_payer(exact: Amount, decimals: u8, display: u8) -> (Amount, u8) {
    let mut shown = display.min(decimals);
    while shown < decimals {
        if let Some(rounded) = round_up(exact, decimals - shown) {
            let excess = rounded.saturating_sub(exact);
            if excess.checked_mul_u64(1_000 / DISPLAY_EXCESS_PER_MILLE).is_some_and(|scaled| scaled <= exact) {
                return (rounded, shown);
            }
        }
        shown += 1;
    }
    (exact, decimals)
}

/// `amount` rounded up to a multiple of 10^`places`; `None` on overflow.
fn round_up(amount: Amount, places: u8) -> Option<Amount> {
    let step = (0..places).try_fold(Amount::from_u64(1), |step, _| step.checked_mul_u64(10))?;
    let units = mul_div(amount, Amount::from_u64(1), step, Rounding::Up).ok()?;
    units.checked_mul(step)
}

/// `amount` as a decimal string with at least `shown` decimals and no trailing zeros beyond them:
/// `25.00`, `0.008334`, `1.5` with `shown` = 1.
pub fn display_string(amount: Amount, decimals: u8, shown: u8) -> String {
    let full = amount.to_decimal_string(decimals);
    let Some((whole, fraction)) = full.split_once('.') else { return full };
    let keep = usize::from(shown.min(decimals));
    let trimmed = fraction.trim_end_matches('0');
    let fraction = if trimmed.len() >= keep { trimmed } else { &fraction[..keep] };
    if fraction.is_empty() {
        whole.to_owned()
    } else {
        format!("{whole}.{fraction}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn amount(text: &str, decimals: u8) -> Amount {
        Amount::parse_decimal(text, decimals).expect("amount")
    }

    #[test]
    fn defaults_by_kind_of_asset() {
        assert_eq!(default_display_decimals("USDC", 6), 2);
        assert_eq!(default_display_decimals("DAI", 18), 2);
        assert_eq!(default_display_decimals("BTC", 8), 8);
        assert_eq!(default_display_decimals("ETH", 18), 6);
        assert_eq!(default_display_decimals("POL", 18), 6);
        assert_eq!(default_display_decimals("TINY", 4), 4);
    }

    #[test]
    fn a_quote_is_rounded_up_to_what_a_payer_types() {
        // 25 USD at 3000 USD/ETH.
        let (eth, shown) = round_for_payer(amount("0.008333333333333334", 18), 18, 6);
        assert_eq!((display_string(eth, 18, shown).as_str(), shown), ("0.008334", 6));
        let (usdc, shown) = round_for_payer(amount("25", 6), 6, 2);
        assert_eq!(display_string(usdc, 6, shown), "25.00");
        let (dai, shown) = round_for_payer(amount("24.999999999999999999", 18), 18, 2);
        assert_eq!(display_string(dai, 18, shown), "25.00");
        let (pol, shown) = round_for_payer(amount("50.000000000000000001", 18), 18, 6);
        assert_eq!(display_string(pol, 18, shown), "50.000001");
    }

    #[test]
    fn a_tiny_amount_keeps_the_decimals_that_hold_the_excess_under_a_per_mille() {
        // 0.01 USD in ETH: six decimals would add about 20 %.
        let exact = amount("0.000003333333333334", 18);
        let (rounded, shown) = round_for_payer(exact, 18, 6);
        assert_eq!((display_string(rounded, 18, shown).as_str(), shown), ("0.000003334", 9));
        let (one, shown) = round_for_payer(Amount::from_u64(1), 18, 6);
        assert_eq!((one, shown), (Amount::from_u64(1), 18), "a single unit stays exact");
    }

    proptest! {
        #[test]
        fn rounding_never_lowers_and_adds_at_most_a_per_mille(units in 1u128..u128::MAX / 1_000, display in 0u8..=18) {
            let exact = Amount::from_u128(units);
            let (rounded, shown) = round_for_payer(exact, 18, display);
            prop_assert!(rounded >= exact);
            let excess = rounded.checked_sub(exact).expect("not below");
            prop_assert!(excess.checked_mul_u64(1_000).expect("fits") <= exact);
            prop_assert!(shown >= display.min(18));
            prop_assert_eq!(display_string(rounded, 18, shown).parse::<String>().ok().map(|s| Amount::parse_decimal(&s, 18).ok()), Some(Some(rounded)));
        }
    }
}
