//! One replica per job: the advisory lock of a background job against a real PostgreSQL whose
//! sessions end under it, as they do when the server restarts.

use crate::common;

use std::time::Duration;

use payrail::db::leader::{JobLock, LeaderError};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

const JOB: &str = "payrail.test.job";
const RETRY: Duration = Duration::from_millis(50);

/// Ends the session `pid` the way a restart does, and waits until it is gone.
async fn terminate(pool: &PgPool, pid: i32) {
    let done: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1, 5000)").bind(pid).fetch_one(pool).await.expect("terminate");
    assert!(done, "session {pid} terminated");
}

#[sqlx::test]
async fn a_holder_notices_its_lost_session_and_a_contender_takes_the_lock(pool: PgPool) {
    let lock = JobLock::new(pool.clone(), JOB).retry_every(RETRY);
    let mut holder = lock.try_acquire().await.expect("try").expect("free lock taken");
    holder.ensure_held().await.expect("held while the session lives");
    assert!(lock.try_acquire().await.expect("try").is_none(), "a second contender is refused while the holder lives");
    let fence = holder.fence();
    let mut writer = pool.begin().await.expect("a writing transaction");
    fence.check(&mut writer).await.expect("writes pass the fence while the lock is held");

    terminate(&pool, holder.backend_pid()).await;

    let fenced = fence.check(&mut writer).await.expect_err("a write after the session ended is refused");
    assert!(matches!(fenced, LeaderError::Lost { .. }), "{fenced:?}");
    drop(writer);

    let lost = holder.ensure_held().await.expect_err("the check fails once the session is gone");
    assert!(matches!(lost, LeaderError::Lost { .. }), "{lost:?}");
    let (_stop, mut stopped) = tokio::sync::watch::channel(false);
    let mut contender = tokio::time::timeout(Duration::from_secs(10), lock.acquire(&mut stopped))
        .await
        .expect("taken within the retry interval")
        .expect("not shut down");
    contender.ensure_held().await.expect("the contender holds it now");
    assert_ne!(contender.backend_pid(), holder.backend_pid());
    drop(holder);
    contender.ensure_held().await.expect("dropping the old holder changes nothing");
}

#[sqlx::test]
async fn a_standby_keeps_trying_through_database_errors(pool: PgPool) {
    let holder_lock = JobLock::new(pool.clone(), JOB).retry_every(RETRY);
    let holder = holder_lock.try_acquire().await.expect("try").expect("taken");
    // The standby's pool has one connection, taken away here: every attempt fails with a pool
    // timeout, as attempts do while the server restarts.
    let small = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_millis(100))
        .connect_with((*pool.connect_options()).clone())
        .await
        .expect("small pool");
    let blocker = small.acquire().await.expect("the only connection");
    let standby_lock = JobLock::new(small.clone(), JOB).retry_every(RETRY);
    assert!(
        matches!(standby_lock.try_acquire().await, Err(LeaderError::Database { .. })),
        "an attempt without a connection is an error"
    );
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let standby = tokio::spawn(async move { standby_lock.acquire(&mut stopped).await });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!standby.is_finished(), "errors while acquiring are retried, never the end of the job");

    // The "restart" ends: connections come back and the holder's session is gone.
    drop(blocker);
    terminate(&pool, holder.backend_pid()).await;
    let mut taken = tokio::time::timeout(Duration::from_secs(10), standby)
        .await
        .expect("the standby takes the lock")
        .expect("task")
        .expect("not shut down");
    taken.ensure_held().await.expect("held by the standby");
    drop(stop);
}

#[sqlx::test]
async fn acquiring_ends_at_shutdown_and_release_frees_the_lock(pool: PgPool) {
    let lock = JobLock::new(pool.clone(), JOB).retry_every(RETRY);
    let holder = lock.try_acquire().await.expect("try").expect("taken");
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let waiting = {
        let lock = lock.clone();
        tokio::spawn(async move { lock.acquire(&mut stopped).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.send(true).expect("stop");
    let outcome = tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("stops promptly").expect("task");
    assert!(outcome.is_none(), "a shut-down contender takes nothing");
    holder.release().await;
    assert!(lock.try_acquire().await.expect("try").is_some(), "a released lock is free");
}

/// The session holding `lock` in this test's database, other than `not`, once there is one.
async fn holder(pool: &PgPool, lock: &str, not: Option<i32>) -> i32 {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let pid: Option<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             AND ((classid::bigint << 32) | objid::bigint) = hashtext($1)::bigint",
        )
        .bind(lock)
        .fetch_optional(pool)
        .await
        .expect("pg_locks");
        if let Some(pid) = pid.filter(|pid| Some(*pid) != not) {
            return pid;
        }
        assert!(std::time::Instant::now() < deadline, "nobody holds {lock}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The payout executor notices its lock's session ended (a database restart) and takes the lock
/// again, instead of going on signing without it while another replica takes it.
#[sqlx::test]
async fn the_payout_executor_takes_its_lock_again_after_its_session_ends(pool: PgPool) {
    const EXECUTOR: &str = "payrail.payouts.executor";
    let (state, _clock) = common::state_with_clock(pool.clone());
    let service = state.payouts.clone().expect("the dev configuration pays out");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(payrail::payout::run_executor(service, Vec::new(), None, stopped));
    let first = holder(&pool, EXECUTOR, None).await;
    terminate(&pool, first).await;
    let second = holder(&pool, EXECUTOR, Some(first)).await;
    assert_ne!(first, second);
    assert!(!task.is_finished());
    // While the executor holds it, nobody else can take it.
    assert!(payrail::payout::try_lock_executor(&pool).await.expect("try").is_none());
    stop.send(true).expect("stop");
    tokio::time::timeout(Duration::from_secs(30), task).await.expect("stops").expect("task");
    assert!(payrail::payout::try_lock_executor(&pool).await.expect("try").is_some(), "released at shutdown");
}

/// A direct connection keeps its sessions: the probe `payrail serve` runs at start passes (behind a
/// transaction-mode pooler it refuses to start; `scripts/chaos pgbouncer` shows that against PgBouncer).
#[sqlx::test]
async fn a_direct_connection_passes_the_session_probe(pool: PgPool) {
    payrail::db::sessions::check_sessions(&pool.connect_options()).await.expect("sessions of its own");
}
