//! Exchange rates for quoting invoices.
//!
//! A [`RateSource`] answers from what it already holds, so quoting never waits on the network:
//! - [`FixedFeed`]: rates fixed in the configuration (development, tests).
//! - [`AggregatedRates`]: a cache filled by feeds ([`Feed`]: the exchange clients
//!   [`CoinbaseClient`], [`KrakenClient`], [`BinanceClient`], [`CoinGeckoClient`], and the
//!   development [`FileFeed`]) that a [`Refresher`] polls in the background.
//!
//! How a pair is priced by [`AggregatedRates`] (see [`aggregate`]):
//! 1. Only sources whose quote is at most `max_age` old count ("fresh"); stale ones expire.
//! 2. Fewer fresh sources than `quorum` → refused ([`RateError::TooFewSources`]).
//! 3. The median of the fresh rates is taken; sources more than `outlier_bps` from it are
//!    dropped and the median is taken again over the rest, which must still meet the quorum.
//! 4. A USD stablecoin (USDC, USDT, DAI priced in USD) whose rate lies outside
//!    1 ± `depeg_bps` is refused ([`RateError::Depegged`]).
//!
//! Invariants:
//! - Every rate is an exact [`Rate`] parsed from the feed's decimal text (JSON numbers from their
//!   literal text); zero and negative prices are refused where they are read.
//! - Nothing ever falls back to 1:1 or to an older rate: a pair that cannot be priced is an
//!   error for that pair only, and every other pair is priced as usual.
//! - A [`Quote`] names every source and rate it was computed from ([`Quote::sources`]).

use payrail_config as config;
use payrail_core::{clock, markets, metrics, money};

mod aggregate;
mod binance;
mod coinbase;
mod coingecko;
mod decimal;
mod feed;
mod file;
mod kraken;
mod refresh;

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::clock::Clock;
use crate::config::RatesConfig;
use crate::money::{Fiat, Rate};

pub use aggregate::{aggregate, AggregatedRates, AggregationPolicy, STABLECOINS_USD};
pub use binance::{BinanceClient, BINANCE_BASE_URL};
pub use coinbase::{CoinbaseClient, COINBASE_BASE_URL};
pub use coingecko::{CoinGeckoClient, COINGECKO_BASE_URL};
pub use decimal::PriceError;
pub use feed::{http_client, Feed, FeedError, FEED_BODY_BYTES_MAX};
pub use payrail_core::markets::{LiveSource, FEED_TIMEOUT_MS_DEFAULT};
pub use file::{FileFeed, FILE_FEED_BYTES_MAX};
pub use kraken::{KrakenClient, KRAKEN_BASE_URL};
pub use payrail_core::money::{Pair, PairError, SYMBOL_LEN_MAX};
pub use refresh::{spawn_rate_refresh, RefreshReport, Refresher};

/// One source's price for one pair, as it was read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceQuote {
    /// The feed's name: "coinbase", "kraken", "binance", "coingecko", "file", "fixed".
    pub source: String,
    /// Asset symbol ("BTC").
    pub base: String,
    pub quote: Fiat,
    pub rate: Rate,
    /// When the price was read (or, when the feed says so, when the source last updated it).
    pub at: DateTime<Utc>,
    /// The currency the source actually quoted in when it stands in for `quote`: Binance's
    /// USDT markets are used for USD. Such a quote is an approximation and counts only while
    /// that currency's own USD rate is fresh and within the depeg band.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
}

/// A rate as it was used for a quote: value, where it came from and when it was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    pub rate: Rate,
    /// A short summary of the sources: "fixed", "median:coinbase,kraken".
    pub source: String,
    /// The time of the oldest input: the rate is no fresher than that.
    pub at: DateTime<Utc>,
    /// Every source quote the rate was computed from, sorted by source name.
    pub sources: Vec<SourceQuote>,
}

impl Quote {
    /// The sources as JSON (`[{"source":"coinbase","base":"BTC","quote":"USD","rate":"…","at":"…"},…]`),
    /// to store beside the locked rate.
    pub fn sources_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.sources).unwrap_or(serde_json::Value::Null)
    }
}

/// Why a pair cannot be priced now. Every variant names the pair; none is worth retrying at
/// once, but the same pair may be priced again after the next refresh.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum RateError {
    #[error("no rate for {base}/{quote}")]
    Unavailable { base: String, quote: String },
    #[error("no rate for {base}/{quote}: {fresh} fresh source(s), the quorum is {quorum} ({detail})")]
    TooFewSources { base: String, quote: String, fresh: usize, quorum: usize, detail: String },
    #[error(
        "no rate for {base}/{quote}: only {kept} source(s) lie within {outlier_bps} bps of the median, \
         the quorum is {quorum} ({detail})"
    )]
    SourcesDisagree { base: String, quote: String, kept: usize, quorum: usize, outlier_bps: u32, detail: String },
    #[error(
        "no rate for {base}/{quote}: the stablecoin trades at {rate}, outside 1 ± {depeg_bps} bps; \
         a depegged stablecoin is not priced"
    )]
    Depegged { base: String, quote: String, rate: Rate, depeg_bps: u32 },
}

/// Anything that can price one whole unit of an asset (by symbol) in a fiat currency.
pub trait RateSource: Send + Sync + std::fmt::Debug {
    fn quote(&self, base_symbol: &str, quote: Fiat, now: DateTime<Utc>) -> Result<Quote, RateError>;

    /// The background task that keeps this source's cache filled, if it has one.
    fn refresher(&self) -> Option<Refresher> {
        None
    }
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
            .map(|rate| Quote {
                rate: rate.clone(),
                source: "fixed".to_owned(),
                at: now,
                sources: vec![SourceQuote {
                    source: "fixed".to_owned(),
                    base: base_symbol.to_owned(),
                    quote,
                    rate: rate.clone(),
                    at: now,
                    via: None,
                }],
            })
            .ok_or_else(|| RateError::Unavailable { base: base_symbol.to_owned(), quote: quote.code().to_owned() })
    }
}

/// The rate source the configuration selects: `[rates] feed = "fixed" | "live" | "file"`.
#[derive(Debug, Clone)]
pub enum ConfiguredRates {
    Fixed(FixedFeed),
    Aggregated(AggregatedRates),
}

impl ConfiguredRates {
    /// Builds the configured source. The fixed and file feeds are ready at once; the live feed
    /// quotes once its [`Refresher`] has fetched (see [`spawn_rate_refresh`]).
    pub fn from_config(config: &RatesConfig, clock: Arc<dyn Clock>) -> Self {
        match config.feed {
            crate::config::RateFeed::Fixed => ConfiguredRates::Fixed(FixedFeed::new(
                config.fixed_rates().map(|(base, quote, rate)| ((base.to_owned(), quote.code().to_owned()), rate.clone())),
            )),
            crate::config::RateFeed::Live | crate::config::RateFeed::File => {
                ConfiguredRates::Aggregated(AggregatedRates::from_config(config, clock))
            }
        }
    }
}

impl RateSource for ConfiguredRates {
    fn quote(&self, base_symbol: &str, quote: Fiat, now: DateTime<Utc>) -> Result<Quote, RateError> {
        match self {
            ConfiguredRates::Fixed(feed) => feed.quote(base_symbol, quote, now),
            ConfiguredRates::Aggregated(rates) => rates.quote(base_symbol, quote, now),
        }
    }

    fn refresher(&self) -> Option<Refresher> {
        match self {
            ConfiguredRates::Fixed(_) => None,
            ConfiguredRates::Aggregated(rates) => rates.refresher(),
        }
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
        assert_eq!(feed.quote("BTC", usd, now).map(|q| q.rate), Ok(rate.clone()));
        assert!(matches!(feed.quote("BTC", eur, now), Err(RateError::Unavailable { .. })));
        assert!(feed.quote("ETH", usd, now).is_err());
        let quote = feed.quote("BTC", usd, now).expect("quote");
        assert_eq!(quote.source, "fixed");
        assert_eq!(quote.sources.len(), 1);
        assert_eq!((quote.sources[0].source.as_str(), &quote.sources[0].rate), ("fixed", &rate));
        assert!(feed.refresher().is_none());
    }

    #[test]
    fn quote_sources_serialize_with_exact_rates() {
        let rate: Rate = "65000.123456789012345678".parse().expect("rate");
        let feed = FixedFeed::new([(("BTC".to_owned(), "USD".to_owned()), rate)]);
        let quote = feed.quote("BTC", Fiat::USD, Utc::now()).expect("quote");
        let json = quote.sources_json();
        assert_eq!(json[0]["rate"], "65000.123456789012345678");
        assert_eq!(json[0]["quote"], "USD");
        assert!(json[0].get("via").is_none());
    }
}
