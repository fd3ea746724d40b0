//! The Bitcoin chain source, one per configured Bitcoin chain, over Electrum servers, for the
//! [`crate::follower`].
//!
//! Blocks are headers only. Whenever the follower's view is at the server's tip (and when it
//! unwinds), the history of every watched script is read at that tip, the transactions fetched
//! and their outputs matched by script: mempool payments are seen with 0 confirmations, mined ones
//! with tip − height + 1. Credits are keyed by outpoint, `{caip2}:{txid}:{vout}`.
//!
//! Invariants:
//! - A payment is never accepted at 0 confirmations: the policy asks at least 1, and an unconfirmed
//!   transaction can be replaced (RBF) or double-spent. Every watched script is read in full, so a
//!   mempool payment that disappears from its script's history is orphaned by the follower.
//! - The server's view is checked to be stable across a scan: the tip must be the same after the
//!   histories were read, or the scan is dropped and the step retried.
//! - The header and script subscriptions only say when to look (a new block; a payment entering
//!   the mempool, seen at the next tip poll, within [`TIP_POLL_INTERVAL_MS`]); every scan re-reads
//!   every watched script (events are not enough), and the follower scans at least every
//!   [`crate::follower::RECHECK_INTERVAL_MS`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use bitcoin::{BlockHash, Network, OutPoint, ScriptBuf, Transaction, Txid};

use crate::follower::{FollowError, Follower, WATCHED_ADDRESSES_MAX};
use crate::health::TIP_STALL_BLOCK_TIMES_BITCOIN;
use crate::source::{Block, BlockHash as _, ChainSource, Fetched, Found, Head, Observed, RefundSeen, Scan, ScanKind, Watched};
use crate::config::{ChainKind, ChainSpec};
use crate::invoice::BlockRef;
use crate::metrics;
use crate::money::{Amount, AssetId};
use crate::watch::WatchList;

use super::descriptor::{network_of, parse_address};
use super::electrum::{Electrum, HEADERS_PER_CALL_MAX};

/// How often the tip is polled.
pub const TIP_POLL_INTERVAL_MS: u64 = 500;
/// Most scripts watched by one watcher; more is refused loudly rather than watched partly.
pub const WATCHED_SCRIPTS_MAX: usize = WATCHED_ADDRESSES_MAX;
/// Most transactions kept in memory between scans (they never change under a txid).
pub const TRANSACTION_CACHE_MAX: usize = 50_000;

/// The follower of a Bitcoin chain.
pub type BitcoinWatcher = Follower<BitcoinSource>;

#[derive(Debug)]
pub struct BitcoinSource {
    chain: ChainSpec,
    caip2: String,
    network: Network,
    asset: AssetId,
    electrum: Electrum,
    transactions: Mutex<HashMap<Txid, Arc<Transaction>>>,
}

impl ChainSource for BitcoinSource {
    type Hash = BlockHash;
    type Body = ();

    /// One headers call (at most [`HEADERS_PER_CALL_MAX`]) per step.
    const BLOCKS_PER_STEP_MAX: u64 = 2_000;
    const TIP_STALL_BLOCK_TIMES: u64 = TIP_STALL_BLOCK_TIMES_BITCOIN;

    fn connect(spec: &ChainSpec, _pool: &sqlx::PgPool) -> Result<Self, FollowError> {
        let network = network_of(&spec.caip2)
            .filter(|_| spec.kind == ChainKind::Bitcoin)
            .ok_or_else(|| FollowError::NotBitcoin { name: spec.name.clone(), caip2: spec.caip2.to_string() })?;
        Ok(Self {
            electrum: Electrum::new(spec.caip2.clone(), spec.rpc.clone())?,
            caip2: spec.caip2.to_string(),
            asset: spec.native_asset_id(),
            network,
            chain: spec.clone(),
            transactions: Mutex::new(HashMap::new()),
        })
    }

    fn poll_interval_ms(_spec: &ChainSpec) -> u64 {
        TIP_POLL_INTERVAL_MS
    }

    /// Connects and refuses a server of another chain (its block 0 must match the CAIP-2 id).
    async fn check_chain(&self) -> Result<(), FollowError> {
        Ok(self.electrum.check_chain().await?)
    }

    async fn head(&self) -> Result<Head<BlockHash>, FollowError> {
        let tip = self.electrum.tip().await?;
        Ok(Head { tip: tip.height, tip_hash: Some(tip.hash), notified: tip.notified, finalized: None })
    }

    async fn hashes(&self, heights: &[u64]) -> Result<Vec<Option<BlockHash>>, FollowError> {
        let headers = self.electrum.headers_at(heights.to_vec()).await?;
        Ok(headers.iter().map(|h| Some(h.block_hash())).chain(std::iter::repeat(None)).take(heights.len()).collect())
    }

    async fn blocks(&self, from: u64, to: u64) -> Result<Vec<Fetched<BlockHash, ()>>, FollowError> {
        let count = usize::try_from(to.saturating_sub(from).saturating_add(1)).unwrap_or(HEADERS_PER_CALL_MAX);
        let headers = self.electrum.headers(from, count).await?;
        Ok((from..)
            .zip(headers)
            .map(|(height, h)| Fetched { block: Block { height, hash: h.block_hash(), parent: h.prev_blockhash }, body: () })
            .collect())
    }

    async fn scan(&self, scan: Scan<'_, BlockHash, ()>) -> Result<Observed, FollowError> {
        // Far behind the tip: headers only; payments are read once the headers reach the tip.
        if scan.kind == (ScanKind::Advance { at_tip: false }) {
            return Ok(Observed::default());
        }
        let watched = self.watched(scan.watched);
        let chain = [("chain", self.caip2.as_str())];
        metrics::gauge("payrail_bitcoin_watched_scripts", "Scripts the Bitcoin watcher reads the history of.", &chain, i64::try_from(watched.len()).unwrap_or(i64::MAX));
        let observed = self.observe(&watched, &scan).await?;
        // The server's view must not have moved while the histories were read.
        let after = self.electrum.tip().await?;
        if Some(after.hash) != scan.head.tip_hash {
            return Err(FollowError::Inconsistent { height: after.height });
        }
        Ok(observed)
    }
}

impl BitcoinSource {
    /// The watched addresses by script.
    fn watched<'a>(&self, watched: &'a WatchList) -> HashMap<ScriptBuf, &'a Watched> {
        let mut scripts = HashMap::with_capacity(watched.len());
        for target in watched.deposits().iter().chain(watched.refunds()) {
            match parse_address(&target.address, self.network) {
                Some(parsed) => {
                    scripts.insert(parsed.script_pubkey(), target);
                }
                None => tracing::error!(target: "watcher::bitcoin", chain = %self.chain.name, address = %target.address, invoice = %target.invoice_id,
                    "stored deposit address is not an address of this network; not watched"),
            }
        }
        scripts
    }

    /// Reads every watched script's history and turns outputs paying them into observations; every
    /// watched address is then complete.
    async fn observe(&self, watched: &HashMap<ScriptBuf, &Watched>, scan: &Scan<'_, BlockHash, ()>) -> Result<Observed, FollowError> {
        let tip = scan.head.tip;
        let complete: HashSet<String> = watched.values().map(|w| w.address.clone()).collect();
        // In one order, so an unchanged set is recognised and not subscribed again.
        let mut scripts: Vec<ScriptBuf> = watched.keys().cloned().collect();
        scripts.sort_unstable();
        // From now on the server announces new payments to these scripts: the next tip poll sees
        // the notification and the follower scans at once. Subscribed before the histories are
        // read, so nothing falls between the two.
        self.electrum.subscribe(&scripts).await?;
        if scripts.is_empty() {
            return Ok(Observed { payments: Vec::new(), complete, refunds: Vec::new() });
        }
        let histories = self.electrum.histories(&scripts).await?;
        // Height of each transaction (0 in the mempool).
        let mut heights: HashMap<Txid, u64> = HashMap::new();
        for entry in histories.iter().flatten() {
            let height = u64::try_from(entry.height).unwrap_or(0);
            if height > tip {
                return Err(FollowError::Inconsistent { height });
            }
            heights.insert(entry.tx_hash, height);
        }
        let transactions = self.transactions(heights.keys().copied().collect()).await?;
        // Hashes of blocks the follower does not hold (below its window, or above its cursor).
        let mut hashes = scan.known.clone();
        let mut missing: Vec<u64> = heights.values().copied().filter(|h| *h > 0 && !hashes.contains_key(h)).collect();
        missing.sort_unstable();
        missing.dedup();
        if !missing.is_empty() {
            let headers = self.electrum.headers_at(missing.clone()).await?;
            hashes.extend(missing.into_iter().zip(headers.iter().map(|h| h.block_hash())));
        }
        // Outputs paying watched scripts; a transaction spending one of them (the merchant's
        // wallet moving funds) is not a payment, whatever its outputs.
        let mut credited_outpoints: HashSet<OutPoint> = HashSet::new();
        for (txid, transaction) in &transactions {
            for (vout, output) in transaction.output.iter().enumerate() {
                if watched.get(&output.script_pubkey).is_some_and(|w| w.refund.is_none()) {
                    credited_outpoints.insert(OutPoint { txid: *txid, vout: u32::try_from(vout).unwrap_or(u32::MAX) });
                }
            }
        }
        let mut payments = Vec::new();
        let mut refunds = Vec::new();
        let mut seen_refs: HashSet<String> = HashSet::new();
        for (txid, transaction) in &transactions {
            let height = heights.get(txid).copied().unwrap_or(0);
            // A refund the merchant pays: whatever it spends (the deposits, usually), an output of
            // at least the refund's amount to the payer's address pays it.
            for output in &transaction.output {
                let Some((refund_id, amount)) = watched.get(&output.script_pubkey).and_then(|w| w.refund.as_ref()) else { continue };
                if Amount::from_u64(output.value.to_sat()) >= *amount {
                    let confirmations = if height == 0 { 0 } else { tip.saturating_sub(height) + 1 };
                    refunds.push(RefundSeen { refund_id: refund_id.clone(), txid: txid.to_string(), confirmations });
                }
            }
            if transaction.input.iter().any(|input| credited_outpoints.contains(&input.previous_output)) {
                continue;
            }
            let block = if height > 0 {
                let hash = hashes.get(&height).ok_or(FollowError::Inconsistent { height })?;
                Some(BlockRef { height, hash: hash.to_stored() })
            } else {
                None
            };
            for (vout, output) in transaction.output.iter().enumerate() {
                let Some(target) = watched.get(&output.script_pubkey).filter(|w| w.refund.is_none()) else { continue };
                let sats = output.value.to_sat();
                let tx_ref = format!("{}:{txid}:{vout}", self.caip2);
                if sats == 0 || !seen_refs.insert(tx_ref.clone()) {
                    continue;
                }
                let found = Found {
                    invoice_id: target.invoice_id.clone(),
                    asset: self.asset.clone(),
                    tx_ref,
                    address: Some(target.address.clone()),
                    amount: Amount::from_u64(sats),
                    block: block.clone(),
                };
                payments.extend(scan.pricing.observe(found, &scan.head));
            }
        }
        Ok(Observed { payments, complete, refunds })
    }

    /// The transactions `txids`, from the cache or the server.
    async fn transactions(&self, txids: Vec<Txid>) -> Result<Vec<(Txid, Arc<Transaction>)>, FollowError> {
        let missing: Vec<Txid> = {
            let cache = self.transactions.lock().unwrap_or_else(PoisonError::into_inner);
            txids.iter().filter(|t| !cache.contains_key(*t)).copied().collect()
        };
        let fetched = self.electrum.transactions(&missing).await?;
        let mut cache = self.transactions.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() + fetched.len() > TRANSACTION_CACHE_MAX {
            cache.clear();
        }
        let mut fetched: HashMap<Txid, Arc<Transaction>> = missing.into_iter().zip(fetched.into_iter().map(Arc::new)).collect();
        let mut all = Vec::with_capacity(txids.len());
        for txid in txids {
            let transaction = match fetched.remove(&txid) {
                Some(transaction) => {
                    cache.insert(txid, transaction.clone());
                    transaction
                }
                None => match cache.get(&txid) {
                    Some(transaction) => transaction.clone(),
                    None => continue,
                },
            };
            all.push((txid, transaction));
        }
        Ok(all)
    }
}
