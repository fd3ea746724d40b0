//! `payrail pay`: pays an invoice on the dev stack from the funded dev payer account, as a
//! customer's wallet would — reads the invoice over the API, sends the quoted amount.

use anyhow::{Context, Result};
use payrail::config::Config;
use payrail_devnet as devnet;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The API's base URL, as `payrail dev` prints it.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    api: String,
    /// The merchant's API key.
    #[arg(long, env = "PAYRAIL_API_KEY")]
    key: String,
    /// The invoice to pay (`inv_…`).
    #[arg(long)]
    invoice: String,
    /// The CAIP-19 asset to pay in (one of the invoice's payment options).
    #[arg(long)]
    asset: String,
    /// Pay this many smallest units instead of the quoted amount (to try under- and overpayment).
    #[arg(long)]
    amount_minor: Option<String>,
}

pub async fn run(config: &Config, args: Args) -> Result<()> {
    let Args { api, key, invoice, asset, amount_minor } = args;
    let view: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/v1/invoices/{invoice}", api.trim_end_matches('/')))
        .bearer_auth(&key)
        .send()
        .await
        .context("reading the invoice")?
        .error_for_status()
        .context("reading the invoice")?
        .json()
        .await?;
    let option = view["payment_options"]
        .as_array()
        .and_then(|options| options.iter().find(|o| o["asset"] == asset.as_str()))
        .with_context(|| format!("{invoice} has no payment option in {asset}"))?;
    let amount = amount_minor.as_deref().or(option["amount_minor"].as_str()).context("no amount")?;
    if asset.starts_with("bip122:") {
        let to = option["address"]
            .as_str()
            .context("that option has no deposit address (set a descriptor: PUT /v1/merchants/me/bitcoin)")?;
        let sats: u64 = amount.parse()?;
        let txid = devnet::pay::pay_bitcoin(config, &asset.parse()?, to, sats).await?;
        println!("sent {sats} sat of {asset} to {to} in {txid}");
        return Ok(());
    }
    let to: alloy::primitives::Address = option["address"].as_str().context("that option has no deposit address")?.parse()?;
    let amount: alloy::primitives::U256 = amount.parse()?;
    let hash = devnet::pay::pay(config, &asset.parse()?, to, amount).await?;
    println!("sent {amount} of {asset} to {to} in {hash}");
    Ok(())
}
