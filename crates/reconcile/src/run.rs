//! Running a reconciliation of one chain over a block range: scan (chunk by chunk, resumable),
//! then compare with the ledger and store the report.

use std::collections::BTreeMap;

use alloy::primitives::Address;
use chrono::{DateTime, Duration, Utc};
use sqlx::PgPool;

use crate::config::{ChainKind, ChainSpec};
use crate::money::Amount;

use super::compare::{self, unexplained};
use super::error::{ReconcileError, Result};
use super::bitcoin::BitcoinReader;
use super::evm::EvmReader;
use super::ledger_side::{self, Booked};
use super::model::{Category, ChainObservation, Item, ItemKind, LedgerMovement, Report};
use super::store::{self, OpenRun};

/// Blocks read and stored per chunk: the unit of progress and of resuming.
pub const CHUNK_BLOCKS: u64 = 500;
/// Largest range one run may cover.
pub const RANGE_BLOCKS_MAX: u64 = 5_000_000;
/// Ledger entries booked this long before the range's first block still count: a node's and the
/// database's clocks differ.
pub const CLOCK_SKEW_S: i64 = 600;

/// Where a scan is, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanProgress {
    pub from_block: u64,
    pub to_block: u64,
    pub scanned_to: u64,
}

/// A chain's reader.
enum Reader {
    Evm(EvmReader),
    Bitcoin(BitcoinReader),
}

impl Reader {
    async fn connect(spec: &ChainSpec) -> Result<Self> {
        match spec.kind {
            ChainKind::Evm => Ok(Self::Evm(EvmReader::connect(spec).await?)),
            ChainKind::Bitcoin => Ok(Self::Bitcoin(BitcoinReader::connect(spec).await?)),
        }
    }

    async fn tip(&self) -> Result<u64> {
        match self {
            Self::Evm(r) => r.tip().await,
            Self::Bitcoin(r) => r.tip().await,
        }
    }

    async fn block_time(&self, height: u64) -> Result<Option<DateTime<Utc>>> {
        match self {
            Self::Evm(r) => r.block_time(height).await,
            Self::Bitcoin(r) => r.block_time(height).await,
        }
    }

    async fn read(&self, from: u64, to: u64, addresses: &[String]) -> Result<Vec<ChainObservation>> {
        match self {
            Self::Evm(r) => {
                let parsed: Vec<Address> = addresses.iter().filter_map(|a| a.parse().ok()).collect();
                r.read(from, to, &parsed).await
            }
            Self::Bitcoin(r) => r.read(from, to, addresses).await,
        }
    }

    /// Refunds the merchant paid from its own wallet (Bitcoin), mined in `[from, to]`.
    async fn read_refunds(&self, from: u64, to: u64, refunds: &[ledger_side::PaidRefund]) -> Result<Vec<ChainObservation>> {
        match self {
            Self::Evm(_) => Ok(Vec::new()),
            Self::Bitcoin(r) => r.read_refunds(from, to, refunds).await,
        }
    }

    async fn locate(&self, tx_hash: &str) -> Result<Option<u64>> {
        match self {
            Self::Evm(r) => r.locate(tx_hash).await,
            Self::Bitcoin(r) => r.locate(tx_hash).await,
        }
    }

    async fn canonical_hash(&self, height: u64) -> Result<Option<String>> {
        match self {
            Self::Evm(r) => r.canonical_hash(height).await,
            Self::Bitcoin(r) => r.canonical_hash(height).await,
        }
    }

    async fn holding(&self, address: &str, asset: &str) -> Result<Amount> {
        match self {
            Self::Evm(r) => match address.parse::<Address>() {
                Ok(address) => r.holding(address, asset).await,
                Err(_) => Ok(Amount::ZERO),
            },
            Self::Bitcoin(r) => r.holding(address, asset).await,
        }
    }

    /// A credit the watcher found by a balance change rather than a transfer (EVM native coin sent
    /// by a contract): does the address's balance grow by at least `amount` in that block?
    async fn balance_grew(&self, address: &str, height: u64, amount: Amount) -> Result<bool> {
        match self {
            Self::Evm(r) => {
                let Ok(address) = address.parse::<Address>() else { return Ok(false) };
                let (before, after) = r.native_delta(address, height).await?;
                Ok(after.checked_sub(before).is_some_and(|grown| Amount::from_u256(grown) >= amount))
            }
            Self::Bitcoin(r) => r.balance_grew(address, height, amount).await,
        }
    }
}

/// Runs reconciliations of the configured chains.
#[derive(Debug, Clone)]
pub struct Reconciler {
    pool: PgPool,
    chains: Vec<ChainSpec>,
}

impl Reconciler {
    pub fn new(pool: PgPool, chains: Vec<ChainSpec>) -> Self {
        Self { pool, chains }
    }

    fn spec(&self, chain: &str) -> Result<&ChainSpec> {
        self.chains
            .iter()
            .find(|c| c.name == chain || c.caip2.to_string() == chain)
            .ok_or_else(|| ReconcileError::UnknownChain { chain: chain.to_owned() })
    }

    /// Starts a run of `chain` over `[from_block, to_block]` (the tip when `to_block` is absent)
    /// and returns its id; nothing is scanned yet.
    pub async fn start(&self, chain: &str, from_block: u64, to_block: Option<u64>) -> Result<String> {
        let spec = self.spec(chain)?;
        let reader = Reader::connect(spec).await?;
        let tip = reader.tip().await?;
        let to_block = to_block.unwrap_or(tip);
        if from_block > to_block {
            return Err(ReconcileError::Range { message: format!("from_block {from_block} is after to_block {to_block}") });
        }
        if to_block > tip {
            return Err(ReconcileError::Range { message: format!("to_block {to_block} is past the chain's tip {tip}") });
        }
        if to_block - from_block >= RANGE_BLOCKS_MAX {
            return Err(ReconcileError::Range { message: format!("at most {RANGE_BLOCKS_MAX} blocks per run") });
        }
        store::start(&self.pool, &spec.caip2.to_string(), from_block, to_block).await
    }

    /// Scans what is left of run `id`, at most `chunks_max` chunks (all when `None`); each chunk
    /// commits with the run's progress. Returns whether the scan is complete.
    pub async fn scan(&self, id: &str, chunks_max: Option<usize>, on_progress: &(dyn Fn(ScanProgress) + Sync)) -> Result<bool> {
        let run = store::open_run(&self.pool, id).await?;
        let spec = self.spec(&run.source)?;
        let reader = Reader::connect(spec).await?;
        let mut conn = self.pool.acquire().await?;
        let addresses = ledger_side::deposit_addresses(&mut conn, &spec.caip2).await?;
        let refunds = ledger_side::paid_refunds(&mut conn, &spec.caip2).await?;
        drop(conn);
        let mut next = run.scanned_to.map_or(run.from_block, |s| s + 1);
        let mut done = 0usize;
        while next <= run.to_block {
            if chunks_max.is_some_and(|max| done >= max) {
                return Ok(false);
            }
            let end = run.to_block.min(next + CHUNK_BLOCKS - 1);
            let mut observations = reader.read(next, end, &addresses).await?;
            observations.extend(reader.read_refunds(next, end, &refunds).await?);
            store::save_chunk(&self.pool, id, &observations, end).await?;
            on_progress(ScanProgress { from_block: run.from_block, to_block: run.to_block, scanned_to: end });
            next = end + 1;
            done += 1;
        }
        Ok(true)
    }

    /// Scans what is left, compares with the ledger, stores and returns the report.
    pub async fn complete(&self, id: &str, on_progress: &(dyn Fn(ScanProgress) + Sync)) -> Result<Report> {
        self.scan(id, None, on_progress).await?;
        let run = store::open_run(&self.pool, id).await?;
        let spec = self.spec(&run.source)?.clone();
        let reader = Reader::connect(&spec).await?;
        let observations = store::observations(&self.pool, id).await?;
        let report = self.compare(&spec, &reader, &run, observations).await?;
        store::finish(&self.pool, &report).await?;
        Ok(report)
    }

    /// A whole run: start, scan, compare.
    pub async fn run(
        &self,
        chain: &str,
        from_block: u64,
        to_block: Option<u64>,
        on_progress: &(dyn Fn(ScanProgress) + Sync),
    ) -> Result<Report> {
        let id = self.start(chain, from_block, to_block).await?;
        self.complete(&id, on_progress).await
    }

    async fn compare(&self, spec: &ChainSpec, reader: &Reader, run: &OpenRun, observations: Vec<ChainObservation>) -> Result<Report> {
        let caip2 = spec.caip2.to_string();
        let range = run.from_block..=run.to_block;
        let starts = reader.block_time(run.from_block).await?.unwrap_or_else(Utc::now);
        // Entries that name nothing on chain belong to the range by time: booked before the next
        // block (or now, when the range ends at the tip).
        let ends = reader.block_time(run.to_block + 1).await?.unwrap_or_else(Utc::now);
        let mut conn = self.pool.acquire().await?;
        let booked = ledger_side::movements(&mut conn, &spec.caip2, starts - Duration::seconds(CLOCK_SKEW_S)).await?;
        let booked_at: BTreeMap<i64, DateTime<Utc>> = booked.iter().map(|b| (b.movement.entry_id, b.created_at)).collect();
        let mined_in: BTreeMap<i64, u64> =
            booked.iter().filter_map(|b| b.mined_in.map(|m| (b.movement.entry_id, m))).collect();
        let in_window = |entry_id: i64| booked_at.get(&entry_id).is_some_and(|at| *at >= starts && *at < ends);
        let (sweeps, observations): (Vec<ChainObservation>, Vec<ChainObservation>) =
            observations.into_iter().partition(|o| o.kind == ItemKind::Sweep);
        let movements: Vec<LedgerMovement> = booked.into_iter().map(|Booked { movement, .. }| movement).collect();
        let (mut items, leftovers) = compare::match_up(observations, movements);

        for movement in leftovers {
            let item = match movement.kind {
                ItemKind::Deposit => {
                    let tx_ref = movement.reference.clone();
                    let recorded = ledger_side::recorded_payment(&mut conn, &tx_ref).await?;
                    if tx_ref.starts_with(&format!("{caip2}:balance:")) {
                        // Found by a balance change; check the change itself.
                        match recorded {
                            Some(p) if range.contains(&p.height) => {
                                if reader.balance_grew(&p.address, p.height, movement.amount).await? {
                                    let mut item = unexplained(&movement, Category::Matched, "native coin sent by a contract: the balance grew by it");
                                    item.chain_amount_minor = item.ledger_amount_minor.clone();
                                    item.block_number = Some(p.height);
                                    item.address = Some(p.address);
                                    Some(item)
                                } else {
                                    Some(unexplained(&movement, Category::MissingOnChain, "the deposit address's balance did not grow by it"))
                                }
                            }
                            Some(_) => None,
                            None if in_window(movement.entry_id) => {
                                Some(unexplained(&movement, Category::MissingOnChain, "no payment record for this balance credit"))
                            }
                            None => None,
                        }
                    } else {
                        let tx_hash = tx_ref.strip_prefix(&format!("{caip2}:")).and_then(|rest| rest.split(':').next()).unwrap_or("");
                        match reader.locate(tx_hash).await? {
                            Some(height) if range.contains(&height) => Some(unexplained(
                                &movement,
                                Category::MissingOnChain,
                                format!("transaction {tx_hash} is in block {height} but pays no deposit address this much"),
                            )),
                            Some(_) => None,
                            None => match recorded {
                                Some(p) if range.contains(&p.height) => {
                                    let canonical = reader.canonical_hash(p.height).await?;
                                    if canonical.as_deref() != Some(p.hash.as_str()) {
                                        let mut item = unexplained(
                                            &movement,
                                            Category::Orphaned,
                                            format!("credited in block {} {}, which is no longer the chain's", p.height, p.hash),
                                        );
                                        item.block_number = Some(p.height);
                                        Some(item)
                                    } else {
                                        Some(unexplained(&movement, Category::MissingOnChain, format!("transaction {tx_hash} not found")))
                                    }
                                }
                                Some(_) => None,
                                None if in_window(movement.entry_id) => {
                                    Some(unexplained(&movement, Category::MissingOnChain, format!("transaction {tx_hash} not found")))
                                }
                                None => None,
                            },
                        }
                    }
                }
                // A payout belongs to the range its batch was mined in (settlement comes
                // confirmations later, possibly past the range's end).
                ItemKind::Payout if mined_in.contains_key(&movement.entry_id) => {
                    let block = mined_in.get(&movement.entry_id).copied().unwrap_or(0);
                    range.contains(&block).then(|| {
                        let mut item = unexplained(
                            &movement,
                            Category::MissingOnChain,
                            format!("settled as mined in block {block}, no PayoutSent events there"),
                        );
                        item.block_number = Some(block);
                        item
                    })
                }
                ItemKind::Payout | ItemKind::Manual | ItemKind::Sweep | ItemKind::Charge | ItemKind::Refund => {
                    in_window(movement.entry_id).then(|| {
                        let detail = if movement.kind == ItemKind::Payout {
                            "settled in the ledger, no PayoutSent events in the range"
                        } else {
                            "a ledger entry on the chain's account with no chain counterpart"
                        };
                        unexplained(&movement, Category::MissingOnChain, detail)
                    })
                }
            };
            items.extend(item);
        }

        // Sweeps move money between payrail's own addresses; they match the sweeps it recorded.
        for sweep in sweeps {
            let recorded = ledger_side::sweep_recorded(&mut conn, &caip2, &sweep.tx_hash).await?;
            items.push(Item {
                category: if recorded { Category::Matched } else { Category::MissingInLedger },
                kind: ItemKind::Sweep,
                reference: sweep.reference,
                asset: sweep.asset,
                address: Some(sweep.address),
                tx_hash: Some(sweep.tx_hash),
                block_number: Some(sweep.block_number),
                chain_amount_minor: Some(sweep.amount.to_string()),
                ledger_amount_minor: None,
                entry_id: None,
                detail: (!recorded).then(|| "a sweep payrail has no record of".to_owned()),
            });
        }
        drop(conn);

        // Deposits the chain shows (whatever the ledger says of them) still at their deposit address.
        let mut holdings: BTreeMap<(String, String), Amount> = BTreeMap::new();
        for item in items.iter().filter(|i| i.kind == ItemKind::Deposit && i.tx_hash.is_some()) {
            if let Some(address) = &item.address {
                holdings.entry((address.clone(), item.asset.clone())).or_insert(Amount::ZERO);
            }
        }
        for ((address, asset), held) in holdings.iter_mut() {
            *held = reader.holding(address, asset).await?;
        }
        for ((address, asset), held) in holdings {
            if !held.is_zero() {
                items.push(Item {
                    category: Category::Unswept,
                    kind: ItemKind::Deposit,
                    reference: format!("{address}/{asset}"),
                    asset,
                    address: Some(address),
                    tx_hash: None,
                    block_number: None,
                    chain_amount_minor: Some(held.to_string()),
                    ledger_amount_minor: None,
                    entry_id: None,
                    detail: Some("confirmed deposits not yet moved to the treasury".to_owned()),
                });
            }
        }
        Ok(compare::report(&run.id, &caip2, run.from_block, run.to_block, items))
    }
}
