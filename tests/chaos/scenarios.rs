//! The named scenarios, in the order the table lists them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use payrail::merchant::create_merchant;
use sqlx::PgPool;
use tokio::sync::Mutex;

use payrail::chain::evm::client::CHAIN_CHECK_EVERY;

use crate::proxy::{Fault, FaultProxy};
use crate::rig::{self, Db, Invoice, Payer, Replica, Rng};
use crate::{Profile, Row};

type Run = fn(Profile) -> Pin<Box<dyn Future<Output = Result<Row>>>>;

pub const ALL: &[(&str, Run)] = &[
    ("kill9-payments", |p| Box::pin(kill9_payments(p))),
    ("kill9-catchup", |p| Box::pin(kill9_catchup(p))),
    ("replicas-leader-kill", |p| Box::pin(replicas_leader_kill(p))),
    ("kill9-webhooks", |p| Box::pin(kill9_webhooks(p))),
    ("webhooks-down", |p| Box::pin(webhooks_down(p))),
    ("feeds-down", |p| Box::pin(feeds_down(p))),
    ("kill9-sweeps", |p| Box::pin(kill9_sweeps(p))),
    ("kill9-payouts", |p| Box::pin(kill9_payouts(p))),
    ("postgres-restart", |p| Box::pin(postgres_restart(p))),
    ("postgres-failover", |p| Box::pin(postgres_failover(p))),
    ("postgres-connections", |p| Box::pin(postgres_connections(p))),
    ("pgbouncer", |p| Box::pin(pgbouncer(p))),
    ("rpc-faults", |p| Box::pin(rpc_faults(p))),
    ("electrum-faults", |p| Box::pin(crate::electrum::electrum_faults(p))),
    ("stripe-down", |p| Box::pin(crate::outages::stripe_down(p))),
    ("statement-timeouts", |p| Box::pin(crate::resources::statement_timeouts(p))),
    ("disk-full", |p| Box::pin(crate::resources::disk_full(p))),
    ("clock-jump", |p| Box::pin(crate::resources::clock_jump(p))),
    ("soak", |p| Box::pin(crate::soak::soak(p))),
];

/// How long a scenario may wait for its last invoices to be paid once the faults stop.
pub(crate) const SETTLE_MAX: Duration = Duration::from_secs(120);
/// How long a daemon may take to answer after a start.
pub(crate) const READY_MAX: Duration = Duration::from_secs(60);
/// How long recovery may take before it counts as never recovered.
pub(crate) const RECOVERY_MAX: Duration = Duration::from_secs(60);

pub(crate) struct Load {
    pub invoices: usize,
    /// Every invoice in USDC (creators are paid in what they earned, and the batcher holds USDC).
    pub usdc_only: bool,
    /// The payments are spread over this long, so the faults land among them.
    pub spread: Duration,
}

impl Load {
    fn of(profile: Profile) -> Self {
        match profile {
            Profile::Short => Self { invoices: 12, usdc_only: false, spread: Duration::from_secs(16) },
            Profile::Full => Self { invoices: 200, usdc_only: false, spread: Duration::from_secs(180) },
        }
    }

    pub(crate) fn describe(&self, replicas: usize) -> String {
        format!("{} invoices / {} s, {replicas} replica{}", self.invoices, self.spread.as_secs(), if replicas == 1 { "" } else { "s" })
    }
}

pub(crate) async fn wait_ready(base: &str) -> Result<()> {
    let client = reqwest::Client::new();
    let started = Instant::now();
    while started.elapsed() < READY_MAX {
        if let Ok(r) = client.get(format!("{base}/healthz")).timeout(Duration::from_secs(2)).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{base} not ready within {READY_MAX:?}")
}

/// Creates and pays `load.invoices` invoices through `bases`, paced over `load.spread`.
/// Also returns the Idempotency-Keys that had to be waited for or abandoned (see [`rig::create_invoice`]).
pub(crate) async fn pay_all(bases: &[String], api_key: &str, payer: &Payer, load: &Load) -> Result<(Vec<(Invoice, String)>, KeyWaits)> {
    let pace = load.spread / u32::try_from(load.invoices.max(1))?;
    let mut sent = Vec::with_capacity(load.invoices);
    let mut keys = KeyWaits::default();
    for i in 0..load.invoices {
        let started = Instant::now();
        let (asset, amount) = rig::asset_and_amount(if load.usdc_only { 2 * i } else { i });
        let created = rig::create_invoice(bases, api_key, &format!("chaos-{i}"), &amount, asset, READY_MAX)
            .await
            .with_context(|| format!("invoice {i}"))?;
        keys.stuck += created.stuck_keys;
        keys.waited += created.waited_keys;
        let invoice = created.invoice;
        let hash = payer.pay(&invoice).await.with_context(|| format!("paying {}", invoice.id))?;
        sent.push((invoice, hash));
        tokio::time::sleep(pace.saturating_sub(started.elapsed())).await;
    }
    Ok((sent, keys))
}

/// Polls until the watcher's cursor reaches `target`; the time it took, or `None` past the limit.
pub(crate) async fn until_cursor(pool: &PgPool, target: u64, since: Instant) -> Option<Duration> {
    while since.elapsed() < RECOVERY_MAX {
        if matches!(rig::cursor(pool).await, Ok(Some(h)) if h >= target) {
            return Some(since.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Idempotency-Keys a killed process left claimed: waited for until taken over, or given up.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct KeyWaits {
    pub waited: u32,
    pub stuck: u32,
}

pub(crate) fn notes(keys: KeyWaits) -> String {
    let mut notes = Vec::new();
    if keys.waited > 0 {
        notes.push(format!("{} Idempotency-Key(s) claimed by a killed process, retried until taken over", keys.waited - keys.stuck.min(keys.waited)));
    }
    if keys.stuck > 0 {
        notes.push(format!("{} key(s) never released", keys.stuck));
    }
    notes.join("; ")
}

pub(crate) fn recovery_max(recoveries: &[Option<Duration>]) -> Option<Duration> {
    // A fault never recovered from counts as the limit itself.
    recoveries.iter().map(|r| r.unwrap_or(RECOVERY_MAX)).max()
}

/// What [`spawn_repeated`] saw: per injection, how long the fault lasted and how long after its end
/// a watcher followed the chain past a block mined then (`None`: not within [`RECOVERY_MAX`]).
pub(crate) struct Repeated {
    pub count: u32,
    pub runs: Vec<(Duration, Option<Duration>)>,
}

impl Repeated {
    pub(crate) fn recovery_max(&self) -> Option<Duration> {
        recovery_max(&self.runs.iter().map(|(_, after)| *after).collect::<Vec<_>>())
    }

    /// The longest time without writes: a fault and the recovery after it.
    pub(crate) fn outage_max(&self) -> Option<Duration> {
        recovery_max(&self.runs.iter().map(|(lasted, after)| after.map(|a| *lasted + a)).collect::<Vec<_>>())
    }
}

/// Injects a fault again and again until `stop` flips (at most 200 times): after a pause drawn
/// from `every` (ms, seeded by `seed`), `inject(hold)` with a hold drawn from `hold` causes the fault
/// and returns once it is over; then a block is mined and the time until a watcher followed the
/// chain past it is taken (see [`Repeated`]).
pub(crate) fn spawn_repeated<F, Fut>(
    seed: u64,
    every: (u64, u64),
    hold: (u64, u64),
    pool: PgPool,
    anvil_url: String,
    mut stop: tokio::sync::watch::Receiver<bool>,
    mut inject: F,
) -> tokio::task::JoinHandle<Result<Repeated>>
where
    F: FnMut(Duration) -> Fut + Send + 'static,
    Fut: Future<Output = Result<()>> + Send,
{
    tokio::spawn(async move {
        let mut rng = Rng::new(seed);
        let mut seen = Repeated { count: 0, runs: Vec::new() };
        while seen.count < 200 {
            tokio::select! {
                _ = tokio::time::sleep(rng.millis_between(every.0, every.1)) => {}
                _ = stop.changed() => break,
            }
            let began = Instant::now();
            inject(rng.millis_between(hold.0, hold.1)).await?;
            seen.count += 1;
            let ended = Instant::now();
            rig::mine(&anvil_url, 1).await?;
            let tip = rig::tip(&anvil_url).await?;
            seen.runs.push((ended - began, until_cursor(&pool, tip, ended).await));
        }
        Ok(seen)
    })
}

/// The notes' account of what the readers saw.
pub(crate) fn reads_note(probed: &rig::Probed) -> String {
    format!(
        "reads: {} ok, {} answered 503 + Retry-After, {} bad (500 or no answer in 7 s), slowest {} ms",
        probed.ok,
        probed.unavailable,
        probed.bad,
        probed.slowest.as_millis()
    )
}

/// SIGKILLs `replica` every 2-5 s and restarts it at once, until `stop` flips. Returns the kills and,
/// per restart, how long the new process took to follow the chain past a block mined after it
/// started (`None`: not within [`RECOVERY_MAX`]).
fn spawn_restarting_killer(
    replica: Arc<Mutex<Replica>>,
    pool: PgPool,
    anvil_url: String,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Result<(u32, Vec<Option<Duration>>)>> {
    tokio::spawn(async move {
        let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
        let mut monitors = Vec::new();
        let mut kills = 0u32;
        // Bounded: at most one kill per 2 s of a 10-minute run.
        while kills < 300 {
            tokio::select! {
                _ = tokio::time::sleep(rng.millis_between(2_000, 5_000)) => {}
                _ = stop.changed() => break,
            }
            let mut r = replica.lock().await;
            r.kill9().await?;
            let restarted = Instant::now();
            r.start()?;
            kills += 1;
            // A block the killed process never saw: recovered once the new one has followed the
            // chain past it.
            rig::mine(&anvil_url, 1).await?;
            let tip = rig::tip(&anvil_url).await?;
            let pool = pool.clone();
            monitors.push(tokio::spawn(async move { until_cursor(&pool, tip, restarted).await }));
        }
        let mut recoveries = Vec::new();
        for m in monitors {
            recoveries.push(m.await?);
        }
        Ok((kills, recoveries))
    })
}

/// One daemon, SIGKILLed and restarted every few seconds while invoices are created and paid.
async fn kill9_payments(profile: Profile) -> Result<Row> {
    let Stage { started, load, logs, db, anvil, merchant, payer, .. } = Stage::set_up("kill9-payments", profile, None).await?;
    let mut replica = Replica::new("chaos-r1", &db, &anvil, &logs)?;
    replica.start()?;
    wait_ready(&replica.base()).await?;
    let bases = vec![replica.base()];
    let replica = Arc::new(Mutex::new(replica));

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let miner = rig::spawn_miner(anvil.url(), Duration::from_millis(500), 2, stop_rx.clone());
    let killer = spawn_restarting_killer(replica.clone(), db.pool.clone(), anvil.url(), stop_rx.clone());

    let sent = pay_all(&bases, &merchant.api_key, &payer, &load).await;
    let _ = stop_tx.send(true);
    let (kills, recoveries) = killer.await??;
    let (sent, keys) = sent?;
    let lost = rig::wait_paid(&db.pool, &anvil.url(), &sent.iter().map(|(i, _)| i.clone()).collect::<Vec<_>>(), SETTLE_MAX).await?;
    miner.abort();
    let crashed = replica.lock().await.exited();
    replica.lock().await.kill9().await?;
    if let Some(status) = crashed {
        eprintln!("chaos: the daemon exited on its own: {status}");
    }
    let doubled = rig::doubled(&db.pool, &sent).await?;
    let clean = rig::reconcile_clean(&db, &anvil, &logs).await?;
    let row = Row {
        scenario: "kill9-payments",
        load: load.describe(1),
        faults: format!("{kills} x SIGKILL (every 2-5 s)"),
        payments: sent.len(),
        lost,
        doubled,
        duplicates: None,
        recovery_max: recovery_max(&recoveries),
        reconcile_clean: clean,
        bad_answers: 0,
        notes: notes(keys),
        elapsed: started.elapsed(),
    };
    finish(db, row).await
}

/// How long a daemon far behind may take to reach the tip, kills included.
const CATCHUP_MAX: Duration = Duration::from_secs(600);

/// The daemon is stopped while every invoice is paid and the chain runs far ahead; restarted, it is
/// SIGKILLed again and again while it catches up, then left to finish. Every payment must be
/// credited once, whatever step each kill interrupted.
async fn kill9_catchup(profile: Profile) -> Result<Row> {
    let (behind, kills_max) = match profile {
        Profile::Short => (6_000u64, 8u32),
        Profile::Full => (40_000, 30),
    };
    let Stage { started, load, logs, db, anvil, merchant, payer, .. } = Stage::set_up("kill9-catchup", profile, None).await?;
    let mut replica = Replica::new("chaos-r1", &db, &anvil, &logs)?;
    replica.start()?;
    wait_ready(&replica.base()).await?;
    let bases = vec![replica.base()];
    let mut invoices = Vec::with_capacity(load.invoices);
    let mut keys = KeyWaits::default();
    for i in 0..load.invoices {
        let (asset, amount) = rig::asset_and_amount(i);
        let created = rig::create_invoice(&bases, &merchant.api_key, &format!("chaos-{i}"), &amount, asset, READY_MAX)
            .await
            .with_context(|| format!("invoice {i}"))?;
        keys.stuck += created.stuck_keys;
        keys.waited += created.waited_keys;
        invoices.push(created.invoice);
    }
    // Down while everything is paid, the payments spread over the blocks it will have to read.
    replica.kill9().await?;
    let gap = behind / u64::try_from(invoices.len().max(1))?;
    let mut sent = Vec::with_capacity(invoices.len());
    for invoice in invoices {
        let hash = payer.pay(&invoice).await.with_context(|| format!("paying {}", invoice.id))?;
        sent.push((invoice, hash));
        // In steps a node answers within the harness's RPC timeout.
        for step in (0..gap).step_by(100) {
            rig::mine(&anvil.url(), (gap - step).min(100)).await?;
        }
    }
    let tip = rig::tip(&anvil.url()).await?;

    let catchup = Instant::now();
    replica.start()?;
    let mut rng = Rng::new(0x6a09_e667_f3bc_c908);
    let mut kills = 0u32;
    while kills < kills_max {
        tokio::time::sleep(rng.millis_between(300, 1_000)).await;
        if matches!(rig::cursor(&db.pool).await?, Some(h) if h >= tip) {
            break;
        }
        replica.kill9().await?;
        replica.start()?;
        kills += 1;
    }
    let mut caught_up = None;
    while catchup.elapsed() < CATCHUP_MAX {
        if matches!(rig::cursor(&db.pool).await?, Some(h) if h >= tip) {
            caught_up = Some(catchup.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lost = rig::wait_paid(&db.pool, &anvil.url(), &sent.iter().map(|(i, _)| i.clone()).collect::<Vec<_>>(), SETTLE_MAX).await?;
    if let Some(status) = replica.exited() {
        eprintln!("chaos: the daemon exited on its own: {status}");
    }
    replica.kill9().await?;
    let doubled = rig::doubled(&db.pool, &sent).await?;
    let clean = rig::reconcile_clean(&db, &anvil, &logs).await?;
    let mut notes = vec![match caught_up {
        Some(took) => format!("reached the tip {} blocks on in {:.1} s", tip, took.as_secs_f64()),
        None => format!("did not reach block {tip} within {} s", CATCHUP_MAX.as_secs()),
    }];
    notes.extend(Some(self::notes(keys)).filter(|n| !n.is_empty()));
    let row = Row {
        scenario: "kill9-catchup",
        load: format!("{} invoices paid while down, {behind} blocks behind, 1 replica", sent.len()),
        faults: format!("{kills} x SIGKILL during catch-up (every 0.3-1 s)"),
        payments: sent.len(),
        lost,
        doubled,
        duplicates: None,
        recovery_max: Some(caught_up.unwrap_or(CATCHUP_MAX)),
        reconcile_clean: clean,
        bad_answers: 0,
        notes: notes.join("; "),
        elapsed: started.elapsed(),
    };
    finish(db, row).await
}

/// The replica (by `application_name`) whose session holds the Polygon watcher's lock.
async fn watch_lock_holder(pool: &PgPool) -> Result<Option<String>> {
    let holder = sqlx::query_scalar(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted \
         AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtext($1)::bigint",
    )
    .bind(rig::WATCH_LOCK)
    .fetch_optional(pool)
    .await?;
    Ok(holder)
}

/// Two (short) or three (full) replicas on one database; the one holding the watcher's lock is
/// SIGKILLed again and again while payments flow.
async fn replicas_leader_kill(profile: Profile) -> Result<Row> {
    let replica_count = match profile {
        Profile::Short => 2,
        Profile::Full => 3,
    };
    let Stage { started, load, logs, db, anvil, merchant, payer, .. } = Stage::set_up("replicas-leader-kill", profile, None).await?;
    let mut replicas = Vec::new();
    for i in 1..=replica_count {
        let mut r = Replica::new(&format!("chaos-r{i}"), &db, &anvil, &logs)?;
        r.start()?;
        replicas.push(r);
    }
    for r in &replicas {
        wait_ready(&r.base()).await?;
    }
    let bases: Vec<String> = replicas.iter().map(Replica::base).collect();
    let replicas = Arc::new(Mutex::new(replicas));

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let miner = rig::spawn_miner(anvil.url(), Duration::from_millis(500), 2, stop_rx.clone());
    let killer = {
        let replicas = replicas.clone();
        let pool = db.pool.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut rng = Rng::new(0x2545_f491_4f6c_dd1d);
            let mut recoveries = Vec::new();
            let mut kills = 0u32;
            while kills < 300 {
                tokio::select! {
                    _ = tokio::time::sleep(rng.millis_between(3_000, 6_000)) => {}
                    _ = stop.changed() => break,
                }
                let Some(holder) = watch_lock_holder(&pool).await? else {
                    // Nobody holds it yet (a takeover still under way): try again next round.
                    continue;
                };
                let mut all = replicas.lock().await;
                let Some(victim) = all.iter_mut().find(|r| r.name == holder) else {
                    anyhow::bail!("the lock is held by {holder:?}, which is no replica of this run");
                };
                victim.kill9().await?;
                let killed = Instant::now();
                kills += 1;
                let mut recovered = None;
                while killed.elapsed() < RECOVERY_MAX {
                    match watch_lock_holder(&pool).await? {
                        Some(h) if h != holder => {
                            recovered = Some(killed.elapsed());
                            break;
                        }
                        _ => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
                recoveries.push(recovered);
                // Back as a standby, as a supervisor would restart it.
                if let Some(victim) = all.iter_mut().find(|r| r.name == holder) {
                    victim.start()?;
                }
            }
            anyhow::Ok((kills, recoveries))
        })
    };

    let sent = pay_all(&bases, &merchant.api_key, &payer, &load).await;
    let _ = stop_tx.send(true);
    let (kills, recoveries) = killer.await??;
    let (sent, keys) = sent?;
    let lost = rig::wait_paid(&db.pool, &anvil.url(), &sent.iter().map(|(i, _)| i.clone()).collect::<Vec<_>>(), SETTLE_MAX).await?;
    miner.abort();
    for r in replicas.lock().await.iter_mut() {
        if let Some(status) = r.exited() {
            eprintln!("chaos: {} exited on its own: {status}", r.name);
        }
        r.kill9().await?;
    }
    let doubled = rig::doubled(&db.pool, &sent).await?;
    let clean = rig::reconcile_clean(&db, &anvil, &logs).await?;
    let row = Row {
        scenario: "replicas-leader-kill",
        load: load.describe(replica_count),
        faults: format!("{kills} x SIGKILL of the watcher's leader (every 3-6 s)"),
        payments: sent.len(),
        lost,
        doubled,
        duplicates: None,
        recovery_max: recovery_max(&recoveries),
        reconcile_clean: clean,
        bad_answers: 0,
        notes: notes(keys),
        elapsed: started.elapsed(),
    };
    finish(db, row).await
}

/// One daemon with a merchant webhook endpoint on loopback, SIGKILLed and restarted every few
/// seconds while invoices are paid and their events delivered. Delivery is at least once: an event
/// never delivered is lost; one delivered twice is a duplicate, reported apart.
async fn kill9_webhooks(profile: Profile) -> Result<Row> {
    let Stage { started, load, logs, db, anvil, merchant, payer, .. } = Stage::set_up("kill9-webhooks", profile, None).await?;
    let receiver = rig::Receiver::start().await?;
    let mut replica = Replica::new("chaos-r1", &db, &anvil, &logs)?;
    replica.start()?;
    wait_ready(&replica.base()).await?;
    rig::register_endpoint(&replica.base(), &merchant.api_key, &receiver.url).await?;
    let bases = vec![replica.base()];
    let replica = Arc::new(Mutex::new(replica));

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let miner = rig::spawn_miner(anvil.url(), Duration::from_millis(500), 2, stop_rx.clone());
    let killer = spawn_restarting_killer(replica.clone(), db.pool.clone(), anvil.url(), stop_rx.clone());

    let sent = pay_all(&bases, &merchant.api_key, &payer, &load).await;
    let _ = stop_tx.send(true);
    let (kills, recoveries) = killer.await??;
    let (sent, keys) = sent?;
    let ids: Vec<String> = sent.iter().map(|(i, _)| i.id.clone()).collect();
    let unpaid = rig::wait_paid(&db.pool, &anvil.url(), &sent.iter().map(|(i, _)| i.clone()).collect::<Vec<_>>(), SETTLE_MAX).await?;
    miner.abort();
    // Let the dispatcher drain what the kills interrupted.
    let undelivered = rig::wait_delivered(&db.pool, &receiver, SETTLE_MAX).await?;
    let crashed = replica.lock().await.exited();
    replica.lock().await.kill9().await?;
    if let Some(status) = crashed {
        eprintln!("chaos: the daemon exited on its own: {status}");
    }
    let delivered = receiver.deliveries();
    let duplicates: u32 = delivered.values().map(|n| n.saturating_sub(1)).sum();
    let lost = unpaid + undelivered + rig::invoices_without_paid_event(&db.pool, &ids).await?;
    let doubled = rig::doubled(&db.pool, &sent).await?;
    let clean = rig::reconcile_clean(&db, &anvil, &logs).await?;
    let row = Row {
        scenario: "kill9-webhooks",
        load: format!("{}, {} events", load.describe(1), delivered.len()),
        faults: format!("{kills} x SIGKILL (every 2-5 s)"),
        payments: sent.len(),
        lost,
        doubled,
        duplicates: Some(usize::try_from(duplicates)?),
        recovery_max: recovery_max(&recoveries),
        reconcile_clean: clean,
        bad_answers: 0,
        notes: notes(keys),
        elapsed: started.elapsed(),
    };
    finish(db, row).await
}

/// One daemon whose merchant's webhook receiver is down (503 to everything) for a long stretch in the
/// middle of the payments. The dispatcher backs off and, once the receiver is back, delivers every
/// event (but those superseded by a newer one about the same object) in outbox order.
async fn webhooks_down(profile: Profile) -> Result<Row> {
    let (down_after, outage) = match profile {
        Profile::Short => (Duration::from_secs(3), Duration::from_secs(10)),
        Profile::Full => (Duration::from_secs(30), Duration::from_secs(120)),
    };
    let Stage { started, load, logs, db, anvil, merchant, payer, .. } = Stage::set_up("webhooks-down", profile, None).await?;
    let receiver = Arc::new(rig::Receiver::start().await?);
    let mut replica = Replica::new("chaos-r1", &db, &anvil, &logs)?;
    replica.start()?;
    wait_ready(&replica.base()).await?;
    rig::register_endpoint(&replica.base(), &merchant.api_key, &receiver.url).await?;
    let bases = vec![replica.base()];

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let miner = rig::spawn_miner(anvil.url(), Duration::from_millis(500), 2, stop_rx.clone());
    let outage_task = {
        let receiver = receiver.clone();
        tokio::spawn(async move {
            tokio::time::sleep(down_after).await;
            receiver.set_down(true);
            tokio::time::sleep(outage).await;
            receiver.set_down(false);
            Instant::now()
        })
    };
    let sent = pay_all(&bases, &merchant.api_key, &payer, &load).await;
    let back = outage_task.await?;
    let _ = stop_tx.send(true);
    let (sent, keys) = sent?;
    let ids: Vec<String> = sent.iter().map(|(i, _)| i.id.clone()).collect();
    let unpaid = rig::wait_paid(&db.pool, &anvil.url(), &sent.iter().map(|(i, _)| i.clone()).collect::<Vec<_>>(), SETTLE_MAX).await?;
    miner.abort();
    // Backoff doubles from 10 s: the last attempts before the receiver came back may wait that long again.
    let drain_max = SETTLE_MAX + outage;
    let undelivered = rig::wait_delivered(&db.pool, &receiver, drain_max.saturating_sub(back.elapsed())).await?;
    let drained = (undelivered == 0).then(|| back.elapsed());
    let crashed = replica.exited();
    replica.kill9().await?;
    let log = receiver.log();
    let duplicates: u32 = log.count.values().map(|n| n.saturating_sub(1)).sum();
    let disorder = rig::out_of_order(&db.pool, &log.order).await?;
    let lost = unpaid + undelivered + rig::invoices_without_paid_event(&db.pool, &ids).await? + usize::from(crashed.is_some());
    let doubled = rig::doubled(&db.pool, &sent).await?;
    let clean = rig::reconcile_clean(&db, &anvil, &logs).await?;
    let superseded: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries WHERE status = 'superseded'").fetch_one(&db.pool).await?;
    let mut notes = vec![format!(
        "{} attempts refused while down; {superseded} superseded by a newer event; {disorder} delivered out of order; all delivered {} after the receiver came back",
        log.refused,
        drained.map_or_else(|| "never".to_owned(), |d| format!("{:.1} s", d.as_secs_f64())),
    )];
    if let Some(status) = crashed {
        notes.push(format!("the daemon exited on its own: {status}"));
    }
    notes.extend(Some(self::notes(keys)).filter(|n| !n.is_empty()));
    let row = Row {
        scenario: "webhooks-down",
        load: format!("{}, {} events", load.describe(1), log.count.len()),
        faults: format!("receiver answering 503 for {} s", outage.as_secs()),
        payments: sent.len(),
        lost: lost + disorder,
        doubled,
        duplicates: Some(usize::try_from(duplicates)?),
        recovery_max: drained.or(Some(drain_max)),
        reconcile_clean: clean,
        bad_answers: 0,
        notes: notes.join("; "),
        elapsed: started.elapsed(),
    };
    finish(db, row).await
}

/// One daemon priced by a rates feed (the file feed: refreshed every second, a quote counts for 3 s)
/// that goes down — its file gone — for the middle half of the run, while invoices in USDC and in POL
/// are created and paid. While it is down, new POL invoices must be refused with `rate_unavailable`
/// and USDC invoices still priced (a stablecoin's last sound quotes keep their worth within its
/// grace); invoices created before keep their locked quotes and are credited as usual; once the feed
/// is back, POL invoices are taken again.
async fn feeds_down(profile: Profile) -> Result<Row> {
    let Stage { started, load, logs, db, anvil, merchant, payer, .. } = Stage::set_up("feeds-down", profile, None).await?;
    let rates = logs.join("rates.json");
    let prices = r#"{"BTC/USD": "65000", "ETH/USD": "3000", "POL/USD": "0.5", "USDC/USD": "1", "USDT/USD": "1", "DAI/USD": "1"}"#;
    std::fs::write(&rates, prices)?;
    let (refresh_ms, max_age_ms) = (1_000u64, 3_000u64);
    let mut replica = Replica::new("chaos-r1", &db, &anvil, &logs)?
        .with_env("PAYRAIL_RATES__FEED", "file")
        .with_env("PAYRAIL_RATES__FILE__PATH", &rates.to_string_lossy())
        .with_env("PAYRAIL_RATES__FILE__REFRESH_INTERVAL_MS", &refresh_ms.to_string())
        .with_env("PAYRAIL_RATES__FILE__MAX_AGE_MS", &max_age_ms.to_string());
    replica.start()?;
    wait_ready(&replica.base()).await?;
    let bases = vec![replica.base()];

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let miner = rig::spawn_miner(anvil.url(), Duration::from_millis(500), 2, stop_rx.clone());
    // A quote outlives the file by at most max_age after the last refresh that read it; a refresh
    // reads the file again within refresh_ms of its return. Attempts within those margins may go
    // either way and are not judged.
    let settle = Duration::from_millis(max_age_ms + refresh_ms + 1_000);
    let (down_at, up_at) = (load.spread / 4, load.spread * 3 / 4);
    let pace = load.spread / u32::try_from(load.invoices.max(1))?;
    let (mut sent, mut keys) = (Vec::new(), KeyWaits::default());
    let (mut refused_as_meant, mut priced_in_outage, mut wrong) = (0u32, 0u32, 0usize);
    let mut feed_down = false;
    for i in 0..load.invoices {
        let attempt = Instant::now();
        let at = started.elapsed();
        if !feed_down && at >= down_at && at < up_at {
            std::fs::remove_file(&rates)?;
            feed_down = true;
        } else if feed_down && at >= up_at {
            std::fs::write(&rates, prices)?;
            feed_down = false;
        }
        let (asset, amount) = rig::asset_and_amount(i);
        let judged_down = at >= down_at + settle && at < up_at;
        let judged_up = at < down_at || at >= up_at + settle;
        match rig::create_invoice(&bases, &merchant.api_key, &format!("chaos-{i}"), &amount, asset, READY_MAX).await {
            Ok(created) => {
                keys.stuck += created.stuck_keys;
                keys.waited += created.waited_keys;
                if judged_down && asset == rig::POL {
                    eprintln!("chaos: a POL invoice was priced while every feed was down");
                    wrong += 1;
                }
                if judged_down && asset != rig::POL {
                    priced_in_outage += 1;
                }
                let hash = payer.pay(&created.invoice).await.with_context(|| format!("paying {}", created.invoice.id))?;
                sent.push((created.invoice, hash));
            }
            Err(error) if error.to_string().contains("rate_unavailable") => {
                if judged_down && asset == rig::POL {
                    refused_as_meant += 1;
                } else if judged_down || judged_up {
                    eprintln!("chaos: {asset} refused when it should have been priced: {error:#}");
                    wrong += 1;
                }
            }
            Err(error) => return Err(error.context(format!("invoice {i}"))),
        }
        tokio::time::sleep(pace.saturating_sub(attempt.elapsed())).await;
    }
    if feed_down {
        std::fs::write(&rates, prices)?;
    }
    let _ = stop_tx.send(true);
    let lost = rig::wait_paid(&db.pool, &anvil.url(), &sent.iter().map(|(i, _)| i.clone()).collect::<Vec<_>>(), SETTLE_MAX).await?;
    miner.abort();
    let crashed = replica.exited();
    replica.kill9().await?;
    let doubled = rig::doubled(&db.pool, &sent).await?;
    let clean = rig::reconcile_clean(&db, &anvil, &logs).await?;
    let mut notes = vec![format!(
        "while down: {refused_as_meant} POL invoices refused with rate_unavailable, {priced_in_outage} USDC invoices priced; {wrong} answered otherwise"
    )];
    if let Some(status) = crashed {
        notes.push(format!("the daemon exited on its own: {status}"));
    }
    notes.extend(Some(self::notes(keys)).filter(|n| !n.is_empty()));
    let row = Row {
        scenario: "feeds-down",
        load: load.describe(1),
        faults: format!("the rates feed down for {} s (quotes valid 3 s)", (up_at - down_at).as_secs()),
        payments: sent.len(),
        lost: lost + usize::from(crashed.is_some()),
        doubled,
        duplicates: None,
        recovery_max: None,
        reconcile_clean: clean,
        bad_answers: wrong + usize::from(refused_as_meant == 0 || priced_in_outage == 0),
        notes: notes.join("; "),
        elapsed: started.elapsed(),
    };
    finish(db, row).await
}

/// One daemon with a hot wallet, so that every confirmed deposit is swept to the treasury, SIGKILLed
/// and restarted every few seconds while invoices are paid and swept (each start sweeps at once, so
/// the kills land between storing, signing, broadcasting and settling sweeps). Every deposit must be
/// swept exactly once, every sweep on chain recorded (reconcile) and its gas booked once.
async fn kill9_sweeps(profile: Profile) -> Result<Row> {
    let Stage { started, load, logs, db, anvil, merchant, payer, .. } = Stage::set_up("kill9-sweeps", profile, None).await?;
    let mut replica = Replica::new("chaos-r1", &db, &anvil, &logs)?.with_env("PAYRAIL_HOT_WALLET_KEY", payrail_devnet::anvil::DEV_DEPLOYER_KEY);
    replica.start()?;
    wait_ready(&replica.base()).await?;
    let bases = vec![replica.base()];
    let replica = Arc::new(Mutex::new(replica));

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let miner = rig::spawn_miner(anvil.url(), Duration::from_millis(500), 2, stop_rx.clone());
    let killer = spawn_restarting_killer(replica.clone(), db.pool.clone(), anvil.url(), stop_rx.clone());

    let sent = pay_all(&bases, &merchant.api_key, &payer, &load).await;
    let _ = stop_tx.send(true);
    let (kills, recoveries) = killer.await??;
    let (sent, keys) = sent?;
    let unpaid = rig::wait_paid(&db.pool, &anvil.url(), &sent.iter().map(|(i, _)| i.clone()).collect::<Vec<_>>(), SETTLE_MAX).await?;
    // The sweeper passes every 15 s: give it time to sweep what the kills left.
    let unswept = rig::wait_swept(&db.pool, &anvil.url(), Duration::from_secs(180)).await?;
    miner.abort();
    let crashed = replica.lock().await.exited();
    replica.lock().await.kill9().await?;
    if let Some(status) = crashed {
        eprintln!("chaos: the daemon exited on its own: {status}");
    }
    let sweeps = rig::sweep_counts(&db.pool).await?;
    let doubled = rig::doubled(&db.pool, &sent).await? + sweeps.doubled;
    let clean = rig::reconcile_clean(&db, &anvil, &logs).await?;
    let mut notes = vec![format!("{} sweeps confirmed, {} failed, {} without their gas booked", sweeps.confirmed, sweeps.failed, sweeps.unbooked)];
    notes.extend(Some(self::notes(keys)).filter(|n| !n.is_empty()));
    let row = Row {
        scenario: "kill9-sweeps",
        load: format!("{}, every deposit swept", load.describe(1)),
        faults: format!("{kills} x SIGKILL (every 2-5 s)"),
        payments: sent.len(),
        lost: unpaid + unswept + sweeps.unbooked,
        doubled,
        duplicates: None,
        recovery_max: recovery_max(&recoveries),
        reconcile_clean: clean,
        bad_answers: 0,
        notes: notes.join("; "),
        elapsed: started.elapsed(),
    };
    finish(db, row).await
}

/// One daemon with a hot wallet paying two creators (70 % and 20 % of every invoice) through the
/// PayoutBatcher on a schedule of every 5 s, SIGKILLed and restarted every few seconds while invoices
/// are paid and payouts created, signed, sent and settled. Each creator must receive on chain exactly
/// what the confirmed payouts say, no payout may stay open, and no balance above the threshold unpaid.
async fn kill9_payouts(profile: Profile) -> Result<Row> {
    let Stage { started, load, logs, db, anvil, contracts, merchant, payer } = Stage::set_up("kill9-payouts", profile, None).await?;
    let load = Load { usdc_only: true, ..load };
    let creators = Creators::set_up(&db, &merchant.merchant_id, &payer, contracts.payout_batcher).await?;
    let mut replica = Creators::paying(Replica::new("chaos-r1", &db, &anvil, &logs)?);
    replica.start()?;
    wait_ready(&replica.base()).await?;
    let bases = vec![replica.base()];
    let replica = Arc::new(Mutex::new(replica));

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let miner = rig::spawn_miner(anvil.url(), Duration::from_millis(500), 2, stop_rx.clone());
    let killer = spawn_restarting_killer(replica.clone(), db.pool.clone(), anvil.url(), stop_rx.clone());

    let sent = pay_all(&bases, &merchant.api_key, &payer, &load).await;
    let _ = stop_tx.send(true);
    let (kills, recoveries) = killer.await??;
    let (sent, keys) = sent?;
    let unpaid = rig::wait_paid(&db.pool, &anvil.url(), &sent.iter().map(|(i, _)| i.clone()).collect::<Vec<_>>(), SETTLE_MAX).await?;
    let payouts = creators.outcome(&db, &anvil.url(), &payer).await?;
    miner.abort();
    let crashed = replica.lock().await.exited();
    replica.lock().await.kill9().await?;
    if let Some(status) = crashed {
        eprintln!("chaos: the daemon exited on its own: {status}");
    }
    let doubled = rig::doubled(&db.pool, &sent).await? + payouts.overpaid;
    let clean = rig::reconcile_clean(&db, &anvil, &logs).await?;
    let mut notes = vec![payouts.summary.clone()];
    notes.extend(Some(self::notes(keys)).filter(|n| !n.is_empty()));
    let row = Row {
        scenario: "kill9-payouts",
        load: format!("{}, creators paid every 5 s", load.describe(1)),
        faults: format!("{kills} x SIGKILL (every 2-5 s)"),
        payments: sent.len(),
        lost: unpaid + payouts.unsettled + payouts.underpaid,
        doubled,
        duplicates: None,
        recovery_max: recovery_max(&recoveries),
        reconcile_clean: clean,
        bad_answers: 0,
        notes: notes.join("; "),
        elapsed: started.elapsed(),
    };
    finish(db, row).await
}

/// Two creators of a merchant, paid 70 % and 20 % of every invoice (5 % platform fee) through the
/// PayoutBatcher, funded with test USDC.
pub(crate) struct Creators(Vec<(String, alloy::primitives::Address)>);

/// What the payouts came to once settled: on chain against the confirmed payouts, per creator.
pub(crate) struct PayoutOutcome {
    /// Open batches, plus creators still owed a payable balance.
    pub unsettled: usize,
    pub underpaid: usize,
    pub overpaid: usize,
    pub summary: String,
}

impl Creators {
    pub(crate) async fn set_up(db: &Db, merchant_id: &str, payer: &Payer, batcher: alloy::primitives::Address) -> Result<Self> {
        use payrail::creator::{create_creator, set_split_rules, CreateCreator, SplitRules};
        let mut creators = Vec::new();
        for n in 1..=2u8 {
            let address = alloy::primitives::Address::repeat_byte(0xc0 + n);
            let request = CreateCreator { name: format!("Creator {n}"), payout_addresses: [(rig::POLYGON.to_owned(), address.to_checksum(None))].into() };
            creators.push((create_creator(&db.pool, merchant_id, &request).await?.creator.id, address));
        }
        let rules: SplitRules = serde_json::from_value(serde_json::json!({"default": {"splits": [
            {"creator": creators[0].0, "bps": 7000}, {"creator": creators[1].0, "bps": 2000}], "platform_fee_bps": 500}}))?;
        set_split_rules(&db.pool, merchant_id, &rules).await?;
        payer.send_usdc(batcher, alloy::primitives::U256::from(10_000_000_000u64)).await?;
        Ok(Self(creators))
    }

    /// `replica` with a hot wallet, paying creators every 5 s from 1 USD.
    pub(crate) fn paying(replica: Replica) -> Replica {
        replica
            .with_env("PAYRAIL_HOT_WALLET_KEY", payrail_devnet::anvil::DEV_DEPLOYER_KEY)
            .with_env("PAYRAIL_PAYOUTS__INTERVAL_S", "5")
            .with_env("PAYRAIL_PAYOUTS__THRESHOLD_USD", "1")
            .with_env("PAYRAIL_PAYOUTS__POLL_INTERVAL_MS", "200")
    }

    /// Waits (at most 3 minutes) until nothing is open and no creator is owed a payable balance, then
    /// compares what each creator holds on chain with what the confirmed payouts say.
    pub(crate) async fn outcome(&self, db: &Db, anvil_url: &str, payer: &Payer) -> Result<PayoutOutcome> {
        self.outcome_within(db, anvil_url, payer, Duration::from_secs(180)).await
    }

    /// [`Self::outcome`], waiting at most `patience` (longer than the payout interval: the last
    /// shares are paid at the next run).
    pub(crate) async fn outcome_within(&self, db: &Db, anvil_url: &str, payer: &Payer, patience: Duration) -> Result<PayoutOutcome> {
        let ids: Vec<String> = self.0.iter().map(|(id, _)| id.clone()).collect();
        let settling = Instant::now();
        let unsettled = loop {
            let unsettled = rig::payouts_unsettled(&db.pool, &ids, crate::common::USDC_POLYGON).await?;
            if unsettled == 0 || settling.elapsed() > patience {
                break unsettled;
            }
            rig::mine(anvil_url, 2).await?;
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let (mut underpaid, mut overpaid, mut paid_total) = (0usize, 0usize, alloy::primitives::U256::ZERO);
        for (id, address) in &self.0 {
            let on_chain = payer.usdc_of(*address).await?;
            let confirmed = rig::confirmed_payouts(&db.pool, id).await?;
            paid_total += on_chain;
            if on_chain != confirmed {
                eprintln!("chaos: creator {id} holds {on_chain} on chain, confirmed payouts say {confirmed}");
            }
            if on_chain > confirmed {
                overpaid += 1;
            } else if on_chain < confirmed {
                underpaid += 1;
            }
        }
        let (confirmed, failed): (i64, i64) =
            sqlx::query_as("SELECT count(*) FILTER (WHERE status = 'confirmed'), count(*) FILTER (WHERE status = 'failed') FROM payout_batches")
                .fetch_one(&db.pool)
                .await?;
        let summary = format!("{confirmed} payouts confirmed ({paid_total} USDC units to 2 creators), {failed} failed");
        Ok(PayoutOutcome { unsettled, underpaid, overpaid, summary })
    }
}

/// What every scenario starts from: a fresh database (on `DATABASE_URL`'s server, or on the
/// server `admin_url` reaches), an anvil with Polygon's chain id and the dev contracts, a merchant,
/// the funded payer, the load of the profile and a directory for the logs.
pub(crate) struct Stage {
    pub started: Instant,
    pub load: Load,
    pub logs: std::path::PathBuf,
    pub db: Db,
    pub anvil: payrail_devnet::anvil::Anvil,
    pub contracts: payrail_devnet::anvil::DevContracts,
    pub merchant: payrail::merchant::NewMerchant,
    pub payer: Payer,
}

impl Stage {
    pub(crate) async fn set_up(scenario: &str, profile: Profile, admin_url: Option<&str>) -> Result<Self> {
        let started = Instant::now();
        let logs = rig::log_dir(scenario)?;
        let db = match admin_url {
            Some(url) => Db::create_on(url, scenario).await?,
            None => Db::create(scenario).await?,
        };
        let (anvil, contracts) = rig::polygon_anvil().await?;
        let merchant = create_merchant(&db.pool, "Chaos shop").await?;
        let payer = Payer::new(&anvil, contracts.usdc)?;
        Ok(Self { started, load: Load::of(profile), logs, db, anvil, contracts, merchant, payer })
    }
}

/// Job locks held per replica (by `application_name`) on the scenario's database.
async fn job_locks_by_replica(pool: &PgPool) -> Result<Vec<(String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT a.application_name, count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted \
         AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND a.application_name LIKE 'chaos-%' GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(pool)
    .await?)
}

/// Two replicas on a PostgreSQL server of the scenario's own, which is crashed (`immediate`: every
/// backend killed, WAL recovery at start) or shut down (`fast`) and started again every 3-6 s (short
/// profile) or 8-14 s (full) while payments flow. Every job must give up its lock when its session
/// dies and take it again when the server is back: nothing lost, nothing doubled, the chain followed
/// again within seconds.
async fn postgres_restart(profile: Profile) -> Result<Row> {
    let cluster = rig::Cluster::start(&[]).await?;
    let Stage { started, load, logs, db, anvil, merchant, payer, .. } = Stage::set_up("postgres-restart", profile, Some(&cluster.admin_url())).await?;
    let mut replicas = Vec::new();
    for i in 1..=2 {
        let mut r = Replica::new(&format!("chaos-r{i}"), &db, &anvil, &logs)?;
        r.start()?;
        replicas.push(r);
    }
    for r in &replicas {
        wait_ready(&r.base()).await?;
    }
    let bases: Vec<String> = replicas.iter().map(Replica::base).collect();

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let miner = rig::spawn_miner(anvil.url(), Duration::from_millis(500), 2, stop_rx.clone());
    let cluster = Arc::new(cluster);
    let every = match profile {
        Profile::Short => (3_000, 6_000),
        Profile::Full => (8_000, 14_000),
    };
    // A crash (every backend killed, WAL recovery at start) and a clean shutdown, alternately.
    let mut restarts = 0u32;
    let restarter = spawn_repeated(0x510e_527f_ade6_82d1, every, (1_000, 3_000), db.pool.clone(), anvil.url(), stop_rx.clone(), {
        let cluster = cluster.clone();
        move |hold| {
            let mode = if restarts % 2 == 0 { "immediate" } else { "fast" };
            restarts += 1;
            let cluster = cluster.clone();
            async move {
                cluster.down(mode).await?;
                tokio::time::sleep(hold).await;
                cluster.up().await
            }
        }
    });
    let sent = pay_all(&bases, &merchant.api_key, &payer, &load).await;
    let _ = stop_tx.send(true);
    let restarts = restarter.await??;
    let (sent, keys) = sent?;
    let lost = rig::wait_paid(&db.pool, &anvil.url(), &sent.iter().map(|(i, _)| i.clone()).collect::<Vec<_>>(), SETTLE_MAX).await?;
    miner.abort();
    let holder = watch_lock_holder(&db.pool).await?;
    let locks = job_locks_by_replica(&db.pool).await?;
    for r in &mut replicas {
        if let Some(status) = r.exited() {
            eprintln!("chaos: {} exited on its own: {status}", r.name);
        }
        r.kill9().await?;
    }
    let doubled = rig::doubled(&db.pool, &sent).await?;
    let clean = rig::reconcile_clean(&db, &anvil, &logs).await?;
    let mut notes = vec![format!(
        "no writes for at most {:.1} s per restart (down time included); job locks held after: {}; watcher lock: {}",
        restarts.outage_max().unwrap_or_default().as_secs_f64(),
        locks.iter().map(|(name, n)| format!("{name} {n}")).collect::<Vec<_>>().join(", "),
        holder.as_deref().unwrap_or("nobody"),
    )];
    notes.extend(Some(self::notes(keys)).filter(|n| !n.is_empty()));
    let row = Row {
        scenario: "postgres-restart",
        load: load.describe(2),
        faults: format!("{} x PostgreSQL stopped 1-3 s (crash and clean, alternately; every {}-{} s)", restarts.count, every.0 / 1000, every.1 / 1000),
        payments: sent.len(),
        // Without a watcher lock holder nothing would be followed any more: count it as lost work.
        lost: lost + usize::from(holder.is_none()),
        doubled,
        duplicates: None,
        recovery_max: restarts.recovery_max(),
        reconcile_clean: clean,
        bad_answers: 0,
        notes: notes.join("; "),
        elapsed: started.elapsed(),
    };
    finish(db, row).await
}

/// Two replicas on a Patroni cluster (a primary and a synchronous standby), reached through a
/// multi-host URL; the primary's machine (Patroni and PostgreSQL at once) is SIGKILLed while
/// payments are credited, webhooks delivered and creators paid, then started again to rejoin as the
/// standby. Every payment credited once, every event delivered, every creator paid what the payouts
/// say, and the writes back on the promoted standby within seconds of the election.
async fn postgres_failover(profile: Profile) -> Result<Row> {
    let (first_after, every, failovers_max) = match profile {
        Profile::Short => (Duration::from_secs(4), (30_000, 40_000), 1u32),
        Profile::Full => (Duration::from_secs(10), (30_000, 45_000), 100),
    };
    let patroni = rig::Patroni::start().await?;
    let Stage { started, load, logs, db, anvil, contracts, merchant, payer } = Stage::set_up("postgres-failover", profile, Some(&patroni.url("postgres"))).await?;
    let load = Load { usdc_only: true, ..load };
    let creators = Creators::set_up(&db, &merchant.merchant_id, &payer, contracts.payout_batcher).await?;
    let receiver = rig::Receiver::start().await?;
    let mut replicas = Vec::new();
    for i in 1..=2 {
        let mut r = Creators::paying(Replica::new(&format!("chaos-r{i}"), &db, &anvil, &logs)?);
        r.start()?;
        replicas.push(r);
    }
    for r in &replicas {
        wait_ready(&r.base()).await?;
    }
    rig::register_endpoint(&replicas[0].base(), &merchant.api_key, &receiver.url).await?;
    let bases: Vec<String> = replicas.iter().map(Replica::base).collect();

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let miner = rig::spawn_miner(anvil.url(), Duration::from_millis(500), 2, stop_rx.clone());
    let killer = {
        let pool = db.pool.clone();
        let anvil_url = anvil.url();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut patroni = patroni;
            let mut rng = Rng::new(0x5be0_cd19_137e_2179);
            let (mut failovers, mut elections, mut outages) = (0u32, Vec::new(), Vec::new());
            let mut wait = first_after;
            while failovers < failovers_max {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => break,
                }
                wait = rng.millis_between(every.0, every.1);
                let Some(leader) = patroni.leader().await else { continue };
                let killed = Instant::now();
                patroni.kill_node(leader)?;
                failovers += 1;
                let name = patroni.name(leader).to_owned();
                let elected = patroni.wait_until(Duration::from_secs(60), |m| m.iter().any(|(n, role)| role == "leader" && *n != name)).await.ok();
                elections.push(elected);
                // Writes are back once a replica's watcher has followed the chain past a block mined
                // after the new primary took over.
                rig::mine(&anvil_url, 1).await?;
                let tip = rig::tip(&anvil_url).await?;
                outages.push(until_cursor(&pool, tip, killed).await.map(|_| killed.elapsed()));
                // The machine comes back and rejoins as the standby.
                patroni.start_node(leader)?;
                let _ = patroni.wait_until(Duration::from_secs(90), |m| m.iter().any(|(_, role)| role == "sync_standby")).await;
            }
            anyhow::Ok((failovers, elections, outages, patroni))
        })
    };

    let sent = pay_all(&bases, &merchant.api_key, &payer, &load).await;
    let _ = stop_tx.send(true);
    let (failovers, elections, outages, patroni) = killer.await??;
    let (sent, keys) = sent?;
    let ids: Vec<String> = sent.iter().map(|(i, _)| i.id.clone()).collect();
    let unpaid = rig::wait_paid(&db.pool, &anvil.url(), &sent.iter().map(|(i, _)| i.clone()).collect::<Vec<_>>(), SETTLE_MAX).await?;
    let payouts = creators.outcome(&db, &anvil.url(), &payer).await?;
    miner.abort();
    let undelivered = rig::wait_delivered(&db.pool, &receiver, SETTLE_MAX).await?;
    for r in &mut replicas {
        if let Some(status) = r.exited() {
            eprintln!("chaos: {} exited on its own: {status}", r.name);
        }
        r.kill9().await?;
    }
    let log = receiver.log();
    let duplicates: u32 = log.count.values().map(|n| n.saturating_sub(1)).sum();
    let lost = unpaid + undelivered + rig::invoices_without_paid_event(&db.pool, &ids).await? + payouts.unsettled + payouts.underpaid;
    let doubled = rig::doubled(&db.pool, &sent).await? + payouts.overpaid;
    let clean = rig::reconcile_clean(&db, &anvil, &logs).await?;
    let mut notes = vec![format!(
        "new primary elected after at most {:.1} s; no writes for at most {:.1} s per failover; {undelivered} events undelivered; {}",
        recovery_max(&elections).unwrap_or_default().as_secs_f64(),
        recovery_max(&outages).unwrap_or_default().as_secs_f64(),
        payouts.summary
    )];
    notes.extend(Some(self::notes(keys)).filter(|n| !n.is_empty()));
    let row = Row {
        scenario: "postgres-failover",
        load: format!("{}, payouts every 5 s, {} events", load.describe(2), log.count.len()),
        faults: format!("{failovers} x the primary's machine SIGKILLed (Patroni, synchronous standby)"),
        payments: sent.len(),
        lost,
        doubled,
        duplicates: Some(usize::try_from(duplicates)?),
        recovery_max: recovery_max(&outages),
        reconcile_clean: clean,
        bad_answers: 0,
        notes: notes.join("; "),
        elapsed: started.elapsed(),
    };
    let row = finish(db, row).await;
    drop(patroni);
    row
}

/// Takes every free connection slot of the server and ends the daemon's sessions, so that its pool
/// must reconnect and cannot; keeps taking slots that free up for `hold`. The hog's connections close
/// when it returns.
async fn starve_connections(admin_url: &str, victim: &str, hold: Duration) -> Result<usize> {
    use sqlx::Connection;
    let mut hog = Vec::new();
    let started = Instant::now();
    while started.elapsed() < hold {
        // Until the server refuses: "sorry, too many clients already".
        while let Ok(conn) = sqlx::PgConnection::connect(admin_url).await {
            hog.push(conn);
        }
        if let Some(conn) = hog.first_mut() {
            sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1")
                .bind(victim)
                .execute(&mut *conn)
                .await?;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let taken = hog.len();
    for conn in hog {
        let _ = conn.close().await;
    }
    Ok(taken)
}

/// One daemon on a PostgreSQL server of the scenario's own with few connection slots. Again and
/// again another client takes every free slot and the daemon's sessions are ended, so its pool can
/// get no connection for a while; meanwhile clients read an invoice without pause and payments flow.
/// Every request must be answered within the request timeout — 503 with `Retry-After` while the
/// database is out of reach, never a 500 nor a hang — and the work resumes once slots free up.
async fn postgres_connections(profile: Profile) -> Result<Row> {
    let (hold, every) = match profile {
        Profile::Short => (Duration::from_secs(5), (2_000, 4_000)),
        Profile::Full => (Duration::from_secs(20), (10_000, 20_000)),
    };
    let cluster = rig::Cluster::start(&["max_connections=40", "superuser_reserved_connections=0"]).await?;
    let Stage { started, load, logs, db, anvil, merchant, payer, .. } = Stage::set_up("postgres-connections", profile, Some(&cluster.admin_url())).await?;
    let mut replica = Replica::new("chaos-r1", &db, &anvil, &logs)?;
    replica.start()?;
    wait_ready(&replica.base()).await?;
    let bases = vec![replica.base()];
    let probe_invoice = rig::create_invoice(&bases, &merchant.api_key, "probe", "1.00", rig::POL, READY_MAX).await?.invoice;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let miner = rig::spawn_miner(anvil.url(), Duration::from_millis(500), 2, stop_rx.clone());
    // The daemon's request timeout (5 s) and a margin: no answer by then is a hang.
    let prober = rig::spawn_prober(replica.base(), merchant.api_key.clone(), probe_invoice.id.clone(), 4, Duration::from_secs(7), stop_rx.clone());
    let taken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let starver = spawn_repeated(0x9b05_688c_2b3e_6c1f, every, (hold.as_millis() as u64, hold.as_millis() as u64), db.pool.clone(), anvil.url(), stop_rx.clone(), {
        let (admin_url, taken) = (cluster.admin_url(), taken.clone());
        move |hold| {
            let (admin_url, taken) = (admin_url.clone(), taken.clone());
            async move {
                taken.fetch_max(starve_connections(&admin_url, "chaos-r1", hold).await?, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            }
        }
    });
    let sent = pay_all(&bases, &merchant.api_key, &payer, &load).await;
    let _ = stop_tx.send(true);
    let starved = starver.await??;
    let taken = taken.load(std::sync::atomic::Ordering::Relaxed);
    let probed = prober.await?;
    let (sent, keys) = sent?;
    let lost = rig::wait_paid(&db.pool, &anvil.url(), &sent.iter().map(|(i, _)| i.clone()).collect::<Vec<_>>(), SETTLE_MAX).await?;
    miner.abort();
    let crashed = replica.exited();
    replica.kill9().await?;
    let doubled = rig::doubled(&db.pool, &sent).await?;
    let clean = rig::reconcile_clean(&db, &anvil, &logs).await?;
    let mut notes = vec![reads_note(&probed)];
    if let Some(status) = crashed {
        notes.push(format!("the daemon exited on its own: {status}"));
    }
    notes.extend(Some(self::notes(keys)).filter(|n| !n.is_empty()));
    let row = Row {
        scenario: "postgres-connections",
        load: format!("{}, 4 readers without pause", load.describe(1)),
        faults: format!("{} x every free slot taken ({taken} connections) and the daemon's sessions ended, for {} s", starved.count, hold.as_secs()),
        payments: sent.len(),
        lost: lost + usize::from(crashed.is_some()),
        doubled,
        duplicates: None,
        recovery_max: starved.recovery_max(),
        reconcile_clean: clean,
        bad_answers: usize::try_from(probed.bad)?,
        notes: notes.join("; "),
        elapsed: started.elapsed(),
    };
    finish(db, row).await
}

/// payrail behind PgBouncer. First in transaction mode, which cannot keep its session locks: `payrail
/// serve` must refuse to start, naming the reason. Then in session mode, the supported one: two
/// replicas through the pooler while it is SIGKILLed and started again every few seconds (every
/// client and server connection through it breaks at once) and payments flow.
async fn pgbouncer(profile: Profile) -> Result<Row> {
    let every = match profile {
        Profile::Short => (3_000, 6_000),
        Profile::Full => (8_000, 14_000),
    };
    let cluster = rig::Cluster::start(&[]).await?;
    let Stage { started, load, logs, db, anvil, merchant, payer, .. } = Stage::set_up("pgbouncer", profile, Some(&cluster.admin_url())).await?;

    let mut bad_answers = 0usize;
    let transaction_mode = {
        let pooler = rig::PgBouncer::start(cluster.port, "transaction").await?;
        let mut daemon = Replica::new("chaos-tx", &db, &anvil, &logs)?.with_database(&pooler.url(&db.name));
        daemon.start()?;
        let status = daemon.wait_exit(Duration::from_secs(30)).await;
        daemon.kill9().await?;
        let log = std::fs::read_to_string(daemon.log_file()).unwrap_or_default();
        let refused = status.is_some_and(|s| !s.success()) && log.contains("does not keep sessions");
        if !refused {
            eprintln!("chaos: payrail serve through a transaction-mode pool was not refused ({status:?})");
            bad_answers += 1;
        }
        refused
    };

    let pooler = rig::PgBouncer::start(cluster.port, "session").await?;
    let url = pooler.url(&db.name);
    let mut replicas = Vec::new();
    for i in 1..=2 {
        let mut r = Replica::new(&format!("chaos-r{i}"), &db, &anvil, &logs)?.with_database(&url);
        r.start()?;
        replicas.push(r);
    }
    for r in &replicas {
        wait_ready(&r.base()).await?;
    }
    let bases: Vec<String> = replicas.iter().map(Replica::base).collect();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let miner = rig::spawn_miner(anvil.url(), Duration::from_millis(500), 2, stop_rx.clone());
    let pooler = Arc::new(Mutex::new(pooler));
    let restarter = spawn_repeated(0x1f83_d9ab_fb41_bd6b, every, (500, 2_000), db.pool.clone(), anvil.url(), stop_rx.clone(), {
        let pooler = pooler.clone();
        move |hold| {
            let pooler = pooler.clone();
            async move {
                let mut pooler = pooler.lock().await;
                pooler.kill9()?;
                tokio::time::sleep(hold).await;
                pooler.up().await
            }
        }
    });
    let sent = pay_all(&bases, &merchant.api_key, &payer, &load).await;
    let _ = stop_tx.send(true);
    let restarts = restarter.await??;
    let (sent, keys) = sent?;
    let lost = rig::wait_paid(&db.pool, &anvil.url(), &sent.iter().map(|(i, _)| i.clone()).collect::<Vec<_>>(), SETTLE_MAX).await?;
    miner.abort();
    let holder = watch_lock_holder(&db.pool).await?;
    for r in &mut replicas {
        if let Some(status) = r.exited() {
            eprintln!("chaos: {} exited on its own: {status}", r.name);
        }
        r.kill9().await?;
    }
    drop(pooler);
    let doubled = rig::doubled(&db.pool, &sent).await?;
    let clean = rig::reconcile_clean(&db, &anvil, &logs).await?;
    let mut notes = vec![format!(
        "transaction mode refused at start: {}; watcher lock after: {}",
        if transaction_mode { "y" } else { "n" },
        holder.as_deref().unwrap_or("nobody")
    )];
    notes.extend(Some(self::notes(keys)).filter(|n| !n.is_empty()));
    let row = Row {
        scenario: "pgbouncer",
        load: format!("{} through PgBouncer (session mode)", load.describe(2)),
        faults: format!("{} x PgBouncer SIGKILLed, down 0.5-2 s (every {}-{} s)", restarts.count, every.0 / 1000, every.1 / 1000),
        payments: sent.len(),
        lost: lost + usize::from(holder.is_none()),
        doubled,
        duplicates: None,
        recovery_max: restarts.recovery_max(),
        reconcile_clean: clean,
        bad_answers,
        notes: notes.join("; "),
        elapsed: started.elapsed(),
    };
    finish(db, row).await
}

/// The node faults `rpc-faults` goes through, one per phase, each on the endpoint in use.
const NODE_FAULTS: &[Fault] = &[
    Fault::Latency(Duration::from_millis(1_500)),
    Fault::Reset,
    Fault::Truncated,
    Fault::Malformed,
    Fault::RateLimited,
    Fault::LimitExceeded,
    Fault::Behind(50),
    Fault::WrongChain,
    // The last 3 blocks (and all after) on another branch: a reorg only this endpoint sees.
    Fault::Forked(3),
    // Longer than the client's per-call timeout: a node that stalls.
    Fault::Latency(Duration::from_secs(12)),
];

/// One daemon following Polygon through two endpoints, each a fault proxy in front of the same
/// anvil. Phase by phase, the endpoint the daemon is using starts to misbehave (slow, resets, cut or
/// malformed bodies, 429, `-32005`, a lagging tip, another chain's id, another branch, a stall), then both at once
/// reset every connection. The daemon must fail over, keep crediting each payment once, and follow
/// the chain again within seconds of every phase.
async fn rpc_faults(profile: Profile) -> Result<Row> {
    let Stage { started, load, logs, db, anvil, merchant, payer, .. } = Stage::set_up("rpc-faults", profile, None).await?;
    let proxies = Arc::new([FaultProxy::start(anvil.url()).await?, FaultProxy::start(anvil.url()).await?]);
    let mut replica = Replica::new("chaos-r1", &db, &anvil, &logs)?.with_rpc(proxies.iter().map(|p| p.url.clone()).collect());
    replica.start()?;
    wait_ready(&replica.base()).await?;
    let bases = vec![replica.base()];

    let phases = NODE_FAULTS.len() + 1;
    let phase = load.spread / u32::try_from(phases)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let miner = rig::spawn_miner(anvil.url(), Duration::from_millis(500), 2, stop_rx.clone());
    let injector = {
        let proxies = proxies.clone();
        let pool = db.pool.clone();
        let anvil_url = anvil.url();
        tokio::spawn(async move {
            let mut monitors = Vec::new();
            for i in 0..phases {
                match NODE_FAULTS.get(i) {
                    Some(fault) => {
                        // The endpoint asked last is the one in use.
                        let in_use = usize::from(proxies[1].last_request() > proxies[0].last_request());
                        proxies[in_use].set(*fault);
                        proxies[1 - in_use].set(Fault::None);
                    }
                    None => proxies.iter().for_each(|p| p.set(Fault::Reset)),
                }
                // Another chain's id is noticed when the endpoint's chain is checked again.
                let lasts = if NODE_FAULTS.get(i) == Some(&Fault::WrongChain) { phase.max(CHAIN_CHECK_EVERY + Duration::from_secs(1)) } else { phase };
                tokio::time::sleep(lasts).await;
                proxies.iter().for_each(|p| p.set(Fault::None));
                // Recovered once the daemon has followed the chain past a block mined after the phase.
                let ended = Instant::now();
                rig::mine(&anvil_url, 1).await?;
                let tip = rig::tip(&anvil_url).await?;
                let pool = pool.clone();
                monitors.push(tokio::spawn(async move { until_cursor(&pool, tip, ended).await }));
            }
            let mut recoveries = Vec::new();
            for m in monitors {
                recoveries.push(m.await?);
            }
            anyhow::Ok(recoveries)
        })
    };

    let sent = pay_all(&bases, &merchant.api_key, &payer, &load).await;
    let recoveries = injector.await??;
    let _ = stop_tx.send(true);
    let (sent, keys) = sent?;
    let lost = rig::wait_paid(&db.pool, &anvil.url(), &sent.iter().map(|(i, _)| i.clone()).collect::<Vec<_>>(), SETTLE_MAX).await?;
    miner.abort();
    let crashed = replica.exited();
    replica.kill9().await?;
    let doubled = rig::doubled(&db.pool, &sent).await?;
    let clean = rig::reconcile_clean(&db, &anvil, &logs).await?;
    let mut faulted = std::collections::BTreeMap::new();
    for proxy in proxies.iter() {
        for (name, n) in proxy.faulted() {
            *faulted.entry(name).or_insert(0u64) += n;
        }
    }
    // A reorg only one endpoint reported must not have taken back any payment.
    let orphaned: i64 = sqlx::query_scalar("SELECT count(*) FROM payments WHERE status IN ('orphaned', 'reversed')").fetch_one(&db.pool).await?;
    let contradicted = std::fs::read_to_string(replica.log_file()).unwrap_or_default().matches("contradicted by another endpoint").count();
    let mut notes = vec![format!(
        "requests faulted: {}; reorgs contradicted by the other endpoint: {contradicted}; payments taken back: {orphaned}",
        faulted.iter().map(|(name, n)| format!("{name} {n}")).collect::<Vec<_>>().join(", ")
    )];
    if let Some(status) = crashed {
        notes.push(format!("the daemon exited on its own: {status}"));
    }
    notes.extend(Some(self::notes(keys)).filter(|n| !n.is_empty()));
    let row = Row {
        scenario: "rpc-faults",
        load: format!("{}, 2 endpoints", load.describe(1)),
        faults: format!("{} node faults on the endpoint in use, then both down ({} s each)", NODE_FAULTS.len(), phase.as_secs()),
        payments: sent.len(),
        lost: lost + usize::from(crashed.is_some()),
        doubled,
        duplicates: None,
        recovery_max: recovery_max(&recoveries),
        reconcile_clean: clean,
        bad_answers: usize::try_from(orphaned)? + usize::from(contradicted == 0),
        notes: notes.join("; "),
        elapsed: started.elapsed(),
    };
    finish(db, row).await
}

/// A scenario's row, its database dropped when it passed and kept for inspection when it failed.
pub(crate) async fn finish(db: Db, row: Row) -> Result<Row> {
    if !row.failed() {
        db.drop_database().await?;
    }
    Ok(row)
}
