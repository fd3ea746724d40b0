//! The EVM chain source, one per configured EVM chain, for the [`crate::follower`].
//!
//! Payments are found in the blocks the follower fetches: top-level native transfers from block
//! bodies (of successful transactions) and ERC-20 `Transfer` logs to watched deposit addresses.
//! When the follower is idle at the tip, deposit balances are compared, at most every
//! [`BALANCE_CHECK_INTERVAL_MS`], with the native payments seen, so that native coin sent by a
//! contract is not missed. Credits are keyed by `{caip2}:{tx}:{log index}` (tokens),
//! `{caip2}:{tx}:native` or `{caip2}:balance:{address}:{height}`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use alloy::primitives::{Address, B256, U256};
use futures::stream::{self, StreamExt, TryStreamExt};
use sqlx::{PgPool, Row};

use crate::evm::client::{EvmClient, NativeTransfer, RpcError};
use crate::follower::{FollowError, Follower};
use crate::health::TIP_STALL_BLOCK_TIMES_EVM;
use crate::source::{BlockHash, BlockId, ChainSource, Fetched, Found, Head, Observed, Scan, ScanKind};
use crate::config::{ChainSpec, FinalityTag};
use crate::invoice::{BlockRef, ObservedPayment};
use crate::money::{Amount, AssetId};

/// Most blocks fetched and processed in one step (and one database transaction).
pub const BLOCKS_PER_TICK_MAX: u64 = 500;
/// Blocks fetched concurrently.
pub const BLOCK_FETCHES_CONCURRENT_MAX: usize = 16;
/// Deposit addresses per `eth_getLogs` call.
pub const ADDRESSES_PER_LOG_QUERY_MAX: usize = 500;
/// How often, when caught up, deposit balances are compared with the payments seen.
pub const BALANCE_CHECK_INTERVAL_MS: u64 = 30_000;
/// Longest pause between polls of the tip.
pub const POLL_INTERVAL_MS_MAX: u64 = 500;

/// The follower of an EVM chain.
pub type EvmWatcher = Follower<EvmSource>;

#[derive(Debug)]
pub struct EvmSource {
    chain: ChainSpec,
    caip2: String,
    rpc: EvmClient,
    /// For the balance check: the native payments recorded and the sweeps in flight.
    pool: PgPool,
    native: AssetId,
    tokens: HashMap<Address, AssetId>,
    last_balance_check: Mutex<Option<Instant>>,
    /// Whether the node's pruned history was already reported (once per source).
    pruned_state_logged: AtomicBool,
}

type EvmScan<'a> = Scan<'a, B256, Vec<NativeTransfer>>;

impl ChainSource for EvmSource {
    type Hash = B256;
    type Body = Vec<NativeTransfer>;

    const BLOCKS_PER_STEP_MAX: u64 = BLOCKS_PER_TICK_MAX;
    const TIP_STALL_BLOCK_TIMES: u64 = TIP_STALL_BLOCK_TIMES_EVM;

    fn connect(spec: &ChainSpec, pool: &PgPool) -> Result<Self, FollowError> {
        Ok(Self {
            rpc: EvmClient::for_chain(spec)?,
            caip2: spec.caip2.to_string(),
            native: spec.native_asset_id(),
            tokens: spec.tokens.iter().map(|t| (t.address, t.asset_id())).collect(),
            chain: spec.clone(),
            pool: pool.clone(),
            last_balance_check: Mutex::new(None),
            pruned_state_logged: AtomicBool::new(false),
        })
    }

    /// Polling the tip is one cheap call: poll faster than blocks come so confirmations show promptly.
    fn poll_interval_ms(spec: &ChainSpec) -> u64 {
        spec.block_time_ms.clamp(250, POLL_INTERVAL_MS_MAX)
    }

    /// One endpoint of the right chain is enough (the others are skipped by the client); only when
    /// none answers as this chain and one answers as another does the watcher stop for an operator.
    async fn check_chain(&self) -> Result<(), FollowError> {
        let Err(unusable) = self.rpc.provider().await else { return Ok(()) };
        let expected = self.chain.caip2.evm_chain_id().unwrap_or_default();
        let actual = self.rpc.chain_id().await?;
        if actual != expected {
            return Err(FollowError::WrongChain { name: self.chain.name.clone(), expected, actual });
        }
        Err(unusable.into())
    }

    async fn head(&self) -> Result<Head<B256>, FollowError> {
        let tip = self.rpc.tip().await?;
        let finalized = if self.chain.has_finality_tag(FinalityTag::Finalized) { self.rpc.finalized().await } else { None };
        Ok(Head { tip, tip_hash: None, notified: false, finalized })
    }

    async fn hashes(&self, heights: &[u64]) -> Result<Vec<Option<B256>>, FollowError> {
        let hashes: Vec<Option<B256>> = stream::iter(heights.iter().copied())
            .map(|height| async move {
                match self.rpc.block_hash(height).await {
                    Ok(hash) => Ok(Some(hash)),
                    // Above the node's tip after a rollback: not on the chain.
                    Err(RpcError::MissingBlock { .. }) => Ok(None),
                    Err(error) => Err(error),
                }
            })
            .buffered(BLOCK_FETCHES_CONCURRENT_MAX)
            .try_collect()
            .await?;
        Ok(hashes)
    }

    async fn witness_against_reorg(&self, at: &BlockId<B256>, tip: u64) -> Option<String> {
        self.rpc.witness_against_reorg(at.height, at.hash, tip).await
    }

    async fn blocks(&self, from: u64, to: u64) -> Result<Vec<Fetched<B256, Vec<NativeTransfer>>>, FollowError> {
        let blocks: Vec<Fetched<B256, Vec<NativeTransfer>>> = stream::iter(from..=to)
            .map(|height| async move { self.rpc.block(height).await.map(|b| Fetched { block: b.block, body: b.transfers }) })
            .buffered(BLOCK_FETCHES_CONCURRENT_MAX)
            .try_collect()
            .await?;
        Ok(blocks)
    }

    async fn scan(&self, scan: EvmScan<'_>) -> Result<Observed, FollowError> {
        let payments = match scan.kind {
            ScanKind::Advance { .. } => self.transfers(&scan).await?,
            ScanKind::Idle if self.balance_check_due() => self.balances(&scan).await?,
            ScanKind::Idle | ScanKind::Unwind => Vec::new(),
        };
        // Each block is read once: no address is ever read in full.
        Ok(Observed { payments, complete: Default::default(), refunds: Vec::new() })
    }
}

impl EvmSource {
    fn watched(scan: &EvmScan<'_>) -> HashMap<Address, String> {
        scan.watched.iter().filter_map(|w| Some((w.address.parse::<Address>().ok()?, w.invoice_id.clone()))).collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn found(&self, scan: &EvmScan<'_>, invoice_id: &str, asset: &AssetId, tx_ref: String, to: Address, value: U256, block: BlockId<B256>) -> Option<ObservedPayment> {
        let found = Found {
            invoice_id: invoice_id.to_owned(),
            asset: asset.clone(),
            tx_ref,
            address: Some(to.to_checksum(None)),
            amount: Amount::from_u256(value),
            block: Some(BlockRef { height: block.height, hash: block.hash.to_stored() }),
        };
        scan.pricing.observe(found, &scan.head)
    }

    /// Native and token transfers to watched addresses in the scan's blocks.
    async fn transfers(&self, scan: &EvmScan<'_>) -> Result<Vec<ObservedPayment>, FollowError> {
        let watched = Self::watched(scan);
        let mut observations = Vec::new();
        let (Some(first), Some(last)) = (scan.blocks.first(), scan.blocks.last()) else {
            return Ok(observations);
        };
        if watched.is_empty() {
            return Ok(observations);
        }
        for fetched in scan.blocks {
            for transfer in &fetched.body {
                let Some(invoice_id) = watched.get(&transfer.to) else { continue };
                if !self.rpc.succeeded(transfer.tx_hash).await? {
                    continue;
                }
                let tx_ref = format!("{}:{:#x}:native", self.caip2, transfer.tx_hash);
                observations.extend(self.found(scan, invoice_id, &self.native, tx_ref, transfer.to, transfer.value, fetched.block.id()));
            }
        }
        let hash_at: HashMap<u64, B256> = scan.blocks.iter().map(|b| (b.block.height, b.block.hash)).collect();
        let tokens: Vec<Address> = self.tokens.keys().copied().collect();
        let addresses: Vec<Address> = watched.keys().copied().collect();
        for chunk in addresses.chunks(ADDRESSES_PER_LOG_QUERY_MAX) {
            for transfer in self.rpc.token_transfers_split(first.block.height, last.block.height, &tokens, chunk).await? {
                if hash_at.get(&transfer.block_height) != Some(&transfer.block_hash) {
                    // The log comes from another branch than the blocks just fetched.
                    return Err(FollowError::Inconsistent { height: transfer.block_height });
                }
                let (Some(invoice_id), Some(asset)) = (watched.get(&transfer.to), self.tokens.get(&transfer.token)) else {
                    continue;
                };
                let tx_ref = format!("{}:{:#x}:{}", self.caip2, transfer.tx_hash, transfer.log_index);
                let block = BlockId { height: transfer.block_height, hash: transfer.block_hash };
                observations.extend(self.found(scan, invoice_id, asset, tx_ref, transfer.to, transfer.value, block));
            }
        }
        Ok(observations)
    }

    fn balance_check_due(&self) -> bool {
        let mut last = self.last_balance_check.lock().unwrap_or_else(PoisonError::into_inner);
        let due = last.is_none_or(|at| at.elapsed() >= Duration::from_millis(BALANCE_CHECK_INTERVAL_MS));
        if due {
            *last = Some(Instant::now());
        }
        due
    }

    /// Native coin that reached a deposit address without a top-level transfer (sent by a contract)
    /// shows only in the address's balance. Compares each watched address's balance at the cursor
    /// with the native payments known there (not yet swept) and reports the difference as a payment
    /// at the cursor's block. Addresses with a sweep in flight are skipped.
    async fn balances(&self, scan: &EvmScan<'_>) -> Result<Vec<ObservedPayment>, FollowError> {
        let watched = Self::watched(scan);
        let Some(cursor) = scan.cursor.filter(|_| !watched.is_empty()) else {
            return Ok(Vec::new());
        };
        let known_rows = sqlx::query(
            "SELECT lower(address) AS address, sum(amount_minor)::text AS known FROM payments \
             WHERE chain = $1 AND asset = $2 AND status IN ('seen', 'confirmed') AND sweep_id IS NULL AND address IS NOT NULL \
             GROUP BY lower(address)",
        )
        .bind(&self.caip2)
        .bind(self.native.to_string())
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
        // Balances are read concurrently: one round trip per address would stall the follower on a
        // distant endpoint.
        let candidates: Vec<(Address, String)> =
            watched.into_iter().filter(|(address, _)| !sweeping.contains(&format!("{address:#x}"))).collect();
        let rpc = &self.rpc;
        let read: Result<Vec<(Address, String, U256)>, RpcError> = stream::iter(candidates)
            .map(|(address, invoice_id)| async move { rpc.balance_at(address, cursor.height).await.map(|b| (address, invoice_id, b)) })
            .buffered(BLOCK_FETCHES_CONCURRENT_MAX)
            .try_collect()
            .await;
        let balances = match read {
            Ok(balances) => balances,
            // The node keeps only the newest state (pruned history) and moved past the cursor while
            // the balances were read. Reading `latest` instead could count a transfer of a block the
            // follower has not processed yet, twice; so this check is skipped, and tried again at the
            // next idle step, when the cursor is at the tip again.
            Err(RpcError::StateUnavailable { height, message }) => {
                if !self.pruned_state_logged.swap(true, Ordering::Relaxed) {
                    tracing::warn!(target: "watcher::evm", chain = %self.chain.name, height, %message,
                        "the node keeps no state for older blocks; the balance check runs only while the watcher is at the node's tip");
                }
                *self.last_balance_check.lock().unwrap_or_else(PoisonError::into_inner) = None;
                return Ok(Vec::new());
            }
            Err(error) => return Err(error.into()),
        };
        let mut found = Vec::new();
        for (address, invoice_id, balance) in balances {
            let key = format!("{address:#x}");
            let seen = known.get(&key).copied().unwrap_or(Amount::ZERO);
            if let Some(unexplained) = Amount::from_u256(balance).checked_sub(seen).filter(|a| !a.is_zero()) {
                let tx_ref = format!("{}:balance:{key}:{}", self.caip2, cursor.height);
                found.extend(self.found(scan, &invoice_id, &self.native, tx_ref, address, unexplained.as_u256(), cursor));
            }
        }
        Ok(found)
    }
}
