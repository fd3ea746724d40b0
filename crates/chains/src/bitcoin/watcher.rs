//! The Bitcoin chain source, one per configured Bitcoin chain, over Electrum servers, for the
//! [`crate::follower`].
//!
//! Blocks are headers only. Every watched script is subscribed ([`Subscriptions`]); whenever the
//! follower's view is at the server's tip, the history of each script whose status changed since
//! the last scan is read at that tip, the transactions fetched and their outputs matched by
//! script: mempool payments are seen with 0 confirmations, mined ones with tip − height + 1.
//! Payments already seen get their confirmations from the follower, which counts them at each
//! step; so a scan costs what changed, not what is watched. Every script with a history is read
//! again when the subscriptions start over (a new connection, the watch list reloaded) and when
//! the follower unwinds. Credits are keyed by outpoint, `{caip2}:{txid}:{vout}`.
//!
//! Invariants:
//! - A payment is never accepted at 0 confirmations: the policy asks at least 1, and an unconfirmed
//!   transaction can be replaced (RBF) or double-spent. A script whose status changed is read in
//!   full, so a mempool payment that disappears from its history is orphaned by the follower.
//! - The server's view is checked to be stable across a scan: the tip must be the same after the
//!   histories were read, or the scan is dropped and the step retried.
//! - A change is forgotten only once the step that read it committed ([`ChainSource::committed`]).
//! - Refunds the merchant pays are few: their payers' scripts are read at every scan, so their
//!   confirmations are counted.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bitcoin::{BlockHash, Network, OutPoint, Script, ScriptBuf, Transaction, Txid};

use crate::follower::{FollowError, Follower, WATCHED_ADDRESSES_MAX};
use crate::health::TIP_STALL_BLOCK_TIMES_BITCOIN;
use crate::source::{Block, BlockHash as _, ChainSource, Fetched, Found, Head, Observed, RefundSeen, Scan, ScanKind, Watched};
use crate::config::{ChainKind, ChainSpec};
use crate::invoice::BlockRef;
use crate::metrics;
use crate::money::{Amount, AssetId};
use crate::store;
use crate::watch::{Index, Update};

use super::descriptor::{network_of, parse_address};
use super::electrum::{Electrum, HEADERS_PER_CALL_MAX};
use super::subscriptions::{script_hash, ScriptHash, Subscriptions};

/// How often the tip is polled.
pub const TIP_POLL_INTERVAL_MS: u64 = 500;
/// Most scripts watched by one watcher; more is refused loudly rather than watched partly.
pub const WATCHED_SCRIPTS_MAX: usize = WATCHED_ADDRESSES_MAX;
/// Most transactions kept in memory between scans (they never change under a txid).
pub const TRANSACTION_CACHE_MAX: usize = 50_000;

/// A script a scan reads: a deposit's (its address) or a refund payer's.
#[derive(Debug, Clone)]
enum Read {
    Deposit(String),
    Refund(Watched),
}

impl Read {
    fn address(&self) -> &str {
        match self {
            Self::Deposit(address) => address,
            Self::Refund(watched) => &watched.address,
        }
    }
}

/// The follower of a Bitcoin chain.
pub type BitcoinWatcher = Follower<BitcoinSource>;

#[derive(Debug)]
pub struct BitcoinSource {
    chain: ChainSpec,
    caip2: String,
    network: Network,
    asset: AssetId,
    electrum: Electrum,
    /// For the invoices of paid deposit addresses (the watch list holds addresses only).
    pool: sqlx::PgPool,
    transactions: Mutex<HashMap<Txid, Arc<Transaction>>>,
    subscriptions: Subscriptions,
    /// Watched deposits by script hash.
    index: Mutex<Index<ScriptHash>>,
    /// Scripts a scan read whose step has not committed yet: read again until it has.
    reading: Mutex<HashSet<ScriptHash>>,
    /// Whether the last scan read scripts (a headers-only step's commit confirms no read).
    last_scan_read: AtomicBool,
    /// Script histories read so far.
    reads: AtomicU64,
}

impl ChainSource for BitcoinSource {
    type Hash = BlockHash;
    type Body = ();

    /// One headers call (at most [`HEADERS_PER_CALL_MAX`]) per step.
    const BLOCKS_PER_STEP_MAX: u64 = 2_000;
    const TIP_STALL_BLOCK_TIMES: u64 = TIP_STALL_BLOCK_TIMES_BITCOIN;

    fn connect(spec: &ChainSpec, pool: &sqlx::PgPool) -> Result<Self, FollowError> {
        let network = network_of(&spec.caip2)
            .filter(|_| spec.kind == ChainKind::Bitcoin)
            .ok_or_else(|| FollowError::NotBitcoin { name: spec.name.clone(), caip2: spec.caip2.to_string() })?;
        Ok(Self {
            electrum: Electrum::new(spec.caip2.clone(), spec.rpc.clone())?,
            caip2: spec.caip2.to_string(),
            asset: spec.native_asset_id(),
            network,
            subscriptions: Subscriptions::new(spec.name.clone()),
            pool: pool.clone(),
            chain: spec.clone(),
            transactions: Mutex::new(HashMap::new()),
            index: Mutex::new(Index::default()),
            reading: Mutex::new(HashSet::new()),
            last_scan_read: AtomicBool::new(false),
            reads: AtomicU64::new(0),
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
        let notified = tip.notified || self.subscriptions.has_changes();
        Ok(Head { tip: tip.height, tip_hash: Some(tip.hash), notified, finalized: None })
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
            self.last_scan_read.store(false, Ordering::SeqCst);
            return Ok(Observed::default());
        }
        self.last_scan_read.store(true, Ordering::SeqCst);
        let read = self.to_read(&scan).await?;
        let observed = self.observe(read, &scan).await?;
        // The server's view must not have moved while the histories were read.
        let after = self.electrum.tip().await?;
        if Some(after.hash) != scan.head.tip_hash {
            return Err(FollowError::Inconsistent { height: after.height });
        }
        Ok(observed)
    }

    fn committed(&self) {
        if self.last_scan_read.swap(false, Ordering::SeqCst) {
            self.reading.lock().unwrap_or_else(PoisonError::into_inner).clear();
        }
    }
}

impl BitcoinSource {
    /// How many script histories this source has read: what watching costs, which grows with
    /// what changes on chain, not with what is watched.
    pub fn scripts_read(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    fn script_of(&self, address: &str) -> Option<ScriptBuf> {
        parse_address(address, self.network).map(|a| a.script_pubkey())
    }

    /// Subscribes what is new and returns the scripts this scan reads: those whose status changed
    /// (and those read by a step that did not commit), every script with a history when the
    /// subscriptions started over or the follower unwinds, and the refunds' payers.
    async fn to_read(&self, scan: &Scan<'_, BlockHash, ()>) -> Result<Vec<(ScriptBuf, Read)>, FollowError> {
        let (update, all) = {
            let mut index = self.index.lock().unwrap_or_else(PoisonError::into_inner);
            let update = index.update(scan.watched, |address| self.script_of(address).map(|s| script_hash(&s)), |address| {
                tracing::error!(target: "watcher::bitcoin", chain = %self.chain.name, %address,
                    "stored deposit address is not an address of this network; not watched");
            });
            let all: Option<Vec<ScriptHash>> = matches!(update, Update::Rebuilt).then(|| index.keys().copied().collect());
            (update, all)
        };
        let endpoint = self.electrum.endpoint().clone();
        let restarted = match (update, all) {
            (_, Some(all)) => {
                self.subscriptions.retain(&all.iter().copied().collect());
                self.subscriptions.subscribe(&endpoint, &all, true).await?
            }
            (Update::Added(added), None) => {
                let reconnected = self.subscriptions.subscribe(&endpoint, &added, false).await?;
                if reconnected {
                    // A new connection holds no subscription yet: all of them, then.
                    let all: Vec<ScriptHash> = self.index.lock().unwrap_or_else(PoisonError::into_inner).keys().copied().collect();
                    self.subscriptions.subscribe(&endpoint, &all, false).await?;
                }
                reconnected
            }
            (Update::Rebuilt, None) => false,
        };
        // Every answer and change the server sent up to now, heard.
        self.subscriptions.sync().await?;
        let chain = [("chain", self.caip2.as_str())];
        let mut hashes = self.subscriptions.take_changed();
        if restarted || scan.kind == ScanKind::Unwind {
            hashes.extend(self.subscriptions.with_history());
        }
        {
            let mut reading = self.reading.lock().unwrap_or_else(PoisonError::into_inner);
            hashes.extend(reading.iter().copied());
            reading.clone_from(&hashes);
        }
        let mut read: Vec<(ScriptBuf, Read)> = {
            let index = self.index.lock().unwrap_or_else(PoisonError::into_inner);
            metrics::gauge("payrail_bitcoin_watched_scripts", "Scripts the Bitcoin watcher is subscribed to.", &chain, i64::try_from(index.len()).unwrap_or(i64::MAX));
            hashes
                .iter()
                .filter_map(|h| index.get(scan.watched, h))
                .filter_map(|address| Some((self.script_of(address)?, Read::Deposit(address.to_owned()))))
                .collect()
        };
        read.extend(scan.watched.refunds().iter().filter_map(|w| Some((self.script_of(&w.address)?, Read::Refund(w.clone())))));
        self.reads.fetch_add(u64::try_from(read.len()).unwrap_or(u64::MAX), Ordering::Relaxed);
        metrics::count("payrail_bitcoin_script_reads_total", "Script histories the Bitcoin watcher read.", &chain, i64::try_from(read.len()).unwrap_or(i64::MAX));
        Ok(read)
    }

    /// Reads the histories of `read` and turns outputs paying watched scripts into observations;
    /// the addresses read are complete.
    async fn observe(&self, read: Vec<(ScriptBuf, Read)>, scan: &Scan<'_, BlockHash, ()>) -> Result<Observed, FollowError> {
        let tip = scan.head.tip;
        let complete: HashSet<String> = read.iter().map(|(_, r)| r.address().to_owned()).collect();
        if read.is_empty() {
            return Ok(Observed { payments: Vec::new(), complete, refunds: Vec::new() });
        }
        let scripts: Vec<ScriptBuf> = read.iter().map(|(s, _)| s.clone()).collect();
        let refunds_by_script: HashMap<ScriptBuf, Watched> = read
            .into_iter()
            .filter_map(|(script, r)| match r {
                Read::Refund(watched) => Some((script, watched)),
                Read::Deposit(_) => None,
            })
            .collect();
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
        let mut refunds = Vec::new();
        // Outputs paying watched deposits: (outpoint, address, sats, block), found under the index.
        let mut paying: Vec<(String, String, u64, Option<BlockRef>)> = Vec::new();
        {
            let index = self.index.lock().unwrap_or_else(PoisonError::into_inner);
            // The deposit address a script pays, if watched.
            let deposit = |script: &Script| index.get(scan.watched, &script_hash(script));
            // A transaction spending a watched output (the merchant's wallet moving funds) is not a
            // payment, whatever its outputs.
            let mut credited_outpoints: HashSet<OutPoint> = HashSet::new();
            for (txid, transaction) in &transactions {
                for (vout, output) in transaction.output.iter().enumerate() {
                    if deposit(&output.script_pubkey).is_some() {
                        credited_outpoints.insert(OutPoint { txid: *txid, vout: u32::try_from(vout).unwrap_or(u32::MAX) });
                    }
                }
            }
            let mut seen_refs: HashSet<String> = HashSet::new();
            for (txid, transaction) in &transactions {
                let height = heights.get(txid).copied().unwrap_or(0);
                // A refund the merchant pays: whatever it spends (the deposits, usually), an output of
                // at least the refund's amount to the payer's address pays it.
                for output in &transaction.output {
                    let Some((refund_id, amount)) = refunds_by_script.get(&output.script_pubkey).and_then(|w| w.refund.as_ref()) else { continue };
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
                    let Some(address) = deposit(&output.script_pubkey) else { continue };
                    let sats = output.value.to_sat();
                    let tx_ref = format!("{}:{txid}:{vout}", self.caip2);
                    if sats == 0 || !seen_refs.insert(tx_ref.clone()) {
                        continue;
                    }
                    paying.push((tx_ref, address.to_owned(), sats, block.clone()));
                }
            }
        }
        let addresses: Vec<String> = paying.iter().map(|(_, address, _, _)| address.clone()).collect();
        let invoices = if addresses.is_empty() { HashMap::new() } else { store::invoices_of(&self.pool, &self.caip2, &addresses).await? };
        let mut payments = Vec::new();
        for (tx_ref, address, sats, block) in paying {
            let Some((invoice_id, speed)) = invoices.get(&address) else { continue };
            let found = Found {
                invoice_id: invoice_id.clone(),
                asset: self.asset.clone(),
                tx_ref,
                address: Some(address),
                amount: Amount::from_u64(sats),
                block,
                speed: *speed,
            };
            payments.extend(scan.pricing.observe(found, &scan.head));
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
