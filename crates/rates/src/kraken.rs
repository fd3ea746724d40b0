//! Kraken: `GET /0/public/Ticker?pair=XBTUSD,ETHUSD` →
//! `{"error":[],"result":{"XXBTZUSD":{"c":["97250.10000","0.00051420"],…},…}}`.
//!
//! One request for every pair. The price is `c[0]`, the last trade, a decimal string. Kraken
//! names Bitcoin XBT, and answers under its canonical pair names, which for its oldest assets
//! and currencies carry X/Z prefixes (`XBTUSD` → `XXBTZUSD`, `ETHEUR` → `XETHZEUR`,
//! `USDTUSD` → `USDTZUSD`) and for newer ones do not (`POLUSD`, `USDCEUR`, `DAIUSD`); the
//! client accepts either spelling. MATIC became POL in 2024. An `error` array that is not
//! empty fails the whole fetch (Kraken answers HTTP 200 with `EQuery:Unknown asset pair`), so
//! only pairs Kraken lists are ever asked for: its listed assets in USD and EUR.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;


use super::feed::{from_json, price, FeedError, Http, PriceText};
use crate::money::Pair;
use crate::markets::kraken::{market, NAME};
pub use crate::markets::kraken::KRAKEN_BASE_URL;
use super::SourceQuote;



#[derive(Debug, Clone)]
pub struct KrakenClient {
    http: Http,
}

#[derive(Deserialize)]
struct TickerBody<'a> {
    #[serde(default)]
    error: Vec<String>,
    #[serde(borrow, default)]
    result: Option<BTreeMap<String, Ticker<'a>>>,
}

#[derive(Deserialize)]
struct Ticker<'a> {
    /// Last trade closed: [price, lot volume].
    #[serde(borrow, default)]
    c: Option<Vec<&'a RawValue>>,
}

impl KrakenClient {
    pub fn new(client: reqwest::Client, base_url: &str, timeout: Duration) -> Self {
        KrakenClient { http: Http::new(NAME, client, base_url, timeout) }
    }

    pub fn base_url(&self) -> &str {
        self.http.base_url()
    }

    /// Whether Kraken lists `pair`.
    pub fn supports(pair: &Pair) -> bool {
        market(pair).is_some()
    }

    /// The last trade price of every supported pair of `pairs`, in one request.
    pub async fn fetch(&self, pairs: &[Pair], now: DateTime<Utc>) -> Result<Vec<SourceQuote>, FeedError> {
        let wanted: Vec<&Pair> = pairs.iter().filter(|p| Self::supports(p)).collect();
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<String> = wanted.iter().filter_map(|p| market(p)).map(|(request, _)| request).collect();
        let body = self.http.get(&format!("/0/public/Ticker?pair={}", names.join(","))).await?;
        parse_ticker(&body, &wanted, now)
    }
}

/// Reads a ticker body for `pairs`; every one of them must be in it.
pub(crate) fn parse_ticker(body: &str, pairs: &[&Pair], now: DateTime<Utc>) -> Result<Vec<SourceQuote>, FeedError> {
    let parsed: TickerBody<'_> = from_json(NAME, body)?;
    if !parsed.error.is_empty() {
        return Err(FeedError::Api { feed: NAME, message: parsed.error.join("; ") });
    }
    let result = parsed.result.ok_or_else(|| FeedError::MissingField { feed: NAME, field: "result".to_owned() })?;
    let mut quotes = Vec::with_capacity(pairs.len());
    for pair in pairs {
        let (request, names) =
            market(pair).ok_or_else(|| FeedError::Api { feed: NAME, message: format!("no market for {pair}") })?;
        let (name, ticker) = names
            .iter()
            .find_map(|name| result.get(name).map(|ticker| (name, ticker)))
            .ok_or_else(|| FeedError::MissingField { feed: NAME, field: format!("result.{request}") })?;
        let last = ticker.c.as_ref().ok_or_else(|| FeedError::MissingField { feed: NAME, field: format!("result.{name}.c") })?;
        let rate = price(NAME, &format!("result.{name}.c[0]"), last.first().copied(), PriceText::String)?;
        quotes.push(SourceQuote { source: NAME.to_owned(), base: pair.base.clone(), quote: pair.quote, rate, at: now, via: None });
    }
    Ok(quotes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::Rate;

    const TICKER: &str = include_str!("../../../tests/fixtures/rates/kraken/ticker.json");
    const UNKNOWN_PAIR: &str = include_str!("../../../tests/fixtures/rates/kraken/error_unknown_pair.json");

    fn pairs(list: &[&str]) -> Vec<Pair> {
        list.iter().map(|p| p.parse().expect("pair")).collect()
    }

    fn rate(text: &str) -> Rate {
        text.parse().expect("rate")
    }

    #[test]
    fn recorded_ticker_parses_exactly_under_canonical_names() {
        let wanted = pairs(&["BTC/USD", "ETH/USD", "POL/USD", "USDC/USD", "USDT/USD", "DAI/USD", "BTC/EUR"]);
        let refs: Vec<&Pair> = wanted.iter().collect();
        let now = Utc::now();
        let quotes = parse_ticker(TICKER, &refs, now).expect("ticker");
        let got: Vec<(String, String)> = quotes.iter().map(|q| (format!("{}/{}", q.base, q.quote), q.rate.to_string())).collect();
        let expected = [
            ("BTC/USD", "97250.1"),
            ("ETH/USD", "3621.45"),
            ("POL/USD", "0.2391"),
            ("USDC/USD", "0.99985"),
            ("USDT/USD", "1.00012"),
            ("DAI/USD", "0.99981"),
            ("BTC/EUR", "93118.7"),
        ];
        assert_eq!(got, expected.map(|(p, r)| (p.to_owned(), r.to_owned())).to_vec());
        assert!(quotes.iter().all(|q| q.source == "kraken" && q.at == now && q.via.is_none()));
        assert_eq!(quotes[0].rate, rate("97250.10000"));
    }

    #[test]
    fn api_errors_and_missing_fields_are_named() {
        let wanted = pairs(&["BTC/USD"]);
        let refs: Vec<&Pair> = wanted.iter().collect();
        let now = Utc::now();
        let error = |body: &str| parse_ticker(body, &refs, now).err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(error(UNKNOWN_PAIR), "kraken: the api reports an error: EQuery:Unknown asset pair");
        assert_eq!(error(r#"{"error":[]}"#), "kraken: field result is missing");
        assert_eq!(error(r#"{"error":[],"result":{}}"#), "kraken: field result.XBTUSD is missing");
        assert_eq!(error(r#"{"error":[],"result":{"XXBTZUSD":{"a":["1","1","1.000"]}}}"#), "kraken: field result.XXBTZUSD.c is missing");
        assert_eq!(error(r#"{"error":[],"result":{"XXBTZUSD":{"c":[]}}}"#), "kraken: field result.XXBTZUSD.c[0] is missing");
        assert!(error(r#"{"error":[],"result":{"XXBTZUSD":{"c":["abc","1"]}}}"#).starts_with("kraken: field result.XXBTZUSD.c[0] = \"abc\" is not a valid price"));
        assert!(error(r#"{"error":[],"result":{"XXBTZUSD":{"c":["0.00000","1"]}}}"#).contains("is zero"));
    }

    #[test]
    fn asks_only_for_listed_pairs() {
        assert!(KrakenClient::supports(&"BTC/USD".parse().expect("pair")));
        assert!(KrakenClient::supports(&"MATIC/EUR".parse().expect("pair")));
        assert!(!KrakenClient::supports(&"BNB/USD".parse().expect("pair")));
        assert!(!KrakenClient::supports(&"BTC/JPY".parse().expect("pair")));
        assert_eq!(market(&"BTC/USD".parse().expect("pair")).map(|m| m.0), Some("XBTUSD".to_owned()));
    }
}
