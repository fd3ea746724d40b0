//! Sweeps: confirmed deposits move from their forwarder address to the treasury through the
//! `ForwarderFactory` (which deploys the forwarder on first use), paid by the hot wallet. The hot
//! wallet only pays gas; it never holds customer funds.
//!
//! Invariants:
//! - One sweeper per chain: it runs only while it holds the chain's sweep lock
//!   ([`crate::db::leader`]), checked before every pass.
//! - A deposit address is swept only when every payment seen at it is confirmed, so unconfirmed
//!   funds are not moved on purpose.
//! - The sweep row (naming the payments it covers) commits before anything is signed, and the
//!   signed transaction (hash, nonce, bytes) is stored before it is broadcast. After a crash at any
//!   point the next pass looks at the chain first: a stored transaction with a receipt settles the
//!   sweep; one not mined whose nonce is still free is sent again, the same bytes; a forwarder
//!   swept by a transaction the store does not know (its `Swept` event, after the covered
//!   payments) settles the sweep with that transaction. Only when none of these holds is a new
//!   transaction signed, so a crash never sends a second sweep beside a live one.
//! - The gas a sweep burns is posted as `expenses:network_fees` against the chain's asset account,
//!   keyed by the sweep, so it is booked once.
//! - Node calls go through the chain's endpoints with failover: reads on the first endpoint that
//!   answers for the right chain, broadcasts to every endpoint.

use std::sync::Arc;
use std::time::Duration;

use alloy::eips::eip2718::Encodable2718;
use alloy::network::{Ethereum, EthereumWallet, NetworkTransactionBuilder, TransactionBuilder};
use alloy::primitives::{Address, B256, U256};
use alloy::providers::{Provider, RootProvider};
use alloy::rpc::types::{TransactionReceipt, TransactionRequest};
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::{SolCall, SolEvent};
use sqlx::{PgPool, Row};
use thiserror::Error;

use crate::evm::contracts::ForwarderFactory;
use crate::evm::deposit_salt;
use crate::evm::nonce::{highest_stored_nonce, SignerLock};
use crate::evm::client::{Broadcast, EvmClient};
use crate::config::ChainSpec;
use crate::db::leader::{HeldJob, JobLock, Leadership, Next, LOCK_RETRY_MS_DEFAULT};
use crate::db::replicas::Share;
use crate::ids::new_id;
use crate::ledger::{AccountCode, Ledger, LedgerError, NewEntry};
use crate::money::Amount;

/// Most deposit addresses swept in one pass.
pub const SWEEPS_PER_PASS_MAX: i64 = 50;
/// Pause between passes.
pub const SWEEP_INTERVAL_MS: u64 = 15_000;
/// How long to wait for a sweep's receipt before looking again on the next pass.
pub const RECEIPT_TIMEOUT_MS: u64 = 60_000;
/// How often a receipt is asked for while waiting.
pub const RECEIPT_POLL_MS: u64 = 250;
/// Gas estimates are raised by this much (percent) before signing.
pub const GAS_HEADROOM_PERCENT: u64 = 20;
/// How far back a forwarder's `Swept` event is looked for when no stored transaction was mined.
pub const SWEPT_SEARCH_BLOCKS: u64 = 50_000;
/// Blocks per `eth_getLogs` call (common providers refuse more than 2,000).
pub const LOG_RANGE_BLOCKS: u64 = 2_000;

#[derive(Debug, Error)]
pub enum SweepError {
    #[error("chain {chain} has no forwarder factory configured")]
    NoFactory { chain: String },
    #[error("invalid hot wallet key")]
    Key,
    #[error("invalid endpoint: {0}")]
    Endpoint(String),
    #[error("chain {chain}: {message}")]
    Rpc { chain: String, message: String },
    #[error("sweep {sweep_id}: {message}")]
    Send { sweep_id: String, message: String },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// What a pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepPass {
    pub confirmed: usize,
    pub failed: usize,
}

/// A sweep not final yet, as stored.
#[derive(Debug, Clone)]
struct OpenSweep {
    id: String,
    invoice_id: String,
    tx_hash: Option<String>,
    nonce: Option<u64>,
    raw_tx: Option<Vec<u8>>,
}

/// Whether a freshly signed transaction leaves at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SendMode {
    Broadcast,
    /// Stored only: the state a crash between signing and broadcasting leaves.
    StoreOnly,
}

pub struct Sweeper {
    chain: ChainSpec,
    caip2: String,
    factory: Address,
    tokens: Vec<Address>,
    signer: PrivateKeySigner,
    wallet: EthereumWallet,
    client: EvmClient,
    pool: PgPool,
    ledger: Arc<Ledger>,
    interval: Duration,
    /// The replica's share of the job locks (`None`: the sweep lock is taken whenever free).
    share: Option<Share>,
}

impl std::fmt::Debug for Sweeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The signer is left out on purpose: nothing about the key is ever printed.
        f.debug_struct("Sweeper").field("chain", &self.chain.name).field("sender", &self.signer.address()).finish()
    }
}

impl Sweeper {
    /// `hot_wallet_key` is a hex private key; it is never logged.
    pub fn new(chain: ChainSpec, hot_wallet_key: &str, pool: PgPool, ledger: Arc<Ledger>) -> Result<Self, SweepError> {
        let factory = chain.forwarder_factory.ok_or_else(|| SweepError::NoFactory { chain: chain.name.clone() })?;
        let signer: PrivateKeySigner = hot_wallet_key.trim().parse().map_err(|_| SweepError::Key)?;
        let client = EvmClient::for_chain(&chain).map_err(|e| SweepError::Endpoint(e.to_string()))?;
        let tokens = chain.tokens.iter().map(|t| t.address).collect();
        Ok(Self {
            caip2: chain.caip2.to_string(),
            chain,
            factory,
            tokens,
            wallet: EthereumWallet::from(signer.clone()),
            signer,
            client,
            pool,
            ledger,
            interval: Duration::from_millis(SWEEP_INTERVAL_MS),
            share: None,
        })
    }

    /// Counts the job's lock in the replica's `share` (see [`crate::db::replicas`]).
    #[must_use]
    pub fn spread(mut self, share: Option<Share>) -> Self {
        self.share = share;
        self
    }

    /// Passes every `interval` instead of [`SWEEP_INTERVAL_MS`] (and attempts at the lock as often, if
    /// that is more often than every [`LOCK_RETRY_MS_DEFAULT`]).
    #[must_use]
    pub fn every(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// The advisory lock one sweeper per chain holds.
    pub fn lock_name(&self) -> String {
        format!("payrail.sweep.{}", self.caip2)
    }

    /// Sweeps until `shutdown` fires, while holding the chain's sweep lock: other replicas' sweepers
    /// wait, and take over when this one's session ends.
    pub async fn run(mut self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        // Tried at least every LOCK_RETRY_MS_DEFAULT whatever the sweep interval: the sweeps of a
        // dead replica's chain are taken over within seconds.
        let retry = self.interval.min(Duration::from_millis(LOCK_RETRY_MS_DEFAULT));
        let lock = JobLock::new(self.pool.clone(), self.lock_name()).retry_every(retry).spread(self.share.clone());
        let Ok(()) = lock.hold(&mut self, &mut shutdown).await;
    }

    fn rpc_error(&self, message: impl std::fmt::Display) -> SweepError {
        SweepError::Rpc { chain: self.chain.name.clone(), message: message.to_string() }
    }

    /// The first endpoint that answers and serves this chain.
    async fn provider(&self) -> Result<RootProvider<Ethereum>, SweepError> {
        self.client.provider().await.map_err(|e| self.rpc_error(e))
    }

    /// One pass: resume open sweeps, then sweep every address whose deposits are all confirmed.
    pub async fn pass(&self) -> Result<SweepPass, SweepError> {
        let provider = self.provider().await?;
        let mut pass = SweepPass::default();
        for sweep in self.open_sweeps().await? {
            self.resume(&provider, &sweep, &mut pass).await?;
        }
        for sweep in self.create_ready().await? {
            self.send(&provider, &sweep, SendMode::Broadcast, &mut pass).await?;
        }
        Ok(pass)
    }

    /// Writes the sweeps of every ready address and signs and stores their transactions without
    /// broadcasting them: the state a crash between signing and sending leaves. The next
    /// [`Sweeper::pass`] sends the same bytes. Returns how many were signed.
    pub async fn sign_only(&self) -> Result<usize, SweepError> {
        let provider = self.provider().await?;
        let mut pass = SweepPass::default();
        let created = self.create_ready().await?;
        for sweep in &created {
            self.send(&provider, sweep, SendMode::StoreOnly, &mut pass).await?;
        }
        Ok(created.len())
    }

    async fn open_sweeps(&self) -> Result<Vec<OpenSweep>, SweepError> {
        let rows = sqlx::query(
            "SELECT id, invoice_id, tx_hash, nonce, raw_tx FROM sweeps WHERE chain = $1 AND status IN ('pending', 'sent') \
             ORDER BY created_at, id",
        )
        .bind(&self.caip2)
        .fetch_all(&self.pool)
        .await?;
        let mut open = Vec::with_capacity(rows.len());
        for row in rows {
            let nonce: Option<i64> = row.try_get("nonce")?;
            open.push(OpenSweep {
                id: row.try_get("id")?,
                invoice_id: row.try_get("invoice_id")?,
                tx_hash: row.try_get("tx_hash")?,
                nonce: nonce.and_then(|n| u64::try_from(n).ok()),
                raw_tx: row.try_get("raw_tx")?,
            });
        }
        Ok(open)
    }

    /// A sweep row per address whose deposits are all confirmed, each committed with the mark on
    /// the payments it covers.
    async fn create_ready(&self) -> Result<Vec<OpenSweep>, SweepError> {
        let ready = sqlx::query(
            "SELECT p.invoice_id, lower(p.address) AS address FROM payments p \
             WHERE p.chain = $1 AND p.status = 'confirmed' AND p.sweep_id IS NULL AND p.address IS NOT NULL \
               AND NOT EXISTS (SELECT 1 FROM payments q WHERE q.chain = p.chain AND lower(q.address) = lower(p.address) \
                               AND q.status = 'seen') \
             GROUP BY p.invoice_id, lower(p.address) LIMIT $2",
        )
        .bind(&self.caip2)
        .bind(SWEEPS_PER_PASS_MAX)
        .fetch_all(&self.pool)
        .await?;
        let mut created = Vec::with_capacity(ready.len());
        for row in ready {
            let invoice_id: String = row.try_get("invoice_id")?;
            let address: String = row.try_get("address")?;
            let sweep_id = new_id("swp");
            let mut tx = self.pool.begin().await?;
            sqlx::query("INSERT INTO sweeps (id, chain, invoice_id, address, status) VALUES ($1, $2, $3, $4, 'pending')")
                .bind(&sweep_id)
                .bind(&self.caip2)
                .bind(&invoice_id)
                .bind(&address)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "UPDATE payments SET sweep_id = $1 WHERE chain = $2 AND lower(address) = $3 AND status = 'confirmed' \
                 AND sweep_id IS NULL",
            )
            .bind(&sweep_id)
            .bind(&self.caip2)
            .bind(&address)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            created.push(OpenSweep { id: sweep_id, invoice_id, tx_hash: None, nonce: None, raw_tx: None });
        }
        Ok(created)
    }

    /// Takes an open sweep from wherever a crash left it; see the module docs for the order.
    async fn resume(&self, provider: &RootProvider<Ethereum>, sweep: &OpenSweep, pass: &mut SweepPass) -> Result<(), SweepError> {
        let stored_hash = match &sweep.tx_hash {
            Some(hash) => Some(hash.parse::<B256>().map_err(|_| SweepError::Send {
                sweep_id: sweep.id.clone(),
                message: format!("stored hash {hash} is invalid"),
            })?),
            None => None,
        };
        if let Some(hash) = stored_hash {
            if let Some(receipt) = self.receipt(provider, hash).await? {
                return self.settle(&sweep.id, &receipt, pass).await;
            }
        }
        if let (Some(hash), Some(raw), Some(nonce)) = (stored_hash, &sweep.raw_tx, sweep.nonce) {
            let taken = provider.get_transaction_count(self.signer.address()).latest().await.map_err(|e| self.rpc_error(e))?;
            if taken <= nonce {
                // Not mined, and its nonce is still free: the same bytes again, never a new sweep.
                if let Broadcast::Refused(message) = self.client.broadcast_raw(raw).await {
                    // Kept as it is (a wallet short of gas is funded later); the next pass tries again.
                    tracing::warn!(target: "sweeper", chain = %self.chain.name, sweep = %sweep.id, tx = %hash, %message, "stored sweep refused");
                    return Ok(());
                }
                return self.await_receipt(provider, &sweep.id, hash, pass).await;
            }
            // The nonce is used: by this transaction, mined since the first look, or by another.
            if let Some(receipt) = self.receipt(provider, hash).await? {
                return self.settle(&sweep.id, &receipt, pass).await;
            }
        }
        // Nothing stored was mined. The forwarder may still have been swept, by a transaction the
        // store never learned of (sent before its hash could be written).
        if let Some(receipt) = self.swept_receipt(provider, sweep).await? {
            return self.settle(&sweep.id, &receipt, pass).await;
        }
        if sweep.tx_hash.is_some() {
            // Dropped or never sent and its nonce gone: a new transaction is signed below.
            sqlx::query(
                "UPDATE sweeps SET status = 'pending', tx_hash = NULL, sender = NULL, nonce = NULL, raw_tx = NULL, \
                 updated_at = now() WHERE id = $1",
            )
            .bind(&sweep.id)
            .execute(&self.pool)
            .await?;
        }
        self.send(provider, sweep, SendMode::Broadcast, pass).await
    }

    async fn receipt(&self, provider: &RootProvider<Ethereum>, hash: B256) -> Result<Option<TransactionReceipt>, SweepError> {
        provider.get_transaction_receipt(hash).await.map_err(|e| self.rpc_error(e))
    }

    /// The receipt of a transaction whose `Swept` event names this sweep's forwarder, in a block
    /// after every payment the sweep covers (an earlier one moved other funds).
    async fn swept_receipt(&self, provider: &RootProvider<Ethereum>, sweep: &OpenSweep) -> Result<Option<TransactionReceipt>, SweepError> {
        let covered: Option<i64> = sqlx::query_scalar("SELECT max(block_height) FROM payments WHERE sweep_id = $1")
            .bind(&sweep.id)
            .fetch_one(&self.pool)
            .await?;
        let tip = provider.get_block_number().await.map_err(|e| self.rpc_error(e))?;
        let after = covered.and_then(|h| u64::try_from(h).ok()).map_or(0, |h| h + 1);
        let floor = tip.saturating_sub(SWEPT_SEARCH_BLOCKS).max(after);
        if floor > tip {
            return Ok(None);
        }
        let mut end = tip;
        loop {
            let start = end.saturating_sub(LOG_RANGE_BLOCKS - 1).max(floor);
            let filter = alloy::rpc::types::Filter::new()
                .address(self.factory)
                .event_signature(ForwarderFactory::Swept::SIGNATURE_HASH)
                .topic1(deposit_salt(&sweep.invoice_id))
                .from_block(start)
                .to_block(end);
            let logs = provider.get_logs(&filter).await.map_err(|e| self.rpc_error(e))?;
            if let Some(hash) = logs.iter().find_map(|log| log.transaction_hash) {
                return self.receipt(provider, hash).await;
            }
            if start <= floor {
                return Ok(None);
            }
            end = start - 1;
        }
    }

    /// Signs the sweep's transaction, stores it, and (unless `mode` says otherwise) broadcasts it
    /// and waits a while for its receipt. The signer lock is held from picking the nonce until the
    /// transaction is out.
    async fn send(&self, provider: &RootProvider<Ethereum>, sweep: &OpenSweep, mode: SendMode, pass: &mut SweepPass) -> Result<(), SweepError> {
        let lock = SignerLock::acquire(&self.pool, &self.caip2, self.signer.address()).await?;
        let (hash, raw) = self.sign_and_store(provider, sweep).await?;
        if mode == SendMode::StoreOnly {
            lock.release().await?;
            return Ok(());
        }
        let outcome = self.client.broadcast_raw(&raw).await;
        lock.release().await?;
        if let Broadcast::Refused(message) = outcome {
            // Refused for good by every endpoint: forget the bytes, the next pass signs anew.
            sqlx::query(
                "UPDATE sweeps SET status = 'pending', tx_hash = NULL, sender = NULL, nonce = NULL, raw_tx = NULL, \
                 error = $2, updated_at = now() WHERE id = $1",
            )
            .bind(&sweep.id)
            .bind(&message)
            .execute(&self.pool)
            .await?;
            return Err(SweepError::Send { sweep_id: sweep.id.clone(), message });
        }
        self.await_receipt(provider, &sweep.id, hash, pass).await
    }

    /// Estimates, prices, signs, and stores the sweep's transaction before anything is sent.
    async fn sign_and_store(&self, provider: &RootProvider<Ethereum>, sweep: &OpenSweep) -> Result<(B256, Vec<u8>), SweepError> {
        let sender = self.signer.address();
        let input = ForwarderFactory::sweepCall { salt: deposit_salt(&sweep.invoice_id), tokens: self.tokens.clone() }.abi_encode();
        let request = TransactionRequest::default().with_from(sender).with_to(self.factory).with_input(input);
        let gas = provider.estimate_gas(request.clone()).await.map_err(|e| self.rpc_error(e))?;
        let gas_limit = gas.saturating_add(gas.saturating_mul(GAS_HEADROOM_PERCENT) / 100);
        let fees = provider.estimate_eip1559_fees().await.map_err(|e| self.rpc_error(e))?;
        let pending = provider.get_transaction_count(sender).pending().await.map_err(|e| self.rpc_error(e))?;
        // A stored transaction not broadcast yet holds its nonce although no node knows it.
        let stored = highest_stored_nonce(&self.pool, &self.caip2, sender).await?;
        let nonce = stored.map_or(pending, |n| pending.max(n + 1));
        let chain_id = self.chain.caip2.evm_chain_id().ok_or_else(|| self.rpc_error("not an EVM chain"))?;
        let envelope = request
            .with_nonce(nonce)
            .with_gas_limit(gas_limit)
            .with_max_fee_per_gas(fees.max_fee_per_gas.max(fees.max_priority_fee_per_gas))
            .with_max_priority_fee_per_gas(fees.max_priority_fee_per_gas)
            .with_chain_id(chain_id)
            .build(&self.wallet)
            .await
            .map_err(|e| SweepError::Send { sweep_id: sweep.id.clone(), message: format!("signing: {e}") })?;
        let hash = *envelope.tx_hash();
        let raw = envelope.encoded_2718();
        let nonce_db = i64::try_from(nonce).map_err(|_| self.rpc_error(format!("nonce {nonce} out of range")))?;
        sqlx::query(
            "UPDATE sweeps SET status = 'sent', tx_hash = $2, sender = $3, nonce = $4, raw_tx = $5, error = NULL, \
             updated_at = now() WHERE id = $1",
        )
        .bind(&sweep.id)
        .bind(format!("{hash:#x}"))
        .bind(format!("{sender:#x}"))
        .bind(nonce_db)
        .bind(&raw)
        .execute(&self.pool)
        .await?;
        tracing::info!(target: "sweeper", chain = %self.chain.name, sweep = %sweep.id, tx = %hash, nonce, "sweep signed and stored");
        Ok((hash, raw))
    }

    /// Waits up to [`RECEIPT_TIMEOUT_MS`] for `hash` to be mined and settles the sweep; without a
    /// receipt by then the next pass looks again.
    async fn await_receipt(&self, provider: &RootProvider<Ethereum>, sweep_id: &str, hash: B256, pass: &mut SweepPass) -> Result<(), SweepError> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(RECEIPT_TIMEOUT_MS);
        loop {
            if let Some(receipt) = self.receipt(provider, hash).await? {
                return self.settle(sweep_id, &receipt, pass).await;
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(RECEIPT_POLL_MS)).await;
        }
    }

    /// Settles the sweep from the receipt of the transaction that swept it: books the gas, then
    /// `confirmed`, or `failed` with the deposits released for a later sweep.
    async fn settle(&self, sweep_id: &str, receipt: &TransactionReceipt, pass: &mut SweepPass) -> Result<(), SweepError> {
        let fee = Amount::from_u256(U256::from(receipt.gas_used) * U256::from(receipt.effective_gas_price));
        let native = self.chain.native_asset_id().to_string();
        let hash = format!("{:#x}", receipt.transaction_hash);
        let mut tx = self.pool.begin().await?;
        let entry_id = if fee.is_zero() {
            None
        } else {
            let entry = NewEntry::new(format!("sweep-gas:{sweep_id}"), "network_fee")
                .memo(format!("sweep {sweep_id} {hash}"))
                .debit(AccountCode::network_fees(), native.clone(), fee)
                .credit(AccountCode::chain_assets(&self.chain.caip2), native, fee);
            Some(self.ledger.post(&mut tx, &entry).await?.entry_id)
        };
        let (status, error) = if receipt.status() { ("confirmed", None) } else { ("failed", Some("reverted")) };
        // The stored bytes stay only when they are the transaction that was mined.
        sqlx::query(
            "UPDATE sweeps SET status = $2, gas_fee = $3::numeric, ledger_entry_id = $4, error = $5, \
             raw_tx = CASE WHEN tx_hash = $6 THEN raw_tx END, nonce = CASE WHEN tx_hash = $6 THEN nonce END, \
             tx_hash = $6, updated_at = now() WHERE id = $1",
        )
        .bind(sweep_id)
        .bind(status)
        .bind(fee.to_string())
        .bind(entry_id)
        .bind(error)
        .bind(&hash)
        .execute(&mut *tx)
        .await?;
        if receipt.status() {
            pass.confirmed += 1;
        } else {
            // Reverted: the deposits stay where they are and are picked up by a later pass.
            sqlx::query("UPDATE payments SET sweep_id = NULL WHERE sweep_id = $1").bind(sweep_id).execute(&mut *tx).await?;
            pass.failed += 1;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// A failed sweep pass is retried at the next one: the sweeper never stops by itself.
impl HeldJob for Sweeper {
    type Error = std::convert::Infallible;

    fn started(&mut self, _leadership: &Leadership) {
        tracing::info!(target: "sweeper", chain = %self.chain.name, "sweeping");
    }

    async fn pass(&mut self, _leadership: &mut Leadership, _shutdown: &mut tokio::sync::watch::Receiver<bool>) -> Result<Next, Self::Error> {
        match Sweeper::pass(self).await {
            Ok(pass) if pass.confirmed + pass.failed > 0 => {
                tracing::info!(target: "sweeper", chain = %self.chain.name, confirmed = pass.confirmed, failed = pass.failed, "sweep pass");
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(target: "sweeper", chain = %self.chain.name, %error, "sweep pass failed; retrying"),
        }
        Ok(Next::After(self.interval))
    }
}
