//! Jobs spread over replicas: several "replicas" in one process, each with its own pool, registry
//! and share, running the same dummy jobs through the real job locks against a real PostgreSQL.
//! Who holds what is read from `pg_locks`, never from the replicas' own counts.

use crate::common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use payrail::db::leader::JobLock;
use payrail::db::replicas::{Registry, Share, CLASS_SERVICE, CLASS_SWEEP, CLASS_WATCH};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use tokio::task::JoinHandle;

const JOBS: usize = 6;
const RETRY: Duration = Duration::from_millis(100);
const HEARTBEAT: Duration = Duration::from_millis(200);
const YIELD_EVERY: Duration = Duration::from_millis(300);
const WAIT_MAX: Duration = Duration::from_secs(30);
const DEADLINE: Duration = Duration::from_secs(30);

fn job_names() -> Vec<String> {
    (0..JOBS).map(|n| format!("payrail.test.spread.{n}")).collect()
}

struct Replica {
    name: String,
    id: String,
    pool: PgPool,
    share: Share,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// A dummy job as the daemon's jobs run: acquire, check before each pass, give a surplus lock up.
async fn dummy_job(lock: JobLock, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    loop {
        let Some(mut leadership) = lock.acquire(&mut shutdown).await else { return };
        loop {
            if *shutdown.borrow() {
                leadership.release().await;
                return;
            }
            match leadership.ensure_held().await {
                Ok(()) => {}
                Err(error) if error.is_surplus() => {
                    leadership.release().await;
                    break;
                }
                Err(_) => break,
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = shutdown.changed() => {}
            }
        }
    }
}

async fn start(base: &PgPool, name: &str) -> Replica {
    let options: PgConnectOptions = (*base.connect_options()).clone().application_name(name);
    let pool = PgPoolOptions::new().max_connections(16).connect_with(options).await.expect("replica pool");
    let share = Share::with_pacing(CLASS_WATCH, JOBS, YIELD_EVERY, WAIT_MAX);
    let mut registry = Registry::new(pool.clone(), vec![share.clone()]).heartbeat_every(HEARTBEAT);
    registry.beat().await.expect("registered");
    let id = registry.id().to_owned();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut tasks = vec![tokio::spawn(registry.run(stopped.clone()))];
    for job in job_names() {
        let lock = JobLock::new(pool.clone(), job).retry_every(RETRY).spread(Some(share.clone()));
        tasks.push(tokio::spawn(dummy_job(lock, stopped.clone())));
    }
    Replica { name: name.to_owned(), id, pool, share, stop, tasks }
}

impl Replica {
    /// A crash: the process's tasks vanish mid-flight and its sessions end.
    async fn kill(self, admin: &PgPool) {
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks {
            let _ = task.await;
        }
        sqlx::query("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE application_name = $1")
            .bind(&self.name)
            .execute(admin)
            .await
            .expect("terminate the replica's sessions");
        self.pool.close().await;
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = tokio::time::timeout(DEADLINE, task).await;
        }
        self.pool.close().await;
    }
}

/// How many of the test's job locks each replica (by application name) holds, from `pg_locks`.
async fn holders(admin: &PgPool) -> BTreeMap<String, usize> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT a.application_name, count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
           AND ((l.classid::bigint << 32) | l.objid::bigint) IN (SELECT hashtext(j)::bigint FROM unnest($1::text[]) j) \
         GROUP BY a.application_name",
    )
    .bind(job_names())
    .fetch_all(admin)
    .await
    .expect("pg_locks");
    rows.into_iter().map(|(name, n)| (name, usize::try_from(n).expect("a count"))).collect()
}

/// Polls until the locks are held as `want` (replica name → count), or fails at the deadline.
async fn until_held(admin: &PgPool, want: &[(&str, usize)], within: Duration) {
    let want: BTreeMap<String, usize> = want.iter().map(|(name, n)| ((*name).to_owned(), *n)).collect();
    let deadline = Instant::now() + within;
    loop {
        let now = holders(admin).await;
        if now == want {
            return;
        }
        assert!(Instant::now() < deadline, "locks held {now:?}, wanted {want:?} within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[sqlx::test]
async fn two_replicas_split_the_jobs_take_over_from_a_dead_one_and_split_again(admin: PgPool) {
    let a = start(&admin, "replica-a").await;
    until_held(&admin, &[("replica-a", JOBS)], DEADLINE).await;
    assert_eq!(a.share.held(), JOBS, "alone, a replica runs every job");

    let b = start(&admin, "replica-b").await;
    until_held(&admin, &[("replica-a", 3), ("replica-b", 3)], DEADLINE).await;
    // Settled: nothing moves any more (no thrash), every job stays held.
    for _ in 0..10 {
        tokio::time::sleep(YIELD_EVERY).await;
        assert_eq!(holders(&admin).await, BTreeMap::from([("replica-a".to_owned(), 3), ("replica-b".to_owned(), 3)]));
    }
    assert_eq!((a.share.live(), b.share.live()), (2, 2));

    // A replica dies: its sessions end, the survivor takes every job.
    let dead = a.id.clone();
    a.kill(&admin).await;
    until_held(&admin, &[("replica-b", JOBS)], Duration::from_secs(10)).await;

    // A new replica comes: the survivor hands the surplus over, one lock at a time.
    let c = start(&admin, "replica-c").await;
    until_held(&admin, &[("replica-b", 3), ("replica-c", 3)], DEADLINE).await;

    c.stop().await;
    until_held(&admin, &[("replica-b", JOBS)], Duration::from_secs(10)).await;
    b.stop().await;
    let left: Vec<String> = sqlx::query_scalar("SELECT id FROM replicas").fetch_all(&admin).await.expect("replicas");
    assert_eq!(left, vec![dead], "replicas that stop leave the registry; a dead one's row stays, not counted");
}

#[sqlx::test]
async fn a_replica_is_counted_while_its_heartbeat_is_fresh_and_per_class_it_runs(admin: PgPool) {
    // A replica whose heartbeat is old is not live, even holding its lock (a hung process keeps its
    // sessions); a class a peer does not run is not shared with it.
    let share = Share::new(CLASS_WATCH, JOBS);
    let mut hung = Registry::new(admin.clone(), vec![share.clone()]);
    hung.beat().await.expect("registered");
    let other = Share::new(CLASS_WATCH, JOBS);
    let sweeps = Share::new(CLASS_SWEEP, 3);
    let mut registry = Registry::new(admin.clone(), vec![other.clone(), sweeps.clone()]);
    registry.beat().await.expect("registered");
    assert_eq!(other.live(), 2, "a fresh peer with its lock counts");
    assert!(other.peer_wants(), "a peer holding nothing is short of its share");
    assert_eq!((sweeps.live(), sweeps.fair()), (1, 3), "classes are shared among the replicas that run them");
    assert!(!sweeps.peer_wants());
    sqlx::query("UPDATE replicas SET heartbeat_at = now() - interval '1 hour' WHERE id = $1")
        .bind(hung.id())
        .execute(&admin)
        .await
        .expect("age the heartbeat");
    registry.beat().await.expect("beat");
    assert_eq!(other.live(), 1, "a stale heartbeat is not live");
    assert!(!other.peer_wants());
    hung.deregister().await;
    registry.deregister().await;
}

/// The real jobs give a surplus lock up between passes: a replica holding the webhook dispatcher and
/// the payout executor, told a peer is short of its share, hands one over and keeps the other.
#[sqlx::test]
async fn the_dispatcher_and_the_payout_executor_hand_a_surplus_lock_over(pool: PgPool) {
    const DISPATCH: &str = payrail::webhook::dispatch::LOCK_NAME;
    const EXECUTOR: &str = "payrail.payouts.executor";
    let (state, _clock) = common::state_with_clock(pool.clone());
    let service = state.payouts.clone().expect("the dev configuration pays out");
    let share = Share::with_pacing(CLASS_SERVICE, 2, YIELD_EVERY, WAIT_MAX);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let dispatcher = tokio::spawn(payrail::webhook::run_dispatcher(
        pool.clone(),
        state.clock.clone(),
        true,
        state.webhook_secrets.clone(),
        Some(share.clone()),
        stopped.clone(),
    ));
    let executor = tokio::spawn(payrail::payout::run_executor(service, Vec::new(), Some(share.clone()), stopped));
    let deadline = Instant::now() + DEADLINE;
    while share.held() < 2 {
        assert!(Instant::now() < deadline, "alone, the replica takes both locks");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A peer appears with nothing: the fair share is one each.
    share.observe(2, true);
    let deadline = Instant::now() + DEADLINE;
    let (peer, kept) = 'taken: loop {
        for (name, other) in [(DISPATCH, EXECUTOR), (EXECUTOR, DISPATCH)] {
            if let Some(peer) = JobLock::new(pool.clone(), name).try_acquire().await.expect("try") {
                break 'taken (peer, other);
            }
        }
        assert!(Instant::now() < deadline, "one of the two locks is given up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Settled: the replica keeps its share, the other lock, and takes nothing back.
    for _ in 0..5 {
        tokio::time::sleep(YIELD_EVERY).await;
        assert_eq!(share.held(), 1);
        assert!(JobLock::new(pool.clone(), kept).try_acquire().await.expect("try").is_none(), "{kept} stays held");
    }
    stop.send(true).expect("stop");
    for task in [dispatcher, executor] {
        tokio::time::timeout(DEADLINE, task).await.expect("stops").expect("task");
    }
    assert_eq!(share.held(), 0, "every lock released at shutdown");
    peer.release().await;
}

/// The dev configuration's six chains with no node behind them: the watchers wait for their nodes,
/// holding their chains' locks, which is all this test looks at.
fn six_chains_without_nodes() -> payrail::config::Config {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config.dev.toml");
    let mut text = std::fs::read_to_string(&path).expect("config.dev.toml");
    for port in ["18545", "18546", "18547", "18548", "18549", "50001"] {
        text = text.replace(&format!("127.0.0.1:{port}"), "127.0.0.1:1");
    }
    payrail::config::Config::from_str_with_env(&text, &path, &[]).expect("config loads")
}

struct Serving {
    stop: tokio::sync::oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// `payrail serve` in this process, on its own pool named `name`.
async fn serve(base: &PgPool, config: &payrail::config::Config, name: &str) -> Serving {
    let options: PgConnectOptions = (*base.connect_options()).clone().application_name(name);
    let pool = payrail::db::connect_with(options, 16).await.expect("replica pool");
    let listener = payrail::app::bind("127.0.0.1:0".parse().expect("address")).await.expect("listener");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = config.clone();
    let task = tokio::spawn(async move {
        let jobs = payrail::app::Jobs { hot_wallet_key: None, watch_chains: true };
        let shutdown = async move {
            let _ = stopped.await;
        };
        payrail::app::serve(&config, pool.clone(), listener, jobs, common::test_secrets(), shutdown).await.expect("serves");
        pool.close().await;
    });
    Serving { stop, task }
}

impl Serving {
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(60), self.task).await.expect("stops").expect("task");
    }
}

/// Chain watchers' locks held per replica (by application name), from `pg_locks`.
async fn watching(admin: &PgPool, locks: &[String]) -> BTreeMap<String, usize> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT a.application_name, count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
           AND ((l.classid::bigint << 32) | l.objid::bigint) IN (SELECT hashtext(j)::bigint FROM unnest($1::text[]) j) \
         GROUP BY a.application_name",
    )
    .bind(locks)
    .fetch_all(admin)
    .await
    .expect("pg_locks");
    rows.into_iter().map(|(name, n)| (name, usize::try_from(n).expect("a count"))).collect()
}

async fn until_watching(admin: &PgPool, locks: &[String], want: &[(&str, usize)], within: Duration) {
    let want: BTreeMap<String, usize> = want.iter().map(|(name, n)| ((*name).to_owned(), *n)).collect();
    let deadline = Instant::now() + within;
    loop {
        let now = watching(admin, locks).await;
        if now == want {
            return;
        }
        assert!(Instant::now() < deadline, "chain locks held {now:?}, wanted {want:?} within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The figure of the design: two replicas and six chains follow three each; one stops and the other
/// follows all six within seconds; it comes back and they are three and three again.
#[sqlx::test]
async fn two_serving_replicas_follow_three_of_six_chains_each(admin: PgPool) {
    let config = six_chains_without_nodes();
    let locks: Vec<String> = config.chains().iter().map(|chain| format!("payrail.watch.{}", chain.caip2)).collect();
    assert_eq!(locks.len(), 6, "the dev configuration has six chains");
    let a = serve(&admin, &config, "serve-a").await;
    until_watching(&admin, &locks, &[("serve-a", 6)], Duration::from_secs(30)).await;
    let b = serve(&admin, &config, "serve-b").await;
    until_watching(&admin, &locks, &[("serve-a", 3), ("serve-b", 3)], Duration::from_secs(60)).await;

    a.stop().await;
    until_watching(&admin, &locks, &[("serve-b", 6)], Duration::from_secs(10)).await;

    let a = serve(&admin, &config, "serve-a").await;
    until_watching(&admin, &locks, &[("serve-a", 3), ("serve-b", 3)], Duration::from_secs(60)).await;
    a.stop().await;
    b.stop().await;
}

/// The daemon's clock is the database's, advanced by the monotonic clock between readings: on one
/// host it agrees with the wall clock, and it moves forward as time passes without a new reading.
#[sqlx::test]
async fn the_daemon_keeps_the_database_time(pool: PgPool) {
    use payrail::clock::Clock;
    let clock = payrail::db::clock::DatabaseClock::new();
    let offset = clock.sync(&pool).await.expect("read the database's clock");
    assert!(offset.num_milliseconds().abs() < 1_000, "same host, same clock: {offset}");
    let database: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT clock_timestamp()").fetch_one(&pool).await.expect("now");
    assert!((clock.now() - database).num_milliseconds().abs() < 500, "{} vs {database}", clock.now());
    let before = clock.now();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let advanced = clock.now() - before;
    assert!((200..1_000).contains(&advanced.num_milliseconds()), "advanced by {advanced}");
}
