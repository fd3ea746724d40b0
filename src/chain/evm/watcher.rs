//! The EVM watcher, one per configured EVM chain and generic over its configuration.
//!
//! A tick: read the tip; if new blocks exist, fetch the next range (block bodies for native
//! transfers, `eth_getLogs` for token transfers to watched deposit addresses), check that the range
//! continues the stored chain (else find the fork point and orphan what was dropped), and in one
//! database transaction apply every observation, refresh the confirmations of payments still
//! waiting, and move the cursor. A crash anywhere replays the range; credits are keyed by
//! `{caip2}:{tx}:{log index}` (tokens) or `{caip2}:{tx}:native`, so nothing is credited twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy::primitives::Address;
use sqlx::{PgPool, Row};
use thiserror::Error;

use crate::chain::cursor::{self, ChainBlock, Cursor};
use crate::chain::evm::rpc::{EvmBlock, EvmRpc, RpcError};
use crate::chain::health::{self, TickReport};
use crate::chain::pricing::confirmations_required;
use crate::clock::Clock;
use crate::config::{ChainSpec, FinalityTag};
use crate::db::leader::{Fence, JobLock, LeaderError, Leadership};
use crate::db::replicas::Share;
use crate::invoice::{apply_payment, orphan_payment, BlockRef, InvoiceError, ObservedPayment};
use crate::ledger::Ledger;
use crate::metrics;
use crate::money::{Amount, AssetId};
use crate::rates::RateSource;

/// Most blocks fetched and processed in one tick (and one database transaction).
pub const BLOCKS_PER_TICK_MAX: u64 = 500;
/// Blocks fetched concurrently.
pub const BLOCK_FETCHES_CONCURRENT_MAX: usize = 16;
/// Deposit addresses per `eth_getLogs` call.
pub const ADDRESSES_PER_LOG_QUERY_MAX: usize = 500;
/// How long after expiry an invoice's addresses are still watched, for late payments.
pub const WATCH_AFTER_EXPIRY_S: i64 = 7 * 24 * 3600;
/// Longest pause between failed ticks.
pub const BACKOFF_MS_MAX: u64 = 30_000;
/// How often, when caught up, deposit balances are compared with the payments seen.
pub const BALANCE_CHECK_INTERVAL_MS: u64 = 30_000;
/// Longest pause between polls of the tip.
pub const POLL_INTERVAL_MS_MAX: u64 = 500;

#[derive(Debug, Error)]
pub enum WatchError {
    #[error(transparent)]
    Rpc(#[from] RpcError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The chain's lock was lost before this write: another replica may follow the chain now.
    #[error(transparent)]
    LockLost(#[from] LeaderError),
    #[error(transparent)]
    Invoice(#[from] InvoiceError),
    #[error("endpoint serves chain id {actual}, configured chain {name} is {expected}")]
    WrongChain { name: String, expected: u64, actual: u64 },
    /// The chain changed under a fetch; the next tick starts over.
    #[error("chain moved during the fetch at height {height}")]
    Inconsistent { height: u64 },
    /// No stored block is on the node's chain any more: stop and alert, never guess.
    #[error("reorg deeper than the {window}-block window below height {height} on {chain}: watcher stopped")]
    ReorgTooDeep { chain: String, height: u64, window: u64 },
}

impl WatchError {
    /// Whether the next tick may succeed by itself.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Rpc(_) | Self::Inconsistent { .. } => true,
            Self::Database(e) => crate::db::is_transient(e) || !matches!(e, sqlx::Error::Database(_)),
            Self::Invoice(InvoiceError::Database(_)) => true,
            Self::Invoice(InvoiceError::Ledger(e)) => e.is_retryable(),
            _ => false,
        }
    }
}

/// What a tick did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tick {
    /// Blocks `from..=to` were processed.
    Advanced { from: u64, to: u64, payments: usize, tip: u64 },
    /// No new block; confirmations were refreshed.
    Idle { tip: u64 },
    /// The stored chain forked below the cursor; the cursor went back to `fork_height`.
    Reorged { fork_height: u64, orphaned: usize },
}

/// Why following the chain ended without an error.
#[derive(Debug)]
enum Followed {
    Shutdown,
    /// The lock's session ended: another replica may follow the chain now.
    LockLost(LeaderError),
}

/// Where the chain's head stands during a tick.
#[derive(Debug, Clone, Copy)]
struct Head {
    tip: u64,
    /// The `finalized` block's height, on chains that expose the tag.
    finalized: Option<u64>,
}

#[derive(Debug, Clone)]
struct AssetInfo {
    asset: AssetId,
    symbol: String,
    decimals: u8,
}

#[derive(Debug)]
pub struct EvmWatcher {
    chain: ChainSpec,
    caip2: String,
    rpc: EvmRpc,
    pool: PgPool,
    ledger: Arc<Ledger>,
    rates: Arc<dyn RateSource>,
    clock: Arc<dyn Clock>,
    /// The chain lock that writes must still be held under (`None`: not run under a lock, in tests).
    fence: Mutex<Option<Fence>>,
    native: AssetInfo,
    tokens: HashMap<Address, AssetInfo>,
    last_balance_check: std::sync::Mutex<Option<std::time::Instant>>,
    /// Whether the node's pruned history was already reported (once per watcher).
    pruned_state_logged: std::sync::atomic::AtomicBool,
    /// The replica's share of the job locks (`None`: the chain's lock is taken whenever free).
    share: Option<Share>,
}

impl EvmWatcher {
    pub fn new(
        chain: ChainSpec,
        pool: PgPool,
        ledger: Arc<Ledger>,
        rates: Arc<dyn RateSource>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, WatchError> {
        let rpc = EvmRpc::new(&chain.rpc)?;
        let native = AssetInfo {
            asset: chain.native_asset_id(),
            symbol: chain.native.symbol.clone(),
            decimals: chain.native.decimals,
        };
        let tokens = chain
            .tokens
            .iter()
            .map(|t| (t.address, AssetInfo { asset: t.asset_id(), symbol: t.symbol.clone(), decimals: t.decimals }))
            .collect();
        Ok(Self {
            caip2: chain.caip2.to_string(),
            chain,
            rpc,
            pool,
            ledger,
            rates,
            clock,
            fence: Mutex::new(None),
            native,
            tokens,
            last_balance_check: std::sync::Mutex::new(None),
            pruned_state_logged: std::sync::atomic::AtomicBool::new(false),
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

    /// Refuses to watch an endpoint that serves another chain.
    pub async fn check_chain_id(&self) -> Result<(), WatchError> {
        let expected = self.chain.caip2.evm_chain_id().unwrap_or_default();
        let actual = self.rpc.chain_id().await?;
        if actual != expected {
            return Err(WatchError::WrongChain { name: self.chain.name.clone(), expected, actual });
        }
        Ok(())
    }

    /// Runs until `shutdown` fires or the chain cannot be followed safely. Only one replica
    /// watches a chain: the others wait on the chain's advisory lock. A watcher whose lock's session
    /// ends (a database restart) stops writing at once and waits for the lock again.
    pub async fn run(self, mut shutdown: tokio::sync::watch::Receiver<bool>) -> Result<(), WatchError> {
        let lock = JobLock::new(self.pool.clone(), format!("payrail.watch.{}", self.caip2)).spread(self.share.clone());
        loop {
            let Some(mut leadership) = lock.acquire(&mut shutdown).await else { return Ok(()) };
            let outcome = self.follow(&mut leadership, &mut shutdown).await;
            match outcome {
                Ok(Followed::Shutdown) => {
                    leadership.release().await;
                    return Ok(());
                }
                Ok(Followed::LockLost(error)) => {
                    crate::chain::health::shared().forget(&self.caip2);
                    if error.is_surplus() {
                        tracing::info!(target: "watcher::evm", chain = %self.chain.name, %error, "handing the chain to a replica with fewer jobs");
                        leadership.release().await;
                    } else {
                        tracing::warn!(target: "watcher::evm", chain = %self.chain.name, %error, "lost the chain's lock; waiting for it again");
                    }
                }
                Err(error) => {
                    crate::chain::health::shared().halt(&self.caip2, self.clock.now());
                    if matches!(error, WatchError::ReorgTooDeep { .. }) {
                        // The chain, not this replica, is the trouble: another replica taking the
                        // lock would meet the same fork and halt too (taking its replica out of
                        // rotation as well). Hold the lock until shutdown; an operator decides.
                        tracing::error!(target: "watcher::evm", chain = %self.chain.name, "watcher halted; holding the chain's lock until shutdown");
                        let _ = shutdown.wait_for(|stop| *stop).await;
                    }
                    leadership.release().await;
                    return Err(error);
                }
            }
        }
    }

    /// Follows the chain while `leadership` holds: checked before every tick.
    async fn follow(
        &self,
        leadership: &mut Leadership,
        shutdown: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Result<Followed, WatchError> {
        *self.fence.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(leadership.fence());
        // A node that is down at start is waited for; one that serves another chain is refused.
        let mut backoff_ms = 0u64;
        loop {
            match self.check_chain_id().await {
                Ok(()) => break,
                Err(error) if error.is_retryable() => {
                    backoff_ms = (backoff_ms * 2).clamp(1_000, BACKOFF_MS_MAX);
                    tracing::warn!(target: "watcher::evm", chain = %self.chain.name, %error, backoff_ms, "node not reachable; waiting");
                    // Waiting holds the lock too: it is checked (a lost one, or one to hand over) while waiting.
                    match leadership.wait_holding(Duration::from_millis(backoff_ms), shutdown).await {
                        Ok(false) => {}
                        Ok(true) => return Ok(Followed::Shutdown),
                        Err(error) => return Ok(Followed::LockLost(error)),
                    }
                }
                Err(error) => {
                    tracing::error!(target: "watcher::evm", chain = %self.chain.name, %error, "watcher stopped");
                    return Err(error);
                }
            }
        }
        tracing::info!(target: "watcher::evm", chain = %self.chain.name, "watching");
        // Polling the tip is one cheap call: poll faster than blocks come so confirmations show promptly.
        let poll_ms = self.chain.block_time_ms.clamp(250, POLL_INTERVAL_MS_MAX);
        let poll = Duration::from_millis(poll_ms);
        let stall_ms = health::stall_after_ms(self.chain.block_time_ms, health::TIP_STALL_BLOCK_TIMES_EVM, poll_ms);
        health::shared().follow(&self.caip2, stall_ms, self.clock.now());
        let mut backoff_ms = 0u64;
        loop {
            if *shutdown.borrow() {
                return Ok(Followed::Shutdown);
            }
            if let Err(error) = leadership.ensure_held().await {
                return Ok(Followed::LockLost(error));
            }
            match self.tick().await {
                Ok(Tick::Advanced { from, to, payments, tip }) => {
                    backoff_ms = 0;
                    let behind = tip.saturating_sub(to);
                    tracing::info!(target: "watcher::evm", chain = %self.chain.name, from, to, tip, behind, payments, "blocks processed");
                    continue;
                }
                Ok(Tick::Reorged { fork_height, orphaned }) => {
                    backoff_ms = 0;
                    tracing::warn!(target: "watcher::evm", chain = %self.chain.name, fork_height, orphaned, "reorg: rolled back to the fork point");
                    continue;
                }
                Ok(Tick::Idle { .. }) => backoff_ms = 0,
                Err(WatchError::LockLost(error)) => return Ok(Followed::LockLost(error)),
                Err(error) if error.is_retryable() => {
                    backoff_ms = (backoff_ms * 2).clamp(500, BACKOFF_MS_MAX);
                    tracing::warn!(target: "watcher::evm", chain = %self.chain.name, %error, backoff_ms, "tick failed; retrying");
                }
                Err(error) => {
                    tracing::error!(target: "watcher::evm", chain = %self.chain.name, %error, "watcher stopped");
                    return Err(error);
                }
            }
            let pause = if backoff_ms > 0 { Duration::from_millis(backoff_ms) } else { poll };
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

    /// One step; see the module docs.
    pub async fn tick(&self) -> Result<Tick, WatchError> {
        let result = self.step().await;
        let chain = [("chain", self.caip2.as_str())];
        match &result {
            Ok(Tick::Advanced { payments, .. }) => {
                metrics::count("payrail_observed_payments_total", "Payments observed by the chain watchers.", &chain, i64::try_from(*payments).unwrap_or(i64::MAX));
            }
            Ok(Tick::Reorged { .. }) => metrics::count("payrail_chain_reorgs_total", "Reorgs the chain watchers unwound.", &chain, 1),
            Ok(Tick::Idle { .. }) => {}
            Err(WatchError::Rpc(_)) => metrics::count("payrail_rpc_errors_total", "Failed RPC rounds (every endpoint failed).", &chain, 1),
            Err(_) => metrics::count("payrail_watcher_errors_total", "Failed watcher ticks.", &chain, 1),
        }
        let report = match &result {
            Ok(Tick::Advanced { to, tip, .. }) => TickReport::Followed { head_lag_blocks: tip.saturating_sub(*to) },
            Ok(Tick::Idle { .. } | Tick::Reorged { .. }) => TickReport::Followed { head_lag_blocks: 0 },
            Err(_) => TickReport::Failed,
        };
        let now = self.clock.now();
        if let Ok(Tick::Advanced { tip, .. } | Tick::Idle { tip }) = &result {
            health::shared().tip(&self.caip2, *tip, now);
        }
        health::shared().report(&self.caip2, report, now);
        result
    }

    async fn step(&self) -> Result<Tick, WatchError> {
        let tip = self.rpc.tip().await?;
        let finalized = if self.chain.has_finality_tag(FinalityTag::Finalized) { self.rpc.finalized().await } else { None };
        let head = Head { tip, finalized };
        let stored = {
            let mut conn = self.pool.acquire().await?;
            cursor::load(&mut conn, &self.caip2).await?
        };
        let cursor = match stored {
            Some(cursor) => cursor,
            None => {
                // A new watcher starts below its first block (or at the tip).
                let first = self.chain.start_block.unwrap_or(tip).min(tip);
                if first == 0 {
                    Cursor { height: 0, hash: String::new() }
                } else {
                    let below = self.rpc.block(first - 1).await?;
                    Cursor { height: below.block.height, hash: below.block.hash }
                }
            }
        };
        let start = if cursor.hash.is_empty() { 0 } else { cursor.height + 1 };
        if start > tip {
            // Nothing new; make sure the cursor's block is still canonical (a rollback or a reorg
            // to an equally long branch shows up only here).
            if !cursor.hash.is_empty() && (cursor.height > tip || self.rpc.block_hash(cursor.height).await? != cursor.hash) {
                return self.unwind(&cursor).await;
            }
            let due = {
                let mut last = self.last_balance_check.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let due = last.is_none_or(|at| at.elapsed() >= Duration::from_millis(BALANCE_CHECK_INTERVAL_MS));
                if due {
                    *last = Some(std::time::Instant::now());
                }
                due
            };
            let found = if due { self.balance_observations(&cursor, head).await? } else { Vec::new() };
            self.commit(found, &[], head, None).await?;
            return Ok(Tick::Idle { tip });
        }
        let end = tip.min(start + BLOCKS_PER_TICK_MAX - 1);
        let chain = [("chain", self.caip2.as_str())];
        metrics::gauge("payrail_chain_tip_height", "Latest block height the node reports.", &chain, i64::try_from(tip).unwrap_or(i64::MAX));
        metrics::gauge("payrail_chain_head_lag_blocks", "Blocks between the node's tip and the watcher's cursor.", &chain, i64::try_from(tip - cursor.height).unwrap_or(i64::MAX));
        let blocks = self.fetch_blocks(start, end).await?;
        if let Some(first) = blocks.first() {
            if !cursor.hash.is_empty() && first.block.parent_hash != cursor.hash {
                return self.unwind(&cursor).await;
            }
        }
        for pair in blocks.windows(2) {
            if pair[1].block.parent_hash != pair[0].block.hash {
                return Err(WatchError::Inconsistent { height: pair[1].block.height });
            }
        }
        let watched = self.watched_addresses().await?;
        let observations = self.observe(&blocks, &watched, head).await?;
        let payments = observations.len();
        let chain_blocks: Vec<ChainBlock> = blocks.iter().map(|b| b.block.clone()).collect();
        self.commit(observations, &chain_blocks, head, chain_blocks.last().map(|b| Cursor { height: b.height, hash: b.hash.clone() }))
            .await?;
        metrics::gauge("payrail_chain_cursor_height", "Last block the watcher processed.", &chain, i64::try_from(end).unwrap_or(i64::MAX));
        Ok(Tick::Advanced { from: start, to: end, payments, tip })
    }

    async fn fetch_blocks(&self, from: u64, to: u64) -> Result<Vec<EvmBlock>, WatchError> {
        use futures::stream::{self, StreamExt, TryStreamExt};
        let blocks: Vec<EvmBlock> = stream::iter(from..=to)
            .map(|h| self.rpc.block(h))
            .buffered(BLOCK_FETCHES_CONCURRENT_MAX)
            .try_collect()
            .await?;
        Ok(blocks)
    }

    /// Deposit addresses of invoices that can still receive payments (and, for late payments, those
    /// that expired recently).
    async fn watched_addresses(&self) -> Result<HashMap<Address, String>, WatchError> {
        let rows = sqlx::query(
            "SELECT d.address, d.invoice_id FROM deposit_addresses d JOIN invoices i ON i.id = d.invoice_id \
             WHERE d.chain = $1 AND (i.status IN ('open', 'processing') OR i.expires_at > $2)",
        )
        .bind(&self.caip2)
        .bind(self.clock.now() - chrono::Duration::seconds(WATCH_AFTER_EXPIRY_S))
        .fetch_all(&self.pool)
        .await?;
        let mut watched = HashMap::with_capacity(rows.len());
        for row in rows {
            let address: String = row.try_get("address")?;
            if let Ok(parsed) = address.parse::<Address>() {
                watched.insert(parsed, row.try_get("invoice_id")?);
            }
        }
        Ok(watched)
    }

    /// Native and token transfers to watched addresses in `blocks`.
    async fn observe(
        &self,
        blocks: &[EvmBlock],
        watched: &HashMap<Address, String>,
        head: Head,
    ) -> Result<Vec<ObservedPayment>, WatchError> {
        let mut observations = Vec::new();
        if watched.is_empty() {
            return Ok(observations);
        }
        let (Some(first), Some(last)) = (blocks.first(), blocks.last()) else {
            return Ok(observations);
        };
        let hash_at: HashMap<u64, &str> = blocks.iter().map(|b| (b.block.height, b.block.hash.as_str())).collect();
        for block in blocks {
            for transfer in &block.transfers {
                let Some(invoice_id) = watched.get(&transfer.to) else {
                    continue;
                };
                if !self.rpc.succeeded(transfer.tx_hash).await? {
                    continue;
                }
                observations.push(self.observation(
                    invoice_id,
                    &self.native,
                    format!("{}:{:#x}:native", self.caip2, transfer.tx_hash),
                    transfer.to,
                    transfer.value,
                    &block.block,
                    head,
                ));
            }
        }
        let tokens: Vec<Address> = self.tokens.keys().copied().collect();
        let addresses: Vec<Address> = watched.keys().copied().collect();
        for chunk in addresses.chunks(ADDRESSES_PER_LOG_QUERY_MAX) {
            for transfer in self.rpc.token_transfers_split(first.block.height, last.block.height, &tokens, chunk).await? {
                let block_hash = format!("{:#x}", transfer.block_hash);
                if hash_at.get(&transfer.block_height) != Some(&block_hash.as_str()) {
                    // The log comes from another branch than the blocks just fetched.
                    return Err(WatchError::Inconsistent { height: transfer.block_height });
                }
                let (Some(invoice_id), Some(info)) = (watched.get(&transfer.to), self.tokens.get(&transfer.token)) else {
                    continue;
                };
                let block = ChainBlock { height: transfer.block_height, hash: block_hash, parent_hash: String::new() };
                observations.push(self.observation(
                    invoice_id,
                    info,
                    format!("{}:{:#x}:{}", self.caip2, transfer.tx_hash, transfer.log_index),
                    transfer.to,
                    transfer.value,
                    &block,
                    head,
                ));
            }
        }
        Ok(observations)
    }

    #[allow(clippy::too_many_arguments)]
    fn observation(
        &self,
        invoice_id: &str,
        info: &AssetInfo,
        tx_ref: String,
        to: Address,
        value: alloy::primitives::U256,
        block: &ChainBlock,
        head: Head,
    ) -> ObservedPayment {
        let amount = Amount::from_u256(value);
        let confirmations = u32::try_from(head.tip.saturating_sub(block.height) + 1).unwrap_or(u32::MAX);
        let mut required = confirmations_required(
            &self.chain.confirmations,
            self.rates.as_ref(),
            &info.symbol,
            info.decimals,
            amount,
            self.clock.now(),
        );
        // A block the chain itself calls finalized cannot be reorged: counting is no longer needed.
        if head.finalized.is_some_and(|f| block.height <= f) {
            required = required.min(confirmations);
        }
        ObservedPayment {
            invoice_id: invoice_id.to_owned(),
            chain: self.chain.caip2.clone(),
            asset: info.asset.clone(),
            tx_ref,
            address: Some(to.to_checksum(None)),
            amount,
            confirmations,
            confirmations_required: required,
            block: Some(BlockRef { height: block.height, hash: block.hash.clone() }),
        }
    }

    /// Native coin that reached a deposit address without a top-level transfer (sent by a contract)
    /// shows only in the address's balance. Compares each watched address's balance at the cursor
    /// with the native payments known there (not yet swept) and reports the difference as a payment
    /// at the cursor's block. Addresses with a sweep in flight are skipped.
    async fn balance_observations(&self, cursor: &Cursor, head: Head) -> Result<Vec<ObservedPayment>, WatchError> {
        if cursor.hash.is_empty() {
            return Ok(Vec::new());
        }
        let watched = self.watched_addresses().await?;
        if watched.is_empty() {
            return Ok(Vec::new());
        }
        let known_rows = sqlx::query(
            "SELECT lower(address) AS address, sum(amount_minor)::text AS known FROM payments \
             WHERE chain = $1 AND asset = $2 AND status IN ('seen', 'confirmed') AND sweep_id IS NULL AND address IS NOT NULL \
             GROUP BY lower(address)",
        )
        .bind(&self.caip2)
        .bind(self.native.asset.to_string())
        .fetch_all(&self.pool)
        .await?;
        let mut known: HashMap<String, Amount> = HashMap::new();
        for row in known_rows {
            let text: String = row.try_get("known")?;
            if let Ok(amount) = text.parse() {
                known.insert(row.try_get("address")?, amount);
            }
        }
        let sweeping: Vec<String> =
            sqlx::query_scalar("SELECT address FROM sweeps WHERE chain = $1 AND status IN ('pending', 'sent')")
                .bind(&self.caip2)
                .fetch_all(&self.pool)
                .await?;
        let block = ChainBlock { height: cursor.height, hash: cursor.hash.clone(), parent_hash: String::new() };
        let mut found = Vec::new();
        // Balances are read concurrently: one round trip per address would stall the watcher on a
        // distant endpoint.
        use futures::stream::{self, StreamExt, TryStreamExt};
        let candidates: Vec<(Address, String)> = watched
            .iter()
            .filter(|(address, _)| !sweeping.contains(&format!("{address:#x}")))
            .map(|(address, invoice_id)| (*address, invoice_id.clone()))
            .collect();
        let height = cursor.height;
        let rpc = &self.rpc;
        let read: Result<Vec<(Address, String, alloy::primitives::U256)>, RpcError> = stream::iter(candidates)
            .map(|(address, invoice_id)| async move {
                rpc.balance_at(address, height).await.map(|b| (address, invoice_id, b))
            })
            .buffered(BLOCK_FETCHES_CONCURRENT_MAX)
            .try_collect()
            .await;
        let balances = match read {
            Ok(balances) => balances,
            // The node keeps only the newest state (pruned history) and moved past the cursor while
            // the balances were read. Reading `latest` instead could count a transfer of a block the
            // watcher has not processed yet, twice; so this check is skipped, and tried again at the
            // next idle tick, when the cursor is at the tip again.
            Err(RpcError::StateUnavailable { height, message }) => {
                if !self.pruned_state_logged.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::warn!(target: "watcher::evm", chain = %self.chain.name, height, %message,
                        "the node keeps no state for older blocks; the balance check runs only while the watcher is at the node's tip");
                }
                *self.last_balance_check.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
                return Ok(Vec::new());
            }
            Err(error) => return Err(error.into()),
        };
        for (address, invoice_id, balance) in balances {
            let (address, invoice_id) = (&address, &invoice_id);
            let key = format!("{address:#x}");
            let balance = Amount::from_u256(balance);
            let seen = known.get(&key).copied().unwrap_or(Amount::ZERO);
            if let Some(unexplained) = balance.checked_sub(seen).filter(|a| !a.is_zero()) {
                let tx_ref = format!("{}:balance:{key}:{}", self.caip2, cursor.height);
                found.push(self.observation(invoice_id, &self.native, tx_ref, *address, unexplained.as_u256(), &block, head));
            }
        }
        Ok(found)
    }

    /// Payments seen earlier and still waiting for confirmations, as fresh observations at `tip`.
    async fn pending(&self, conn: &mut sqlx::PgConnection, head: Head) -> Result<Vec<ObservedPayment>, WatchError> {
        let rows = sqlx::query(
            "SELECT invoice_id, asset, tx_ref, address, amount_minor::text AS amount, block_height, block_hash \
             FROM payments WHERE chain = $1 AND status = 'seen' AND block_height IS NOT NULL",
        )
        .bind(&self.caip2)
        .fetch_all(&mut *conn)
        .await?;
        let mut pending = Vec::with_capacity(rows.len());
        for row in rows {
            let asset: String = row.try_get("asset")?;
            let Ok(asset) = asset.parse::<AssetId>() else { continue };
            let info = if asset == self.native.asset {
                self.native.clone()
            } else {
                match asset.erc20_address().and_then(|a| self.tokens.get(&a)) {
                    Some(info) => info.clone(),
                    None => continue,
                }
            };
            let amount_text: String = row.try_get("amount")?;
            let Ok(amount) = amount_text.parse::<Amount>() else { continue };
            let height = u64::try_from(row.try_get::<i64, _>("block_height")?).unwrap_or(0);
            let block = ChainBlock { height, hash: row.try_get("block_hash")?, parent_hash: String::new() };
            let address: Option<String> = row.try_get("address")?;
            let to = address.as_deref().and_then(|a| a.parse::<Address>().ok()).unwrap_or_default();
            let mut observation =
                self.observation(&row.try_get::<String, _>("invoice_id")?, &info, row.try_get("tx_ref")?, to, amount.as_u256(), &block, head);
            observation.address = address;
            pending.push(observation);
        }
        Ok(pending)
    }

    /// Writes everything a tick learned in one transaction: observations, refreshed confirmations,
    /// the blocks and the cursor. Invoices are locked in id order so two chain watchers that touch
    /// the same invoice cannot deadlock.
    async fn commit(
        &self,
        observations: Vec<ObservedPayment>,
        blocks: &[ChainBlock],
        head: Head,
        cursor: Option<Cursor>,
    ) -> Result<(), WatchError> {
        let mut tx = self.begin_fenced().await?;
        let mut all = self.pending(&mut tx, head).await?;
        all.retain(|p| !observations.iter().any(|o| o.tx_ref == p.tx_ref));
        all.extend(observations);
        all.sort_by(|a, b| (&a.invoice_id, &a.tx_ref).cmp(&(&b.invoice_id, &b.tx_ref)));
        let now = self.clock.now();
        for observation in &all {
            apply_payment(&mut tx, &self.ledger, observation, now).await?;
        }
        if let Some(cursor) = cursor {
            cursor::remember(&mut tx, &self.caip2, blocks, u64::from(self.chain.reorg_depth_max)).await?;
            cursor::save(&mut tx, &self.caip2, &cursor).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The stored chain and the node disagree at the cursor: walk back through the stored window to
    /// the highest block both agree on, orphan every payment above it, and move the cursor there.
    async fn unwind(&self, cursor: &Cursor) -> Result<Tick, WatchError> {
        let stored = {
            let mut conn = self.pool.acquire().await?;
            cursor::recent(&mut conn, &self.caip2).await?
        };
        let mut fork: Option<ChainBlock> = None;
        for block in &stored {
            let canonical = match self.rpc.block_hash(block.height).await {
                Ok(hash) => hash,
                // Above the node's tip after a rollback: not on the chain.
                Err(RpcError::MissingBlock { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            if canonical == block.hash {
                fork = Some(block.clone());
                break;
            }
        }
        let Some(fork) = fork else {
            return Err(WatchError::ReorgTooDeep {
                chain: self.chain.name.clone(),
                height: cursor.height,
                window: u64::from(self.chain.reorg_depth_max),
            });
        };
        let mut tx = self.begin_fenced().await?;
        let orphans: Vec<String> = sqlx::query_scalar(
            "SELECT tx_ref FROM payments WHERE chain = $1 AND block_height > $2 AND status IN ('seen', 'confirmed') \
             ORDER BY invoice_id, tx_ref",
        )
        .bind(&self.caip2)
        .bind(i64::try_from(fork.height).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await?;
        let now = self.clock.now();
        for tx_ref in &orphans {
            orphan_payment(&mut tx, &self.ledger, tx_ref, now).await?;
        }
        cursor::forget_above(&mut tx, &self.caip2, fork.height).await?;
        cursor::save(&mut tx, &self.caip2, &Cursor { height: fork.height, hash: fork.hash.clone() }).await?;
        tx.commit().await?;
        Ok(Tick::Reorged { fork_height: fork.height, orphaned: orphans.len() })
    }
}
