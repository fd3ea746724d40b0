//! The one module that talks to EVM nodes. One [`EvmClient`] per chain serves the watcher, the
//! sweeper, the payout executor and reconciliation alike: several endpoints with failover (each
//! call tries the endpoint that last worked, then the others), each endpoint's chain id checked
//! before it is used and again every [`CHAIN_CHECK_EVERY`] (a node repointed at another network is
//! dropped, not believed), and signed transactions sent to every endpoint.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use alloy::eips::BlockNumberOrTag;
use alloy::network::{Ethereum, TransactionResponse};
use alloy::consensus::Transaction as _;
use alloy::primitives::{Address, Bloom, B256, U256};
use alloy::providers::{Provider, RootProvider};
use alloy::rpc::types::{Filter, Log};
use alloy::sol;
use alloy::sol_types::SolEvent;
use serde::Deserialize;
use thiserror::Error;

use crate::source::Block;
use crate::config::{ChainSpec, RpcUrl};

sol! {
    /// The ERC-20 transfer event.
    event Transfer(address indexed from, address indexed to, uint256 value);
}

sol! {
    #[sol(rpc)]
    interface BalanceOf {
        function balanceOf(address owner) external view returns (uint256);
    }
}

/// Longest a single RPC call may take before the next endpoint is tried.
pub const RPC_TIMEOUT_MS: u64 = 10_000;

/// Most blocks another endpoint may be behind the one in use and still witness against a reorg.
pub const WITNESS_LAG_MAX: u64 = 6;

/// How long an endpoint's chain id, once checked, is trusted before it is asked again.
pub const CHAIN_CHECK_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum RpcError {
    #[error("no EVM endpoint configured")]
    NoEndpoint,
    #[error("invalid endpoint {endpoint}: {message}")]
    Endpoint { endpoint: String, message: String },
    /// Every endpoint failed; retrying later makes sense.
    #[error("{call} failed on every endpoint; last error from {endpoint}: {message}")]
    Unavailable { call: &'static str, endpoint: String, message: String },
    #[error("block {height} not found")]
    MissingBlock { height: u64 },
    /// Every endpoint keeps no state for that block (pruned history: anvil `--prune-history`, a
    /// full node past its state window).
    #[error("no endpoint keeps the state of block {height}: {message}")]
    StateUnavailable { height: u64, message: String },
}

/// A block with what the watcher needs of it: its identity and its top-level value transfers.
#[derive(Debug, Clone)]
pub struct EvmBlock {
    pub block: Block<B256>,
    pub transfers: Vec<NativeTransfer>,
    /// How many transactions the block holds (an empty block has no traces or logs to read).
    pub transactions: usize,
    /// The bloom filter of the block's logs.
    pub logs_bloom: Bloom,
}

impl EvmBlock {
    /// Whether the block may hold a `Transfer` log of one of `tokens`: not when it has no
    /// transaction or its logs' bloom filter rules every token out. A filter of zeros in a block
    /// with transactions is not taken at its word (a node that leaves it empty would hide every
    /// transfer): such a block may hold one.
    pub fn may_hold_transfers(&self, tokens: &[Address]) -> bool {
        self.transactions > 0
            && (self.logs_bloom.is_zero()
                || tokens.iter().any(|token| self.logs_bloom.contains_raw_log(*token, &[Transfer::SIGNATURE_HASH])))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeTransfer {
    pub tx_hash: B256,
    pub to: Address,
    pub value: U256,
}

/// An ERC-20 `Transfer` log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenTransfer {
    pub token: Address,
    pub to: Address,
    pub value: U256,
    pub tx_hash: B256,
    pub log_index: u64,
    pub block_height: u64,
    pub block_hash: B256,
}

/// A chain's EVM endpoints, labelled by URL, with the one that last worked preferred.
#[derive(Debug)]
pub struct EvmClient {
    endpoints: Vec<(String, RootProvider<Ethereum>)>,
    /// Per endpoint, when its chain id was last found right: milliseconds after `created` plus one
    /// (0: never). Read on every call, so an atomic rather than a lock.
    checked: Vec<AtomicU64>,
    created: Instant,
    preferred: AtomicUsize,
    /// The chain id every endpoint must serve (`None`: not checked).
    chain_id: Option<u64>,
}

impl EvmClient {
    /// The client of `chain`'s configured endpoints, expecting its CAIP-2 chain id.
    pub fn for_chain(chain: &ChainSpec) -> Result<Self, RpcError> {
        Self::new(&chain.rpc, chain.caip2.evm_chain_id())
    }

    pub fn new(urls: &[RpcUrl], chain_id: Option<u64>) -> Result<Self, RpcError> {
        if urls.is_empty() {
            return Err(RpcError::NoEndpoint);
        }
        let mut endpoints = Vec::with_capacity(urls.len());
        for url in urls {
            let parsed = alloy::transports::http::reqwest::Url::parse(url.as_str())
                .map_err(|e| RpcError::Endpoint { endpoint: url.to_string(), message: e.to_string() })?;
            endpoints.push((url.to_string(), RootProvider::<Ethereum>::new_http(parsed)));
        }
        let checked = endpoints.iter().map(|_| AtomicU64::new(0)).collect();
        Ok(Self { endpoints, checked, created: Instant::now(), preferred: AtomicUsize::new(0), chain_id })
    }

    /// An endpoint that answers and serves this chain, the one that last worked first, for callers
    /// that make several calls on one node (signing and sending, receipts, contract reads).
    pub async fn provider(&self) -> Result<RootProvider<Ethereum>, RpcError> {
        self.call("eth_chainId", |p| async move { Ok(p) }).await
    }

    /// Whether endpoint `index` serves the expected chain: asked at most every
    /// [`CHAIN_CHECK_EVERY`]; `Err` says why it may not be used now.
    async fn chain_checked(&self, index: usize, provider: &RootProvider<Ethereum>) -> Result<(), String> {
        let Some(want) = self.chain_id else { return Ok(()) };
        let now_ms = || u64::try_from(self.created.elapsed().as_millis()).unwrap_or(u64::MAX - 1).saturating_add(1);
        let at = self.checked[index].load(Ordering::Relaxed);
        if at != 0 && now_ms().saturating_sub(at) < u64::try_from(CHAIN_CHECK_EVERY.as_millis()).unwrap_or(u64::MAX) {
            return Ok(());
        }
        match provider.get_chain_id().await {
            Ok(id) if id == want => {
                self.checked[index].store(now_ms(), Ordering::Relaxed);
                Ok(())
            }
            Ok(id) => Err(format!("serves chain {id}, not {want}")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Runs `op` against the endpoints in turn, starting with the one that last worked, on
    /// endpoints that serve this chain only.
    async fn call<T, F, Fut>(&self, call: &'static str, op: F) -> Result<T, RpcError>
    where
        F: Fn(RootProvider<Ethereum>) -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        self.call_on(call, true, op).await
    }

    /// [`Self::call`], with the chain check left out when `checked` is false.
    async fn call_on<T, F, Fut>(&self, call: &'static str, checked: bool, op: F) -> Result<T, RpcError>
    where
        F: Fn(RootProvider<Ethereum>) -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        let n = self.endpoints.len();
        let start = self.preferred.load(Ordering::Relaxed) % n;
        let mut last = (String::new(), String::new());
        for i in 0..n {
            let index = (start + i) % n;
            let (label, provider) = &self.endpoints[index];
            let attempt = async {
                if checked {
                    self.chain_checked(index, provider).await?;
                }
                op(provider.clone()).await
            };
            match tokio::time::timeout(Duration::from_millis(RPC_TIMEOUT_MS), attempt).await {
                Ok(Ok(value)) => {
                    if index != start {
                        tracing::info!(target: "evm", endpoint = %label, call, "failed over to the next endpoint");
                    }
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok(value);
                }
                Ok(Err(message)) => last = (label.clone(), message),
                Err(_) => last = (label.clone(), format!("timed out after {RPC_TIMEOUT_MS} ms")),
            }
            tracing::warn!(target: "evm", endpoint = %last.0, call, error = %last.1, "rpc call failed");
        }
        Err(RpcError::Unavailable { call, endpoint: last.0, message: last.1 })
    }

    /// Whether another endpoint, about as far along as the one in use (its tip within
    /// [`WITNESS_LAG_MAX`] of `tip`, which the one in use reported), still has `hash` at `height`.
    /// If so the endpoint in use reports a reorg no other sees: it is passed over (the witness is
    /// preferred from now on) and the witness's label returned. With one endpoint, `None`.
    pub async fn witness_against_reorg(&self, height: u64, hash: B256, tip: u64) -> Option<String> {
        let n = self.endpoints.len();
        let current = self.preferred.load(Ordering::Relaxed) % n;
        for i in 1..n {
            let index = (current + i) % n;
            let (label, provider) = &self.endpoints[index];
            let asked = async {
                self.chain_checked(index, provider).await.ok()?;
                let their_tip = provider.get_block_number().await.ok()?;
                if their_tip.saturating_add(WITNESS_LAG_MAX) < tip {
                    return None;
                }
                let block = provider.get_block_by_number(BlockNumberOrTag::Number(height)).await.ok()??;
                (block.header.hash == hash).then_some(())
            };
            if let Ok(Some(())) = tokio::time::timeout(Duration::from_millis(RPC_TIMEOUT_MS), asked).await {
                tracing::warn!(target: "evm", endpoint = %self.endpoints[current].0, witness = %label, height, %hash,
                    "a reorg the endpoint in use reports is contradicted by another endpoint; not believed, failing over");
                self.preferred.store(index, Ordering::Relaxed);
                return Some(label.clone());
            }
        }
        None
    }

    /// The chain id an endpoint reports, asked of any endpoint (the watcher's start-up check: a
    /// chain file pointing only at another network stops it with that error).
    pub async fn chain_id(&self) -> Result<u64, RpcError> {
        self.call_on("eth_chainId", false, |p| async move { p.get_chain_id().await.map_err(|e| e.to_string()) }).await
    }

    pub async fn tip(&self) -> Result<u64, RpcError> {
        self.call("eth_blockNumber", |p| async move { p.get_block_number().await.map_err(|e| e.to_string()) }).await
    }

    /// The block at `height` with its top-level native transfers.
    pub async fn block(&self, height: u64) -> Result<EvmBlock, RpcError> {
        let block = self
            .call("eth_getBlockByNumber", |p| async move {
                p.get_block_by_number(BlockNumberOrTag::Number(height)).full().await.map_err(|e| e.to_string())
            })
            .await?
            .ok_or(RpcError::MissingBlock { height })?;
        let transfers = block
            .transactions
            .txns()
            .filter_map(|tx| {
                let to = tx.to()?;
                let value = tx.value();
                (!value.is_zero()).then(|| NativeTransfer { tx_hash: tx.tx_hash(), to, value })
            })
            .collect();
        Ok(EvmBlock {
            block: Block { height: block.header.number, hash: block.header.hash, parent: block.header.parent_hash },
            transfers,
            transactions: block.transactions.len(),
            logs_bloom: block.header.logs_bloom,
        })
    }

    /// The height of the chain's `finalized` block; `None` where the node does not serve the tag.
    pub async fn finalized(&self) -> Option<u64> {
        self.call("eth_getBlockByNumber", |p| async move {
            p.get_block_by_number(BlockNumberOrTag::Finalized).await.map_err(|e| e.to_string())
        })
        .await
        .ok()
        .flatten()
        .map(|block| block.header.number)
    }

    /// Only the hash of the block at `height` (for finding a fork point).
    pub async fn block_hash(&self, height: u64) -> Result<B256, RpcError> {
        let block = self
            .call("eth_getBlockByNumber", |p| async move {
                p.get_block_by_number(BlockNumberOrTag::Number(height)).await.map_err(|e| e.to_string())
            })
            .await?
            .ok_or(RpcError::MissingBlock { height })?;
        Ok(block.header.hash)
    }

    /// `Transfer` logs of `tokens` in `[from, to_block]`: to any of `to`, or to anyone (`None`).
    pub async fn token_transfers(
        &self,
        from: u64,
        to_block: u64,
        tokens: &[Address],
        to: Option<&[Address]>,
    ) -> Result<Vec<TokenTransfer>, RpcError> {
        if tokens.is_empty() || to.is_some_and(<[Address]>::is_empty) {
            return Ok(Vec::new());
        }
        let mut filter = Filter::new()
            .from_block(from)
            .to_block(to_block)
            .address(tokens.to_vec())
            .event_signature(Transfer::SIGNATURE_HASH);
        if let Some(to) = to {
            filter = filter.topic2(to.iter().map(|a| a.into_word()).collect::<Vec<B256>>());
        }
        let logs: Vec<Log> = self
            .call("eth_getLogs", |p| {
                let filter = filter.clone();
                async move { p.get_logs(&filter).await.map_err(|e| e.to_string()) }
            })
            .await?;
        let mut transfers = Vec::with_capacity(logs.len());
        for log in logs {
            if log.removed {
                continue;
            }
            let (Some(tx_hash), Some(log_index), Some(block_height), Some(block_hash)) =
                (log.transaction_hash, log.log_index, log.block_number, log.block_hash)
            else {
                continue;
            };
            let Ok(decoded) = log.log_decode::<Transfer>() else {
                continue;
            };
            let event = decoded.inner.data;
            transfers.push(TokenTransfer {
                token: decoded.inner.address,
                to: event.to,
                value: event.value,
                tx_hash,
                log_index,
                block_height,
                block_hash,
            });
        }
        Ok(transfers)
    }

    /// [`Self::token_transfers`], halving the block range whenever the node refuses it as too large
    /// or too many results (common provider limits), down to single blocks.
    pub async fn token_transfers_split(
        &self,
        from: u64,
        to_block: u64,
        tokens: &[Address],
        to: Option<&[Address]>,
    ) -> Result<Vec<TokenTransfer>, RpcError> {
        let mut ranges = vec![(from, to_block)];
        let mut found = Vec::new();
        while let Some((a, b)) = ranges.pop() {
            match self.token_transfers(a, b, tokens, to).await {
                Ok(mut transfers) => found.append(&mut transfers),
                Err(RpcError::Unavailable { message, .. }) if b > a && is_range_limit(&message) => {
                    let mid = a + (b - a) / 2;
                    tracing::debug!(target: "watcher::evm", from = a, to = b, "eth_getLogs range refused; splitting");
                    ranges.push((mid + 1, b));
                    ranges.push((a, mid));
                }
                Err(error) => return Err(error),
            }
        }
        Ok(found)
    }

    /// Native coin moved by successful calls inside the transactions of block `height` (not the
    /// transactions' own value, which the block body shows), from the parity-style `trace_block`.
    /// A call counts only when neither it nor any call around it failed (a reverted frame undoes
    /// everything under it); a self-destruct counts the balance it hands over.
    pub async fn internal_transfers(&self, height: u64) -> Result<Vec<InternalTransfer>, RpcError> {
        let frames: Vec<TraceFrame> = self
            .call("trace_block", |p| async move {
                p.raw_request("trace_block".into(), (BlockNumberOrTag::Number(height),)).await.map_err(|e| e.to_string())
            })
            .await?;
        Ok(internal_of(&frames))
    }

    /// The native balance of `address` at block `height`; [`RpcError::StateUnavailable`] when the
    /// nodes keep no state that old.
    pub async fn balance_at(&self, address: Address, height: u64) -> Result<U256, RpcError> {
        let result = self
            .call("eth_getBalance", |p| async move {
                p.get_balance(address).block_id(alloy::eips::BlockId::number(height)).await.map_err(|e| e.to_string())
            })
            .await;
        match result {
            Err(RpcError::Unavailable { message, .. }) if is_state_pruned(&message) => {
                Err(RpcError::StateUnavailable { height, message })
            }
            other => other,
        }
    }

    /// Whether a mined transaction succeeded (a reverted one moved no value).
    pub async fn succeeded(&self, tx_hash: B256) -> Result<bool, RpcError> {
        let receipt = self
            .call("eth_getTransactionReceipt", |p| async move {
                p.get_transaction_receipt(tx_hash).await.map_err(|e| e.to_string())
            })
            .await?;
        Ok(receipt.is_some_and(|r| r.status()))
    }
}

/// Whether a node's error message mentions any of `hints` (nodes and providers word the same
/// refusal differently, so errors are told apart by what they say).
fn mentions_any(message: &str, hints: &[&str]) -> bool {
    let message = message.to_ascii_lowercase();
    hints.iter().any(|hint| message.contains(hint))
}

/// Whether a node's error says it keeps no state for the block asked about.
fn is_state_pruned(message: &str) -> bool {
    mentions_any(message, &["blockoutofrange", "missing trie node", "pruned", "historical state", "state not available", "state is not available"])
}

/// Whether a node's error says the `eth_getLogs` range or result set was too large.
/// Native coin a contract call moved to `to` in block `height`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InternalTransfer {
    pub tx_hash: B256,
    pub to: Address,
    pub value: U256,
    /// The block the node traced (checked against the block fetched at that height).
    pub block_hash: Option<B256>,
}

/// One frame of `trace_block`'s answer, as far as value moves are concerned.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TraceFrame {
    action: TraceAction,
    #[serde(default)]
    error: Option<String>,
    trace_address: Vec<u64>,
    transaction_hash: Option<B256>,
    block_hash: Option<B256>,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TraceAction {
    call_type: Option<String>,
    to: Option<Address>,
    value: Option<U256>,
    refund_address: Option<Address>,
    balance: Option<U256>,
}

/// The value moves of `frames` below the top level, of frames whose ancestors all succeeded.
fn internal_of(frames: &[TraceFrame]) -> Vec<InternalTransfer> {
    let failed: std::collections::HashSet<(B256, &[u64])> = frames
        .iter()
        .filter(|f| f.error.is_some())
        .filter_map(|f| Some((f.transaction_hash?, f.trace_address.as_slice())))
        .collect();
    let mut moves = Vec::new();
    for frame in frames.iter().filter(|f| !f.trace_address.is_empty()) {
        let Some(tx_hash) = frame.transaction_hash else { continue };
        let (to, value) = match (frame.kind.as_str(), frame.action.call_type.as_deref()) {
            ("call", Some("call")) => (frame.action.to, frame.action.value),
            ("suicide" | "selfdestruct", _) => (frame.action.refund_address, frame.action.balance),
            _ => continue,
        };
        let (Some(to), Some(value)) = (to, value.filter(|v| !v.is_zero())) else { continue };
        let path = frame.trace_address.as_slice();
        if (0..=path.len()).any(|depth| failed.contains(&(tx_hash, &path[..depth]))) {
            continue;
        }
        moves.push(InternalTransfer { tx_hash, to, value, block_hash: frame.block_hash });
    }
    moves
}

fn is_range_limit(message: &str) -> bool {
    mentions_any(message, &["too many", "range", "limit", "exceed", "response size", "10000 results"])
}

/// Whether a node refused a call because it does not offer the method at all.
pub fn is_method_unsupported(message: &str) -> bool {
    mentions_any(message, &["method not found", "does not exist", "unsupported", "not supported", "-32601"])
}

/// The refusals a node gives when it will never mine a transaction as sent.
fn is_definitive_refusal(message: &str) -> bool {
    mentions_any(message, &["nonce too low", "underpriced", "insufficient funds", "exceeds block gas limit", "intrinsic gas too low", "invalid"])
}

fn is_already_known(message: &str) -> bool {
    mentions_any(message, &["already known", "already imported", "known transaction"])
}

/// What the endpoints said to a signed transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Broadcast {
    Accepted,
    /// Every endpoint refused it for a reason that will not change.
    Refused(String),
    /// No endpoint said yes, but at least one gave no clear answer: it may be out there.
    Unknown,
}

/// Sends signed transaction bytes to every endpoint until one accepts them (or already has them).
async fn broadcast_to(endpoints: &[(String, RootProvider<Ethereum>)], raw: &[u8]) -> Broadcast {
    let mut refused = None;
    let mut unknown = false;
    for (label, provider) in endpoints {
        let sent = tokio::time::timeout(Duration::from_millis(RPC_TIMEOUT_MS), provider.send_raw_transaction(raw)).await;
        match sent {
            Ok(Ok(_)) => return Broadcast::Accepted,
            Ok(Err(error)) => {
                let message = error.to_string();
                if is_already_known(&message) {
                    return Broadcast::Accepted;
                }
                if error.is_error_resp() && is_definitive_refusal(&message) {
                    refused = Some(format!("{label}: {message}"));
                } else {
                    unknown = true;
                }
            }
            Err(_) => unknown = true,
        }
    }
    match refused {
        Some(message) if !unknown => Broadcast::Refused(message),
        _ => Broadcast::Unknown,
    }
}

impl EvmClient {
    /// Sends signed transaction bytes to every endpoint until one accepts them (or already has
    /// them): a transaction known to more nodes is mined sooner, and one dead node cannot hide it.
    pub async fn broadcast_raw(&self, raw: &[u8]) -> Broadcast {
        broadcast_to(&self.endpoints, raw).await
    }

    /// The code deployed at `address` at the latest block: empty for an account that is no contract.
    pub async fn code_at(&self, address: Address) -> Result<alloy_primitives::Bytes, RpcError> {
        self.call("eth_getCode", |p| async move { p.get_code_at(address).await.map_err(|e| e.to_string()) }).await
    }

        /// What `owner` holds of `token` (the zero address: the native coin) at the latest block, in
    /// smallest units.
    pub async fn balance_of(&self, owner: Address, token: Address) -> Result<U256, RpcError> {
        self.call("balanceOf", |p| async move {
            if token == Address::ZERO {
                p.get_balance(owner).await.map_err(|e| e.to_string())
            } else {
                BalanceOf::new(token, &p).balanceOf(owner).call().await.map_err(|e| e.to_string())
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_told_apart_from_doubt() {
        assert!(is_definitive_refusal("nonce too low: next nonce 5, tx nonce 4"));
        assert!(is_definitive_refusal("replacement transaction underpriced"));
        assert!(!is_definitive_refusal("connection reset by peer"));
        assert!(is_already_known("already known"));
    }

    #[test]
    fn pruned_state_refusals_are_recognised() {
        assert!(is_state_pruned("server returned an error response: error code -32602: BlockOutOfRangeError: block height is 261 but requested was 5"));
        assert!(is_state_pruned("missing trie node 0xabc (path ) state 0xabc is not available"));
        assert!(!is_state_pruned("connection refused"));
    }

    #[test]
    fn provider_limit_messages_are_recognised() {
        assert!(super::is_range_limit("query returned more than 10000 results"));
        assert!(super::is_range_limit("Block range is too large"));
        assert!(super::is_range_limit("eth_getLogs is limited to a 2000 range"));
        assert!(!super::is_range_limit("connection refused"));
    }

    #[test]
    fn only_successful_calls_below_the_top_level_move_coin() {
        let tx = format!("{:#x}", B256::repeat_byte(1));
        let other = format!("{:#x}", B256::repeat_byte(2));
        let to = |b: u8| format!("{:#x}", Address::repeat_byte(b));
        let call = |tx: &str, path: &[u64], to: &str, value: &str, error: Option<&str>| {
            serde_json::json!({
                "action": {"callType": "call", "from": "0x0000000000000000000000000000000000000001", "to": to, "value": value, "gas": "0x0", "input": "0x"},
                "error": error, "traceAddress": path, "transactionHash": tx, "blockHash": format!("{:#x}", B256::repeat_byte(9)),
                "type": "call", "subtraces": 0
            })
        };
        let frames = serde_json::json!([
            // The transaction itself: its value is the block body's business.
            call(&tx, &[], &to(0xaa), "0x5", None),
            call(&tx, &[0], &to(0xbb), "0x7", None),
            call(&tx, &[1], &to(0xcc), "0x0", None),
            // A failed frame undoes its own value and everything under it.
            call(&tx, &[2], &to(0xdd), "0x3", Some("Reverted")),
            call(&tx, &[2, 0], &to(0xee), "0x4", None),
            // A transaction that failed at the top moved nothing at all.
            call(&other, &[], &to(0xaa), "0x0", Some("Reverted")),
            call(&other, &[0], &to(0xff), "0x9", None),
            {"action": {"address": to(0x11), "refundAddress": to(0x12), "balance": "0x2"}, "traceAddress": [1], "transactionHash": tx, "type": "suicide", "subtraces": 0},
            {"action": {"callType": "delegatecall", "to": to(0x13), "value": "0x8"}, "traceAddress": [3], "transactionHash": tx, "type": "call", "subtraces": 0},
        ]);
        let frames: Vec<TraceFrame> = serde_json::from_value(frames).expect("frames");
        let moved: Vec<(Address, U256)> = internal_of(&frames).into_iter().map(|t| (t.to, t.value)).collect();
        assert_eq!(moved, vec![(Address::repeat_byte(0xbb), U256::from(7)), (Address::repeat_byte(0x12), U256::from(2))]);
    }

    #[test]
    fn a_missing_method_is_told_apart_from_a_failing_node() {
        assert!(is_method_unsupported("the method trace_block does not exist/is not available"));
        assert!(is_method_unsupported("server returned an error response: error code -32601: Method not found"));
        assert!(!is_method_unsupported("connection refused"));
    }

    #[test]
    fn a_block_may_hold_transfers_only_where_its_bloom_allows() {
        let token = Address::repeat_byte(0x77);
        let other = Address::repeat_byte(0x66);
        let mut bloom = Bloom::ZERO;
        bloom.accrue_raw_log(token, &[Transfer::SIGNATURE_HASH]);
        let block = |transactions: usize, logs_bloom: Bloom| EvmBlock {
            block: Block { height: 1, hash: B256::ZERO, parent: B256::ZERO },
            transfers: Vec::new(),
            transactions,
            logs_bloom,
        };
        assert!(block(3, bloom).may_hold_transfers(&[token]));
        assert!(!block(3, bloom).may_hold_transfers(&[other]));
        assert!(!block(0, bloom).may_hold_transfers(&[token]), "no transaction, no log");
        assert!(block(3, Bloom::ZERO).may_hold_transfers(&[other]), "an empty filter beside transactions is not believed");
        assert!(!block(3, bloom).may_hold_transfers(&[]));
    }
}
