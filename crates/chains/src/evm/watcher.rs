//! The EVM chain source, one per configured EVM chain, for the [`crate::follower`].
//!
//! Payments are found in the blocks the follower fetches, at a cost that grows with blocks and
//! not with the number of open invoices: top-level native transfers from block bodies (of
//! successful transactions), ERC-20 `Transfer` logs of the configured tokens (filtered by recipient
//! while few addresses are watched, else every transfer of the range, matched in memory), and
//! native coin moved inside contract calls from `trace_block` where the node offers it
//! ([`InternalTransfers`]). Where it does not, the balances of a bounded number of watched
//! addresses ([`BALANCE_CHECKS_PER_PASS_MAX`]) are compared, in turn, with the native payments
//! recorded for them, at most every [`BALANCE_CHECK_INTERVAL_MS`] while the follower is idle at the
//! tip. Credits are keyed by `{caip2}:{tx}:{log index}` (tokens), `{caip2}:{tx}:native` or
//! `{caip2}:balance:{address}:{height}` (native coin from contracts: the block's total to the
//! address).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use alloy::primitives::{Address, B256, U256};
use futures::stream::{self, StreamExt, TryStreamExt};
use sqlx::{PgPool, Row};

use crate::evm::client::{is_method_unsupported, EvmClient, InternalTransfer, NativeTransfer, RpcError};
use crate::evm::heads::{HeadFeed, Heads};
use crate::follower::{FollowError, Follower};
use crate::health::TIP_STALL_BLOCK_TIMES_EVM;
use crate::source::{BlockHash, BlockId, ChainSource, Fetched, Found, Head, Observed, Scan, ScanKind};
use crate::store;
use crate::config::{ChainSpec, FinalityTag, InternalTransfers};
use crate::invoice::{BlockRef, ObservedPayment};
use crate::pricing::SpeedPolicy;
use crate::money::{Amount, AssetId};
use crate::watch::Index;

/// Most blocks fetched and processed in one step (and one database transaction).
pub const BLOCKS_PER_TICK_MAX: u64 = 500;
/// Blocks fetched concurrently.
pub const BLOCK_FETCHES_CONCURRENT_MAX: usize = 16;
/// Up to this many watched addresses, `eth_getLogs` asks for transfers to them only (one call);
/// beyond, for every transfer of the configured tokens, matched in memory.
pub const ADDRESSES_PER_LOG_QUERY_MAX: usize = 500;
/// How often, when caught up and without traces, deposit balances are compared with the payments
/// seen.
pub const BALANCE_CHECK_INTERVAL_MS: u64 = 30_000;
/// Most addresses whose balance one check reads; the next check goes on where it stopped.
pub const BALANCE_CHECKS_PER_PASS_MAX: usize = 200;
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
    token_addresses: Vec<Address>,
    /// Watched deposit addresses by address.
    index: Mutex<Index<Address>>,
    /// How internal transfers are found: [`UNDECIDED`], [`TRACES`] or [`BALANCE_CHECK`].
    internal: AtomicU8,
    last_balance_check: Mutex<Option<Instant>>,
    /// Where the next balance check starts in the watched deposits.
    balance_turn: Mutex<usize>,
    /// Whether the node's pruned history was already reported (once per source).
    pruned_state_logged: AtomicBool,
    /// New heads pushed over the chain's `ws` endpoint, when it has one.
    heads: Option<Heads>,
}

const UNDECIDED: u8 = 0;
const TRACES: u8 = 1;
const BALANCE_CHECK: u8 = 2;

/// What the watcher keeps of a block besides its header.
#[derive(Debug, Clone, Default)]
pub struct EvmBody {
    /// Top-level transfers of native coin.
    pub transfers: Vec<NativeTransfer>,
    /// Native coin moved by calls inside transactions (read only where traces are used).
    pub internal: Vec<InternalTransfer>,
    /// Whether the block may hold a `Transfer` log of a configured token (its bloom filter).
    pub may_hold_transfers: bool,
}

type EvmScan<'a> = Scan<'a, B256, EvmBody>;

impl ChainSource for EvmSource {
    type Hash = B256;
    type Body = EvmBody;

    const BLOCKS_PER_STEP_MAX: u64 = BLOCKS_PER_TICK_MAX;
    const TIP_STALL_BLOCK_TIMES: u64 = TIP_STALL_BLOCK_TIMES_EVM;

    fn connect(spec: &ChainSpec, pool: &PgPool) -> Result<Self, FollowError> {
        Ok(Self {
            rpc: EvmClient::for_chain(spec)?,
            caip2: spec.caip2.to_string(),
            native: spec.native_asset_id(),
            tokens: spec.tokens.iter().map(|t| (t.address, t.asset_id())).collect(),
            token_addresses: spec.tokens.iter().map(|t| t.address).collect(),
            internal: AtomicU8::new(match spec.internal_transfers {
                InternalTransfers::Auto => UNDECIDED,
                InternalTransfers::Traces => TRACES,
                InternalTransfers::BalanceCheck => BALANCE_CHECK,
            }),
            chain: spec.clone(),
            pool: pool.clone(),
            index: Mutex::new(Index::default()),
            last_balance_check: Mutex::new(None),
            balance_turn: Mutex::new(0),
            pruned_state_logged: AtomicBool::new(false),
            // Outside a runtime (a tool reading one block) there is nothing to wake.
            heads: spec.ws.as_ref().filter(|_| tokio::runtime::Handle::try_current().is_ok()).map(|ws| Heads::spawn(&spec.name, ws)),
        })
    }

    /// Polling the tip is one cheap call: poll faster than blocks come so confirmations show promptly.
    fn poll_interval_ms(spec: &ChainSpec) -> u64 {
        spec.block_time_ms.clamp(250, POLL_INTERVAL_MS_MAX)
    }

    /// One endpoint of the right chain is enough (the others are skipped by the client); only when
    /// none answers as this chain and one answers as another does the watcher stop for an operator.
    async fn check_chain(&self) -> Result<(), FollowError> {
        let Err(unusable) = self.rpc.provider().await else {
            self.choose_internal().await;
            return Ok(());
        };
        let expected = self.chain.caip2.evm_chain_id().unwrap_or_default();
        let actual = self.rpc.chain_id().await?;
        if actual != expected {
            return Err(FollowError::WrongChain { name: self.chain.name.clone(), expected, actual });
        }
        Err(unusable.into())
    }

    async fn next_poll(&self, poll: Duration) {
        match &self.heads {
            Some(heads) => heads.feed().next_poll(poll).await,
            None => tokio::time::sleep(poll).await,
        }
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

    async fn blocks(&self, from: u64, to: u64) -> Result<Vec<Fetched<B256, EvmBody>>, FollowError> {
        self.choose_internal().await;
        let traced = self.internal.load(Ordering::Relaxed) == TRACES;
        let blocks: Vec<Fetched<B256, EvmBody>> = stream::iter(from..=to)
            .map(|height| async move {
                let fetched = self.rpc.block(height).await?;
                let internal = if traced && fetched.transactions > 0 { self.internal_transfers(height).await? } else { Vec::new() };
                if internal.iter().any(|t| t.block_hash.is_some_and(|h| h != fetched.block.hash)) {
                    // The trace comes from another branch than the block just fetched.
                    return Err(FollowError::Inconsistent { height });
                }
                let may_hold_transfers = fetched.may_hold_transfers(&self.token_addresses);
                Ok(Fetched { block: fetched.block, body: EvmBody { transfers: fetched.transfers, internal, may_hold_transfers } })
            })
            .buffered(BLOCK_FETCHES_CONCURRENT_MAX)
            .try_collect()
            .await?;
        Ok(blocks)
    }

    async fn scan(&self, scan: EvmScan<'_>) -> Result<Observed, FollowError> {
        self.choose_internal().await;
        let payments = match scan.kind {
            ScanKind::Advance { .. } => self.transfers(&scan).await?,
            ScanKind::Idle if self.internal.load(Ordering::Relaxed) == BALANCE_CHECK && self.balance_check_due() => {
                self.balances(&scan).await?
            }
            ScanKind::Idle | ScanKind::Unwind => Vec::new(),
        };
        // Each block is read once: no address is ever read in full.
        Ok(Observed { payments, complete: Default::default(), refunds: Vec::new() })
    }
}

impl EvmSource {
    /// The pushed heads, when the chain has a `ws` endpoint.
    pub fn heads(&self) -> Option<&HeadFeed> {
        self.heads.as_ref().map(Heads::feed)
    }

    /// Decides, once the node answers, whether internal transfers come from traces (when the
    /// endpoint is checked, or at the first step of a follower stepped without that check).
    async fn choose_internal(&self) {
        if self.internal.load(Ordering::Relaxed) != UNDECIDED {
            return;
        }
        let Ok(tip) = self.rpc.tip().await else { return };
        let chosen = match self.rpc.internal_transfers(tip).await {
            Ok(_) => TRACES,
            Err(error) => {
                tracing::info!(target: "watcher::evm", chain = %self.chain.name, %error,
                    "the node offers no trace_block: native coin sent by contracts is found by balance checks");
                BALANCE_CHECK
            }
        };
        self.internal.store(chosen, Ordering::Relaxed);
    }

    /// The block's internal transfers; a node that turns out not to offer traces (another endpoint
    /// answering now) moves a source that chose them by itself to balance checks.
    async fn internal_transfers(&self, height: u64) -> Result<Vec<InternalTransfer>, FollowError> {
        match self.rpc.internal_transfers(height).await {
            Err(RpcError::Unavailable { message, .. })
                if is_method_unsupported(&message) && self.chain.internal_transfers == InternalTransfers::Auto =>
            {
                tracing::warn!(target: "watcher::evm", chain = %self.chain.name, %message,
                    "the node stopped offering trace_block: native coin sent by contracts is found by balance checks");
                self.internal.store(BALANCE_CHECK, Ordering::Relaxed);
                Err(FollowError::Inconsistent { height })
            }
            other => Ok(other?),
        }
    }

    /// Brings the address index up to the scan's watch list.
    fn update_index(&self, scan: &EvmScan<'_>) -> std::sync::MutexGuard<'_, Index<Address>> {
        let mut index = self.index.lock().unwrap_or_else(PoisonError::into_inner);
        index.update(scan.watched, |address| address.parse::<Address>().ok(), |address| {
            tracing::error!(target: "watcher::evm", chain = %self.chain.name, %address, "stored deposit address is not an EVM address; not watched");
        });
        index
    }

    #[allow(clippy::too_many_arguments)]
    fn found(&self, scan: &EvmScan<'_>, invoice: &(String, SpeedPolicy), asset: &AssetId, tx_ref: String, to: Address, value: U256, block: BlockId<B256>) -> Option<ObservedPayment> {
        let found = Found {
            invoice_id: invoice.0.clone(),
            speed: invoice.1,
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
        let mut observations = Vec::new();
        if scan.blocks.is_empty() {
            return Ok(observations);
        }
        // What the blocks show, matched against the index without holding it across a call.
        let (native, internal, recipients) = {
            let index = self.update_index(scan);
            if index.is_empty() {
                return Ok(observations);
            }
            let mut native: Vec<(&NativeTransfer, BlockId<B256>)> = Vec::new();
            // Per block and address: the total moved by contract calls.
            let mut internal: BTreeMap<(u64, Address), (BlockId<B256>, U256)> = BTreeMap::new();
            for fetched in scan.blocks {
                let block = fetched.block.id();
                native.extend(fetched.body.transfers.iter().filter(|t| index.contains(&t.to)).map(|t| (t, block)));
                for transfer in fetched.body.internal.iter().filter(|t| index.contains(&t.to)) {
                    let entry = internal.entry((block.height, transfer.to)).or_insert((block, U256::ZERO));
                    entry.1 = entry.1.saturating_add(transfer.value);
                }
            }
            let recipients: Option<Vec<Address>> =
                (index.len() <= ADDRESSES_PER_LOG_QUERY_MAX).then(|| index.keys().copied().collect());
            (native, internal, recipients)
        };
        let hash_at: HashMap<u64, B256> = scan.blocks.iter().map(|b| (b.block.height, b.block.hash)).collect();
        // Logs are asked for only over the blocks whose bloom filter allows a transfer.
        let mut may_hold = scan.blocks.iter().filter(|b| b.body.may_hold_transfers).map(|b| b.block.height);
        let logs = match (may_hold.next(), may_hold.next_back()) {
            (Some(from), to) => {
                self.rpc.token_transfers_split(from, to.unwrap_or(from), &self.token_addresses, recipients.as_deref()).await?
            }
            (None, _) => Vec::new(),
        };
        let mut token_transfers = Vec::new();
        {
            let index = self.index.lock().unwrap_or_else(PoisonError::into_inner);
            for transfer in logs {
                if hash_at.get(&transfer.block_height) != Some(&transfer.block_hash) {
                    // The log comes from another branch than the blocks just fetched.
                    return Err(FollowError::Inconsistent { height: transfer.block_height });
                }
                if let (true, Some(asset)) = (index.contains(&transfer.to), self.tokens.get(&transfer.token)) {
                    token_transfers.push((transfer, asset));
                }
            }
        }
        let paid: Vec<Address> = native
            .iter()
            .map(|(t, _)| t.to)
            .chain(internal.keys().map(|(_, to)| *to))
            .chain(token_transfers.iter().map(|(t, _)| t.to))
            .collect();
        let invoices = self.invoices_of(&paid).await?;
        for (transfer, block) in native {
            let Some(invoice) = invoices.get(&transfer.to) else { continue };
            if !self.rpc.succeeded(transfer.tx_hash).await? {
                continue;
            }
            let tx_ref = format!("{}:{:#x}:native", self.caip2, transfer.tx_hash);
            observations.extend(self.found(scan, invoice, &self.native, tx_ref, transfer.to, transfer.value, block));
        }
        for ((height, to), (block, value)) in internal {
            let Some(invoice) = invoices.get(&to) else { continue };
            let tx_ref = format!("{}:balance:{to:#x}:{height}", self.caip2);
            observations.extend(self.found(scan, invoice, &self.native, tx_ref, to, value, block));
        }
        for (transfer, asset) in token_transfers {
            let Some(invoice) = invoices.get(&transfer.to) else { continue };
            let tx_ref = format!("{}:{:#x}:{}", self.caip2, transfer.tx_hash, transfer.log_index);
            let block = BlockId { height: transfer.block_height, hash: transfer.block_hash };
            observations.extend(self.found(scan, invoice, asset, tx_ref, transfer.to, transfer.value, block));
        }
        Ok(observations)
    }

    /// The invoices of watched addresses that were paid (the watch list holds addresses only).
    async fn invoices_of(&self, paid: &[Address]) -> Result<HashMap<Address, (String, SpeedPolicy)>, FollowError> {
        if paid.is_empty() {
            return Ok(HashMap::new());
        }
        let addresses: Vec<String> = paid.iter().map(|a| format!("{a:#x}")).collect();
        let found = store::invoices_of(&self.pool, &self.caip2, &addresses).await?;
        Ok(found.into_iter().filter_map(|(address, invoice)| Some((address.parse().ok()?, invoice))).collect())
    }

    fn balance_check_due(&self) -> bool {
        let mut last = self.last_balance_check.lock().unwrap_or_else(PoisonError::into_inner);
        let due = last.is_none_or(|at| at.elapsed() >= Duration::from_millis(BALANCE_CHECK_INTERVAL_MS));
        if due {
            *last = Some(Instant::now());
        }
        due
    }

    /// Without traces, native coin that reached a deposit address without a top-level transfer
    /// (sent by a contract) shows only in the address's balance. Compares the balances of the next
    /// [`BALANCE_CHECKS_PER_PASS_MAX`] watched addresses at the cursor with the native payments
    /// known there (not yet swept) and reports the difference as a payment at the cursor's block.
    /// Addresses with a sweep in flight are skipped.
    async fn balances(&self, scan: &EvmScan<'_>) -> Result<Vec<ObservedPayment>, FollowError> {
        let deposits = scan.watched.deposits();
        let Some(cursor) = scan.cursor.filter(|_| !deposits.is_empty()) else {
            return Ok(Vec::new());
        };
        let from = *self.balance_turn.lock().unwrap_or_else(PoisonError::into_inner) % deposits.len();
        let count = deposits.len().min(BALANCE_CHECKS_PER_PASS_MAX);
        let turn: Vec<Address> = {
            deposits
                .iter()
                .cycle()
                .skip(from)
                .take(count)
                .filter_map(|address| address.parse::<Address>().ok())
                .collect()
        };
        let addresses: Vec<String> = turn.iter().map(|address| format!("{address:#x}")).collect();
        let known_rows = sqlx::query(
            "SELECT lower(address) AS address, sum(amount_minor)::text AS known FROM payments \
             WHERE chain = $1 AND asset = $2 AND status IN ('seen', 'confirmed') AND sweep_id IS NULL \
               AND lower(address) = ANY($3) \
             GROUP BY lower(address)",
        )
        .bind(&self.caip2)
        .bind(self.native.to_string())
        .bind(&addresses)
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
        let candidates: Vec<Address> = turn.into_iter().filter(|address| !sweeping.contains(&format!("{address:#x}"))).collect();
        let rpc = &self.rpc;
        let read: Result<Vec<(Address, U256)>, RpcError> = stream::iter(candidates)
            .map(|address| async move { rpc.balance_at(address, cursor.height).await.map(|b| (address, b)) })
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
        *self.balance_turn.lock().unwrap_or_else(PoisonError::into_inner) = from + count;
        let unexplained: Vec<(Address, Amount)> = balances
            .into_iter()
            .filter_map(|(address, balance)| {
                let seen = known.get(&format!("{address:#x}")).copied().unwrap_or(Amount::ZERO);
                Some((address, Amount::from_u256(balance).checked_sub(seen).filter(|a| !a.is_zero())?))
            })
            .collect();
        let invoices = self.invoices_of(&unexplained.iter().map(|(a, _)| *a).collect::<Vec<_>>()).await?;
        let mut found = Vec::new();
        for (address, amount) in unexplained {
            let Some(invoice) = invoices.get(&address) else { continue };
            let tx_ref = format!("{}:balance:{address:#x}:{}", self.caip2, cursor.height);
            found.extend(self.found(scan, invoice, &self.native, tx_ref, address, amount.as_u256(), cursor));
        }
        Ok(found)
    }
}
