//! What a chain family answers for the [`crate::follower`]: the head, block hashes, blocks,
//! and the payments to watched addresses. A source only fetches: it holds no lock, keeps no cursor
//! and writes nothing; everything it returns is committed (or dropped) by the follower.

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;

use sqlx::PgPool;

use crate::pricing::{confirmations_required, Payment, SpeedPolicy};
use crate::clock::Clock;
use crate::config::ChainSpec;
use crate::invoice::{BlockRef, ObservedPayment};
use crate::money::{Amount, AssetId};
use crate::rates::RateSource;

use super::follower::FollowError;
use super::watch::WatchList;

pub use payrail_core::chain::{Block, BlockHash, BlockId, Observed, RefundSeen};

/// A block as a source fetched it: the header the follower checks, and what the source needs to
/// find payments in it later (EVM: its native transfers; Bitcoin: nothing).
#[derive(Debug, Clone)]
pub struct Fetched<H, B> {
    pub block: Block<H>,
    pub body: B,
}

/// Where the chain's head stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head<H> {
    pub tip: u64,
    /// The tip's hash where a poll tells it cheaply (Electrum); `None` makes every poll a step.
    pub tip_hash: Option<H>,
    /// Whether the source was told of a new block since the last poll.
    pub notified: bool,
    /// The chain's `finalized` height, on chains that expose the tag.
    pub finalized: Option<u64>,
}

/// A deposit address that can still receive a payment, and its invoice; or the payer's address of
/// a refund the merchant pays (Bitcoin), with the amount that pays it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    pub address: String,
    pub invoice_id: String,
    pub refund: Option<(String, Amount)>,
}

/// Why the follower asks its source for payments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanKind {
    /// New blocks were fetched; `at_tip`: they reach the head.
    Advance { at_tip: bool },
    /// No new block: the follower's view is at the head.
    Idle,
    /// The follower unwinds to a fork point.
    Unwind,
}

/// What a source is asked to look at.
#[derive(Debug)]
pub struct Scan<'a, H, B> {
    pub kind: ScanKind,
    pub head: Head<H>,
    /// The new blocks (empty unless advancing).
    pub blocks: &'a [Fetched<H, B>],
    /// The follower's cursor once this step commits (`None`: nothing processed yet).
    pub cursor: Option<BlockId<H>>,
    /// Hashes the follower knows by height: the stored window up to the cursor and the new blocks.
    pub known: &'a HashMap<u64, H>,
    pub watched: &'a WatchList,
    pub pricing: &'a Pricing,
}

/// The blocks a source fetched, in order.
pub type FetchedBlocks<S> = Vec<Fetched<<S as ChainSource>::Hash, <S as ChainSource>::Body>>;

/// One chain family's access to its chain. See the module docs.
pub trait ChainSource: std::fmt::Debug + Send + Sync + Sized + 'static {
    type Hash: BlockHash;
    type Body: Send + Sync + Debug;

    /// Most blocks one step fetches (and one transaction commits).
    const BLOCKS_PER_STEP_MAX: u64;
    /// A tip that stays put for this many block times marks the rail unhealthy.
    const TIP_STALL_BLOCK_TIMES: u64;

    /// A source for `spec`; `pool` for sources that compare what the chain holds with what was
    /// recorded (the EVM balance check).
    fn connect(spec: &ChainSpec, pool: &PgPool) -> Result<Self, FollowError>;

    /// How often the head is polled.
    fn poll_interval_ms(spec: &ChainSpec) -> u64;

    /// Waits until the head is next worth reading: `poll` by default; a source told of new blocks
    /// (pushed heads) wakes at the next one.
    fn next_poll(&self, poll: std::time::Duration) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(poll)
    }

    /// Refuses an endpoint that serves another chain.
    fn check_chain(&self) -> impl Future<Output = Result<(), FollowError>> + Send;

    fn head(&self) -> impl Future<Output = Result<Head<Self::Hash>, FollowError>> + Send;

    /// The hashes at `heights` on the source's chain, in order; `None` above its tip.
    fn hashes(&self, heights: &[u64]) -> impl Future<Output = Result<Vec<Option<Self::Hash>>, FollowError>> + Send;

    /// Before a reorg is acted on: whether another of the source's endpoints, as far along, still
    /// has block `at` on its chain — a reorg one node reports and another contradicts is not
    /// believed (the source moves to the witness; its name is returned). Sources with one
    /// endpoint have no witness.
    fn witness_against_reorg(&self, at: &BlockId<Self::Hash>, tip: u64) -> impl Future<Output = Option<String>> + Send {
        let _ = (at, tip);
        async { None }
    }

    /// Blocks `from..=to`, in order.
    fn blocks(&self, from: u64, to: u64) -> impl Future<Output = Result<FetchedBlocks<Self>, FollowError>> + Send;

    /// Payments to `scan.watched`, as far as `scan.kind` asks.
    fn scan(&self, scan: Scan<'_, Self::Hash, Self::Body>) -> impl Future<Output = Result<Observed, FollowError>> + Send;

    /// The step whose [`Self::scan`] ran last has committed: what it read need not be read again.
    fn committed(&self) {}
}

/// A payment as a source found it, before confirmations are counted.
#[derive(Debug, Clone)]
pub struct Found {
    pub invoice_id: String,
    pub asset: AssetId,
    pub tx_ref: String,
    pub address: Option<String>,
    pub amount: Amount,
    /// The block that holds it (`None`: in the mempool).
    pub block: Option<BlockRef>,
    /// Its invoice's speed policy.
    pub speed: SpeedPolicy,
}

/// Turns found payments into observations: confirmations counted from the head, and the
/// confirmations the chain's policy asks for the payment's value as its invoice's speed policy
/// reads it (at least one — an unconfirmed transaction can be replaced — unless the invoice is
/// `fast` and the chain lets a payment that small count unconfirmed; none beyond the chain's own
/// `finalized` block).
#[derive(Debug)]
pub struct Pricing {
    spec: ChainSpec,
    rates: Arc<dyn RateSource>,
    clock: Arc<dyn Clock>,
}

impl Pricing {
    pub fn new(spec: ChainSpec, rates: Arc<dyn RateSource>, clock: Arc<dyn Clock>) -> Self {
        Self { spec, rates, clock }
    }

    /// The symbol and decimals of `asset` on this chain, if it is one the chain watches.
    fn asset(&self, asset: &AssetId) -> Option<(&str, u8)> {
        if *asset == self.spec.native_asset_id() {
            return Some((&self.spec.native.symbol, self.spec.native.decimals));
        }
        self.spec.tokens.iter().find(|t| t.asset_id() == *asset).map(|t| (t.symbol.as_str(), t.decimals))
    }

    /// `None` for an asset this chain does not watch.
    pub fn observe<H>(&self, found: Found, head: &Head<H>) -> Option<ObservedPayment> {
        let (symbol, decimals) = self.asset(&found.asset)?;
        let confirmations = found
            .block
            .as_ref()
            .map_or(0, |b| u32::try_from(head.tip.saturating_sub(b.height).saturating_add(1)).unwrap_or(u32::MAX));
        let payment = Payment { symbol, decimals, amount: found.amount };
        let mut required = confirmations_required(&self.spec, found.speed, self.rates.as_ref(), payment, self.clock.now());
        // A block the chain itself calls finalized cannot be reorged: counting is no longer needed.
        if found.block.as_ref().is_some_and(|b| head.finalized.is_some_and(|f| b.height <= f)) {
            required = required.min(confirmations);
        }
        Some(ObservedPayment {
            invoice_id: found.invoice_id,
            chain: self.spec.caip2.clone(),
            asset: found.asset,
            tx_ref: found.tx_ref,
            address: found.address,
            amount: found.amount,
            confirmations,
            confirmations_required: required,
            block: found.block,
        })
    }
}
