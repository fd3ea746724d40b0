//! Paying an invoice on the dev stack from anvil's funded payer account: what a customer's wallet
//! would do, so the whole flow can be tried from a terminal.

use alloy::network::EthereumWallet;
use alloy::primitives::{Address, U256};
use alloy::providers::{Provider, ProviderBuilder};
use alloy::rpc::types::TransactionRequest;
use alloy::signers::local::PrivateKeySigner;
use thiserror::Error;

use crate::chain::evm::contracts::{TestToken, TestUSDT};
use crate::config::Config;
use crate::money::AssetId;

use super::anvil::DEV_PAYER_KEY;

#[derive(Debug, Error)]
pub enum PayError {
    #[error("no enabled chain {chain} in the configuration")]
    UnknownChain { chain: String },
    #[error("{0}")]
    Invalid(String),
    #[error("sending failed: {0}")]
    Send(String),
}

/// Sends `amount` smallest units of `asset` to `to` from the dev payer; returns the tx hash.
pub async fn pay(config: &Config, asset: &AssetId, to: Address, amount: U256) -> Result<String, PayError> {
    let chain = config
        .chain_by_id(asset.chain())
        .ok_or_else(|| PayError::UnknownChain { chain: asset.chain().to_string() })?;
    let url = chain.rpc.first().ok_or_else(|| PayError::Invalid(format!("{} has no endpoint", chain.name)))?;
    let url = alloy::transports::http::reqwest::Url::parse(url.as_str()).map_err(|e| PayError::Invalid(e.to_string()))?;
    let signer: PrivateKeySigner = DEV_PAYER_KEY.parse().map_err(|_| PayError::Invalid("payer key".to_owned()))?;
    let provider = ProviderBuilder::new().wallet(EthereumWallet::from(signer)).connect_http(url);
    let send = |e: alloy::contract::Error| PayError::Send(e.to_string());
    let pending = match (asset.erc20_address(), asset.erc20_address().and_then(|a| chain.token_by_address(&a))) {
        (Some(token), Some(spec)) if spec.symbol == "USDT" => {
            TestUSDT::new(token, &provider).transfer(to, amount).send().await.map_err(send)?
        }
        (Some(token), Some(_)) => TestToken::new(token, &provider).transfer(to, amount).send().await.map_err(send)?,
        (Some(token), None) => return Err(PayError::Invalid(format!("{token} is not a token of {}", chain.name))),
        (None, _) => provider
            .send_transaction(TransactionRequest::default().to(to).value(amount))
            .await
            .map_err(|e| PayError::Send(e.to_string()))?,
    };
    let receipt = pending.get_receipt().await.map_err(|e| PayError::Send(e.to_string()))?;
    Ok(format!("{:#x}", receipt.transaction_hash))
}

/// Sends `amount_sats` to the Bitcoin address `to` from the regtest node's wallet (the node behind
/// the chain's first endpoint), signalling replace-by-fee; returns the txid. The payment shows as
/// processing at once and confirms with the node's next blocks.
pub async fn pay_bitcoin(config: &Config, asset: &AssetId, to: &str, amount_sats: u64) -> Result<String, PayError> {
    let chain = config
        .chain_by_id(asset.chain())
        .ok_or_else(|| PayError::UnknownChain { chain: asset.chain().to_string() })?;
    let network = crate::chain::bitcoin::network_of(&chain.caip2)
        .ok_or_else(|| PayError::Invalid(format!("{} is not a Bitcoin network", chain.caip2)))?;
    let address = crate::chain::bitcoin::descriptor::parse_address(to, network)
        .ok_or_else(|| PayError::Invalid(format!("{to} is not an address of {}", chain.name)))?;
    let url = chain.rpc.first().ok_or_else(|| PayError::Invalid(format!("{} has no endpoint", chain.name)))?;
    let node = super::regtest::RegtestControl::connect_url(url.as_str()).await.map_err(|e| PayError::Send(e.to_string()))?;
    let txid = node
        .send(&address, bitcoin::Amount::from_sat(amount_sats), true)
        .await
        .map_err(|e| PayError::Send(e.to_string()))?;
    Ok(txid.to_string())
}
