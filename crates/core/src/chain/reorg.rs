//! The follower's bookkeeping, pure: where a stored chain and the node's chain fork, and what one
//! step does to each payment it tracks. No I/O; the follower fetches, this decides, the store writes.
//!
//! Invariants (property-tested below against random chains and reorgs):
//! - a credited payment whose block left the chain is reversed, once, and never credited again in
//!   the step that reversed it (the next sighting credits it anew);
//! - a waiting payment whose block left the chain, or that vanished from an address read in full,
//!   stops counting unless this step saw it again; so does a payment credited unconfirmed (a
//!   `fast` invoice's) that vanished before any block held it, and its credit is reversed;
//! - every payment is acted on at most once per step, in (invoice, payment) order, the order every
//!   writer locks invoices in.

use std::collections::{HashMap, HashSet};

use crate::payment::{ObservedPayment, SpeedPolicy};
use crate::money::Amount;

use super::block::{Block, Observed};

/// The highest stored block the node still has: `stored` newest first, `canonical` the node's
/// hash at each one's height (`None` above its tip). `None`: the fork is below the stored window.
pub fn fork_point<H: Copy + PartialEq>(stored: &[Block<H>], canonical: &[Option<H>]) -> Option<Block<H>> {
    stored.iter().zip(canonical).find(|(block, hash)| **hash == Some(block.hash)).map(|(block, _)| *block)
}

/// A payment the follower tracks: seen or confirmed, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracked {
    pub tx_ref: String,
    pub invoice_id: String,
    pub asset: String,
    pub amount: Amount,
    pub address: Option<String>,
    /// Credited (`confirmed`); otherwise still waiting (`seen`).
    pub confirmed: bool,
    /// The block it was seen in: height and stored hash.
    pub block: Option<(u64, String)>,
    /// Its invoice's speed policy, to count its confirmations again.
    pub speed: SpeedPolicy,
}

/// What one step does to one payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Record the observation (new, refreshed or seen again).
    Apply(Box<ObservedPayment>),
    /// Its block left the chain, or it vanished: it stops counting (a credit is reversed).
    Orphan { invoice_id: String, tx_ref: String },
}

impl Action {
    fn key(&self) -> (&str, &str) {
        match self {
            Self::Apply(o) => (&o.invoice_id, &o.tx_ref),
            Self::Orphan { invoice_id, tx_ref } => (invoice_id, tx_ref),
        }
    }
}

/// The actions of one step. `fork`: the height the step unwinds to, if any; `verified`: the
/// cursor's height once the step commits; `refresh` re-counts the confirmations of a waiting
/// payment that the step did not see again (EVM sources read each block once).
pub fn plan(
    tracked: &[Tracked],
    fork: Option<u64>,
    observed: Observed,
    verified: u64,
    refresh: impl Fn(&Tracked) -> Option<ObservedPayment>,
) -> Vec<Action> {
    let by_ref: HashMap<&str, &ObservedPayment> = observed.payments.iter().map(|o| (o.tx_ref.as_str(), o)).collect();
    let mut actions = Vec::new();
    let mut settled: HashSet<&str> = HashSet::new();
    for payment in tracked {
        let seen_again = by_ref.get(payment.tx_ref.as_str()).copied();
        let above_fork = fork.is_some_and(|f| payment.block.as_ref().is_some_and(|(h, _)| *h > f));
        let vanished = seen_again.is_none() && payment.address.as_ref().is_some_and(|a| observed.complete.contains(a));
        let orphan = if payment.confirmed {
            // Credited unconfirmed: no block to leave, but it can be replaced in the mempool.
            above_fork || (payment.block.is_none() && vanished)
        } else {
            (seen_again.is_none() && above_fork) || vanished
        };
        if orphan {
            actions.push(Action::Orphan { invoice_id: payment.invoice_id.clone(), tx_ref: payment.tx_ref.clone() });
            settled.insert(payment.tx_ref.as_str());
            continue;
        }
        match seen_again {
            // Credited in the same block: nothing left to learn from it.
            Some(o) if payment.confirmed && o.block.as_ref().map(|b| &b.hash) == payment.block.as_ref().map(|(_, h)| h) => {
                settled.insert(payment.tx_ref.as_str());
            }
            Some(_) => {}
            None if !payment.confirmed && payment.block.as_ref().is_some_and(|(h, _)| *h <= verified) => {
                if let Some(fresh) = refresh(payment) {
                    actions.push(Action::Apply(Box::new(fresh)));
                }
            }
            None => {}
        }
    }
    for observation in &observed.payments {
        if !settled.contains(observation.tx_ref.as_str()) {
            actions.push(Action::Apply(Box::new(observation.clone())));
        }
    }
    actions.sort_by(|a, b| a.key().cmp(&b.key()));
    actions
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payment::BlockRef;
    use crate::money::ChainId;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const WINDOW: u64 = 6;

    /// A chain by height: each block's (unique) hash and the payments it holds.
    type Chain = Vec<(u64, Vec<String>)>;

    fn observation(tx_ref: &str, height: u64, hash: String, tip: u64, required: u32) -> ObservedPayment {
        ObservedPayment {
            invoice_id: format!("inv_{tx_ref}"),
            chain: ChainId::bitcoin_regtest(),
            asset: "bip122:0f9188f13cb7b2c71f2a335e3a4fc328/slip44:0".parse().expect("asset"),
            tx_ref: tx_ref.to_owned(),
            address: Some(format!("addr_{tx_ref}")),
            amount: Amount::from_u64(1),
            confirmations: u32::try_from(tip + 1 - height).unwrap_or(u32::MAX),
            confirmations_required: required,
            block: Some(BlockRef { height, hash }),
        }
    }

    /// The follower's state as the database holds it.
    #[derive(Debug, Default)]
    struct Store {
        /// Payments seen or confirmed: their block, and whether credited.
        payments: BTreeMap<String, ((u64, String), bool)>,
        /// Credits minus reversals, per payment.
        net_credits: BTreeMap<String, i64>,
        window: BTreeMap<u64, u64>,
        cursor: Option<(u64, u64)>,
    }

    impl Store {
        fn tracked(&self) -> Vec<Tracked> {
            let one = |(tx_ref, (block, confirmed)): (&String, &((u64, String), bool))| Tracked {
                tx_ref: tx_ref.clone(),
                invoice_id: format!("inv_{tx_ref}"),
                asset: String::new(),
                amount: Amount::from_u64(1),
                address: Some(format!("addr_{tx_ref}")),
                confirmed: *confirmed,
                block: Some(block.clone()),
                speed: SpeedPolicy::Medium,
            };
            self.payments.iter().map(one).collect()
        }

        /// What `apply_payment` and `orphan_payment` do to credits.
        fn apply(&mut self, actions: Vec<Action>) {
            for action in actions {
                match action {
                    Action::Apply(o) => {
                        let block = o.block.as_ref().map(|b| (b.height, b.hash.clone())).expect("mined");
                        let was = self.payments.get(&o.tx_ref).is_some_and(|p| p.1);
                        let credited = was || o.confirmations >= o.confirmations_required;
                        if credited && !was {
                            *self.net_credits.entry(o.tx_ref.clone()).or_default() += 1;
                        }
                        self.payments.insert(o.tx_ref.clone(), (block, credited));
                    }
                    Action::Orphan { tx_ref, .. } => {
                        if self.payments.remove(&tx_ref).is_some_and(|p| p.1) {
                            *self.net_credits.entry(tx_ref).or_default() -= 1;
                        }
                    }
                }
            }
        }
    }

    /// One step with the follower's decisions: the fork through [`fork_point`], the payments
    /// through [`plan`]. `rescans`: the source reads every address at the tip (Bitcoin), else each
    /// block once (EVM). Returns whether the step was idle at the tip.
    fn step(store: &mut Store, chain: &Chain, batch: u64, required: u32, rescans: bool) -> bool {
        let tip = chain.len() as u64 - 1;
        let hash = |h: u64| chain.get(h as usize).map(|b| b.0);
        let seen = |heights: std::ops::RangeInclusive<u64>| -> Vec<ObservedPayment> {
            heights.flat_map(|h| chain[h as usize].1.iter().map(move |t| observation(t, h, chain[h as usize].0.to_string(), tip, required))).collect()
        };
        let everything = || Observed {
            payments: seen(0..=tip),
            complete: chain.iter().flat_map(|b| b.1.iter().map(|t| format!("addr_{t}"))).collect(),
            refunds: Vec::new(),
        };
        let refresh = |t: &Tracked| t.block.clone().map(|(h, block)| observation(&t.tx_ref, h, block, tip, required));
        if store.cursor.is_some_and(|(h, at)| hash(h) != Some(at)) {
            let stored: Vec<Block<u64>> = store.window.iter().rev().map(|(h, b)| Block { height: *h, hash: *b, parent: 0 }).collect();
            let canonical: Vec<Option<u64>> = stored.iter().map(|b| hash(b.height)).collect();
            let fork = fork_point(&stored, &canonical).expect("a reorg within the window");
            let observed = if rescans { everything() } else { Observed::default() };
            store.apply(plan(&store.tracked(), Some(fork.height), observed, fork.height, refresh));
            store.window.retain(|h, _| *h <= fork.height);
            store.cursor = Some((fork.height, fork.hash));
            return false;
        }
        let from = store.cursor.map_or(0, |(h, _)| h + 1);
        let idle = from > tip;
        let to = if idle { from - 1 } else { tip.min(from + batch - 1) };
        let observed = match (rescans, to == tip) {
            (true, true) => everything(),
            (true, false) => Observed::default(),
            (false, _) => Observed { payments: seen(from..=to), complete: HashSet::new(), refunds: Vec::new() },
        };
        store.apply(plan(&store.tracked(), None, observed, to, refresh));
        store.window.extend((from..=to).map(|h| (h, chain[h as usize].0)));
        store.window.retain(|h, _| *h + WINDOW >= to);
        store.cursor = Some((to, chain[to as usize].0));
        idle
    }

    /// Replaces the last `depth` blocks with at least as many new ones, holding the dropped
    /// payments that `keep` picks again, and new payments.
    fn reorg(chain: &mut Chain, depth: usize, grow: usize, keep: &[bool], next: &mut u64) {
        let dropped = chain.split_off(chain.len() - depth.min(chain.len() - 1));
        let count = grow.max(dropped.len());
        let mut kept: Vec<String> =
            dropped.into_iter().flat_map(|b| b.1).zip(keep.iter().cycle()).filter(|(_, k)| **k).map(|(t, _)| t).collect();
        for i in 0..count {
            *next += 1;
            let mut payments: Vec<String> = if i % 2 == 0 { kept.pop().into_iter().collect() } else { Vec::new() };
            if i % 3 == 0 {
                payments.push(format!("tx{next}"));
            }
            chain.push((*next, payments));
        }
        if let Some(last) = chain.last_mut() {
            last.1.extend(kept);
        }
    }

    fn extend(chain: &mut Chain, blocks: usize, with_payments: bool, next: &mut u64) {
        for i in 0..blocks {
            *next += 1;
            chain.push((*next, if with_payments && i % 2 == 0 { vec![format!("tx{next}")] } else { Vec::new() }));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Random chains, random reorgs no deeper than the window: once the follower has caught up
        /// and every payment is deep enough, the credited payments are exactly those on the final
        /// best chain, each in its block there and credited once net of reversals.
        #[test]
        fn credits_match_the_final_best_chain(
            length in 1usize..20,
            rounds in prop::collection::vec((0..=WINDOW as usize, 0usize..4, prop::collection::vec(any::<bool>(), 1..4), 0usize..5), 0..6),
            batch in 1u64..8,
            required in 1u32..4,
            rescans in any::<bool>(),
        ) {
            let (mut next, mut chain, mut store) = (0, vec![(0, Vec::new())], Store::default());
            extend(&mut chain, length, true, &mut next);
            let follow = |store: &mut Store, chain: &Chain| (0..1_000).any(|_| step(store, chain, batch, required, rescans));
            prop_assert!(follow(&mut store, &chain));
            for (depth, grow, keep, more) in rounds {
                reorg(&mut chain, depth, grow, &keep, &mut next);
                extend(&mut chain, more, true, &mut next);
                prop_assert!(follow(&mut store, &chain));
            }
            extend(&mut chain, required as usize, false, &mut next);
            prop_assert!(follow(&mut store, &chain));
            let on_chain: BTreeMap<String, String> =
                chain.iter().flat_map(|(hash, p)| p.iter().map(move |t| (t.clone(), hash.to_string()))).collect();
            let credited: BTreeMap<String, String> =
                store.payments.iter().filter(|(_, (_, c))| *c).map(|(t, ((_, hash), _))| (t.clone(), hash.clone())).collect();
            prop_assert_eq!(&credited, &on_chain);
            for (tx_ref, net) in &store.net_credits {
                prop_assert_eq!(*net, i64::from(on_chain.contains_key(tx_ref)), "{} credited once if on the chain, else not at all", tx_ref);
            }
        }
    }

    #[test]
    fn the_fork_point_is_the_highest_block_both_chains_hold() {
        let stored: Vec<Block<u64>> = (0..5u64).rev().map(|h| Block { height: h, hash: h * 10, parent: 0 }).collect();
        let canonical = vec![None, Some(31), Some(20), Some(10), Some(0)];
        assert_eq!(fork_point(&stored, &canonical).map(|b| b.height), Some(2));
        assert_eq!(fork_point(&stored, &[Some(1), Some(1), Some(1), Some(1), Some(1)]), None, "below the window");
    }

    #[test]
    fn a_credit_above_the_fork_is_reversed_and_not_recredited_in_the_same_step() {
        let tracked = vec![Tracked {
            tx_ref: "t".to_owned(),
            invoice_id: "i".to_owned(),
            asset: String::new(),
            amount: Amount::from_u64(1),
            address: Some("a".to_owned()),
            confirmed: true,
            block: Some((5, "x".to_owned())),
            speed: SpeedPolicy::Medium,
        }];
        let mut again = observation("t", 4, "7".to_owned(), 6, 1);
        again.invoice_id = "i".to_owned();
        let actions = plan(&tracked, Some(3), Observed { payments: vec![again], complete: HashSet::new(), refunds: Vec::new() }, 3, |_| None);
        assert_eq!(actions, vec![Action::Orphan { invoice_id: "i".to_owned(), tx_ref: "t".to_owned() }]);
    }

    #[test]
    fn a_payment_credited_unconfirmed_is_reversed_when_it_vanishes_and_kept_when_mined() {
        let credited = Tracked {
            tx_ref: "t".to_owned(),
            invoice_id: "i".to_owned(),
            asset: String::new(),
            amount: Amount::from_u64(1),
            address: Some("a".to_owned()),
            confirmed: true,
            block: None,
            speed: SpeedPolicy::Fast,
        };
        let read_in_full = |payments: Vec<ObservedPayment>| Observed { payments, complete: HashSet::from(["a".to_owned()]), refunds: Vec::new() };
        // Its address read in full without it: replaced or dropped.
        let actions = plan(std::slice::from_ref(&credited), None, read_in_full(Vec::new()), 3, |_| None);
        assert_eq!(actions, vec![Action::Orphan { invoice_id: "i".to_owned(), tx_ref: "t".to_owned() }]);
        // Not read this step: nothing is known, nothing changes.
        let unread = Observed { payments: Vec::new(), complete: HashSet::new(), refunds: Vec::new() };
        assert_eq!(plan(std::slice::from_ref(&credited), None, unread, 3, |_| None), vec![]);
        // Mined: the observation with its block is recorded, the credit stands.
        let mut mined = observation("t", 3, "h".to_owned(), 3, 0);
        mined.invoice_id = "i".to_owned();
        mined.address = Some("a".to_owned());
        let actions = plan(std::slice::from_ref(&credited), None, read_in_full(vec![mined.clone()]), 3, |_| None);
        assert_eq!(actions, vec![Action::Apply(Box::new(mined))]);
    }
}
