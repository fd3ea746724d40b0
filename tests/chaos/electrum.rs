//! The Bitcoin rail's node misbehaving: payrail's regtest node, its Electrum server behind a gate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bitcoin::{Address, Amount as Sats, Network};
use payrail::merchant::bitcoin::{set_descriptor, SetDescriptor};
use payrail_devnet::regtest::{RegtestConfig, RegtestNode};
use serde_json::{json, Value};

use crate::common::bitcoin::{tpub_descriptor, REGTEST};
use crate::common::BTC;
use crate::gate::{Gate, Mode};
use crate::rig::Replica;
use crate::scenarios::{finish, wait_ready, Stage, RECOVERY_MAX, SETTLE_MAX};
use crate::{Profile, Row};

/// The faults the Electrum server's gate goes through, one per phase.
const PHASES: &[Mode] = &[
    Mode::Latency(Duration::from_millis(1_500)),
    Mode::Reset,
    Mode::Garbled,
    // Longer than the Electrum client's call timeout: a server that stalls.
    Mode::Stalled,
];

/// One daemon following payrail's regtest node through its Electrum server, behind a gate that —
/// phase by phase, during the middle of the run — answers 1.5 s late, resets every connection,
/// answers every request with a line that is not JSON, and takes requests without ever answering.
/// Invoices in BTC are paid from the node's wallet and a block is mined every second. Every invoice
/// must end paid, each payment credited once, and `payrail reconcile --chain bitcoin` be clean.
pub async fn electrum_faults(profile: Profile) -> Result<Row> {
    let Stage { started, load, logs, db, anvil, merchant, .. } = Stage::set_up("electrum-faults", profile, None).await?;
    let node = RegtestNode::start(RegtestConfig { listen: "127.0.0.1:0".parse()?, mine_interval: None }).await.context("regtest node")?;
    node.mine(101).await.context("mining the wallet's first coins")?;
    let gate = Arc::new(Gate::start(node.addr()).await?);
    set_descriptor(&db.pool, &merchant.merchant_id, &REGTEST.parse()?, &SetDescriptor { descriptor: tpub_descriptor(1), gap_limit: None }).await?;
    let electrum = json!([format!("tcp://{}", gate.addr)]).to_string();
    let mut replica = Replica::new("chaos-r1", &db, &anvil, &logs)?
        .with_env("PAYRAIL_CHAINS__BITCOIN__ENABLED", "true")
        .with_env("PAYRAIL_CHAINS__BITCOIN__RPC", &electrum);
    replica.start()?;
    wait_ready(&replica.base()).await?;
    let base = replica.base();

    let node = Arc::new(node);
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let miner = {
        let node = node.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop_rx.changed() => return,
                }
                let _ = node.mine(1).await;
            }
        })
    };
    let phase = load.spread / u32::try_from(PHASES.len() + 2)?;
    let injector = {
        let (gate, node, pool) = (gate.clone(), node.clone(), db.pool.clone());
        tokio::spawn(async move {
            tokio::time::sleep(phase).await;
            for mode in PHASES {
                gate.set(*mode);
                // The stall outlasts the client's call timeout.
                tokio::time::sleep(if *mode == Mode::Stalled { phase.max(Duration::from_secs(12)) } else { phase }).await;
            }
            gate.set(Mode::Open);
            // Recovered once the watcher has followed the chain past the node's tip at this moment.
            let opened = Instant::now();
            let (tip, _) = node.tip().await;
            while opened.elapsed() < RECOVERY_MAX {
                let height: Option<i64> = sqlx::query_scalar("SELECT height FROM chain_cursors WHERE chain = $1").bind(REGTEST).fetch_optional(&pool).await?;
                if height.is_some_and(|h| u64::try_from(h).is_ok_and(|h| h >= tip)) {
                    return anyhow::Ok(Some(opened.elapsed()));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(None)
        })
    };
    let client = reqwest::Client::new();
    let pace = load.spread / u32::try_from(load.invoices.max(1))?;
    let mut sent = Vec::new();
    for i in 0..load.invoices {
        let tick = Instant::now();
        let reply = client
            .post(format!("{base}/v1/invoices"))
            .bearer_auth(&merchant.api_key)
            .header("Idempotency-Key", format!("chaos-btc-{i}"))
            .json(&json!({"amount": format!("{}.00", 20 + i % 30), "currency": "USD", "accepted": [BTC], "expires_in": 3600}))
            .send()
            .await?;
        anyhow::ensure!(reply.status().is_success(), "invoice {i}: {}", reply.status());
        let view: Value = reply.json().await?;
        let option = &view["payment_options"][0];
        let address: Address = option["address"].as_str().context("address")?.parse::<Address<bitcoin::address::NetworkUnchecked>>()?.require_network(Network::Regtest)?;
        let sats: u64 = option["amount_minor"].as_str().context("amount")?.parse()?;
        let txid = node.send(&address, Sats::from_sat(sats), false).await.context("paying from the node's wallet")?;
        sent.push((view["id"].as_str().context("id")?.to_owned(), txid.to_string()));
        tokio::time::sleep(pace.saturating_sub(tick.elapsed())).await;
    }
    let recovered = injector.await??;
    let ids: Vec<String> = sent.iter().map(|(id, _)| id.clone()).collect();
    let settling = Instant::now();
    let unpaid = loop {
        let unpaid: i64 = sqlx::query_scalar("SELECT count(*) FROM invoices WHERE id = ANY($1) AND status <> 'paid'").bind(&ids).fetch_one(&db.pool).await?;
        if unpaid == 0 || settling.elapsed() > SETTLE_MAX {
            break usize::try_from(unpaid)?;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let _ = stop_tx.send(true);
    miner.abort();
    let crashed = replica.exited();
    replica.kill9().await?;
    // A payment is doubled when its transaction holds more than one confirmed payment row or
    // unreversed ledger entry.
    let txids: Vec<String> = sent.iter().map(|(_, txid)| txid.clone()).collect();
    let doubled: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT tx_ref FROM payments WHERE status = 'confirmed' AND split_part(tx_ref, ':', 1) = ANY($1) GROUP BY 1 HAVING count(*) > 1) t",
    )
    .bind(&txids)
    .fetch_one(&db.pool)
    .await?;
    let clean = crate::rig::reconcile(crate::common::payrail_on(&db.url, &["reconcile", "--chain", "bitcoin"], "BITCOIN", &node.electrum_url()), &logs, "reconcile").await?;
    let mut notes = vec![format!("{} connections met a fault", gate.faulted())];
    if let Some(status) = crashed {
        notes.push(format!("the daemon exited on its own: {status}"));
    }
    let row = Row {
        scenario: "electrum-faults",
        load: format!("{} BTC invoices / {} s, a block a second, 1 replica", load.invoices, load.spread.as_secs()),
        faults: format!("Electrum server {} ({} s each; the stall 12 s at least)", PHASES.iter().map(|m| m.name()).collect::<Vec<_>>().join(", "), phase.as_secs()),
        payments: sent.len(),
        lost: unpaid + usize::from(crashed.is_some()),
        doubled: usize::try_from(doubled)?,
        duplicates: None,
        recovery_max: Some(recovered.unwrap_or(RECOVERY_MAX)),
        reconcile_clean: clean,
        // No connection met a fault: the faults were not real.
        bad_answers: usize::from(gate.faulted() == 0),
        notes: notes.join("; "),
        elapsed: started.elapsed(),
    };
    finish(db, row).await
}
