//! One replica per background job: a PostgreSQL session advisory lock, held on a connection of the
//! job's own and checked before every write pass.
//!
//! A session lock lives exactly as long as its connection. When PostgreSQL restarts (or the
//! connection breaks, or an operator runs `pg_terminate_backend`), the lock is gone and another
//! replica may take it at once; the job that held it learns this only by looking. So:
//! - the lock is taken on a connection detached from the pool (the pool never hands it to anyone
//!   else, and dropping it ends the session and the lock);
//! - [`Leadership::ensure_held`] asks the server, on that connection, whether this session still
//!   holds the lock; a job calls it before each pass (watcher tick, executor step, dispatcher pass,
//!   sweep pass) and, on [`LeaderError::Lost`], drops its leadership and goes back to
//!   [`JobLock::acquire`];
//! - a job whose work between two checks is long (a watcher fetching blocks) also checks, inside
//!   the transaction that writes, that the lock's session still holds it ([`Fence::check`]): a
//!   session that died after the pass's check cannot let that pass commit;
//! - errors while acquiring (the server restarting, a full pool) are logged and retried with
//!   backoff; they never end the job;
//! - a lock built with [`JobLock::spread`] also follows the replica's [`Share`]: it is tried only
//!   while the replica is below its fair share (or nobody else wants it), and a job of a replica
//!   above its share while a peer is short of its own is told, at its next
//!   [`Leadership::ensure_held`], to give its lock up ([`LeaderError::Surplus`]). The share only
//!   decides when to try and when to let go; the advisory lock alone decides who holds a job.

use std::time::Duration;

use sqlx::{Connection, PgConnection, PgPool};
use thiserror::Error;

use crate::db::replicas::{Share, ShareSlot};

/// How often a replica without the lock tries to take it, unless configured otherwise.
pub const LOCK_RETRY_MS_DEFAULT: u64 = 5_000;
/// First pause after an attempt that failed with an error (the server is down or failing over).
pub const LOCK_ERROR_BACKOFF_MS_MIN: u64 = 1_000;
/// Longest pause between attempts that failed with an error: one connection attempt is cheap, and
/// after a restart or a failover the jobs should be back within seconds of the database.
pub const LOCK_ERROR_BACKOFF_MS_MAX: u64 = 8_000;
/// How long the check of a held lock may take before the lock counts as lost.
pub const LOCK_CHECK_TIMEOUT_MS: u64 = 5_000;

/// The check: this session holds the advisory lock keyed by `hashtext($1)` (a 64-bit key is split
/// into `classid` (high half) and `objid` (low half), `objsubid` 1).
const HELD_SQL: &str = "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted \
     AND pid = pg_backend_pid() AND objsubid = 1 \
     AND ((classid::bigint << 32) | objid::bigint) = hashtext($1)::bigint)";

/// The same check from another session: the session `$2` holds the lock.
const HELD_BY_SQL: &str = "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted \
     AND pid = $2 AND objsubid = 1 \
     AND ((classid::bigint << 32) | objid::bigint) = hashtext($1)::bigint)";

#[derive(Debug, Error)]
pub enum LeaderError {
    /// The lock's session ended or no longer holds it: another replica may hold it now.
    #[error("lock {name} lost: {reason}")]
    Lost { name: String, reason: String },
    /// The lock is held, but this replica holds more than its fair share while a peer is short of
    /// its own: the job should finish its pass, [`Leadership::release`] the lock and acquire again.
    #[error("lock {name} given up: this replica holds {held} locks, its fair share is {fair}")]
    Surplus { name: String, held: usize, fair: usize },
    /// Trying the lock failed; the next attempt may succeed.
    #[error("lock {name}: {source}")]
    Database {
        name: String,
        #[source]
        source: sqlx::Error,
    },
}

impl LeaderError {
    /// Whether the lock is to be given up to another replica (still held: release it).
    pub fn is_surplus(&self) -> bool {
        matches!(self, Self::Surplus { .. })
    }
}

/// A named job's lock, for taking it (again and again, as sessions come and go).
#[derive(Debug, Clone)]
pub struct JobLock {
    pool: PgPool,
    name: String,
    retry: Duration,
    share: Option<Share>,
}

impl JobLock {
    pub fn new(pool: PgPool, name: impl Into<String>) -> Self {
        Self { pool, name: name.into(), retry: Duration::from_millis(LOCK_RETRY_MS_DEFAULT), share: None }
    }

    /// Counts this lock in the replica's `share` (`None`: taken whenever free, as a lone process does).
    #[must_use]
    pub fn spread(mut self, share: Option<Share>) -> Self {
        self.share = share;
        self
    }

    /// How often to try while another replica holds the lock (also the first pause after an error).
    #[must_use]
    pub fn retry_every(mut self, retry: Duration) -> Self {
        self.retry = retry.max(Duration::from_millis(1));
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// One attempt: `Some` when this process now holds the lock, `None` when another session does.
    /// Not limited by the share (a held lock still counts in it).
    pub async fn try_acquire(&self) -> Result<Option<Leadership>, LeaderError> {
        let slot = self.share.as_ref().map(Share::reserve_anyway);
        self.attempt(slot).await
    }

    async fn attempt(&self, slot: Option<ShareSlot>) -> Result<Option<Leadership>, LeaderError> {
        let database = |source| LeaderError::Database { name: self.name.clone(), source };
        let mut conn = self.pool.acquire().await.map_err(database)?.detach();
        let row: Result<(bool, i32), sqlx::Error> =
            sqlx::query_as("SELECT pg_try_advisory_lock(hashtext($1)), pg_backend_pid()")
                .bind(&self.name)
                .fetch_one(&mut conn)
                .await;
        match row {
            Ok((true, backend_pid)) => Ok(Some(Leadership { conn, name: self.name.clone(), backend_pid, slot })),
            Ok((false, _)) => {
                let _ = conn.close().await;
                Ok(None)
            }
            Err(source) => Err(database(source)),
        }
    }

    /// A place in the share for one more lock, if this attempt may be made: below the fair share,
    /// nobody else wanting more, or refused since `refused_since` for longer than the share's wait.
    fn place(&self, refused_since: &mut Option<std::time::Instant>) -> Result<Option<ShareSlot>, ()> {
        let Some(share) = &self.share else { return Ok(None) };
        if let Some(slot) = share.reserve() {
            *refused_since = None;
            return Ok(Some(slot));
        }
        let since = *refused_since.get_or_insert_with(std::time::Instant::now);
        if since.elapsed() >= share.wait_max() {
            // A peer says it wants more but has not taken this lock: do not leave the job unrun.
            *refused_since = None;
            return Ok(Some(share.reserve_anyway()));
        }
        Err(())
    }

    /// Waits for the lock: tries every `retry` while another session holds it (or while the
    /// replica's share says not to), backs off (up to [`LOCK_ERROR_BACKOFF_MS_MAX`]) while trying
    /// fails. `None` once `shutdown` turns true.
    pub async fn acquire(&self, shutdown: &mut tokio::sync::watch::Receiver<bool>) -> Option<Leadership> {
        let mut backoff: Option<Duration> = None;
        let mut refused_since = None;
        loop {
            if *shutdown.borrow() {
                return None;
            }
            let attempt = match self.place(&mut refused_since) {
                Ok(slot) => self.attempt(slot).await,
                Err(()) => Ok(None),
            };
            let pause = match attempt {
                Ok(Some(leadership)) => {
                    tracing::info!(target: "leader", lock = %self.name, pid = leadership.backend_pid, "lock taken");
                    return Some(leadership);
                }
                Ok(None) => {
                    backoff = None;
                    self.retry
                }
                Err(error) => {
                    let first = self.retry.min(Duration::from_millis(LOCK_ERROR_BACKOFF_MS_MIN));
                    let next = backoff.map_or(first, |b| b.saturating_mul(2));
                    let next = next.min(Duration::from_millis(LOCK_ERROR_BACKOFF_MS_MAX).max(self.retry));
                    backoff = Some(next);
                    tracing::warn!(target: "leader", %error, backoff_ms = u64::try_from(next.as_millis()).unwrap_or(u64::MAX), "cannot try the lock; retrying");
                    next
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        // The sender is gone: nobody can ask for a stop any more, so none comes.
                        tokio::time::sleep(pause).await;
                    }
                }
            }
        }
    }
}

/// What a pass of a [`HeldJob`] asks for next.
#[derive(Debug)]
pub enum Next {
    /// The next pass at once (the lock is checked first, as before every pass).
    Now,
    /// The next pass after this pause (cut short by shutdown). A long pause still checks the lock
    /// every [`LOCK_RETRY_MS_DEFAULT`], so a lost lock, or one to hand over, is noticed in time.
    After(Duration),
    /// The pass found the lock lost, or to be handed over ([`LeaderError::Surplus`]).
    Lost(LeaderError),
}

/// How a job's hold on its lock ended; the job tidies up before a held lock is released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Shutdown was asked for; the lock is released next.
    Shutdown,
    /// This replica holds more than its share; the lock is released next, for a peer.
    HandedOver,
    /// The lock's session ended: another replica may hold the job already, so nothing more may be
    /// written for it.
    Lost,
}

/// A background job that works in passes while this replica holds the job's lock: a chain
/// follower, a sweeper, the payout executor, the webhook dispatcher. [`JobLock::hold`] owns the
/// acquire / check / hand-over / release loop so that each job only says what one pass does.
pub trait HeldJob: Send {
    type Error: std::fmt::Display + Send;

    /// The lock was just taken (again).
    fn started(&mut self, _leadership: &Leadership) {}

    /// One pass; the lock was found held just before. An error ends the job (a job that can retry
    /// by itself answers [`Next::After`] instead).
    fn pass(
        &mut self,
        leadership: &mut Leadership,
        shutdown: &mut tokio::sync::watch::Receiver<bool>,
    ) -> impl std::future::Future<Output = Result<Next, Self::Error>> + Send;

    /// The hold ended; called before a lock still held is released.
    fn ended(&mut self, _ended: Ended) -> impl std::future::Future<Output = ()> + Send {
        async {}
    }

    /// Whether a job that failed for good keeps its lock until shutdown: when the trouble is the
    /// job's input rather than this replica, a peer taking the lock would fail the same way.
    fn keeps_lock_after(&self, _error: &Self::Error) -> bool {
        false
    }
}

/// Whether a job should stop: `shutdown` turned true, or its sender is gone (nothing could ever
/// say stop again, and `changed` would return at once forever).
pub fn stopping(shutdown: &tokio::sync::watch::Receiver<bool>) -> bool {
    *shutdown.borrow() || shutdown.has_changed().is_err()
}

impl JobLock {
    /// Runs `job` in passes while this replica holds the lock, taking the lock again whenever it
    /// was lost or handed over, until shutdown (`Ok`) or until a pass fails (`Err`, the lock released,
    /// or kept until shutdown when [`HeldJob::keeps_lock_after`] says so).
    pub async fn hold<J: HeldJob>(&self, job: &mut J, shutdown: &mut tokio::sync::watch::Receiver<bool>) -> Result<(), J::Error> {
        loop {
            let Some(mut leadership) = self.acquire(shutdown).await else { return Ok(()) };
            job.started(&leadership);
            let ended = loop {
                if stopping(shutdown) {
                    break Ended::Shutdown;
                }
                let next = match leadership.ensure_held().await {
                    Err(error) => Next::Lost(error),
                    Ok(()) => match job.pass(&mut leadership, shutdown).await {
                        Ok(next) => next,
                        Err(error) => {
                            tracing::error!(target: "leader", lock = %self.name, %error, "job stopped");
                            if job.keeps_lock_after(&error) {
                                tracing::error!(target: "leader", lock = %self.name, "job halted; holding its lock until shutdown");
                                let _ = shutdown.wait_for(|stop| *stop).await;
                            }
                            leadership.release().await;
                            return Err(error);
                        }
                    },
                };
                let lost = match next {
                    Next::Now => continue,
                    Next::After(pause) => match leadership.pause(pause, shutdown).await {
                        Ok(()) => continue,
                        Err(error) => error,
                    },
                    Next::Lost(error) => error,
                };
                if lost.is_surplus() {
                    tracing::info!(target: "leader", lock = %self.name, error = %lost, "handing the job to a replica with fewer jobs");
                    break Ended::HandedOver;
                }
                tracing::warn!(target: "leader", lock = %self.name, error = %lost, "lost the lock; waiting for it again");
                break Ended::Lost;
            };
            job.ended(ended).await;
            match ended {
                Ended::Shutdown => {
                    leadership.release().await;
                    return Ok(());
                }
                Ended::HandedOver => leadership.release().await,
                // The session is gone: dropping it is all that is left.
                Ended::Lost => drop(leadership),
            }
        }
    }
}

/// The held lock. Dropping it closes the session, which releases the lock.
#[derive(Debug)]
pub struct Leadership {
    conn: PgConnection,
    name: String,
    backend_pid: i32,
    /// This lock's place in the replica's share (counted out when the leadership ends).
    slot: Option<ShareSlot>,
}

impl Leadership {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The server process of the session that holds the lock.
    pub fn backend_pid(&self) -> i32 {
        self.backend_pid
    }

    /// Asks the server whether this session still holds the lock. Any failure (a dead connection,
    /// no answer within [`LOCK_CHECK_TIMEOUT_MS`]) counts as lost: the caller must stop writing and
    /// take the lock again before its next pass. A spread lock of a replica above its fair share
    /// while a peer is short of its own answers [`LeaderError::Surplus`] (one lock per interval):
    /// the caller releases it and acquires again.
    pub async fn ensure_held(&mut self) -> Result<(), LeaderError> {
        if let Some(share) = self.slot.as_ref().map(ShareSlot::share) {
            if share.should_yield() {
                return Err(LeaderError::Surplus { name: self.name.clone(), held: share.held(), fair: share.fair() });
            }
        }
        let lost = |reason: String| LeaderError::Lost { name: self.name.clone(), reason };
        let check = sqlx::query_scalar::<_, bool>(HELD_SQL).bind(&self.name).fetch_one(&mut self.conn);
        match tokio::time::timeout(Duration::from_millis(LOCK_CHECK_TIMEOUT_MS), check).await {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err(lost("the session no longer holds it".to_owned())),
            Ok(Err(error)) => Err(lost(error.to_string())),
            Err(_) => Err(lost(format!("no answer within {LOCK_CHECK_TIMEOUT_MS} ms"))),
        }
    }

    /// Waits `pause` (less when shutdown is asked for), checking the lock at least every
    /// [`LOCK_RETRY_MS_DEFAULT`] but not at the start: the caller checked it just before.
    async fn pause(&mut self, pause: Duration, shutdown: &mut tokio::sync::watch::Receiver<bool>) -> Result<(), LeaderError> {
        let until = tokio::time::Instant::now() + pause;
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            tokio::select! {
                _ = tokio::time::sleep(left.min(Duration::from_millis(LOCK_RETRY_MS_DEFAULT))) => {}
                _ = shutdown.changed() => return Ok(()),
            }
            if tokio::time::Instant::now() < until {
                self.ensure_held().await?;
            }
        }
    }

    /// What a writing transaction checks so that it commits only while this lock is held.
    pub fn fence(&self) -> Fence {
        Fence { name: self.name.clone(), backend_pid: self.backend_pid }
    }

    /// Releases the lock and closes its session (best effort: a dead session released it already).
    pub async fn release(mut self) {
        let _ = sqlx::query("SELECT pg_advisory_unlock(hashtext($1))").bind(&self.name).execute(&mut self.conn).await;
        let _ = self.conn.close().await;
    }
}

/// A held lock, as a writing transaction on another connection checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    name: String,
    backend_pid: i32,
}

impl Fence {
    /// Fails with [`LeaderError::Lost`] unless the lock's session still holds the lock. Called inside
    /// the transaction that writes, before it commits.
    pub async fn check(&self, conn: &mut PgConnection) -> Result<(), LeaderError> {
        let held: bool = sqlx::query_scalar(HELD_BY_SQL)
            .bind(&self.name)
            .bind(self.backend_pid)
            .fetch_one(conn)
            .await
            .map_err(|source| LeaderError::Database { name: self.name.clone(), source })?;
        if held {
            Ok(())
        } else {
            Err(LeaderError::Lost { name: self.name.clone(), reason: format!("session {} no longer holds it", self.backend_pid) })
        }
    }
}
