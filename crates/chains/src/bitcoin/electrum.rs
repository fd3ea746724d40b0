//! The one file that talks to Electrum servers (electrs, Fulcrum, ElectrumX, payrail's regtest node).
//!
//! `electrum-client` is blocking: every call runs on tokio's blocking pool. Endpoints are tried in
//! the configured order; the one that answered last is kept until it fails, then the next ones are
//! tried (each failure is logged with its endpoint, redacted). A connection is used only after its
//! server proved it follows the configured chain: the hash of its block 0 must start with the
//! chain's CAIP-2 reference. Every answer is checked where it can be: headers chain by parent
//! hash, transactions hash to the txid asked for.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bitcoin::block::Header;
use bitcoin::{BlockHash, ScriptBuf, Transaction, Txid};
use electrum_client::{Client, ConfigBuilder, ElectrumApi, GetBalanceRes, GetHistoryRes};
use thiserror::Error;

use crate::config::RpcUrl;
use crate::money::ChainId;

/// Longest a single Electrum call may take.
pub const CALL_TIMEOUT_S: u8 = 20;
/// Script hashes per `blockchain.scripthash.get_history` batch.
pub const SCRIPTS_PER_BATCH_MAX: usize = 100;
/// Transactions per `blockchain.transaction.get` batch.
pub const TRANSACTIONS_PER_BATCH_MAX: usize = 100;
/// Headers per `blockchain.block.headers` call (the protocol's own cap).
pub const HEADERS_PER_CALL_MAX: usize = 2_016;
/// Header notifications drained per tip poll; older ones are dropped (the tip call is the truth).
const NOTIFICATIONS_DRAINED_MAX: usize = 1_000;

#[derive(Debug, Error)]
pub enum ElectrumError {
    /// One endpoint failed a call or a connection; another endpoint (or a later try) may work.
    #[error("electrum {endpoint}: {operation} failed: {message}")]
    Endpoint { endpoint: String, operation: &'static str, message: String },
    /// Every endpoint failed this call.
    #[error("every electrum endpoint failed {operation}; last error: {last}")]
    AllFailed { operation: &'static str, last: String },
    /// The server follows another chain: never used, retrying does not help.
    #[error("electrum {endpoint} serves the chain with genesis {actual}, configured chain is {expected}")]
    WrongChain { endpoint: String, expected: String, actual: String },
    /// The server answered something that cannot be right (a transaction that does not hash to
    /// its txid, headers that do not chain).
    #[error("electrum {endpoint}: {what} ({key})")]
    BadAnswer { endpoint: String, what: &'static str, key: String },
    #[error("no electrum endpoint configured for {chain}")]
    NoEndpoint { chain: String },
    #[error("electrum call task failed: {0}")]
    Task(String),
}

impl ElectrumError {
    /// Whether a later try may succeed.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Self::WrongChain { .. } | Self::NoEndpoint { .. })
    }
}

pub type Result<T, E = ElectrumError> = std::result::Result<T, E>;

/// The chain's tip as the server reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tip {
    pub height: u64,
    pub hash: BlockHash,
    /// Whether header or script notifications arrived since the last poll.
    pub notified: bool,
}

/// Electrum servers of one chain, with failover.
pub struct Electrum {
    chain: ChainId,
    endpoints: Vec<RpcUrl>,
    /// The endpoint in use and its checked connection.
    current: Mutex<Option<(usize, Arc<Client>)>>,
}

impl std::fmt::Debug for Electrum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Electrum").field("chain", &self.chain).field("endpoints", &self.endpoints).finish()
    }
}

/// `electrum-client` reads notifications while it waits for an answer and fails the call when one
/// does not parse: a script whose history became empty (its only payment replaced or dropped from
/// the mempool) is announced with a null status, which it cannot read, and a script unsubscribed a
/// moment before may still be announced. Neither says anything about the server or the call.
/// Its client wrapper reports a failed call without retries as `AllAttemptsErrored` with no
/// cause, so that (from a connection that worked before) is taken for the same.
fn notification_trouble(error: &electrum_client::Error) -> bool {
    match error {
        electrum_client::Error::JSON(_) | electrum_client::Error::NotSubscribed(_) => true,
        electrum_client::Error::AllAttemptsErrored(errors) => errors.is_empty() || errors.iter().any(notification_trouble),
        _ => false,
    }
}

fn endpoint_error(endpoint: &RpcUrl, operation: &'static str, error: impl std::fmt::Display) -> ElectrumError {
    ElectrumError::Endpoint { endpoint: endpoint.to_string(), operation, message: error.to_string() }
}

impl Electrum {
    pub fn new(chain: ChainId, endpoints: Vec<RpcUrl>) -> Result<Self> {
        if endpoints.is_empty() {
            return Err(ElectrumError::NoEndpoint { chain: chain.to_string() });
        }
        Ok(Self {
            chain,
            endpoints,
            current: Mutex::new(None),
        })
    }

    /// Connects to `endpoint`, checks its genesis block and subscribes to headers.
    fn connect(chain: &ChainId, endpoint: &RpcUrl) -> Result<Client> {
        let config = ConfigBuilder::new().timeout(Some(Duration::from_secs(u64::from(CALL_TIMEOUT_S)))).retry(0).build();
        let client = Client::from_config(endpoint.as_str(), config).map_err(|e| endpoint_error(endpoint, "connect", e))?;
        let genesis = client.block_header(0).map_err(|e| endpoint_error(endpoint, "genesis header", e))?.block_hash().to_string();
        if !genesis.starts_with(chain.reference()) {
            return Err(ElectrumError::WrongChain {
                endpoint: endpoint.to_string(),
                expected: chain.to_string(),
                actual: genesis,
            });
        }
        client.block_headers_subscribe().map_err(|e| endpoint_error(endpoint, "headers subscribe", e))?;
        Ok(client)
    }

    /// Runs `call` on the current endpoint, failing over to the others in order.
    async fn call<T, F>(&self, operation: &'static str, call: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&Client) -> std::result::Result<T, electrum_client::Error> + Send + Sync + 'static,
    {
        let call = Arc::new(call);
        let start = self.current.lock().unwrap_or_else(PoisonError::into_inner).as_ref().map_or(0, |(i, _)| *i);
        let mut last: Option<ElectrumError> = None;
        let mut wrong_chain: Option<ElectrumError> = None;
        for offset in 0..self.endpoints.len() {
            let index = (start + offset) % self.endpoints.len();
            let endpoint = self.endpoints[index].clone();
            let existing = self
                .current
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
                .filter(|(i, _)| *i == index)
                .map(|(_, client)| client.clone());
            let chain = self.chain.clone();
            let call = call.clone();
            let job_endpoint = endpoint.clone();
            let outcome = tokio::task::spawn_blocking(move || -> Result<(Arc<Client>, T)> {
                let reused = existing.is_some();
                let client = match existing {
                    Some(client) => client,
                    None => Arc::new(Self::connect(&chain, &job_endpoint)?),
                };
                match call(&client) {
                    Ok(value) => Ok((client, value)),
                    // A connection kept from earlier calls may have choked on a notification it read
                    // before the answer (see `notification_trouble`): a fresh one retries once.
                    Err(error) if reused && notification_trouble(&error) => {
                        tracing::debug!(target: "watcher::bitcoin", endpoint = %job_endpoint, %error, "reconnecting after an unreadable notification");
                        let client = Arc::new(Self::connect(&chain, &job_endpoint)?);
                        let value = call(&client).map_err(|e| endpoint_error(&job_endpoint, operation, e))?;
                        Ok((client, value))
                    }
                    Err(error) => Err(endpoint_error(&job_endpoint, operation, error)),
                }
            })
            .await
            .map_err(|e| ElectrumError::Task(e.to_string()))?;
            match outcome {
                Ok((client, value)) => {
                    if offset > 0 {
                        tracing::info!(target: "watcher::bitcoin", chain = %self.chain, %endpoint, operation, "failed over to the next endpoint");
                    }
                    *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some((index, client));
                    return Ok(value);
                }
                Err(error) => {
                    tracing::warn!(target: "watcher::bitcoin", chain = %self.chain, %endpoint, %error, "electrum endpoint failed; trying the next");
                    crate::metrics::count(
                        "payrail_rpc_endpoint_errors_total",
                        "Failed calls per RPC endpoint (before failover).",
                        &[("chain", &self.chain.to_string()), ("endpoint", &endpoint.to_string())],
                        1,
                    );
                    let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
                    if current.as_ref().is_some_and(|(i, _)| *i == index) {
                        *current = None;
                    }
                    if matches!(error, ElectrumError::WrongChain { .. }) {
                        wrong_chain = Some(error);
                    } else {
                        last = Some(error);
                    }
                }
            }
        }
        // Only servers of other chains answered: a configuration error, not an outage.
        match (last, wrong_chain) {
            (None, Some(wrong)) => Err(wrong),
            (last, _) => Err(ElectrumError::AllFailed {
                operation,
                last: last.map_or_else(|| "no endpoint answered".to_owned(), |e| e.to_string()),
            }),
        }
    }

    /// Connects (if needed) and checks the server's chain.
    pub async fn check_chain(&self) -> Result<()> {
        self.call("ping", |client| client.ping()).await
    }

    /// The tip: `blockchain.headers.subscribe` answers with the current one. Header notifications
    /// read off the connection since the last poll are drained afterwards and only say that a block
    /// came.
    pub async fn tip(&self) -> Result<Tip> {
        self.call("tip", move |client| {
            // The call reads what the server sent meanwhile into the notification queue.
            let tip = client.block_headers_subscribe()?;
            let mut notified = false;
            for _ in 0..NOTIFICATIONS_DRAINED_MAX {
                match client.block_headers_pop()? {
                    Some(_) => notified = true,
                    None => break,
                }
            }
            Ok(Tip { height: u64::try_from(tip.height).unwrap_or(u64::MAX), hash: tip.header.block_hash(), notified })
        })
        .await
    }

    /// The endpoint calls go to now (the first before any call).
    pub fn endpoint(&self) -> &RpcUrl {
        let index = self.current.lock().unwrap_or_else(PoisonError::into_inner).as_ref().map_or(0, |(i, _)| *i);
        &self.endpoints[index % self.endpoints.len()]
    }

    /// Headers `start..start + count`, checked to chain by parent hash (fewer at the tip).
    pub async fn headers(&self, start: u64, count: usize) -> Result<Vec<Header>> {
        let start = usize::try_from(start).unwrap_or(usize::MAX);
        let count = count.min(HEADERS_PER_CALL_MAX);
        let headers = self.call("block headers", move |client| Ok(client.block_headers(start, count)?.headers)).await?;
        for (offset, pair) in headers.windows(2).enumerate() {
            if pair[1].prev_blockhash != pair[0].block_hash() {
                return Err(ElectrumError::BadAnswer {
                    endpoint: self.endpoint_in_use(),
                    what: "headers do not chain",
                    key: format!("height {}", start.saturating_add(offset + 1)),
                });
            }
        }
        Ok(headers)
    }

    /// The headers at `heights`, in that order.
    pub async fn headers_at(&self, heights: Vec<u64>) -> Result<Vec<Header>> {
        if heights.is_empty() {
            return Ok(Vec::new());
        }
        let heights: Vec<u32> = heights.into_iter().map(|h| u32::try_from(h).unwrap_or(u32::MAX)).collect();
        self.call("block header", move |client| client.batch_block_header(heights.iter().copied())).await
    }

    /// The history of each script, in order: confirmed transactions with their height, mempool
    /// ones with height 0 or -1.
    pub async fn histories(&self, scripts: &[ScriptBuf]) -> Result<Vec<Vec<GetHistoryRes>>> {
        let mut all = Vec::with_capacity(scripts.len());
        for chunk in scripts.chunks(SCRIPTS_PER_BATCH_MAX) {
            let chunk: Vec<ScriptBuf> = chunk.to_vec();
            let expected = chunk.len();
            let histories =
                self.call("script histories", move |client| client.batch_script_get_history(chunk.iter().map(|s| s.as_script()))).await?;
            if histories.len() != expected {
                return Err(ElectrumError::BadAnswer {
                    endpoint: self.endpoint_in_use(),
                    what: "wrong number of histories",
                    key: format!("{} of {expected}", histories.len()),
                });
            }
            all.extend(histories);
        }
        Ok(all)
    }

    /// The transactions `txids`, each checked to hash to its txid.
    pub async fn transactions(&self, txids: &[Txid]) -> Result<Vec<Transaction>> {
        let mut all = Vec::with_capacity(txids.len());
        for chunk in txids.chunks(TRANSACTIONS_PER_BATCH_MAX) {
            let chunk: Vec<Txid> = chunk.to_vec();
            let asked = chunk.clone();
            let transactions = self.call("transactions", move |client| client.batch_transaction_get(chunk.iter())).await?;
            if transactions.len() != asked.len() {
                return Err(ElectrumError::BadAnswer {
                    endpoint: self.endpoint_in_use(),
                    what: "wrong number of transactions",
                    key: format!("{} of {}", transactions.len(), asked.len()),
                });
            }
            for (txid, transaction) in asked.iter().zip(&transactions) {
                if transaction.compute_txid() != *txid {
                    return Err(ElectrumError::BadAnswer {
                        endpoint: self.endpoint_in_use(),
                        what: "transaction does not hash to the txid asked for",
                        key: txid.to_string(),
                    });
                }
            }
            all.extend(transactions);
        }
        Ok(all)
    }

    /// The transaction `txid`, or `None` when the server answers that it does not know it (an
    /// error response from a server that did answer; a failed connection is an error). Checked to
    /// hash to `txid`.
    pub async fn transaction_if_known(&self, txid: Txid) -> Result<Option<Transaction>> {
        let transaction = self
            .call("transaction", move |client| match client.transaction_get(&txid) {
                Ok(transaction) => Ok(Some(transaction)),
                Err(electrum_client::Error::Protocol(_)) => Ok(None),
                Err(error) => Err(error),
            })
            .await?;
        if let Some(transaction) = &transaction {
            if transaction.compute_txid() != txid {
                return Err(ElectrumError::BadAnswer {
                    endpoint: self.endpoint_in_use(),
                    what: "transaction does not hash to the txid asked for",
                    key: txid.to_string(),
                });
            }
        }
        Ok(transaction)
    }

    /// The balance of each script, in order: confirmed sats and the mempool's signed effect.
    pub async fn balances(&self, scripts: &[ScriptBuf]) -> Result<Vec<GetBalanceRes>> {
        let mut all = Vec::with_capacity(scripts.len());
        for chunk in scripts.chunks(SCRIPTS_PER_BATCH_MAX) {
            let chunk: Vec<ScriptBuf> = chunk.to_vec();
            let expected = chunk.len();
            let balances =
                self.call("script balances", move |client| client.batch_script_get_balance(chunk.iter().map(|s| s.as_script()))).await?;
            if balances.len() != expected {
                return Err(ElectrumError::BadAnswer {
                    endpoint: self.endpoint_in_use(),
                    what: "wrong number of balances",
                    key: format!("{} of {expected}", balances.len()),
                });
            }
            all.extend(balances);
        }
        Ok(all)
    }

    fn endpoint_in_use(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .and_then(|(i, _)| self.endpoints.get(*i))
            .map_or_else(|| "-".to_owned(), ToString::to_string)
    }
}
