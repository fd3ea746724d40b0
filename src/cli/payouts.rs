//! `payrail payouts run`: one payout run, then — holding the executor lock, so that only this
//! process sends — every open batch driven to a final state. Exits non-zero when a batch failed
//! or is still open at the deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use payrail::config::Config;
use payrail::secrets::{SecretsAtRest, SecretsKey};
use payrail::{app, payout};
use secrecy::ExposeSecret;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Pay creators now: write a batch per chain and asset for every creator above the threshold,
    /// then, with the hot wallet key (PAYRAIL_HOT_WALLET_KEY or PAYRAIL_HOT_WALLET_KEY_FILE), send
    /// the open batches and wait until each is confirmed or failed.
    Run {
        /// Only this chain (name or CAIP-2 id).
        #[arg(long)]
        chain: Option<String>,
        /// Only this asset (CAIP-19).
        #[arg(long)]
        asset: Option<String>,
        /// Only write the batches; the daemon's payout executor sends them.
        #[arg(long)]
        no_send: bool,
        /// Stop waiting after this many seconds; open batches are then left to the daemon.
        #[arg(long, default_value_t = 900)]
        wait_s: u64,
    },
}

pub async fn run(config: &Config, command: Command) -> Result<()> {
    let Command::Run { chain, asset, no_send, wait_s } = command;
    let pool = super::connect(config, 4).await?;
    // This command writes no webhook secrets; the state only needs to say how they would be kept.
    let secrets = match SecretsKey::from_env()? {
        Some(key) => SecretsAtRest::Sealed(Arc::new(key)),
        None => SecretsAtRest::Plaintext,
    };
    let state = app::state(config, pool.clone(), Arc::new(payrail::clock::SystemClock), secrets);
    let service = state.payouts.clone().context("no enabled chain has a payout_batcher")?;
    let key = if no_send { None } else { app::hot_wallet_key_from_env().context("reading the hot wallet key")? };
    // One executor only: take its lock before writing, so this process may send what it writes.
    let mut lock = match &key {
        Some(_) => payout::try_lock_executor(&pool).await?,
        None => None,
    };
    let summary = service.run(&payout::RunRequest { chain, asset }).await?;
    println!("run {}: {} batch(es)", summary.run_id, summary.created.len());
    for batch in &summary.created {
        println!("  {} {} {} total {} to {} creator(s)", batch.id, batch.chain, batch.asset, batch.total_minor, batch.recipients);
    }
    for skipped in &summary.skipped {
        println!("  skipped {} {} {}: {:?}", skipped.creator_id, skipped.asset, skipped.amount_minor, skipped.reason);
    }
    let Some(key) = key else {
        println!("not sending (no hot wallet key, or --no-send): the daemon's payout executor sends open batches");
        return Ok(());
    };
    let Some(leadership) = lock.as_mut() else {
        println!("another payrail process is the payout executor: it sends these batches");
        return Ok(());
    };
    let mut senders = Vec::new();
    for (_, sender) in service.senders(key.expose_secret()) {
        senders.push(sender?);
    }
    let open = payout::store::open_batch_ids(&pool).await?;
    let deadline = Instant::now() + Duration::from_secs(wait_s);
    let poll = Duration::from_millis(config.payouts.poll_interval_ms.min(1_000));
    payout::drive(&pool, leadership, &senders, &open, poll, deadline, |id, progress| println!("  {id}: {progress:?}")).await?;
    let mut failed = 0;
    for id in &open {
        let view = payout::store::view(&pool, id).await?;
        println!("{} {} {}", view.id, view.status, view.tx_hash.as_deref().unwrap_or("-"));
        failed += usize::from(view.status != "confirmed");
    }
    anyhow::ensure!(failed == 0, "{failed} payout batch(es) failed or are still open");
    Ok(())
}
