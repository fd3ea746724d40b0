//! What the feeds share: the [`Feed`] enum the refresher polls, the errors of a fetch, the HTTP
//! GET with its timeout and body limit, and reading prices out of JSON bodies.
//!
//! Invariants:
//! - Every request has a timeout and every body a size limit ([`FEED_BODY_BYTES_MAX`]), so a
//!   slow or hostile server costs one bounded fetch, never a stuck refresher.
//! - A fetch returns every pair it was asked for (of those the source lists) or an error; a
//!   body is never half-used.
//! - Errors name the feed, and the URL, HTTP status or JSON field that failed.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::de::Deserialize;
use serde_json::value::RawValue;

use crate::money::Rate;
use crate::LiveSource;

use super::binance::BinanceClient;
use super::coinbase::CoinbaseClient;
use super::coingecko::CoinGeckoClient;
use super::decimal::{parse_decimal_text, parse_json_number, PriceError};
use super::file::FileFeed;
use super::kraken::KrakenClient;
use crate::money::Pair;
use super::SourceQuote;

/// Largest response body read from a feed: 1 MiB (a ticker is a few kilobytes).
pub const FEED_BODY_BYTES_MAX: usize = 1024 * 1024;
/// Characters of an error body kept in an error message.
const ERROR_BODY_CHARS_MAX: usize = 200;

/// Why a fetch from one feed failed.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("cannot build the http client: {message}")]
    Client { message: String },
    #[error("{feed}: GET {url} timed out after {timeout_ms} ms")]
    Timeout { feed: &'static str, url: String, timeout_ms: u64 },
    #[error("{feed}: GET {url} failed: {message}")]
    Transport { feed: &'static str, url: String, message: String },
    #[error("{feed}: GET {url} answered http 429 (rate limited){}", fmt_retry(.retry_after_s))]
    RateLimited { feed: &'static str, url: String, retry_after_s: Option<u64> },
    #[error("{feed}: GET {url} answered http {status}: {body}")]
    Status { feed: &'static str, url: String, status: u16, body: String },
    #[error("{feed}: GET {url}: body larger than {max} bytes")]
    TooLarge { feed: &'static str, url: String, max: usize },
    #[error("{feed}: malformed body at {field}: {message}")]
    Malformed { feed: &'static str, field: String, message: String },
    #[error("{feed}: field {field} is missing")]
    MissingField { feed: &'static str, field: String },
    #[error("{feed}: field {field} = {value} is not a valid price: {reason}")]
    InvalidPrice {
        feed: &'static str,
        field: String,
        value: String,
        #[source]
        reason: PriceError,
    },
    #[error("{feed}: field {field} is {found:?}, expected {expected:?}")]
    Mismatch { feed: &'static str, field: String, expected: String, found: String },
    #[error("{feed}: the api reports an error: {message}")]
    Api { feed: &'static str, message: String },
    #[error("{feed}: cannot read {}: {source}", .path.display())]
    Read {
        feed: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn fmt_retry(retry_after_s: &Option<u64>) -> String {
    retry_after_s.map(|s| format!("; retry after {s} s")).unwrap_or_default()
}

impl FeedError {
    /// A short label for metrics: "timeout", "http_status", "malformed", …
    pub fn kind(&self) -> &'static str {
        match self {
            FeedError::Client { .. } => "client",
            FeedError::Timeout { .. } => "timeout",
            FeedError::Transport { .. } => "transport",
            FeedError::RateLimited { .. } => "rate_limited",
            FeedError::Status { .. } => "http_status",
            FeedError::TooLarge { .. } => "too_large",
            FeedError::Malformed { .. } => "malformed",
            FeedError::MissingField { .. } => "missing_field",
            FeedError::InvalidPrice { .. } => "invalid_price",
            FeedError::Mismatch { .. } => "mismatch",
            FeedError::Api { .. } => "api",
            FeedError::Read { .. } => "read",
        }
    }

    /// Whether the same request may succeed later without anything being changed: timeouts,
    /// connection failures, rate limits, 408 and 5xx answers.
    pub fn is_retryable(&self) -> bool {
        match self {
            FeedError::Timeout { .. } | FeedError::Transport { .. } | FeedError::RateLimited { .. } => true,
            FeedError::Status { status, .. } => *status == 408 || *status >= 500,
            FeedError::Read { .. } => true,
            _ => false,
        }
    }
}

/// The HTTP client the live feeds share: rustls, a payrail user agent.
pub fn http_client() -> Result<reqwest::Client, FeedError> {
    reqwest::Client::builder()
        .user_agent(concat!("payrail/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| FeedError::Client { message: e.to_string() })
}

/// One feed's HTTP side: base URL, timeout, and the GET every client uses.
#[derive(Debug, Clone)]
pub(crate) struct Http {
    feed: &'static str,
    client: reqwest::Client,
    base_url: String,
    timeout: Duration,
}

impl Http {
    pub(crate) fn new(feed: &'static str, client: reqwest::Client, base_url: &str, timeout: Duration) -> Self {
        Http { feed, client, base_url: base_url.trim_end_matches('/').to_owned(), timeout }
    }

    pub(crate) fn base_url(&self) -> &str {
        &self.base_url
    }

    /// GETs `base_url + path_and_query` and returns the body of a 2xx answer.
    pub(crate) async fn get(&self, path_and_query: &str) -> Result<String, FeedError> {
        let feed = self.feed;
        let url = format!("{}{path_and_query}", self.base_url);
        let timeout_ms = u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX);
        let failed = |error: reqwest::Error, url: &str| {
            if error.is_timeout() {
                FeedError::Timeout { feed, url: url.to_owned(), timeout_ms }
            } else {
                FeedError::Transport { feed, url: url.to_owned(), message: error_chain(&error) }
            }
        };
        let mut response = self
            .client
            .get(&url)
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| failed(e, &url))?;
        let status = response.status();
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            let retry_after_s = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            return Err(FeedError::RateLimited { feed, url, retry_after_s });
        }
        if response.content_length().is_some_and(|len| usize::try_from(len).map_or(true, |len| len > FEED_BODY_BYTES_MAX)) {
            return Err(FeedError::TooLarge { feed, url, max: FEED_BODY_BYTES_MAX });
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| failed(e, &url))? {
            if body.len() + chunk.len() > FEED_BODY_BYTES_MAX {
                return Err(FeedError::TooLarge { feed, url, max: FEED_BODY_BYTES_MAX });
            }
            body.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body);
            return Err(FeedError::Status { feed, url, status: status.as_u16(), body: snippet(&text) });
        }
        String::from_utf8(body).map_err(|_| FeedError::Malformed {
            feed,
            field: "body".to_owned(),
            message: "not utf-8 text".to_owned(),
        })
    }
}

/// The error with its causes, which is where reqwest says "connection refused".
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        message.push_str(": ");
        message.push_str(&inner.to_string());
        cause = inner.source();
    }
    message
}

/// The start of an error body on one line, without control characters.
fn snippet(text: &str) -> String {
    let cleaned: String =
        text.chars().map(|c| if c.is_control() { ' ' } else { c }).take(ERROR_BODY_CHARS_MAX).collect();
    let cleaned = cleaned.trim().to_owned();
    if cleaned.is_empty() {
        "(empty body)".to_owned()
    } else {
        cleaned
    }
}

/// Deserializes a JSON body; a type error names the field path where it happened.
pub(crate) fn from_json<'a, T: Deserialize<'a>>(feed: &'static str, body: &'a str) -> Result<T, FeedError> {
    let mut deserializer = serde_json::Deserializer::from_str(body);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        // An unknown segment ("?": inside a map, before its key was read) names nothing.
        let path = error.path().to_string();
        let path = path.trim_end_matches(".?").trim_end_matches('?');
        FeedError::Malformed {
            feed,
            field: if path == "." || path.is_empty() { "body".to_owned() } else { path.to_owned() },
            message: error.inner().to_string(),
        }
    })?;
    deserializer.end().map_err(|error| FeedError::Malformed {
        feed,
        field: "body".to_owned(),
        message: error.to_string(),
    })?;
    Ok(value)
}

/// How a price may be written in a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PriceText {
    /// A JSON string holding a decimal: `"97215.99000000"`.
    String,
    /// A JSON number, read from its literal text: `97231.5`.
    Number,
}

/// Reads the price at `field` exactly; `raw` is its JSON text, `None` when absent or null.
pub(crate) fn price(feed: &'static str, field: &str, raw: Option<&RawValue>, expected: PriceText) -> Result<Rate, FeedError> {
    let text = raw.map(RawValue::get).filter(|text| *text != "null");
    let text = text.ok_or_else(|| FeedError::MissingField { feed, field: field.to_owned() })?;
    let invalid = |reason: PriceError| FeedError::InvalidPrice {
        feed,
        field: field.to_owned(),
        value: snippet(text),
        reason,
    };
    match expected {
        PriceText::String => {
            let value: String = serde_json::from_str(text).map_err(|_| invalid(PriceError::NotAString))?;
            parse_decimal_text(&value).map_err(invalid)
        }
        PriceText::Number => parse_json_number(text).map_err(invalid),
    }
}

/// A source of rates the refresher polls.
#[derive(Debug, Clone)]
pub enum Feed {
    Coinbase(CoinbaseClient),
    Kraken(KrakenClient),
    Binance(BinanceClient),
    CoinGecko(CoinGeckoClient),
    File(FileFeed),
}

impl Feed {
    /// A client for `source` at `base_url` (its real host when `None`).
    pub fn live(source: LiveSource, client: reqwest::Client, base_url: Option<&str>, timeout: Duration) -> Feed {
        let base_url = base_url.unwrap_or(source.default_base_url());
        match source {
            LiveSource::Coinbase => Feed::Coinbase(CoinbaseClient::new(client, base_url, timeout)),
            LiveSource::Kraken => Feed::Kraken(KrakenClient::new(client, base_url, timeout)),
            LiveSource::Binance => Feed::Binance(BinanceClient::new(client, base_url, timeout)),
            LiveSource::CoinGecko => Feed::CoinGecko(CoinGeckoClient::new(client, base_url, timeout)),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Feed::Coinbase(_) => crate::markets::coinbase::NAME,
            Feed::Kraken(_) => crate::markets::kraken::NAME,
            Feed::Binance(_) => crate::markets::binance::NAME,
            Feed::CoinGecko(_) => crate::markets::coingecko::NAME,
            Feed::File(_) => super::file::NAME,
        }
    }

    /// The current price of every pair in `pairs` this feed lists (the file feed: of every pair
    /// in its file), stamped `now` unless the source says when it last updated.
    pub async fn fetch(&self, pairs: &[Pair], now: DateTime<Utc>) -> Result<Vec<SourceQuote>, FeedError> {
        match self {
            Feed::Coinbase(client) => client.fetch(pairs, now).await,
            Feed::Kraken(client) => client.fetch(pairs, now).await,
            Feed::Binance(client) => client.fetch(pairs, now).await,
            Feed::CoinGecko(client) => client.fetch(pairs, now).await,
            Feed::File(feed) => feed.read(now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn price_reads_strings_and_numbers_exactly() {
        let raw = |text: &str| RawValue::from_string(text.to_owned()).expect("raw json");
        let string = raw("\"97215.99000000\"");
        assert_eq!(price("t", "price", Some(&string), PriceText::String).ok(), "97215.99".parse().ok());
        let number = raw("0.999842");
        assert_eq!(price("t", "usd", Some(&number), PriceText::Number).ok(), "0.999842".parse().ok());
        let error = price("t", "price", Some(&number), PriceText::String).err().map(|e| e.to_string());
        assert_eq!(error.as_deref(), Some("t: field price = 0.999842 is not a valid price: a price must be written as a decimal string"));
        assert!(matches!(price("t", "price", None, PriceText::String), Err(FeedError::MissingField { .. })));
    }

    #[test]
    fn malformed_json_names_the_field() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Body {
            data: Inner,
        }
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Inner {
            base: String,
        }
        let error = from_json::<Body>("t", r#"{"data":{"base":7}}"#).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.starts_with("t: malformed body at data.base: invalid type: integer `7`"), "{error}");
        let error = from_json::<Body>("t", r#"{"data":{"base":"BTC"}"#).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.starts_with("t: malformed body at "), "{error}");
        let error = from_json::<Body>("t", r#"{"data":{"base":"BTC"}} x"#).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("trailing characters"), "{error}");
    }

    #[test]
    fn retryable_errors_are_the_transient_ones() {
        let status = |status| FeedError::Status { feed: "t", url: String::new(), status, body: String::new() };
        assert!(status(500).is_retryable());
        assert!(status(503).is_retryable());
        assert!(status(408).is_retryable());
        assert!(!status(404).is_retryable());
        assert!(FeedError::RateLimited { feed: "t", url: String::new(), retry_after_s: Some(30) }.is_retryable());
        assert!(!FeedError::MissingField { feed: "t", field: "x".to_owned() }.is_retryable());
    }
}
