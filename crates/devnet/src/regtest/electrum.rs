//! The regtest node's Electrum protocol 1.4 server: newline-delimited JSON-RPC 2.0 over TCP,
//! one task per connection, plus the development-only `regtest.*` control methods.
//!
//! Formats follow the protocol's specification (electrum-protocol.readthedocs.io), as electrs
//! and ElectrumX serve them:
//! - script hash: sha256 of the output script, bytes reversed, in hex;
//! - history: confirmed transactions in chain order (`height` > 0), then mempool transactions in
//!   acceptance order with `height` 0, or -1 when one of their inputs is unconfirmed, and `fee`;
//! - status: hex sha256 of the concatenated `tx_hash:height:` of the history, `null` when empty;
//! - fees: BTC per kB as JSON numbers, written from integer sats.
//!
//! Methods: `server.version`, `.ping`, `.banner`, `.features`, `.donation_address`,
//! `.peers.subscribe`; `blockchain.headers.subscribe`, `.block.header`, `.block.headers` (with
//! `cp_height` proofs); `blockchain.scripthash.get_history`, `.get_mempool`, `.get_balance`,
//! `.listunspent`, `.subscribe`, `.unsubscribe`; `blockchain.transaction.get` (not verbose),
//! `.get_merkle`, `.broadcast`; `blockchain.estimatefee`, `.relayfee`; `mempool.get_fee_histogram`
//! (always empty). A connection hears of a change before the answer to any request it sends after
//! the change; header notifications carry the tip only (several blocks at once give one).
//!
//! Control methods (development only; a real Electrum server has none): `regtest.mine [n]` →
//! block hashes, `regtest.send [address, sats, rbf]` → txid, `regtest.bump [txid, extra_fee_sats]`
//! → txid, `regtest.replace [txid, address, sats]` → txid, `regtest.reorg [depth, new_blocks,
//! include_mempool]` → `{"height","hash"}`, `regtest.tip` → `{"height","hash"}`,
//! `regtest.addresses` → `{"p2wpkh","p2tr"}` (the wallet's receive addresses).
//!
//! Limits: [`CONNECTIONS_MAX`] connections, [`LINE_BYTES_MAX`] per request line,
//! [`BATCH_REQUESTS_MAX`] requests per batch, [`SUBSCRIPTIONS_PER_CONNECTION_MAX`] script hashes
//! per connection, [`HEADERS_PER_REQUEST_MAX`] headers per `blockchain.block.headers`.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bitcoin::consensus::encode::{deserialize, serialize, serialize_hex};
use bitcoin::hashes::{sha256d, Hash};
use bitcoin::{Address, Amount, BlockHash, Network, Transaction, Txid};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

use super::chain::ScriptHash;
use super::mempool::RELAY_FEE_SAT_PER_VB;
use super::node::{Node, NodeState};
use super::wallet::FEE_RATE_SAT_PER_VB;
use super::RegtestError;

/// The most connections served at once; more are closed on accept.
pub const CONNECTIONS_MAX: usize = 256;
/// The longest request line, in bytes (a 100 kvB transaction in hex fits twice over).
pub const LINE_BYTES_MAX: usize = 4 * 1024 * 1024;
/// The most requests in one JSON-RPC batch.
pub const BATCH_REQUESTS_MAX: usize = 1_000;
/// The most script hashes one connection may subscribe to.
pub const SUBSCRIPTIONS_PER_CONNECTION_MAX: usize = 100_000;
/// The most headers one `blockchain.block.headers` returns (the protocol's `max`).
pub const HEADERS_PER_REQUEST_MAX: u64 = 2016;
/// The protocol version served.
pub const PROTOCOL_VERSION: &str = "1.4";
/// The server software version reported by `server.version` and `server.features`.
pub const SERVER_VERSION: &str = concat!("payrail-regtest ", env!("CARGO_PKG_VERSION"));
/// How long a write to a client may take before the connection is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Request lines buffered between a connection's reader and its handler.
const LINES_QUEUED_MAX: usize = 16;

const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_PARAMS: i64 = -32602;
/// A request the node refuses (bad transaction, unknown height, failed control method), as
/// ElectrumX's BAD_REQUEST.
const BAD_REQUEST: i64 = 1;

/// A JSON-RPC error: code and message.
#[derive(Debug)]
struct RpcError {
    code: i64,
    message: String,
}

impl RpcError {
    fn params(message: impl Into<String>) -> Self {
        Self { code: INVALID_PARAMS, message: message.into() }
    }

    fn bad(message: impl Into<String>) -> Self {
        Self { code: BAD_REQUEST, message: message.into() }
    }
}

impl From<RegtestError> for RpcError {
    fn from(e: RegtestError) -> Self {
        Self::bad(e.to_string())
    }
}

type RpcResult = Result<Value, RpcError>;

/// Accepts connections until `shutdown` fires (or its sender is dropped), then closes them all.
pub async fn serve(listener: TcpListener, node: Arc<Node>, mut shutdown: watch::Receiver<bool>) {
    let permits = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                        tracing::warn!(target: "devnet::regtest", %peer, max = CONNECTIONS_MAX, "too many electrum connections");
                        continue;
                    };
                    let node = Arc::clone(&node);
                    connections.spawn(async move {
                        connection(stream, node).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    tracing::warn!(target: "devnet::regtest", error = %e, "accepting an electrum connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    connections.shutdown().await;
}

/// What a connection's reader hands to its handler.
enum Line {
    Request(Vec<u8>),
    TooLong,
}

async fn read_lines(read: OwnedReadHalf, lines: mpsc::Sender<Line>) {
    let mut reader = BufReader::new(read);
    let limit = u64::try_from(LINE_BYTES_MAX).unwrap_or(u64::MAX).saturating_add(1);
    loop {
        let mut line = Vec::new();
        match (&mut reader).take(limit).read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let complete = line.last() == Some(&b'\n');
                if line.len() > LINE_BYTES_MAX {
                    let _ = lines.send(Line::TooLong).await;
                    return;
                }
                if !line.iter().all(u8::is_ascii_whitespace) && lines.send(Line::Request(line)).await.is_err() {
                    return;
                }
                if !complete {
                    // The peer closed the connection after a last line without a newline.
                    return;
                }
            }
        }
    }
}

/// What one connection subscribed to and what it was last told.
#[derive(Debug, Default)]
struct Session {
    /// The tip last sent, once subscribed to headers.
    headers: Option<BlockHash>,
    /// Subscribed script hashes and the status last sent.
    scripts: HashMap<ScriptHash, Option<String>>,
}

impl Session {
    /// Notifications for what changed since they were last sent.
    fn notifications(&mut self, state: &NodeState) -> Vec<Value> {
        let mut out = Vec::new();
        if let Some(last) = self.headers {
            let (height, hash) = state.tip();
            if hash != last {
                self.headers = Some(hash);
                if let Some(header) = state.chain.header(height) {
                    out.push(notification(
                        "blockchain.headers.subscribe",
                        json!([{"hex": serialize_hex(header), "height": height}]),
                    ));
                }
            }
        }
        for (sh, sent) in &mut self.scripts {
            let status = state.status(sh);
            if status != *sent {
                out.push(notification("blockchain.scripthash.subscribe", json!([sh.to_hex(), status])));
                *sent = status;
            }
        }
        out
    }
}

fn notification(method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "method": method, "params": params})
}

async fn connection(stream: TcpStream, node: Arc<Node>) {
    let peer = stream.peer_addr().ok();
    let (read, mut write) = stream.into_split();
    let (lines_tx, mut lines) = mpsc::channel(LINES_QUEUED_MAX);
    let reader = tokio::spawn(read_lines(read, lines_tx));
    let mut changes = node.changes();
    let mut session = Session::default();
    loop {
        // Changes first: a request that arrives after a change is answered after the change's
        // notifications, so a client that pings after a block has already heard of it.
        let (messages, close) = tokio::select! {
            biased;
            changed = changes.changed() => {
                if changed.is_err() {
                    break;
                }
                let state = node.state().await;
                (session.notifications(&state), false)
            }
            line = lines.recv() => match line {
                Some(Line::Request(bytes)) => (handle_line(&node, &mut session, &bytes).await.into_iter().collect(), false),
                Some(Line::TooLong) => {
                    let message = format!("request line longer than {LINE_BYTES_MAX} bytes");
                    (vec![error_response(Value::Null, INVALID_REQUEST, message)], true)
                }
                None => break,
            },
        };
        for message in messages {
            let mut bytes = message.to_string().into_bytes();
            bytes.push(b'\n');
            match tokio::time::timeout(WRITE_TIMEOUT, write.write_all(&bytes)).await {
                Ok(Ok(())) => {}
                _ => {
                    tracing::debug!(target: "devnet::regtest", ?peer, "electrum client stopped reading");
                    reader.abort();
                    return;
                }
            }
        }
        if close {
            break;
        }
    }
    reader.abort();
}

fn error_response(id: Value, code: i64, message: String) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

/// Answers one line: a request or a batch (a JSON array of requests, answered by an array).
async fn handle_line(node: &Node, session: &mut Session, bytes: &[u8]) -> Option<Value> {
    let parsed: Value = match serde_json::from_slice(bytes) {
        Ok(value) => value,
        Err(e) => return Some(error_response(Value::Null, PARSE_ERROR, format!("parse error: {e}"))),
    };
    match parsed {
        Value::Array(batch) => {
            if batch.is_empty() {
                return Some(error_response(Value::Null, INVALID_REQUEST, "empty batch".to_owned()));
            }
            if batch.len() > BATCH_REQUESTS_MAX {
                let message = format!("a batch is limited to {BATCH_REQUESTS_MAX} requests");
                return Some(error_response(Value::Null, INVALID_REQUEST, message));
            }
            let mut replies = Vec::with_capacity(batch.len());
            for request in batch {
                replies.extend(handle_request(node, session, request).await);
            }
            (!replies.is_empty()).then_some(Value::Array(replies))
        }
        request => handle_request(node, session, request).await,
    }
}

/// Answers one request; a request without an `id` is a notification and gets no answer.
async fn handle_request(node: &Node, session: &mut Session, request: Value) -> Option<Value> {
    let Value::Object(mut request) = request else {
        return Some(error_response(Value::Null, INVALID_REQUEST, "a request is a JSON object".to_owned()));
    };
    let id = request.remove("id");
    let params = request.remove("params");
    let result = match (request.get("method").and_then(Value::as_str), params) {
        (None, _) => Err(RpcError { code: INVALID_REQUEST, message: "a request names its method".to_owned() }),
        (Some(method), None | Some(Value::Null)) => dispatch(node, session, method, &[]).await,
        (Some(method), Some(Value::Array(params))) => dispatch(node, session, method, &params).await,
        (Some(_), Some(_)) => Err(RpcError::params("params must be an array")),
    };
    let id = id?;
    Some(match result {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err(e) => error_response(id, e.code, e.message),
    })
}

fn param<'a>(params: &'a [Value], index: usize, name: &str) -> Result<&'a Value, RpcError> {
    params.get(index).ok_or_else(|| RpcError::params(format!("missing parameter {name}")))
}

fn param_u64(params: &[Value], index: usize, name: &str) -> Result<u64, RpcError> {
    param(params, index, name)?.as_u64().ok_or_else(|| RpcError::params(format!("{name} must be a non-negative integer")))
}

fn param_u64_or(params: &[Value], index: usize, name: &str, default: u64) -> Result<u64, RpcError> {
    match params.get(index) {
        None | Some(Value::Null) => Ok(default),
        Some(_) => param_u64(params, index, name),
    }
}

fn param_u32(params: &[Value], index: usize, name: &str) -> Result<u32, RpcError> {
    u32::try_from(param_u64(params, index, name)?).map_err(|_| RpcError::params(format!("{name} is too large")))
}

fn param_str<'a>(params: &'a [Value], index: usize, name: &str) -> Result<&'a str, RpcError> {
    param(params, index, name)?.as_str().ok_or_else(|| RpcError::params(format!("{name} must be a string")))
}

fn param_bool_or(params: &[Value], index: usize, name: &str, default: bool) -> Result<bool, RpcError> {
    match params.get(index) {
        None | Some(Value::Null) => Ok(default),
        Some(value) => value.as_bool().ok_or_else(|| RpcError::params(format!("{name} must be a boolean"))),
    }
}

fn param_script_hash(params: &[Value], index: usize) -> Result<ScriptHash, RpcError> {
    let hex = param_str(params, index, "scripthash")?;
    ScriptHash::from_hex(hex).ok_or_else(|| RpcError::params(format!("invalid script hash {hex}")))
}

fn param_txid(params: &[Value], index: usize, name: &str) -> Result<Txid, RpcError> {
    let hex = param_str(params, index, name)?;
    Txid::from_str(hex).map_err(|_| RpcError::params(format!("invalid txid {hex}")))
}

fn param_address(params: &[Value], index: usize) -> Result<Address, RpcError> {
    let text = param_str(params, index, "address")?;
    Address::from_str(text)
        .and_then(|a| a.require_network(Network::Regtest))
        .map_err(|e| RegtestError::Address { address: text.to_owned(), reason: e.to_string() }.into())
}

/// An amount of sats per virtual kilobyte as Electrum's BTC/kB JSON number, written from the
/// integer as a decimal string (no floating-point arithmetic).
pub fn btc_per_kvb(sat_per_vb: u64) -> Value {
    let sat_per_kvb = sat_per_vb.saturating_mul(1_000);
    let text = format!("{}.{:08}", sat_per_kvb / 100_000_000, sat_per_kvb % 100_000_000);
    serde_json::Number::from_str(&text).map(Value::Number).unwrap_or(Value::Null)
}

/// Whether the client's `server.version` protocol (a version or a `[min, max]` range) admits 1.4.
fn admits_protocol(requested: Option<&Value>) -> bool {
    fn parse(v: &str) -> Option<(u32, u32)> {
        let mut parts = v.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next().map_or(Some(0), |m| m.parse().ok())?;
        Some((major, minor))
    }
    let ours = (1, 4);
    match requested {
        None | Some(Value::Null) => true,
        Some(Value::String(v)) => parse(v) == Some(ours),
        Some(Value::Array(range)) => match (range.first().and_then(Value::as_str), range.get(1).and_then(Value::as_str)) {
            (Some(min), Some(max)) => matches!((parse(min), parse(max)), (Some(min), Some(max)) if min <= ours && ours <= max),
            (Some(only), None) => parse(only).is_some_and(|min| min <= ours),
            _ => false,
        },
        Some(_) => false,
    }
}

/// The merkle branch of `index` among `hashes` and their root, as Electrum's checkpoint proofs
/// give them: hex in display (reversed) byte order.
fn merkle_branch(mut hashes: Vec<[u8; 32]>, mut index: usize) -> (Vec<String>, String) {
    let display = |h: &[u8; 32]| {
        let mut reversed = *h;
        reversed.reverse();
        hex::encode(reversed)
    };
    let mut branch = Vec::new();
    while hashes.len() > 1 {
        if hashes.len() % 2 == 1 {
            if let Some(last) = hashes.last().copied() {
                hashes.push(last);
            }
        }
        let sibling = index ^ 1;
        if let Some(h) = hashes.get(sibling) {
            branch.push(display(h));
        }
        hashes = hashes
            .chunks(2)
            .map(|pair| {
                let mut joined = [0u8; 64];
                joined[..32].copy_from_slice(&pair[0]);
                joined[32..].copy_from_slice(pair.get(1).unwrap_or(&pair[0]));
                sha256d::Hash::hash(&joined).to_byte_array()
            })
            .collect();
        index /= 2;
    }
    (branch, hashes.first().map(display).unwrap_or_default())
}

/// The checkpoint proof of the header at `height` against `cp_height`.
fn header_proof(state: &NodeState, height: u64, cp_height: u64) -> Result<(Vec<String>, String), RpcError> {
    if height > cp_height || cp_height > state.chain.height() {
        return Err(RpcError::bad(format!("height {height} and cp_height {cp_height} must satisfy height <= cp_height <= tip")));
    }
    let hashes: Vec<[u8; 32]> = (0..=cp_height).filter_map(|h| state.chain.block_hash(h)).map(|h| h.to_byte_array()).collect();
    let index = usize::try_from(height).map_err(|_| RpcError::bad("height too large"))?;
    Ok(merkle_branch(hashes, index))
}

fn tip_json(height: u64, hash: BlockHash) -> Value {
    json!({"height": height, "hash": hash.to_string()})
}

async fn dispatch(node: &Node, session: &mut Session, method: &str, params: &[Value]) -> RpcResult {
    match method {
        "server.version" => {
            if !admits_protocol(params.get(1)) {
                return Err(RpcError::bad(format!("unsupported protocol version: this server speaks {PROTOCOL_VERSION}")));
            }
            Ok(json!([SERVER_VERSION, PROTOCOL_VERSION]))
        }
        "server.ping" => Ok(Value::Null),
        "server.banner" => Ok(json!("payrail regtest node: a development chain, not Bitcoin")),
        "server.donation_address" => Ok(json!("")),
        "server.peers.subscribe" => Ok(json!([])),
        "server.features" => {
            let state = node.state().await;
            Ok(json!({
                "genesis_hash": state.chain.genesis_hash().to_string(),
                "hosts": {},
                "protocol_max": PROTOCOL_VERSION,
                "protocol_min": PROTOCOL_VERSION,
                "pruning": null,
                "server_version": SERVER_VERSION,
                "hash_function": "sha256",
            }))
        }
        "blockchain.headers.subscribe" => {
            let state = node.state().await;
            let (height, hash) = state.tip();
            let header = state.chain.header(height).ok_or_else(|| RpcError::bad("no tip header"))?;
            session.headers = Some(hash);
            Ok(json!({"hex": serialize_hex(header), "height": height}))
        }
        "blockchain.block.header" => {
            let height = param_u64(params, 0, "height")?;
            let cp_height = param_u64_or(params, 1, "cp_height", 0)?;
            let state = node.state().await;
            let header = state.chain.header(height).ok_or_else(|| RpcError::bad(format!("height {height} out of range")))?;
            if cp_height == 0 {
                return Ok(json!(serialize_hex(header)));
            }
            let (branch, root) = header_proof(&state, height, cp_height)?;
            Ok(json!({"branch": branch, "header": serialize_hex(header), "root": root}))
        }
        "blockchain.block.headers" => {
            let start = param_u64(params, 0, "start_height")?;
            let count = param_u64(params, 1, "count")?.min(HEADERS_PER_REQUEST_MAX);
            let cp_height = param_u64_or(params, 2, "cp_height", 0)?;
            let state = node.state().await;
            let end = start.saturating_add(count).min(state.chain.height().saturating_add(1));
            let mut hex = String::new();
            for height in start..end {
                if let Some(header) = state.chain.header(height) {
                    hex.push_str(&serialize_hex(header));
                }
            }
            let returned = end.saturating_sub(start);
            let mut result = json!({"count": returned, "hex": hex, "max": HEADERS_PER_REQUEST_MAX});
            if cp_height > 0 && returned > 0 {
                let (branch, root) = header_proof(&state, end - 1, cp_height)?;
                result["branch"] = json!(branch);
                result["root"] = json!(root);
            }
            Ok(result)
        }
        "blockchain.scripthash.get_history" => {
            let sh = param_script_hash(params, 0)?;
            let state = node.state().await;
            let history: Vec<Value> = state
                .history(&sh)
                .into_iter()
                .map(|item| match item.fee {
                    Some(fee) => json!({"height": item.height, "tx_hash": item.txid.to_string(), "fee": fee.to_sat()}),
                    None => json!({"height": item.height, "tx_hash": item.txid.to_string()}),
                })
                .collect();
            Ok(Value::Array(history))
        }
        "blockchain.scripthash.get_mempool" => {
            let sh = param_script_hash(params, 0)?;
            let state = node.state().await;
            let mempool: Vec<Value> = state
                .history(&sh)
                .into_iter()
                .filter_map(|item| {
                    let fee = item.fee?;
                    Some(json!({"height": item.height, "tx_hash": item.txid.to_string(), "fee": fee.to_sat()}))
                })
                .collect();
            Ok(Value::Array(mempool))
        }
        "blockchain.scripthash.get_balance" => {
            let sh = param_script_hash(params, 0)?;
            let (confirmed, unconfirmed) = node.state().await.balance(&sh);
            Ok(json!({"confirmed": confirmed, "unconfirmed": unconfirmed}))
        }
        "blockchain.scripthash.listunspent" => {
            let sh = param_script_hash(params, 0)?;
            let state = node.state().await;
            let unspent: Vec<Value> = state
                .list_unspent(&sh)
                .into_iter()
                .map(|u| {
                    json!({"height": u.height, "tx_pos": u.outpoint.vout, "tx_hash": u.outpoint.txid.to_string(), "value": u.value.to_sat()})
                })
                .collect();
            Ok(Value::Array(unspent))
        }
        "blockchain.scripthash.subscribe" => {
            let sh = param_script_hash(params, 0)?;
            if !session.scripts.contains_key(&sh) && session.scripts.len() >= SUBSCRIPTIONS_PER_CONNECTION_MAX {
                return Err(RpcError::bad(format!(
                    "a connection may subscribe to {SUBSCRIPTIONS_PER_CONNECTION_MAX} script hashes"
                )));
            }
            let status = node.state().await.status(&sh);
            session.scripts.insert(sh, status.clone());
            Ok(json!(status))
        }
        "blockchain.scripthash.unsubscribe" => {
            let sh = param_script_hash(params, 0)?;
            Ok(json!(session.scripts.remove(&sh).is_some()))
        }
        "blockchain.transaction.get" => {
            let txid = param_txid(params, 0, "tx_hash")?;
            if param_bool_or(params, 1, "verbose", false)? {
                return Err(RpcError::bad("verbose transactions are not served by the regtest node"));
            }
            let state = node.state().await;
            let tx = state.transaction(&txid).ok_or_else(|| RpcError::bad(format!("transaction {txid} not found")))?;
            Ok(json!(hex::encode(serialize(tx))))
        }
        "blockchain.transaction.get_merkle" => {
            let txid = param_txid(params, 0, "tx_hash")?;
            let height = param_u64(params, 1, "height")?;
            let state = node.state().await;
            let block = state.chain.block(height).ok_or_else(|| RpcError::bad(format!("height {height} out of range")))?;
            let txids: Vec<[u8; 32]> = block.txdata.iter().map(|tx| tx.compute_txid().to_byte_array()).collect();
            let pos = txids
                .iter()
                .position(|t| *t == txid.to_byte_array())
                .ok_or_else(|| RpcError::bad(format!("transaction {txid} is not in block {height}")))?;
            let (merkle, _) = merkle_branch(txids, pos);
            Ok(json!({"block_height": height, "merkle": merkle, "pos": pos}))
        }
        "blockchain.transaction.broadcast" => {
            let raw = param_str(params, 0, "raw_tx")?;
            let bytes = hex::decode(raw.trim()).map_err(|e| RpcError::from(RegtestError::Decode(e.to_string())))?;
            let tx: Transaction = deserialize(&bytes).map_err(|e| RpcError::from(RegtestError::Decode(e.to_string())))?;
            Ok(json!(node.broadcast(tx).await?.to_string()))
        }
        "blockchain.estimatefee" => {
            param_u64_or(params, 0, "number", 1)?;
            Ok(btc_per_kvb(FEE_RATE_SAT_PER_VB))
        }
        "blockchain.relayfee" => Ok(btc_per_kvb(RELAY_FEE_SAT_PER_VB)),
        "mempool.get_fee_histogram" => Ok(json!([])),
        "regtest.mine" => {
            let n = u32::try_from(param_u64_or(params, 0, "n", 1)?).map_err(|_| RpcError::params("n is too large"))?;
            let hashes = node.mine(n).await?;
            Ok(json!(hashes.iter().map(ToString::to_string).collect::<Vec<_>>()))
        }
        "regtest.send" => {
            let to = param_address(params, 0)?;
            let amount = Amount::from_sat(param_u64(params, 1, "sats")?);
            let rbf = param_bool_or(params, 2, "rbf", false)?;
            Ok(json!(node.send(&to, amount, rbf).await?.to_string()))
        }
        "regtest.bump" => {
            let txid = param_txid(params, 0, "txid")?;
            let extra_fee = Amount::from_sat(param_u64(params, 1, "extra_fee_sats")?);
            Ok(json!(node.bump(txid, extra_fee).await?.to_string()))
        }
        "regtest.replace" => {
            let txid = param_txid(params, 0, "txid")?;
            let to = param_address(params, 1)?;
            let amount = Amount::from_sat(param_u64(params, 2, "sats")?);
            Ok(json!(node.replace(txid, &to, amount).await?.to_string()))
        }
        "regtest.reorg" => {
            let depth = param_u32(params, 0, "depth")?;
            let new_blocks = param_u32(params, 1, "new_blocks")?;
            let include_mempool = param_bool_or(params, 2, "include_mempool", false)?;
            let (height, hash) = node.reorg(depth, new_blocks, include_mempool).await?;
            Ok(tip_json(height, hash))
        }
        "regtest.tip" => {
            let (height, hash) = node.tip().await;
            Ok(tip_json(height, hash))
        }
        "regtest.addresses" => {
            let (p2wpkh, p2tr) = node.wallet_addresses().await;
            Ok(json!({"p2wpkh": p2wpkh.to_string(), "p2tr": p2tr.to_string()}))
        }
        _ => Err(RpcError { code: METHOD_NOT_FOUND, message: format!("unknown method {method}") }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fee_rates_are_exact_btc_per_kb() {
        assert_eq!(btc_per_kvb(2).to_string(), "0.00002");
        assert_eq!(btc_per_kvb(1).to_string(), "0.00001");
        assert_eq!(btc_per_kvb(150_000).to_string(), "1.5");
    }

    #[test]
    fn protocol_negotiation_admits_ranges_that_hold_1_4() {
        assert!(admits_protocol(None));
        assert!(admits_protocol(Some(&json!("1.4"))));
        assert!(admits_protocol(Some(&json!(["1.4", "1.6"]))));
        assert!(admits_protocol(Some(&json!(["1.2", "1.4"]))));
        assert!(!admits_protocol(Some(&json!("1.6"))));
        assert!(!admits_protocol(Some(&json!(["1.5", "1.6"]))));
    }

    #[test]
    fn merkle_branch_folds_to_the_bitcoin_merkle_root() {
        let leaves: Vec<[u8; 32]> = (0u8..11).map(|i| sha256d::Hash::hash(&[i]).to_byte_array()).collect();
        let expected =
            bitcoin::merkle_tree::calculate_root(leaves.iter().map(|l| sha256d::Hash::from_byte_array(*l))).expect("a root");
        for index in 0..leaves.len() {
            let (branch, root) = merkle_branch(leaves.clone(), index);
            let mut reversed = expected.to_byte_array();
            reversed.reverse();
            assert_eq!(root, hex::encode(reversed));
            let mut acc = leaves[index];
            let mut i = index;
            for sibling in branch {
                let mut sibling: [u8; 32] = hex::decode(sibling).expect("hex").try_into().expect("32 bytes");
                sibling.reverse();
                let mut joined = [0u8; 64];
                if i % 2 == 0 {
                    joined[..32].copy_from_slice(&acc);
                    joined[32..].copy_from_slice(&sibling);
                } else {
                    joined[..32].copy_from_slice(&sibling);
                    joined[32..].copy_from_slice(&acc);
                }
                acc = sha256d::Hash::hash(&joined).to_byte_array();
                i /= 2;
            }
            assert_eq!(acc, expected.to_byte_array(), "leaf {index}");
        }
    }

    #[test]
    fn merkle_branch_of_two_leaves_is_the_sibling() {
        let a = [1u8; 32];
        let b = [2u8; 32];
        let (branch, root) = merkle_branch(vec![a, b], 0);
        let mut joined = [0u8; 64];
        joined[..32].copy_from_slice(&a);
        joined[32..].copy_from_slice(&b);
        let mut expected = sha256d::Hash::hash(&joined).to_byte_array();
        expected.reverse();
        assert_eq!(root, hex::encode(expected));
        assert_eq!(branch, vec![hex::encode([2u8; 32])]);
        let (branch, root_one) = merkle_branch(vec![a], 0);
        assert!(branch.is_empty());
        assert_eq!(root_one, hex::encode([1u8; 32]));
    }
}
