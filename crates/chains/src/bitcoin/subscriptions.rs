//! Script subscriptions on a connection of their own, so that the Bitcoin watcher reads the
//! history of only the scripts whose status changed instead of every watched script.
//!
//! An Electrum server answers `blockchain.scripthash.subscribe` with the script's status (a hash
//! of its history; null when it has none) and announces every later change. This module keeps
//! the last status heard per script and a set of scripts whose status differs from what was heard
//! before; the watcher takes that set at each scan. Scripts are subscribed once per connection;
//! a new connection (after an outage, another endpoint, or to drop scripts no longer watched)
//! subscribes them all again, and every script whose status moved meanwhile is marked changed.
//! Reading a status is cheap on the server and free here: the answers and announcements are read
//! by one task and only touch two maps.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bitcoin::hashes::{sha256, Hash};
use bitcoin::Script;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::config::RpcUrl;

use super::electrum::ElectrumError;

/// An Electrum script hash: SHA-256 of the script, byte order as the protocol writes it.
pub type ScriptHash = [u8; 32];

/// Longest wait to connect to the server.
pub const CONNECT_TIMEOUT_MS: u64 = 10_000;
/// Longest wait for the server to answer everything sent (100,000 subscriptions included).
pub const SYNC_TIMEOUT_MS: u64 = 60_000;

/// The protocol's script hash of `script`.
pub fn script_hash(script: &Script) -> ScriptHash {
    let mut hash = sha256::Hash::hash(script.as_bytes()).to_byte_array();
    hash.reverse();
    hash
}

#[derive(Debug, Default)]
struct Heard {
    /// The last status the server gave per script (`None`: no history).
    statuses: HashMap<ScriptHash, Option<String>>,
    /// Scripts whose status changed since the watcher last took this set.
    changed: HashSet<ScriptHash>,
    /// Requests sent on the current connection and not answered yet, by id.
    pending: HashMap<u64, ScriptHash>,
    /// Pings sent by [`Subscriptions::sync`], by id.
    pings: HashMap<u64, tokio::sync::oneshot::Sender<()>>,
    /// Scripts the server refused to subscribe (a limit per connection): read at every scan.
    refused: HashSet<ScriptHash>,
    /// Whether the current connection is still open.
    alive: bool,
}

impl Heard {
    fn status(&mut self, hash: ScriptHash, status: Option<String>) {
        if self.statuses.get(&hash) != Some(&status) {
            // A script never heard of with no history has nothing to read.
            if status.is_some() || self.statuses.contains_key(&hash) {
                self.changed.insert(hash);
            }
            self.statuses.insert(hash, status);
        }
    }
}

struct Connection {
    endpoint: RpcUrl,
    writer: Box<dyn AsyncWrite + Send + Unpin>,
    subscribed: HashSet<ScriptHash>,
    next_id: u64,
    reader: JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// See the module docs.
pub struct Subscriptions {
    chain: String,
    heard: Arc<Mutex<Heard>>,
    connection: tokio::sync::Mutex<Option<Connection>>,
}

impl std::fmt::Debug for Subscriptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriptions").field("chain", &self.chain).finish_non_exhaustive()
    }
}

impl Subscriptions {
    pub fn new(chain: impl Into<String>) -> Self {
        Self { chain: chain.into(), heard: Arc::new(Mutex::new(Heard::default())), connection: tokio::sync::Mutex::new(None) }
    }

    fn heard(&self) -> std::sync::MutexGuard<'_, Heard> {
        self.heard.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Subscribes `scripts` on a connection to `endpoint`, each once per connection. `fresh`
    /// replaces the connection (which also drops subscriptions to scripts not listed). Returns
    /// whether a new connection was made. Answers arrive later; see [`Self::take_changed`].
    pub async fn subscribe(&self, endpoint: &RpcUrl, scripts: &[ScriptHash], fresh: bool) -> Result<bool, ElectrumError> {
        let mut connection = self.connection.lock().await;
        let usable = connection.as_ref().is_some_and(|c| c.endpoint == *endpoint) && self.heard().alive && !fresh;
        let reconnected = !usable;
        if reconnected {
            *connection = None;
            *connection = Some(self.connect(endpoint).await?);
        }
        let Some(open) = connection.as_mut() else { return Ok(reconnected) };
        let mut batch = String::new();
        {
            let mut heard = self.heard();
            for hash in scripts {
                if open.subscribed.insert(*hash) {
                    let id = open.next_id;
                    open.next_id += 1;
                    heard.pending.insert(id, *hash);
                    batch.push_str(&format!(
                        "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"blockchain.scripthash.subscribe\",\"params\":[\"{}\"]}}\n",
                        hex(hash)
                    ));
                }
            }
        }
        if !batch.is_empty() {
            let written = async {
                open.writer.write_all(batch.as_bytes()).await?;
                open.writer.flush().await
            };
            if let Err(error) = written.await {
                self.heard().alive = false;
                return Err(self.error(endpoint, "scripthash subscribe", error));
            }
        }
        Ok(reconnected)
    }

    /// Waits until the server answered everything sent so far. The server sends what changed
    /// before it answers a later request, so afterwards every change up to now has been heard.
    pub async fn sync(&self) -> Result<(), ElectrumError> {
        let mut connection = self.connection.lock().await;
        let Some(open) = connection.as_mut() else { return Ok(()) };
        let id = open.next_id;
        open.next_id += 1;
        let (sender, answered) = tokio::sync::oneshot::channel();
        self.heard().pings.insert(id, sender);
        let endpoint = open.endpoint.clone();
        let line = format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"server.ping\",\"params\":[]}}\n");
        let written = async {
            open.writer.write_all(line.as_bytes()).await?;
            open.writer.flush().await
        };
        if let Err(error) = written.await {
            self.heard().alive = false;
            return Err(self.error(&endpoint, "ping", error));
        }
        drop(connection);
        match tokio::time::timeout(Duration::from_millis(SYNC_TIMEOUT_MS), answered).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(self.error(&endpoint, "ping", "connection closed")),
            Err(_) => {
                self.heard().alive = false;
                Err(self.error(&endpoint, "ping", "timed out"))
            }
        }
    }

    /// The scripts whose status changed since the last call, and those the server would not
    /// subscribe.
    pub fn take_changed(&self) -> HashSet<ScriptHash> {
        let mut heard = self.heard();
        let mut changed = std::mem::take(&mut heard.changed);
        changed.extend(heard.refused.iter().copied());
        changed
    }

    /// Whether a change is waiting to be taken.
    pub fn has_changes(&self) -> bool {
        !self.heard().changed.is_empty()
    }

    /// Scripts the server last said have a history.
    pub fn with_history(&self) -> Vec<ScriptHash> {
        self.heard().statuses.iter().filter(|(_, s)| s.is_some()).map(|(h, _)| *h).collect()
    }

    /// Forgets the statuses of scripts not in `kept` (no longer watched).
    pub fn retain(&self, kept: &HashSet<ScriptHash>) {
        let mut heard = self.heard();
        heard.statuses.retain(|h, _| kept.contains(h));
        heard.changed.retain(|h| kept.contains(h));
        heard.refused.retain(|h| kept.contains(h));
    }

    fn error(&self, endpoint: &RpcUrl, operation: &'static str, error: impl std::fmt::Display) -> ElectrumError {
        ElectrumError::Endpoint { endpoint: endpoint.to_string(), operation, message: format!("{} ({})", error, self.chain) }
    }

    async fn connect(&self, endpoint: &RpcUrl) -> Result<Connection, ElectrumError> {
        let (tls, host, port) = parse(endpoint).ok_or_else(|| self.error(endpoint, "connect", "not a tcp:// or ssl:// URL"))?;
        let tcp = tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), TcpStream::connect((host.as_str(), port)))
            .await
            .map_err(|_| self.error(endpoint, "connect", "timed out"))?
            .map_err(|e| self.error(endpoint, "connect", e))?;
        tcp.set_nodelay(true).map_err(|e| self.error(endpoint, "connect", e))?;
        let (reader, writer): (Box<dyn AsyncRead + Send + Unpin>, Box<dyn AsyncWrite + Send + Unpin>) = if tls {
            let stream = tls_connect(tcp, &host).await.map_err(|e| self.error(endpoint, "tls", e))?;
            let (r, w) = tokio::io::split(stream);
            (Box::new(r), Box::new(w))
        } else {
            let (r, w) = tcp.into_split();
            (Box::new(r), Box::new(w))
        };
        {
            let mut heard = self.heard();
            heard.pending.clear();
            heard.pings.clear();
            heard.refused.clear();
            heard.alive = true;
        }
        let heard = self.heard.clone();
        let chain = self.chain.clone();
        let reader = tokio::spawn(async move {
            let mut lines = BufReader::new(reader).lines();
            loop {
                match lines.next_line().await {
                    Ok(Some(line)) => read_line(&heard, &line),
                    Ok(None) => break,
                    Err(error) => {
                        tracing::debug!(target: "watcher::bitcoin", %chain, %error, "subscription connection failed");
                        break;
                    }
                }
            }
            heard.lock().unwrap_or_else(PoisonError::into_inner).alive = false;
        });
        Ok(Connection { endpoint: endpoint.clone(), writer, subscribed: HashSet::new(), next_id: 0, reader })
    }
}

/// One line from the server: an answer to a subscription or an announcement.
fn read_line(heard: &Mutex<Heard>, line: &str) {
    let Ok(message) = serde_json::from_str::<Value>(line) else { return };
    let mut heard = heard.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(id) = message.get("id").and_then(Value::as_u64) {
        if let Some(ping) = heard.pings.remove(&id) {
            let _ = ping.send(());
            return;
        }
        let Some(hash) = heard.pending.remove(&id) else { return };
        if let Some(error) = message.get("error").filter(|e| !e.is_null()) {
            if heard.refused.is_empty() {
                tracing::warn!(target: "watcher::bitcoin", %error, "the server refuses more script subscriptions; the scripts beyond are read at every scan");
            }
            heard.refused.insert(hash);
            return;
        }
        let status = message.get("result").and_then(Value::as_str).map(str::to_owned);
        heard.status(hash, status);
    } else if message.get("method").and_then(Value::as_str) == Some("blockchain.scripthash.subscribe") {
        let params = message.get("params").and_then(Value::as_array);
        let Some(hash) = params.and_then(|p| p.first()).and_then(Value::as_str).and_then(unhex) else { return };
        let status = params.and_then(|p| p.get(1)).and_then(Value::as_str).map(str::to_owned);
        heard.status(hash, status);
    }
}

fn hex(hash: &ScriptHash) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<ScriptHash> {
    let mut hash = [0u8; 32];
    if text.len() != 64 {
        return None;
    }
    for (i, byte) in hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(hash)
}

/// `tcp://host:port` or `ssl://host:port`.
fn parse(endpoint: &RpcUrl) -> Option<(bool, String, u16)> {
    let url = endpoint.as_str();
    let (tls, rest) = if let Some(rest) = url.strip_prefix("ssl://") { (true, rest) } else { (false, url.strip_prefix("tcp://")?) };
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest.rsplit_once(':')?;
    Some((tls, host.trim_start_matches('[').trim_end_matches(']').to_owned(), port.parse().ok()?))
}

async fn tls_connect(tcp: TcpStream, host: &str) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
    tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_mark_changes_once_and_only_real_ones() {
        let heard = Mutex::new(Heard::default());
        let a = [1u8; 32];
        let b = [2u8; 32];
        heard.lock().unwrap_or_else(PoisonError::into_inner).pending.extend([(0, a), (1, b)]);
        read_line(&heard, r#"{"jsonrpc":"2.0","id":0,"result":null}"#);
        read_line(&heard, r#"{"jsonrpc":"2.0","id":1,"result":"ab"}"#);
        let mut h = heard.lock().unwrap_or_else(PoisonError::into_inner);
        assert_eq!(std::mem::take(&mut h.changed), HashSet::from([b]), "a script without history has nothing to read");
        drop(h);
        let announce = |hash: &ScriptHash, status: &str| format!(r#"{{"jsonrpc":"2.0","method":"blockchain.scripthash.subscribe","params":["{}",{status}]}}"#, hex(hash));
        read_line(&heard, &announce(&a, r#""cd""#));
        read_line(&heard, &announce(&b, r#""ab""#));
        assert_eq!(std::mem::take(&mut heard.lock().unwrap_or_else(PoisonError::into_inner).changed), HashSet::from([a]));
        // A history that became empty (a payment dropped from the mempool) is a change too.
        read_line(&heard, &announce(&b, "null"));
        assert_eq!(std::mem::take(&mut heard.lock().unwrap_or_else(PoisonError::into_inner).changed), HashSet::from([b]));
        // A refused subscription is read at every scan instead.
        heard.lock().unwrap_or_else(PoisonError::into_inner).pending.insert(3, [3u8; 32]);
        read_line(&heard, r#"{"jsonrpc":"2.0","id":3,"error":{"code":-32600,"message":"too many subscriptions"}}"#);
        assert!(heard.lock().unwrap_or_else(PoisonError::into_inner).refused.contains(&[3u8; 32]));
        read_line(&heard, "not json");
        read_line(&heard, r#"{"jsonrpc":"2.0","id":7,"result":"ee"}"#);
        assert!(heard.lock().unwrap_or_else(PoisonError::into_inner).changed.is_empty());
    }

    #[test]
    fn endpoints_and_hashes_read_back() {
        let url = RpcUrl::new("ssl://electrum.example.com:50002").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parse(&url), Some((true, "electrum.example.com".to_owned(), 50002)));
        let url = RpcUrl::new("tcp://127.0.0.1:60401").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parse(&url), Some((false, "127.0.0.1".to_owned(), 60401)));
        let hash = [0xa5u8; 32];
        assert_eq!(unhex(&hex(&hash)), Some(hash));
    }
}
