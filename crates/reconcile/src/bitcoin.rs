//! Reading a Bitcoin chain for reconciliation, over the same Electrum adapter the watcher uses
//! ([`crate::chain::bitcoin::electrum`], the one file that talks to Electrum servers).
//!
//! A deposit is an output paying one of payrail's deposit addresses, keyed like the watcher keys
//! its credits: `{caip2}:{txid}:{vout}` (the ledger entry is `payment:{caip2}:{txid}:{vout}`).
//! Outputs are found from the script history of every deposit address: the histories are read once
//! per reader (in batches) and the transactions mined in the scanned range are fetched in bounded
//! steps, so a run's chunks do not re-read the histories.
//!
//! Invariants:
//! - Only confirmed outputs with a height in the range count; mempool transactions are not on the
//!   chain yet.
//! - As in the watcher, a transaction that spends an output paying a deposit address (the
//!   merchant's wallet moving its funds) is not a payment, whatever its outputs; zero-value outputs
//!   are not payments either.
//! - Amounts are whole sats from the transactions themselves, never the server's BTC floats.
//! - A server whose block 0 is not the configured chain's is refused before any answer is used.
//!
//! Where a transaction was mined ([`BitcoinReader::locate`]): the Electrum protocol has no "height
//! of txid" call and payrail's regtest node serves no verbose transactions. The raw transaction is
//! fetched (`blockchain.transaction.get`; an error answer means the server does not know it), and
//! the history of its output scripts names its height, as every Electrum server indexes outputs by
//! script. Works with electrs, Fulcrum, ElectrumX and the regtest node alike.
//!
//! Sweeps and holdings: payrail never moves Bitcoin deposits. The merchant's own wallet holds the
//! keys of its watch-only descriptor and spends deposit outputs whenever it likes, so "unswept" (a
//! deposit payrail still owes a move of) never applies: [`BitcoinReader::holding`] is zero, and
//! [`BitcoinReader::balance`] is the raw balance for whoever wants to look. Payouts are not paid in
//! Bitcoin, so there are no payout events to read either.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use bitcoin::{Network, OutPoint, ScriptBuf, Transaction, Txid};
use chrono::{DateTime, TimeZone, Utc};

use crate::chain::bitcoin::descriptor::parse_address;
use crate::chain::bitcoin::electrum::Electrum;
use crate::chain::bitcoin::network_of;
use crate::chain::bitcoin::watcher::WATCHED_SCRIPTS_MAX;
use crate::config::{ChainKind, ChainSpec};
use crate::money::Amount;

use super::error::{ReconcileError, Result};
use super::model::{ChainObservation, ItemKind};

/// Most deposit addresses one reader reads the history of (the watcher's own limit); more is
/// refused loudly rather than read partly.
pub const ADDRESSES_MAX: usize = WATCHED_SCRIPTS_MAX;
/// Most history entries (over all deposit addresses) one reader keeps.
pub const HISTORY_ENTRIES_MAX: usize = 2_000_000;
/// Transactions fetched and examined per step of a read.
pub const TRANSACTIONS_PER_STEP_MAX: usize = 1_000;
/// Output scripts of one transaction whose history [`BitcoinReader::locate`] reads.
pub const LOCATE_SCRIPTS_MAX: usize = 4;

/// The deposit addresses' histories, read once per reader.
struct Histories {
    /// The address list they were read for.
    addresses: Vec<String>,
    /// Deposit address of each script.
    scripts: HashMap<ScriptBuf, String>,
    /// Confirmed transactions by height.
    mined: BTreeMap<u64, BTreeSet<Txid>>,
    /// Every transaction in any history, mempool included: the only ones that can spend a
    /// deposit output or have one.
    known: HashSet<Txid>,
}

/// The chain's answers the comparison needs.
pub struct BitcoinReader {
    spec: ChainSpec,
    caip2: String,
    asset: String,
    network: Network,
    electrum: Electrum,
    histories: tokio::sync::Mutex<Option<Arc<Histories>>>,
}

impl std::fmt::Debug for BitcoinReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BitcoinReader").field("chain", &self.spec.name).field("caip2", &self.caip2).finish()
    }
}

impl BitcoinReader {
    /// Connects to the chain's Electrum endpoints (failover in the configured order) and checks
    /// that the server follows the configured chain.
    pub async fn connect(spec: &ChainSpec) -> Result<Self> {
        let network = network_of(&spec.caip2)
            .filter(|_| spec.kind == ChainKind::Bitcoin)
            .ok_or_else(|| ReconcileError::Unsupported { chain: spec.name.clone(), what: "a Bitcoin network payrail does not know" })?;
        let electrum = Electrum::new(spec.caip2.clone(), spec.rpc.clone()).map_err(|e| chain_error(spec, e))?;
        electrum.check_chain().await.map_err(|e| chain_error(spec, e))?;
        Ok(Self {
            spec: spec.clone(),
            caip2: spec.caip2.to_string(),
            asset: spec.native_asset_id().to_string(),
            network,
            electrum,
            histories: tokio::sync::Mutex::new(None),
        })
    }

    fn error(&self, e: impl std::fmt::Display) -> ReconcileError {
        chain_error(&self.spec, e)
    }

    pub async fn tip(&self) -> Result<u64> {
        Ok(self.electrum.tip().await.map_err(|e| self.error(e))?.height)
    }

    /// The header at `height`; `None` past the tip.
    async fn header(&self, height: u64) -> Result<Option<bitcoin::block::Header>> {
        if height > self.tip().await? {
            return Ok(None);
        }
        Ok(self.electrum.headers_at(vec![height]).await.map_err(|e| self.error(e))?.into_iter().next())
    }

    /// The block's header time; `None` past the tip.
    pub async fn block_time(&self, height: u64) -> Result<Option<DateTime<Utc>>> {
        Ok(self.header(height).await?.and_then(|h| Utc.timestamp_opt(i64::from(h.time), 0).single()))
    }

    /// The hash of the chain's block at `height`, as the watcher records it in `payments.block_hash`.
    pub async fn canonical_hash(&self, height: u64) -> Result<Option<String>> {
        Ok(self.header(height).await?.map(|h| h.block_hash().to_string()))
    }

    /// Where transaction `txid` was mined, if it was (see the module docs for how).
    pub async fn locate(&self, txid: &str) -> Result<Option<u64>> {
        let Ok(txid) = txid.parse::<Txid>() else {
            return Ok(None);
        };
        let Some(transaction) = self.electrum.transaction_if_known(txid).await.map_err(|e| self.error(e))? else {
            return Ok(None);
        };
        let mut scripts: Vec<ScriptBuf> = Vec::new();
        for output in transaction.output.iter().filter(|o| !o.script_pubkey.is_op_return()) {
            if !scripts.contains(&output.script_pubkey) {
                scripts.push(output.script_pubkey.clone());
            }
            if scripts.len() >= LOCATE_SCRIPTS_MAX {
                break;
            }
        }
        let histories = self.electrum.histories(&scripts).await.map_err(|e| self.error(e))?;
        Ok(histories
            .iter()
            .flatten()
            .find(|entry| entry.tx_hash == txid)
            .and_then(|entry| u64::try_from(entry.height).ok())
            .filter(|height| *height > 0))
    }

    /// Reads (once per reader, for one address list) the history of every deposit address.
    async fn histories(&self, addresses: &[String]) -> Result<Arc<Histories>> {
        let mut cached = self.histories.lock().await;
        if let Some(histories) = cached.as_ref().filter(|h| h.addresses == addresses) {
            return Ok(histories.clone());
        }
        if addresses.len() > ADDRESSES_MAX {
            return Err(self.error(format!("{} deposit addresses, more than {ADDRESSES_MAX}", addresses.len())));
        }
        let mut scripts: HashMap<ScriptBuf, String> = HashMap::with_capacity(addresses.len());
        for address in addresses {
            match parse_address(address, self.network) {
                Some(parsed) => {
                    scripts.insert(parsed.script_pubkey(), address.clone());
                }
                None => tracing::error!(target: "reconcile::bitcoin", chain = %self.spec.name, %address,
                    "stored deposit address is not an address of this network; not read"),
            }
        }
        let ordered: Vec<ScriptBuf> = scripts.keys().cloned().collect();
        let answers = self.electrum.histories(&ordered).await.map_err(|e| self.error(e))?;
        let mut mined: BTreeMap<u64, BTreeSet<Txid>> = BTreeMap::new();
        let mut known = HashSet::new();
        let mut entries = 0usize;
        for entry in answers.iter().flatten() {
            entries += 1;
            if entries > HISTORY_ENTRIES_MAX {
                return Err(self.error(format!("the deposit addresses' histories hold more than {HISTORY_ENTRIES_MAX} entries")));
            }
            known.insert(entry.tx_hash);
            // 0 and -1 are the mempool.
            if let Ok(height) = u64::try_from(entry.height) {
                if height > 0 {
                    mined.entry(height).or_default().insert(entry.tx_hash);
                }
            }
        }
        let histories = Arc::new(Histories { addresses: addresses.to_vec(), scripts, mined, known });
        *cached = Some(histories.clone());
        Ok(histories)
    }

    /// Every output mined in `[from, to]` that pays one of `addresses` (payrail's deposit
    /// addresses on this chain).
    pub async fn read(&self, from: u64, to: u64, addresses: &[String]) -> Result<Vec<ChainObservation>> {
        if from > to {
            return Err(ReconcileError::Range { message: format!("from_block {from} is after to_block {to}") });
        }
        let histories = self.histories(addresses).await?;
        let candidates: Vec<(u64, Txid)> =
            histories.mined.range(from..=to).flat_map(|(height, txids)| txids.iter().map(move |txid| (*height, *txid))).collect();
        let mut found = Vec::new();
        for step in candidates.chunks(TRANSACTIONS_PER_STEP_MAX) {
            let txids: Vec<Txid> = step.iter().map(|(_, txid)| *txid).collect();
            let transactions = self.electrum.transactions(&txids).await.map_err(|e| self.error(e))?;
            let spends_deposit = self.deposit_spenders(&histories, &transactions).await?;
            for ((height, txid), transaction) in step.iter().zip(&transactions) {
                if spends_deposit.contains(txid) {
                    continue;
                }
                for (vout, output) in transaction.output.iter().enumerate() {
                    let Some(address) = histories.scripts.get(&output.script_pubkey) else { continue };
                    let sats = output.value.to_sat();
                    if sats == 0 {
                        continue;
                    }
                    found.push(ChainObservation {
                        kind: ItemKind::Deposit,
                        reference: format!("{}:{txid}:{vout}", self.caip2),
                        tx_hash: txid.to_string(),
                        block_number: *height,
                        asset: self.asset.clone(),
                        address: address.clone(),
                        amount: Amount::from_u64(sats),
                    });
                }
            }
        }
        Ok(found)
    }

    /// The refunds of `refunds` whose paying transaction was mined in `[from, to]`: what it paid the
    /// payer's address, keyed by the refund's id (as the ledger's `refund-paid:{id}` is).
    pub async fn read_refunds(&self, from: u64, to: u64, refunds: &[crate::ledger_side::PaidRefund]) -> Result<Vec<ChainObservation>> {
        let mut found = Vec::new();
        for refund in refunds {
            let (Some(address), Ok(txid)) = (parse_address(&refund.address, self.network), refund.tx_hash.parse::<Txid>()) else { continue };
            let script = address.script_pubkey();
            let history = self.electrum.histories(std::slice::from_ref(&script)).await.map_err(|e| self.error(e))?;
            let Some(height) = history.iter().flatten().find(|e| e.tx_hash == txid).and_then(|e| u64::try_from(e.height).ok()) else { continue };
            if !(from..=to).contains(&height) {
                continue;
            }
            let transactions = self.electrum.transactions(&[txid]).await.map_err(|e| self.error(e))?;
            let paid = transactions
                .iter()
                .flat_map(|t| t.output.iter())
                .filter(|o| o.script_pubkey == script)
                .fold(0u64, |sum, o| sum.saturating_add(o.value.to_sat()));
            found.push(ChainObservation {
                kind: ItemKind::Refund,
                reference: refund.id.clone(),
                tx_hash: refund.tx_hash.clone(),
                block_number: height,
                asset: self.asset.clone(),
                address: refund.address.clone(),
                amount: Amount::from_u64(paid),
            });
        }
        Ok(found)
    }

    /// Which of `transactions` spend an output paying a deposit address. Only transactions in the
    /// deposit histories can have such an output, so only those parents are fetched.
    async fn deposit_spenders(&self, histories: &Histories, transactions: &[Transaction]) -> Result<HashSet<Txid>> {
        let parents: Vec<Txid> = transactions
            .iter()
            .flat_map(|t| t.input.iter().map(|i| i.previous_output.txid))
            .filter(|txid| histories.known.contains(txid))
            .collect::<BTreeSet<Txid>>()
            .into_iter()
            .collect();
        let mut deposit_outputs: HashSet<OutPoint> = HashSet::new();
        for step in parents.chunks(TRANSACTIONS_PER_STEP_MAX) {
            let fetched = self.electrum.transactions(step).await.map_err(|e| self.error(e))?;
            for (txid, parent) in step.iter().zip(&fetched) {
                for (vout, output) in parent.output.iter().enumerate() {
                    if histories.scripts.contains_key(&output.script_pubkey) {
                        deposit_outputs.insert(OutPoint { txid: *txid, vout: u32::try_from(vout).unwrap_or(u32::MAX) });
                    }
                }
            }
        }
        Ok(transactions
            .iter()
            .filter(|t| t.input.iter().any(|i| deposit_outputs.contains(&i.previous_output)))
            .map(Transaction::compute_txid)
            .collect())
    }

    /// What payrail still has to move from `address`: always zero on Bitcoin, where the merchant's
    /// own wallet holds the keys and payrail never sweeps (see the module docs).
    pub async fn holding(&self, _address: &str, _asset: &str) -> Result<Amount> {
        Ok(Amount::ZERO)
    }

    /// What `address` holds now: its confirmed balance plus the mempool's effect (never below
    /// zero), in sats.
    pub async fn balance(&self, address: &str) -> Result<Amount> {
        let Some(parsed) = parse_address(address, self.network) else {
            return Err(self.error(format!("{address} is not an address of this network")));
        };
        let balances = self.electrum.balances(&[parsed.script_pubkey()]).await.map_err(|e| self.error(e))?;
        let Some(balance) = balances.first() else {
            return Ok(Amount::ZERO);
        };
        let total = i128::from(balance.confirmed).saturating_add(i128::from(balance.unconfirmed)).max(0);
        Ok(Amount::from_u64(u64::try_from(total).unwrap_or(u64::MAX)))
    }

    /// Not applicable: every Bitcoin credit names its outpoint; none is found by a balance change.
    pub async fn balance_grew(&self, _address: &str, _height: u64, _amount: Amount) -> Result<bool> {
        Ok(false)
    }
}

fn chain_error(spec: &ChainSpec, e: impl std::fmt::Display) -> ReconcileError {
    ReconcileError::Chain { chain: spec.name.clone(), message: e.to_string() }
}
