//! Which lots a spend or transfer takes from: the order is stated, deterministic and tested.
//!
//! Lots that expire are spent first, the one expiring soonest first; lots that never expire come
//! after them; among equals the oldest grant first (FIFO, by grant order). A lot at or past its
//! expiry is not spendable (the expiry job books what is left of it as breakage).

use chrono::{DateTime, Utc};

use crate::money::Amount;

/// A lot as the plan sees it: what is left of it, when it expires, when it was granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LotBalance {
    pub lot_id: String,
    pub remaining: Amount,
    pub expires_at: Option<DateTime<Utc>>,
    pub granted_at: DateTime<Utc>,
    /// Grant order: lots granted in the same instant are still spent oldest first.
    pub granted_seq: i64,
}

/// What a spend takes from one lot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumed {
    pub lot_id: String,
    pub amount: Amount,
    /// The lot's expiry, which a transferred part keeps.
    pub expires_at: Option<DateTime<Utc>>,
}

/// The spendable lots do not cover the amount.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{available} available")]
pub struct Shortfall {
    pub available: Amount,
}

/// The lots `amount` is taken from at `now`, in spending order; refused with what is available
/// when they do not cover it.
pub fn consume(lots: &[LotBalance], amount: Amount, now: DateTime<Utc>) -> Result<Vec<Consumed>, Shortfall> {
    let mut spendable: Vec<&LotBalance> = lots.iter().filter(|l| !l.remaining.is_zero() && l.expires_at.is_none_or(|at| at > now)).collect();
    sort_for_spending(&mut spendable);
    let available = spendable.iter().try_fold(Amount::ZERO, |sum, l| sum.checked_add(l.remaining)).unwrap_or(Amount::MAX);
    if amount > available {
        return Err(Shortfall { available });
    }
    let mut left = amount;
    let mut out = Vec::new();
    for lot in spendable {
        if left.is_zero() {
            break;
        }
        let take = if lot.remaining < left { lot.remaining } else { left };
        left = left.saturating_sub(take);
        out.push(Consumed { lot_id: lot.lot_id.clone(), amount: take, expires_at: lot.expires_at });
    }
    Ok(out)
}

/// Puts lots in spending order: expiring ones first, soonest first (`None`, never, after every
/// date), then by grant order.
pub fn sort_for_spending(lots: &mut [&LotBalance]) {
    lots.sort_by_key(|l| (l.expires_at.is_none(), l.expires_at, l.granted_seq));
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn at(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(s, 0).single().expect("time")
    }

    fn lot(id: &str, remaining: u64, expires: Option<i64>, granted: i64) -> LotBalance {
        LotBalance { lot_id: id.to_owned(), remaining: Amount::from_u64(remaining), expires_at: expires.map(at), granted_at: at(granted), granted_seq: granted }
    }

    fn taken(plan: &[Consumed]) -> Vec<(&str, u64)> {
        plan.iter().map(|c| (c.lot_id.as_str(), c.amount.to_string().parse().expect("small"))).collect()
    }

    #[test]
    fn expiring_lots_go_first_soonest_first_then_the_oldest() {
        let lots = [lot("purchase", 100, None, 10), lot("reward_late", 5, Some(5_000), 30), lot("reward_soon", 5, Some(2_000), 40), lot("older", 50, None, 5)];
        let plan = consume(&lots, Amount::from_u64(70), at(1_000)).expect("covered");
        assert_eq!(taken(&plan), [("reward_soon", 5), ("reward_late", 5), ("older", 50), ("purchase", 10)]);
    }

    #[test]
    fn expired_and_empty_lots_are_not_spendable() {
        let lots = [lot("expired", 100, Some(1_000), 1), lot("empty", 0, None, 2), lot("live", 7, None, 3)];
        assert_eq!(consume(&lots, Amount::from_u64(8), at(1_000)), Err(Shortfall { available: Amount::from_u64(7) }));
        assert_eq!(taken(&consume(&lots, Amount::from_u64(7), at(1_000)).expect("covered")), [("live", 7)]);
        assert_eq!(taken(&consume(&lots, Amount::from_u64(107), at(999)).expect("not yet expired")), [("expired", 100), ("live", 7)]);
    }

    proptest! {
        #[test]
        fn a_plan_takes_exactly_the_amount_and_never_more_than_a_lot_holds(
            remaining in proptest::collection::vec((0u64..1_000, proptest::option::of(0i64..100), 0i64..100), 0..12),
            amount in 0u64..6_000,
            now in 0i64..100,
        ) {
            let lots: Vec<LotBalance> = remaining.iter().enumerate().map(|(i, (r, e, g))| lot(&format!("l{i:02}"), *r, *e, *g)).collect();
            let spendable: u64 = remaining.iter().filter(|(_, e, _)| e.is_none_or(|e| e > now)).map(|(r, _, _)| r).sum();
            match consume(&lots, Amount::from_u64(amount), at(now)) {
                Ok(plan) => {
                    prop_assert!(amount <= spendable);
                    let sum: u64 = taken(&plan).iter().map(|(_, a)| a).sum();
                    prop_assert_eq!(sum, amount);
                    for c in &plan {
                        let source = lots.iter().find(|l| l.lot_id == c.lot_id).expect("a lot");
                        prop_assert!(c.amount <= source.remaining && !c.amount.is_zero());
                        prop_assert!(source.expires_at.is_none_or(|e| e > at(now)));
                    }
                }
                Err(Shortfall { available }) => {
                    prop_assert!(amount > spendable);
                    prop_assert_eq!(available, Amount::from_u64(spendable));
                }
            }
        }
    }
}
