//! Jobs spread over replicas: each replica takes its fair share of the job locks, and more only when
//! no live peer is short of its own.
//!
//! Every running `payrail serve` is a replica. It registers in the `replicas` table (a heartbeat
//! every [`HEARTBEAT_MS_DEFAULT`]) and holds the session advisory lock `payrail.replica.<id>` while
//! it lives, so a peer whose process or connection died drops out of the live count at once (its
//! lock leaves `pg_locks`), and one that hangs drops out when its heartbeat goes stale
//! ([`HEARTBEAT_STALE_MS`]).
//!
//! Jobs come in classes ([`CLASS_WATCH`]: chain watchers, [`CLASS_SWEEP`]: sweepers,
//! [`CLASS_SERVICE`]: the webhook dispatcher and the payout executor), each spread on its own, so
//! that two replicas with six chains follow three chains each rather than one taking the light jobs
//! and fewer chains. The per-process [`Share`] of a class counts the locks of that class this
//! replica holds and knows how many jobs of the class it runs and how many live replicas run the
//! class. Invariants:
//! - the job's advisory lock stays the one source of truth: the share only decides whether a job
//!   *tries* a lock and whether it *gives one up*; two holders of one job are impossible whatever
//!   the share believes;
//! - a job tries a lock while this replica holds fewer than [`fair_share`] (`ceil(jobs / live)`);
//!   at or above it, only when no live peer is short of its own share (a free lock nobody else
//!   wants is better run here than not at all), or when it has been refused for longer than
//!   [`SHARE_WAIT_MS_MAX`] (a peer that says it wants work but never takes it cannot starve a job);
//! - a replica above its fair share while a peer is short of its own gives up one lock per
//!   [`SHARE_YIELD_MS_DEFAULT`]: the job sees [`crate::db::leader::LeaderError::Surplus`] at its
//!   next check (between passes, never inside one), releases, and goes back to acquiring. One at
//!   a time lets the load settle without thrashing.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection, PgPool, Row};
use thiserror::Error;

/// How often a replica writes its heartbeat and re-counts its live peers.
pub const HEARTBEAT_MS_DEFAULT: u64 = 2_000;
/// A replica whose heartbeat is older than this no longer counts as live (even if its lock is still
/// held: a hung process keeps its sessions).
pub const HEARTBEAT_STALE_MS: u64 = 15_000;
/// How long one heartbeat may take before its session is given up.
pub const BEAT_TIMEOUT_MS: u64 = 5_000;
/// Rows of replicas gone for longer than this are deleted.
pub const REPLICA_ROW_RETENTION_S: i64 = 86_400;
/// At most one surplus lock is given up per this interval.
pub const SHARE_YIELD_MS_DEFAULT: u64 = 5_000;
/// A job refused by the share for this long tries its lock anyway.
pub const SHARE_WAIT_MS_MAX: u64 = 30_000;
/// The class of the chain watchers.
pub const CLASS_WATCH: &str = "watch";
/// The class of the sweepers.
pub const CLASS_SWEEP: &str = "sweep";
/// The class of the one-per-deployment services: the webhook dispatcher and the payout executor.
pub const CLASS_SERVICE: &str = "service";
/// The prefix of a replica's own advisory lock.
pub const REPLICA_LOCK_PREFIX: &str = "payrail.replica.";

const GAUGE_HELD: &str = "payrail_job_locks_held";
const GAUGE_HELD_HELP: &str = "Job advisory locks this replica holds (watchers, sweepers, payout executor, webhook dispatcher).";
const GAUGE_LIVE: &str = "payrail_replicas_live";
const GAUGE_LIVE_HELP: &str = "Replicas alive (registered, heartbeat fresh, replica lock held), this one included.";

/// How many of `jobs` one of `live` replicas should hold: `ceil(jobs / live)`; every job when no
/// replica is counted (this one always lives).
pub fn fair_share(jobs: usize, live: usize) -> usize {
    jobs.div_ceil(live.max(1))
}

/// Whether a replica that runs `jobs` and holds `held` is short of its fair share among `live`.
pub fn wants_more(jobs: usize, held: usize, live: usize) -> bool {
    held < fair_share(jobs, live)
}

#[derive(Debug, Error)]
pub enum ReplicaError {
    /// Writing the heartbeat or counting peers failed; the next beat may succeed.
    #[error("replica {id}: {source}")]
    Database {
        id: String,
        #[source]
        source: sqlx::Error,
    },
}

#[derive(Debug)]
struct ShareState {
    class: String,
    jobs: AtomicUsize,
    held: AtomicUsize,
    live: AtomicUsize,
    peer_wants: AtomicBool,
    last_yield: Mutex<Option<Instant>>,
    yield_every: Duration,
    wait_max: Duration,
}

/// This process's part of the cluster's jobs of one class; cloned into every
/// [`crate::db::leader::JobLock`] of that class.
#[derive(Debug, Clone)]
pub struct Share {
    state: Arc<ShareState>,
}

impl Share {
    /// A share of `jobs` lock-guarded jobs of `class`, alone until the registry counts peers.
    pub fn new(class: &str, jobs: usize) -> Self {
        Self::with_pacing(class, jobs, Duration::from_millis(SHARE_YIELD_MS_DEFAULT), Duration::from_millis(SHARE_WAIT_MS_MAX))
    }

    /// As [`Share::new`], giving up at most one surplus lock per `yield_every` and trying a lock
    /// anyway after `wait_max` of refusals.
    pub fn with_pacing(class: &str, jobs: usize, yield_every: Duration, wait_max: Duration) -> Self {
        Self {
            state: Arc::new(ShareState {
                class: class.to_owned(),
                jobs: AtomicUsize::new(jobs),
                held: AtomicUsize::new(0),
                live: AtomicUsize::new(1),
                peer_wants: AtomicBool::new(false),
                last_yield: Mutex::new(None),
                yield_every,
                wait_max,
            }),
        }
    }

    pub fn class(&self) -> &str {
        &self.state.class
    }

    /// One more job of this class runs in this replica.
    pub fn add_job(&self) {
        self.state.jobs.fetch_add(1, Ordering::SeqCst);
    }

    pub fn jobs(&self) -> usize {
        self.state.jobs.load(Ordering::SeqCst)
    }

    /// Job locks this process holds now.
    pub fn held(&self) -> usize {
        self.state.held.load(Ordering::SeqCst)
    }

    /// Live replicas that run jobs of this class, this one included.
    pub fn live(&self) -> usize {
        self.state.live.load(Ordering::SeqCst).max(1)
    }

    pub fn fair(&self) -> usize {
        fair_share(self.jobs(), self.live())
    }

    /// Whether some live peer is short of its fair share.
    pub fn peer_wants(&self) -> bool {
        self.state.peer_wants.load(Ordering::SeqCst)
    }

    /// What the registry counted: `live` replicas running this class (this one included) and
    /// whether one of them is short of its share.
    pub fn observe(&self, live: usize, peer_wants: bool) {
        self.state.live.store(live.max(1), Ordering::SeqCst);
        self.state.peer_wants.store(peer_wants, Ordering::SeqCst);
    }

    /// Sets the gauge to what the share holds now (before any lock changes hands).
    pub fn report(&self) {
        self.report_held(self.held());
    }

    /// How long a job refused by the share waits before trying anyway.
    pub fn wait_max(&self) -> Duration {
        self.state.wait_max
    }

    /// A place for one more lock if this replica is below its fair share, or if no peer wants more.
    /// The place is taken before the lock is tried, so jobs of one process racing for locks cannot
    /// overshoot together.
    pub fn reserve(&self) -> Option<ShareSlot> {
        let fair = self.fair();
        let peer_wants = self.peer_wants();
        let mut held = self.held();
        loop {
            if held >= fair && peer_wants {
                return None;
            }
            match self.state.held.compare_exchange(held, held + 1, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return Some(self.slot_taken(held + 1)),
                Err(now) => held = now,
            }
        }
    }

    /// A place for one more lock whatever the share says (a lock taken outside the spread, or a job
    /// refused for too long).
    pub fn reserve_anyway(&self) -> ShareSlot {
        let held = self.state.held.fetch_add(1, Ordering::SeqCst) + 1;
        self.slot_taken(held)
    }

    fn slot_taken(&self, held: usize) -> ShareSlot {
        self.report_held(held);
        ShareSlot { share: self.clone() }
    }

    fn report_held(&self, held: usize) {
        crate::metrics::gauge(GAUGE_HELD, GAUGE_HELD_HELP, &[("class", self.class())], i64::try_from(held).unwrap_or(i64::MAX));
    }

    /// Whether a job of this replica should give up its lock now: this replica holds more than its
    /// fair share, a live peer is short of its own, and no lock was given up within the last
    /// interval. Answering `true` starts the interval.
    pub fn should_yield(&self) -> bool {
        if self.held() <= self.fair() || !self.peer_wants() {
            return false;
        }
        let mut last = self.state.last_yield.lock().unwrap_or_else(PoisonError::into_inner);
        if last.is_some_and(|at| at.elapsed() < self.state.yield_every) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }
}


/// One counted lock of a [`Share`]; the count drops with it (the lock released, lost or never taken).
#[derive(Debug)]
pub struct ShareSlot {
    share: Share,
}

impl ShareSlot {
    pub fn share(&self) -> &Share {
        &self.share
    }
}

impl Drop for ShareSlot {
    fn drop(&mut self) {
        let before = self.share.state.held.fetch_sub(1, Ordering::SeqCst);
        self.share.report_held(before.saturating_sub(1));
    }
}

/// The lock key of replica `id`, as the SQL below computes it too.
pub fn replica_lock_name(id: &str) -> String {
    format!("{REPLICA_LOCK_PREFIX}{id}")
}

/// Live peers of `$1`: a fresh heartbeat and their replica lock held (in this database).
const PEERS_SQL: &str = "SELECT r.id FROM replicas r \
     WHERE r.id <> $1 AND r.heartbeat_at > now() - make_interval(secs => $2::bigint) \
       AND EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
           AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtext($3 || r.id)::bigint)";

/// This replica's entry in the `replicas` table and its shares, kept fresh by [`Registry::run`].
#[derive(Debug)]
pub struct Registry {
    pool: PgPool,
    id: String,
    shares: Vec<Share>,
    heartbeat: Duration,
    /// The session holding the replica lock, on which the heartbeat is written.
    conn: Option<PgConnection>,
}

impl Registry {
    /// A registry for a new replica with a fresh id (`rep_` and 16 hex digits), keeping `shares`
    /// (one per class) in step with the peers.
    pub fn new(pool: PgPool, shares: Vec<Share>) -> Self {
        let id = format!("rep_{:016x}", rand::random::<u64>());
        Self { pool, id, shares, heartbeat: Duration::from_millis(HEARTBEAT_MS_DEFAULT), conn: None }
    }

    #[must_use]
    pub fn heartbeat_every(mut self, heartbeat: Duration) -> Self {
        self.heartbeat = heartbeat.max(Duration::from_millis(1));
        self
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// One heartbeat: (re)takes the replica lock on a session of its own when there is none,
    /// writes the rows, then counts the live peers into the shares.
    pub async fn beat(&mut self) -> Result<(), ReplicaError> {
        let result = self.write_and_count().await;
        if result.is_err() {
            // The session may be gone: take the replica lock on a new one at the next beat.
            if let Some(conn) = self.conn.take() {
                let _ = tokio::time::timeout(Duration::from_millis(500), conn.close()).await;
            }
        }
        result
    }

    async fn write_and_count(&mut self) -> Result<(), ReplicaError> {
        let database = |source| ReplicaError::Database { id: self.id.clone(), source };
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => {
                let mut conn = self.pool.acquire().await.map_err(database)?.detach();
                // Free unless an earlier session of this replica lingers on the server; either way
                // the heartbeat goes on and the lock is tried again with the next session.
                sqlx::query("SELECT pg_try_advisory_lock(hashtext($1))")
                    .bind(replica_lock_name(&self.id))
                    .execute(&mut conn)
                    .await
                    .map_err(database)?;
                self.conn.insert(conn)
            }
        };
        let mut tx = conn.begin().await.map_err(database)?;
        sqlx::query("INSERT INTO replicas (id) VALUES ($1) ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()")
            .bind(&self.id)
            .execute(&mut *tx)
            .await
            .map_err(database)?;
        for share in &self.shares {
            sqlx::query(
                "INSERT INTO replica_shares (replica_id, class, jobs, locks_held) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (replica_id, class) DO UPDATE SET jobs = $3, locks_held = $4",
            )
            .bind(&self.id)
            .bind(share.class())
            .bind(i32::try_from(share.jobs()).unwrap_or(i32::MAX))
            .bind(i32::try_from(share.held()).unwrap_or(i32::MAX))
            .execute(&mut *tx)
            .await
            .map_err(database)?;
        }
        sqlx::query("DELETE FROM replicas WHERE heartbeat_at < now() - make_interval(secs => $1::bigint)")
            .bind(REPLICA_ROW_RETENTION_S)
            .execute(&mut *tx)
            .await
            .map_err(database)?;
        tx.commit().await.map_err(database)?;
        let stale_s = i64::try_from(Duration::from_millis(HEARTBEAT_STALE_MS).as_secs()).unwrap_or(i64::MAX);
        let peers: Vec<String> = sqlx::query_scalar(PEERS_SQL)
            .bind(&self.id)
            .bind(stale_s)
            .bind(REPLICA_LOCK_PREFIX)
            .fetch_all(&mut *conn)
            .await
            .map_err(database)?;
        let rows = sqlx::query("SELECT class, jobs, locks_held FROM replica_shares WHERE replica_id = ANY($1) AND jobs > 0")
            .bind(&peers)
            .fetch_all(&mut *conn)
            .await
            .map_err(database)?;
        let mut by_class: std::collections::HashMap<String, Vec<(usize, usize)>> = std::collections::HashMap::new();
        for row in rows {
            let class: String = row.try_get("class").map_err(database)?;
            let jobs: i32 = row.try_get("jobs").map_err(database)?;
            let held: i32 = row.try_get("locks_held").map_err(database)?;
            by_class.entry(class).or_default().push((usize::try_from(jobs).unwrap_or(0), usize::try_from(held).unwrap_or(0)));
        }
        for share in &self.shares {
            let peers = by_class.get(share.class()).map(Vec::as_slice).unwrap_or_default();
            let live = peers.len() + 1;
            let peer_wants = peers.iter().any(|(jobs, held)| wants_more(*jobs, *held, live));
            share.observe(live, peer_wants);
        }
        let live = i64::try_from(peers.len() + 1).unwrap_or(i64::MAX);
        crate::metrics::gauge(GAUGE_LIVE, GAUGE_LIVE_HELP, &[], live);
        Ok(())
    }

    /// Beats every interval until `shutdown` turns true (or its sender is gone), then removes the
    /// row and releases the replica lock so the peers re-count at once.
    pub async fn run(mut self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            if *shutdown.borrow() {
                break;
            }
            match tokio::time::timeout(Duration::from_millis(BEAT_TIMEOUT_MS), self.beat()).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(target: "replicas", %error, "replica heartbeat failed; retrying"),
                Err(_) => {
                    // A session that does not answer may be half dead: start over on a new one.
                    self.conn = None;
                    tracing::warn!(target: "replicas", timeout_ms = BEAT_TIMEOUT_MS, "replica heartbeat got no answer; retrying");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.heartbeat) => {}
                changed = shutdown.changed() => if changed.is_err() { break },
            }
        }
        self.deregister().await;
    }

    /// Leaves the registry (best effort: a dead session released its lock already, and a stale row
    /// is not counted).
    pub async fn deregister(mut self) {
        let _ = sqlx::query("DELETE FROM replicas WHERE id = $1").bind(&self.id).execute(&self.pool).await;
        if let Some(mut conn) = self.conn.take() {
            let _ = sqlx::query("SELECT pg_advisory_unlock(hashtext($1))").bind(replica_lock_name(&self.id)).execute(&mut conn).await;
            let _ = conn.close().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fair_share_rounds_up_so_every_job_has_a_place() {
        assert_eq!(fair_share(6, 1), 6);
        assert_eq!(fair_share(6, 2), 3);
        assert_eq!(fair_share(6, 4), 2);
        assert_eq!(fair_share(7, 2), 4);
        assert_eq!(fair_share(1, 3), 1);
        assert_eq!(fair_share(0, 2), 0);
        assert_eq!(fair_share(6, 0), 6, "no replica counted: this one takes everything");
        for jobs in 0..40 {
            for live in 1..10 {
                assert!(fair_share(jobs, live) * live >= jobs, "{jobs} jobs over {live} replicas all have a place");
                assert!(fair_share(jobs, live) * live < jobs + live, "{jobs} over {live}: no more than one spare place each");
            }
        }
    }

    #[test]
    fn a_replica_below_its_share_wants_more() {
        assert!(wants_more(6, 2, 2));
        assert!(!wants_more(6, 3, 2));
        assert!(!wants_more(6, 6, 1));
        assert!(wants_more(6, 0, 6));
    }

    #[test]
    fn the_share_caps_reservations_while_a_peer_wants_more() {
        let share = Share::with_pacing(CLASS_WATCH, 6, Duration::from_secs(3600), Duration::from_secs(3600));
        share.observe(2, true);
        let slots: Vec<ShareSlot> = std::iter::from_fn(|| share.reserve()).take(10).collect();
        assert_eq!(slots.len(), 3, "a fair share of 6 jobs over 2 replicas");
        assert_eq!(share.held(), 3);
        assert!(!share.should_yield(), "at its share: nothing to give up");
        share.observe(2, false);
        let extra = share.reserve().expect("nobody else wants more: a free lock may be taken");
        assert_eq!(share.held(), 4);
        assert!(!share.should_yield(), "above the share, but no peer wants more");
        share.observe(2, true);
        assert!(share.should_yield(), "above the share while a peer wants more");
        assert!(!share.should_yield(), "one surplus lock per interval");
        drop(extra);
        drop(slots);
        assert_eq!(share.held(), 0, "slots count themselves out when dropped");
        share.observe(1, true);
        assert_eq!(share.fair(), 6, "alone, the replica takes every job");
    }
}
