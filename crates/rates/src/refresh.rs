//! The refresher: polls every feed of an [`AggregatedRates`] at its refresh interval and writes
//! what each returns into the cache.
//!
//! Invariants:
//! - Feeds are fetched concurrently and independently: one that fails or times out leaves the
//!   others' results, and its own earlier quotes age out by `max_age`.
//! - Every failure is logged with the feed and counted in `payrail_rate_feed_errors_total`
//!   (labels `source`, `kind`); successes in `payrail_rate_feed_fetches_total`, and the time of
//!   the last one in `payrail_rate_feed_last_success_seconds`.
//! - A round is bounded by the feeds' timeouts; rounds never overlap (a late round delays the
//!   next instead of piling up).

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::metrics;

use super::aggregate::AggregatedRates;
use super::feed::FeedError;
use super::RateSource;

/// What one refresh round did.
#[derive(Debug, Default)]
pub struct RefreshReport {
    /// Feeds that answered, with how many quotes each returned.
    pub fetched: Vec<(&'static str, usize)>,
    /// Feeds that failed, with why.
    pub failed: Vec<(&'static str, FeedError)>,
}

/// Keeps an [`AggregatedRates`] cache filled. Cheap to clone; shares the cache.
#[derive(Debug, Clone)]
pub struct Refresher {
    rates: AggregatedRates,
}

impl Refresher {
    pub fn new(rates: AggregatedRates) -> Self {
        Refresher { rates }
    }

    /// One round: fetch every feed at once, record each success, log and count each failure.
    pub async fn refresh_once(&self) -> RefreshReport {
        let shared = &self.rates.shared;
        let now = shared.clock.now();
        let pairs = &shared.pairs;
        let results = futures::future::join_all(
            shared.feeds.iter().map(|feed| async move { (feed.name(), feed.fetch(pairs, now).await) }),
        )
        .await;
        let mut report = RefreshReport::default();
        for (source, result) in results {
            match result {
                Ok(quotes) => {
                    tracing::debug!(target: "rates", source, quotes = quotes.len(), "feed refreshed");
                    metrics::count("payrail_rate_feed_fetches_total", "Successful rate feed fetches.", &[("source", source)], 1);
                    metrics::gauge(
                        "payrail_rate_feed_last_success_seconds",
                        "Unix time of the last successful fetch of each rate feed.",
                        &[("source", source)],
                        now.timestamp(),
                    );
                    report.fetched.push((source, quotes.len()));
                    self.rates.record(source, quotes);
                }
                Err(error) => {
                    tracing::warn!(target: "rates", source, %error, retryable = error.is_retryable(), "rate feed failed; its quotes age out");
                    metrics::count(
                        "payrail_rate_feed_errors_total",
                        "Failed rate feed fetches, by kind.",
                        &[("source", source), ("kind", error.kind())],
                        1,
                    );
                    report.failed.push((source, error));
                }
            }
        }
        report
    }

    /// Refreshes now and then every refresh interval until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.rates.shared.refresh_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::info!(
            target: "rates",
            feeds = self.rates.shared.feeds.len(),
            pairs = self.rates.shared.pairs.len(),
            interval_ms = u64::try_from(self.rates.shared.refresh_interval.as_millis()).unwrap_or(u64::MAX),
            "refreshing rates"
        );
        loop {
            if *stop.borrow() {
                return;
            }
            tokio::select! {
                _ = tick.tick() => {
                    self.refresh_once().await;
                }
                changed = stop.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// Starts the background refresh of `rates`, if it has one (the live and file feeds do; the
/// fixed feed does not), until `stop` turns true or its sender is dropped.
pub fn spawn_rate_refresh(rates: &dyn RateSource, stop: watch::Receiver<bool>) -> Option<JoinHandle<()>> {
    let refresher = rates.refresher()?;
    Some(tokio::spawn(refresher.run(stop)))
}
