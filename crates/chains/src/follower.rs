//! The chain follower: one per configured chain, generic over its family's [`ChainSource`].
//!
//! A step reads the head; if new blocks exist it fetches the next range, checks that it continues
//! the stored chain, asks the source for payments to watched addresses and, in one database
//! transaction, records every observation (and the ledger entries and outbox rows they cause),
//! stores the blocks and moves the cursor. A crash anywhere replays the step; credits are keyed by
//! output, so nothing is credited twice.
//!
//! One reorg policy for every chain: when the stored chain and the node's disagree, the step walks
//! the stored window back to the highest block both hold, orphans what [`reorg::plan`] says (a
//! reversed credit is raised as an alert) and moves the cursor there, in one transaction; the next
//! steps follow the node's branch. A fork below the window stops the follower and alerts: it is
//! never guessed at. The follower holds the chain's advisory lock while it runs
//! ([`JobLock::hold`]), and every write checks the lock inside its transaction ([`Fence`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use thiserror::Error;
use tokio::sync::broadcast;

use crate::bitcoin::electrum::ElectrumError;
use crate::cursor;
use crate::evm::client::RpcError;
use crate::health::{self, TickReport};
use crate::clock::Clock;
use crate::config::ChainSpec;
use crate::db::leader::{Ended, Fence, HeldJob, JobLock, LeaderError, Leadership, Next};
use crate::db::replicas::Share;
use crate::invoice::{apply_payment, apply_payments, orphan_payment, Applied, BlockRef, InvoiceError};
use crate::ledger::Ledger;
use crate::metrics;
use crate::rates::RateSource;

use super::reorg::{self, Action, Tracked};
use super::source::{Block, BlockId, ChainSource, Fetched, FetchedBlocks, Found, Head, Observed, Pricing, Scan, ScanKind};
use super::{store, summary::Summary, watch::WatchList};

/// Longest pause between failed steps.
pub const BACKOFF_MS_MAX: u64 = 30_000;
/// How often every watched address is read again even when the head did not move (for sources
/// whose head poll says when it moved).
pub const RECHECK_INTERVAL_MS: u64 = 5_000;
/// Most deposit addresses one follower watches; more is refused loudly rather than watched partly.
pub const WATCHED_ADDRESSES_MAX: usize = 200_000;
/// Chain events kept for slow subscribers.
pub const EVENTS_BUFFERED_MAX: usize = 64;

#[derive(Debug, Error)]
pub enum FollowError {
    #[error(transparent)]
    Rpc(#[from] RpcError),
    #[error(transparent)]
    Electrum(#[from] ElectrumError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The chain's lock was lost before this write: another replica may follow the chain now.
    #[error(transparent)]
    LockLost(#[from] LeaderError),
    #[error(transparent)]
    Invoice(#[from] InvoiceError),
    #[error("endpoint serves chain id {actual}, configured chain {name} is {expected}")]
    WrongChain { name: String, expected: u64, actual: u64 },
    #[error("chain {name} ({caip2}) is not a Bitcoin network payrail knows")]
    NotBitcoin { name: String, caip2: String },
    /// The endpoint in use reported a reorg at `height` that `witness` contradicts; the next step
    /// follows the witness.
    #[error("a reorg at height {height} reported by one endpoint is contradicted by {witness}")]
    Contradicted { height: u64, witness: String },
    /// The chain moved under a fetch; the next step starts over.
    #[error("chain moved during the fetch at height {height}")]
    Inconsistent { height: u64 },
    #[error("{count} watched addresses on {chain}, more than {WATCHED_ADDRESSES_MAX}")]
    TooManyAddresses { chain: String, count: usize },
    /// No stored block is on the node's chain any more: stop and alert, never guess.
    #[error("reorg deeper than the {window}-block window below height {height} on {chain}: watcher stopped")]
    ReorgTooDeep { chain: String, height: u64, window: u64 },
}

impl FollowError {
    /// Whether the next step may succeed by itself.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Rpc(_) | Self::Inconsistent { .. } | Self::Contradicted { .. } => true,
            Self::Electrum(e) => e.is_retryable(),
            Self::Database(e) => crate::db::is_retryable(e),
            Self::Invoice(e) => e.is_retryable(),
            _ => false,
        }
    }
}

/// What a step committed. `H` is the family's block hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainEvent<H> {
    /// Blocks `from..=to` were committed with what they caused; none when `from > to` (the head had
    /// not moved: waiting payments were refreshed). `hash`: the cursor's block.
    Committed { from: u64, to: u64, hash: H, tip: u64, payments: usize, orphaned: usize },
    /// The node's branch left the stored one above `fork_height`; the cursor went back there.
    Reorged { fork_height: u64, fork_hash: H, tip: u64, orphaned: usize },
    /// The node's tip fell below the cursor (a rollback); the cursor went back to `fork_height`.
    Reverted { fork_height: u64, fork_hash: H, tip: u64, orphaned: usize },
}

impl<H> ChainEvent<H> {
    /// The head stood still: nothing new was committed.
    pub fn is_idle(&self) -> bool {
        matches!(self, Self::Committed { from, to, .. } if from > to)
    }

    /// The cursor is at the head.
    pub fn at_tip(&self) -> bool {
        matches!(self, Self::Committed { to, tip, .. } if to >= tip)
    }

    pub fn tip(&self) -> u64 {
        match self {
            Self::Committed { tip, .. } | Self::Reorged { tip, .. } | Self::Reverted { tip, .. } => *tip,
        }
    }
}

#[derive(Debug)]
pub struct Follower<S: ChainSource> {
    source: S,
    chain: ChainSpec,
    caip2: String,
    pool: PgPool,
    ledger: Arc<Ledger>,
    clock: Arc<dyn Clock>,
    pricing: Pricing,
    /// The chain lock that writes must still be held under (`None`: not run under a lock, in tests).
    fence: Mutex<Option<Fence>>,
    /// The replica's share of the job locks (`None`: the chain's lock is taken whenever free).
    share: Option<Share>,
    events: broadcast::Sender<ChainEvent<S::Hash>>,
    summary: Mutex<Summary>,
    watched: tokio::sync::Mutex<WatchList>,
    /// The next range, fetched while the previous step committed ([`Follower::ahead`]).
    prefetched: Mutex<Option<FetchedBlocks<S>>>,
}

fn height_i64(height: u64) -> i64 {
    i64::try_from(height).unwrap_or(i64::MAX)
}

impl<S: ChainSource> Follower<S> {
    pub fn new(
        chain: ChainSpec,
        pool: PgPool,
        ledger: Arc<Ledger>,
        rates: Arc<dyn RateSource>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, FollowError> {
        let source = S::connect(&chain, &pool)?;
        Ok(Self {
            source,
            caip2: chain.caip2.to_string(),
            pricing: Pricing::new(chain.clone(), rates, clock.clone()),
            summary: Mutex::new(Summary::new(&chain.name)),
            chain,
            pool,
            ledger,
            clock,
            fence: Mutex::new(None),
            share: None,
            events: broadcast::channel(EVENTS_BUFFERED_MAX).0,
            watched: tokio::sync::Mutex::new(WatchList::default()),
            prefetched: Mutex::new(None),
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

    /// The chain family's source (for what it counts).
    pub fn source(&self) -> &S {
        &self.source
    }

    /// Every event a step commits from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ChainEvent<S::Hash>> {
        self.events.subscribe()
    }

    /// Refuses an endpoint of another chain.
    pub async fn check_chain(&self) -> Result<(), FollowError> {
        self.source.check_chain().await
    }

    /// Runs until `shutdown` fires or the chain cannot be followed safely. Only one replica
    /// follows a chain: the others wait on the chain's advisory lock. A follower whose lock's
    /// session ends stops writing at once and waits for the lock again.
    pub async fn run(self, mut shutdown: tokio::sync::watch::Receiver<bool>) -> Result<(), FollowError> {
        let lock = JobLock::new(self.pool.clone(), format!("payrail.watch.{}", self.caip2)).spread(self.share.clone());
        let mut job = Following { follower: &self, checked: false, backoff_ms: 0, last_tip: None, last_step: None };
        lock.hold(&mut job, &mut shutdown).await
    }

    /// One step (see the module docs), with its metrics and health report.
    /// The node's head as a pass polls it: the tip, and whether the node announced a change since
    /// the last poll (what makes a pass step at once).
    pub async fn head(&self) -> Result<Head<S::Hash>, FollowError> {
        self.source.head().await
    }

    pub async fn step(&self) -> Result<ChainEvent<S::Hash>, FollowError> {
        let result = match self.source.head().await {
            Ok(head) => self.step_at(head).await,
            Err(error) => Err(error),
        };
        self.record(&result);
        result
    }

    fn record(&self, result: &Result<ChainEvent<S::Hash>, FollowError>) {
        let chain = [("chain", self.caip2.as_str())];
        let now = self.clock.now();
        match result {
            Ok(event) => {
                let lag = match event {
                    ChainEvent::Committed { to, tip, payments, .. } => {
                        metrics::count("payrail_observed_payments_total", "Payments observed by the chain watchers.", &chain, i64::try_from(*payments).unwrap_or(i64::MAX));
                        tip.saturating_sub(*to)
                    }
                    _ => {
                        metrics::count("payrail_chain_reorgs_total", "Reorgs the chain watchers unwound.", &chain, 1);
                        0
                    }
                };
                health::shared().tip(&self.caip2, event.tip(), now);
                health::shared().report(&self.caip2, TickReport::Followed { head_lag_blocks: lag }, now);
                self.summary.lock().unwrap_or_else(PoisonError::into_inner).record(event);
                let _ = self.events.send(event.clone());
            }
            Err(error) => {
                if matches!(error, FollowError::Rpc(_) | FollowError::Electrum(_)) {
                    metrics::count("payrail_rpc_errors_total", "Failed RPC rounds (every endpoint failed).", &chain, 1);
                } else {
                    metrics::count("payrail_watcher_errors_total", "Failed watcher ticks.", &chain, 1);
                }
                health::shared().report(&self.caip2, TickReport::Failed, now);
            }
        }
    }

    fn window(&self) -> u64 {
        u64::from(self.chain.reorg_depth_max)
    }

    /// The stored window, newest first.
    async fn stored_window(&self) -> Result<Vec<Block<S::Hash>>, FollowError> {
        let mut conn = self.pool.acquire().await?;
        Ok(cursor::recent(&mut conn, &self.caip2).await?)
    }

    /// The cursor, or where a new follower starts: below its first block (or below the tip).
    async fn cursor(&self, tip: u64) -> Result<Option<BlockId<S::Hash>>, FollowError> {
        let stored = cursor::load(&mut *self.pool.acquire().await?, &self.caip2).await?;
        if stored.is_some() {
            return Ok(stored);
        }
        let first = self.chain.start_block.unwrap_or(tip).min(tip);
        if first == 0 {
            return Ok(None);
        }
        let below = first - 1;
        let hash = self.source.hashes(&[below]).await?.into_iter().next().flatten();
        Ok(Some(BlockId { height: below, hash: hash.ok_or(FollowError::Inconsistent { height: below })? }))
    }

    async fn step_at(&self, head: Head<S::Hash>) -> Result<ChainEvent<S::Hash>, FollowError> {
        let tip = head.tip;
        let chain = [("chain", self.caip2.as_str())];
        metrics::gauge("payrail_chain_tip_height", "Latest block height the node reports.", &chain, height_i64(tip));
        let cursor = self.cursor(tip).await?;
        let from = cursor.map_or(0, |c| c.height + 1);
        metrics::gauge("payrail_chain_head_lag_blocks", "Blocks between the node's tip and the watcher's cursor.", &chain, height_i64(tip.saturating_sub(from.saturating_sub(1))));
        if let Some(at) = cursor.filter(|_| from > tip) {
            // Nothing new; the cursor's block must still be the node's (a rollback, or a reorg to an
            // equally long branch, shows only here).
            let canonical = if at.height > tip { None } else { self.source.hashes(&[at.height]).await?.into_iter().next().flatten() };
            if canonical != Some(at.hash) {
                return self.unwind(at, head).await;
            }
            let (payments, orphaned) = self.commit(ScanKind::Idle, head, &[], at, None).await?;
            return Ok(ChainEvent::Committed { from, to: at.height, hash: at.hash, tip, payments, orphaned });
        }
        let to = tip.min(from + S::BLOCKS_PER_STEP_MAX - 1);
        let blocks = match self.take_prefetched(from, tip) {
            Some(blocks) => blocks,
            None => self.source.blocks(from, to).await?,
        };
        let (Some(first), Some(last)) = (blocks.first(), blocks.last()) else {
            return Err(FollowError::Inconsistent { height: from });
        };
        if let Some(at) = cursor {
            if first.block.parent != at.hash {
                return self.unwind(at, head).await;
            }
        }
        for pair in blocks.windows(2) {
            if pair[1].block.parent != pair[0].block.hash {
                return Err(FollowError::Inconsistent { height: pair[1].block.height });
            }
        }
        let end = last.block.id();
        let commit = self.commit(ScanKind::Advance { at_tip: end.height >= tip }, head, &blocks, end, None);
        // Catching up, the next range is fetched while this one commits: the node and the database
        // work at the same time.
        let (committed, ahead) = match self.ahead(end.height, tip) {
            Some((next_from, next_to)) => {
                let (committed, fetched) = tokio::join!(commit, self.source.blocks(next_from, next_to));
                (committed, fetched.inspect_err(|e| tracing::debug!(target: "watcher", chain = %self.chain.name, error = %e, "fetching ahead failed")).ok())
            }
            None => (commit.await, None),
        };
        let (payments, orphaned) = committed?;
        *self.prefetched.lock().unwrap_or_else(PoisonError::into_inner) = ahead;
        metrics::gauge("payrail_chain_cursor_height", "Last block the watcher processed.", &chain, height_i64(end.height));
        tracing::debug!(target: "watcher", chain = %self.chain.name, from, to = end.height, tip, behind = tip.saturating_sub(end.height), payments, "blocks committed");
        Ok(ChainEvent::Committed { from, to: end.height, hash: end.hash, tip, payments, orphaned })
    }

    /// The range after `end` to fetch while `end`'s step commits: only when it lies a whole reorg
    /// window below the tip, where the policy treats blocks as final, so what is fetched early is
    /// what would be fetched later. (It is checked against the cursor like any range anyway.)
    fn ahead(&self, end: u64, tip: u64) -> Option<(u64, u64)> {
        let from = end + 1;
        let to = tip.min(from + S::BLOCKS_PER_STEP_MAX - 1);
        (from <= to && to.saturating_add(self.window()) <= tip).then_some((from, to))
    }

    /// The blocks fetched ahead, if they start at `from` and the node's tip still covers them.
    fn take_prefetched(&self, from: u64, tip: u64) -> Option<FetchedBlocks<S>> {
        let blocks = self.prefetched.lock().unwrap_or_else(PoisonError::into_inner).take()?;
        let fits = blocks.first().is_some_and(|b| b.block.height == from) && blocks.last().is_some_and(|b| b.block.height <= tip);
        fits.then_some(blocks)
    }

    /// The stored chain and the node's disagree at the cursor `at`: find the fork point in the
    /// stored window and unwind to it.
    async fn unwind(&self, at: BlockId<S::Hash>, head: Head<S::Hash>) -> Result<ChainEvent<S::Hash>, FollowError> {
        self.prefetched.lock().unwrap_or_else(PoisonError::into_inner).take();
        // Nothing credited is taken back on one node's word when another, as far along, says
        // otherwise: the step is tried again on the witness.
        if let Some(witness) = self.source.witness_against_reorg(&at, head.tip).await {
            return Err(FollowError::Contradicted { height: at.height, witness });
        }
        let stored: Vec<Block<S::Hash>> = self.stored_window().await?.into_iter().filter(|b| b.height <= head.tip).collect();
        let heights: Vec<u64> = stored.iter().map(|b| b.height).collect();
        let canonical = self.source.hashes(&heights).await?;
        let Some(fork) = reorg::fork_point(&stored, &canonical) else {
            tracing::error!(target: "watcher", chain = %self.chain.name, height = at.height, window = self.window(), "reorg deeper than the window; stopping");
            return Err(FollowError::ReorgTooDeep { chain: self.chain.name.clone(), height: at.height, window: self.window() });
        };
        let (_, orphaned) = self.commit(ScanKind::Unwind, head, &[], fork.id(), Some(fork.height)).await?;
        tracing::warn!(target: "watcher", chain = %self.chain.name, fork_height = fork.height, fork_hash = %fork.hash,
            dropped_height = at.height, dropped_hash = %at.hash, tip = head.tip, orphaned, "reorg: rolled back to the fork point");
        let (fork_height, fork_hash, tip) = (fork.height, fork.hash, head.tip);
        Ok(if tip < at.height {
            ChainEvent::Reverted { fork_height, fork_hash, tip, orphaned }
        } else {
            ChainEvent::Reorged { fork_height, fork_hash, tip, orphaned }
        })
    }

    /// Hashes by height the follower knows up to `cursor`: the stored window and the new blocks.
    async fn known(&self, cursor: u64, blocks: &[Fetched<S::Hash, S::Body>]) -> Result<HashMap<u64, S::Hash>, FollowError> {
        let mut known: HashMap<u64, S::Hash> =
            self.stored_window().await?.into_iter().filter(|b| b.height <= cursor).map(|b| (b.height, b.hash)).collect();
        known.extend(blocks.iter().map(|b| (b.block.height, b.block.hash)));
        Ok(known)
    }

    /// A waiting payment not seen again, with its confirmations counted at `head`.
    fn refresh(&self, payment: &Tracked, head: &Head<S::Hash>) -> Option<crate::invoice::ObservedPayment> {
        let (height, hash) = payment.block.clone()?;
        if payment.amount.is_zero() {
            return None;
        }
        let found = Found {
            invoice_id: payment.invoice_id.clone(),
            asset: payment.asset.parse().ok()?,
            tx_ref: payment.tx_ref.clone(),
            address: payment.address.clone(),
            amount: payment.amount,
            block: Some(BlockRef { height, hash }),
            speed: payment.speed,
        };
        self.pricing.observe(found, head)
    }

    fn log_applied(&self, observation: &crate::invoice::ObservedPayment, applied: &Applied, before: &HashMap<&str, &Tracked>) {
        let (tx_ref, invoice, amount) = (&observation.tx_ref, &observation.invoice_id, observation.amount);
        if !before.contains_key(tx_ref.as_str()) {
            tracing::info!(target: "watcher", chain = %self.chain.name, %tx_ref, %invoice, %amount, asset = %observation.asset,
                confirmations = observation.confirmations, required = observation.confirmations_required, "payment seen");
        }
        if applied.credited {
            tracing::info!(target: "watcher", chain = %self.chain.name, %tx_ref, %invoice, %amount, "payment confirmed");
        }
    }

    /// Scans and writes one step in one transaction: the payments per [`reorg::plan`], the blocks
    /// and the cursor (`cursor`; with `fork`, every stored block above it is forgotten). Invoices
    /// are touched in id order, like every writer, so followers cannot deadlock. Returns how many
    /// payments the scan observed and how many were orphaned.
    async fn commit(
        &self,
        kind: ScanKind,
        head: Head<S::Hash>,
        blocks: &[Fetched<S::Hash, S::Body>],
        cursor: BlockId<S::Hash>,
        fork: Option<u64>,
    ) -> Result<(usize, usize), FollowError> {
        // Steps run one at a time; the lock is for the borrow across awaits, never contended.
        let mut watched = self.watched.lock().await;
        watched.refresh(&self.pool, &self.caip2, self.clock.now()).await?;
        if watched.len() > WATCHED_ADDRESSES_MAX {
            return Err(FollowError::TooManyAddresses { chain: self.chain.name.clone(), count: watched.len() });
        }
        let chain = [("chain", self.caip2.as_str())];
        metrics::gauge("payrail_watched_addresses", "Addresses the chain watcher watches.", &chain, i64::try_from(watched.len()).unwrap_or(i64::MAX));
        let known = if matches!(kind, ScanKind::Advance { at_tip: false }) { HashMap::new() } else { self.known(cursor.height, blocks).await? };
        let scan = Scan { kind, head, blocks, cursor: Some(cursor), known: &known, watched: &watched, pricing: &self.pricing };
        let mut observed: Observed = self.source.scan(scan).await?;
        drop(watched);
        let payments = observed.payments.len();
        let refunds = std::mem::take(&mut observed.refunds);

        let fence = self.fence.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let mut tx = self.pool.begin().await?;
        if let Some(fence) = fence {
            fence.check(&mut tx).await?;
        }
        let refs: Vec<&str> = observed.payments.iter().map(|o| o.tx_ref.as_str()).collect();
        let tracked = store::tracked(&mut tx, &self.caip2, fork, &refs).await?;
        drop(refs);
        let before: HashMap<&str, &Tracked> = tracked.iter().map(|t| (t.tx_ref.as_str(), t)).collect();
        let now = self.clock.now();
        let mut orphaned = 0;
        let actions = reorg::plan(&tracked, fork, observed, cursor.height, |t| self.refresh(t, &head));
        // Without a reorg the step's payments are applied together (set-based); an unwinding step
        // applies its actions one by one, in their order.
        let batch = !actions.iter().any(|a| matches!(a, Action::Orphan { .. }));
        let mut pending: Vec<crate::invoice::ObservedPayment> = Vec::new();
        for action in actions {
            match action {
                Action::Apply(observation) if batch => pending.push(*observation),
                Action::Apply(observation) => {
                    let applied = apply_payment(&mut tx, &self.ledger, &observation, now).await?;
                    self.log_applied(&observation, &applied, &before);
                }
                Action::Orphan { tx_ref, invoice_id } => {
                    orphan_payment(&mut tx, &self.ledger, &tx_ref, now).await?;
                    orphaned += 1;
                    let credited = before.get(tx_ref.as_str()).is_some_and(|t| t.confirmed);
                    tracing::warn!(target: "watcher", chain = %self.chain.name, %tx_ref, invoice = %invoice_id, credited, "payment orphaned");
                }
            }
        }
        for (observation, applied) in pending.iter().zip(apply_payments(&mut tx, &self.ledger, &pending, now).await?) {
            self.log_applied(observation, &applied, &before);
        }
        // A refund the merchant paid, as deep as the deepest confirmation tier: paid, once.
        let depth = u64::from(self.chain.confirmations.confirmations_max());
        for seen in refunds.iter().filter(|r| r.confirmations >= depth) {
            if crate::payments_refund::mark_paid(&mut tx, &self.ledger, &seen.refund_id, &seen.txid, true, now).await? {
                tracing::info!(target: "watcher", chain = %self.chain.name, refund = %seen.refund_id, txid = %seen.txid, "refund paid by the merchant");
            }
        }
        if let Some(fork) = fork {
            cursor::forget_above(&mut tx, &self.caip2, fork).await?;
        }
        if fork.is_some() || !blocks.is_empty() {
            let stored: Vec<Block<S::Hash>> = blocks.iter().map(|b| b.block).collect();
            cursor::remember(&mut tx, &self.caip2, &stored, self.window()).await?;
            cursor::save(&mut tx, &self.caip2, &cursor).await?;
        }
        tx.commit().await?;
        self.source.committed();
        Ok((payments, orphaned))
    }
}

/// A follower while it holds its chain's lock.
struct Following<'a, S: ChainSource> {
    follower: &'a Follower<S>,
    /// Whether the endpoint was checked to serve the chain since the lock was taken.
    checked: bool,
    backoff_ms: u64,
    last_tip: Option<S::Hash>,
    last_step: Option<Instant>,
}

impl<S: ChainSource> Following<'_, S> {
    /// Waits, as the source says, for the next read of the head (cut short by shutdown); the
    /// lock is checked before the next pass as before every pass.
    async fn until_next_poll(&self, poll_ms: u64, shutdown: &mut tokio::sync::watch::Receiver<bool>) -> Next {
        tokio::select! {
            () = self.follower.source.next_poll(Duration::from_millis(poll_ms)) => {}
            _ = shutdown.changed() => {}
        }
        Next::Now
    }

    fn back_off(&mut self, floor_ms: u64) -> Next {
        self.backoff_ms = self.backoff_ms.saturating_mul(2).clamp(floor_ms, BACKOFF_MS_MAX);
        Next::After(Duration::from_millis(self.backoff_ms))
    }
}

impl<S: ChainSource> HeldJob for Following<'_, S> {
    type Error = FollowError;

    fn started(&mut self, leadership: &Leadership) {
        *self.follower.fence.lock().unwrap_or_else(PoisonError::into_inner) = Some(leadership.fence());
        self.checked = false;
        self.backoff_ms = 0;
    }

    async fn pass(&mut self, _leadership: &mut Leadership, shutdown: &mut tokio::sync::watch::Receiver<bool>) -> Result<Next, FollowError> {
        let f = self.follower;
        let name = &f.chain.name;
        let poll_ms = S::poll_interval_ms(&f.chain);
        if !self.checked {
            // A node that is down at start is waited for; one that serves another chain is refused.
            match f.source.check_chain().await {
                Ok(()) => {
                    self.checked = true;
                    self.backoff_ms = 0;
                    tracing::info!(target: "watcher", chain = %name, "watching");
                    let stall_ms = health::stall_after_ms(f.chain.block_time_ms, S::TIP_STALL_BLOCK_TIMES, poll_ms);
                    health::shared().follow(&f.caip2, stall_ms, f.clock.now());
                }
                Err(error) if error.is_retryable() => {
                    health::shared().report(&f.caip2, TickReport::Failed, f.clock.now());
                    let next = self.back_off(1_000);
                    tracing::warn!(target: "watcher", chain = %name, %error, backoff_ms = self.backoff_ms, "node not reachable; waiting");
                    return Ok(next);
                }
                Err(error) => {
                    health::shared().halt(&f.caip2, f.clock.now());
                    return Err(error);
                }
            }
        }
        // The cheap poll decides whether a step is due: a head whose hash is unknown, a new tip, a
        // notification, or the periodic re-check.
        let head = f.source.head().await;
        if let Ok(head) = &head {
            let due = head.tip_hash.is_none()
                || head.notified
                || self.last_tip != head.tip_hash
                || self.last_step.is_none_or(|at| at.elapsed() >= Duration::from_millis(RECHECK_INTERVAL_MS));
            if !due {
                f.summary.lock().unwrap_or_else(PoisonError::into_inner).maybe_log();
                return Ok(self.until_next_poll(poll_ms, shutdown).await);
            }
        }
        let result = match head {
            Ok(head) => f.step_at(head).await.inspect(|_| self.last_tip = head.tip_hash),
            Err(error) => Err(error),
        };
        f.record(&result);
        f.summary.lock().unwrap_or_else(PoisonError::into_inner).maybe_log();
        match result {
            Ok(event) => {
                self.backoff_ms = 0;
                self.last_step = Some(Instant::now());
                if event.at_tip() {
                    Ok(self.until_next_poll(poll_ms, shutdown).await)
                } else {
                    Ok(Next::Now)
                }
            }
            Err(FollowError::LockLost(error)) => Ok(Next::Lost(error)),
            Err(error) if error.is_retryable() => {
                let next = self.back_off(500);
                tracing::warn!(target: "watcher", chain = %name, %error, backoff_ms = self.backoff_ms, "step failed; retrying");
                Ok(next)
            }
            Err(error) => {
                health::shared().halt(&f.caip2, f.clock.now());
                Err(error)
            }
        }
    }

    async fn ended(&mut self, ended: Ended) {
        if ended != Ended::Shutdown {
            health::shared().forget(&self.follower.caip2);
        }
    }

    /// The chain, not this replica, is the trouble: another replica taking the lock would meet the
    /// same fork and halt too (taking its replica out of rotation as well). An operator decides.
    fn keeps_lock_after(&self, error: &FollowError) -> bool {
        matches!(error, FollowError::ReorgTooDeep { .. })
    }
}
