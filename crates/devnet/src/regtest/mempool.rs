//! The regtest mempool: validation of broadcast transactions and BIP125 replacement.
//!
//! Every transaction — a raw broadcast from an Electrum client or one the wallet built — goes
//! through [`Mempool::check`] and then [`Mempool::insert`]; nothing else adds to the mempool.
//!
//! Rules (a subset of Bitcoin Core's, enough to exercise a watcher honestly):
//! - the transaction decodes, is not a coinbase, has inputs and outputs, is not already known;
//! - every input exists and is unspent, in the chain's UTXO set or as an output of a mempool
//!   transaction, and is spent once; a coinbase output has at least 100 confirmations counting
//!   the next block;
//! - outputs do not exceed inputs, and the fee pays at least [`RELAY_FEE_SAT_PER_VB`];
//! - every input is a P2WPKH spend (ECDSA, BIP143 sighash) or a P2TR key-path spend (Schnorr,
//!   BIP341 sighash) whose signature verifies; other scripts are refused as unsupported;
//! - an input already spent by a mempool transaction is a replacement: every directly
//!   conflicting transaction must signal replace-by-fee explicitly (an input's nSequence below
//!   0xfffffffe; inherited signalling is not modelled), and the replacement's absolute fee must
//!   exceed the fees of everything it evicts (the conflicts and their descendants).
//!
//! Invariants: `spends` maps each outpoint spent by a mempool transaction to that transaction;
//! `order` lists the mempool in acceptance order, in which a parent always precedes its children,
//! so any prefix of it is a valid block body.

use std::collections::{BTreeMap, HashMap, HashSet};

use bitcoin::key::Secp256k1;
use bitcoin::secp256k1::{Message, Verification, XOnlyPublicKey};
use bitcoin::sighash::{Prevouts, SighashCache};
use bitcoin::{Amount, CompressedPublicKey, OutPoint, ScriptBuf, Transaction, TxOut, Txid};

use super::chain::{touched_script_hashes, Chain, ScriptHash, COINBASE_MATURITY};
use super::{RegtestError, Result};

/// The minimum fee rate relayed, in sat/vB (Bitcoin Core's default, 1000 sat/kvB).
pub const RELAY_FEE_SAT_PER_VB: u64 = 1;
/// The largest transaction accepted, in virtual bytes (Bitcoin Core's standardness limit).
pub const TX_VSIZE_MAX: u64 = 100_000;
/// The most transactions the mempool holds.
pub const MEMPOOL_TXS_MAX: usize = 10_000;

/// A transaction in the mempool, with what was learnt while validating it.
#[derive(Debug, Clone)]
pub struct MempoolEntry {
    pub tx: Transaction,
    pub txid: Txid,
    pub fee: Amount,
    pub vsize: u64,
    /// The outputs its inputs spend, in input order.
    pub prevouts: Vec<TxOut>,
    /// The script hashes it touches (outputs and spent outputs).
    pub touched: Vec<ScriptHash>,
    seq: u64,
}

/// A transaction that passed [`Mempool::check`], and the transactions it replaces.
#[derive(Debug)]
pub struct Accepted {
    pub entry: MempoolEntry,
    pub evict: Vec<Txid>,
}

#[derive(Debug, Default)]
pub struct Mempool {
    entries: HashMap<Txid, MempoolEntry>,
    order: BTreeMap<u64, Txid>,
    spends: HashMap<OutPoint, Txid>,
    seq_next: u64,
}

impl Mempool {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, txid: &Txid) -> Option<&MempoolEntry> {
        self.entries.get(txid)
    }

    /// The mempool in acceptance order (parents before children).
    pub fn iter(&self) -> impl Iterator<Item = &MempoolEntry> {
        self.order.values().filter_map(|txid| self.entries.get(txid))
    }

    /// The mempool transaction spending `outpoint`, if any.
    pub fn spender(&self, outpoint: &OutPoint) -> Option<Txid> {
        self.spends.get(outpoint).copied()
    }

    /// Whether `entry` spends an output of another mempool transaction (Electrum height -1).
    pub fn has_unconfirmed_parent(&self, entry: &MempoolEntry) -> bool {
        entry.tx.input.iter().any(|input| self.entries.contains_key(&input.previous_output.txid))
    }

    /// The transactions spending outputs of `txid`, their children and so on (not `txid`).
    pub fn descendants(&self, txid: Txid) -> Vec<Txid> {
        let mut found: Vec<Txid> = Vec::new();
        let mut stack = vec![txid];
        while let Some(parent) = stack.pop() {
            let Some(entry) = self.entries.get(&parent) else { continue };
            for vout in 0..entry.tx.output.len() {
                let outpoint = OutPoint { txid: parent, vout: u32::try_from(vout).unwrap_or(u32::MAX) };
                if let Some(child) = self.spends.get(&outpoint) {
                    if !found.contains(child) {
                        found.push(*child);
                        stack.push(*child);
                    }
                }
            }
        }
        found
    }

    /// Validates `tx` against the chain and the mempool; see the module documentation.
    pub fn check<C: Verification>(&self, chain: &Chain, tx: Transaction, secp: &Secp256k1<C>) -> Result<Accepted> {
        let txid = tx.compute_txid();
        if tx.is_coinbase() {
            return Err(RegtestError::invalid(txid, "a coinbase cannot be broadcast"));
        }
        if tx.input.is_empty() {
            return Err(RegtestError::invalid(txid, "no inputs"));
        }
        if tx.output.is_empty() {
            return Err(RegtestError::invalid(txid, "no outputs"));
        }
        let vsize = u64::try_from(tx.vsize()).unwrap_or(u64::MAX);
        if vsize > TX_VSIZE_MAX {
            return Err(RegtestError::invalid(txid, format!("{vsize} vbytes exceed {TX_VSIZE_MAX}")));
        }
        if self.entries.contains_key(&txid) || chain.contains_tx(&txid) {
            return Err(RegtestError::AlreadyKnown { txid });
        }
        if self.entries.len() >= MEMPOOL_TXS_MAX {
            return Err(RegtestError::Limit {
                what: "mempool transactions",
                max: u64::try_from(MEMPOOL_TXS_MAX).unwrap_or(u64::MAX),
            });
        }
        let mut seen = HashSet::new();
        let mut prevouts = Vec::with_capacity(tx.input.len());
        let mut conflicts: Vec<Txid> = Vec::new();
        for input in &tx.input {
            let outpoint = input.previous_output;
            if !seen.insert(outpoint) {
                return Err(RegtestError::invalid(txid, format!("input {outpoint} is spent twice")));
            }
            let coin = if let Some(parent) = self.entries.get(&outpoint.txid) {
                let vout = usize::try_from(outpoint.vout).unwrap_or(usize::MAX);
                parent.tx.output.get(vout).cloned().ok_or(RegtestError::MissingInput { txid, outpoint })?
            } else if let Some(utxo) = chain.utxo(&outpoint) {
                let confirmations = (chain.height() + 1).saturating_sub(utxo.height);
                if utxo.is_coinbase && confirmations < COINBASE_MATURITY {
                    return Err(RegtestError::ImmatureCoinbase { txid, outpoint, confirmations });
                }
                utxo.output.clone()
            } else {
                return Err(RegtestError::MissingInput { txid, outpoint });
            };
            if let Some(conflict) = self.spends.get(&outpoint) {
                let replaceable = self.entries.get(conflict).is_some_and(|e| e.tx.is_explicitly_rbf());
                if !replaceable {
                    return Err(RegtestError::DoubleSpend { txid, outpoint, conflict: *conflict });
                }
                if !conflicts.contains(conflict) {
                    conflicts.push(*conflict);
                }
            }
            prevouts.push(coin);
        }
        let sum = |outputs: &[TxOut]| -> Result<Amount> {
            outputs.iter().try_fold(Amount::ZERO, |total, o| {
                total
                    .checked_add(o.value)
                    .filter(|t| *t <= Amount::MAX_MONEY)
                    .ok_or_else(|| RegtestError::invalid(txid, "amounts exceed 21 million bitcoin"))
            })
        };
        let inputs = sum(&prevouts)?;
        let outputs = sum(&tx.output)?;
        let fee = inputs.checked_sub(outputs).ok_or(RegtestError::OutputsExceedInputs { txid, inputs, outputs })?;
        let required = Amount::from_sat(vsize.saturating_mul(RELAY_FEE_SAT_PER_VB));
        if fee < required {
            return Err(RegtestError::FeeTooLow { txid, fee, required });
        }
        verify_signatures(&tx, &prevouts, secp)?;
        let mut evict: Vec<Txid> = Vec::new();
        for conflict in &conflicts {
            for txid in std::iter::once(*conflict).chain(self.descendants(*conflict)) {
                if !evict.contains(&txid) {
                    evict.push(txid);
                }
            }
        }
        if let Some(input) = tx.input.iter().find(|i| evict.contains(&i.previous_output.txid)) {
            return Err(RegtestError::invalid(txid, format!("input {} spends a transaction it replaces", input.previous_output)));
        }
        let replaced: Amount = evict.iter().filter_map(|t| self.entries.get(t)).map(|e| e.fee).sum();
        if !evict.is_empty() && fee <= replaced {
            return Err(RegtestError::ReplacementFee { txid, fee, replaced });
        }
        let touched = touched_script_hashes(&tx, &prevouts);
        Ok(Accepted { entry: MempoolEntry { tx, txid, fee, vsize, prevouts, touched, seq: 0 }, evict })
    }

    /// Adds a checked transaction, evicting what it replaces. The chain and mempool must not
    /// have changed since [`Self::check`].
    pub fn insert(&mut self, accepted: Accepted) -> Txid {
        for txid in &accepted.evict {
            self.remove(txid);
        }
        let mut entry = accepted.entry;
        entry.seq = self.seq_next;
        self.seq_next += 1;
        let txid = entry.txid;
        for input in &entry.tx.input {
            self.spends.insert(input.previous_output, txid);
        }
        self.order.insert(entry.seq, txid);
        self.entries.insert(txid, entry);
        txid
    }

    /// Removes one transaction (not its descendants: the caller removes a closed set, e.g. the
    /// transactions a block confirmed).
    pub fn remove(&mut self, txid: &Txid) -> Option<MempoolEntry> {
        let entry = self.entries.remove(txid)?;
        self.order.remove(&entry.seq);
        for input in &entry.tx.input {
            if self.spends.get(&input.previous_output) == Some(txid) {
                self.spends.remove(&input.previous_output);
            }
        }
        Some(entry)
    }

    /// Empties the mempool, returning its transactions in acceptance order.
    pub fn take_all(&mut self) -> Vec<Transaction> {
        let order = std::mem::take(&mut self.order);
        self.spends.clear();
        let mut entries = std::mem::take(&mut self.entries);
        order.into_values().filter_map(|txid| entries.remove(&txid)).map(|e| e.tx).collect()
    }
}

/// Verifies the signature of every input of `tx`, which spends `prevouts` (in input order).
pub fn verify_signatures<C: Verification>(tx: &Transaction, prevouts: &[TxOut], secp: &Secp256k1<C>) -> Result<()> {
    let txid = tx.compute_txid();
    let mut cache = SighashCache::new(tx);
    for (index, (input, prevout)) in tx.input.iter().zip(prevouts).enumerate() {
        let bad = |reason: &dyn std::fmt::Display| RegtestError::BadSignature { txid, index, reason: reason.to_string() };
        let script = &prevout.script_pubkey;
        if !input.script_sig.is_empty() {
            return Err(bad(&"a native segwit spend has an empty scriptSig"));
        }
        if script.is_p2wpkh() {
            let (Some(sig), Some(key), 2) = (input.witness.nth(0), input.witness.nth(1), input.witness.len()) else {
                return Err(bad(&"a p2wpkh witness holds a signature and a public key"));
            };
            let sig = bitcoin::ecdsa::Signature::from_slice(sig).map_err(|e| bad(&e))?;
            let key = CompressedPublicKey::from_slice(key).map_err(|e| bad(&e))?;
            if ScriptBuf::new_p2wpkh(&key.wpubkey_hash()) != *script {
                return Err(bad(&"the public key does not hash to the output's key hash"));
            }
            let sighash = cache.p2wpkh_signature_hash(index, script, prevout.value, sig.sighash_type).map_err(|e| bad(&e))?;
            secp.verify_ecdsa(&Message::from(sighash), &sig.signature, &key.0)
                .map_err(|_| bad(&"the ecdsa signature does not verify"))?;
        } else if script.is_p2tr() {
            if input.witness.len() != 1 {
                // Two or more elements: a script-path spend or an annex.
                return Err(RegtestError::UnsupportedScript { txid, index });
            }
            let sig = input.witness.nth(0).ok_or_else(|| bad(&"an empty witness"))?;
            let sig = bitcoin::taproot::Signature::from_slice(sig).map_err(|e| bad(&e))?;
            let key = XOnlyPublicKey::from_slice(script.as_bytes().get(2..34).unwrap_or_default()).map_err(|e| bad(&e))?;
            let sighash =
                cache.taproot_key_spend_signature_hash(index, &Prevouts::All(prevouts), sig.sighash_type).map_err(|e| bad(&e))?;
            secp.verify_schnorr(&sig.signature, &Message::from(sighash), &key)
                .map_err(|_| bad(&"the schnorr signature does not verify"))?;
        } else {
            return Err(RegtestError::UnsupportedScript { txid, index });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use bitcoin::hashes::Hash;
    use bitcoin::{Amount, OutPoint, ScriptBuf, Sequence, TxIn, TxOut, Witness};

    use super::super::node::NodeState;
    use super::super::test_support::{started, stranger, NOW};
    use super::super::wallet::Coin;
    use super::*;

    fn pay(state: &NodeState, coin: Coin, value: Amount, rbf: bool) -> Transaction {
        let out = TxOut { value, script_pubkey: stranger().script_pubkey() };
        state.wallet.build(vec![coin], Vec::new(), vec![out], Amount::ZERO, rbf).expect("builds")
    }

    #[test]
    fn wallet_transactions_verify_and_a_flipped_signature_does_not() {
        let mut state = started();
        let coin = state.wallet_coins().remove(0);
        let tx = pay(&state, coin.clone(), Amount::from_sat(100_000), false);
        verify_signatures(&tx, std::slice::from_ref(&coin.output), state.wallet.secp()).expect("p2wpkh signature verifies");
        let mut forged = tx.clone();
        let mut items: Vec<Vec<u8>> = forged.input[0].witness.iter().map(<[u8]>::to_vec).collect();
        items[0][10] ^= 1;
        forged.input[0].witness = Witness::from_slice(&items);
        let err = state.submit(forged).expect_err("forged signature");
        assert!(matches!(err, RegtestError::BadSignature { index: 0, .. }), "{err}");
        state.submit(tx).expect("the genuine transaction is accepted");
    }

    #[test]
    fn taproot_key_path_spends_verify() {
        let mut state = started();
        let p2tr = state.wallet.p2tr_address().clone();
        let txid = state.send(&p2tr.script_pubkey(), Amount::from_sat(1_000_000), false).expect("sent");
        state.mine(1, NOW).expect("mined");
        let coin = state
            .wallet_coins()
            .into_iter()
            .find(|c| c.outpoint.txid == txid && c.output.script_pubkey == p2tr.script_pubkey())
            .expect("the p2tr coin");
        let spend = pay(&state, coin.clone(), Amount::from_sat(500_000), false);
        assert_eq!(spend.input[0].witness.len(), 1, "a key-path spend has one witness element");
        let prevouts: Vec<TxOut> = vec![coin.output.clone()];
        verify_signatures(&spend, &prevouts, state.wallet.secp()).expect("schnorr signature verifies");
        let mut forged = spend.clone();
        forged.output[0].value = Amount::from_sat(499_999);
        assert!(matches!(state.submit(forged), Err(RegtestError::BadSignature { .. })), "the signature commits to the outputs");
        let spend_txid = state.submit(spend).expect("accepted");
        // Its change is p2tr too: spending it from the mempool gives height -1 in history.
        let change = state.wallet_coins().into_iter().find(|c| c.outpoint.txid == spend_txid).expect("change");
        let child = pay(&state, change, Amount::from_sat(100_000), false);
        state.submit(child).expect("a child of a mempool transaction is accepted");
    }

    #[test]
    fn double_spends_without_rbf_are_refused_and_with_rbf_need_a_higher_fee() {
        let mut state = started();
        let coin = state.wallet_coins().remove(0);
        let first = pay(&state, coin.clone(), Amount::from_sat(100_000), false);
        let first_txid = state.submit(first).expect("accepted");
        let second = pay(&state, coin.clone(), Amount::from_sat(90_000), false);
        let err = state.submit(second).expect_err("double spend");
        assert!(matches!(err, RegtestError::DoubleSpend { conflict, .. } if conflict == first_txid), "{err}");

        let coin = state.wallet_coins().remove(0);
        let original = pay(&state, coin.clone(), Amount::from_sat(100_000), true);
        assert!(original.is_explicitly_rbf());
        let original_txid = state.submit(original).expect("accepted");
        let fee = state.mempool.get(&original_txid).expect("in mempool").fee;
        let same_fee = {
            let out = TxOut { value: Amount::from_sat(100_000), script_pubkey: stranger().script_pubkey() };
            state.wallet.build(vec![coin.clone()], Vec::new(), vec![out], fee, true).expect("builds")
        };
        assert!(matches!(state.submit(same_fee), Err(RegtestError::ReplacementFee { .. })));
        let higher = {
            let out = TxOut { value: Amount::from_sat(100_000), script_pubkey: stranger().script_pubkey() };
            state.wallet.build(vec![coin], Vec::new(), vec![out], fee + Amount::from_sat(1), true).expect("builds")
        };
        let replacement = state.submit(higher).expect("a higher fee replaces");
        assert!(state.mempool.get(&original_txid).is_none(), "the original is evicted");
        assert!(state.mempool.get(&replacement).is_some());
    }

    #[test]
    fn missing_immature_and_overspending_inputs_are_refused() {
        let mut state = started();
        let wallet_script = state.wallet.coinbase_script().to_owned();
        // An output that never existed.
        let ghost = Coin {
            outpoint: OutPoint { txid: Txid::all_zeros(), vout: 7 },
            output: TxOut { value: Amount::from_sat(1_000_000), script_pubkey: wallet_script.clone() },
            confirmed: true,
            height: 1,
        };
        let tx = pay(&state, ghost, Amount::from_sat(10_000), false);
        assert!(matches!(state.submit(tx), Err(RegtestError::MissingInput { .. })));
        // The newest coinbase has one confirmation.
        let tip = state.chain.block(101).expect("tip block").clone();
        let coinbase = &tip.txdata[0];
        let immature = Coin {
            outpoint: OutPoint { txid: coinbase.compute_txid(), vout: 0 },
            output: coinbase.output[0].clone(),
            confirmed: true,
            height: 101,
        };
        let tx = pay(&state, immature, Amount::from_sat(10_000), false);
        let err = state.submit(tx).expect_err("immature");
        assert!(matches!(err, RegtestError::ImmatureCoinbase { confirmations: 1, .. }), "{err}");
        // Outputs above inputs, signed properly.
        let coin = state.wallet_coins().remove(0);
        let mut tx = Transaction {
            version: bitcoin::transaction::Version::TWO,
            lock_time: bitcoin::absolute::LockTime::ZERO,
            input: vec![TxIn {
                previous_output: coin.outpoint,
                script_sig: ScriptBuf::new(),
                sequence: Sequence::MAX,
                witness: Witness::new(),
            }],
            output: vec![TxOut { value: coin.output.value + Amount::from_sat(1), script_pubkey: stranger().script_pubkey() }],
        };
        state.wallet.sign(&mut tx, std::slice::from_ref(&coin.output)).expect("signed");
        let err = state.submit(tx).expect_err("overspends");
        assert!(matches!(err, RegtestError::OutputsExceedInputs { .. }), "{err}");
        // A coinbase cannot be broadcast, and nothing is accepted twice.
        assert!(matches!(state.submit(coinbase.clone()), Err(RegtestError::InvalidTx { .. })));
        let coin = state.wallet_coins().remove(0);
        let tx = pay(&state, coin, Amount::from_sat(10_000), false);
        state.submit(tx.clone()).expect("accepted");
        assert!(matches!(state.submit(tx), Err(RegtestError::AlreadyKnown { .. })));
    }
}
