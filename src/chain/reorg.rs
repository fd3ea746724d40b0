//! The follower's bookkeeping, pure: where a stored chain and the node's chain fork, and what one
//! step does to each payment it tracks. No I/O; the follower fetches, this decides, the store writes.
//!
//! Invariants (property-tested below against random chains and reorgs):
//! - a credited payment whose block left the chain is reversed, once, and never credited again in
//!   the step that reversed it (the next sighting credits it anew);
//! - a waiting payment whose block left the chain, or that vanished from an address read in full,
//!   stops counting unless this step saw it again;
//! - every payment is acted on at most once per step, in (invoice, payment) order, the order every
//!   writer locks invoices in.

use std::collections::{HashMap, HashSet};

use crate::invoice::ObservedPayment;
use crate::money::Amount;

use super::source::{Block, Observed};

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
        let orphan = if payment.confirmed {
            above_fork
        } else {
            seen_again.is_none()
                && (above_fork || payment.address.as_ref().is_some_and(|a| observed.complete.contains(a)))
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
    use crate::invoice::BlockRef;
    use crate::money::{AssetId, ChainId};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const WINDOW: usize = 6;

    /// A chain: hashes by height (index), and the payments each block holds.
    #[derive(Debug, Clone)]
    struct Chain {
        blocks: Vec<(u64, Vec<String>)>,
    }

    fn hash_of(chain: &Chain, height: usize) -> u64 {
        chain.blocks[height].0
    }

    /// What the ledger would hold: credits minus reversals per payment, and its status.
    #[derive(Debug, Default)]
    struct Store {
        confirmed: BTreeMap<String, (u64, String)>,
        seen: BTreeMap<String, (u64, String)>,
        net_credits: BTreeMap<String, i64>,
        window: BTreeMap<u64, u64>,
        cursor: Option<(u64, u64)>,
    }

    fn observation(tx_ref: &str, height: u64, hash: u64, tip: u64, required: u32) -> ObservedPayment {
        ObservedPayment {
            invoice_id: format!("inv_{tx_ref}"),
            chain: ChainId::bitcoin_regtest(),
            asset: "bip122:0f9188f13cb7b2c71f2a335e3a4fc328/slip44:0".parse::<AssetId>().expect("asset"),
            tx_ref: tx_ref.to_owned(),
            address: Some(format!("addr_{tx_ref}")),
            amount: Amount::from_u64(1),
            confirmations: u32::try_from(tip - height + 1).unwrap_or(u32::MAX),
            confirmations_required: required,
            block: Some(BlockRef { height, hash: hash.to_string() }),
        }
    }

    impl Store {
        fn tracked(&self) -> Vec<Tracked> {
            let one = |tx_ref: &String, block: &(u64, String), confirmed| Tracked {
                tx_ref: tx_ref.clone(),
                invoice_id: format!("inv_{tx_ref}"),
                asset: String::new(),
                amount: Amount::from_u64(1),
                address: Some(format!("addr_{tx_ref}")),
                confirmed,
                block: Some(block.clone()),
            };
            let mut all: Vec<Tracked> = self.confirmed.iter().map(|(t, b)| one(t, b, true)).collect();
            all.extend(self.seen.iter().map(|(t, b)| one(t, b, false)));
            all
        }

        fn apply(&mut self, actions: Vec<Action>) {
            for action in actions {
                match action {
                    Action::Apply(o) => {
                        let block = o.block.as_ref().map(|b| (b.height, b.hash.clone())).expect("mined");
                        if o.confirmations >= o.confirmations_required {
                            if self.confirmed.insert(o.tx_ref.clone(), block).is_none() {
                                *self.net_credits.entry(o.tx_ref.clone()).or_default() += 1;
                            }
                            self.seen.remove(&o.tx_ref);
                        } else if !self.confirmed.contains_key(&o.tx_ref) {
                            self.seen.insert(o.tx_ref.clone(), block);
                        }
                    }
                    Action::Orphan { tx_ref, .. } => {
                        if self.confirmed.remove(&tx_ref).is_some() {
                            *self.net_credits.entry(tx_ref.clone()).or_default() -= 1;
                        }
                        self.seen.remove(&tx_ref);
                    }
                }
            }
        }
    }

    /// One follower step against `chain`, with the decisions the follower makes: fork detection
    /// through [`fork_point`], payments through [`plan`]. `rescans`: the source reads every watched
    /// address at the tip (Bitcoin) rather than each block once (EVM).
    fn step(store: &mut Store, chain: &Chain, batch: usize, required: u32, rescans: bool) -> bool {
        let tip = (chain.blocks.len() - 1) as u64;
        // A source that rescans reads every address at the node's tip, whatever the cursor.
        let observe_all = || {
            let mut payments = Vec::new();
            for height in 0..=tip {
                for tx_ref in &chain.blocks[height as usize].1 {
                    payments.push(observation(tx_ref, height, hash_of(chain, height as usize), tip, required));
                }
            }
            let complete = chain.blocks.iter().flat_map(|(_, p)| p.iter().map(|t| format!("addr_{t}"))).collect();
            Observed { payments, complete }
        };
        let refresh = |t: &Tracked| {
            let (height, hash) = t.block.clone().expect("mined");
            let mut o = observation(&t.tx_ref, height, 0, tip, required);
            o.block = Some(BlockRef { height, hash });
            Some(o)
        };
        let canonical = |h: u64| chain.blocks.get(h as usize).map(|b| b.0);
        let unwind = |store: &mut Store, at: u64| {
            let stored: Vec<Block<u64>> =
                store.window.iter().rev().map(|(h, hash)| Block { height: *h, hash: *hash, parent: 0 }).collect();
            let hashes: Vec<Option<u64>> = stored.iter().map(|b| canonical(b.height)).collect();
            let fork = fork_point(&stored, &hashes).unwrap_or_else(|| panic!("reorg below the window at {at}"));
            let observed = if rescans { observe_all() } else { Observed::default() };
            let actions = plan(&store.tracked(), Some(fork.height), observed, fork.height, refresh);
            store.apply(actions);
            store.window.retain(|h, _| *h <= fork.height);
            store.cursor = Some((fork.height, fork.hash));
        };
        let from = store.cursor.map_or(0, |(h, _)| h + 1);
        if from > tip {
            let (height, hash) = store.cursor.expect("cursor");
            if canonical(height) != Some(hash) {
                unwind(store, height);
                return false;
            }
            let observed = if rescans { observe_all() } else { Observed::default() };
            let actions = plan(&store.tracked(), None, observed, height, refresh);
            store.apply(actions);
            return true;
        }
        let to = tip.min(from + batch as u64 - 1);
        if let Some((height, hash)) = store.cursor {
            if canonical(height) != Some(hash) {
                unwind(store, height);
                return false;
            }
        }
        let observed = if rescans && to == tip {
            observe_all()
        } else if rescans {
            Observed::default()
        } else {
            let mut payments = Vec::new();
            for height in from..=to {
                for tx_ref in &chain.blocks[height as usize].1 {
                    payments.push(observation(tx_ref, height, hash_of(chain, height as usize), tip, required));
                }
            }
            Observed { payments, complete: HashSet::new() }
        };
        let actions = plan(&store.tracked(), None, observed, to, refresh);
        store.apply(actions);
        for height in from..=to {
            store.window.insert(height, hash_of(chain, height as usize));
        }
        store.window.retain(|h, _| *h + WINDOW as u64 >= to);
        store.cursor = Some((to, hash_of(chain, to as usize)));
        false
    }

    fn follow(store: &mut Store, chain: &Chain, batch: usize, required: u32, rescans: bool) {
        for _ in 0..1_000 {
            if step(store, chain, batch, required, rescans) {
                return;
            }
        }
        panic!("the follower does not reach the tip");
    }

    /// A reorg: the last `depth` blocks replaced by `grow` blocks holding some of their payments
    /// again (`keep`) and new ones.
    fn reorg(chain: &mut Chain, depth: usize, grow: usize, keep: &[bool], next: &mut u64) {
        let depth = depth.min(chain.blocks.len() - 1);
        let dropped: Vec<String> = chain.blocks.split_off(chain.blocks.len() - depth).into_iter().flat_map(|b| b.1).collect();
        let mut kept: Vec<String> = dropped.into_iter().zip(keep.iter().cycle()).filter(|(_, k)| **k).map(|(t, _)| t).collect();
        for i in 0..grow.max(depth) {
            *next += 1;
            let mut payments = Vec::new();
            if i % 2 == 0 {
                payments.extend(kept.pop());
            }
            if i % 3 == 0 {
                payments.push(format!("tx{next}"));
            }
            chain.blocks.push((*next, payments));
        }
        chain.blocks.last_mut().expect("grown").1.extend(kept);
    }

    fn extend(chain: &mut Chain, blocks: usize, with_payments: bool, next: &mut u64) {
        for i in 0..blocks {
            *next += 1;
            let payments = if with_payments && i % 2 == 0 { vec![format!("tx{next}")] } else { Vec::new() };
            chain.blocks.push((*next, payments));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Random chains, random reorgs no deeper than the window: once the follower has caught up
        /// and the payments are deep enough, the credited payments are exactly those on the final
        /// best chain, each credited once (net of reversals).
        #[test]
        fn credits_match_the_final_best_chain(
            length in 1usize..20,
            rounds in proptest::collection::vec((0usize..=WINDOW, 0usize..4, proptest::collection::vec(any::<bool>(), 1..4), 0usize..5), 0..6),
            batch in 1usize..8,
            required in 1u32..4,
            rescans in any::<bool>(),
        ) {
            let mut next = 0u64;
            let mut chain = Chain { blocks: vec![(0, Vec::new())] };
            extend(&mut chain, length, true, &mut next);
            let mut store = Store::default();
            follow(&mut store, &chain, batch, required, rescans);
            for (depth, grow, keep, more) in rounds {
                reorg(&mut chain, depth, grow, &keep, &mut next);
                extend(&mut chain, more, true, &mut next);
                follow(&mut store, &chain, batch, required, rescans);
            }
            // Deep enough for every payment to meet the policy.
            extend(&mut chain, required as usize, false, &mut next);
            follow(&mut store, &chain, batch, required, rescans);

            let on_chain: BTreeMap<String, u64> = chain
                .blocks
                .iter()
                .flat_map(|(hash, payments)| payments.iter().map(move |t| (t.clone(), *hash)))
                .collect();
            let credited: Vec<&String> = store.confirmed.keys().collect();
            prop_assert_eq!(credited, on_chain.keys().collect::<Vec<_>>());
            for (tx_ref, hash) in &on_chain {
                prop_assert_eq!(store.net_credits.get(tx_ref).copied(), Some(1), "{} credited once", tx_ref);
                prop_assert_eq!(store.confirmed.get(tx_ref).map(|b| b.1.clone()), Some(hash.to_string()), "{} in its block", tx_ref);
            }
            for (tx_ref, net) in &store.net_credits {
                if !on_chain.contains_key(tx_ref) {
                    prop_assert_eq!(*net, 0, "{} is not on the chain and holds no credit", tx_ref);
                }
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
        }];
        let mut again = observation("t", 4, 7, 6, 1);
        again.invoice_id = "i".to_owned();
        let actions = plan(&tracked, Some(3), Observed { payments: vec![again], complete: HashSet::new() }, 3, |_| None);
        assert_eq!(actions, vec![Action::Orphan { invoice_id: "i".to_owned(), tx_ref: "t".to_owned() }]);
    }
}
