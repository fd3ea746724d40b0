//! What an upgrade in mid-period costs, and what the next invoice asks.
//!
//! The rule: changing plan at once keeps the period's dates. For the time left in the period the
//! customer is charged the new plan's price pro rata and credited the old plan's price pro rata, by
//! the second; the charge rounds down and the credit rounds up to the minor unit (any rounding is
//! the customer's gain). Both go on the next invoice, which asks the next period's price plus the
//! charge less the credit; it never goes below zero — a credit larger than the invoice carries to
//! the one after.

use chrono::{DateTime, Utc};

use crate::money::{mul_div, Amount, Rounding};

/// What a change of plan at `now` adds to and takes from the next invoice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Proration {
    pub charge: Amount,
    pub credit: Amount,
}

/// Prorates a change from a plan priced `old` to one priced `new` (same currency, minor units) at
/// `now` in the period `[start, end)`. Outside the period nothing is prorated.
pub fn prorate(old: Amount, new: Amount, start: DateTime<Utc>, end: DateTime<Utc>, now: DateTime<Utc>) -> Proration {
    let (length, left) = ((end - start).num_seconds(), (end - now).num_seconds());
    if length <= 0 || left <= 0 || now < start {
        return Proration::default();
    }
    let (length, left) = (Amount::from_u64(length.unsigned_abs()), Amount::from_u64(left.unsigned_abs()));
    let part = |price: Amount, rounding| mul_div(price, left, length, rounding).unwrap_or(Amount::ZERO);
    Proration { charge: part(new, Rounding::Down), credit: part(old, Rounding::Up) }
}

/// Charges and credits waiting for the next invoice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Carry {
    pub charge: Amount,
    pub credit: Amount,
}

impl Carry {
    pub fn with(self, p: Proration) -> Self {
        Self {
            charge: self.charge.checked_add(p.charge).unwrap_or(Amount::MAX),
            credit: self.credit.checked_add(p.credit).unwrap_or(Amount::MAX),
        }
    }
}

/// The next invoice's amount for a period priced `price` with `carry`, and the credit left over.
pub fn next_invoice(price: Amount, carry: Carry) -> (Amount, Amount) {
    let gross = price.checked_add(carry.charge).unwrap_or(Amount::MAX);
    (gross.saturating_sub(carry.credit), carry.credit.saturating_sub(gross))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};
    use proptest::prelude::*;

    fn t(day: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2027, 4, 1, 0, 0, 0).single().unwrap() + Duration::days(day)
    }

    #[test]
    fn an_upgrade_halfway_charges_half_the_difference() {
        let p = prorate(Amount::from_u64(999), Amount::from_u64(1999), t(0), t(30), t(15));
        assert_eq!(p, Proration { charge: Amount::from_u64(999), credit: Amount::from_u64(500) });
        let (due, left) = next_invoice(Amount::from_u64(1999), Carry::default().with(p));
        assert_eq!((due, left), (Amount::from_u64(2498), Amount::ZERO));
    }

    #[test]
    fn a_large_credit_carries_over_and_nothing_is_prorated_outside_the_period() {
        let (due, left) = next_invoice(Amount::from_u64(100), Carry { charge: Amount::ZERO, credit: Amount::from_u64(250) });
        assert_eq!((due, left), (Amount::ZERO, Amount::from_u64(150)));
        assert_eq!(prorate(Amount::from_u64(10), Amount::from_u64(20), t(0), t(30), t(31)), Proration::default());
        assert_eq!(prorate(Amount::from_u64(10), Amount::from_u64(20), t(0), t(30), t(-1)), Proration::default());
    }

    proptest! {
        /// The proration never exceeds the prices, and an unchanged price nets to the customer's favour
        /// by at most one minor unit.
        #[test]
        fn proration_is_bounded(old in 0u64..10_000_000, new in 0u64..10_000_000, at in 0i64..2_592_000) {
            let now = t(0) + Duration::seconds(at);
            let p = prorate(Amount::from_u64(old), Amount::from_u64(new), t(0), t(30), now);
            prop_assert!(p.charge <= Amount::from_u64(new) && p.credit <= Amount::from_u64(old));
            let same = prorate(Amount::from_u64(old), Amount::from_u64(old), t(0), t(30), now);
            prop_assert!(same.credit >= same.charge && same.credit.saturating_sub(same.charge) <= Amount::from_u64(1));
        }
    }
}
