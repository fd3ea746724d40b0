//! Local EVM chains for the dev stack and tests: one `anvil` per chain with the chain's real id,
//! on loopback, with `--prune-history` (without it anvil keeps every block's state on disk), and
//! payrail's contracts and test tokens deployed from the first default account in a fixed order so
//! that their addresses are the same on every chain and every run.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use alloy::network::EthereumWallet;
use alloy::primitives::{Address, U256};
use alloy::providers::{Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use thiserror::Error;
use tokio::process::{Child, Command};

use crate::chain::evm::contracts::{ForwarderFactory, PayoutBatcher, TestToken, TestUSDT};

/// anvil's well-known first default key: it deploys, operates the factory and pays gas. Development
/// only; it is public knowledge.
pub const DEV_DEPLOYER_KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
/// anvil's second default account: the dev treasury that sweeps land in.
pub const DEV_TREASURY: Address = alloy::primitives::address!("70997970C51812dc3A010C7d01b50e0d17dc79C8");
/// anvil's third default key: a payer with test funds.
pub const DEV_PAYER_KEY: &str = "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a";
/// How long anvil may take to answer after start.
pub const START_TIMEOUT_MS: u64 = 20_000;

/// Where `scripts/tools` installs anvil unless `PAYRAIL_ANVIL` names the binary.
const TOOLS_ANVIL: &str = "node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil";

#[derive(Debug, Error)]
pub enum AnvilError {
    #[error("anvil not found: run scripts/tools (or set PAYRAIL_ANVIL to its path)")]
    NotFound,
    #[error("cannot start anvil: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("anvil on port {port} did not answer within {START_TIMEOUT_MS} ms")]
    Timeout { port: u16 },
    #[error("deploying {contract} failed: {message}")]
    Deploy { contract: &'static str, message: String },
}

/// The contracts of a dev chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevContracts {
    pub forwarder_factory: Address,
    pub usdc: Address,
    pub usdt: Address,
    pub dai: Address,
    pub payout_batcher: Address,
}

/// A running anvil, killed when dropped.
#[derive(Debug)]
pub struct Anvil {
    child: Child,
    port: u16,
    chain_id: u64,
}

pub fn anvil_binary() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("PAYRAIL_ANVIL") {
        return Some(PathBuf::from(path));
    }
    let tools = std::env::var("PAYRAIL_TOOLS_DIR").unwrap_or_else(|_| "/var/tmp/payrail-tools".to_owned());
    let installed = PathBuf::from(tools).join(TOOLS_ANVIL);
    if installed.exists() {
        return Some(installed);
    }
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|p| p.join("anvil")).find(|p| p.exists()))
}

impl Anvil {
    /// Starts anvil for `chain_id` on 127.0.0.1:`port` (0 picks a free port). Without
    /// `block_time_s` every transaction is mined at once in its own block.
    pub async fn start(chain_id: u64, port: u16, block_time_s: Option<u64>) -> Result<Self, AnvilError> {
        let binary = anvil_binary().ok_or(AnvilError::NotFound)?;
        let port = if port == 0 {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(AnvilError::Spawn)?;
            listener.local_addr().map_err(AnvilError::Spawn)?.port()
        } else {
            port
        };
        let mut command = Command::new(binary);
        command
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--chain-id", &chain_id.to_string()])
            .args(["--prune-history", "--silent"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        if let Some(seconds) = block_time_s {
            command.args(["--block-time", &seconds.to_string()]);
        }
        let child = command.spawn().map_err(AnvilError::Spawn)?;
        let anvil = Self { child, port, chain_id };
        let provider = ProviderBuilder::new().connect_http(anvil.url_parsed());
        let started = Instant::now();
        loop {
            if provider.get_chain_id().await.is_ok() {
                return Ok(anvil);
            }
            if started.elapsed() > Duration::from_millis(START_TIMEOUT_MS) {
                return Err(AnvilError::Timeout { port });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn chain_id(&self) -> u64 {
        self.chain_id
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The same node over WebSocket (anvil serves both on one port): where new heads are pushed.
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    fn url_parsed(&self) -> alloy::transports::http::reqwest::Url {
        // A loopback URL built from a port number always parses.
        alloy::transports::http::reqwest::Url::parse(&self.url()).expect("loopback url is valid")
    }

    /// From now on, mine a block every `seconds` (confirmations keep coming without traffic).
    pub async fn set_interval_mining(&self, seconds: u64) -> Result<(), AnvilError> {
        let provider = ProviderBuilder::new().connect_http(self.url_parsed());
        provider
            .raw_request::<_, serde_json::Value>("evm_setIntervalMining".into(), (seconds,))
            .await
            .map(|_| ())
            .map_err(|e| AnvilError::Deploy { contract: "interval mining", message: e.to_string() })
    }

    /// Stops anvil now.
    pub async fn stop(&mut self) {
        let _ = self.child.kill().await;
    }
}

fn deploy_error(contract: &'static str) -> impl Fn(alloy::contract::Error) -> AnvilError {
    move |e| AnvilError::Deploy { contract, message: e.to_string() }
}

/// The test tokens' decimals, as the chain's real tokens have them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevTokenDecimals {
    pub usdc: u8,
    pub usdt: u8,
    pub dai: u8,
}

impl DevTokenDecimals {
    /// Ethereum, Polygon, Arbitrum and Optimism: USDC and USDT have 6 decimals, DAI 18.
    pub const COMMON: Self = Self { usdc: 6, usdt: 6, dai: 18 };

    /// The decimals of the chain's configured tokens (18 for all three on BSC).
    pub fn of(chain: &crate::config::ChainSpec) -> Self {
        let decimals = |symbol: &str, default: u8| chain.token(symbol).map_or(default, |t| t.decimals);
        Self { usdc: decimals("USDC", 6), usdt: decimals("USDT", 6), dai: decimals("DAI", 18) }
    }
}

/// [`deploy_dev_contracts_with`] for the common token decimals.
/// Funds the payout batcher as a treasury would: a million of each test token (minted) and 1,000 of
/// the native coin (from the deployer), so creator payouts work on the dev stack out of the box.
pub async fn fund_dev_batcher(url: &str, contracts: &DevContracts, decimals: DevTokenDecimals) -> Result<(), AnvilError> {
    let signer: PrivateKeySigner = DEV_DEPLOYER_KEY.parse().map_err(|e: alloy::signers::local::LocalSignerError| {
        AnvilError::Deploy { contract: "deployer key", message: e.to_string() }
    })?;
    let url = alloy::transports::http::reqwest::Url::parse(url)
        .map_err(|e| AnvilError::Deploy { contract: "endpoint", message: e.to_string() })?;
    let provider = ProviderBuilder::new().wallet(EthereumWallet::from(signer)).connect_http(url);
    let tokens = [(contracts.usdc, decimals.usdc), (contracts.usdt, decimals.usdt), (contracts.dai, decimals.dai)];
    mint_a_million_each(&provider, tokens, contracts.payout_batcher).await?;
    let native = alloy::rpc::types::TransactionRequest::default()
        .to(contracts.payout_batcher)
        .value(U256::from(1_000u64) * U256::from(10u64).pow(U256::from(18u64)));
    provider
        .send_transaction(native)
        .await
        .map_err(|e| AnvilError::Deploy { contract: "fund batcher", message: e.to_string() })?
        .get_receipt()
        .await
        .map_err(|e| AnvilError::Deploy { contract: "fund batcher", message: e.to_string() })?;
    Ok(())
}

/// Mints a million whole units of each `(token, decimals)` to `to`. `mint` has the same signature on
/// both test token contracts.
async fn mint_a_million_each<P: Provider>(provider: &P, tokens: [(Address, u8); 3], to: Address) -> Result<(), AnvilError> {
    let million = U256::from(1_000_000u64);
    for (token, decimals) in tokens {
        TestToken::new(token, provider)
            .mint(to, million * U256::from(10u64).pow(U256::from(decimals)))
            .send()
            .await
            .map_err(deploy_error("mint"))?
            .get_receipt()
            .await
            .map_err(|e| AnvilError::Deploy { contract: "mint", message: e.to_string() })?;
    }
    Ok(())
}

pub async fn deploy_dev_contracts(url: &str) -> Result<DevContracts, AnvilError> {
    deploy_dev_contracts_with(url, DevTokenDecimals::COMMON).await
}

/// Deploys the factory, the three test tokens and the payout batcher from the first default
/// account, in that order (so at its nonces 0 to 4), and funds the dev payer with a million of each
/// token. A 6-decimal USDT returns nothing from `transfer`, like mainnet USDT; an 18-decimal one (BSC)
/// is a standard token, like BSC's.
pub async fn deploy_dev_contracts_with(url: &str, decimals: DevTokenDecimals) -> Result<DevContracts, AnvilError> {
    let signer: PrivateKeySigner = DEV_DEPLOYER_KEY.parse().map_err(|e: alloy::signers::local::LocalSignerError| {
        AnvilError::Deploy { contract: "deployer key", message: e.to_string() }
    })?;
    let deployer = signer.address();
    let url = alloy::transports::http::reqwest::Url::parse(url)
        .map_err(|e| AnvilError::Deploy { contract: "endpoint", message: e.to_string() })?;
    let provider = ProviderBuilder::new().wallet(EthereumWallet::from(signer)).connect_http(url);
    let factory = ForwarderFactory::deploy(&provider, deployer, DEV_TREASURY).await.map_err(deploy_error("ForwarderFactory"))?;
    let usdc = TestToken::deploy(&provider, "USD Coin (test)".to_owned(), "USDC".to_owned(), decimals.usdc)
        .await
        .map_err(deploy_error("USDC"))?;
    let usdt = if decimals.usdt == 6 {
        *TestUSDT::deploy(&provider).await.map_err(deploy_error("USDT"))?.address()
    } else {
        *TestToken::deploy(&provider, "Tether USD (test)".to_owned(), "USDT".to_owned(), decimals.usdt)
            .await
            .map_err(deploy_error("USDT"))?
            .address()
    };
    let dai = TestToken::deploy(&provider, "Dai (test)".to_owned(), "DAI".to_owned(), decimals.dai)
        .await
        .map_err(deploy_error("DAI"))?;
    let batcher = PayoutBatcher::deploy(&provider, deployer).await.map_err(deploy_error("PayoutBatcher"))?;
    let payer: PrivateKeySigner = DEV_PAYER_KEY.parse().map_err(|e: alloy::signers::local::LocalSignerError| {
        AnvilError::Deploy { contract: "payer key", message: e.to_string() }
    })?;
    let tokens = [(*usdc.address(), decimals.usdc), (usdt, decimals.usdt), (*dai.address(), decimals.dai)];
    mint_a_million_each(&provider, tokens, payer.address()).await?;
    Ok(DevContracts {
        forwarder_factory: *factory.address(),
        usdc: *usdc.address(),
        usdt,
        dai: *dai.address(),
        payout_batcher: *batcher.address(),
    })
}
