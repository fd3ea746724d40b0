//! The regtest block chain: blocks, proof of work, merkle roots, the UTXO set and the
//! script-hash index the Electrum server reads. Pure data, no I/O.
//!
//! Invariants:
//! - `blocks[h]` is the block at height `h`; `blocks[0]` is the real regtest genesis block; each
//!   block's `prev_blockhash` is the hash of the block before it.
//! - Every connected block passed [`check_block`]: proof of work at regtest bits, merkle root,
//!   witness commitment, BIP34 height, coinbase paying no more than subsidy plus fees.
//! - `utxos` is exactly the unspent outputs of the connected blocks (the genesis output is never
//!   spendable, as in Bitcoin Core); `undo[h]` restores the outputs block `h` spent, so that
//!   disconnecting the tip gives back the previous state exactly.
//! - `history[sh]` lists the confirmed transactions touching script hash `sh` in chain order
//!   (height, then position in the block), each once.

use std::collections::HashMap;

use bitcoin::block::{Header, Version};
use bitcoin::blockdata::constants::genesis_block;
use bitcoin::hashes::{sha256, Hash};
use bitcoin::pow::{CompactTarget, Target};
use bitcoin::script::Builder;
use bitcoin::transaction::Version as TxVersion;
use bitcoin::{
    absolute, Amount, Block, BlockHash, Network, OutPoint, Script, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Txid, Witness,
};

use super::{RegtestError, Result};

/// Regtest's proof-of-work limit, in compact form; regtest never retargets.
pub const REGTEST_BITS: u32 = 0x207f_ffff;
/// Blocks between subsidy halvings on regtest.
pub const SUBSIDY_HALVING_INTERVAL: u64 = 150;
/// The subsidy of the first blocks: 50 BTC.
pub const SUBSIDY_INITIAL_SAT: u64 = 50 * 100_000_000;
/// Confirmations a coinbase output needs before it may be spent (consensus: the spending block's
/// height minus the coinbase's height is at least 100).
pub const COINBASE_MATURITY: u64 = 100;
/// The consensus block weight limit.
pub const BLOCK_WEIGHT_MAX: u64 = 4_000_000;
/// Weight reserved for the coinbase when filling a block.
pub const COINBASE_WEIGHT_RESERVED: u64 = 4_000;
/// Outputs the coinbase splits its value into, so the wallet has many mature coins early.
pub const COINBASE_OUTPUTS: u64 = 10;
/// Block header version: BIP9 top bits (and above 2, as BIP34 needs).
const BLOCK_VERSION: i32 = 0x2000_0000;
/// The witness commitment output script starts with OP_RETURN, a 36-byte push and this tag.
const WITNESS_COMMITMENT_HEADER: [u8; 6] = [0x6a, 0x24, 0xaa, 0x21, 0xa9, 0xed];

/// Electrum's script hash: sha256 of the output script, bytes reversed (so its hex reads like a
/// txid).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScriptHash(pub [u8; 32]);

impl ScriptHash {
    pub fn from_script(script: &Script) -> Self {
        let mut bytes = sha256::Hash::hash(script.as_bytes()).to_byte_array();
        bytes.reverse();
        Self(bytes)
    }

    /// Parses the 64 hex characters Electrum clients send.
    pub fn from_hex(s: &str) -> Option<Self> {
        let bytes = hex::decode(s).ok()?;
        <[u8; 32]>::try_from(bytes.as_slice()).ok().map(Self)
    }

    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }
}

/// An unspent output of the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Utxo {
    pub output: TxOut,
    pub height: u64,
    pub is_coinbase: bool,
}

/// What disconnecting a block must restore.
#[derive(Debug, Default)]
struct BlockUndo {
    spent: Vec<(OutPoint, Utxo)>,
    touched: Vec<ScriptHash>,
}

/// The block subsidy at `height`.
pub fn subsidy(height: u64) -> Amount {
    let halvings = height / SUBSIDY_HALVING_INTERVAL;
    if halvings >= 64 {
        return Amount::ZERO;
    }
    Amount::from_sat(SUBSIDY_INITIAL_SAT >> halvings)
}

/// Regtest's target (the proof-of-work limit).
pub fn regtest_target() -> Target {
    Target::from_compact(CompactTarget::from_consensus(REGTEST_BITS))
}

/// The script hashes a transaction touches: those of its outputs and of the outputs it spends
/// (`prevouts`, in input order; empty for a coinbase), each once, in first-seen order.
pub fn touched_script_hashes(tx: &Transaction, prevouts: &[TxOut]) -> Vec<ScriptHash> {
    let mut touched: Vec<ScriptHash> = Vec::new();
    for script in prevouts.iter().chain(tx.output.iter()).map(|o| &o.script_pubkey) {
        let sh = ScriptHash::from_script(script);
        if !touched.contains(&sh) {
            touched.push(sh);
        }
    }
    touched
}

/// Whether any input of `tx` carries witness data.
pub fn has_witness(tx: &Transaction) -> bool {
    tx.input.iter().any(|input| !input.witness.is_empty())
}

/// The regtest chain.
#[derive(Debug)]
pub struct Chain {
    blocks: Vec<Block>,
    hashes: Vec<BlockHash>,
    undo: Vec<BlockUndo>,
    utxos: HashMap<OutPoint, Utxo>,
    tx_index: HashMap<Txid, (u64, usize)>,
    history: HashMap<ScriptHash, Vec<(u64, Txid)>>,
    /// Mixed into every coinbase so that no two blocks ever share a coinbase txid, not even
    /// competing blocks at one height.
    extranonce: u64,
}

impl Default for Chain {
    fn default() -> Self {
        Self::new()
    }
}

impl Chain {
    /// A chain holding only the regtest genesis block.
    pub fn new() -> Self {
        let genesis = genesis_block(Network::Regtest);
        let hash = genesis.block_hash();
        let mut tx_index = HashMap::new();
        for (pos, tx) in genesis.txdata.iter().enumerate() {
            tx_index.insert(tx.compute_txid(), (0, pos));
        }
        Self {
            blocks: vec![genesis],
            hashes: vec![hash],
            undo: vec![BlockUndo::default()],
            utxos: HashMap::new(),
            tx_index,
            history: HashMap::new(),
            extranonce: 0,
        }
    }

    pub fn height(&self) -> u64 {
        // The chain always holds genesis, so there is at least one block.
        u64::try_from(self.blocks.len()).unwrap_or(u64::MAX).saturating_sub(1)
    }

    pub fn tip_hash(&self) -> BlockHash {
        self.hashes.last().copied().unwrap_or_else(|| genesis_block(Network::Regtest).block_hash())
    }

    pub fn genesis_hash(&self) -> BlockHash {
        self.hashes.first().copied().unwrap_or_else(|| genesis_block(Network::Regtest).block_hash())
    }

    pub fn block(&self, height: u64) -> Option<&Block> {
        self.blocks.get(usize::try_from(height).ok()?)
    }

    pub fn header(&self, height: u64) -> Option<&Header> {
        self.block(height).map(|b| &b.header)
    }

    pub fn block_hash(&self, height: u64) -> Option<BlockHash> {
        self.hashes.get(usize::try_from(height).ok()?).copied()
    }

    pub fn utxo(&self, outpoint: &OutPoint) -> Option<&Utxo> {
        self.utxos.get(outpoint)
    }

    pub fn utxos(&self) -> impl Iterator<Item = (&OutPoint, &Utxo)> {
        self.utxos.iter()
    }

    /// A confirmed transaction and its height.
    pub fn transaction(&self, txid: &Txid) -> Option<(&Transaction, u64)> {
        let (height, pos) = *self.tx_index.get(txid)?;
        self.block(height)?.txdata.get(pos).map(|tx| (tx, height))
    }

    pub fn contains_tx(&self, txid: &Txid) -> bool {
        self.tx_index.contains_key(txid)
    }

    /// Confirmed transactions touching `sh`, in chain order, with their heights.
    pub fn history(&self, sh: &ScriptHash) -> &[(u64, Txid)] {
        self.history.get(sh).map_or(&[], Vec::as_slice)
    }

    /// Builds (and grinds the proof of work of) the next block: a coinbase paying the subsidy
    /// plus `fees` to `payout`, then `txs` in order. `now` is the wall clock in Unix seconds; the
    /// block's time is later than its parent's whatever the clock says.
    pub fn build_block(&mut self, txs: Vec<Transaction>, fees: Amount, payout: &Script, now: u32) -> Result<Block> {
        let height = self.height() + 1;
        self.extranonce += 1;
        let height_script = i64::try_from(height).map_err(|_| RegtestError::Limit { what: "chain height", max: u64::MAX })?;
        let script_sig = Builder::new().push_int(height_script).push_slice(self.extranonce.to_le_bytes()).into_script();
        let segwit = txs.iter().any(has_witness);
        let value = subsidy(height)
            .checked_add(fees)
            .ok_or(RegtestError::Limit { what: "block fees", max: bitcoin::Amount::MAX_MONEY.to_sat() })?;
        let share = value.to_sat() / COINBASE_OUTPUTS;
        let remainder = value.to_sat() % COINBASE_OUTPUTS;
        let output = (0..COINBASE_OUTPUTS)
            .map(|i| TxOut {
                value: Amount::from_sat(if i == 0 { share + remainder } else { share }),
                script_pubkey: payout.to_owned(),
            })
            .collect();
        let coinbase = Transaction {
            version: TxVersion::TWO,
            lock_time: absolute::LockTime::ZERO,
            input: vec![TxIn {
                previous_output: OutPoint::null(),
                script_sig,
                sequence: Sequence::MAX,
                witness: if segwit { Witness::from_slice(&[[0u8; 32]]) } else { Witness::new() },
            }],
            output,
        };
        let prev = self.blocks.last().map_or(0, |b| b.header.time);
        let mut block = Block {
            header: Header {
                version: Version::from_consensus(BLOCK_VERSION),
                prev_blockhash: self.tip_hash(),
                merkle_root: bitcoin::TxMerkleNode::all_zeros(),
                time: now.max(prev.saturating_add(1)),
                bits: CompactTarget::from_consensus(REGTEST_BITS),
                nonce: 0,
            },
            txdata: std::iter::once(coinbase).chain(txs).collect(),
        };
        if segwit {
            let witness_root = block.witness_root().ok_or_else(|| RegtestError::InvalidBlock {
                hash: block.header.block_hash(),
                reason: "no transactions".to_owned(),
            })?;
            let commitment = Block::compute_witness_commitment(&witness_root, &[0u8; 32]);
            let mut script = WITNESS_COMMITMENT_HEADER.to_vec();
            script.extend_from_slice(commitment.as_byte_array());
            if let Some(coinbase) = block.txdata.first_mut() {
                coinbase.output.push(TxOut { value: Amount::ZERO, script_pubkey: ScriptBuf::from_bytes(script) });
            }
        }
        block.header.merkle_root = block.compute_merkle_root().ok_or_else(|| RegtestError::InvalidBlock {
            hash: block.header.block_hash(),
            reason: "no transactions".to_owned(),
        })?;
        let target = regtest_target();
        // About every other nonce meets the regtest target; the loop ends within a few tries.
        while !target.is_met_by(block.header.block_hash()) {
            block.header.nonce = match block.header.nonce.checked_add(1) {
                Some(nonce) => nonce,
                None => {
                    block.header.time = block.header.time.saturating_add(1);
                    0
                }
            };
        }
        Ok(block)
    }

    /// Checks `block` as the next block of this chain and connects it: spends its inputs, adds
    /// its outputs, indexes its transactions. Transactions come from the mempool, which
    /// validated their scripts; here the block's structure and the inputs' existence are checked.
    pub fn connect(&mut self, block: Block) -> Result<BlockHash> {
        let hash = block.block_hash();
        let invalid = |reason: &str| RegtestError::InvalidBlock { hash, reason: reason.to_owned() };
        let height = self.height() + 1;
        check_block(&block, self.tip_hash(), height).map_err(|reason| invalid(&reason))?;
        let mut undo = BlockUndo::default();
        let mut utxos_added: Vec<OutPoint> = Vec::new();
        let mut fees = Amount::ZERO;
        let mut entries: Vec<(Txid, Vec<ScriptHash>)> = Vec::new();
        let mut failure = None;
        for tx in &block.txdata {
            let txid = tx.compute_txid();
            let mut prevouts = Vec::new();
            if !tx.is_coinbase() {
                let mut value_in = Amount::ZERO;
                for input in &tx.input {
                    let Some(utxo) = self.utxos.remove(&input.previous_output) else {
                        failure = Some(format!("{txid} spends missing output {}", input.previous_output));
                        break;
                    };
                    if utxo.is_coinbase && height - utxo.height < COINBASE_MATURITY {
                        failure = Some(format!("{txid} spends immature coinbase output {}", input.previous_output));
                    }
                    value_in = value_in.checked_add(utxo.output.value).unwrap_or(Amount::MAX);
                    prevouts.push(utxo.output.clone());
                    undo.spent.push((input.previous_output, utxo));
                }
                if failure.is_some() {
                    break;
                }
                let value_out: Amount = tx.output.iter().map(|o| o.value).sum();
                match value_in.checked_sub(value_out) {
                    Some(fee) => fees = fees.checked_add(fee).unwrap_or(Amount::MAX),
                    None => {
                        failure = Some(format!("{txid} spends more than its inputs"));
                        break;
                    }
                }
            }
            if self.tx_index.contains_key(&txid) {
                failure = Some(format!("{txid} is already confirmed"));
                break;
            }
            for (vout, output) in tx.output.iter().enumerate() {
                if output.script_pubkey.is_op_return() {
                    continue;
                }
                let outpoint = OutPoint { txid, vout: u32::try_from(vout).unwrap_or(u32::MAX) };
                self.utxos.insert(outpoint, Utxo { output: output.clone(), height, is_coinbase: tx.is_coinbase() });
                utxos_added.push(outpoint);
            }
            entries.push((txid, touched_script_hashes(tx, &prevouts)));
        }
        let coinbase_value: Amount = block.txdata.first().map(|cb| cb.output.iter().map(|o| o.value).sum()).unwrap_or_default();
        if failure.is_none() && coinbase_value > subsidy(height).checked_add(fees).unwrap_or(Amount::MAX) {
            failure = Some("coinbase pays more than subsidy and fees".to_owned());
        }
        if let Some(reason) = failure {
            // Roll back what was applied: the chain stays as it was. Spent outputs first, then
            // the block's own outputs go, including those it created and spent itself.
            for (outpoint, utxo) in undo.spent {
                self.utxos.insert(outpoint, utxo);
            }
            for outpoint in utxos_added {
                self.utxos.remove(&outpoint);
            }
            return Err(invalid(&reason));
        }
        for (pos, (txid, touched)) in entries.into_iter().enumerate() {
            self.tx_index.insert(txid, (height, pos));
            for sh in touched {
                self.history.entry(sh).or_default().push((height, txid));
                if !undo.touched.contains(&sh) {
                    undo.touched.push(sh);
                }
            }
        }
        self.blocks.push(block);
        self.hashes.push(hash);
        self.undo.push(undo);
        Ok(hash)
    }

    /// Disconnects the tip block and returns it; the chain is then exactly as before the block
    /// was connected. Genesis is never disconnected.
    pub fn disconnect_tip(&mut self) -> Option<Block> {
        if self.blocks.len() <= 1 {
            return None;
        }
        let height = self.height();
        let block = self.blocks.pop()?;
        self.hashes.pop();
        let undo = self.undo.pop().unwrap_or_default();
        // Spent outputs first, then the block's own outputs go, including those it created and
        // spent itself.
        for (outpoint, utxo) in undo.spent {
            self.utxos.insert(outpoint, utxo);
        }
        for tx in &block.txdata {
            let txid = tx.compute_txid();
            for vout in 0..tx.output.len() {
                self.utxos.remove(&OutPoint { txid, vout: u32::try_from(vout).unwrap_or(u32::MAX) });
            }
            self.tx_index.remove(&txid);
        }
        for sh in undo.touched {
            if let Some(entries) = self.history.get_mut(&sh) {
                while entries.last().is_some_and(|(h, _)| *h == height) {
                    entries.pop();
                }
                if entries.is_empty() {
                    self.history.remove(&sh);
                }
            }
        }
        Some(block)
    }
}

/// The structural checks of a block at `height` on top of `prev`: parent hash, proof of work at
/// regtest bits, merkle root, BIP34 height, a single coinbase first, witness commitment.
pub fn check_block(block: &Block, prev: BlockHash, height: u64) -> std::result::Result<(), String> {
    if block.header.prev_blockhash != prev {
        return Err(format!("parent {} is not the tip {prev}", block.header.prev_blockhash));
    }
    block.header.validate_pow(regtest_target()).map_err(|e| format!("proof of work: {e}"))?;
    if !block.check_merkle_root() {
        return Err("merkle root does not match the transactions".to_owned());
    }
    if !block.check_witness_commitment() {
        return Err("witness commitment does not match the transactions".to_owned());
    }
    let coinbase = block.txdata.first().filter(|tx| tx.is_coinbase()).ok_or("the first transaction is not a coinbase")?;
    if block.txdata.iter().skip(1).any(Transaction::is_coinbase) {
        return Err("more than one coinbase".to_owned());
    }
    let expected = Builder::new().push_int(i64::try_from(height).map_err(|_| "height overflows")?).into_script();
    let script_sig = coinbase.input.first().map(|i| i.script_sig.as_bytes()).unwrap_or_default();
    if !script_sig.starts_with(expected.as_bytes()) {
        return Err(format!("coinbase does not start with height {height} (BIP34)"));
    }
    if block.weight().to_wu() > BLOCK_WEIGHT_MAX {
        return Err("block is heavier than 4M weight units".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payout() -> ScriptBuf {
        ScriptBuf::new_p2wpkh(&bitcoin::WPubkeyHash::all_zeros())
    }

    #[test]
    fn genesis_is_the_real_regtest_genesis() {
        let chain = Chain::new();
        assert_eq!(chain.height(), 0);
        assert_eq!(chain.genesis_hash().to_string(), "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206");
        assert!(chain.utxos().next().is_none(), "the genesis output is not spendable");
    }

    #[test]
    fn mined_blocks_have_valid_pow_merkle_root_and_bip34_height() {
        let mut chain = Chain::new();
        for expected_height in 1..=20u64 {
            let block = chain.build_block(Vec::new(), Amount::ZERO, &payout(), 1_700_000_000).expect("block builds");
            assert!(block.check_merkle_root());
            assert!(block.check_witness_commitment());
            let hash = block.header.validate_pow(regtest_target()).expect("pow is valid");
            assert_eq!(block.header.bits.to_consensus(), REGTEST_BITS);
            if expected_height > 16 {
                // Heights 1 to 16 are pushed as OP_1..OP_16, which the crate's parser skips.
                assert_eq!(block.bip34_block_height().expect("bip34 height"), expected_height);
            }
            let coinbase_value: Amount = block.txdata[0].output.iter().map(|o| o.value).sum();
            assert_eq!(coinbase_value, subsidy(expected_height));
            assert_eq!(chain.connect(block).expect("connects"), hash);
            assert_eq!(chain.height(), expected_height);
        }
        assert_eq!(chain.utxos().count(), 20 * usize::try_from(COINBASE_OUTPUTS).expect("small"));
        let times: Vec<u32> = (0..=20).map(|h| chain.header(h).expect("header").time).collect();
        assert!(times.windows(2).skip(1).all(|w| w[0] < w[1]), "block times increase");
    }

    #[test]
    fn subsidy_halves_every_150_blocks() {
        assert_eq!(subsidy(1), Amount::from_sat(5_000_000_000));
        assert_eq!(subsidy(149), Amount::from_sat(5_000_000_000));
        assert_eq!(subsidy(150), Amount::from_sat(2_500_000_000));
        assert_eq!(subsidy(300), Amount::from_sat(1_250_000_000));
        assert_eq!(subsidy(150 * 64), Amount::ZERO);
    }

    #[test]
    fn a_block_with_a_bad_nonce_or_parent_is_refused() {
        let mut chain = Chain::new();
        let mut block = chain.build_block(Vec::new(), Amount::ZERO, &payout(), 1_700_000_000).expect("block builds");
        let target = regtest_target();
        while target.is_met_by(block.header.block_hash()) {
            block.header.nonce = block.header.nonce.wrapping_add(1);
        }
        assert!(matches!(chain.connect(block), Err(RegtestError::InvalidBlock { .. })));
        let good = chain.build_block(Vec::new(), Amount::ZERO, &payout(), 1_700_000_000).expect("block builds");
        chain.connect(good).expect("connects");
        let mut orphan = chain.build_block(Vec::new(), Amount::ZERO, &payout(), 1_700_000_000).expect("block builds");
        orphan.header.prev_blockhash = chain.genesis_hash();
        assert!(chain.connect(orphan).is_err());
        assert_eq!(chain.height(), 1);
    }

    #[test]
    fn disconnect_restores_the_previous_state() {
        let mut chain = Chain::new();
        let block = chain.build_block(Vec::new(), Amount::ZERO, &payout(), 1_700_000_000).expect("block builds");
        chain.connect(block).expect("connects");
        let sh = ScriptHash::from_script(&payout());
        assert_eq!(chain.history(&sh).len(), 1);
        let tip = chain.tip_hash();
        let block = chain.build_block(Vec::new(), Amount::ZERO, &payout(), 1_700_000_000).expect("block builds");
        chain.connect(block).expect("connects");
        assert_eq!(chain.history(&sh).len(), 2);
        let dropped = chain.disconnect_tip().expect("a block to drop");
        assert_eq!(dropped.header.prev_blockhash, tip);
        assert_eq!(chain.tip_hash(), tip);
        assert_eq!(chain.history(&sh).len(), 1);
        assert_eq!(chain.utxos().count(), usize::try_from(COINBASE_OUTPUTS).expect("small"));
        chain.disconnect_tip().expect("a block to drop");
        assert!(chain.disconnect_tip().is_none(), "genesis stays");
    }

    #[test]
    fn script_hash_is_reversed_sha256() {
        // The P2PKH example of the Electrum protocol documentation.
        let script = ScriptBuf::from_hex("76a91462e907b15cbf27d5425399ebf6f0fb50ebb88f1888ac").expect("hex");
        assert_eq!(ScriptHash::from_script(&script).to_hex(), "8b01df4e368ea28f8dc0423bcf7a4923e3a12d307c875e47a0cfbf90b5c39161");
    }
}
