//! The soak: mixed load for a long time, the daemon's resources sampled as it goes.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;

use crate::rig::{self, Replica};
use crate::scenarios::{finish, notes, wait_ready, Creators, KeyWaits, Stage, READY_MAX, SETTLE_MAX};
use crate::{Profile, Row};

/// One sample of the daemon's resources.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    rss_kb: u64,
    fds: u64,
    connections: i64,
}

/// How the soak is paced.
struct Pace {
    length: Duration,
    /// Between two invoices.
    every: Duration,
    sample_every: Duration,
    payouts_every_s: u32,
    /// Whether one invoice in ten is left to expire.
    unpaid: bool,
}

impl Pace {
    fn of(profile: Profile) -> Self {
        match profile {
            Profile::Short => Self { length: Duration::from_secs(40), every: Duration::from_millis(1_000), sample_every: Duration::from_secs(5), payouts_every_s: 10, unpaid: false },
            // `CHAOS_SOAK_S` makes the full soak shorter or longer than its hour.
            Profile::Full => Self { length: Duration::from_secs(std::env::var("CHAOS_SOAK_S").ok().and_then(|v| v.parse().ok()).unwrap_or(3_600)), every: Duration::from_millis(2_000), sample_every: Duration::from_secs(60), payouts_every_s: 300, unpaid: true },
        }
    }
}

fn sample(pid: u32, connections: i64, at: Duration) -> Result<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("the daemon's /proc status")?;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS")?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64;
    Ok(Sample { at, rss_kb, fds, connections })
}

/// Whether a series grew over the last three quarters of the run beyond noise: the mean of the last
/// quarter of it above the mean of its first quarter by more than `slack` (and 10 %).
fn grew(values: &[u64], slack: u64) -> bool {
    let n = values.len();
    if n < 4 {
        return false;
    }
    let quarter = (n / 4).max(1);
    let mean = |v: &[u64]| v.iter().sum::<u64>() / v.len() as u64;
    let (first, last) = (mean(&values[..quarter]), mean(&values[n - quarter..]));
    last > first + slack.max(first / 10)
}

/// One daemon under mixed load for an hour (full profile; 40 s short): an invoice every 2 s, nine of
/// ten paid (USDC and POL alternately) and one of ten left to expire a minute later, two clients
/// polling an invoice (20 requests a second each), a webhook endpoint getting every event, two creators paid through the
/// PayoutBatcher every 5 minutes. The daemon's RSS, open file descriptors and database connections
/// are sampled every minute: none may grow over the last three quarters of the run beyond noise
/// (10 % or 16 MB of RSS, 16 descriptors, 4 connections). Every invoice must end as it should (paid,
/// or expired), every event be delivered, every creator paid what the payouts say, and reconcile
/// be clean.
pub async fn soak(profile: Profile) -> Result<Row> {
    let pace = Pace::of(profile);
    let Stage { started, logs, db, anvil, contracts, merchant, payer, .. } = Stage::set_up("soak", profile, None).await?;
    let creators = Creators::set_up(&db, &merchant.merchant_id, &payer, contracts.payout_batcher).await?;
    let receiver = rig::Receiver::start().await?;
    let mut replica = Creators::paying(Replica::new("chaos-r1", &db, &anvil, &logs)?).with_env("PAYRAIL_PAYOUTS__INTERVAL_S", &pace.payouts_every_s.to_string());
    replica.start()?;
    wait_ready(&replica.base()).await?;
    rig::register_endpoint(&replica.base(), &merchant.api_key, &receiver.url).await?;
    let bases = vec![replica.base()];
    let pid = replica.pid().context("the daemon's pid")?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let miner = rig::spawn_miner(anvil.url(), Duration::from_millis(500), 2, stop_rx.clone());
    let probe = rig::create_invoice(&bases, &merchant.api_key, "probe", "1.00", rig::POL, READY_MAX).await?.invoice;
    // Two pollers, 20 requests a second each: within the key's 50 a second with the rest of the load.
    let prober = rig::spawn_prober(replica.base(), merchant.api_key.clone(), probe.id.clone(), 2, Duration::from_secs(7), stop_rx.clone());
    let client = reqwest::Client::new();
    let (mut sent, mut unpaid_ids, mut keys) = (Vec::new(), Vec::new(), KeyWaits::default());
    let mut samples = Vec::new();
    let mut next_sample = Instant::now();
    let mut i = 0usize;
    let soak_started = Instant::now();
    while soak_started.elapsed() < pace.length {
        let tick = Instant::now();
        if tick >= next_sample {
            let connections: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'chaos-r1'").fetch_one(&db.pool).await?;
            samples.push(sample(pid, connections, soak_started.elapsed())?);
            next_sample += pace.sample_every;
        }
        // Left unpaid: one in ten in the full profile (the short one does not wait for expiry).
        if pace.unpaid && i % 10 == 9 {
            // Left unpaid, to expire a minute later (a 429 — the pollers share the key — waited out).
            let reply = loop {
                let reply = client
                    .post(format!("{}/v1/invoices", bases[0]))
                    .bearer_auth(&merchant.api_key)
                    .header("Idempotency-Key", format!("soak-unpaid-{i}"))
                    .json(&json!({"amount": "3.00", "currency": "USD", "accepted": [rig::POL], "expires_in": 60}))
                    .send()
                    .await?;
                if reply.status().as_u16() != 429 {
                    break reply;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            };
            anyhow::ensure!(reply.status().is_success(), "unpaid invoice {i}: {}", reply.status());
            let view: serde_json::Value = reply.json().await?;
            unpaid_ids.push(view["id"].as_str().context("id")?.to_owned());
        } else {
            let (asset, amount) = rig::asset_and_amount(i);
            let created = rig::create_invoice(&bases, &merchant.api_key, &format!("soak-{i}"), &amount, asset, READY_MAX).await?;
            keys.stuck += created.stuck_keys;
            keys.waited += created.waited_keys;
            let hash = payer.pay(&created.invoice).await.with_context(|| format!("paying {}", created.invoice.id))?;
            sent.push((created.invoice, hash));
        }
        i += 1;
        tokio::time::sleep(pace.every.saturating_sub(tick.elapsed())).await;
    }
    let _ = stop_tx.send(true);
    let probed = prober.await?;
    let unpaid = rig::wait_paid(&db.pool, &anvil.url(), &sent.iter().map(|(i, _)| i.clone()).collect::<Vec<_>>(), SETTLE_MAX).await?;
    // The last payments' shares are paid at the next scheduled run.
    let payouts = creators.outcome_within(&db, &anvil.url(), &payer, Duration::from_secs(u64::from(pace.payouts_every_s) + 120)).await?;
    miner.abort();
    // The last invoices left unpaid expire a minute after they were made.
    let expiring = Instant::now();
    let not_expired = loop {
        let open: i64 = sqlx::query_scalar("SELECT count(*) FROM invoices WHERE id = ANY($1) AND status <> 'expired'").bind(&unpaid_ids).fetch_one(&db.pool).await?;
        if open == 0 || expiring.elapsed() > Duration::from_secs(90) {
            break usize::try_from(open)?;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let undelivered = rig::wait_delivered(&db.pool, &receiver, SETTLE_MAX).await?;
    let crashed = replica.exited();
    replica.kill9().await?;
    let log = receiver.log();
    let disorder = rig::out_of_order(&db.pool, &log.order).await?;
    let doubled = rig::doubled(&db.pool, &sent).await? + payouts.overpaid;
    let clean = rig::reconcile_clean(&db, &anvil, &logs).await?;

    let rss: Vec<u64> = samples.iter().map(|s| s.rss_kb).collect();
    let fds: Vec<u64> = samples.iter().map(|s| s.fds).collect();
    let conns: Vec<u64> = samples.iter().map(|s| u64::try_from(s.connections).unwrap_or(0)).collect();
    let growth = [("RSS", grew(&rss, 16 * 1024)), ("file descriptors", grew(&fds, 16)), ("connections", grew(&conns, 4))];
    let grown: Vec<&str> = growth.iter().filter(|(_, g)| *g).map(|(name, _)| *name).collect();
    let series = |name: &str, values: &[u64], unit: &str, scale: u64| {
        let shown: Vec<String> = values.iter().map(|v| (v / scale).to_string()).collect();
        format!("{name} {unit}: {}", shown.join(" "))
    };
    std::fs::write(
        logs.join("samples.txt"),
        samples.iter().map(|s| format!("{:>6} s  rss {:>7} kB  fds {:>4}  connections {:>3}\n", s.at.as_secs(), s.rss_kb, s.fds, s.connections)).collect::<String>(),
    )?;
    let first_last = |v: &[u64], scale: u64| format!("{}→{}", v.first().copied().unwrap_or(0) / scale, v.last().copied().unwrap_or(0) / scale);
    let mut notes = vec![
        format!(
            "{} samples: RSS {} MB (max {}), fds {}, connections {}; {}",
            samples.len(),
            first_last(&rss, 1024),
            rss.iter().max().copied().unwrap_or(0) / 1024,
            first_last(&fds, 1),
            first_last(&conns, 1),
            if grown.is_empty() { "flat".to_owned() } else { format!("GREW: {}", grown.join(", ")) }
        ),
        format!("{} events delivered, {} unpaid invoices expired; {}", log.count.len(), unpaid_ids.len() - not_expired, payouts.summary),
        crate::scenarios::reads_note(&probed),
    ];
    eprintln!("chaos: soak samples — {}; {}", series("RSS", &rss, "MB", 1024), series("connections", &conns, "", 1));
    if let Some(status) = crashed {
        notes.push(format!("the daemon exited on its own: {status}"));
    }
    notes.extend(Some(self::notes(keys)).filter(|n| !n.is_empty()));
    let row = Row {
        scenario: "soak",
        load: format!(
            "{} s: {} invoices ({} paid, {} left to expire), 2 pollers, webhooks, payouts every {} s",
            pace.length.as_secs(),
            i,
            sent.len(),
            unpaid_ids.len(),
            pace.payouts_every_s
        ),
        faults: format!("none (resources sampled every {} s)", pace.sample_every.as_secs()),
        payments: sent.len(),
        lost: unpaid + not_expired + undelivered + disorder + payouts.unsettled + payouts.underpaid + usize::from(crashed.is_some()),
        doubled,
        duplicates: Some(usize::try_from(log.count.values().map(|n| n.saturating_sub(1)).sum::<u32>())?),
        recovery_max: None,
        reconcile_clean: clean,
        bad_answers: usize::try_from(probed.bad)? + grown.len(),
        notes: notes.join("; "),
        elapsed: started.elapsed(),
    };
    finish(db, row).await
}
