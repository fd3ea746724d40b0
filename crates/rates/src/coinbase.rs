//! Coinbase: `GET /v2/prices/{BASE}-{QUOTE}/spot` →
//! `{"data":{"amount":"97234.515","base":"BTC","currency":"USD"}}`.
//!
//! One request per pair (the API prices one pair at a time). The amount is a decimal string,
//! parsed exactly; the echoed `base` and `currency` must be the ones asked for. Coinbase prices
//! in every fiat currency it knows; its USDC-USD spot is its own 1:1 conversion, not a market,
//! which the median of several sources puts in its place.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::try_join_all;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::feed::{from_json, price, FeedError, Http, PriceText};
use crate::money::Pair;
use crate::markets::coinbase::{currency, NAME};
pub use crate::markets::coinbase::COINBASE_BASE_URL;
use super::SourceQuote;



#[derive(Debug, Clone)]
pub struct CoinbaseClient {
    http: Http,
}

#[derive(Deserialize)]
struct SpotBody<'a> {
    #[serde(borrow, default)]
    data: Option<SpotData<'a>>,
    #[serde(default)]
    errors: Vec<ApiMessage>,
}

#[derive(Deserialize)]
struct SpotData<'a> {
    #[serde(borrow, default)]
    amount: Option<&'a RawValue>,
    #[serde(default)]
    base: Option<String>,
    #[serde(default)]
    currency: Option<String>,
}

#[derive(Deserialize)]
struct ApiMessage {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

impl CoinbaseClient {
    pub fn new(client: reqwest::Client, base_url: &str, timeout: Duration) -> Self {
        CoinbaseClient { http: Http::new(NAME, client, base_url, timeout) }
    }

    pub fn base_url(&self) -> &str {
        self.http.base_url()
    }

    /// Whether Coinbase lists `pair`.
    pub fn supports(pair: &Pair) -> bool {
        currency(&pair.base).is_some()
    }

    /// The spot price of every supported pair of `pairs`, fetched concurrently.
    pub async fn fetch(&self, pairs: &[Pair], now: DateTime<Utc>) -> Result<Vec<SourceQuote>, FeedError> {
        try_join_all(pairs.iter().filter(|p| Self::supports(p)).map(|pair| self.fetch_pair(pair, now))).await
    }

    async fn fetch_pair(&self, pair: &Pair, now: DateTime<Utc>) -> Result<SourceQuote, FeedError> {
        let base = currency(&pair.base).ok_or_else(|| FeedError::Api {
            feed: NAME,
            message: format!("no market for {pair}"),
        })?;
        let body = self.http.get(&format!("/v2/prices/{base}-{}/spot", pair.quote.code())).await?;
        parse_spot(&body, pair, now)
    }
}

/// Reads a spot body for `pair`.
pub(crate) fn parse_spot(body: &str, pair: &Pair, now: DateTime<Utc>) -> Result<SourceQuote, FeedError> {
    let parsed: SpotBody<'_> = from_json(NAME, body)?;
    if let Some(first) = parsed.errors.first() {
        return Err(FeedError::Api {
            feed: NAME,
            message: format!(
                "{}: {}",
                first.id.as_deref().unwrap_or("error"),
                first.message.as_deref().unwrap_or("(no message)")
            ),
        });
    }
    let data = parsed.data.ok_or_else(|| FeedError::MissingField { feed: NAME, field: "data".to_owned() })?;
    let expected_base = currency(&pair.base).unwrap_or(pair.base.as_str());
    for (field, found, expected) in
        [("data.base", &data.base, expected_base), ("data.currency", &data.currency, pair.quote.code())]
    {
        let found = found.as_deref().ok_or_else(|| FeedError::MissingField { feed: NAME, field: field.to_owned() })?;
        if found != expected {
            return Err(FeedError::Mismatch {
                feed: NAME,
                field: field.to_owned(),
                expected: expected.to_owned(),
                found: found.to_owned(),
            });
        }
    }
    let rate = price(NAME, "data.amount", data.amount, PriceText::String)?;
    Ok(SourceQuote { source: NAME.to_owned(), base: pair.base.clone(), quote: pair.quote, rate, at: now, via: None })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::{Fiat, Rate};

    const BTC_USD: &str = include_str!("../../../tests/fixtures/rates/coinbase/spot_BTC-USD.json");
    const ETH_EUR: &str = include_str!("../../../tests/fixtures/rates/coinbase/spot_ETH-EUR.json");
    const USDC_USD: &str = include_str!("../../../tests/fixtures/rates/coinbase/spot_USDC-USD.json");
    const NOT_FOUND: &str = include_str!("../../../tests/fixtures/rates/coinbase/error_not_found.json");

    fn pair(text: &str) -> Pair {
        text.parse().expect("pair")
    }

    fn rate(text: &str) -> Rate {
        text.parse().expect("rate")
    }

    #[test]
    fn recorded_spot_prices_parse_exactly() {
        let now = Utc::now();
        let btc = parse_spot(BTC_USD, &pair("BTC/USD"), now).expect("btc");
        assert_eq!((btc.source.as_str(), btc.rate.clone(), btc.at, btc.via.clone()), ("coinbase", rate("97234.515"), now, None));
        assert_eq!(parse_spot(ETH_EUR, &pair("ETH/EUR"), now).map(|q| q.rate).ok(), Some(rate("3468.02")));
        let usdc = parse_spot(USDC_USD, &pair("USDC/USD"), now).expect("usdc");
        assert_eq!((usdc.base.as_str(), usdc.quote, usdc.rate), ("USDC", Fiat::USD, rate("1")));
    }

    #[test]
    fn bodies_that_do_not_fit_are_refused_with_the_field() {
        let now = Utc::now();
        let error = |body: &str| parse_spot(body, &pair("BTC/USD"), now).err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(error(NOT_FOUND), "coinbase: the api reports an error: not_found: Invalid base currency");
        assert_eq!(error(BTC_USD.replace("\"USD\"", "\"EUR\"").as_str()), "coinbase: field data.currency is \"EUR\", expected \"USD\"");
        assert_eq!(error(r#"{"data":{"base":"BTC","currency":"USD"}}"#), "coinbase: field data.amount is missing");
        assert_eq!(error(r#"{"warnings":[]}"#), "coinbase: field data is missing");
        assert!(error(r#"{"data":{"amount":97234.5,"base":"BTC","currency":"USD"}}"#).contains("must be written as a decimal string"));
        assert!(error(r#"{"data":{"amount":"-5","base":"BTC","currency":"USD"}}"#).contains("negative price"));
        assert!(error(r#"{"data":{"amount":"0.00","base":"BTC","currency":"USD"}}"#).contains("is zero"));
        assert!(error(r#"{"data":{"amount":"1e5","base":"BTC","currency":"USD"}}"#).contains("data.amount"));
        assert!(error(r#"{"data":{"amount":"97234.515","base":"BTC","#).starts_with("coinbase: malformed body"));
        let message = error(r#"{"data":[1,2]}"#);
        assert!(message.starts_with("coinbase: malformed body at data"), "{message}");
    }

    #[test]
    fn supports_its_listed_assets_under_payrail_symbols() {
        assert!(CoinbaseClient::supports(&pair("POL/USD")));
        assert!(CoinbaseClient::supports(&pair("MATIC/EUR")));
        assert!(!CoinbaseClient::supports(&pair("BNB/USD")));
    }
}
