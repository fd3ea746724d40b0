//! Reversing part of a payment's ledger entry, pure.
//!
//! A refund or a dispute takes back `returned` of a payment of `whole`: each posting of the
//! payment's entry is taken back in proportion. Per asset and side, the amount taken back is
//! `floor(side total × returned / whole)`; each posting gets `floor(amount × returned / whole)` and
//! the rounding dust goes to the largest posting of its side (usually the merchant's share; on an
//! invoice whose creators take more than the merchant, the largest creator's), so both sides stay
//! equal and the entry balances.
//!
//! Shares are always computed for the cumulative amount returned, and an entry posts the change
//! from the previous cumulative amount. So a payment refunded in several parts is reversed, in
//! total, exactly as if refunded at once, and a fully returned payment is reversed to the unit.

use std::collections::BTreeMap;

use super::{Posting, Side};
use crate::money::{mul_div, Amount, Rounding};

/// The share of each posting of `postings` taken back when `returned` of `whole` went back.
/// `returned` is clamped to `whole`.
pub fn returned_shares(postings: &[Posting], returned: Amount, whole: Amount) -> Vec<Amount> {
    let returned = returned.min(whole);
    let mut shares: Vec<Amount> = postings
        .iter()
        .map(|p| mul_div(p.amount, returned, whole, Rounding::Down).unwrap_or(Amount::ZERO))
        .collect();
    // Per (asset, side): what the side gives back in total, and who takes the dust.
    let mut sides: BTreeMap<(&str, Side), (Amount, Option<usize>)> = BTreeMap::new();
    for (index, posting) in postings.iter().enumerate() {
        let entry = sides.entry((posting.asset.as_str(), posting.side)).or_insert((Amount::ZERO, None));
        entry.0 = entry.0.checked_add(posting.amount).unwrap_or(Amount::MAX);
        let largest = entry.1.is_none_or(|i| postings[i].amount < posting.amount);
        if largest {
            entry.1 = Some(index);
        }
    }
    for ((asset, side), (total, largest)) in &sides {
        let Some(largest) = *largest else { continue };
        let side_share = mul_div(*total, returned, whole, Rounding::Down).unwrap_or(Amount::ZERO);
        let given: Amount = postings
            .iter()
            .zip(&shares)
            .filter(|(p, _)| p.asset == *asset && p.side == *side)
            .fold(Amount::ZERO, |sum, (_, share)| sum.checked_add(*share).unwrap_or(Amount::MAX));
        let dust = side_share.saturating_sub(given);
        shares[largest] = shares[largest].checked_add(dust).unwrap_or(Amount::MAX);
    }
    shares
}

/// The postings that move the reversal of `postings` from `before` returned to `after` returned
/// (of `whole`). More returned gives postings on the opposite sides; less (a dispute won back)
/// gives postings on the original sides. Zero changes are left out; the result balances per asset.
pub fn reversal_delta(postings: &[Posting], before: Amount, after: Amount, whole: Amount) -> Vec<Posting> {
    let old = returned_shares(postings, before, whole);
    let new = returned_shares(postings, after, whole);
    postings
        .iter()
        .zip(old.iter().zip(&new))
        .filter_map(|(posting, (old, new))| {
            if new > old {
                Some(Posting { amount: new.saturating_sub(*old), ..posting.reversed() })
            } else if old > new {
                Some(Posting { amount: old.saturating_sub(*new), ..posting.clone() })
            } else {
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{AccountCode, NewEntry};
    use proptest::prelude::*;

    const USD: &str = "iso4217:USD";

    fn split(total: u64, creator_share: u64) -> Vec<Posting> {
        let mut postings = vec![Posting::debit(AccountCode::stripe(crate::money::Fiat::USD), USD, Amount::from_u64(total))];
        if creator_share > 0 {
            postings.push(Posting::credit(AccountCode::creator("cr_a"), USD, Amount::from_u64(creator_share)));
        }
        postings.push(Posting::credit(AccountCode::merchant("mer_a"), USD, Amount::from_u64(total - creator_share)));
        postings
    }

    fn sum(postings: &[Posting], side: Side) -> u128 {
        postings.iter().filter(|p| p.side == side).map(|p| p.amount.to_string().parse::<u128>().unwrap_or(0)).sum()
    }

    #[test]
    fn a_partial_refund_of_a_plain_payment_reverses_that_amount() {
        let postings = split(2500, 0);
        let delta = reversal_delta(&postings, Amount::ZERO, Amount::from_u64(1000), Amount::from_u64(2500));
        assert_eq!(delta.len(), 2);
        assert!(delta.iter().all(|p| p.amount == Amount::from_u64(1000)));
        let stripe = delta.iter().find(|p| p.account.as_str().starts_with("assets:stripe")).expect("asset line");
        assert_eq!(stripe.side, Side::Credit, "money leaves the stripe balance");
    }

    #[test]
    fn a_split_is_reversed_in_proportion_with_the_dust_on_the_largest_share() {
        // 70/30 of 1001, refund 333: the creator gives back floor(300 × 333 / 1001) = 99, the
        // merchant the rest of floor(1001 × 333 / 1001) = 333.
        let postings = split(1001, 300);
        let delta = reversal_delta(&postings, Amount::ZERO, Amount::from_u64(333), Amount::from_u64(1001));
        let creator = delta.iter().find(|p| p.account.as_str().contains("creator")).expect("creator");
        let merchant = delta.iter().find(|p| p.account.as_str().contains("merchant")).expect("merchant");
        assert_eq!(creator.amount, Amount::from_u64(99));
        assert_eq!(merchant.amount, Amount::from_u64(234));
        assert_eq!(sum(&delta, Side::Debit), sum(&delta, Side::Credit));
    }

    proptest! {
        #[test]
        fn steps_add_up_to_the_whole_and_every_step_balances(
            total in 1u64..1_000_000, creator_pct in 0u64..100, cuts in proptest::collection::vec(1u64..1_000_000, 1..6),
        ) {
            let creator = total * creator_pct / 100;
            let postings = split(total, creator);
            let whole = Amount::from_u64(total);
            let mut before = 0u64;
            let mut cumulative: BTreeMap<(String, Side), u128> = BTreeMap::new();
            let mut steps: Vec<u64> = cuts.iter().map(|c| c % total + 1).collect();
            steps.sort_unstable();
            steps.push(total);
            for after in steps {
                let delta = reversal_delta(&postings, Amount::from_u64(before), Amount::from_u64(after.max(before)), whole);
                let mut entry = NewEntry::new("k", "refund");
                entry.postings = delta.clone();
                if !delta.is_empty() {
                    prop_assert!(entry.validate().is_ok(), "{:?}", entry.validate());
                }
                for p in &delta {
                    let signed = p.amount.to_string().parse::<u128>().unwrap_or(0);
                    *cumulative.entry((p.account.to_string(), p.side)).or_insert(0) += signed;
                }
                before = after.max(before);
            }
            // Fully returned: every posting was reversed to the unit.
            for p in &postings {
                let back = cumulative.get(&(p.account.to_string(), p.reversed().side)).copied().unwrap_or(0);
                let forth = cumulative.get(&(p.account.to_string(), p.side)).copied().unwrap_or(0);
                prop_assert_eq!(back - forth, p.amount.to_string().parse::<u128>().unwrap_or(0));
            }
        }
    }
}
