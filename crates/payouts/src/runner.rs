//! Payout runs (which creators, which batches) and the executor that drives open batches.
//!
//! A run only writes: batches, items, the ledger entries moving balances to `payouts_in_flight`.
//! Runs are serialized by a transaction-scoped advisory lock, and a run takes a creator's whole
//! balance, so two runs at once cannot pay a balance twice. Sending is the executor's job: exactly
//! one process holds the executor's advisory lock (a `payrail serve` replica or `payrail payouts
//! run`), so there is one payout executor, never two signing beside each other.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::Address;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::chain::evm::EvmClient;
use crate::clock::Clock;
use crate::config::{ChainKind, ChainSpec, Config, PayoutsConfig};
use crate::db::leader::{HeldJob, JobLock, Leadership, Next};
use crate::db::replicas::Share;
use crate::ledger::Ledger;
use crate::money::{asset_to_fiat, Amount, Fiat, Rounding};
use crate::rates::RateSource;

use super::error::{PayoutError, Result};
use super::plan::{plan, recipients_per_batch, Candidate, SkipReason};
use super::sender::{PayoutSender, Progress};
use super::store::{self, PayoutView};

/// The advisory lock the one payout executor holds.
const EXECUTOR_LOCK: &str = "payrail.payouts.executor";

/// `POST /v1/payouts/run` and `payrail payouts run`: everything, or one chain and/or asset.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// A chain by name (`polygon`) or CAIP-2 id; all payable chains when absent.
    pub chain: Option<String>,
    /// One CAIP-19 asset; every asset of the chosen chains when absent.
    pub asset: Option<String>,
}

/// A creator balance a run left where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SkippedView {
    pub creator_id: String,
    pub chain: String,
    pub asset: String,
    pub amount_minor: String,
    pub reason: SkipReason,
}

/// What a run did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RunSummary {
    pub run_id: String,
    /// The batches written by this run, each now `created` and waiting for the executor.
    pub created: Vec<PayoutView>,
    pub skipped: Vec<SkippedView>,
}

/// One payable asset of a chain.
#[derive(Debug, Clone)]
pub(crate) struct PayableAsset {
    pub(crate) asset: String,
    symbol: String,
    decimals: u8,
    pub(crate) token: Address,
}

impl PayableAsset {
    pub(crate) fn symbol(&self) -> &str {
        &self.symbol
    }

    pub(crate) fn decimals(&self) -> u8 {
        self.decimals
    }
}

pub(crate) fn payable_assets(chain: &ChainSpec) -> Vec<PayableAsset> {
    let mut out = vec![PayableAsset {
        asset: chain.native_asset_id().to_string(),
        symbol: chain.native.symbol.clone(),
        decimals: chain.native.decimals,
        token: Address::ZERO,
    }];
    out.extend(chain.tokens.iter().map(|t| PayableAsset {
        asset: t.asset_id().to_string(),
        symbol: t.symbol.clone(),
        decimals: t.decimals,
        token: t.address,
    }));
    out
}

/// The node client of `chain`.
pub(crate) fn connect(chain: &ChainSpec) -> Result<EvmClient> {
    EvmClient::for_chain(chain).map_err(|e| PayoutError::Rpc { chain: chain.name.clone(), message: e.to_string() })
}

/// Plans and writes payout runs; shared by the API, the CLI and the schedule.
#[derive(Debug)]
pub struct PayoutService {
    chains: Vec<ChainSpec>,
    /// The native coins of chains whose deposits merchants hold (Bitcoin): asset, symbol, decimals.
    merchant_held: Vec<(String, String, u8)>,
    pool: PgPool,
    ledger: Arc<Ledger>,
    rates: Arc<dyn RateSource>,
    config: PayoutsConfig,
    clock: Arc<dyn Clock>,
    executor_running: AtomicBool,
}

impl PayoutService {
    /// One sender per payable chain, signing with `hot_wallet_key` (never logged), sharing this
    /// service's database, ledger, settings and clock; a chain whose sender cannot be built is
    /// returned as its error, for the caller to skip or refuse.
    pub fn senders(&self, hot_wallet_key: &str) -> Vec<(String, Result<PayoutSender>)> {
        self.chains
            .iter()
            .map(|chain| {
                let sender = PayoutSender::new(
                    chain.clone(),
                    hot_wallet_key,
                    self.pool.clone(),
                    self.ledger.clone(),
                    self.config.clone(),
                    self.clock.clone(),
                );
                (chain.name.clone(), sender)
            })
            .collect()
    }

    /// `None` when no enabled chain has a payout batcher.
    pub fn new(
        config: &Config,
        pool: PgPool,
        ledger: Arc<Ledger>,
        rates: Arc<dyn RateSource>,
        clock: Arc<dyn Clock>,
    ) -> Option<Self> {
        Self::with_chains(config.chains().to_vec(), config.payouts.clone(), pool, ledger, rates, clock)
    }

    /// As [`PayoutService::new`], over the given chains (those of kind EVM with a batcher count).
    pub fn with_chains(
        chains: Vec<ChainSpec>,
        config: PayoutsConfig,
        pool: PgPool,
        ledger: Arc<Ledger>,
        rates: Arc<dyn RateSource>,
        clock: Arc<dyn Clock>,
    ) -> Option<Self> {
        let merchant_held = chains
            .iter()
            .filter(|c| c.kind == ChainKind::Bitcoin)
            .map(|c| (c.native_asset_id().to_string(), c.native.symbol.clone(), c.native.decimals))
            .collect();
        let chains: Vec<ChainSpec> =
            chains.into_iter().filter(|c| c.kind == ChainKind::Evm && c.payout_batcher.is_some()).collect();
        (!chains.is_empty())
            .then(|| Self { chains, merchant_held, pool, ledger, rates, config, clock, executor_running: AtomicBool::new(false) })
    }

    pub fn chains(&self) -> &[ChainSpec] {
        &self.chains
    }

    /// The symbol and decimals of `asset` when merchants hold it (the native coin of a Bitcoin chain).
    pub(crate) fn merchant_held(&self, asset: &str) -> Option<(String, u8)> {
        self.merchant_held.iter().find(|(a, _, _)| a == asset).map(|(_, symbol, decimals)| (symbol.clone(), *decimals))
    }

    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub(crate) fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    pub(crate) fn clock(&self) -> &dyn Clock {
        self.clock.as_ref()
    }

    pub(crate) fn rates(&self) -> &dyn RateSource {
        self.rates.as_ref()
    }

    /// How long a changed payout address waits before it is paid to.
    pub(crate) fn address_delay(&self) -> chrono::Duration {
        chrono::Duration::seconds(i64::try_from(self.config.address_change_delay_s).unwrap_or(i64::MAX / 1_000))
    }

    pub fn config(&self) -> &PayoutsConfig {
        &self.config
    }

    /// Whether an executor in this process sends what runs create.
    pub fn executor_running(&self) -> bool {
        self.executor_running.load(Ordering::Relaxed)
    }

    pub fn set_executor_running(&self, running: bool) {
        self.executor_running.store(running, Ordering::Relaxed);
    }

    pub(crate) fn chosen(&self, request: &RunRequest) -> Result<Vec<&ChainSpec>> {
        let chains: Vec<&ChainSpec> = match &request.chain {
            Some(wanted) => {
                let found = self.chains.iter().find(|c| &c.name == wanted || &c.caip2.to_string() == wanted);
                vec![found.ok_or_else(|| PayoutError::ChainNotPayable { chain: wanted.clone() })?]
            }
            None => self.chains.iter().collect(),
        };
        if let Some(asset) = &request.asset {
            let holds = |c: &&ChainSpec| payable_assets(c).iter().any(|a| &a.asset == asset);
            let chains: Vec<&ChainSpec> = chains.into_iter().filter(holds).collect();
            if chains.is_empty() {
                return Err(PayoutError::AssetNotPayable {
                    chain: request.chain.clone().unwrap_or_else(|| "any".to_owned()),
                    asset: asset.clone(),
                });
            }
            return Ok(chains);
        }
        Ok(chains)
    }

    /// What `amount` of `asset` is worth in US cents now, rounded down; `None` without a rate.
    pub(crate) fn usd_cents(&self, asset: &PayableAsset, amount: Amount, now: DateTime<Utc>) -> Option<Amount> {
        let quote = self.rates.quote(&asset.symbol, Fiat::USD, now).ok()?;
        asset_to_fiat(amount, asset.decimals, &quote.rate, Fiat::USD, Rounding::Down).ok()
    }

    /// Whether `candidate`'s balance of `asset` is worth a payout now.
    fn eligible(&self, asset: &PayableAsset, candidate: &Candidate, now: DateTime<Utc>) -> std::result::Result<(), SkipReason> {
        let value = self.usd_cents(asset, candidate.amount, now).ok_or(SkipReason::NoRate)?;
        if value >= self.config.threshold_usd_cents {
            Ok(())
        } else {
            Err(SkipReason::BelowThreshold)
        }
    }

    /// Writes the batches of one run: per chain and asset, every creator above the threshold, as
    /// far as the batcher's funds go, in batches within the recipient and gas bounds.
    pub async fn run(&self, request: &RunRequest) -> Result<RunSummary> {
        let run_id = store::new_run_id();
        let mut summary = RunSummary { run_id: run_id.clone(), created: Vec::new(), skipped: Vec::new() };
        for chain in self.chosen(request)? {
            let (created, skipped) = self.run_chain(&run_id, chain, request.asset.as_deref()).await?;
            summary.created.extend(created);
            summary.skipped.extend(skipped);
        }
        if !summary.created.is_empty() {
            tracing::info!(target: "payout", run = %run_id, batches = summary.created.len(), skipped = summary.skipped.len(), "payout run");
        }
        Ok(summary)
    }

    async fn run_chain(&self, run_id: &str, chain: &ChainSpec, only: Option<&str>) -> Result<(Vec<PayoutView>, Vec<SkippedView>)> {
        let batcher = chain.payout_batcher.ok_or_else(|| PayoutError::ChainNotPayable { chain: chain.name.clone() })?;
        let assets: Vec<PayableAsset> =
            payable_assets(chain).into_iter().filter(|a| only.is_none_or(|wanted| wanted == a.asset)).collect();
        // Funds are read before the transaction: no lock is held across a network call. A balance
        // read low only pays less now; one read high makes the contract refuse and the batch fail.
        let client = connect(chain)?;
        let mut funds = Vec::with_capacity(assets.len());
        for asset in &assets {
            let balance = client
                .balance_of(batcher, asset.token)
                .await
                .map_err(|e| PayoutError::Rpc { chain: chain.name.clone(), message: e.to_string() })?;
            funds.push(Amount::from_u256(balance));
        }
        let now = self.clock.now();
        let recipients_max = recipients_per_batch(self.config.recipients_per_batch_max, self.config.gas_per_batch_max);
        let mut tx = self.pool.begin().await?;
        store::lock_runs(&mut tx).await?;
        let mut created = Vec::new();
        let mut skipped = Vec::new();
        for (asset, balance) in assets.iter().zip(funds) {
            let candidates = store::candidates(&mut tx, &chain.caip2, &asset.asset, now - self.address_delay()).await?;
            if candidates.is_empty() {
                continue;
            }
            let promised = store::promised(&mut tx, &chain.caip2, &asset.asset).await?;
            let available = balance.saturating_sub(promised);
            let planned = plan(candidates, |c| self.eligible(asset, c, now), available, recipients_max);
            for batch in &planned.batches {
                created.push(
                    store::create_batch(&mut tx, &self.ledger, run_id, &chain.caip2, &asset.asset, asset.token, batcher, batch, now)
                        .await?,
                );
            }
            skipped.extend(planned.skipped.into_iter().map(|(c, reason)| SkippedView {
                creator_id: c.creator_id.unwrap_or_default(),
                chain: chain.caip2.to_string(),
                asset: asset.asset.clone(),
                amount_minor: c.amount.to_string(),
                reason,
            }));
        }
        tx.commit().await?;
        Ok((created, skipped))
    }

    /// Runs each chain whose schedule is due; a chain's schedule is stored, so restarts and
    /// replicas keep one rhythm.
    pub async fn run_due(&self) -> Result<Vec<PayoutView>> {
        if self.config.interval_s == 0 {
            return Ok(Vec::new());
        }
        let now = self.clock.now();
        let interval = chrono::Duration::seconds(i64::try_from(self.config.interval_s).unwrap_or(i64::MAX));
        let mut created = Vec::new();
        for chain in &self.chains {
            let last = store::last_scheduled_run(&self.pool, &chain.caip2).await?;
            if last.is_some_and(|at| now - at < interval) {
                continue;
            }
            let request = RunRequest { chain: Some(chain.name.clone()), asset: None };
            // One chain's trouble (a dead endpoint) must not hold up the others' schedules.
            match self.run(&request).await {
                Ok(summary) => created.extend(summary.created),
                Err(error) => {
                    tracing::warn!(target: "payout", chain = %chain.name, %error, "scheduled payout run failed; retrying");
                    continue;
                }
            }
            let mut conn = self.pool.acquire().await?;
            store::mark_scheduled_run(&mut conn, &chain.caip2, now).await?;
        }
        Ok(created)
    }
}

/// The executor's lock, for `payrail serve` and `payrail payouts run` alike.
pub fn executor_lock(pool: &PgPool) -> JobLock {
    JobLock::new(pool.clone(), EXECUTOR_LOCK)
}

/// Takes the executor lock if no other process holds it.
pub async fn try_lock_executor(pool: &PgPool) -> Result<Option<Leadership>> {
    Ok(executor_lock(pool).try_acquire().await?)
}

/// One pass over every open batch of `sender`'s chain.
pub async fn advance_open(pool: &PgPool, sender: &PayoutSender) -> Result<Vec<(String, Progress)>> {
    let mut out = Vec::new();
    for batch in store::open_batches(pool, &sender.chain().caip2).await? {
        match sender.advance(&batch).await {
            Ok(progress) => out.push((batch.id, progress)),
            Err(error) if error.is_retryable() => {
                tracing::warn!(target: "payout", batch = %batch.id, %error, "payout not advanced; retrying");
            }
            Err(error) => {
                tracing::error!(target: "payout", batch = %batch.id, %error, "payout needs attention");
                store::note(pool, &batch.id, Some(&error.to_string()), None).await?;
            }
        }
    }
    Ok(out)
}

/// The executor inside `payrail serve`: waits for the lock, then runs the schedule and advances
/// open batches every `poll_interval_ms` until `shutdown` fires. The lock is checked before every
/// step; when its session ends (a database restart) the executor stops and waits for it again, so
/// two executors never sign beside each other. With a `share`, the lock counts in the replica's
/// share of the jobs and is handed over, between steps, to a replica with fewer.
pub async fn run_executor(
    service: Arc<PayoutService>,
    senders: Vec<PayoutSender>,
    share: Option<Share>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    service.set_executor_running(true);
    let lock = executor_lock(&service.pool).spread(share);
    let poll = Duration::from_millis(service.config.poll_interval_ms);
    let Ok(()) = lock.hold(&mut Executor { service, senders, poll }, &mut shutdown).await;
}

/// The executor while it holds its lock.
struct Executor {
    service: Arc<PayoutService>,
    senders: Vec<PayoutSender>,
    poll: Duration,
}

impl HeldJob for Executor {
    type Error = std::convert::Infallible;

    fn started(&mut self, _leadership: &Leadership) {
        tracing::info!(target: "payout", chains = self.senders.len(), "payout executor running");
    }

    /// The schedule, then every chain's open batches, each only while the lock is still held.
    /// Errors of the work itself are logged and retried at the next pass.
    async fn pass(&mut self, leadership: &mut Leadership, _shutdown: &mut tokio::sync::watch::Receiver<bool>) -> std::result::Result<Next, Self::Error> {
        if let Err(error) = self.service.run_due().await {
            tracing::warn!(target: "payout", %error, "scheduled payout run failed; retrying");
        }
        if let Err(error) = self.service.settle_due().await {
            tracing::warn!(target: "payout", %error, "scheduled settlements failed; retrying");
        }
        for sender in &self.senders {
            if let Err(error) = leadership.ensure_held().await {
                return Ok(Next::Lost(error));
            }
            if let Err(error) = advance_open(&self.service.pool, sender).await {
                tracing::warn!(target: "payout", chain = %sender.chain().name, %error, "payout pass failed; retrying");
            }
        }
        Ok(Next::After(self.poll))
    }
}

/// Advances the given batches until each is final or `deadline` passes; returns the last progress
/// of each. Used by `payrail payouts run` while it holds the executor lock (`leadership`, checked
/// before every pass: a lost lock ends the drive with [`PayoutError::Leader`]).
pub async fn drive(
    pool: &PgPool,
    leadership: &mut Leadership,
    senders: &[PayoutSender],
    batch_ids: &[String],
    poll: Duration,
    deadline: std::time::Instant,
    mut on_progress: impl FnMut(&str, &Progress),
) -> Result<Vec<(String, Progress)>> {
    let mut last: std::collections::BTreeMap<String, Progress> = std::collections::BTreeMap::new();
    loop {
        for sender in senders {
            leadership.ensure_held().await?;
            for (id, progress) in advance_open(pool, sender).await? {
                if batch_ids.contains(&id) {
                    if last.get(&id) != Some(&progress) {
                        on_progress(&id, &progress);
                    }
                    last.insert(id, progress);
                }
            }
        }
        // A batch that is no longer open was finished (possibly by an earlier pass).
        let open: Vec<String> = sqlx::query_scalar("SELECT id FROM payout_batches WHERE id = ANY($1) AND status IN ('created', 'sent')")
            .bind(batch_ids)
            .fetch_all(pool)
            .await?;
        if open.is_empty() || std::time::Instant::now() >= deadline {
            return Ok(batch_ids.iter().map(|id| (id.clone(), last.get(id).cloned().unwrap_or(Progress::Waiting("open".to_owned())))).collect());
        }
        tokio::time::sleep(poll).await;
    }
}
