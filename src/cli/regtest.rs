//! `payrail regtest`: payrail's own Bitcoin regtest node and its Electrum server, until Ctrl-C.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use payrail_devnet as devnet;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address of the Electrum server.
    #[arg(long, default_value = "127.0.0.1:50001")]
    listen: SocketAddr,
    /// Mine a block every N seconds (without it, blocks are mined on request only).
    #[arg(long)]
    mine_every_secs: Option<u64>,
}

pub async fn run(args: Args) -> Result<()> {
    let mine_interval = args.mine_every_secs.filter(|s| *s > 0).map(std::time::Duration::from_secs);
    let node = devnet::regtest::RegtestNode::start(devnet::regtest::RegtestConfig { listen: args.listen, mine_interval })
        .await
        .context("starting the regtest node")?;
    let (height, hash) = node.tip().await;
    let (p2wpkh, p2tr) = node.node().wallet_addresses().await;
    println!("payrail regtest node is up (development only: a new chain at every start)");
    println!("  electrum:  {}", node.electrum_url());
    println!("  chain:     {} (tip {height} {hash})", devnet::regtest::REGTEST_CAIP2);
    println!("  wallet:    {p2wpkh} {p2tr}");
    println!("  control:   regtest.mine, regtest.send, regtest.bump, regtest.replace, regtest.reorg, regtest.tip");
    println!("Ctrl-C stops it.");
    super::signal::shutdown().await;
    node.shutdown().await;
    Ok(())
}
