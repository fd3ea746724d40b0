//! An anvil chain with payrail's dev contracts, configured as the shipped chain file says, for
//! tests that need a real EVM node.

use alloy::network::EthereumWallet;
use alloy::primitives::{Address, B256, U256};
use alloy::providers::{Provider, ProviderBuilder};
use alloy::rpc::types::TransactionRequest;
use alloy::signers::local::PrivateKeySigner;
use payrail::chain::evm::contracts::{PayoutBatcher, TestToken};
use payrail::config::{ChainSpec, RpcUrl};
use payrail_devnet::anvil::{deploy_dev_contracts_with, Anvil, DevContracts, DevTokenDecimals, DEV_PAYER_KEY};
use serde_json::{json, Value};

pub struct Chain {
    pub anvil: Anvil,
    pub spec: ChainSpec,
    pub contracts: DevContracts,
}

impl Chain {
    pub async fn start(name: &str) -> Chain {
        let config = super::repo_config();
        let mut spec = config.chain(name).expect("chain configured").clone();
        let chain_id = spec.caip2.evm_chain_id().expect("an EVM chain");
        let anvil = Anvil::start(chain_id, 0, None).await.expect("anvil starts");
        let contracts = deploy_dev_contracts_with(&anvil.url(), DevTokenDecimals::of(&spec)).await.expect("contracts");
        assert_eq!(spec.payout_batcher, Some(contracts.payout_batcher));
        spec.rpc = vec![RpcUrl::new(&anvil.url()).expect("url")];
        // anvil serves WebSocket on its HTTP port: new heads are pushed, as on the dev stack.
        spec.ws = Some(RpcUrl::new(&anvil.ws_url()).expect("ws url"));
        Chain { anvil, spec, contracts }
    }

    pub fn url(&self) -> alloy::transports::http::reqwest::Url {
        alloy::transports::http::reqwest::Url::parse(&self.anvil.url()).expect("url")
    }

    pub fn usdc(&self) -> String {
        self.spec.token("USDC").expect("USDC").asset_id().to_string()
    }

    pub async fn rpc(&self, method: &str, params: Value) -> Value {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let response: Value =
            reqwest::Client::new().post(self.anvil.url()).json(&body).send().await.expect("rpc").json().await.expect("json");
        assert!(response.get("error").is_none(), "{method}: {response}");
        response["result"].clone()
    }

    pub async fn mine(&self, blocks: u64) {
        self.rpc("anvil_mine", json!([format!("{blocks:#x}")])).await;
    }

    /// The treasury's part: the payer moves `amount` USDC units into the batcher.
    pub async fn fund_batcher(&self, amount: u64) {
        self.pay_usdc(self.contracts.payout_batcher, amount).await;
    }

    pub async fn usdc_of(&self, owner: Address) -> U256 {
        let provider = ProviderBuilder::new().connect_http(self.url());
        TestToken::new(self.contracts.usdc, &provider).balanceOf(owner).call().await.expect("balance")
    }

    /// `PayoutSent` events of the batcher: (batch id, recipient, amount).
    pub async fn payout_events(&self) -> Vec<(B256, Address, U256)> {
        let provider = ProviderBuilder::new().connect_http(self.url());
        let batcher = PayoutBatcher::new(self.contracts.payout_batcher, &provider);
        let logs = batcher.PayoutSent_filter().from_block(0).query().await.expect("logs");
        logs.into_iter().map(|(event, _)| (event.batchId, event.recipient, event.amount)).collect()
    }

    /// The dev payer sends `amount` USDC units to `to`; returns the transaction hash.
    pub async fn pay_usdc(&self, to: Address, amount: u64) -> B256 {
        let provider = ProviderBuilder::new().connect_http(self.url());
        let transfer = TestToken::new(self.contracts.usdc, &provider).transfer(to, U256::from(amount)).into_transaction_request();
        self.payer_sends(transfer).await
    }

    /// The dev payer sends `amount` wei of the native coin to `to`.
    pub async fn pay_native(&self, to: Address, amount: U256) -> B256 {
        self.payer_sends(TransactionRequest::default().to(to).value(amount)).await
    }

    /// The dev payer signs and sends `tx`; returns its hash once mined.
    async fn payer_sends(&self, tx: TransactionRequest) -> B256 {
        let payer: PrivateKeySigner = DEV_PAYER_KEY.parse().expect("key");
        let provider = ProviderBuilder::new().wallet(EthereumWallet::from(payer)).connect_http(self.url());
        provider.send_transaction(tx).await.expect("send").get_receipt().await.expect("mined").transaction_hash
    }
}
