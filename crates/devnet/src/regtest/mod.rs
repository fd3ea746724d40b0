//! payrail's own Bitcoin regtest node, for development and tests only.
//!
//! No Bitcoin Core binary is at hand in the dev stack, so payrail carries a small regtest node:
//! a real regtest chain from the real genesis block (valid headers, proof of work at regtest
//! difficulty, merkle roots, BIP34 heights, witness commitments), a mempool that validates what
//! is broadcast (inputs, coinbase maturity, fees, ECDSA and Schnorr signatures, BIP125
//! replacement), a deterministic wallet that pays whoever a test names, and an Electrum protocol
//! 1.4 server over TCP — the same protocol the Bitcoin watcher speaks to electrs, Fulcrum or
//! ElectrumX in production.
//!
//! Tests and other processes drive the chain through `regtest.*` control methods on the same
//! port ([`RegtestControl`]); in-process users hold a [`RegtestHandle`].
//!
//! Invariants:
//! - State lives in memory only: a restart is a new chain (same genesis, same wallet keys, new
//!   blocks). Nothing here is meant for value: the wallet's keys come from a fixed public seed.
//! - Every transaction, the wallet's own included, enters the mempool through one validation
//!   path ([`mempool::Mempool::check`]); blocks are only built from the mempool.
//! - Every state change bumps a change counter that Electrum connections watch to send their
//!   header and script-hash notifications.

pub mod chain;
pub mod control;
pub mod electrum;
pub mod mempool;
pub mod node;
pub mod wallet;

/// Shared fixtures of the node's unit tests.
#[cfg(test)]
mod test_support {
    use bitcoin::key::Secp256k1;
    use bitcoin::{Address, CompressedPublicKey, Network};

    use super::node::NodeState;

    /// A fixed block time.
    pub const NOW: u32 = 1_700_000_000;

    /// A node whose wallet has mature coins.
    pub fn started() -> NodeState {
        let mut state = NodeState::new().expect("state");
        state.mine(101, NOW).expect("mined");
        state
    }

    /// An address nobody in the test holds the key of.
    pub fn stranger() -> Address {
        let secp = Secp256k1::new();
        let (_, public) = secp.generate_keypair(&mut bitcoin::secp256k1::rand::thread_rng());
        Address::p2wpkh(&CompressedPublicKey(public), Network::Regtest)
    }
}

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bitcoin::{Amount, BlockHash, OutPoint, Txid};
use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use control::RegtestControl;
pub use node::Node;

/// The chain's CAIP-2 id: `bip122:` and the first 32 hex characters of the regtest genesis hash.
pub const REGTEST_CAIP2: &str = "bip122:0f9188f13cb7b2c71f2a335e3a4fc328";
/// Blocks mined to the wallet at start, so that coinbase outputs are mature (100 blocks).
pub const START_BLOCKS: u32 = 101;
/// The most blocks one `mine` request may ask for.
pub const MINE_BLOCKS_MAX: u32 = 1_000;

pub type Result<T> = std::result::Result<T, RegtestError>;

/// What can go wrong on the regtest node. Messages are lower case and name the failing key; they
/// reach Electrum clients as JSON-RPC error messages.
#[derive(Debug, Error)]
pub enum RegtestError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("regtest connection to {addr} failed: {source}")]
    Connect { addr: SocketAddr, source: std::io::Error },
    #[error("regtest i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot decode transaction: {0}")]
    Decode(String),
    #[error("transaction {txid} is invalid: {reason}")]
    InvalidTx { txid: Txid, reason: String },
    #[error("transaction {txid} is already known")]
    AlreadyKnown { txid: Txid },
    #[error("transaction {txid}: input {outpoint} is missing or already spent")]
    MissingInput { txid: Txid, outpoint: OutPoint },
    #[error("transaction {txid}: input {outpoint} spends a coinbase output with {confirmations} confirmations (100 needed)")]
    ImmatureCoinbase { txid: Txid, outpoint: OutPoint, confirmations: u64 },
    #[error("transaction {txid}: outputs ({outputs}) exceed inputs ({inputs})")]
    OutputsExceedInputs { txid: Txid, inputs: Amount, outputs: Amount },
    #[error("transaction {txid}: input {index} has an invalid signature: {reason}")]
    BadSignature { txid: Txid, index: usize, reason: String },
    #[error(
        "transaction {txid}: input {index} spends an unsupported script (only p2wpkh and p2tr key-path spends are verified)"
    )]
    UnsupportedScript { txid: Txid, index: usize },
    #[error("transaction {txid}: input {outpoint} is already spent by {conflict}, which does not signal replace-by-fee")]
    DoubleSpend { txid: Txid, outpoint: OutPoint, conflict: Txid },
    #[error("transaction {txid}: replacement fee {fee} must exceed the {replaced} paid by the transactions it replaces")]
    ReplacementFee { txid: Txid, fee: Amount, replaced: Amount },
    #[error("transaction {txid}: fee {fee} is below the relay fee {required}")]
    FeeTooLow { txid: Txid, fee: Amount, required: Amount },
    #[error("transaction {txid} is not in the mempool")]
    NotInMempool { txid: Txid },
    #[error("transaction {txid} does not signal replace-by-fee")]
    NotReplaceable { txid: Txid },
    #[error("transaction {txid} spends inputs the wallet cannot sign")]
    NotOurs { txid: Txid },
    #[error("wallet has {available} spendable, {needed} needed")]
    InsufficientFunds { needed: Amount, available: Amount },
    #[error("invalid address {address}: {reason}")]
    Address { address: String, reason: String },
    #[error("invalid reorg of depth {depth} with {new_blocks} new blocks: {reason}")]
    Reorg { depth: u32, new_blocks: u32, reason: String },
    #[error("{what} is limited to {max}")]
    Limit { what: &'static str, max: u64 },
    #[error("block {hash} is invalid: {reason}")]
    InvalidBlock { hash: BlockHash, reason: String },
    #[error("regtest.{method} failed: {message} (code {code})")]
    Rpc { method: String, code: i64, message: String },
    #[error("unexpected regtest response to {method}: {reason}")]
    Protocol { method: String, reason: String },
}

impl RegtestError {
    fn invalid(txid: Txid, reason: impl Into<String>) -> Self {
        Self::InvalidTx { txid, reason: reason.into() }
    }
}

/// How to run a regtest node.
#[derive(Debug, Clone)]
pub struct RegtestConfig {
    /// Where the Electrum server listens (port 0 picks a free one).
    pub listen: SocketAddr,
    /// Mine a block (with the mempool) this often; `None` mines only on request.
    pub mine_interval: Option<Duration>,
}

impl Default for RegtestConfig {
    fn default() -> Self {
        Self { listen: SocketAddr::from(([127, 0, 0, 1], 0)), mine_interval: None }
    }
}

/// Starts regtest nodes.
#[derive(Debug)]
pub struct RegtestNode;

impl RegtestNode {
    /// Builds a fresh chain (genesis plus [`START_BLOCKS`] blocks to the wallet), binds the
    /// Electrum server and starts serving and, if asked, mining on an interval.
    pub async fn start(cfg: RegtestConfig) -> Result<RegtestHandle> {
        let node = Arc::new(Node::new()?);
        node.mine(START_BLOCKS).await?;
        let listener =
            tokio::net::TcpListener::bind(cfg.listen).await.map_err(|source| RegtestError::Bind { addr: cfg.listen, source })?;
        let addr = listener.local_addr()?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = vec![tokio::spawn(electrum::serve(listener, Arc::clone(&node), shutdown_rx.clone()))];
        if let Some(interval) = cfg.mine_interval {
            tasks.push(tokio::spawn(mine_every(Arc::clone(&node), interval, shutdown_rx)));
        }
        tracing::info!(target: "devnet::regtest", %addr, "regtest electrum server listening");
        Ok(RegtestHandle { node, addr, shutdown, tasks })
    }
}

async fn mine_every(node: Arc<Node>, interval: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                if let Err(e) = node.mine(1).await {
                    tracing::warn!(target: "devnet::regtest", error = %e, "interval mining failed");
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// A running regtest node. Dropping it stops the server and the miner too; [`Self::shutdown`]
/// also waits for them.
#[derive(Debug)]
pub struct RegtestHandle {
    node: Arc<Node>,
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RegtestHandle {
    /// The Electrum server's socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The Electrum server's URL as electrum-client and payrail's config take it: `tcp://ip:port`.
    pub fn electrum_url(&self) -> String {
        format!("tcp://{}", self.addr)
    }

    /// The node itself, for queries beyond the control methods.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Mines `n` blocks with the mempool's transactions; returns their hashes in order.
    pub async fn mine(&self, n: u32) -> Result<Vec<BlockHash>> {
        self.node.mine(n).await
    }

    /// Pays `amount` to `to` from the wallet, signalling replace-by-fee if `rbf`.
    pub async fn send(&self, to: &bitcoin::Address, amount: Amount, rbf: bool) -> Result<Txid> {
        self.node.send(to, amount, rbf).await
    }

    /// Replaces the wallet's mempool transaction `txid` with one paying the same recipients and
    /// `extra_fee` more fee.
    pub async fn bump(&self, txid: Txid, extra_fee: Amount) -> Result<Txid> {
        self.node.bump(txid, extra_fee).await
    }

    /// Double-spends the inputs of the wallet's mempool transaction `txid` to pay `amount` to
    /// `to` instead, with a higher fee: the original payment disappears.
    pub async fn replace(&self, txid: Txid, to: &bitcoin::Address, amount: Amount) -> Result<Txid> {
        self.node.replace(txid, to, amount).await
    }

    /// Orphans the last `depth` blocks and mines `new_blocks` (> `depth`) competing ones; see
    /// [`Node::reorg`]. Returns the new tip.
    pub async fn reorg(&self, depth: u32, new_blocks: u32, include_mempool: bool) -> Result<(u64, BlockHash)> {
        self.node.reorg(depth, new_blocks, include_mempool).await
    }

    /// The tip's height and hash.
    pub async fn tip(&self) -> (u64, BlockHash) {
        self.node.tip().await
    }

    /// Stops the server, its connections and the miner, and waits for them.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
    }
}

impl Drop for RegtestHandle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// The socket address in an Electrum URL of the dev stack: `tcp://127.0.0.1:50001`.
pub fn socket_addr_from_url(url: &str) -> Result<SocketAddr> {
    url.trim().strip_prefix("tcp://").map(|rest| rest.trim_end_matches('/')).and_then(|rest| rest.parse().ok()).ok_or_else(|| {
        RegtestError::Address { address: url.to_owned(), reason: "the regtest node serves tcp://<ip>:<port>".to_owned() }
    })
}

/// The current time as a block timestamp (seconds since the Unix epoch).
fn now_unix_s() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .and_then(|d| u32::try_from(d.as_secs()).ok())
        .unwrap_or(u32::MAX)
}
