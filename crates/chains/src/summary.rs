//! The follower's periodic INFO line: per chain, every [`SUMMARY_INTERVAL_S`], where the head and
//! the cursor stand and what happened since the last line. Per-block lines are DEBUG; state
//! changes (payments seen, confirmed, orphaned; reorgs; failovers) are logged where they happen.

use std::time::{Duration, Instant};

use super::follower::ChainEvent;

/// How often the summary line is written.
pub const SUMMARY_INTERVAL_S: u64 = 60;

#[derive(Debug)]
pub struct Summary {
    chain: String,
    since: Instant,
    tip: Option<u64>,
    cursor: Option<u64>,
    blocks: u64,
    payments: usize,
    orphaned: usize,
    reorgs: usize,
}

impl Summary {
    pub fn new(chain: &str) -> Self {
        Self { chain: chain.to_owned(), since: Instant::now(), tip: None, cursor: None, blocks: 0, payments: 0, orphaned: 0, reorgs: 0 }
    }

    pub fn record<H>(&mut self, event: &ChainEvent<H>) {
        self.tip = Some(event.tip());
        match event {
            ChainEvent::Committed { from, to, payments, orphaned, .. } => {
                self.blocks += (to + 1).saturating_sub(*from);
                self.cursor = Some(*to);
                self.payments += payments;
                self.orphaned += orphaned;
            }
            ChainEvent::Reorged { fork_height, orphaned, .. } | ChainEvent::Reverted { fork_height, orphaned, .. } => {
                self.cursor = Some(*fork_height);
                self.orphaned += orphaned;
                self.reorgs += 1;
            }
        }
    }

    /// Writes the line once the interval has passed, and starts the next one.
    pub fn maybe_log(&mut self) {
        if self.since.elapsed() < Duration::from_secs(SUMMARY_INTERVAL_S) {
            return;
        }
        let lag = self.tip.zip(self.cursor).map(|(tip, cursor)| tip.saturating_sub(cursor));
        tracing::info!(target: "watcher", chain = %self.chain, tip = ?self.tip, cursor = ?self.cursor, lag = ?lag,
            blocks = self.blocks, payments = self.payments, orphaned = self.orphaned, reorgs = self.reorgs,
            interval_s = SUMMARY_INTERVAL_S, "chain summary");
        // Where the chain stands carries over; the counts start again.
        (self.since, self.blocks, self.payments, self.orphaned, self.reorgs) = (Instant::now(), 0, 0, 0, 0);
    }
}
