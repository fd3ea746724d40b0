//! How each chain rail is doing, as its watcher last reported: the blocks it is behind the node's
//! tip, and how many ticks in a row failed. The checkout page reads it to offer card first when
//! every chain an invoice offers is unhealthy; `/metrics` shows it as `payrail_rail_healthy`.
//!
//! A rail is unhealthy when its watcher is more than [`HEAD_LAG_BLOCKS_MAX`] blocks behind, has
//! failed [`FAILED_TICKS_MAX`] ticks in a row (every RPC endpoint failing counts), or has not
//! reported for [`REPORT_AGE_S_MAX`] seconds (a watcher that stopped). A rail no watcher of this
//! process has reported on (another replica holds its lock) is unknown, and unknown is not
//! unhealthy: the fallback is for outages that are seen, not guessed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use chrono::{DateTime, Utc};

use crate::metrics;

/// Blocks behind the tip beyond which a chain's payments are seen too late to wait for.
pub const HEAD_LAG_BLOCKS_MAX: u64 = 300;
/// Failed ticks in a row after which a chain is unhealthy.
pub const FAILED_TICKS_MAX: u32 = 3;
/// A report older than this means the watcher stopped.
pub const REPORT_AGE_S_MAX: i64 = 120;

/// What one watcher tick said about its chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TickReport {
    /// The tick worked; the watcher is this many blocks behind the tip.
    Followed { head_lag_blocks: u64 },
    /// The tick failed (RPC or otherwise).
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainHealth {
    pub head_lag_blocks: u64,
    pub failed_ticks: u32,
    pub reported_at: DateTime<Utc>,
}

impl ChainHealth {
    /// Why the chain is unhealthy at `now`, or `None`.
    pub fn problem(&self, now: DateTime<Utc>) -> Option<&'static str> {
        if self.failed_ticks >= FAILED_TICKS_MAX {
            Some("its nodes are not answering")
        } else if self.head_lag_blocks > HEAD_LAG_BLOCKS_MAX {
            Some("payments on it are being seen late")
        } else if (now - self.reported_at).num_seconds() > REPORT_AGE_S_MAX {
            Some("it is not being followed right now")
        } else {
            None
        }
    }
}

/// The health of every chain rail of this process, by CAIP-2 id.
#[derive(Debug, Default)]
pub struct RailHealth {
    chains: Mutex<BTreeMap<String, ChainHealth>>,
}

impl RailHealth {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a watcher tick on `chain` (CAIP-2) and updates the rail's metrics.
    pub fn report(&self, chain: &str, tick: TickReport, now: DateTime<Utc>) {
        let health = {
            let mut chains = self.chains.lock().unwrap_or_else(PoisonError::into_inner);
            let entry = chains.entry(chain.to_owned()).or_insert(ChainHealth { head_lag_blocks: 0, failed_ticks: 0, reported_at: now });
            match tick {
                TickReport::Followed { head_lag_blocks } => {
                    entry.head_lag_blocks = head_lag_blocks;
                    entry.failed_ticks = 0;
                }
                TickReport::Failed => entry.failed_ticks = entry.failed_ticks.saturating_add(1),
            }
            entry.reported_at = now;
            *entry
        };
        let labels = [("rail", chain)];
        metrics::gauge(
            "payrail_rail_healthy",
            "Whether a payment rail is healthy (1) or not (0); chains by CAIP-2 id, card as \"card\".",
            &labels,
            i64::from(health.problem(now).is_none()),
        );
        metrics::gauge(
            "payrail_rail_failed_ticks",
            "Watcher ticks in a row that failed, per chain.",
            &labels,
            i64::from(health.failed_ticks),
        );
    }

    /// The last report on `chain`, if any.
    pub fn get(&self, chain: &str) -> Option<ChainHealth> {
        self.chains.lock().unwrap_or_else(PoisonError::into_inner).get(chain).copied()
    }

    /// Why `chain` is unhealthy at `now`; `None` when it is healthy or unknown.
    pub fn problem(&self, chain: &str, now: DateTime<Utc>) -> Option<&'static str> {
        self.get(chain).and_then(|h| h.problem(now))
    }

    /// Every reported chain with its problem at `now`, for operators.
    pub fn snapshot(&self, now: DateTime<Utc>) -> Vec<(String, ChainHealth, Option<&'static str>)> {
        let chains = self.chains.lock().unwrap_or_else(PoisonError::into_inner);
        chains.iter().map(|(chain, h)| (chain.clone(), *h, h.problem(now))).collect()
    }
}

/// The process's rail health, shared by the watchers and the API.
pub fn shared() -> Arc<RailHealth> {
    static SHARED: OnceLock<Arc<RailHealth>> = OnceLock::new();
    SHARED.get_or_init(|| Arc::new(RailHealth::new())).clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_767_268_800 + s, 0).single().expect("valid time")
    }

    #[test]
    fn failures_lag_and_silence_make_a_rail_unhealthy() {
        let health = RailHealth::new();
        assert_eq!(health.problem("eip155:1", t(0)), None, "unknown is not unhealthy");
        health.report("eip155:1", TickReport::Followed { head_lag_blocks: 2 }, t(0));
        assert_eq!(health.problem("eip155:1", t(1)), None);
        for _ in 0..FAILED_TICKS_MAX {
            health.report("eip155:1", TickReport::Failed, t(2));
        }
        assert!(health.problem("eip155:1", t(2)).is_some());
        health.report("eip155:1", TickReport::Followed { head_lag_blocks: 1 }, t(3));
        assert_eq!(health.problem("eip155:1", t(3)), None, "one good tick heals it");
        health.report("eip155:1", TickReport::Followed { head_lag_blocks: HEAD_LAG_BLOCKS_MAX + 1 }, t(4));
        assert!(health.problem("eip155:1", t(4)).is_some());
        health.report("eip155:1", TickReport::Followed { head_lag_blocks: 0 }, t(5));
        assert!(health.problem("eip155:1", t(5 + REPORT_AGE_S_MAX + 1)).is_some(), "a silent watcher");
    }
}
