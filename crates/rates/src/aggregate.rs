//! Aggregation: from every source's latest quote of a pair to one rate, or a refusal.
//!
//! [`aggregate`] is pure: the quotes in, the policy and the time; a [`Quote`] or a
//! [`RateError`] out. [`AggregatedRates`] keeps the latest quote of each source per pair (what a
//! refresh wrote) and answers [`RateSource::quote`] from it without any I/O.
//!
//! Invariants:
//! - A quote is built only from fresh sources (at most `max_age` old, either way in time), at
//!   least `quorum` of them after outliers are dropped; otherwise the pair is refused.
//! - A USD stablecoin outside 1 ± `depeg_bps` is refused, never priced at 1.
//! - While too few sources are fresh (every feed down), a USD stablecoin is priced from quotes up to
//!   `stable_max_age` old, under the same quorum, outlier and depeg rules: its band pins its price
//!   where a volatile asset's last price says little. Volatile assets are refused.
//! - A source quoting through a stand-in currency (`via`, Binance's USDT) counts only while that
//!   currency's own rate in the pair's quote currency, from the other sources, is fresh, meets
//!   the quorum and is within the depeg band.
//! - A refresh replaces a source's whole set of quotes: a pair a source no longer quotes ages
//!   out of the cache with it.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};

use crate::clock::Clock;
use crate::config::{RateFeed, RatesConfig};
use crate::money::{Fiat, Rate};

use super::decimal::{deviates_bps, midpoint, one};
use super::feed::{http_client, Feed};
use super::file::FileFeed;
use crate::money::Pair;
use super::refresh::Refresher;
use super::{Quote, RateError, RateSource, SourceQuote};

/// Stablecoins held to 1 USD by the depeg guard.
pub const STABLECOINS_USD: [&str; 3] = ["USDC", "USDT", "DAI"];

/// How fresh, how many and how close the sources of a rate must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregationPolicy {
    /// Oldest quote still counted.
    pub max_age: Duration,
    /// Fewest fresh, agreeing sources a rate is built from (at least 1).
    pub quorum: usize,
    /// Sources further than this from the median (in basis points of it) are dropped.
    pub outlier_bps: u32,
    /// A USD stablecoin further than this from 1 is refused.
    pub depeg_bps: u32,
    /// Oldest quote still counted for a USD stablecoin while too few are fresh (`max_age` or less:
    /// no grace).
    pub stable_max_age: Duration,
}

fn is_usd_stablecoin(pair: &Pair) -> bool {
    pair.quote == Fiat::USD && STABLECOINS_USD.contains(&pair.base.as_str())
}

fn is_fresh(quote: &SourceQuote, max_age: Duration, now: DateTime<Utc>) -> bool {
    let age = now.signed_duration_since(quote.at);
    age <= max_age && -age <= max_age
}

/// The median of a non-empty, sorted list: the middle rate, or the exact mean of the two middle
/// rates (the lower one if that mean needs more than 36 fractional digits).
fn median(sorted: &[&Rate]) -> Option<Rate> {
    let middle = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        return sorted.get(middle).map(|r| (*r).clone());
    }
    let (low, high) = (sorted.get(middle.checked_sub(1)?)?, sorted.get(middle)?);
    Some(midpoint(low, high).unwrap_or_else(|| (*low).clone()))
}

fn median_of(quotes: &[&SourceQuote]) -> Option<Rate> {
    let mut rates: Vec<&Rate> = quotes.iter().map(|q| &q.rate).collect();
    rates.sort();
    median(&rates)
}

fn describe(quotes: &[&SourceQuote], now: DateTime<Utc>) -> String {
    if quotes.is_empty() {
        return "no source has quoted it".to_owned();
    }
    quotes
        .iter()
        .map(|q| format!("{}={} {}s old", q.source, q.rate, now.signed_duration_since(q.at).num_seconds()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Prices `pair` from `candidates` (each source's latest quote of it). Quotes through a
/// stand-in currency (`via`) are not counted: see [`AggregatedRates`] for when they are.
pub fn aggregate(pair: &Pair, candidates: &[SourceQuote], policy: &AggregationPolicy, now: DateTime<Utc>) -> Result<Quote, RateError> {
    aggregate_with(pair, candidates, policy, now, &|_| false)
}

fn aggregate_with(
    pair: &Pair,
    candidates: &[SourceQuote],
    policy: &AggregationPolicy,
    now: DateTime<Utc>,
    proxy_pegged: &dyn Fn(&str) -> bool,
) -> Result<Quote, RateError> {
    let base = || pair.base.clone();
    let quote = || pair.quote.code().to_owned();
    let mine: Vec<&SourceQuote> =
        candidates.iter().filter(|q| q.base == pair.base && q.quote == pair.quote).collect();
    if mine.is_empty() {
        return Err(RateError::Unavailable { base: base(), quote: quote() });
    }
    let quorum = policy.quorum.max(1);
    let within = |max_age: Duration| -> Vec<&SourceQuote> {
        mine.iter().copied().filter(|q| is_fresh(q, max_age, now)).filter(|q| q.via.as_deref().is_none_or(proxy_pegged)).collect()
    };
    let mut fresh = within(policy.max_age);
    if fresh.len() < quorum && is_usd_stablecoin(pair) && policy.stable_max_age > policy.max_age {
        let recent = within(policy.stable_max_age);
        if recent.len() >= quorum {
            fresh = recent;
        }
    }
    if fresh.len() < quorum {
        let stale: Vec<&SourceQuote> = mine.iter().copied().filter(|q| !fresh.contains(q)).collect();
        let detail = format!(
            "fresh: {}; not counted: {}",
            if fresh.is_empty() { "none".to_owned() } else { describe(&fresh, now) },
            if stale.is_empty() { "none".to_owned() } else { describe(&stale, now) },
        );
        return Err(RateError::TooFewSources { base: base(), quote: quote(), fresh: fresh.len(), quorum, detail });
    }
    let first = median_of(&fresh).ok_or_else(|| RateError::Unavailable { base: base(), quote: quote() })?;
    let mut kept: Vec<&SourceQuote> =
        fresh.iter().copied().filter(|q| !deviates_bps(&q.rate, &first, policy.outlier_bps)).collect();
    if kept.len() < quorum {
        return Err(RateError::SourcesDisagree {
            base: base(),
            quote: quote(),
            kept: kept.len(),
            quorum,
            outlier_bps: policy.outlier_bps,
            detail: format!("median {first}; {}", describe(&fresh, now)),
        });
    }
    let rate = median_of(&kept).ok_or_else(|| RateError::Unavailable { base: base(), quote: quote() })?;
    if is_usd_stablecoin(pair) && deviates_bps(&rate, &one(), policy.depeg_bps) {
        return Err(RateError::Depegged { base: base(), quote: quote(), rate, depeg_bps: policy.depeg_bps });
    }
    kept.sort_by(|a, b| a.source.cmp(&b.source));
    let names: Vec<&str> = kept.iter().map(|q| q.source.as_str()).collect();
    let at = kept.iter().map(|q| q.at).min().unwrap_or(now);
    Ok(Quote {
        rate,
        source: format!("median:{}", names.join(",")),
        at,
        sources: kept.into_iter().cloned().collect(),
    })
}

/// Every source's latest quote, per pair, per source name.
type Cache = BTreeMap<Pair, BTreeMap<String, SourceQuote>>;

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) policy: AggregationPolicy,
    pub(crate) feeds: Vec<Feed>,
    pub(crate) pairs: Vec<Pair>,
    pub(crate) refresh_interval: StdDuration,
    pub(crate) clock: Arc<dyn Clock>,
    cache: RwLock<Cache>,
}

/// Rates aggregated from several feeds, answered from a cache a [`Refresher`] keeps filled.
/// Cloning shares the cache.
#[derive(Debug, Clone)]
pub struct AggregatedRates {
    pub(crate) shared: Arc<Shared>,
}

impl AggregatedRates {
    /// Rates over `feeds`, asking them for `pairs` every `refresh_interval`; `clock` stamps what
    /// they return. The cache starts empty.
    pub fn new(
        policy: AggregationPolicy,
        feeds: Vec<Feed>,
        pairs: Vec<Pair>,
        refresh_interval: StdDuration,
        clock: Arc<dyn Clock>,
    ) -> Self {
        AggregatedRates {
            shared: Arc::new(Shared { policy, feeds, pairs, refresh_interval, clock, cache: RwLock::new(Cache::new()) }),
        }
    }

    /// The `live` or `file` feed of the configuration. The file is read once here, so its rates
    /// are there from the start; the live feeds fill the cache at their first refresh. A
    /// configuration with neither (which its checks refuse) gives rates that refuse every pair.
    pub fn from_config(config: &RatesConfig, clock: Arc<dyn Clock>) -> Self {
        let ms = |value: u64| Duration::milliseconds(i64::try_from(value).unwrap_or(i64::MAX));
        match (config.feed, config.live(), config.file()) {
            (RateFeed::Live, Some(live), _) => {
                let policy = AggregationPolicy {
                    max_age: ms(live.max_age_ms),
                    quorum: usize::try_from(live.quorum).unwrap_or(usize::MAX),
                    outlier_bps: live.outlier_bps,
                    depeg_bps: live.depeg_bps,
                    stable_max_age: ms(live.stable_max_age_ms),
                };
                let feeds = match http_client() {
                    Ok(client) => live
                        .sources
                        .iter()
                        .map(|source| {
                            Feed::live(
                                *source,
                                client.clone(),
                                live.base_url(*source),
                                StdDuration::from_millis(live.timeout_ms),
                            )
                        })
                        .collect(),
                    Err(error) => {
                        tracing::error!(target: "rates", %error, "no rate feed can run; every pair is refused");
                        Vec::new()
                    }
                };
                Self::new(policy, feeds, live.pairs.clone(), StdDuration::from_millis(live.refresh_interval_ms), clock)
            }
            (RateFeed::File, _, Some(file)) => {
                let policy = AggregationPolicy {
                    max_age: ms(file.max_age_ms),
                    quorum: 1,
                    outlier_bps: crate::money::BPS_WHOLE,
                    depeg_bps: file.depeg_bps,
                    stable_max_age: ms(file.stable_max_age_ms),
                };
                let feed = FileFeed::new(&file.path);
                let rates = Self::new(
                    policy,
                    vec![Feed::File(feed.clone())],
                    Vec::new(),
                    StdDuration::from_millis(file.refresh_interval_ms),
                    clock.clone(),
                );
                match feed.read(clock.now()) {
                    Ok(quotes) => rates.record(super::file::NAME, quotes),
                    Err(error) => tracing::warn!(target: "rates", %error, "rates file not read; retrying at each refresh"),
                }
                rates
            }
            _ => {
                tracing::error!(target: "rates", feed = ?config.feed, "no live or file feed configured; every pair is refused");
                let policy = AggregationPolicy { max_age: Duration::zero(), quorum: 1, outlier_bps: 0, depeg_bps: 0, stable_max_age: Duration::zero() };
                Self::new(policy, Vec::new(), Vec::new(), StdDuration::from_secs(60), clock)
            }
        }
    }

    pub fn policy(&self) -> &AggregationPolicy {
        &self.shared.policy
    }

    /// The pairs asked of the feeds.
    pub fn pairs(&self) -> &[Pair] {
        &self.shared.pairs
    }

    pub fn feeds(&self) -> &[Feed] {
        &self.shared.feeds
    }

    /// Replaces everything `source` said before by `quotes` (what its latest fetch returned).
    pub fn record(&self, source: &str, quotes: Vec<SourceQuote>) {
        let mut cache = self.shared.cache.write().unwrap_or_else(PoisonError::into_inner);
        for by_source in cache.values_mut() {
            by_source.remove(source);
        }
        cache.retain(|_, by_source| !by_source.is_empty());
        for quote in quotes {
            let pair = Pair { base: quote.base.clone(), quote: quote.quote };
            cache.entry(pair).or_default().insert(source.to_owned(), quote);
        }
    }

    /// Every cached source quote, by pair and source name.
    pub fn snapshot(&self) -> Vec<SourceQuote> {
        let cache = self.shared.cache.read().unwrap_or_else(PoisonError::into_inner);
        cache.values().flat_map(|by_source| by_source.values().cloned()).collect()
    }

    fn candidates(&self, pair: &Pair) -> Vec<SourceQuote> {
        let cache = self.shared.cache.read().unwrap_or_else(PoisonError::into_inner);
        cache.get(pair).map(|by_source| by_source.values().cloned().collect()).unwrap_or_default()
    }
}

impl RateSource for AggregatedRates {
    fn quote(&self, base_symbol: &str, quote: Fiat, now: DateTime<Utc>) -> Result<Quote, RateError> {
        let pair = Pair { base: base_symbol.to_owned(), quote };
        let candidates = self.candidates(&pair);
        let policy = &self.shared.policy;
        let proxy_pegged = |via: &str| {
            let proxy = Pair { base: via.to_owned(), quote };
            let direct: Vec<SourceQuote> = self.candidates(&proxy).into_iter().filter(|q| q.via.is_none()).collect();
            aggregate(&proxy, &direct, policy, now).is_ok()
        };
        aggregate_with(&pair, &candidates, policy, now, &proxy_pegged)
    }

    fn refresher(&self) -> Option<Refresher> {
        Some(Refresher::new(self.clone()))
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::clock::ManualClock;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).single().expect("time")
    }

    fn policy() -> AggregationPolicy {
        AggregationPolicy { max_age: Duration::seconds(120), quorum: 2, outlier_bps: 200, depeg_bps: 100, stable_max_age: Duration::seconds(120) }
    }

    fn sq(source: &str, pair: &str, rate: &str, at: DateTime<Utc>) -> SourceQuote {
        let pair: Pair = pair.parse().expect("pair");
        SourceQuote {
            source: source.to_owned(),
            base: pair.base,
            quote: pair.quote,
            rate: rate.parse().expect("rate"),
            at,
            via: None,
        }
    }

    fn via_usdt(mut quote: SourceQuote) -> SourceQuote {
        quote.via = Some("USDT".to_owned());
        quote
    }

    fn btc() -> Pair {
        "BTC/USD".parse().expect("pair")
    }

    fn rate(text: &str) -> Rate {
        text.parse().expect("rate")
    }

    #[test]
    fn median_of_three_names_its_sources() {
        let quotes = [
            sq("kraken", "BTC/USD", "97250.1", t0()),
            sq("coinbase", "BTC/USD", "97234.515", t0() - Duration::seconds(30)),
            sq("coingecko", "BTC/USD", "97231.12", t0()),
        ];
        let quote = aggregate(&btc(), &quotes, &policy(), t0()).expect("quote");
        assert_eq!(quote.rate, rate("97234.515"));
        assert_eq!(quote.source, "median:coinbase,coingecko,kraken");
        assert_eq!(quote.at, t0() - Duration::seconds(30), "as old as its oldest input");
        let used: Vec<(&str, String)> = quote.sources.iter().map(|q| (q.source.as_str(), q.rate.to_string())).collect();
        assert_eq!(used, [("coinbase", "97234.515".to_owned()), ("coingecko", "97231.12".to_owned()), ("kraken", "97250.1".to_owned())]);
    }

    #[test]
    fn median_of_an_even_count_is_the_exact_mean_of_the_middle_two() {
        let quotes = [
            sq("a", "BTC/USD", "100", t0()),
            sq("b", "BTC/USD", "100.01", t0()),
            sq("c", "BTC/USD", "100.02", t0()),
            sq("d", "BTC/USD", "100.05", t0()),
        ];
        assert_eq!(aggregate(&btc(), &quotes, &policy(), t0()).map(|q| q.rate), Ok(rate("100.015")));
    }

    #[test]
    fn too_few_fresh_sources_fail_the_quorum() {
        let quotes = [sq("coinbase", "BTC/USD", "97234.5", t0())];
        let error = aggregate(&btc(), &quotes, &policy(), t0()).err();
        assert!(matches!(error, Some(RateError::TooFewSources { fresh: 1, quorum: 2, .. })), "{error:?}");
        let message = error.map(|e| e.to_string()).unwrap_or_default();
        assert!(message.starts_with("no rate for BTC/USD: 1 fresh source(s), the quorum is 2"), "{message}");
        assert!(message.contains("coinbase=97234.5"), "{message}");
        assert_eq!(aggregate(&btc(), &[], &policy(), t0()), Err(RateError::Unavailable { base: "BTC".to_owned(), quote: "USD".to_owned() }));
    }

    #[test]
    fn a_stale_source_is_ignored_and_stale_rates_expire() {
        let quotes = [
            sq("coinbase", "BTC/USD", "97234.5", t0()),
            sq("kraken", "BTC/USD", "97250", t0()),
            sq("coingecko", "BTC/USD", "90000", t0() - Duration::seconds(121)),
        ];
        let quote = aggregate(&btc(), &quotes, &policy(), t0()).expect("quote");
        assert_eq!(quote.source, "median:coinbase,kraken");
        assert_eq!(quote.rate, rate("97242.25"));
        // Exactly max_age old still counts; a moment later nothing is fresh.
        assert!(aggregate(&btc(), &quotes, &policy(), t0() + Duration::seconds(120)).is_ok());
        let later = aggregate(&btc(), &quotes, &policy(), t0() + Duration::seconds(121)).err();
        assert!(matches!(later, Some(RateError::TooFewSources { fresh: 0, .. })), "{later:?}");
    }

    #[test]
    fn an_outlier_is_dropped_and_the_median_retaken() {
        let quotes = [
            sq("coinbase", "BTC/USD", "97234", t0()),
            sq("kraken", "BTC/USD", "97250", t0()),
            sq("binance", "BTC/USD", "97240", t0()),
            sq("coingecko", "BTC/USD", "120000", t0()),
        ];
        let quote = aggregate(&btc(), &quotes, &policy(), t0()).expect("quote");
        assert_eq!(quote.source, "median:binance,coinbase,kraken");
        assert_eq!(quote.rate, rate("97240"));
        assert!(quote.sources.iter().all(|q| q.source != "coingecko"));
    }

    #[test]
    fn two_sources_that_disagree_price_nothing() {
        let quotes = [sq("coinbase", "BTC/USD", "97000", t0()), sq("kraken", "BTC/USD", "110000", t0())];
        let error = aggregate(&btc(), &quotes, &policy(), t0()).err();
        assert!(matches!(error, Some(RateError::SourcesDisagree { kept: 0, quorum: 2, outlier_bps: 200, .. })), "{error:?}");
    }

    #[test]
    fn a_depegged_stablecoin_is_refused_never_priced_at_one() {
        let usdc: Pair = "USDC/USD".parse().expect("pair");
        let pegged = [sq("coinbase", "USDC/USD", "1", t0()), sq("kraken", "USDC/USD", "0.9995", t0())];
        assert_eq!(aggregate(&usdc, &pegged, &policy(), t0()).map(|q| q.rate), Ok(rate("0.99975")));
        let depegged = [sq("coinbase", "USDC/USD", "0.987", t0()), sq("kraken", "USDC/USD", "0.9862", t0())];
        let error = aggregate(&usdc, &depegged, &policy(), t0()).err();
        assert_eq!(
            error,
            Some(RateError::Depegged { base: "USDC".to_owned(), quote: "USD".to_owned(), rate: rate("0.9866"), depeg_bps: 100 })
        );
        assert!(error.map(|e| e.to_string()).unwrap_or_default().contains("outside 1 ± 100 bps"));
        // Priced in EUR, a USD stablecoin is not held to 1.
        let eur: Pair = "USDC/EUR".parse().expect("pair");
        let in_eur = [sq("coinbase", "USDC/EUR", "0.957", t0()), sq("kraken", "USDC/EUR", "0.9575", t0())];
        assert!(aggregate(&eur, &in_eur, &policy(), t0()).is_ok());
    }

    /// Every source down for ten minutes: a stablecoin whose last quotes were sound is still priced
    /// from them (within its grace, by the quorum and the band), a volatile asset is not.
    #[test]
    fn with_every_source_down_a_sound_stablecoin_is_priced_from_its_last_quotes_within_its_grace() {
        let grace = AggregationPolicy { stable_max_age: Duration::hours(6), ..policy() };
        let then = t0() - Duration::minutes(10);
        let usdc: Pair = "USDC/USD".parse().expect("pair");
        let sound = [sq("coinbase", "USDC/USD", "1", then), sq("kraken", "USDC/USD", "0.9998", then)];
        let priced = aggregate(&usdc, &sound, &grace, t0()).expect("priced within the grace");
        assert_eq!(priced.rate, rate("0.9999"));
        assert_eq!(priced.at, then);
        // Without a grace (or past it) the same quotes are refused as stale.
        assert!(matches!(aggregate(&usdc, &sound, &policy(), t0()), Err(RateError::TooFewSources { .. })));
        let later = t0() + Duration::hours(6);
        assert!(matches!(aggregate(&usdc, &sound, &grace, later), Err(RateError::TooFewSources { .. })));
        // The quorum and the band still hold: one source is too few, a depeg is refused.
        assert!(matches!(aggregate(&usdc, &sound[..1], &grace, t0()), Err(RateError::TooFewSources { .. })));
        let depegged = [sq("coinbase", "USDC/USD", "0.97", then), sq("kraken", "USDC/USD", "0.971", then)];
        assert!(matches!(aggregate(&usdc, &depegged, &grace, t0()), Err(RateError::Depegged { .. })));
        // A volatile asset's ten-minute-old price is not used.
        let stale_btc = [sq("coinbase", "BTC/USD", "65000", then), sq("kraken", "BTC/USD", "65010", then)];
        assert!(matches!(aggregate(&btc(), &stale_btc, &grace, t0()), Err(RateError::TooFewSources { .. })));
    }

    #[test]
    fn a_quote_from_the_future_counts_only_within_max_age() {
        let quotes = [sq("a", "BTC/USD", "1", t0() + Duration::seconds(5)), sq("b", "BTC/USD", "1", t0() + Duration::hours(1))];
        let one_source = AggregationPolicy { quorum: 1, ..policy() };
        assert_eq!(aggregate(&btc(), &quotes, &one_source, t0()).map(|q| q.source), Ok("median:a".to_owned()));
    }

    fn rates(clock: Arc<ManualClock>) -> AggregatedRates {
        AggregatedRates::new(policy(), Vec::new(), vec![btc()], StdDuration::from_secs(30), clock)
    }

    #[test]
    fn the_cache_answers_per_pair_and_one_dead_source_leaves_the_others() {
        let clock = Arc::new(ManualClock::new(t0()));
        let rates = rates(clock.clone());
        rates.record("coinbase", vec![sq("coinbase", "BTC/USD", "97234", t0()), sq("coinbase", "USDC/USD", "1", t0())]);
        rates.record("kraken", vec![sq("kraken", "BTC/USD", "97250", t0()), sq("kraken", "USDC/USD", "0.9999", t0())]);
        rates.record("coingecko", vec![sq("coingecko", "BTC/USD", "97240", t0()), sq("coingecko", "USDC/USD", "0.9998", t0())]);
        assert_eq!(rates.quote("BTC", Fiat::USD, t0()).map(|q| q.rate), Ok(rate("97240")));
        // Kraken stops answering; time passes; the others refresh and still quote.
        clock.advance(Duration::seconds(150));
        let now = clock.now();
        rates.record("coinbase", vec![sq("coinbase", "BTC/USD", "97300", now), sq("coinbase", "USDC/USD", "1", now)]);
        rates.record("coingecko", vec![sq("coingecko", "BTC/USD", "97310", now), sq("coingecko", "USDC/USD", "0.9998", now)]);
        let quote = rates.quote("BTC", Fiat::USD, now).expect("quote");
        assert_eq!((quote.rate, quote.source.as_str()), (rate("97305"), "median:coinbase,coingecko"));
        assert!(matches!(rates.quote("ETH", Fiat::USD, now), Err(RateError::Unavailable { .. })));
        // A source's refresh replaces all it said: a pair it no longer quotes is gone.
        rates.record("coinbase", vec![sq("coinbase", "USDC/USD", "1", now)]);
        assert!(matches!(rates.quote("BTC", Fiat::USD, now), Err(RateError::TooFewSources { fresh: 1, .. })));
        assert!(rates.quote("USDC", Fiat::USD, now).is_ok());
        assert_eq!(rates.snapshot().len(), 2 + 3, "BTC: kraken (stale), coingecko; USDC: all three");
    }

    #[test]
    fn usdt_proxied_quotes_count_only_while_usdt_holds_its_peg() {
        let clock = Arc::new(ManualClock::new(t0()));
        let rates = rates(clock);
        let bnb = |source: &str, value: &str| via_usdt(sq(source, "BNB/USD", value, t0()));
        rates.record("binance", vec![bnb("binance", "689.12")]);
        rates.record("coingecko", vec![sq("coingecko", "BNB/USD", "689.31", t0())]);
        // No USDT/USD rate at all: Binance's USDT price is not taken for USD.
        let error = rates.quote("BNB", Fiat::USD, t0()).err();
        assert!(matches!(error, Some(RateError::TooFewSources { fresh: 1, .. })), "{error:?}");
        // USDT/USD pegged, from two direct sources: Binance counts.
        rates.record("coinbase", vec![sq("coinbase", "USDT/USD", "1.0002", t0())]);
        rates.record("kraken", vec![sq("kraken", "USDT/USD", "1.00012", t0())]);
        let quote = rates.quote("BNB", Fiat::USD, t0()).expect("quote");
        assert_eq!((quote.rate, quote.source.as_str()), (rate("689.215"), "median:binance,coingecko"));
        assert_eq!(quote.sources[0].via.as_deref(), Some("USDT"));
        // USDT depegs: Binance stops counting.
        rates.record("coinbase", vec![sq("coinbase", "USDT/USD", "0.97", t0())]);
        rates.record("kraken", vec![sq("kraken", "USDT/USD", "0.971", t0())]);
        assert!(matches!(rates.quote("USDT", Fiat::USD, t0()), Err(RateError::Depegged { .. })));
        assert!(matches!(rates.quote("BNB", Fiat::USD, t0()), Err(RateError::TooFewSources { fresh: 1, .. })));
    }
}
