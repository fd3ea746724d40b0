//! Binance: `GET /api/v3/ticker/price?symbol=BTCUSDT` → `{"symbol":"BTCUSDT","price":"97215.99000000"}`.
//!
//! Binance has no USD markets: it quotes against USDT. Its USDT markets are used for USD pairs
//! only, and every such quote is flagged `via: Some("USDT")`. The aggregator counts a flagged
//! quote only while USDT/USD itself is priced by other sources, fresh and within the depeg band;
//! inside that band the difference between USDT and USD is at most `depeg_bps`, which is the
//! approximation accepted. No other quote currency is asked of Binance.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::try_join_all;
use serde::Deserialize;
use serde_json::value::RawValue;


use super::feed::{from_json, price, FeedError, Http, PriceText};
use crate::money::Pair;
use crate::markets::binance::{market, NAME};
pub use crate::markets::binance::{BINANCE_BASE_URL, PROXY};
use super::SourceQuote;



#[derive(Debug, Clone)]
pub struct BinanceClient {
    http: Http,
}

#[derive(Deserialize)]
struct TickerPrice<'a> {
    #[serde(default)]
    symbol: Option<String>,
    #[serde(borrow, default)]
    price: Option<&'a RawValue>,
}

impl BinanceClient {
    pub fn new(client: reqwest::Client, base_url: &str, timeout: Duration) -> Self {
        BinanceClient { http: Http::new(NAME, client, base_url, timeout) }
    }

    pub fn base_url(&self) -> &str {
        self.http.base_url()
    }

    /// Whether Binance can stand in for `pair`: USD pairs of assets with a USDT market.
    pub fn supports(pair: &Pair) -> bool {
        market(pair).is_some()
    }

    /// The last price of every supported pair of `pairs`, one request each, concurrently.
    pub async fn fetch(&self, pairs: &[Pair], now: DateTime<Utc>) -> Result<Vec<SourceQuote>, FeedError> {
        try_join_all(pairs.iter().filter(|p| Self::supports(p)).map(|pair| self.fetch_pair(pair, now))).await
    }

    async fn fetch_pair(&self, pair: &Pair, now: DateTime<Utc>) -> Result<SourceQuote, FeedError> {
        let symbol =
            market(pair).ok_or_else(|| FeedError::Api { feed: NAME, message: format!("no market for {pair}") })?;
        let body = self.http.get(&format!("/api/v3/ticker/price?symbol={symbol}")).await?;
        parse_price(&body, pair, now)
    }
}

/// Reads a ticker price body for `pair`.
pub(crate) fn parse_price(body: &str, pair: &Pair, now: DateTime<Utc>) -> Result<SourceQuote, FeedError> {
    let expected = market(pair).ok_or_else(|| FeedError::Api { feed: NAME, message: format!("no market for {pair}") })?;
    let parsed: TickerPrice<'_> = from_json(NAME, body)?;
    let symbol = parsed.symbol.ok_or_else(|| FeedError::MissingField { feed: NAME, field: "symbol".to_owned() })?;
    if symbol != expected {
        return Err(FeedError::Mismatch { feed: NAME, field: "symbol".to_owned(), expected, found: symbol });
    }
    let rate = price(NAME, "price", parsed.price, PriceText::String)?;
    Ok(SourceQuote {
        source: NAME.to_owned(),
        base: pair.base.clone(),
        quote: pair.quote,
        rate,
        at: now,
        via: Some(PROXY.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BTCUSDT: &str = include_str!("../../../tests/fixtures/rates/binance/price_BTCUSDT.json");
    const USDCUSDT: &str = include_str!("../../../tests/fixtures/rates/binance/price_USDCUSDT.json");

    fn pair(text: &str) -> Pair {
        text.parse().expect("pair")
    }

    #[test]
    fn recorded_prices_parse_exactly_and_are_flagged() {
        let now = Utc::now();
        let btc = parse_price(BTCUSDT, &pair("BTC/USD"), now).expect("btc");
        assert_eq!(btc.rate.to_string(), "97215.99");
        assert_eq!(btc.via.as_deref(), Some("USDT"));
        assert_eq!((btc.source.as_str(), btc.quote), ("binance", crate::money::Fiat::USD));
        let usdc = parse_price(USDCUSDT, &pair("USDC/USD"), now).expect("usdc");
        assert_eq!(usdc.rate.to_string(), "0.9998");
    }

    #[test]
    fn wrong_symbol_missing_and_bad_prices_are_named() {
        let now = Utc::now();
        let error = |body: &str| parse_price(body, &pair("BTC/USD"), now).err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(error(USDCUSDT), "binance: field symbol is \"USDCUSDT\", expected \"BTCUSDT\"");
        assert_eq!(error(r#"{"symbol":"BTCUSDT"}"#), "binance: field price is missing");
        assert_eq!(error(r#"{"price":"1"}"#), "binance: field symbol is missing");
        assert!(error(r#"{"symbol":"BTCUSDT","price":"NaN"}"#).starts_with("binance: field price = \"NaN\" is not a valid price"));
        assert!(error(r#"{"symbol":"BTCUSDT","price":"0.00000000"}"#).contains("is zero"));
    }

    #[test]
    fn only_usd_pairs_through_usdt_markets() {
        assert!(BinanceClient::supports(&pair("BNB/USD")));
        assert!(!BinanceClient::supports(&pair("BTC/EUR")));
        assert!(!BinanceClient::supports(&pair("USDT/USD")));
        assert!(!BinanceClient::supports(&pair("DAI/USD")));
    }
}
