//! The regtest node's state machine: chain, mempool and wallet behind one lock, with the
//! operations tests drive (mine, send, bump, replace, reorg) and the queries the Electrum server
//! answers.
//!
//! [`NodeState`] is synchronous and pure (time is passed in), so it is tested without a runtime;
//! [`Node`] wraps it in a `tokio` mutex and publishes a change counter after every mutation,
//! which Electrum connections watch to send notifications.
//!
//! Reorg rule: the competing branch is strictly longer than the orphaned one
//! (`new_blocks > depth`), as a node following the most work would require.

use bitcoin::hashes::{sha256, Hash};
use bitcoin::{Address, Amount, BlockHash, OutPoint, Script, Transaction, TxOut, Txid};
use tokio::sync::{watch, Mutex, MutexGuard};

use super::chain::{Chain, ScriptHash, BLOCK_WEIGHT_MAX, COINBASE_MATURITY, COINBASE_WEIGHT_RESERVED};
use super::mempool::Mempool;
use super::wallet::{Coin, Wallet, FEE_RATE_SAT_PER_VB};
use super::{now_unix_s, RegtestError, Result, MINE_BLOCKS_MAX};

/// The deepest reorg the node performs on request.
pub const REORG_DEPTH_MAX: u32 = 100;

/// One entry of a script hash's history, as Electrum reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryItem {
    pub txid: Txid,
    /// The block height; 0 in the mempool, -1 in the mempool with an unconfirmed input.
    pub height: i64,
    /// The fee, for mempool transactions.
    pub fee: Option<Amount>,
}

/// One unspent output of a script hash, as Electrum reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unspent {
    pub outpoint: OutPoint,
    pub value: Amount,
    /// The block height, 0 in the mempool.
    pub height: u64,
}

#[derive(Debug)]
pub struct NodeState {
    pub chain: Chain,
    pub mempool: Mempool,
    pub wallet: Wallet,
}

impl NodeState {
    pub fn new() -> Result<Self> {
        Ok(Self { chain: Chain::new(), mempool: Mempool::default(), wallet: Wallet::new()? })
    }

    pub fn tip(&self) -> (u64, BlockHash) {
        (self.chain.height(), self.chain.tip_hash())
    }

    /// Validates `tx` and adds it to the mempool (evicting what it replaces).
    pub fn submit(&mut self, tx: Transaction) -> Result<Txid> {
        let accepted = self.mempool.check(&self.chain, tx, self.wallet.secp())?;
        Ok(self.mempool.insert(accepted))
    }

    /// Mines one block at time `now`, with as much of the mempool as fits if `include_mempool`.
    pub fn mine_one(&mut self, include_mempool: bool, now: u32) -> Result<BlockHash> {
        let mut txs = Vec::new();
        let mut fees = Amount::ZERO;
        if include_mempool {
            let mut weight = COINBASE_WEIGHT_RESERVED;
            // Acceptance order puts parents first, so a prefix is always a valid block body.
            for entry in self.mempool.iter() {
                let tx_weight = entry.tx.weight().to_wu();
                if weight.saturating_add(tx_weight) > BLOCK_WEIGHT_MAX {
                    break;
                }
                weight += tx_weight;
                fees = fees.checked_add(entry.fee).unwrap_or(Amount::MAX);
                txs.push(entry.tx.clone());
            }
        }
        let txids: Vec<Txid> = txs.iter().map(Transaction::compute_txid).collect();
        let payout = self.wallet.coinbase_script().to_owned();
        let block = self.chain.build_block(txs, fees, &payout, now)?;
        let hash = self.chain.connect(block)?;
        for txid in &txids {
            self.mempool.remove(txid);
        }
        Ok(hash)
    }

    pub fn mine(&mut self, n: u32, now: u32) -> Result<Vec<BlockHash>> {
        if n > MINE_BLOCKS_MAX {
            return Err(RegtestError::Limit { what: "blocks mined per request", max: u64::from(MINE_BLOCKS_MAX) });
        }
        (0..n).map(|_| self.mine_one(true, now)).collect()
    }

    /// The wallet's spendable coins, oldest first (deep coins survive shallow reorgs): mature
    /// confirmed outputs not spent in the mempool, then unspent outputs of mempool transactions.
    pub fn wallet_coins(&self) -> Vec<Coin> {
        let next_height = self.chain.height() + 1;
        let mut confirmed: Vec<Coin> = self
            .chain
            .utxos()
            .filter(|(outpoint, utxo)| {
                self.wallet.is_mine(&utxo.output.script_pubkey)
                    && self.mempool.spender(outpoint).is_none()
                    && (!utxo.is_coinbase || next_height - utxo.height >= COINBASE_MATURITY)
            })
            .map(|(outpoint, utxo)| Coin {
                outpoint: *outpoint,
                output: utxo.output.clone(),
                confirmed: true,
                height: utxo.height,
            })
            .collect();
        confirmed
            .sort_by(|a, b| a.height.cmp(&b.height).then(b.output.value.cmp(&a.output.value)).then(a.outpoint.cmp(&b.outpoint)));
        let mut unconfirmed = Vec::new();
        for entry in self.mempool.iter() {
            for (vout, output) in entry.tx.output.iter().enumerate() {
                let outpoint = OutPoint { txid: entry.txid, vout: u32::try_from(vout).unwrap_or(u32::MAX) };
                if self.wallet.is_mine(&output.script_pubkey) && self.mempool.spender(&outpoint).is_none() {
                    unconfirmed.push(Coin { outpoint, output: output.clone(), confirmed: false, height: 0 });
                }
            }
        }
        confirmed.extend(unconfirmed);
        confirmed
    }

    /// Pays `amount` to `script` from the wallet.
    pub fn send(&mut self, script: &Script, amount: Amount, rbf: bool) -> Result<Txid> {
        let output = TxOut { value: amount, script_pubkey: script.to_owned() };
        let tx = self.wallet.build(Vec::new(), self.wallet_coins(), vec![output], Amount::ZERO, rbf)?;
        self.submit(tx)
    }

    /// The wallet's coins spent by mempool transaction `txid`, and the fees of everything a
    /// transaction conflicting with it would evict (it and its descendants).
    fn replaceable(&self, txid: Txid) -> Result<(Vec<Coin>, Amount, u64)> {
        let entry = self.mempool.get(&txid).ok_or(RegtestError::NotInMempool { txid })?;
        if !entry.tx.is_explicitly_rbf() {
            return Err(RegtestError::NotReplaceable { txid });
        }
        if !entry.prevouts.iter().all(|o| self.wallet.is_mine(&o.script_pubkey)) {
            return Err(RegtestError::NotOurs { txid });
        }
        let coins = entry
            .tx
            .input
            .iter()
            .zip(&entry.prevouts)
            .map(|(input, output)| {
                let confirmed = self.chain.utxo(&input.previous_output).is_some();
                Coin { outpoint: input.previous_output, output: output.clone(), confirmed, height: 0 }
            })
            .collect();
        let evicted = std::iter::once(txid).chain(self.mempool.descendants(txid));
        let fees = evicted.filter_map(|t| self.mempool.get(&t)).map(|e| e.fee).sum();
        Ok((coins, fees, entry.vsize))
    }

    /// Coins that may be added to a replacement of `txid`: not spent by it or its descendants,
    /// and not created by them.
    fn coins_outside(&self, txid: Txid) -> Vec<Coin> {
        let family: Vec<Txid> = std::iter::once(txid).chain(self.mempool.descendants(txid)).collect();
        self.wallet_coins().into_iter().filter(|c| !family.contains(&c.outpoint.txid)).collect()
    }

    /// Replaces `txid` with the same recipients (its outputs but the wallet's change) and a fee
    /// `extra_fee` above everything it replaces.
    pub fn bump(&mut self, txid: Txid, extra_fee: Amount) -> Result<Txid> {
        let (coins, replaced_fees, _) = self.replaceable(txid)?;
        let change = self.wallet.change_script().to_owned();
        let recipients: Vec<TxOut> = self
            .mempool
            .get(&txid)
            .map(|e| e.tx.output.iter().filter(|o| o.script_pubkey != change).cloned().collect())
            .unwrap_or_default();
        let fee_min = replaced_fees.checked_add(extra_fee).unwrap_or(Amount::MAX);
        let tx = self.wallet.build(coins, self.coins_outside(txid), recipients, fee_min, true)?;
        self.submit(tx)
    }

    /// Double-spends the inputs of `txid` to pay `amount` to `script` instead, with a fee above
    /// everything it replaces by the wallet's rate times the original's size.
    pub fn replace(&mut self, txid: Txid, script: &Script, amount: Amount) -> Result<Txid> {
        let (coins, replaced_fees, vsize) = self.replaceable(txid)?;
        let bump = Amount::from_sat(vsize.saturating_mul(FEE_RATE_SAT_PER_VB));
        let fee_min = replaced_fees.checked_add(bump).unwrap_or(Amount::MAX);
        let output = TxOut { value: amount, script_pubkey: script.to_owned() };
        let tx = self.wallet.build(coins, self.coins_outside(txid), vec![output], fee_min, true)?;
        self.submit(tx)
    }

    /// Orphans the last `depth` blocks and mines `new_blocks` competing ones at time `now`.
    ///
    /// The orphaned blocks' transactions (coinbases aside) and then the old mempool are
    /// revalidated against the shortened chain. What the shortened chain refuses is retried after
    /// each new block: a spend of a coinbase that is immature at the fork point comes back once it
    /// matures again (Bitcoin Core would forget it), a spend of an orphaned coinbase never does and
    /// is dropped. The new blocks carry the mempool if `include_mempool`, else they are empty and
    /// the transactions stay in the mempool.
    pub fn reorg(&mut self, depth: u32, new_blocks: u32, include_mempool: bool, now: u32) -> Result<(u64, BlockHash)> {
        let refuse = |reason: &str| RegtestError::Reorg { depth, new_blocks, reason: reason.to_owned() };
        if depth == 0 {
            return Err(refuse("depth must be at least 1"));
        }
        if depth > REORG_DEPTH_MAX {
            return Err(refuse(&format!("depth is limited to {REORG_DEPTH_MAX}")));
        }
        if u64::from(depth) > self.chain.height() {
            return Err(refuse("the genesis block cannot be orphaned"));
        }
        if new_blocks <= depth {
            return Err(refuse("the new branch must be strictly longer than the orphaned one"));
        }
        if new_blocks > MINE_BLOCKS_MAX {
            return Err(refuse(&format!("new blocks are limited to {MINE_BLOCKS_MAX}")));
        }
        let mut orphaned = Vec::new();
        for _ in 0..depth {
            if let Some(block) = self.chain.disconnect_tip() {
                orphaned.push(block);
            }
        }
        orphaned.reverse();
        let returning: Vec<Transaction> =
            orphaned.into_iter().flat_map(|block| block.txdata.into_iter().skip(1)).chain(self.mempool.take_all()).collect();
        let mut waiting = self.resubmit(returning);
        for _ in 0..new_blocks {
            self.mine_one(include_mempool, now)?;
            waiting = self.resubmit(waiting);
        }
        for tx in waiting {
            tracing::debug!(target: "devnet::regtest", txid = %tx.compute_txid(), "dropped by the reorg");
        }
        Ok(self.tip())
    }

    /// Submits `txs` in order and returns those refused, to retry after the next block.
    fn resubmit(&mut self, txs: Vec<Transaction>) -> Vec<Transaction> {
        let mut refused = Vec::new();
        for tx in txs {
            if let Err(RegtestError::AlreadyKnown { .. }) | Ok(_) = self.submit(tx.clone()) {
                continue;
            }
            refused.push(tx);
        }
        refused
    }

    /// The history of `sh`: confirmed transactions in chain order (height, then position in the
    /// block), then mempool transactions in acceptance order with height 0, or -1 when they
    /// spend an unconfirmed output.
    pub fn history(&self, sh: &ScriptHash) -> Vec<HistoryItem> {
        let confirmed = self.chain.history(sh).iter().map(|(height, txid)| HistoryItem {
            txid: *txid,
            height: i64::try_from(*height).unwrap_or(i64::MAX),
            fee: None,
        });
        let mempool = self.mempool.iter().filter(|e| e.touched.contains(sh)).map(|e| HistoryItem {
            txid: e.txid,
            height: if self.mempool.has_unconfirmed_parent(e) { -1 } else { 0 },
            fee: Some(e.fee),
        });
        confirmed.chain(mempool).collect()
    }

    /// Electrum's status of `sh`: hex sha256 of the concatenated `txid:height:` of its history,
    /// or `None` when it has no history.
    pub fn status(&self, sh: &ScriptHash) -> Option<String> {
        status_of(&self.history(sh))
    }

    /// Confirmed balance (the chain's unspent outputs paying `sh`) and the mempool's effect on it
    /// (outputs paying `sh` minus outputs of `sh` spent), in sats.
    pub fn balance(&self, sh: &ScriptHash) -> (u64, i64) {
        let confirmed: u64 = self.confirmed_unspent(sh).iter().map(|u| u.value.to_sat()).sum();
        let mut unconfirmed: i64 = 0;
        for entry in self.mempool.iter().filter(|e| e.touched.contains(sh)) {
            for output in entry.tx.output.iter().filter(|o| ScriptHash::from_script(&o.script_pubkey) == *sh) {
                unconfirmed = unconfirmed.saturating_add(i64::try_from(output.value.to_sat()).unwrap_or(i64::MAX));
            }
            for spent in entry.prevouts.iter().filter(|o| ScriptHash::from_script(&o.script_pubkey) == *sh) {
                unconfirmed = unconfirmed.saturating_sub(i64::try_from(spent.value.to_sat()).unwrap_or(i64::MAX));
            }
        }
        (confirmed, unconfirmed)
    }

    fn confirmed_unspent(&self, sh: &ScriptHash) -> Vec<Unspent> {
        let mut unspent = Vec::new();
        for (height, txid) in self.chain.history(sh) {
            let Some((tx, _)) = self.chain.transaction(txid) else { continue };
            for (vout, output) in tx.output.iter().enumerate() {
                let outpoint = OutPoint { txid: *txid, vout: u32::try_from(vout).unwrap_or(u32::MAX) };
                if ScriptHash::from_script(&output.script_pubkey) == *sh && self.chain.utxo(&outpoint).is_some() {
                    unspent.push(Unspent { outpoint, value: output.value, height: *height });
                }
            }
        }
        unspent
    }

    /// The unspent outputs paying `sh`: confirmed ones not spent in the mempool (chain order),
    /// then outputs of mempool transactions not spent in the mempool (height 0).
    pub fn list_unspent(&self, sh: &ScriptHash) -> Vec<Unspent> {
        let mut unspent: Vec<Unspent> =
            self.confirmed_unspent(sh).into_iter().filter(|u| self.mempool.spender(&u.outpoint).is_none()).collect();
        for entry in self.mempool.iter().filter(|e| e.touched.contains(sh)) {
            for (vout, output) in entry.tx.output.iter().enumerate() {
                let outpoint = OutPoint { txid: entry.txid, vout: u32::try_from(vout).unwrap_or(u32::MAX) };
                if ScriptHash::from_script(&output.script_pubkey) == *sh && self.mempool.spender(&outpoint).is_none() {
                    unspent.push(Unspent { outpoint, value: output.value, height: 0 });
                }
            }
        }
        unspent
    }

    /// A transaction from the mempool or the chain.
    pub fn transaction(&self, txid: &Txid) -> Option<&Transaction> {
        self.mempool.get(txid).map(|e| &e.tx).or_else(|| self.chain.transaction(txid).map(|(tx, _)| tx))
    }
}

/// Electrum's status hash of a history: hex sha256 of the concatenated `txid:height:`.
pub fn status_of(history: &[HistoryItem]) -> Option<String> {
    if history.is_empty() {
        return None;
    }
    let text: String = history.iter().map(|item| format!("{}:{}:", item.txid, item.height)).collect();
    Some(hex::encode(sha256::Hash::hash(text.as_bytes()).to_byte_array()))
}

/// The node shared by the Electrum server, the miner and the handles.
#[derive(Debug)]
pub struct Node {
    state: Mutex<NodeState>,
    changes: watch::Sender<u64>,
}

impl Node {
    pub fn new() -> Result<Self> {
        Ok(Self { state: Mutex::new(NodeState::new()?), changes: watch::channel(0).0 })
    }

    /// The state, locked. Hold it briefly: every connection and the miner share it.
    pub async fn state(&self) -> MutexGuard<'_, NodeState> {
        self.state.lock().await
    }

    /// A receiver that sees a new value after every change of chain or mempool.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Runs `f` on the locked state and announces a change (even after an error: a failed
    /// reorg may have changed the chain; connections only notify what really changed).
    async fn mutate<T>(&self, f: impl FnOnce(&mut NodeState) -> Result<T>) -> Result<T> {
        let result = {
            let mut state = self.state.lock().await;
            f(&mut state)
        };
        self.changed();
        result
    }

    pub async fn tip(&self) -> (u64, BlockHash) {
        self.state.lock().await.tip()
    }

    pub async fn mine(&self, n: u32) -> Result<Vec<BlockHash>> {
        self.mutate(|s| s.mine(n, now_unix_s())).await
    }

    pub async fn broadcast(&self, tx: Transaction) -> Result<Txid> {
        self.mutate(|s| s.submit(tx)).await
    }

    pub async fn send(&self, to: &Address, amount: Amount, rbf: bool) -> Result<Txid> {
        let script = to.script_pubkey();
        self.mutate(|s| s.send(&script, amount, rbf)).await
    }

    pub async fn bump(&self, txid: Txid, extra_fee: Amount) -> Result<Txid> {
        self.mutate(|s| s.bump(txid, extra_fee)).await
    }

    pub async fn replace(&self, txid: Txid, to: &Address, amount: Amount) -> Result<Txid> {
        let script = to.script_pubkey();
        self.mutate(|s| s.replace(txid, &script, amount)).await
    }

    pub async fn reorg(&self, depth: u32, new_blocks: u32, include_mempool: bool) -> Result<(u64, BlockHash)> {
        self.mutate(|s| s.reorg(depth, new_blocks, include_mempool, now_unix_s())).await
    }

    /// The wallet's P2WPKH and P2TR receive addresses.
    pub async fn wallet_addresses(&self) -> (Address, Address) {
        let state = self.state.lock().await;
        (state.wallet.p2wpkh_address().clone(), state.wallet.p2tr_address().clone())
    }
}

#[cfg(test)]
mod tests {
    use super::super::chain::{regtest_target, COINBASE_OUTPUTS};
    use super::super::test_support::{started, stranger, NOW};
    use super::*;

    #[test]
    fn start_leaves_mature_coinbase_with_the_wallet() {
        let state = started();
        assert_eq!(state.tip().0, 101);
        let coins = state.wallet_coins();
        // Blocks 1 and 2 are mature for a transaction in block 102.
        assert_eq!(coins.len(), 2 * usize::try_from(COINBASE_OUTPUTS).expect("small"));
        assert!(coins.iter().all(|c| c.confirmed && c.height <= 2));
    }

    #[test]
    fn blocks_with_segwit_transactions_commit_to_witnesses_and_pay_fees() {
        let mut state = started();
        let to = stranger();
        let txid = state.send(&to.script_pubkey(), Amount::from_sat(250_000), false).expect("sent");
        let fee = state.mempool.get(&txid).expect("in mempool").fee;
        let vsize = state.mempool.get(&txid).expect("in mempool").vsize;
        assert!(fee.to_sat() >= vsize * FEE_RATE_SAT_PER_VB, "fee {fee} for {vsize} vB");
        state.mine(1, NOW).expect("mined");
        let block = state.chain.block(102).expect("block");
        assert!(block.check_merkle_root());
        assert!(block.check_witness_commitment());
        block.header.validate_pow(regtest_target()).expect("pow");
        assert_eq!(block.bip34_block_height().expect("height"), 102);
        assert!(block.txdata[0]
            .output
            .iter()
            .any(|o| o.script_pubkey.as_bytes().starts_with(&[0x6a, 0x24, 0xaa, 0x21, 0xa9, 0xed])));
        let paid: Amount = block.txdata[0].output.iter().map(|o| o.value).sum();
        assert_eq!(paid, super::super::chain::subsidy(102) + fee);
        assert_eq!(block.txdata[1].compute_txid(), txid);
        assert!(state.mempool.is_empty());
    }

    #[test]
    fn history_status_balance_and_unspent_follow_the_mempool_and_the_chain() {
        let mut state = started();
        let to = stranger();
        let sh = ScriptHash::from_script(&to.script_pubkey());
        assert!(state.history(&sh).is_empty());
        assert_eq!(state.status(&sh), None);
        let txid = state.send(&to.script_pubkey(), Amount::from_sat(70_000), true).expect("sent");
        let history = state.history(&sh);
        assert_eq!(history.len(), 1);
        assert_eq!((history[0].txid, history[0].height), (txid, 0));
        assert!(history[0].fee.is_some());
        assert_eq!(state.balance(&sh), (0, 70_000));
        assert_eq!(state.list_unspent(&sh)[0].height, 0);
        let mempool_status = state.status(&sh).expect("a status");
        state.mine(1, NOW).expect("mined");
        let history = state.history(&sh);
        assert_eq!((history[0].height, history[0].fee), (102, None));
        assert_ne!(state.status(&sh).expect("a status"), mempool_status);
        assert_eq!(state.balance(&sh), (70_000, 0));
        let expected = hex::encode(sha256::Hash::hash(format!("{txid}:102:").as_bytes()).to_byte_array());
        assert_eq!(state.status(&sh), Some(expected));
    }

    #[test]
    fn a_child_of_an_unconfirmed_parent_has_height_minus_one() {
        let mut state = started();
        // Spend every confirmed coin so the next payment spends unconfirmed change.
        let mut last = None;
        while state.wallet_coins().iter().any(|c| c.confirmed) {
            last = Some(state.send(&stranger().script_pubkey(), Amount::from_sat(490_000_000), false).expect("sent"));
        }
        assert!(last.is_some());
        let to = stranger();
        let txid = state.send(&to.script_pubkey(), Amount::from_sat(10_000), false).expect("spends change");
        let history = state.history(&ScriptHash::from_script(&to.script_pubkey()));
        assert_eq!((history[0].txid, history[0].height), (txid, -1));
    }

    #[test]
    fn bump_keeps_the_recipient_and_pays_more() {
        let mut state = started();
        let to = stranger();
        let sh = ScriptHash::from_script(&to.script_pubkey());
        let original = state.send(&to.script_pubkey(), Amount::from_sat(80_000), true).expect("sent");
        let fee = state.mempool.get(&original).expect("in mempool").fee;
        let bumped = state.bump(original, Amount::from_sat(1_000)).expect("bumped");
        assert_ne!(bumped, original);
        assert!(state.mempool.get(&original).is_none());
        let entry = state.mempool.get(&bumped).expect("in mempool");
        assert_eq!(entry.fee, fee + Amount::from_sat(1_000));
        assert!(entry.tx.output.iter().any(|o| o.script_pubkey == to.script_pubkey() && o.value == Amount::from_sat(80_000)));
        assert_eq!(state.history(&sh).iter().map(|h| h.txid).collect::<Vec<_>>(), vec![bumped]);
        let final_tx = state.send(&to.script_pubkey(), Amount::from_sat(1_000), false).expect("sent");
        assert!(matches!(state.bump(final_tx, Amount::from_sat(1_000)), Err(RegtestError::NotReplaceable { .. })));
    }

    #[test]
    fn replace_double_spends_to_another_address() {
        let mut state = started();
        let victim = stranger();
        let thief = stranger();
        let original = state.send(&victim.script_pubkey(), Amount::from_sat(80_000), true).expect("sent");
        let replacement = state.replace(original, &thief.script_pubkey(), Amount::from_sat(79_000)).expect("replaced");
        assert!(state.mempool.get(&original).is_none());
        assert!(state.history(&ScriptHash::from_script(&victim.script_pubkey())).is_empty());
        assert_eq!(state.history(&ScriptHash::from_script(&thief.script_pubkey()))[0].txid, replacement);
        state.mine(1, NOW).expect("mined");
        assert!(state.chain.contains_tx(&replacement));
        assert!(!state.chain.contains_tx(&original));
    }

    #[test]
    fn reorg_returns_transactions_to_the_mempool_or_reconfirms_them() {
        let mut state = started();
        let to = stranger();
        let sh = ScriptHash::from_script(&to.script_pubkey());
        let txid = state.send(&to.script_pubkey(), Amount::from_sat(60_000), false).expect("sent");
        state.mine(1, NOW).expect("mined");
        let old_tip = state.tip();
        assert_eq!(state.history(&sh)[0].height, 102);
        let (height, hash) = state.reorg(1, 2, false, NOW).expect("reorg");
        assert_eq!(height, 103);
        assert_ne!(state.chain.block_hash(102), Some(old_tip.1));
        assert_eq!(hash, state.chain.tip_hash());
        assert_eq!(state.history(&sh)[0].height, 0, "back in the mempool");
        assert!(state.mempool.get(&txid).is_some());
        state.reorg(2, 3, true, NOW).expect("reorg");
        assert_eq!(state.tip().0, 104);
        assert_eq!(state.history(&sh)[0].height, 102, "confirmed again in the new branch");
        assert!(state.reorg(2, 2, false, NOW).is_err(), "the new branch must be longer");
        assert!(state.reorg(0, 1, false, NOW).is_err());
    }

    #[test]
    fn reorg_below_maturity_brings_coinbase_spends_back_once_mature() {
        let mut state = started();
        let coin = state.wallet_coins().into_iter().find(|c| c.height == 2).expect("a coin of block 2");
        let out = TxOut { value: Amount::from_sat(10_000), script_pubkey: stranger().script_pubkey() };
        let tx = state.wallet.build(vec![coin], Vec::new(), vec![out], Amount::ZERO, false).expect("builds");
        let txid = state.submit(tx).expect("accepted");
        state.mine(1, NOW).expect("mined");
        // Back to height 99: the coinbase of block 2 is immature there, mature again from block 101.
        state.reorg(3, 4, false, NOW).expect("reorg");
        assert!(state.mempool.get(&txid).is_some(), "back in the mempool once mature again");
        state.reorg(3, 4, true, NOW).expect("reorg");
        assert!(state.chain.contains_tx(&txid), "mined into the first block where it is valid");
        assert_eq!(state.tip().0, 104);
    }

    #[test]
    fn reorg_drops_spends_of_orphaned_coinbases() {
        let mut state = started();
        let coin = state.wallet_coins().into_iter().find(|c| c.height == 2).expect("a coin of block 2");
        let out = TxOut { value: Amount::from_sat(10_000), script_pubkey: stranger().script_pubkey() };
        let tx = state.wallet.build(vec![coin], Vec::new(), vec![out], Amount::ZERO, false).expect("builds");
        let txid = state.submit(tx).expect("accepted");
        state.reorg(100, 101, false, NOW).expect("reorg down to block 1");
        assert!(state.mempool.get(&txid).is_none(), "its input was orphaned");
        assert_eq!(state.tip().0, 102);
    }
}
