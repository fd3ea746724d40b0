//! The Bitcoin watcher, one per configured Bitcoin chain, over Electrum servers.
//!
//! A pass: read the tip; extend the stored header chain from the cursor (checking parent hashes;
//! a mismatch, or a tip below the cursor, walks the stored window back to the fork point); once
//! the headers reach the tip, read the history of every watched script, fetch the transactions
//! and match their outputs by script. Then, in one database transaction: payments in orphaned
//! blocks and mempool payments that vanished are orphaned (credited ones are reversed and
//! alerted), every observation is applied (mempool: seen with 0 confirmations; mined: tip −
//! height + 1), and the new blocks and the cursor are stored. A crash anywhere replays the pass;
//! credits are keyed by outpoint, `{caip2}:{txid}:{vout}`, so nothing is credited twice.
//!
//! Invariants:
//! - A payment is never accepted at 0 confirmations: the chain's policy asks at least 1, and an
//!   unconfirmed transaction can be replaced (RBF) or double-spent. A mempool payment that
//!   disappears from its script's history is orphaned: it stops counting and is never credited.
//! - The server's view is checked to be stable across a pass: the tip must be the same after the
//!   histories were read, or the pass is dropped and retried.
//! - The header subscription only says when to look; every pass re-reads every watched script
//!   (events are not enough), and a pass runs at least every [`RECHECK_INTERVAL_MS`].
//! - A reorg deeper than the stored window (`reorg_depth_max`) stops the watcher: never guessed at.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bitcoin::block::Header;
use bitcoin::{Network, OutPoint, ScriptBuf, Transaction, Txid};
use sqlx::{PgPool, Row};
use thiserror::Error;

use crate::chain::cursor::{self, ChainBlock, Cursor};
use crate::chain::health::TickReport;
use crate::chain::pricing::confirmations_required;
use crate::clock::Clock;
use crate::config::{ChainKind, ChainSpec};
use crate::db::leader::{Fence, JobLock, LeaderError, Leadership};
use crate::db::replicas::Share;
use crate::invoice::{apply_payment, orphan_payment, BlockRef, InvoiceError, ObservedPayment};
use crate::ledger::Ledger;
use crate::metrics;
use crate::money::{Amount, AssetId};
use crate::rates::RateSource;

use super::descriptor::{network_of, parse_address};
use super::electrum::{Electrum, ElectrumError, HEADERS_PER_CALL_MAX};

/// How often every watched script is re-read even when no block came.
pub const RECHECK_INTERVAL_MS: u64 = 5_000;
/// How often the tip is polled.
pub const TIP_POLL_INTERVAL_MS: u64 = 500;
/// Longest pause between failed passes.
pub const BACKOFF_MS_MAX: u64 = 30_000;
/// How long after expiry an invoice's address is still watched, for late payments.
pub const WATCH_AFTER_EXPIRY_S: i64 = 7 * 24 * 3600;
/// Most scripts watched by one watcher; more is refused loudly rather than watched partly.
pub const WATCHED_SCRIPTS_MAX: usize = 200_000;
/// Most transactions kept in memory between passes (they never change under a txid).
pub const TRANSACTION_CACHE_MAX: usize = 50_000;

#[derive(Debug, Error)]
pub enum WatchError {
    #[error(transparent)]
    Electrum(#[from] ElectrumError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The chain's lock was lost before this write: another replica may follow the chain now.
    #[error(transparent)]
    LockLost(#[from] LeaderError),
    #[error(transparent)]
    Invoice(#[from] InvoiceError),
    #[error("chain {name} ({caip2}) is not a Bitcoin network payrail knows")]
    NotBitcoin { name: String, caip2: String },
    /// The server's view moved during the pass; the next pass starts over.
    #[error("chain moved during the pass at height {height}")]
    Inconsistent { height: u64 },
    #[error("{count} watched scripts on {chain}, more than {WATCHED_SCRIPTS_MAX}")]
    TooManyScripts { chain: String, count: usize },
    /// No stored block is on the server's chain any more: stop and alert, never guess.
    #[error("reorg deeper than the {window}-block window below height {height} on {chain}: watcher stopped")]
    ReorgTooDeep { chain: String, height: u64, window: u64 },
}

impl WatchError {
    /// Whether the next pass may succeed by itself.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Electrum(e) => e.is_retryable(),
            Self::Inconsistent { .. } => true,
            Self::Database(e) => crate::db::is_transient(e) || !matches!(e, sqlx::Error::Database(_)),
            Self::Invoice(InvoiceError::Database(_)) => true,
            Self::Invoice(InvoiceError::Ledger(e)) => e.is_retryable(),
            _ => false,
        }
    }
}

/// Why following the chain ended without an error.
#[derive(Debug)]
enum Followed {
    Shutdown,
    /// The lock's session ended: another replica may follow the chain now.
    LockLost(LeaderError),
}

/// What a pass did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pass {
    /// A new watcher stored its first block.
    Started { height: u64 },
    /// Headers `from..=to` were stored; the tip is further: the next pass goes on at once.
    CatchingUp { from: u64, to: u64, tip: u64 },
    /// Headers are at the tip; every watched script was read.
    Synced { tip: u64, scripts: usize, payments: usize, orphaned: usize },
    /// The stored chain forked; the cursor went back to `fork_height`, then on to the tip.
    Reorged { fork_height: u64, tip: u64, orphaned: usize },
}

/// A payment output to a watched script.
#[derive(Debug, Clone)]
struct Watched {
    invoice_id: String,
    address: String,
}

/// Blocks of the pass's chain by height: the stored window and the new headers.
type HashesByHeight = HashMap<u64, String>;

pub struct BitcoinWatcher {
    chain: ChainSpec,
    caip2: String,
    network: Network,
    asset: AssetId,
    electrum: Electrum,
    pool: PgPool,
    ledger: Arc<Ledger>,
    rates: Arc<dyn RateSource>,
    clock: Arc<dyn Clock>,
    /// The chain lock that writes must still be held under (`None`: not run under a lock, in tests).
    fence: Mutex<Option<Fence>>,
    transactions: Mutex<HashMap<Txid, Arc<Transaction>>>,
    /// The replica's share of the job locks (`None`: the chain's lock is taken whenever free).
    share: Option<Share>,
}

impl std::fmt::Debug for BitcoinWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BitcoinWatcher").field("chain", &self.chain.name).field("caip2", &self.caip2).finish()
    }
}

fn height_i64(height: u64) -> i64 {
    i64::try_from(height).unwrap_or(i64::MAX)
}

impl BitcoinWatcher {
    pub fn new(
        chain: ChainSpec,
        pool: PgPool,
        ledger: Arc<Ledger>,
        rates: Arc<dyn RateSource>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, WatchError> {
        let network = network_of(&chain.caip2)
            .filter(|_| chain.kind == ChainKind::Bitcoin)
            .ok_or_else(|| WatchError::NotBitcoin { name: chain.name.clone(), caip2: chain.caip2.to_string() })?;
        let electrum = Electrum::new(chain.caip2.clone(), chain.rpc.clone())?;
        Ok(Self {
            caip2: chain.caip2.to_string(),
            asset: chain.native_asset_id(),
            network,
            electrum,
            chain,
            pool,
            ledger,
            rates,
            clock,
            fence: Mutex::new(None),
            transactions: Mutex::new(HashMap::new()),
            share: None,
        })
    }

    /// Counts the job's lock in the replica's `share` (see [`crate::db::replicas`]).
    #[must_use]
    pub fn spread(mut self, share: Option<Share>) -> Self {
        self.share = share;
        self
    }

    pub fn chain(&self) -> &ChainSpec {
        &self.chain
    }

    /// Connects and refuses a server of another chain (its block 0 must match the CAIP-2 id).
    pub async fn check_chain(&self) -> Result<(), WatchError> {
        Ok(self.electrum.check_chain().await?)
    }

    /// Runs until `shutdown` fires or the chain cannot be followed safely. Only one replica
    /// watches a chain: the others wait on the chain's advisory lock. A watcher whose lock's session
    /// ends (a database restart) stops writing at once and waits for the lock again.
    pub async fn run(self, mut shutdown: tokio::sync::watch::Receiver<bool>) -> Result<(), WatchError> {
        let lock = JobLock::new(self.pool.clone(), format!("payrail.watch.{}", self.caip2)).spread(self.share.clone());
        loop {
            let Some(mut leadership) = lock.acquire(&mut shutdown).await else { return Ok(()) };
            match self.follow(&mut leadership, &mut shutdown).await {
                Ok(Followed::Shutdown) => {
                    leadership.release().await;
                    return Ok(());
                }
                Ok(Followed::LockLost(error)) => {
                    crate::chain::health::shared().forget(&self.caip2);
                    if error.is_surplus() {
                        tracing::info!(target: "watcher::bitcoin", chain = %self.chain.name, %error, "handing the chain to a replica with fewer jobs");
                        leadership.release().await;
                    } else {
                        tracing::warn!(target: "watcher::bitcoin", chain = %self.chain.name, %error, "lost the chain's lock; waiting for it again");
                    }
                }
                Err(error) => {
                    crate::chain::health::shared().halt(&self.caip2, self.clock.now());
                    if matches!(error, WatchError::ReorgTooDeep { .. }) {
                        // The chain, not this replica, is the trouble: another replica taking the
                        // lock would meet the same fork and halt too (taking its replica out of
                        // rotation as well). Hold the lock until shutdown; an operator decides.
                        tracing::error!(target: "watcher::bitcoin", chain = %self.chain.name, "watcher halted; holding the chain's lock until shutdown");
                        let _ = shutdown.wait_for(|stop| *stop).await;
                    }
                    leadership.release().await;
                    return Err(error);
                }
            }
        }
    }

    /// Follows the chain while `leadership` holds: checked before every pass.
    async fn follow(
        &self,
        leadership: &mut Leadership,
        shutdown: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Result<Followed, WatchError> {
        *self.fence.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(leadership.fence());
        // A server that is down at start is waited for; one of another chain is refused.
        let mut backoff_ms = 0u64;
        loop {
            match self.check_chain().await {
                Ok(()) => break,
                Err(error) if error.is_retryable() => {
                    self.report(TickReport::Failed);
                    backoff_ms = (backoff_ms * 2).clamp(1_000, BACKOFF_MS_MAX);
                    tracing::warn!(target: "watcher::bitcoin", chain = %self.chain.name, %error, backoff_ms, "electrum not reachable; waiting");
                    // Waiting holds the lock too: it is checked (a lost one, or one to hand over) while waiting.
                    match leadership.wait_holding(Duration::from_millis(backoff_ms), shutdown).await {
                        Ok(false) => {}
                        Ok(true) => return Ok(Followed::Shutdown),
                        Err(error) => return Ok(Followed::LockLost(error)),
                    }
                }
                Err(error) => {
                    tracing::error!(target: "watcher::bitcoin", chain = %self.chain.name, %error, "watcher stopped");
                    return Err(error);
                }
            }
        }
        tracing::info!(target: "watcher::bitcoin", chain = %self.chain.name, "watching");
        let stall_ms = crate::chain::health::stall_after_ms(
            self.chain.block_time_ms,
            crate::chain::health::TIP_STALL_BLOCK_TIMES_BITCOIN,
            TIP_POLL_INTERVAL_MS,
        );
        crate::chain::health::shared().follow(&self.caip2, stall_ms, self.clock.now());
        let mut backoff_ms = 0u64;
        let mut last_tip: Option<bitcoin::BlockHash> = None;
        let mut last_pass: Option<Instant> = None;
        loop {
            if *shutdown.borrow() {
                return Ok(Followed::Shutdown);
            }
            // The cheap poll decides whether a pass is due: a new tip, a notification, or the
            // periodic re-check.
            let due = match self.electrum.tip().await {
                Ok(tip) => {
                    tip.notified
                        || last_tip != Some(tip.hash)
                        || last_pass.is_none_or(|at| at.elapsed() >= Duration::from_millis(RECHECK_INTERVAL_MS))
                }
                Err(_) => true,
            };
            if due {
                // Before writing: a lock whose session ended may be another replica's by now.
                if let Err(error) = leadership.ensure_held().await {
                    return Ok(Followed::LockLost(error));
                }
                match self.pass().await {
                    Ok(pass) => {
                        backoff_ms = 0;
                        last_pass = Some(Instant::now());
                        match pass {
                            Pass::CatchingUp { from, to, tip } => {
                                tracing::info!(target: "watcher::bitcoin", chain = %self.chain.name, from, to, tip, "headers stored");
                                continue;
                            }
                            Pass::Reorged { fork_height, tip, orphaned } => {
                                tracing::warn!(target: "watcher::bitcoin", chain = %self.chain.name, fork_height, tip, orphaned, "reorg: rolled back to the fork point");
                            }
                            Pass::Synced { tip, payments, orphaned, .. } if payments > 0 || orphaned > 0 => {
                                tracing::debug!(target: "watcher::bitcoin", chain = %self.chain.name, tip, payments, orphaned, "pass");
                            }
                            _ => {}
                        }
                        last_tip = self.electrum.tip().await.ok().map(|t| t.hash);
                    }
                    Err(WatchError::LockLost(error)) => return Ok(Followed::LockLost(error)),
                    Err(error) if error.is_retryable() => {
                        backoff_ms = (backoff_ms * 2).clamp(500, BACKOFF_MS_MAX);
                        tracing::warn!(target: "watcher::bitcoin", chain = %self.chain.name, %error, backoff_ms, "pass failed; retrying");
                    }
                    Err(error) => {
                        tracing::error!(target: "watcher::bitcoin", chain = %self.chain.name, %error, "watcher stopped");
                        return Err(error);
                    }
                }
            }
            let pause = Duration::from_millis(if backoff_ms > 0 { backoff_ms } else { TIP_POLL_INTERVAL_MS });
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.changed() => return Ok(Followed::Shutdown),
            }
        }
    }

    /// A transaction for a write of this watcher: when it runs under the chain's lock, the lock's
    /// session must still hold it (checked inside the transaction, before anything is written).
    async fn begin_fenced(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, WatchError> {
        let fence = self.fence.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let mut tx = self.pool.begin().await?;
        if let Some(fence) = fence {
            fence.check(&mut tx).await?;
        }
        Ok(tx)
    }

    fn report(&self, report: TickReport) {
        crate::chain::health::shared().report(&self.caip2, report, self.clock.now());
    }

    /// One pass; see the module docs. Reports health and metrics like every watcher.
    pub async fn pass(&self) -> Result<Pass, WatchError> {
        let result = self.step().await;
        let chain = [("chain", self.caip2.as_str())];
        match &result {
            Ok(Pass::Synced { payments, .. }) => {
                metrics::count("payrail_observed_payments_total", "Payments observed by the chain watchers.", &chain, i64::try_from(*payments).unwrap_or(i64::MAX));
            }
            Ok(Pass::Reorged { .. }) => metrics::count("payrail_chain_reorgs_total", "Reorgs the chain watchers unwound.", &chain, 1),
            Ok(_) => {}
            Err(WatchError::Electrum(_)) => metrics::count("payrail_rpc_errors_total", "Failed RPC rounds (every endpoint failed).", &chain, 1),
            Err(_) => metrics::count("payrail_watcher_errors_total", "Failed watcher ticks.", &chain, 1),
        }
        let report = match &result {
            Ok(Pass::CatchingUp { to, tip, .. }) => TickReport::Followed { head_lag_blocks: tip.saturating_sub(*to) },
            Ok(_) => TickReport::Followed { head_lag_blocks: 0 },
            Err(_) => TickReport::Failed,
        };
        if let Ok(Pass::CatchingUp { tip, .. } | Pass::Synced { tip, .. } | Pass::Reorged { tip, .. }) = &result {
            crate::chain::health::shared().tip(&self.caip2, *tip, self.clock.now());
        }
        self.report(report);
        result
    }

    async fn step(&self) -> Result<Pass, WatchError> {
        let tip = self.electrum.tip().await?;
        let chain = [("chain", self.caip2.as_str())];
        metrics::gauge("payrail_chain_tip_height", "Latest block height the node reports.", &chain, height_i64(tip.height));
        let stored = {
            let mut conn = self.pool.acquire().await?;
            cursor::load(&mut conn, &self.caip2).await?
        };
        let Some(cursor) = stored else {
            // A new watcher starts at its first block (or at the tip): histories cover older
            // payments, the header chain is only for confirmations and reorgs.
            let first = self.chain.start_block.unwrap_or(tip.height).min(tip.height);
            let header = self.header_at(first).await?;
            let block = chain_block(first, &header);
            let mut tx = self.begin_fenced().await?;
            cursor::remember(&mut tx, &self.caip2, std::slice::from_ref(&block), self.window()).await?;
            cursor::save(&mut tx, &self.caip2, &Cursor { height: block.height, hash: block.hash.clone() }).await?;
            tx.commit().await?;
            return Ok(Pass::Started { height: first });
        };
        metrics::gauge("payrail_chain_head_lag_blocks", "Blocks between the node's tip and the watcher's cursor.", &chain, height_i64(tip.height.saturating_sub(cursor.height)));

        // Extend the header chain from the cursor; find the fork point if it does not continue.
        let mut fork: Option<ChainBlock> = None;
        let mut base = ChainBlock { height: cursor.height, hash: cursor.hash.clone(), parent_hash: String::new() };
        let mut headers = if cursor.height <= tip.height {
            let count = usize::try_from(tip.height - cursor.height + 1).unwrap_or(HEADERS_PER_CALL_MAX);
            self.electrum.headers(cursor.height, count).await?
        } else {
            Vec::new()
        };
        if headers.first().map(|h| h.block_hash().to_string()) != Some(cursor.hash.clone()) {
            let found = self.fork_point(&cursor, tip.height).await?;
            let count = usize::try_from(tip.height - found.height + 1).unwrap_or(HEADERS_PER_CALL_MAX);
            headers = self.electrum.headers(found.height, count).await?;
            if headers.first().map(|h| h.block_hash().to_string()) != Some(found.hash.clone()) {
                return Err(WatchError::Inconsistent { height: found.height });
            }
            base = found.clone();
            fork = Some(found);
        }
        let new_blocks: Vec<ChainBlock> =
            headers.iter().enumerate().skip(1).map(|(offset, h)| chain_block(base.height + u64::try_from(offset).unwrap_or_default(), h)).collect();
        let end = new_blocks.last().map_or(base.height, |b| b.height);
        let new_cursor = Cursor { height: end, hash: new_blocks.last().map_or(base.hash.clone(), |b| b.hash.clone()) };

        if end < tip.height {
            // Far behind: store headers only; payments are read once the headers reach the tip.
            let orphaned = self.commit(fork.as_ref(), Vec::new(), &HashSet::new(), &new_blocks, &new_cursor).await?;
            if let Some(fork) = fork {
                return Ok(Pass::Reorged { fork_height: fork.height, tip: tip.height, orphaned });
            }
            metrics::gauge("payrail_chain_cursor_height", "Last block the watcher processed.", &chain, height_i64(end));
            return Ok(Pass::CatchingUp { from: base.height + 1, to: end, tip: tip.height });
        }

        let mut hashes: HashesByHeight = {
            let mut conn = self.pool.acquire().await?;
            cursor::recent(&mut conn, &self.caip2).await?.into_iter().filter(|b| b.height <= base.height).map(|b| (b.height, b.hash)).collect()
        };
        hashes.insert(base.height, base.hash.clone());
        hashes.extend(new_blocks.iter().map(|b| (b.height, b.hash.clone())));

        let watched = self.watched().await?;
        metrics::gauge("payrail_bitcoin_watched_scripts", "Scripts the Bitcoin watcher reads the history of.", &chain, i64::try_from(watched.len()).unwrap_or(i64::MAX));
        let (observations, checked) = self.observe(&watched, tip.height, &mut hashes).await?;
        // The server's view must not have moved while the histories were read.
        let after = self.electrum.tip().await?;
        if after.hash != tip.hash {
            return Err(WatchError::Inconsistent { height: after.height });
        }
        let payments = observations.len();
        let orphaned = self.commit(fork.as_ref(), observations, &checked, &new_blocks, &new_cursor).await?;
        metrics::gauge("payrail_chain_cursor_height", "Last block the watcher processed.", &chain, height_i64(end));
        if let Some(fork) = fork {
            return Ok(Pass::Reorged { fork_height: fork.height, tip: tip.height, orphaned });
        }
        Ok(Pass::Synced { tip: tip.height, scripts: watched.len(), payments, orphaned })
    }

    fn window(&self) -> u64 {
        u64::from(self.chain.reorg_depth_max)
    }

    async fn header_at(&self, height: u64) -> Result<Header, WatchError> {
        self.electrum.headers_at(vec![height]).await?.into_iter().next().ok_or(WatchError::Inconsistent { height })
    }

    /// The highest stored block the server still has at its height.
    async fn fork_point(&self, cursor: &Cursor, tip: u64) -> Result<ChainBlock, WatchError> {
        let stored = {
            let mut conn = self.pool.acquire().await?;
            cursor::recent(&mut conn, &self.caip2).await?
        };
        let candidates: Vec<ChainBlock> = stored.into_iter().filter(|b| b.height <= tip).collect();
        let headers = self.electrum.headers_at(candidates.iter().map(|b| b.height).collect()).await?;
        for (block, header) in candidates.iter().zip(&headers) {
            if header.block_hash().to_string() == block.hash {
                return Ok(block.clone());
            }
        }
        Err(WatchError::ReorgTooDeep { chain: self.chain.name.clone(), height: cursor.height, window: self.window() })
    }

    /// Scripts of invoices that can still be paid, that expired recently (late payments), or that
    /// have a payment still waiting.
    async fn watched(&self) -> Result<HashMap<ScriptBuf, Watched>, WatchError> {
        let rows = sqlx::query(
            "SELECT d.address, d.invoice_id FROM deposit_addresses d JOIN invoices i ON i.id = d.invoice_id \
             WHERE d.chain = $1 AND (i.status IN ('open', 'processing') OR i.expires_at > $2 \
                   OR EXISTS (SELECT 1 FROM payments p WHERE p.invoice_id = d.invoice_id AND p.chain = d.chain AND p.status = 'seen'))",
        )
        .bind(&self.caip2)
        .bind(self.clock.now() - chrono::Duration::seconds(WATCH_AFTER_EXPIRY_S))
        .fetch_all(&self.pool)
        .await?;
        if rows.len() > WATCHED_SCRIPTS_MAX {
            return Err(WatchError::TooManyScripts { chain: self.chain.name.clone(), count: rows.len() });
        }
        let mut watched = HashMap::with_capacity(rows.len());
        for row in rows {
            let address: String = row.try_get("address")?;
            let invoice_id: String = row.try_get("invoice_id")?;
            match parse_address(&address, self.network) {
                Some(parsed) => {
                    watched.insert(parsed.script_pubkey(), Watched { invoice_id, address });
                }
                None => tracing::error!(target: "watcher::bitcoin", chain = %self.chain.name, %address, invoice = %invoice_id,
                    "stored deposit address is not an address of this network; not watched"),
            }
        }
        Ok(watched)
    }

    /// Reads every watched script's history and turns outputs paying them into observations.
    /// Returns them with the scripts read (all of them).
    async fn observe(
        &self,
        watched: &HashMap<ScriptBuf, Watched>,
        tip: u64,
        hashes: &mut HashesByHeight,
    ) -> Result<(Vec<ObservedPayment>, HashSet<String>), WatchError> {
        let scripts: Vec<ScriptBuf> = watched.keys().cloned().collect();
        let checked: HashSet<String> = watched.values().map(|w| w.address.clone()).collect();
        if scripts.is_empty() {
            return Ok((Vec::new(), checked));
        }
        let histories = self.electrum.histories(&scripts).await?;
        // Height of each transaction (0 in the mempool).
        let mut heights: HashMap<Txid, u64> = HashMap::new();
        for entry in histories.iter().flatten() {
            let height = u64::try_from(entry.height).unwrap_or(0);
            if height > tip {
                return Err(WatchError::Inconsistent { height });
            }
            heights.insert(entry.tx_hash, height);
        }
        let transactions = self.transactions(heights.keys().copied().collect()).await?;
        // Hashes of blocks below the stored window (payments older than it).
        let missing: Vec<u64> = {
            let mut missing: Vec<u64> = heights.values().copied().filter(|h| *h > 0 && !hashes.contains_key(h)).collect();
            missing.sort_unstable();
            missing.dedup();
            missing
        };
        if !missing.is_empty() {
            let headers = self.electrum.headers_at(missing.clone()).await?;
            for (height, header) in missing.into_iter().zip(headers) {
                hashes.insert(height, header.block_hash().to_string());
            }
        }
        // Outputs paying watched scripts; a transaction spending one of them (the merchant's
        // wallet moving funds) is not a payment, whatever its outputs.
        let mut credited_outpoints: HashSet<OutPoint> = HashSet::new();
        for (txid, transaction) in &transactions {
            for (vout, output) in transaction.output.iter().enumerate() {
                if watched.contains_key(&output.script_pubkey) {
                    credited_outpoints.insert(OutPoint { txid: *txid, vout: u32::try_from(vout).unwrap_or(u32::MAX) });
                }
            }
        }
        let now = self.clock.now();
        let mut observations = Vec::new();
        let mut seen_refs: HashSet<String> = HashSet::new();
        for (txid, transaction) in &transactions {
            if transaction.input.iter().any(|input| credited_outpoints.contains(&input.previous_output)) {
                continue;
            }
            let height = heights.get(txid).copied().unwrap_or(0);
            let block = if height > 0 {
                let hash = hashes.get(&height).cloned().ok_or(WatchError::Inconsistent { height })?;
                Some(BlockRef { height, hash })
            } else {
                None
            };
            let confirmations = if height > 0 { u32::try_from(tip - height + 1).unwrap_or(u32::MAX) } else { 0 };
            for (vout, output) in transaction.output.iter().enumerate() {
                let Some(target) = watched.get(&output.script_pubkey) else { continue };
                let sats = output.value.to_sat();
                if sats == 0 {
                    continue;
                }
                let tx_ref = format!("{}:{txid}:{vout}", self.caip2);
                if !seen_refs.insert(tx_ref.clone()) {
                    continue;
                }
                let amount = Amount::from_u64(sats);
                let required = confirmations_required(
                    &self.chain.confirmations,
                    self.rates.as_ref(),
                    &self.chain.native.symbol,
                    self.chain.native.decimals,
                    amount,
                    now,
                )
                .max(1);
                observations.push(ObservedPayment {
                    invoice_id: target.invoice_id.clone(),
                    chain: self.chain.caip2.clone(),
                    asset: self.asset.clone(),
                    tx_ref,
                    address: Some(target.address.clone()),
                    amount,
                    confirmations,
                    confirmations_required: required,
                    block: block.clone(),
                });
            }
        }
        Ok((observations, checked))
    }

    /// The transactions `txids`, from the cache or the server.
    async fn transactions(&self, txids: Vec<Txid>) -> Result<Vec<(Txid, Arc<Transaction>)>, WatchError> {
        let missing: Vec<Txid> = {
            let cache = self.transactions.lock().unwrap_or_else(PoisonError::into_inner);
            txids.iter().filter(|t| !cache.contains_key(*t)).copied().collect()
        };
        let fetched = self.electrum.transactions(&missing).await?;
        let mut cache = self.transactions.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() + fetched.len() > TRANSACTION_CACHE_MAX {
            cache.clear();
        }
        let mut fetched: HashMap<Txid, Arc<Transaction>> =
            missing.into_iter().zip(fetched.into_iter().map(Arc::new)).collect();
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

    /// Writes everything a pass learned in one transaction: payments of orphaned blocks and
    /// vanished mempool payments orphaned, observations applied, blocks and cursor stored.
    /// Invoices are touched in id order, like every writer, so watchers cannot deadlock.
    /// Returns how many payments were orphaned.
    async fn commit(
        &self,
        fork: Option<&ChainBlock>,
        observations: Vec<ObservedPayment>,
        checked: &HashSet<String>,
        blocks: &[ChainBlock],
        new_cursor: &Cursor,
    ) -> Result<usize, WatchError> {
        let mut tx = self.begin_fenced().await?;
        let observed: HashSet<&str> = observations.iter().map(|o| o.tx_ref.as_str()).collect();
        let known = sqlx::query(
            "SELECT tx_ref, invoice_id, address, status, block_height, block_hash FROM payments \
             WHERE chain = $1 AND status IN ('seen', 'confirmed') \
               AND (status = 'seen' OR block_height > $2 OR tx_ref = ANY($3))",
        )
        .bind(&self.caip2)
        .bind(fork.map_or(i64::MAX, |f| height_i64(f.height)))
        .bind(observed.iter().copied().collect::<Vec<&str>>())
        .fetch_all(&mut *tx)
        .await?;
        // (invoice, tx_ref, what to do)
        let mut work: Vec<(String, String, Option<ObservedPayment>)> = Vec::new();
        let mut settled: HashSet<String> = HashSet::new();
        let by_ref: HashMap<&str, &ObservedPayment> = observations.iter().map(|o| (o.tx_ref.as_str(), o)).collect();
        for row in &known {
            let tx_ref: String = row.try_get("tx_ref")?;
            let invoice_id: String = row.try_get("invoice_id")?;
            let status: String = row.try_get("status")?;
            let height: Option<i64> = row.try_get("block_height")?;
            let hash: Option<String> = row.try_get("block_hash")?;
            let address: Option<String> = row.try_get("address")?;
            let above_fork = fork.is_some_and(|f| height.is_some_and(|h| h > height_i64(f.height)));
            let vanished = status == "seen" && !observed.contains(tx_ref.as_str()) && address.is_some_and(|a| checked.contains(&a));
            // A credited payment whose block was orphaned is reversed (and alerted); a waiting one
            // that is no longer anywhere stops counting.
            if (status == "confirmed" && above_fork) || vanished {
                work.push((invoice_id, tx_ref.clone(), None));
                settled.insert(tx_ref);
                continue;
            }
            // Already credited in the same block: nothing left to learn from it.
            if status == "confirmed" && by_ref.get(tx_ref.as_str()).is_some_and(|o| o.block.as_ref().map(|b| &b.hash) == hash.as_ref()) {
                settled.insert(tx_ref);
            }
        }
        drop(by_ref);
        for observation in observations {
            if !settled.contains(&observation.tx_ref) {
                work.push((observation.invoice_id.clone(), observation.tx_ref.clone(), Some(observation)));
            }
        }
        work.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        let now = self.clock.now();
        let mut orphaned = 0;
        for (_, tx_ref, observation) in &work {
            match observation {
                Some(observation) => {
                    apply_payment(&mut tx, &self.ledger, observation, now).await?;
                }
                None => {
                    orphan_payment(&mut tx, &self.ledger, tx_ref, now).await?;
                    orphaned += 1;
                }
            }
        }
        if let Some(fork) = fork {
            cursor::forget_above(&mut tx, &self.caip2, fork.height).await?;
        }
        cursor::remember(&mut tx, &self.caip2, blocks, self.window()).await?;
        cursor::save(&mut tx, &self.caip2, new_cursor).await?;
        tx.commit().await?;
        Ok(orphaned)
    }
}

fn chain_block(height: u64, header: &Header) -> ChainBlock {
    ChainBlock { height, hash: header.block_hash().to_string(), parent_hash: header.prev_blockhash.to_string() }
}
