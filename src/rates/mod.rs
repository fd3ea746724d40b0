//! Exchange rates for quoting invoices.
//!
//! A source answers from what it already holds (a fixed table here; cached feeds refresh in the
//! background), so quoting never waits on the network. A missing rate is an error for that asset
//! only; nothing ever falls back to 1:1.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use thiserror::Error;

use crate::money::{Fiat, Rate};

/// A rate as it was used for a quote: value, where it came from and when it was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    pub rate: Rate,
    pub source: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RateError {
    #[error("no rate for {base}/{quote}")]
    Unavailable { base: String, quote: String },
}

/// Anything that can price one whole unit of an asset (by symbol) in a fiat currency.
pub trait RateSource: Send + Sync + std::fmt::Debug {
    fn quote(&self, base_symbol: &str, quote: Fiat, now: DateTime<Utc>) -> Result<Quote, RateError>;
}

/// Rates fixed in the configuration: for development, tests and pegged assets.
#[derive(Debug, Clone, Default)]
pub struct FixedFeed {
    rates: BTreeMap<(String, String), Rate>,
}

impl FixedFeed {
    /// `pairs` maps (`BTC`, `USD`) to the price of one BTC in USD.
    pub fn new(pairs: impl IntoIterator<Item = ((String, String), Rate)>) -> Self {
        Self { rates: pairs.into_iter().collect() }
    }
}

impl RateSource for FixedFeed {
    fn quote(&self, base_symbol: &str, quote: Fiat, now: DateTime<Utc>) -> Result<Quote, RateError> {
        self.rates
            .get(&(base_symbol.to_owned(), quote.code().to_owned()))
            .map(|rate| Quote { rate: rate.clone(), source: "fixed".to_owned(), at: now })
            .ok_or_else(|| RateError::Unavailable { base: base_symbol.to_owned(), quote: quote.code().to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_feed_quotes_known_pairs_only() {
        let rate: Rate = "65000.5".parse().expect("valid rate");
        let feed = FixedFeed::new([(("BTC".to_owned(), "USD".to_owned()), rate.clone())]);
        let usd: Fiat = "USD".parse().expect("usd");
        let eur: Fiat = "EUR".parse().expect("eur");
        let now = Utc::now();
        assert_eq!(feed.quote("BTC", usd, now).map(|q| q.rate), Ok(rate));
        assert!(matches!(feed.quote("BTC", eur, now), Err(RateError::Unavailable { .. })));
        assert!(feed.quote("ETH", usd, now).is_err());
    }
}
