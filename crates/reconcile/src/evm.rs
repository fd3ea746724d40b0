//! Reading an EVM chain for reconciliation: every native and ERC-20 transfer to payrail's deposit
//! addresses, every `PayoutSent` of the batcher and every `Swept` of the forwarder factory in a block
//! range, straight from the node. Blocks are fetched with bounded parallelism.

use std::collections::{BTreeMap, HashSet};

use alloy::eips::BlockNumberOrTag;
use alloy::network::Ethereum;
use alloy::primitives::{Address, B256, U256};
use alloy::providers::{Provider, RootProvider};
use alloy::rpc::types::Filter;
use alloy::sol_types::SolEvent;
use chrono::{DateTime, TimeZone, Utc};
use futures::{StreamExt, TryStreamExt};

use crate::chain::evm::contracts::{ForwarderFactory, PayoutBatcher};
use crate::chain::evm::EvmClient;
use crate::config::ChainSpec;
use crate::money::Amount;

use super::error::{ReconcileError, Result};
use super::model::{ChainObservation, ItemKind};

/// Blocks fetched at once.
pub const BLOCK_FETCHES_MAX: usize = 8;
/// Deposit addresses per `eth_getLogs` filter.
pub const ADDRESSES_PER_FILTER_MAX: usize = 500;
/// Blocks per `eth_getLogs` call (common providers refuse more than 2,000).
pub const LOG_RANGE_MAX: u64 = 2_000;

/// The chain's answers the comparison needs.
pub struct EvmReader {
    spec: ChainSpec,
    rpc: EvmClient,
    provider: RootProvider<Ethereum>,
}

impl EvmReader {
    pub async fn connect(spec: &ChainSpec) -> Result<Self> {
        let rpc = EvmClient::for_chain(spec).map_err(|e| chain_error(spec, e))?;
        let provider = rpc.provider().await.map_err(|e| chain_error(spec, e))?;
        Ok(Self { spec: spec.clone(), rpc, provider })
    }

    fn error(&self, e: impl std::fmt::Display) -> ReconcileError {
        chain_error(&self.spec, e)
    }

    pub async fn tip(&self) -> Result<u64> {
        self.rpc.tip().await.map_err(|e| self.error(e))
    }

    /// The block's timestamp; `None` past the tip.
    pub async fn block_time(&self, height: u64) -> Result<Option<DateTime<Utc>>> {
        let block = self.provider.get_block_by_number(BlockNumberOrTag::Number(height)).await.map_err(|e| self.error(e))?;
        Ok(block.and_then(|b| Utc.timestamp_opt(i64::try_from(b.header.timestamp).unwrap_or(i64::MAX), 0).single()))
    }

    /// The hash of the chain's block at `height`, if there is one.
    pub async fn canonical_hash(&self, height: u64) -> Result<Option<String>> {
        let block = self.provider.get_block_by_number(BlockNumberOrTag::Number(height)).await.map_err(|e| self.error(e))?;
        Ok(block.map(|b| format!("{:#x}", b.header.hash)))
    }

    /// Where a transaction was mined, if it was.
    pub async fn locate(&self, tx_hash: &str) -> Result<Option<u64>> {
        let Ok(hash) = tx_hash.parse::<B256>() else {
            return Ok(None);
        };
        let receipt = self.provider.get_transaction_receipt(hash).await.map_err(|e| self.error(e))?;
        Ok(receipt.and_then(|r| if r.status() { r.block_number } else { None }))
    }

    /// The native balance of `address` just before and at the end of block `height`.
    pub async fn native_delta(&self, address: Address, height: u64) -> Result<(U256, U256)> {
        let before = self.rpc.balance_at(address, height.saturating_sub(1)).await.map_err(|e| self.error(e))?;
        let after = self.rpc.balance_at(address, height).await.map_err(|e| self.error(e))?;
        Ok((before, after))
    }

    /// What `address` holds of `asset` now (native coin or a configured token).
    pub async fn holding(&self, address: Address, asset: &str) -> Result<Amount> {
        let token = self.spec.tokens.iter().find(|t| t.asset_id().to_string() == asset).map(|t| t.address);
        self.rpc
            .balance_of(address, token.unwrap_or(Address::ZERO))
            .await
            .map(Amount::from_u256)
            .map_err(|e| self.error(e))
    }

    fn asset_of(&self, token: Address) -> String {
        if token == Address::ZERO {
            return self.spec.native_asset_id().to_string();
        }
        self.spec
            .token_by_address(&token)
            .map(|t| t.asset_id().to_string())
            .unwrap_or_else(|| format!("{}/erc20:{token:#x}", self.spec.caip2))
    }

    async fn logs(&self, address: Address, topic0: B256, from: u64, to: u64) -> Result<Vec<alloy::rpc::types::Log>> {
        let mut out = Vec::new();
        let mut start = from;
        while start <= to {
            let end = to.min(start.saturating_add(LOG_RANGE_MAX - 1));
            let filter = Filter::new().address(address).event_signature(topic0).from_block(start).to_block(end);
            out.extend(self.provider.get_logs(&filter).await.map_err(|e| self.error(e))?);
            start = end + 1;
        }
        Ok(out)
    }

    /// Everything in `[from, to]` that concerns payrail's addresses and contracts.
    pub async fn read(&self, from: u64, to: u64, deposit_addresses: &[Address]) -> Result<Vec<ChainObservation>> {
        let caip2 = self.spec.caip2.to_string();
        let watched: HashSet<Address> = deposit_addresses.iter().copied().collect();
        let mut found = Vec::new();
        // Native coin: top-level transfers in every block, a few blocks at a time.
        let native = self.spec.native_asset_id().to_string();
        let blocks: Vec<_> = futures::stream::iter(from..=to)
            .map(|height| self.rpc.block(height))
            .buffered(BLOCK_FETCHES_MAX)
            .try_collect()
            .await
            .map_err(|e| self.error(e))?;
        for block in blocks {
            for transfer in block.transfers.iter().filter(|t| watched.contains(&t.to)) {
                // A reverted transaction moved nothing.
                if !self.rpc.succeeded(transfer.tx_hash).await.map_err(|e| self.error(e))? {
                    continue;
                }
                found.push(ChainObservation {
                    kind: ItemKind::Deposit,
                    reference: format!("{caip2}:{:#x}:native", transfer.tx_hash),
                    tx_hash: format!("{:#x}", transfer.tx_hash),
                    block_number: block.block.height,
                    asset: native.clone(),
                    address: transfer.to.to_checksum(None),
                    amount: Amount::from_u256(transfer.value),
                });
            }
        }
        // Tokens: `Transfer` logs to the deposit addresses.
        let tokens: Vec<Address> = self.spec.tokens.iter().map(|t| t.address).collect();
        for chunk in deposit_addresses.chunks(ADDRESSES_PER_FILTER_MAX) {
            let transfers = self.rpc.token_transfers_split(from, to, &tokens, Some(chunk)).await.map_err(|e| self.error(e))?;
            for t in transfers {
                found.push(ChainObservation {
                    kind: ItemKind::Deposit,
                    reference: format!("{caip2}:{:#x}:{}", t.tx_hash, t.log_index),
                    tx_hash: format!("{:#x}", t.tx_hash),
                    block_number: t.block_height,
                    asset: self.asset_of(t.token),
                    address: t.to.to_checksum(None),
                    amount: Amount::from_u256(t.value),
                });
            }
        }
        // Payouts: one observation per batch, the sum of its `PayoutSent` events.
        if let Some(batcher) = self.spec.payout_batcher {
            let mut batches: BTreeMap<(B256, Address), (String, u64, U256, usize)> = BTreeMap::new();
            for log in self.logs(batcher, PayoutBatcher::PayoutSent::SIGNATURE_HASH, from, to).await? {
                let Ok(event) = log.log_decode::<PayoutBatcher::PayoutSent>() else { continue };
                let data = event.inner.data;
                let tx = log.transaction_hash.map(|h| format!("{h:#x}")).unwrap_or_default();
                let entry = batches.entry((data.batchId, data.token)).or_insert((tx, log.block_number.unwrap_or(0), U256::ZERO, 0));
                entry.2 = entry.2.saturating_add(data.amount);
                entry.3 += 1;
            }
            for ((batch_id, token), (tx_hash, block_number, total, count)) in batches {
                found.push(ChainObservation {
                    kind: ItemKind::Payout,
                    reference: format!("{batch_id:#x}"),
                    tx_hash,
                    block_number,
                    asset: self.asset_of(token),
                    address: format!("{count} recipient(s)"),
                    amount: Amount::from_u256(total),
                });
            }
        }
        // Sweeps: deposits moved to the treasury.
        if let Some(factory) = self.spec.forwarder_factory {
            for log in self.logs(factory, ForwarderFactory::Swept::SIGNATURE_HASH, from, to).await? {
                let Ok(event) = log.log_decode::<ForwarderFactory::Swept>() else { continue };
                let data = event.inner.data;
                let tx = log.transaction_hash.map(|h| format!("{h:#x}")).unwrap_or_default();
                found.push(ChainObservation {
                    kind: ItemKind::Sweep,
                    reference: format!("{caip2}:{tx}:{}", log.log_index.unwrap_or(0)),
                    tx_hash: tx,
                    block_number: log.block_number.unwrap_or(0),
                    asset: self.asset_of(data.token),
                    address: data.forwarder.to_checksum(None),
                    amount: Amount::from_u256(data.amount),
                });
            }
        }
        Ok(found)
    }
}

fn chain_error(spec: &ChainSpec, e: impl std::fmt::Display) -> ReconcileError {
    ReconcileError::Chain { chain: spec.name.clone(), message: e.to_string() }
}
