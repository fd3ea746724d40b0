//! A client for the regtest node's development-only `regtest.*` control methods, for tests and
//! tools in another process than the node (e.g. against `payrail dev` or `payrail regtest`).
//! It mirrors [`super::RegtestHandle`] over one TCP connection.
//!
//! The connection subscribes to nothing, so every line the node sends is the answer to the one
//! request in flight (a lock keeps one request in flight); stray notifications are skipped.

use std::net::SocketAddr;
use std::str::FromStr;

use bitcoin::{Address, Amount, BlockHash, Txid};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use super::electrum::LINE_BYTES_MAX;
use super::{RegtestError, Result};

#[derive(Debug)]
struct Connection {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    id_next: u64,
}

/// A control connection to a regtest node.
#[derive(Debug)]
pub struct RegtestControl {
    addr: SocketAddr,
    connection: Mutex<Connection>,
}

impl RegtestControl {
    /// Connects to the node's Electrum port.
    pub async fn connect(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect(addr).await.map_err(|source| RegtestError::Connect { addr, source })?;
        let (read, writer) = stream.into_split();
        Ok(Self { addr, connection: Mutex::new(Connection { reader: BufReader::new(read), writer, id_next: 1 }) })
    }

    /// Connects to `tcp://ip:port`.
    pub async fn connect_url(url: &str) -> Result<Self> {
        Self::connect(super::socket_addr_from_url(url)?).await
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends one request and returns its result, or the node's error as [`RegtestError::Rpc`].
    pub async fn call(&self, method: &str, params: Value) -> Result<Value> {
        let mut connection = self.connection.lock().await;
        let id = connection.id_next;
        connection.id_next += 1;
        let mut line = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string().into_bytes();
        line.push(b'\n');
        connection.writer.write_all(&line).await?;
        loop {
            let mut answer = String::new();
            let limit = u64::try_from(LINE_BYTES_MAX).unwrap_or(u64::MAX).saturating_add(1);
            let read = (&mut connection.reader).take(limit).read_line(&mut answer).await?;
            if read == 0 {
                return Err(RegtestError::Protocol { method: method.to_owned(), reason: "connection closed".to_owned() });
            }
            if answer.len() > LINE_BYTES_MAX {
                return Err(RegtestError::Protocol { method: method.to_owned(), reason: "answer too long".to_owned() });
            }
            let mut answer: Value = serde_json::from_str(&answer)
                .map_err(|e| RegtestError::Protocol { method: method.to_owned(), reason: e.to_string() })?;
            if answer.get("id").and_then(Value::as_u64) != Some(id) {
                continue;
            }
            if let Some(error) = answer.get("error").filter(|e| !e.is_null()) {
                return Err(RegtestError::Rpc {
                    method: method.trim_start_matches("regtest.").to_owned(),
                    code: error.get("code").and_then(Value::as_i64).unwrap_or_default(),
                    message: error.get("message").and_then(Value::as_str).unwrap_or("no message").to_owned(),
                });
            }
            return Ok(answer["result"].take());
        }
    }

    fn unexpected(method: &str, reason: impl Into<String>) -> RegtestError {
        RegtestError::Protocol { method: method.to_owned(), reason: reason.into() }
    }

    fn txid(method: &str, value: &Value) -> Result<Txid> {
        value.as_str().and_then(|s| Txid::from_str(s).ok()).ok_or_else(|| Self::unexpected(method, "not a txid"))
    }

    fn tip_of(method: &str, value: &Value) -> Result<(u64, BlockHash)> {
        let height = value.get("height").and_then(Value::as_u64);
        let hash = value.get("hash").and_then(Value::as_str).and_then(|s| BlockHash::from_str(s).ok());
        height.zip(hash).ok_or_else(|| Self::unexpected(method, "not a {height, hash} object"))
    }

    pub async fn mine(&self, n: u32) -> Result<Vec<BlockHash>> {
        let result = self.call("regtest.mine", json!([n])).await?;
        result
            .as_array()
            .ok_or_else(|| Self::unexpected("regtest.mine", "not an array"))?
            .iter()
            .map(|h| {
                h.as_str()
                    .and_then(|s| BlockHash::from_str(s).ok())
                    .ok_or_else(|| Self::unexpected("regtest.mine", "not a block hash"))
            })
            .collect()
    }

    pub async fn send(&self, to: &Address, amount: Amount, rbf: bool) -> Result<Txid> {
        let result = self.call("regtest.send", json!([to.to_string(), amount.to_sat(), rbf])).await?;
        Self::txid("regtest.send", &result)
    }

    pub async fn bump(&self, txid: Txid, extra_fee: Amount) -> Result<Txid> {
        let result = self.call("regtest.bump", json!([txid.to_string(), extra_fee.to_sat()])).await?;
        Self::txid("regtest.bump", &result)
    }

    pub async fn replace(&self, txid: Txid, to: &Address, amount: Amount) -> Result<Txid> {
        let result = self.call("regtest.replace", json!([txid.to_string(), to.to_string(), amount.to_sat()])).await?;
        Self::txid("regtest.replace", &result)
    }

    pub async fn reorg(&self, depth: u32, new_blocks: u32, include_mempool: bool) -> Result<(u64, BlockHash)> {
        let result = self.call("regtest.reorg", json!([depth, new_blocks, include_mempool])).await?;
        Self::tip_of("regtest.reorg", &result)
    }

    pub async fn tip(&self) -> Result<(u64, BlockHash)> {
        let result = self.call("regtest.tip", json!([])).await?;
        Self::tip_of("regtest.tip", &result)
    }
}
