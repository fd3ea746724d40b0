//! A JSON-RPC node that misbehaves: an HTTP/1.1 proxy on loopback in front of anvil that passes
//! requests through or, while a fault is set, answers the way failing providers do — slowly, with a
//! reset connection, a cut or malformed body, HTTP 429, JSON-RPC `-32005`, a tip that lags,
//! another chain's id, or another branch of the chain. Spoken over plain sockets so that the faults are what a client's HTTP stack
//! really sees (a reset is a TCP RST, a cut body is a short read).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does to the requests it gets while the fault is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Pass everything through.
    None,
    /// Answer correctly, but this much later.
    Latency(Duration),
    /// Close the connection with a TCP reset instead of answering.
    Reset,
    /// Send the headers and half the body, then close.
    Truncated,
    /// Answer 200 with a body that is not JSON.
    Malformed,
    /// Answer HTTP 429 with `Retry-After`.
    RateLimited,
    /// Answer JSON-RPC error `-32005` ("limit exceeded"), as hosted providers do.
    LimitExceeded,
    /// Report a tip this many blocks behind and no block past it.
    Behind(u64),
    /// Claim to serve chain 1 (every other call still passes through).
    WrongChain,
    /// Report another branch from this many blocks below the tip at the time the fault is set: the
    /// hashes of those blocks and of every later one differ (their contents do not) — a reorg only
    /// this endpoint sees.
    Forked(u64),
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Latency(_) => "latency",
            Self::Reset => "reset",
            Self::Truncated => "truncated body",
            Self::Malformed => "malformed JSON",
            Self::RateLimited => "HTTP 429",
            Self::LimitExceeded => "-32005",
            Self::Behind(_) => "behind",
            Self::WrongChain => "wrong chain id",
            Self::Forked(_) => "forked",
        }
    }
}

/// One misbehaving endpoint in front of `upstream`.
pub struct FaultProxy {
    pub url: String,
    fault: Arc<Mutex<Fault>>,
    /// Requests answered with each fault (by [`Fault::name`]).
    faulted: Arc<Mutex<BTreeMap<&'static str, u64>>>,
    /// When the last request arrived: the endpoint a client is using now is the one asked last.
    last_request: Arc<Mutex<Option<Instant>>>,
    /// Where a [`Fault::Forked`] branch begins, once placed.
    fork_at: Arc<Mutex<Option<u64>>>,
    server: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start(upstream: String) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let fault = Arc::new(Mutex::new(Fault::None));
        let faulted: Arc<Mutex<BTreeMap<&'static str, u64>>> = Arc::default();
        let client = reqwest::Client::builder().no_proxy().build()?;
        let last_request: Arc<Mutex<Option<Instant>>> = Arc::default();
        let fork_at: Arc<Mutex<Option<u64>>> = Arc::default();
        let shared = Shared { fault: fault.clone(), faulted: faulted.clone(), last_request: last_request.clone(), fork_at: fork_at.clone() };
        let server = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let shared = shared.clone();
                let (client, upstream) = (client.clone(), upstream.clone());
                tokio::spawn(async move {
                    let _ = serve(socket, &client, &upstream, &shared).await;
                });
            }
        });
        Ok(Self { url, fault, faulted, last_request, fork_at, server })
    }

    pub fn set(&self, fault: Fault) {
        if let Ok(mut f) = self.fault.lock() {
            *f = fault;
        }
        // A fork is placed below the tip as it stands when the fault is first met.
        if let Ok(mut at) = self.fork_at.lock() {
            *at = None;
        }
    }

    pub fn faulted(&self) -> BTreeMap<&'static str, u64> {
        self.faulted.lock().map(|f| f.clone()).unwrap_or_default()
    }

    pub fn last_request(&self) -> Option<Instant> {
        self.last_request.lock().ok().and_then(|at| *at)
    }
}

#[derive(Clone)]
struct Shared {
    fault: Arc<Mutex<Fault>>,
    faulted: Arc<Mutex<BTreeMap<&'static str, u64>>>,
    last_request: Arc<Mutex<Option<Instant>>>,
    fork_at: Arc<Mutex<Option<u64>>>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// One keep-alive connection: requests in, answers (or faults) out, until either side closes.
async fn serve(mut socket: TcpStream, client: &reqwest::Client, upstream: &str, shared: &Shared) -> Result<()> {
    let mut buffer = Vec::new();
    loop {
        let Some(body) = read_request(&mut socket, &mut buffer).await? else { return Ok(()) };
        if let Ok(mut at) = shared.last_request.lock() {
            *at = Some(Instant::now());
        }
        let now = shared.fault.lock().map(|f| *f).unwrap_or(Fault::None);
        let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let count = |f: Fault| {
            if let Ok(mut m) = shared.faulted.lock() {
                *m.entry(f.name()).or_default() += 1;
            }
        };
        let (status, reply) = match now {
            Fault::None => forward(client, upstream, &body).await?,
            Fault::Latency(delay) => {
                count(now);
                tokio::time::sleep(delay).await;
                forward(client, upstream, &body).await?
            }
            Fault::Reset => {
                count(now);
                // SO_LINGER 0: close() sends RST instead of FIN (and a zero linger never blocks).
                #[allow(deprecated, reason = "a zero linger is the point: the connection is reset, not closed")]
                socket.set_linger(Some(Duration::ZERO))?;
                return Ok(());
            }
            Fault::Truncated => {
                count(now);
                let (_, reply) = forward(client, upstream, &body).await?;
                let head = format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", reply.len());
                socket.write_all(head.as_bytes()).await?;
                socket.write_all(&reply[..reply.len() / 2]).await?;
                socket.shutdown().await?;
                return Ok(());
            }
            Fault::Malformed => {
                count(now);
                (200, b"{\"jsonrpc\":\"2.0\",\"id\":".to_vec())
            }
            Fault::RateLimited => {
                count(now);
                let answer = b"Too Many Requests".to_vec();
                let head = format!("HTTP/1.1 429 Too Many Requests\r\nretry-after: 1\r\ncontent-length: {}\r\n\r\n", answer.len());
                socket.write_all(head.as_bytes()).await?;
                socket.write_all(&answer).await?;
                continue;
            }
            Fault::LimitExceeded => {
                count(now);
                let error = |id: &Value| json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32005, "message": "limit exceeded"}});
                let reply = match &request {
                    Value::Array(calls) => Value::Array(calls.iter().map(|c| error(&c["id"])).collect()),
                    call => error(&call["id"]),
                };
                (200, serde_json::to_vec(&reply)?)
            }
            Fault::Behind(blocks) => {
                let (status, reply) = forward(client, upstream, &body).await?;
                match lag(&request, &reply, blocks, client, upstream).await? {
                    Some(rewritten) => {
                        count(now);
                        (status, rewritten)
                    }
                    None => (status, reply),
                }
            }
            Fault::Forked(depth) => {
                let placed = shared.fork_at.lock().ok().and_then(|at| *at);
                let from = match placed {
                    Some(from) => from,
                    None => {
                        let tip_reply = forward(client, upstream, &serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": 0, "method": "eth_blockNumber", "params": []}))?).await?.1;
                        let tip = hex_u64(&serde_json::from_slice::<Value>(&tip_reply)?["result"]).context("eth_blockNumber")?;
                        let from = tip.saturating_sub(depth);
                        if let Ok(mut at) = shared.fork_at.lock() {
                            *at = Some(from);
                        }
                        from
                    }
                };
                let (status, reply) = forward(client, upstream, &body).await?;
                let mut answer: Value = serde_json::from_slice(&reply).unwrap_or(Value::Null);
                if fork(&mut answer, from) {
                    count(now);
                }
                (status, serde_json::to_vec(&answer)?)
            }
            Fault::WrongChain => {
                if request["method"] == "eth_chainId" {
                    count(now);
                    (200, serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": request["id"], "result": "0x1"}))?)
                } else {
                    forward(client, upstream, &body).await?
                }
            }
        };
        let reason = if status == 200 { "OK" } else { "Error" };
        let head = format!("HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", reply.len());
        socket.write_all(head.as_bytes()).await?;
        socket.write_all(&reply).await?;
    }
}

/// Reads one request's body (`None` when the client closed the connection between requests).
async fn read_request(socket: &mut TcpStream, buffer: &mut Vec<u8>) -> Result<Option<Vec<u8>>> {
    let mut chunk = [0u8; 16 * 1024];
    let header_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = socket.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..header_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse())
        .transpose()?
        .unwrap_or(0);
    while buffer.len() < header_end + length {
        let n = socket.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    let body = buffer[header_end..header_end + length].to_vec();
    buffer.drain(..header_end + length);
    Ok(Some(body))
}

async fn forward(client: &reqwest::Client, upstream: &str, body: &[u8]) -> Result<(u16, Vec<u8>)> {
    let reply = client
        .post(upstream)
        .header("content-type", "application/json")
        .body(body.to_vec())
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .context("upstream")?;
    Ok((reply.status().as_u16(), reply.bytes().await?.to_vec()))
}

/// A node `blocks` behind: its tip is lower, and it knows no block past that tip. Rewrites single
/// calls only (batches pass through); `None` when the answer needs no change.
async fn lag(request: &Value, reply: &[u8], blocks: u64, client: &reqwest::Client, upstream: &str) -> Result<Option<Vec<u8>>> {
    let method = request["method"].as_str().unwrap_or_default();
    if method != "eth_blockNumber" && method != "eth_getBlockByNumber" {
        return Ok(None);
    }
    let tip_reply = if method == "eth_blockNumber" {
        reply.to_vec()
    } else {
        forward(client, upstream, &serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": 0, "method": "eth_blockNumber", "params": []}))?)
            .await?
            .1
    };
    let tip: Value = serde_json::from_slice(&tip_reply)?;
    let tip = hex_u64(&tip["result"]).context("eth_blockNumber")?;
    let lagging = tip.saturating_sub(blocks);
    let result = if method == "eth_blockNumber" {
        json!(format!("{lagging:#x}"))
    } else {
        match hex_u64(&request["params"][0]) {
            Some(height) if height > lagging => Value::Null,
            _ => return Ok(None),
        }
    };
    Ok(Some(serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": request["id"], "result": result}))?))
}

/// Puts every block and log at or above `from` in `answer` on another branch: their hashes (and the
/// parent hashes above `from`) changed, the same way each time. Whether anything changed.
fn fork(answer: &mut Value, from: u64) -> bool {
    let other = |hash: &mut Value| {
        if let Some(text) = hash.as_str().filter(|t| t.len() == 66) {
            // The last byte, inverted.
            let last = u8::from_str_radix(&text[64..], 16).unwrap_or(0);
            *hash = Value::String(format!("{}{:02x}", &text[..64], !last));
        }
    };
    match answer {
        Value::Array(items) => items.iter_mut().fold(false, |changed, item| fork(item, from) | changed),
        Value::Object(fields) => {
            let mut changed = false;
            if let Some(height) = fields.get("number").and_then(hex_u64).filter(|h| *h >= from) {
                if let Some(hash) = fields.get_mut("hash") {
                    other(hash);
                    changed = true;
                }
                if height > from {
                    if let Some(parent) = fields.get_mut("parentHash") {
                        other(parent);
                    }
                }
            }
            if fields.get("blockNumber").and_then(hex_u64).is_some_and(|h| h >= from) {
                if let Some(hash) = fields.get_mut("blockHash") {
                    other(hash);
                    changed = true;
                }
            }
            for key in ["result", "transactions"] {
                if let Some(inner) = fields.get_mut(key) {
                    changed |= fork(inner, from);
                }
            }
            changed
        }
        _ => false,
    }
}

fn hex_u64(v: &Value) -> Option<u64> {
    u64::from_str_radix(v.as_str()?.trim_start_matches("0x"), 16).ok()
}
