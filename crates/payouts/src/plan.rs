//! Which creators a run pays and how they are grouped into batches. Pure: no I/O.
//!
//! Invariants of a plan: every planned amount is a creator's whole balance (never a part: a part
//! would leave dust that must be paid later anyway); no batch exceeds the recipient bound; the sum of
//! all planned batches never exceeds the funds the batcher holds; creators are taken in a fixed
//! order (by id), so two runs over the same balances plan the same batches.

use alloy_primitives::Address;

use crate::ledger::AccountCode;
use crate::money::Amount;

/// Gas a batch costs before its first recipient (transaction, calldata head, checks, the
/// `BatchPaid` event), rounded up from what the contract uses on anvil.
pub const BATCH_BASE_GAS: u64 = 80_000;
/// Gas one more recipient costs at most: a transfer to an address never seen before (a fresh
/// storage slot or a new account), its calldata and its `PayoutSent` event.
pub const RECIPIENT_GAS: u64 = 60_000;

/// A payable balance in one asset: a creator's, or (without a creator) the merchant's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// `None`: the merchant's available balance (a settlement).
    pub creator_id: Option<String>,
    pub merchant_id: String,
    /// A crypto refund's payout: paid from the refund's own account.
    pub refund_id: Option<String>,
    pub address: Address,
    pub amount: Amount,
}

/// Why a creator with a balance is not in this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// Worth less than the payout threshold: it stays and adds up.
    BelowThreshold,
    /// No USD rate for the asset, so the threshold cannot be judged.
    NoRate,
    /// The batcher does not hold enough of the asset for this creator too.
    InsufficientFunds,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedBatch {
    pub items: Vec<Candidate>,
    pub total: Amount,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub batches: Vec<PlannedBatch>,
    pub skipped: Vec<(Candidate, SkipReason)>,
}

/// Most recipients that fit both the configured bound and the gas bound.
pub fn recipients_per_batch(recipients_max: u32, gas_per_batch_max: u64) -> usize {
    let by_gas = gas_per_batch_max.saturating_sub(BATCH_BASE_GAS) / RECIPIENT_GAS;
    usize::try_from(u64::from(recipients_max).min(by_gas).max(1)).unwrap_or(1)
}

/// Plans the batches of one asset. `eligible` says whether a candidate is worth paying
/// (`Err(reason)` skips it); `available` is what the batcher holds for new batches.
pub fn plan(
    mut candidates: Vec<Candidate>,
    eligible: impl Fn(&Candidate) -> Result<(), SkipReason>,
    available: Amount,
    recipients_max: usize,
) -> Plan {
    candidates.sort_by(|a, b| a.creator_id.cmp(&b.creator_id));
    let mut plan = Plan::default();
    let mut left = available;
    let mut current: Vec<Candidate> = Vec::new();
    for candidate in candidates {
        if candidate.amount.is_zero() {
            continue;
        }
        if let Err(reason) = eligible(&candidate) {
            plan.skipped.push((candidate, reason));
            continue;
        }
        match left.checked_sub(candidate.amount) {
            Some(rest) => left = rest,
            None => {
                plan.skipped.push((candidate, SkipReason::InsufficientFunds));
                continue;
            }
        }
        current.push(candidate);
        if current.len() >= recipients_max.max(1) {
            plan.batches.push(close(std::mem::take(&mut current)));
        }
    }
    if !current.is_empty() {
        plan.batches.push(close(current));
    }
    plan
}

impl Candidate {
    /// The ledger account the amount leaves.
    pub fn account(&self) -> AccountCode {
        match (&self.refund_id, &self.creator_id) {
            (Some(refund), _) => AccountCode::refund(refund),
            (None, Some(creator)) => AccountCode::creator(creator),
            (None, None) => AccountCode::merchant(&self.merchant_id),
        }
    }
}

fn close(items: Vec<Candidate>) -> PlannedBatch {
    // Bounded by the funds checked above, so the sum cannot overflow.
    let total = Amount::checked_sum(items.iter().map(|c| c.amount)).unwrap_or(Amount::MAX);
    PlannedBatch { items, total }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn candidate(n: u8, amount: u64) -> Candidate {
        Candidate {
            refund_id: None,
            creator_id: Some(format!("cr_{n:03}")),
            merchant_id: "mer_x".to_owned(),
            address: Address::with_last_byte(n),
            amount: Amount::from_u64(amount),
        }
    }

    fn at_least(min: u64) -> impl Fn(&Candidate) -> Result<(), SkipReason> {
        move |c| if c.amount >= Amount::from_u64(min) { Ok(()) } else { Err(SkipReason::BelowThreshold) }
    }

    #[test]
    fn small_balances_stay_and_batches_are_bounded() {
        let candidates = (1..=7).map(|n| candidate(n, u64::from(n) * 10)).collect();
        let plan = plan(candidates, at_least(25), Amount::from_u64(1_000), 2);
        let paid: Vec<Vec<&str>> =
            plan.batches.iter().map(|b| b.items.iter().map(|c| c.creator_id.as_deref().unwrap_or("")).collect()).collect();
        assert_eq!(paid, vec![vec!["cr_003", "cr_004"], vec!["cr_005", "cr_006"], vec!["cr_007"]]);
        assert_eq!(plan.batches[0].total, Amount::from_u64(70));
        assert_eq!(plan.skipped.len(), 2);
        assert!(plan.skipped.iter().all(|(_, r)| *r == SkipReason::BelowThreshold));
    }

    #[test]
    fn never_plans_more_than_the_batcher_holds() {
        let candidates = vec![candidate(1, 60), candidate(2, 50), candidate(3, 40)];
        let plan = plan(candidates, |_| Ok(()), Amount::from_u64(100), 10);
        assert_eq!(plan.batches.len(), 1);
        assert_eq!(plan.batches[0].total, Amount::from_u64(100));
        assert_eq!(plan.skipped, vec![(candidate(2, 50), SkipReason::InsufficientFunds)]);
    }

    #[test]
    fn gas_bound_limits_recipients() {
        assert_eq!(recipients_per_batch(500, 30_000_000), 498);
        assert_eq!(recipients_per_batch(200, 30_000_000), 200);
        assert_eq!(recipients_per_batch(200, BATCH_BASE_GAS + 3 * RECIPIENT_GAS), 3);
        assert_eq!(recipients_per_batch(200, 1), 1);
    }

    proptest! {
        #[test]
        fn plans_are_bounded_and_exact(amounts in proptest::collection::vec(0u64..1_000, 0..60),
                                        available in 0u64..20_000, max in 1usize..8) {
            let candidates: Vec<Candidate> =
                amounts.iter().enumerate().map(|(i, a)| candidate(u8::try_from(i).unwrap_or(0), *a)).collect();
            let plan = plan(candidates, at_least(5), Amount::from_u64(available), max);
            let mut planned = 0u64;
            for batch in &plan.batches {
                prop_assert!(!batch.items.is_empty() && batch.items.len() <= max);
                let sum: u64 = batch.items.iter().map(|c| c.amount.to_string().parse::<u64>().unwrap_or(0)).sum();
                prop_assert_eq!(batch.total, Amount::from_u64(sum));
                planned += sum;
            }
            prop_assert!(planned <= available);
            let counted = plan.batches.iter().map(|b| b.items.len()).sum::<usize>() + plan.skipped.len();
            prop_assert_eq!(counted, amounts.iter().filter(|a| **a > 0).count());
        }
    }
}
