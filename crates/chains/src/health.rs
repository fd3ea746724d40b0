//! How each chain rail is doing, as its watcher last reported: the blocks it is behind the node's
//! tip, and how many ticks in a row failed. The checkout page reads it to offer card first when
//! every chain an invoice offers is unhealthy; `/metrics` shows it as `payrail_rail_healthy`.
//!
//! A rail is unhealthy when its watcher halted (a reorg deeper than its window, or any other stop
//! that needs an operator: at once, until a watcher follows the chain again), has failed
//! [`FAILED_TICKS_MAX`] ticks in a row (every RPC endpoint failing counts), sees a node whose tip has
//! not advanced for longer than the chain's block time allows (a frozen node, see
//! [`stall_after_ms`]), is more than [`HEAD_LAG_BLOCKS_MAX`] blocks behind, or has not reported for
//! [`REPORT_AGE_S_MAX`] seconds (a watcher that is stuck). A rail no watcher of this process has
//! reported on (another replica holds its lock) is unknown, and unknown is not unhealthy: the
//! fallback is for outages that are seen, not guessed.
//!
//! The verdict is taken at the time of asking, so `payrail_rail_healthy` is recomputed whenever
//! `/metrics` is scraped ([`RailHealth::refresh_metrics`]): a watcher that stopped reporting does not
//! leave a healthy gauge behind.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use chrono::{DateTime, Utc};

use crate::metrics;

/// Blocks behind the tip beyond which a chain's payments are seen too late to wait for.
pub const HEAD_LAG_BLOCKS_MAX: u64 = 300;
/// Failed ticks in a row after which a chain is unhealthy.
pub const FAILED_TICKS_MAX: u32 = 3;
/// A report older than this means the watcher is stuck (watchers report every poll, at most every
/// few seconds).
pub const REPORT_AGE_S_MAX: i64 = 30;
/// Block times a slot-based chain's (EVM) tip may stand still before its node counts as frozen.
pub const TIP_STALL_BLOCK_TIMES_EVM: u64 = 2;
/// Block times Bitcoin's tip may stand still: its blocks come at random (a 10-minute mean; an hour
/// without one happens about once in 400 blocks), so only a long silence says the node is stuck.
pub const TIP_STALL_BLOCK_TIMES_BITCOIN: u64 = 6;

/// How long a chain's tip may stand still before its node counts as frozen: `block_times` of the
/// chain's block time, plus two polls of the watcher (it sees a new block one poll late at worst).
pub fn stall_after_ms(block_time_ms: u64, block_times: u64, poll_interval_ms: u64) -> u64 {
    block_time_ms.saturating_mul(block_times).saturating_add(poll_interval_ms.saturating_mul(2))
}

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
    /// The watcher stopped and needs an operator.
    pub halted: bool,
    /// The node's tip as last seen, and when it last moved.
    pub tip: Option<u64>,
    pub tip_advanced_at: DateTime<Utc>,
    /// How long the tip may stand still; `None`: not judged.
    pub stall_after_ms: Option<u64>,
}

impl ChainHealth {
    fn new(now: DateTime<Utc>) -> Self {
        Self { head_lag_blocks: 0, failed_ticks: 0, reported_at: now, halted: false, tip: None, tip_advanced_at: now, stall_after_ms: None }
    }

    /// Why the chain is unhealthy at `now`, or `None`.
    pub fn problem(&self, now: DateTime<Utc>) -> Option<&'static str> {
        let stalled = self.tip.is_some()
            && self.stall_after_ms.is_some_and(|ms| (now - self.tip_advanced_at).num_milliseconds() > i64::try_from(ms).unwrap_or(i64::MAX));
        if self.halted {
            Some("its watcher stopped and needs an operator")
        } else if self.failed_ticks >= FAILED_TICKS_MAX {
            Some("its nodes are not answering")
        } else if stalled {
            Some("its node's tip is not advancing")
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
            let entry = chains.entry(chain.to_owned()).or_insert_with(|| ChainHealth::new(now));
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
        set_healthy_gauge(chain, &health, now);
        metrics::gauge(
            "payrail_rail_failed_ticks",
            "Watcher ticks in a row that failed, per chain.",
            &labels,
            i64::from(health.failed_ticks),
        );
    }

    /// A watcher starts following `chain` (it holds the chain's lock): whatever halted the chain
    /// before is over, and its tip may stand still for `stall_after_ms` at most.
    pub fn follow(&self, chain: &str, stall_after_ms: u64, now: DateTime<Utc>) {
        let health = {
            let mut chains = self.chains.lock().unwrap_or_else(PoisonError::into_inner);
            let entry = chains.entry(chain.to_owned()).or_insert_with(|| ChainHealth::new(now));
            entry.halted = false;
            entry.stall_after_ms = Some(stall_after_ms);
            entry.tip = None;
            entry.tip_advanced_at = now;
            entry.reported_at = now;
            *entry
        };
        set_healthy_gauge(chain, &health, now);
    }

    /// The node's tip as a watcher read it: the clock of the frozen-node check restarts when it moved.
    pub fn tip(&self, chain: &str, tip: u64, now: DateTime<Utc>) {
        let health = {
            let mut chains = self.chains.lock().unwrap_or_else(PoisonError::into_inner);
            let entry = chains.entry(chain.to_owned()).or_insert_with(|| ChainHealth::new(now));
            if entry.tip != Some(tip) {
                entry.tip = Some(tip);
                entry.tip_advanced_at = now;
            }
            *entry
        };
        set_healthy_gauge(chain, &health, now);
    }

    /// The watcher of `chain` stopped for good (a reorg deeper than its window, a wrong chain): the
    /// rail is unhealthy from now until a watcher follows it again.
    pub fn halt(&self, chain: &str, now: DateTime<Utc>) {
        let health = {
            let mut chains = self.chains.lock().unwrap_or_else(PoisonError::into_inner);
            let entry = chains.entry(chain.to_owned()).or_insert_with(|| ChainHealth::new(now));
            entry.halted = true;
            entry.reported_at = now;
            *entry
        };
        set_healthy_gauge(chain, &health, now);
    }

    /// This process no longer follows `chain` (its watcher lost the chain's lock to another replica,
    /// or stopped at shutdown): the rail is unknown here again, not silent, so this replica is not
    /// judged by a chain another replica follows.
    pub fn forget(&self, chain: &str) {
        self.chains.lock().unwrap_or_else(PoisonError::into_inner).remove(chain);
        for name in [
            "payrail_rail_healthy",
            "payrail_rail_failed_ticks",
            "payrail_rail_report_age_seconds",
            "payrail_rail_tip_age_seconds",
            "payrail_rail_halted",
        ] {
            metrics::forget(name, &[("rail", chain)]);
        }
    }

    /// Recomputes `payrail_rail_healthy` of every known chain at `now` (before `/metrics` renders),
    /// with the age of its last report and of its node's tip, so frozen tip and lag gauges show as
    /// old rather than current.
    pub fn refresh_metrics(&self, now: DateTime<Utc>) {
        for (chain, health, _) in self.snapshot(now) {
            set_healthy_gauge(&chain, &health, now);
            let labels = [("rail", chain.as_str())];
            metrics::gauge(
                "payrail_rail_report_age_seconds",
                "Seconds since the rail's watcher last reported, per chain.",
                &labels,
                (now - health.reported_at).num_seconds().max(0),
            );
            metrics::gauge(
                "payrail_rail_tip_age_seconds",
                "Seconds since the chain's tip last advanced, as its watcher saw it.",
                &labels,
                (now - health.tip_advanced_at).num_seconds().max(0),
            );
            metrics::gauge("payrail_rail_halted", "Whether the rail's watcher stopped for good (1) or not (0).", &labels, i64::from(health.halted));
        }
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

fn set_healthy_gauge(chain: &str, health: &ChainHealth, now: DateTime<Utc>) {
    metrics::gauge(
        "payrail_rail_healthy",
        "Whether a payment rail is healthy (1) or not (0); chains by CAIP-2 id, card as \"card\".",
        &[("rail", chain)],
        i64::from(health.problem(now).is_none()),
    );
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

    #[test]
    fn a_halted_watcher_is_unhealthy_at_once_until_a_watcher_follows_again() {
        let health = RailHealth::new();
        health.report("eip155:10", TickReport::Followed { head_lag_blocks: 0 }, t(0));
        health.halt("eip155:10", t(0));
        assert_eq!(health.problem("eip155:10", t(0)), Some("its watcher stopped and needs an operator"));
        health.follow("eip155:10", 10_000, t(1));
        assert_eq!(health.problem("eip155:10", t(1)), None);
        // Another replica took the chain: unknown here, not silent.
        health.forget("eip155:10");
        assert_eq!(health.problem("eip155:10", t(1_000)), None);
        assert!(health.get("eip155:10").is_none());
    }

    #[test]
    fn a_tip_that_stands_still_longer_than_the_block_time_allows_is_a_frozen_node() {
        let health = RailHealth::new();
        // A 2 s chain polled every 500 ms: frozen after 2 block times and 2 polls, 5 s.
        let stall = stall_after_ms(2_000, TIP_STALL_BLOCK_TIMES_EVM, 500);
        assert_eq!(stall, 5_000);
        health.follow("eip155:137", stall, t(0));
        health.tip("eip155:137", 100, t(0));
        for s in 1..=5 {
            health.report("eip155:137", TickReport::Followed { head_lag_blocks: 0 }, t(s));
            health.tip("eip155:137", 100, t(s));
        }
        assert_eq!(health.problem("eip155:137", t(5)), None, "within the allowance");
        health.report("eip155:137", TickReport::Followed { head_lag_blocks: 0 }, t(6));
        assert_eq!(health.problem("eip155:137", t(6)), Some("its node's tip is not advancing"));
        health.tip("eip155:137", 101, t(7));
        assert_eq!(health.problem("eip155:137", t(7)), None, "a new block heals it");
    }
}
