//! Resource faults: statements the server cancels, a full disk, a host clock that jumps.

use std::time::Duration;

use anyhow::{Context, Result};

use crate::rig::{self, Replica};
use crate::scenarios::{finish, notes, pay_all, reads_note, spawn_repeated, wait_ready, Stage, READY_MAX, SETTLE_MAX};
use crate::{Profile, Row};

/// How often a replica's log says `needle`.
fn log_count(replica: &Replica, needle: &str) -> usize {
    std::fs::read_to_string(replica.log_file()).map(|log| log.matches(needle).count()).unwrap_or(0)
}

/// Two replicas whose sessions cancel any statement after 250 ms (`statement_timeout`, and
/// `lock_timeout` 200 ms), while another session takes the tables payments are written to —
/// invoices, payments, the ledger's journal entries and the outbox — in ACCESS EXCLUSIVE mode for 1-2 s
/// every 2-4 s (short profile; 2-5 s every 5-10 s in the full one). Reads and writes that wait on
/// those tables are cancelled: requests must answer 503 with `Retry-After`, the chain watchers and
/// every other job must try again, and nothing may be lost or doubled.
pub async fn statement_timeouts(profile: Profile) -> Result<Row> {
    let Stage { started, load, logs, db, anvil, merchant, payer, .. } = Stage::set_up("statement-timeouts", profile, None).await?;
    let (hold, every) = match profile {
        Profile::Short => ((1_000, 2_000), (2_000, 4_000)),
        Profile::Full => ((2_000, 5_000), (5_000, 10_000)),
    };
    let mut replicas = Vec::new();
    for i in 1..=2 {
        let mut r = Replica::new(&format!("chaos-r{i}"), &db, &anvil, &logs)?.with_url_params("options[statement_timeout]=250&options[lock_timeout]=200");
        r.start()?;
        replicas.push(r);
    }
    for r in &replicas {
        wait_ready(&r.base()).await?;
    }
    let bases: Vec<String> = replicas.iter().map(Replica::base).collect();
    let probe_invoice = rig::create_invoice(&bases, &merchant.api_key, "probe", "1.00", rig::POL, READY_MAX).await?.invoice;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let miner = rig::spawn_miner(anvil.url(), Duration::from_millis(500), 2, stop_rx.clone());
    // The daemon's request timeout (5 s) and a margin: no answer by then is a hang.
    let prober = rig::spawn_prober(bases[0].clone(), merchant.api_key.clone(), probe_invoice.id.clone(), 4, Duration::from_secs(7), stop_rx.clone());
    let locker = spawn_repeated(0x3c6e_f372_fe94_f82b, every, hold, db.pool.clone(), anvil.url(), stop_rx.clone(), {
        let pool = db.pool.clone();
        move |hold| {
            let pool = pool.clone();
            async move {
                let mut tx = pool.begin().await?;
                sqlx::query("LOCK TABLE invoices, payments, journal_entries, outbox IN ACCESS EXCLUSIVE MODE").execute(&mut *tx).await?;
                tokio::time::sleep(hold).await;
                Ok(tx.rollback().await?)
            }
        }
    });

    let sent = pay_all(&bases, &merchant.api_key, &payer, &load).await;
    let _ = stop_tx.send(true);
    let locks = locker.await??;
    let probed = prober.await?;
    let (sent, keys) = sent?;
    let lost = rig::wait_paid(&db.pool, &anvil.url(), &sent.iter().map(|(i, _)| i.clone()).collect::<Vec<_>>(), SETTLE_MAX).await?;
    miner.abort();
    let mut crashed = 0;
    for r in &mut replicas {
        if let Some(status) = r.exited() {
            eprintln!("chaos: {} exited on its own: {status}", r.name);
            crashed += 1;
        }
        r.kill9().await?;
    }
    let cancelled: usize = replicas.iter().map(|r| log_count(r, "statement timeout") + log_count(r, "lock timeout")).sum();
    let doubled = rig::doubled(&db.pool, &sent).await?;
    let clean = rig::reconcile_clean(&db, &anvil, &logs).await?;
    let mut notes = vec![format!("{cancelled} statements cancelled (as logged); {}", reads_note(&probed))];
    notes.extend(Some(self::notes(keys)).filter(|n| !n.is_empty()));
    let row = Row {
        scenario: "statement-timeouts",
        load: format!("{}, 4 readers without pause", load.describe(2)),
        faults: format!(
            "{} x payment tables locked {}-{} s; statement_timeout 250 ms, lock_timeout 200 ms",
            locks.count,
            hold.0 / 1000,
            hold.1 / 1000
        ),
        payments: sent.len(),
        lost: lost + crashed,
        doubled,
        duplicates: None,
        recovery_max: locks.recovery_max(),
        reconcile_clean: clean,
        // Without a single cancelled statement the fault was not real.
        bad_answers: usize::try_from(probed.bad)? + usize::from(cancelled == 0),
        notes: notes.join("; "),
        elapsed: started.elapsed(),
    };
    finish(db, row).await
}

/// One replica on a PostgreSQL whose data directory is on a small volume of its own, filled to the
/// last byte for 3-6 s every 4-8 s (short profile; 20 s every 30-45 s in the full one) while
/// payments flow. Writes that need a new page fail (`53100 could not extend file`); the daemon
/// must stop writing, answer 503 with `Retry-After`, and pick up where it was once space returns.
pub async fn disk_full(profile: Profile) -> Result<Row> {
    let (hold, every) = match profile {
        Profile::Short => ((3_000, 6_000), (4_000, 8_000)),
        Profile::Full => ((20_000, 20_000), (30_000, 45_000)),
    };
    let cluster = std::sync::Arc::new(rig::Cluster::start_on_volume(&[], 320).await?);
    let Stage { started, load, logs, db, anvil, merchant, payer, .. } = Stage::set_up("disk-full", profile, Some(&cluster.admin_url())).await?;
    let mut replica = Replica::new("chaos-r1", &db, &anvil, &logs)?;
    replica.start()?;
    wait_ready(&replica.base()).await?;
    let bases = vec![replica.base()];
    let probe_invoice = rig::create_invoice(&bases, &merchant.api_key, "probe", "1.00", rig::POL, READY_MAX).await?.invoice;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let miner = rig::spawn_miner(anvil.url(), Duration::from_millis(500), 2, stop_rx.clone());
    let prober = rig::spawn_prober(replica.base(), merchant.api_key.clone(), probe_invoice.id.clone(), 2, Duration::from_secs(7), stop_rx.clone());
    let largest = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let filler = spawn_repeated(0xa54f_f53a_5f1d_36f1, every, hold, db.pool.clone(), anvil.url(), stop_rx.clone(), {
        let (cluster, largest) = (cluster.clone(), largest.clone());
        move |hold| {
            let (cluster, largest) = (cluster.clone(), largest.clone());
            async move {
                largest.fetch_max(cluster.fill_volume()?, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(hold).await;
                cluster.free_volume()
            }
        }
    });

    let sent = pay_all(&bases, &merchant.api_key, &payer, &load).await;
    let _ = stop_tx.send(true);
    let fills = filler.await??;
    let largest = largest.load(std::sync::atomic::Ordering::Relaxed);
    let probed = prober.await?;
    let (sent, keys) = sent?;
    let lost = rig::wait_paid(&db.pool, &anvil.url(), &sent.iter().map(|(i, _)| i.clone()).collect::<Vec<_>>(), SETTLE_MAX).await?;
    miner.abort();
    let crashed = replica.exited();
    replica.kill9().await?;
    let full = cluster.server_log().matches("No space left on device").count();
    let doubled = rig::doubled(&db.pool, &sent).await?;
    let clean = rig::reconcile_clean(&db, &anvil, &logs).await?;
    let mut notes = vec![format!("{full} writes refused for want of space (server log); {}", reads_note(&probed))];
    if let Some(status) = crashed {
        notes.push(format!("the daemon exited on its own: {status}"));
    }
    notes.extend(Some(self::notes(keys)).filter(|n| !n.is_empty()));
    let row = Row {
        scenario: "disk-full",
        load: format!("{}, 2 readers without pause", load.describe(1)),
        faults: format!("{} x the database's data volume full ({largest} MB of ballast) for {}-{} s", fills.count, hold.0 / 1000, hold.1 / 1000),
        payments: sent.len(),
        lost: lost + usize::from(crashed.is_some()),
        doubled,
        duplicates: None,
        recovery_max: fills.recovery_max(),
        reconcile_clean: clean,
        bad_answers: usize::try_from(probed.bad)? + usize::from(full == 0),
        notes: notes.join("; "),
        elapsed: started.elapsed(),
    };
    finish(db, row).await
}

/// libfaketime (Debian's `faketime`, installed by `scripts/chaos` when missing).
fn libfaketime() -> Result<std::path::PathBuf> {
    ["/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1", "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1", "/usr/lib/faketime/libfaketime.so.1"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
        .context("libfaketime (Debian package faketime)")
}

/// Two replicas, the first under libfaketime: its wall clock jumps 2 hours forward an eighth into
/// the run, then 1 hour back (behind the real time) at five eighths until every payment settled,
/// while payments flow (the monotonic clock is left alone, as a real jump leaves it). Invoices live
/// an hour: a daemon that trusted its wall clock would expire every open invoice on the jump forward
/// and stamp new ones an hour in the past. No invoice may expire, every one must be stamped with the
/// real time and live its full hour.
pub async fn clock_jump(profile: Profile) -> Result<Row> {
    let Stage { started, load, logs, db, anvil, merchant, payer, .. } = Stage::set_up("clock-jump", profile, None).await?;
    let library = libfaketime()?;
    let offset_file = logs.join("faketime");
    std::fs::write(&offset_file, "+0\n")?;
    let mut jumped = Replica::new("chaos-r1", &db, &anvil, &logs)?
        .with_env("LD_PRELOAD", &library.to_string_lossy())
        .with_env("FAKETIME_TIMESTAMP_FILE", &offset_file.to_string_lossy())
        .with_env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .with_env("FAKETIME_CACHE_DURATION", "1");
    let mut steady = Replica::new("chaos-r2", &db, &anvil, &logs)?;
    jumped.start()?;
    steady.start()?;
    wait_ready(&jumped.base()).await?;
    wait_ready(&steady.base()).await?;
    // The jumped replica first: most invoices are created through it.
    let bases = vec![jumped.base(), jumped.base(), steady.base()];

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let miner = rig::spawn_miner(anvil.url(), Duration::from_millis(500), 2, stop_rx.clone());
    // Forward at an eighth of the run, back at five eighths (so that each lasts several of the
    // daemon's 5 s expiry passes); right again once everything settled.
    let jumps = [("+7200", 1u32), ("-3600", 5)];
    let jumper = {
        let offset_file = offset_file.clone();
        let spread = load.spread;
        tokio::spawn(async move {
            for (offset, eighths) in jumps {
                tokio::time::sleep_until(tokio::time::Instant::from_std(started + spread * eighths / 8)).await;
                std::fs::write(&offset_file, format!("{offset}\n"))?;
            }
            anyhow::Ok(())
        })
    };
    let window_start = chrono::Utc::now();
    let sent = pay_all(&bases, &merchant.api_key, &payer, &load).await;
    jumper.await??;
    let _ = stop_tx.send(true);
    let (sent, keys) = sent?;
    let lost = rig::wait_paid(&db.pool, &anvil.url(), &sent.iter().map(|(i, _)| i.clone()).collect::<Vec<_>>(), SETTLE_MAX).await?;
    miner.abort();
    std::fs::write(&offset_file, "+0\n")?;
    let window_end = chrono::Utc::now();
    let ids: Vec<String> = sent.iter().map(|(i, _)| i.id.clone()).collect();
    // Stamped with the real time (within a second of the run) and living exactly their hour.
    let (expired, misstamped): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'expired'), \
                count(*) FILTER (WHERE created_at < $2 - interval '1 second' OR created_at > $3 + interval '1 second' \
                                 OR expires_at - created_at <> interval '1 hour') \
         FROM invoices WHERE id = ANY($1)",
    )
    .bind(&ids)
    .bind(window_start)
    .bind(window_end)
    .fetch_one(&db.pool)
    .await?;
    let mut crashed = 0;
    for r in [&mut jumped, &mut steady] {
        if let Some(status) = r.exited() {
            eprintln!("chaos: {} exited on its own: {status}", r.name);
            crashed += 1;
        }
        r.kill9().await?;
    }
    let noticed = log_count(&jumped, "this host's clock is off the database's");
    let doubled = rig::doubled(&db.pool, &sent).await?;
    let clean = rig::reconcile_clean(&db, &anvil, &logs).await?;
    let mut notes = vec![format!(
        "{expired} invoices expired, {misstamped} stamped off the real time; the jumped replica logged its clock off the database's {noticed} times"
    )];
    notes.extend(Some(self::notes(keys)).filter(|n| !n.is_empty()));
    let row = Row {
        scenario: "clock-jump",
        load: format!("{}, 2 of 3 invoices through the jumped one", load.describe(2)),
        faults: "one replica's wall clock +2 h, then -1 h until all settled (monotonic clock untouched)".to_owned(),
        payments: sent.len(),
        lost: lost + crashed + usize::try_from(expired)?,
        doubled,
        duplicates: None,
        recovery_max: None,
        reconcile_clean: clean,
        bad_answers: usize::try_from(misstamped)? + usize::from(noticed == 0),
        notes: notes.join("; "),
        elapsed: started.elapsed(),
    };
    finish(db, row).await
}
