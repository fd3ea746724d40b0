//! Sends payout batches through `PayoutBatcher.payout` from the hot wallet and follows them to a
//! final state. The only payout code that talks to an EVM node.
//!
//! Each call to [`PayoutSender::advance`] looks at the chain first and acts second, so it is safe
//! to call again after a crash at any point:
//! 1. a receipt of any stored transaction of the batch → judge it (reverted: fail and return the
//!    balances; success: check its `PayoutSent` events against the batch, wait for the chain's
//!    confirmations or its `finalized` block, then settle);
//! 2. the contract says the batch id is paid but no receipt is known yet → wait, never resend;
//! 3. a stored transaction not mined yet → broadcast the same bytes again, or after
//!    `replace_after_s` sign a replacement with the same nonce and higher fees (within the caps);
//!    if the nonce was taken by another transaction, the batch was dropped: fail, return balances;
//! 4. nothing stored yet → estimate gas (a refusal by the contract fails the batch), price it
//!    (EIP-1559, capped), take a nonce, sign, **store the signed bytes**, then broadcast.

use std::sync::Arc;

use alloy::eips::eip2718::Encodable2718;
use alloy::eips::BlockNumberOrTag;
use alloy::network::{Ethereum, EthereumWallet, NetworkTransactionBuilder, TransactionBuilder};
use alloy::primitives::{Address, B256, U256};
use alloy::providers::{Provider, RootProvider};
use alloy::rpc::types::{TransactionReceipt, TransactionRequest};
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolCall;
use chrono::Duration as ChronoDuration;
use sqlx::PgPool;

use crate::chain::evm::contracts::PayoutBatcher;
use crate::chain::evm::nonce::SignerLock;
use crate::chain::evm::client::{Broadcast, EvmClient};
use crate::clock::Clock;
use crate::config::{ChainSpec, FinalityTag, PayoutsConfig};
use crate::ledger::Ledger;
use crate::money::Amount;

use super::error::{PayoutError, Result};
use super::store::{self, Attempt, BatchRow, Mined};

/// Gas estimates are raised by this much (percent) before signing: state can change between the
/// estimate and the block.
pub const GAS_HEADROOM_PERCENT: u64 = 20;
/// How long one node call may take.
pub const RPC_TIMEOUT_MS: u64 = 10_000;
/// How far back a batch's `BatchPaid` event is looked for when no stored attempt has a receipt.
pub const BATCH_PAID_SEARCH_BLOCKS: u64 = 50_000;
/// Blocks per `eth_getLogs` call (common providers refuse more than 2,000).
pub const LOG_RANGE_BLOCKS: u64 = 2_000;

/// Where a batch stands after [`PayoutSender::advance`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Nothing sent: the reason (fees above the cap, nonce refused, …).
    Waiting(String),
    /// A transaction is out and not mined yet.
    Pending { tx_hash: B256, replaced: bool },
    /// Mined, not deep enough yet.
    Mined { tx_hash: B256, confirmations: u64, required: u64 },
    Confirmed { tx_hash: B256 },
    Failed(String),
}

impl Progress {
    pub fn is_final(&self) -> bool {
        matches!(self, Self::Confirmed { .. } | Self::Failed(_))
    }
}

pub struct PayoutSender {
    chain: ChainSpec,
    signer: PrivateKeySigner,
    wallet: EthereumWallet,
    client: EvmClient,
    pool: PgPool,
    ledger: Arc<Ledger>,
    config: PayoutsConfig,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for PayoutSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The signer is left out on purpose: nothing about the key is ever printed.
        f.debug_struct("PayoutSender").field("chain", &self.chain.name).field("sender", &self.signer.address()).finish()
    }
}

fn to_u256(amount: Amount) -> U256 {
    amount.as_u256()
}

fn u128_of(amount: Amount) -> u128 {
    u128::try_from(amount.as_u256()).unwrap_or(u128::MAX)
}

/// `value` raised by `bps` basis points, rounded up (a replacement must strictly exceed).
fn bumped(value: u128, bps: u32) -> u128 {
    let raised = value.saturating_mul(10_000 + u128::from(bps));
    raised.div_ceil(10_000).max(value.saturating_add(1))
}

impl PayoutSender {
    /// `hot_wallet_key` is a hex private key; it is never logged.
    pub fn new(
        chain: ChainSpec,
        hot_wallet_key: &str,
        pool: PgPool,
        ledger: Arc<Ledger>,
        config: PayoutsConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        if chain.payout_batcher.is_none() {
            return Err(PayoutError::ChainNotPayable { chain: chain.name.clone() });
        }
        let signer: PrivateKeySigner = hot_wallet_key.trim().parse().map_err(|_| PayoutError::Key)?;
        let client = EvmClient::for_chain(&chain).map_err(|e| PayoutError::Rpc { chain: chain.name.clone(), message: e.to_string() })?;
        Ok(Self { wallet: EthereumWallet::from(signer.clone()), signer, chain, client, pool, ledger, config, clock })
    }

    /// The hot wallet's address: it pays the gas and must be an operator of the batcher.
    pub fn address(&self) -> Address {
        self.signer.address()
    }

    pub fn chain(&self) -> &ChainSpec {
        &self.chain
    }

    fn rpc_error(&self, message: impl std::fmt::Display) -> PayoutError {
        PayoutError::Rpc { chain: self.chain.name.clone(), message: message.to_string() }
    }

    /// The first endpoint that answers and serves this chain.
    async fn provider(&self) -> Result<RootProvider<Ethereum>> {
        self.client.provider().await.map_err(|e| self.rpc_error(e))
    }

    /// Moves one batch as far as the chain allows now; see the module docs for the order of checks.
    pub async fn advance(&self, batch: &BatchRow) -> Result<Progress> {
        let provider = self.provider().await?;
        let attempts = store::attempts(&self.pool, &batch.id).await?;
        if let Some(receipt) = self.any_receipt(&provider, &attempts).await? {
            return self.on_receipt(&provider, batch, &receipt).await;
        }
        let contract = PayoutBatcher::new(batch.batcher, &provider);
        let paid = contract.isBatchPaid(batch.batch_key).call().await.map_err(|e| self.rpc_error(e))?;
        if paid {
            // Paid by a transaction none of the stored attempts names (or whose receipt this node
            // does not have yet): find it by its `BatchPaid` event; never send again.
            if let Some(receipt) = self.paying_receipt(&provider, batch).await? {
                return self.on_receipt(&provider, batch, &receipt).await;
            }
            let note = "paid on chain; waiting for the receipt of its transaction";
            store::note(&self.pool, &batch.id, Some(note), None).await?;
            return Ok(Progress::Waiting(note.to_owned()));
        }
        match attempts.last() {
            Some(last) => self.follow_up(&provider, batch, &attempts, last).await,
            None => self.send(&provider, batch, None).await,
        }
    }

    /// A receipt of any stored attempt; a successful one wins over a reverted one (a batch paid by
    /// one transaction makes any other of its transactions revert with `BatchAlreadyPaid`).
    async fn any_receipt(&self, provider: &RootProvider<Ethereum>, attempts: &[Attempt]) -> Result<Option<TransactionReceipt>> {
        let mut reverted = None;
        for attempt in attempts.iter().rev() {
            let receipt = provider.get_transaction_receipt(attempt.tx_hash).await.map_err(|e| self.rpc_error(e))?;
            match receipt {
                Some(r) if r.status() => return Ok(Some(r)),
                Some(r) => reverted = reverted.or(Some(r)),
                None => {}
            }
        }
        Ok(reverted)
    }

    /// The receipt of the transaction whose `BatchPaid` event names this batch, searched over the
    /// recent `BATCH_PAID_SEARCH_BLOCKS` blocks.
    async fn paying_receipt(&self, provider: &RootProvider<Ethereum>, batch: &BatchRow) -> Result<Option<TransactionReceipt>> {
        let tip = provider.get_block_number().await.map_err(|e| self.rpc_error(e))?;
        let mut end = tip;
        let floor = tip.saturating_sub(BATCH_PAID_SEARCH_BLOCKS);
        loop {
            let start = end.saturating_sub(LOG_RANGE_BLOCKS - 1).max(floor);
            let filter = alloy::rpc::types::Filter::new()
                .address(batch.batcher)
                .event_signature(<PayoutBatcher::BatchPaid as alloy::sol_types::SolEvent>::SIGNATURE_HASH)
                .topic1(batch.batch_key)
                .from_block(start)
                .to_block(end);
            let logs = provider.get_logs(&filter).await.map_err(|e| self.rpc_error(e))?;
            if let Some(hash) = logs.iter().find_map(|log| log.transaction_hash) {
                return provider.get_transaction_receipt(hash).await.map_err(|e| self.rpc_error(e));
            }
            if start <= floor {
                return Ok(None);
            }
            end = start - 1;
        }
    }

    /// A transaction is out and unmined: rebroadcast, replace, or give the batch up as dropped.
    async fn follow_up(
        &self,
        provider: &RootProvider<Ethereum>,
        batch: &BatchRow,
        attempts: &[Attempt],
        last: &Attempt,
    ) -> Result<Progress> {
        let mined_nonce = provider.get_transaction_count(last.sender).latest().await.map_err(|e| self.rpc_error(e))?;
        if mined_nonce > last.nonce {
            // The nonce is used. Look once more, now that the nonce is known to be mined: a receipt
            // of ours may have appeared between the first look and the nonce query.
            if let Some(receipt) = self.any_receipt(provider, attempts).await? {
                return self.on_receipt(provider, batch, &receipt).await;
            }
            // A reorg could still take the other transaction back and mine ours: the batch counts as
            // dropped only once the loss is as deep as a payout must be to settle.
            let tip = provider.get_block_number().await.map_err(|e| self.rpc_error(e))?;
            let Some(lost_at) = batch.nonce_lost_at else {
                store::mark_nonce_lost(&self.pool, &batch.id, Some(tip)).await?;
                let note = format!("nonce {} was used by another transaction; waiting until that is final", last.nonce);
                store::note(&self.pool, &batch.id, Some(&note), None).await?;
                return Ok(Progress::Waiting(note));
            };
            if tip.saturating_sub(lost_at) + 1 < self.confirmations_required() {
                return Ok(Progress::Waiting(format!("nonce {} lost at block {lost_at}; waiting until that is final", last.nonce)));
            }
            let reason = format!("dropped: nonce {} was used by another transaction of {:#x}", last.nonce, last.sender);
            return self.fail(provider, batch, &reason, None).await;
        }
        if batch.nonce_lost_at.is_some() {
            // The other transaction was reorged away: ours can be mined again.
            store::mark_nonce_lost(&self.pool, &batch.id, None).await?;
        }
        let age = self.clock.now() - last.created_at;
        let replace_after = ChronoDuration::seconds(i64::try_from(self.config.replace_after_s).unwrap_or(i64::MAX));
        if age >= replace_after {
            match self.send(provider, batch, Some(last)).await {
                Ok(Progress::Waiting(reason)) => {
                    tracing::warn!(target: "payout", batch = %batch.id, %reason, "stuck payout not replaced");
                }
                other => return other,
            }
        }
        // Not time to replace (or not allowed to): make sure the transaction is still out there.
        self.broadcast(&last.raw_tx).await;
        Ok(Progress::Pending { tx_hash: last.tx_hash, replaced: attempts.len() > 1 })
    }

    /// Signs the batch's first transaction and stores it without broadcasting it: the state a crash
    /// between signing and sending leaves. [`PayoutSender::advance`] then sends the same bytes.
    pub async fn sign_only(&self, batch: &BatchRow) -> Result<Option<Attempt>> {
        let provider = self.provider().await?;
        match self.prepare(&provider, batch, None).await? {
            Prepared::Signed(attempt) => Ok(Some(attempt)),
            Prepared::Final(_) => Ok(None),
        }
    }

    /// Estimates, prices, signs and stores a transaction; or says why there is none.
    async fn prepare(&self, provider: &RootProvider<Ethereum>, batch: &BatchRow, replacing: Option<&Attempt>) -> Result<Prepared> {
        let recipients: Vec<Address> = batch.items.iter().map(|i| i.address).collect();
        let amounts: Vec<U256> = batch.items.iter().map(|i| to_u256(i.amount)).collect();
        let input = PayoutBatcher::payoutCall { batchId: batch.batch_key, token: batch.token, recipients, amounts }.abi_encode();
        let sender = self.address();
        let request = TransactionRequest::default().with_from(sender).with_to(batch.batcher).with_input(input);
        let gas_limit = match replacing {
            Some(previous) => previous.gas_limit,
            None => match provider.estimate_gas(request.clone()).await {
                Ok(gas) => gas.saturating_add(gas.saturating_mul(GAS_HEADROOM_PERCENT) / 100),
                Err(error) => {
                    let message = error.to_string();
                    if error.is_error_resp() && message.to_ascii_lowercase().contains("revert") {
                        // The contract refuses the batch as it stands (funds, operator role, ...).
                        return self.fail(provider, batch, &format!("refused by the batcher: {message}"), None).await.map(Prepared::Final);
                    }
                    return Err(self.rpc_error(message));
                }
            },
        };
        if replacing.is_none() && gas_limit > self.config.gas_per_batch_max {
            let reason = format!("needs {gas_limit} gas, more than gas_per_batch_max {}", self.config.gas_per_batch_max);
            return self.fail(provider, batch, &reason, None).await.map(Prepared::Final);
        }
        let caps = self.config.fee_caps(&self.chain.name);
        let fee_cap = u128_of(caps.max_fee_per_gas_wei_max);
        let tip_cap = u128_of(caps.priority_fee_per_gas_wei_max);
        let estimate = provider.estimate_eip1559_fees().await.map_err(|e| self.rpc_error(e))?;
        let mut tip = estimate.max_priority_fee_per_gas.min(tip_cap);
        let mut max_fee = estimate.max_fee_per_gas;
        if let Some(previous) = replacing {
            // A valid replacement needs both fees raised by the bump; above that, follow the
            // market up to the caps.
            let tip_min = bumped(previous.max_priority_fee_per_gas, self.config.fee_bump_bps);
            let fee_min = bumped(previous.max_fee_per_gas, self.config.fee_bump_bps);
            tip = tip.max(tip_min).min(tip_cap);
            max_fee = max_fee.max(fee_min).min(fee_cap);
            if tip < tip_min || max_fee < fee_min {
                let reason = format!("a replacement would exceed the fee caps (max fee {fee_min} wei, tip {tip_min} wei)");
                store::note(&self.pool, &batch.id, Some(&reason), None).await?;
                return Ok(Prepared::Final(Progress::Waiting(reason)));
            }
        } else if max_fee > fee_cap {
            let base_fee = provider
                .get_block_by_number(BlockNumberOrTag::Latest)
                .await
                .map_err(|e| self.rpc_error(e))?
                .and_then(|block| block.header.base_fee_per_gas)
                .map_or(0, u128::from);
            if base_fee.saturating_add(tip) > fee_cap {
                let reason = format!("base fee {base_fee} wei is above max_fee_per_gas_wei_max {fee_cap}");
                store::note(&self.pool, &batch.id, Some(&reason), None).await?;
                return Ok(Prepared::Final(Progress::Waiting(reason)));
            }
            max_fee = fee_cap;
        }
        let max_fee = max_fee.max(tip);
        let nonce = match replacing {
            Some(previous) => previous.nonce,
            None => {
                let pending =
                    provider.get_transaction_count(sender).pending().await.map_err(|e| self.rpc_error(e))?;
                let ours = store::highest_open_nonce(&self.pool, &self.chain.caip2, sender).await?;
                ours.map_or(pending, |n| pending.max(n + 1))
            }
        };
        let chain_id = self.chain.caip2.evm_chain_id().ok_or_else(|| PayoutError::ChainNotPayable { chain: self.chain.name.clone() })?;
        let request = request
            .with_nonce(nonce)
            .with_gas_limit(gas_limit)
            .with_max_fee_per_gas(max_fee)
            .with_max_priority_fee_per_gas(tip)
            .with_chain_id(chain_id);
        let envelope = request
            .build(&self.wallet)
            .await
            .map_err(|e| PayoutError::Send { id: batch.id.clone(), message: format!("signing: {e}") })?;
        let attempt = Attempt {
            tx_hash: *envelope.tx_hash(),
            sender,
            nonce,
            gas_limit,
            max_fee_per_gas: max_fee,
            max_priority_fee_per_gas: tip,
            raw_tx: envelope.encoded_2718(),
            created_at: self.clock.now(),
        };
        // Stored before it leaves: after a crash these bytes are found and sent again, never a
        // second, different payout transaction with a fresh nonce.
        store::record_attempt(&self.pool, &batch.id, &attempt, self.clock.now()).await?;
        Ok(Prepared::Signed(attempt))
    }

    /// Signs and sends the batch's transaction, or a replacement of `replacing` with the same nonce.
    async fn send(&self, provider: &RootProvider<Ethereum>, batch: &BatchRow, replacing: Option<&Attempt>) -> Result<Progress> {
        // From picking the nonce to broadcasting, no other signer of this wallet on this chain.
        let signer = SignerLock::acquire(&self.pool, &self.chain.caip2.to_string(), self.address()).await?;
        let attempt = match self.prepare(provider, batch, replacing).await? {
            Prepared::Signed(attempt) => attempt,
            Prepared::Final(progress) => {
                signer.release().await?;
                return Ok(progress);
            }
        };
        let broadcast = self.broadcast(&attempt.raw_tx).await;
        signer.release().await?;
        match broadcast {
            Broadcast::Refused(message) => {
                store::forget_attempt(&self.pool, attempt.tx_hash).await?;
                let reason = format!("transaction refused by every endpoint: {message}");
                store::note(&self.pool, &batch.id, Some(&reason), None).await?;
                Ok(Progress::Waiting(reason))
            }
            Broadcast::Accepted | Broadcast::Unknown => {
                store::note(&self.pool, &batch.id, None, None).await?;
                tracing::info!(target: "payout", batch = %batch.id, tx = %attempt.tx_hash, nonce = attempt.nonce, max_fee = attempt.max_fee_per_gas, tip = attempt.max_priority_fee_per_gas,
                    replacement = replacing.is_some(), "payout transaction sent");
                Ok(Progress::Pending { tx_hash: attempt.tx_hash, replaced: replacing.is_some() })
            }
        }
    }

    /// Sends the signed bytes to every endpoint.
    async fn broadcast(&self, raw: &[u8]) -> Broadcast {
        self.client.broadcast_raw(raw).await
    }

    fn confirmations_required(&self) -> u64 {
        u64::from(self.chain.confirmations.confirmations_max())
    }

    async fn on_receipt(
        &self,
        provider: &RootProvider<Ethereum>,
        batch: &BatchRow,
        receipt: &TransactionReceipt,
    ) -> Result<Progress> {
        let tx_hash = receipt.transaction_hash;
        let (Some(block_number), Some(block_hash)) = (receipt.block_number, receipt.block_hash) else {
            return Ok(Progress::Pending { tx_hash, replaced: false });
        };
        let gas_fee = Amount::from_u256(U256::from(receipt.gas_used) * U256::from(receipt.effective_gas_price));
        let mined = Mined { tx_hash, block_number, block_hash, gas_fee };
        let tip = provider.get_block_number().await.map_err(|e| self.rpc_error(e))?;
        let confirmations = tip.saturating_sub(block_number) + 1;
        let required = self.confirmations_required();
        if !receipt.status() {
            // A reverted transaction in a block a reorg can still take back may be mined again,
            // in another order, and succeed: the batch fails only once the revert is as deep as a
            // payout must be to settle.
            if confirmations < required {
                store::note(&self.pool, &batch.id, Some("its transaction reverted; waiting until that is final"), None).await?;
                return Ok(Progress::Mined { tx_hash, confirmations, required });
            }
            return self.fail(provider, batch, &format!("transaction {tx_hash:#x} reverted"), Some(&mined)).await;
        }
        self.check_events(batch, receipt)?;
        let finalized = if self.chain.has_finality_tag(FinalityTag::Finalized) && confirmations < required {
            provider
                .get_block_by_number(BlockNumberOrTag::Finalized)
                .await
                .ok()
                .flatten()
                .is_some_and(|block| block.header.number >= block_number)
        } else {
            false
        };
        if confirmations < required && !finalized {
            store::note(&self.pool, &batch.id, None, Some(&mined)).await?;
            return Ok(Progress::Mined { tx_hash, confirmations, required });
        }
        // Deep enough; make sure the block is still the chain's before booking it.
        let canonical = provider
            .get_block_by_number(BlockNumberOrTag::Number(block_number))
            .await
            .map_err(|e| self.rpc_error(e))?
            .is_some_and(|block| block.header.hash == block_hash);
        if !canonical {
            return Ok(Progress::Pending { tx_hash, replaced: false });
        }
        let native = self.chain.native_asset_id().to_string();
        store::settle(&self.pool, &self.ledger, batch, &self.chain.caip2, &native, &mined, self.clock.now()).await?;
        tracing::info!(target: "payout", batch = %batch.id, tx = %tx_hash, block = block_number, "payout confirmed");
        crate::metrics::count("payrail_payouts_total", "Payout batches finished, by status", &[("chain", &self.chain.name), ("status", "confirmed")], 1);
        Ok(Progress::Confirmed { tx_hash })
    }

    /// The mined transaction must pay exactly the batch: same recipients, token and amounts.
    fn check_events(&self, batch: &BatchRow, receipt: &TransactionReceipt) -> Result<()> {
        let paid: Vec<(Address, Address, U256)> = receipt
            .inner
            .logs()
            .iter()
            .filter(|log| log.address() == batch.batcher)
            .filter_map(|log| log.log_decode::<PayoutBatcher::PayoutSent>().ok())
            .filter(|event| event.inner.data.batchId == batch.batch_key)
            .map(|event| (event.inner.data.recipient, event.inner.data.token, event.inner.data.amount))
            .collect();
        let expected: Vec<(Address, Address, U256)> =
            batch.items.iter().map(|i| (i.address, batch.token, to_u256(i.amount))).collect();
        if paid != expected {
            let error = PayoutError::ReceiptMismatch {
                id: batch.id.clone(),
                tx_hash: format!("{:#x}", receipt.transaction_hash),
                message: format!("{} PayoutSent events, {} items expected", paid.len(), expected.len()),
            };
            tracing::error!(target: "payout", batch = %batch.id, %error, "payout transaction does not match its batch");
            return Err(error);
        }
        Ok(())
    }

    /// Gives the batch up and returns the balances — unless the contract says the batch id was paid,
    /// whatever this node told us about receipts and nonces: then it waits for the paying receipt.
    async fn fail(
        &self,
        provider: &RootProvider<Ethereum>,
        batch: &BatchRow,
        reason: &str,
        mined: Option<&Mined>,
    ) -> Result<Progress> {
        let paid = PayoutBatcher::new(batch.batcher, provider)
            .isBatchPaid(batch.batch_key)
            .call()
            .await
            .map_err(|e| self.rpc_error(e))?;
        if paid {
            let note = format!("not failed ({reason}): the contract says this batch is paid");
            tracing::error!(target: "payout", batch = %batch.id, %reason, "batch looked failed but is paid on chain");
            store::note(&self.pool, &batch.id, Some(&note), None).await?;
            return Ok(Progress::Waiting(note));
        }
        let native = self.chain.native_asset_id().to_string();
        store::fail(&self.pool, &self.ledger, batch, &self.chain.caip2, &native, reason, mined, self.clock.now()).await?;
        tracing::warn!(target: "payout", batch = %batch.id, %reason, "payout failed; balances returned to the creators");
        crate::metrics::count("payrail_payouts_total", "Payout batches finished, by status", &[("chain", &self.chain.name), ("status", "failed")], 1);
        Ok(Progress::Failed(reason.to_owned()))
    }
}

enum Prepared {
    Signed(Attempt),
    /// No transaction: the batch failed or must wait.
    Final(Progress),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replacements_raise_fees_strictly() {
        assert_eq!(bumped(1_000, 1_250), 1_125);
        assert_eq!(bumped(1, 1_000), 2);
        assert_eq!(bumped(0, 1_000), 1);
        assert_eq!(bumped(u128::MAX, 1_000), u128::MAX);
    }
}
