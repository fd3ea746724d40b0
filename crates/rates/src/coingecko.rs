//! CoinGecko: `GET /api/v3/simple/price?ids=bitcoin,ethereum&vs_currencies=usd,eur&include_last_updated_at=true&precision=full`
//! → `{"bitcoin":{"usd":97231.12,"eur":93112.42,"last_updated_at":1767268788},…}`.
//!
//! One request for every pair. Prices are JSON numbers, read from their literal text (never
//! through a float), exponent notation included. `last_updated_at` (unix seconds) dates the
//! price when it is older than the fetch: CoinGecko serves cached prices. Coins are named by
//! CoinGecko id (POL is `polygon-ecosystem-token`, formerly MATIC's `matic-network`).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;


use super::feed::{from_json, price, FeedError, Http, PriceText};
use crate::money::Pair;
use crate::markets::coingecko::{coin_id, vs_currency, NAME};
pub use crate::markets::coingecko::COINGECKO_BASE_URL;
use super::SourceQuote;



#[derive(Debug, Clone)]
pub struct CoinGeckoClient {
    http: Http,
}

impl CoinGeckoClient {
    pub fn new(client: reqwest::Client, base_url: &str, timeout: Duration) -> Self {
        CoinGeckoClient { http: Http::new(NAME, client, base_url, timeout) }
    }

    pub fn base_url(&self) -> &str {
        self.http.base_url()
    }

    /// Whether CoinGecko prices `pair`.
    pub fn supports(pair: &Pair) -> bool {
        coin_id(&pair.base).is_some() && vs_currency(pair.quote).is_some()
    }

    /// The price of every supported pair of `pairs`, in one request.
    pub async fn fetch(&self, pairs: &[Pair], now: DateTime<Utc>) -> Result<Vec<SourceQuote>, FeedError> {
        let wanted: Vec<&Pair> = pairs.iter().filter(|p| Self::supports(p)).collect();
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let mut ids: Vec<&str> = wanted.iter().filter_map(|p| coin_id(&p.base)).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut currencies: Vec<String> = wanted.iter().filter_map(|p| vs_currency(p.quote)).collect();
        currencies.sort_unstable();
        currencies.dedup();
        let body = self
            .http
            .get(&format!(
                "/api/v3/simple/price?ids={}&vs_currencies={}&include_last_updated_at=true&precision=full",
                ids.join(","),
                currencies.join(",")
            ))
            .await?;
        parse_simple_price(&body, &wanted, now)
    }
}

/// Reads a `simple/price` body for `pairs`; every one of them must be in it.
pub(crate) fn parse_simple_price(body: &str, pairs: &[&Pair], now: DateTime<Utc>) -> Result<Vec<SourceQuote>, FeedError> {
    let coins: BTreeMap<String, BTreeMap<String, &RawValue>> = from_json(NAME, body)?;
    // An error in a 200 answer: `{"status":{"error_code":429,"error_message":"…"}}`.
    if let Some(message) = coins.get("status").and_then(|status| status.get("error_message")) {
        let text: String = serde_json::from_str(message.get()).unwrap_or_else(|_| message.get().to_owned());
        let code = coins.get("status").and_then(|status| status.get("error_code")).map_or("error", |code| code.get());
        return Err(FeedError::Api { feed: NAME, message: format!("{code}: {text}") });
    }
    let mut quotes = Vec::with_capacity(pairs.len());
    for pair in pairs {
        let (Some(id), Some(vs)) = (coin_id(&pair.base), vs_currency(pair.quote)) else {
            return Err(FeedError::Api { feed: NAME, message: format!("no market for {pair}") });
        };
        let coin = coins.get(id).ok_or_else(|| FeedError::MissingField { feed: NAME, field: id.to_owned() })?;
        let rate = price(NAME, &format!("{id}.{vs}"), coin.get(vs.as_str()).copied(), PriceText::Number)?;
        let at = match coin.get("last_updated_at") {
            Some(raw) => {
                let seconds: i64 = serde_json::from_str(raw.get()).map_err(|_| FeedError::Malformed {
                    feed: NAME,
                    field: format!("{id}.last_updated_at"),
                    message: format!("{} is not unix seconds", raw.get()),
                })?;
                let updated = DateTime::from_timestamp(seconds, 0).ok_or_else(|| FeedError::Malformed {
                    feed: NAME,
                    field: format!("{id}.last_updated_at"),
                    message: format!("{seconds} is out of range"),
                })?;
                updated.min(now)
            }
            None => now,
        };
        quotes.push(SourceQuote { source: NAME.to_owned(), base: pair.base.clone(), quote: pair.quote, rate, at, via: None });
    }
    Ok(quotes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const SIMPLE_PRICE: &str = include_str!("../../../tests/fixtures/rates/coingecko/simple_price.json");

    fn pairs(list: &[&str]) -> Vec<Pair> {
        list.iter().map(|p| p.parse().expect("pair")).collect()
    }

    #[test]
    fn recorded_prices_parse_exactly_from_the_number_text() {
        let wanted = pairs(&["BTC/USD", "BTC/EUR", "ETH/USD", "POL/USD", "BNB/USD", "USDC/USD", "USDT/USD", "DAI/USD", "USDC/EUR"]);
        let refs: Vec<&Pair> = wanted.iter().collect();
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).single().expect("time");
        let quotes = parse_simple_price(SIMPLE_PRICE, &refs, now).expect("prices");
        let got: Vec<String> = quotes.iter().map(|q| format!("{}/{}={}", q.base, q.quote, q.rate)).collect();
        assert_eq!(
            got,
            [
                "BTC/USD=97231.12345678901",
                "BTC/EUR=93112.42",
                "ETH/USD=3621.8701234567",
                "POL/USD=0.23912345",
                "BNB/USD=689.31",
                "USDC/USD=0.9998420371",
                "USDT/USD=1.0001",
                "DAI/USD=0.99990523",
                "USDC/EUR=0.95748",
            ]
        );
        // Dated by CoinGecko's own update time, which is before the fetch.
        assert_eq!(quotes[0].at, Utc.timestamp_opt(1_767_268_788, 0).single().expect("time"));
    }

    #[test]
    fn missing_coins_currencies_and_bad_numbers_are_named() {
        let wanted = pairs(&["BTC/USD"]);
        let refs: Vec<&Pair> = wanted.iter().collect();
        let now = Utc::now();
        let error = |body: &str| parse_simple_price(body, &refs, now).err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(error("{}"), "coingecko: field bitcoin is missing");
        assert_eq!(error(r#"{"bitcoin":{"eur":93112.42}}"#), "coingecko: field bitcoin.usd is missing");
        assert!(error(r#"{"bitcoin":{"usd":"97231.12"}}"#).starts_with("coingecko: field bitcoin.usd = \"97231.12\" is not a valid price: not a decimal number"));
        assert!(error(r#"{"bitcoin":{"usd":null}}"#).contains("bitcoin.usd is missing"));
        assert!(error(r#"{"bitcoin":97231}"#).starts_with("coingecko: malformed body at bitcoin"));
        assert!(error(r#"{"bitcoin":{"usd":0}}"#).contains("is zero"));
        assert!(error(r#"{"bitcoin":{"usd":-1.5}}"#).contains("negative price"));
        assert!(error(r#"{"bitcoin":{"usd":97231,"last_updated_at":"soon"}}"#).contains("bitcoin.last_updated_at"));
        assert_eq!(
            error(r#"{"status":{"error_code":429,"error_message":"You've exceeded the Rate Limit."}}"#),
            "coingecko: the api reports an error: 429: You've exceeded the Rate Limit."
        );
    }

    #[test]
    fn supports_listed_coins_in_its_vs_currencies() {
        assert!(CoinGeckoClient::supports(&"BNB/EUR".parse().expect("pair")));
        assert!(CoinGeckoClient::supports(&"POL/JPY".parse().expect("pair")));
        assert!(!CoinGeckoClient::supports(&"XYZ/USD".parse().expect("pair")));
        assert!(!CoinGeckoClient::supports(&"BTC/UGX".parse().expect("pair")));
    }
}
