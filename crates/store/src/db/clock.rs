//! The daemon's time: the database server's clock, advanced between readings by this host's
//! monotonic clock.
//!
//! Every replica reads the same clock (the primary's), so they agree on when an invoice expires, a
//! renewal falls due or a webhook retry is owed. A jump of this host's wall clock — an NTP step, a
//! virtual machine resumed, an operator's `date -s` — moves nothing: between readings time advances
//! by `CLOCK_MONOTONIC`, which does not jump, and a reading comes from the database. How far this
//! host's wall clock is from the database's is logged and exported as `payrail_clock_offset_ms`.
//!
//! Until the first reading, and while the database cannot be reached, the last reading (at start,
//! this host's wall clock) goes on being advanced by the monotonic clock.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use payrail_core::clock::Clock;

/// How often the database's clock is read again.
pub const SYNC_EVERY: Duration = Duration::from_secs(10);
/// This host's wall clock further than this from the database's is logged as a warning.
pub const OFFSET_WARN: chrono::Duration = chrono::Duration::seconds(2);
const GAUGE_OFFSET: &str = "payrail_clock_offset_ms";

/// See the module docs.
#[derive(Debug)]
pub struct DatabaseClock {
    /// A reading of the database's clock and the monotonic instant it stands for.
    base: Mutex<(DateTime<Utc>, Instant)>,
}

impl Default for DatabaseClock {
    fn default() -> Self {
        Self::new()
    }
}

impl DatabaseClock {
    /// Starts from this host's wall clock; [`Self::sync`] replaces it with the database's.
    pub fn new() -> Self {
        Self { base: Mutex::new((Utc::now(), Instant::now())) }
    }

    /// Reads the database's clock (taken as read half-way through the round trip). Returns how far
    /// this host's wall clock is ahead of it (negative: behind).
    pub async fn sync(&self, pool: &PgPool) -> Result<chrono::Duration, sqlx::Error> {
        let sent = Instant::now();
        let database: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()").fetch_one(pool).await?;
        let round_trip = sent.elapsed();
        let at = sent + round_trip / 2;
        let offset = Utc::now() - (database + chrono::Duration::from_std(at.elapsed()).unwrap_or_default());
        if let Ok(mut base) = self.base.lock() {
            *base = (database, at);
        }
        payrail_core::metrics::gauge(
            GAUGE_OFFSET,
            "How far this host's wall clock is ahead of the database's (payrail keeps the database's time).",
            &[],
            offset.num_milliseconds(),
        );
        Ok(offset)
    }

    /// Reads the database's clock every [`SYNC_EVERY`] until `stop` flips, warning while this
    /// host's wall clock is off it by more than [`OFFSET_WARN`].
    pub async fn keep_in_sync(&self, pool: PgPool, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            match self.sync(&pool).await {
                Ok(offset) if offset.abs() > OFFSET_WARN => tracing::warn!(
                    target: "clock",
                    offset_ms = offset.num_milliseconds(),
                    "this host's clock is off the database's; payrail keeps the database's time"
                ),
                Ok(_) => {}
                Err(error) => tracing::debug!(target: "clock", %error, "database clock not read; advancing the last reading"),
            }
            tokio::select! {
                _ = tokio::time::sleep(SYNC_EVERY) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

impl Clock for DatabaseClock {
    fn now(&self) -> DateTime<Utc> {
        let (reading, at) = *self.base.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        reading + chrono::Duration::from_std(at.elapsed()).unwrap_or_default()
    }
}
