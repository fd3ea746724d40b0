//! The file feed, for development: a JSON object of pairs to decimal strings,
//! `{"BTC/USD": "65000.12", "USDC/USD": "1"}`, read again on every refresh so a developer can
//! move a price (or depeg a stablecoin) while the daemon runs.
//!
//! Prices must be strings, as in `config.toml`: a number would invite a float somewhere
//! upstream. A pair that leaves the file leaves the cache at the next refresh.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;

use super::feed::{from_json, price, FeedError, PriceText};
use crate::money::Pair;
use super::SourceQuote;

pub(crate) const NAME: &str = "file";
/// Largest rates file read.
pub const FILE_FEED_BYTES_MAX: u64 = 1024 * 1024;
/// Most pairs in a rates file.
pub const FILE_FEED_PAIRS_MAX: usize = 1024;

#[derive(Debug, Clone)]
pub struct FileFeed {
    path: PathBuf,
}

impl FileFeed {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileFeed { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads every pair in the file, stamped `now`.
    pub fn read(&self, now: DateTime<Utc>) -> Result<Vec<SourceQuote>, FeedError> {
        let failed = |source| FeedError::Read { feed: NAME, path: self.path.clone(), source };
        let file = std::fs::File::open(&self.path).map_err(failed)?;
        let mut text = String::new();
        file.take(FILE_FEED_BYTES_MAX + 1).read_to_string(&mut text).map_err(failed)?;
        if u64::try_from(text.len()).map_or(true, |len| len > FILE_FEED_BYTES_MAX) {
            return Err(FeedError::Malformed {
                feed: NAME,
                field: "body".to_owned(),
                message: format!("{} is larger than {FILE_FEED_BYTES_MAX} bytes", self.path.display()),
            });
        }
        parse_file(&text, now)
    }
}

/// Reads a rates file's text.
pub(crate) fn parse_file(text: &str, now: DateTime<Utc>) -> Result<Vec<SourceQuote>, FeedError> {
    let entries: BTreeMap<String, &RawValue> = from_json(NAME, text)?;
    if entries.len() > FILE_FEED_PAIRS_MAX {
        return Err(FeedError::Malformed {
            feed: NAME,
            field: "body".to_owned(),
            message: format!("{} pairs, more than {FILE_FEED_PAIRS_MAX}", entries.len()),
        });
    }
    let mut quotes = Vec::with_capacity(entries.len());
    for (key, raw) in entries {
        let pair: Pair =
            key.parse().map_err(|e: super::PairError| FeedError::Malformed { feed: NAME, field: key.clone(), message: e.to_string() })?;
        let rate = price(NAME, &key, Some(raw), PriceText::String)?;
        quotes.push(SourceQuote { source: NAME.to_owned(), base: pair.base, quote: pair.quote, rate, at: now, via: None });
    }
    Ok(quotes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pairs_of_decimal_strings_and_rereads_changes() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("rates.json");
        std::fs::write(&path, r#"{"BTC/USD": "65000.12", "USDC/USD": "1.0000"}"#).expect("write");
        let feed = FileFeed::new(&path);
        let now = Utc::now();
        let quotes = feed.read(now).expect("read");
        let got: Vec<String> = quotes.iter().map(|q| format!("{}/{}={}@{}", q.base, q.quote, q.rate, q.source)).collect();
        assert_eq!(got, ["BTC/USD=65000.12@file", "USDC/USD=1@file"]);
        std::fs::write(&path, r#"{"BTC/USD": "66000"}"#).expect("rewrite");
        assert_eq!(feed.read(now).map(|q| q.len()).ok(), Some(1));
    }

    #[test]
    fn bad_files_are_refused_with_the_key() {
        let now = Utc::now();
        let error = |text: &str| parse_file(text, now).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error(r#"{"BTCUSD": "1"}"#).starts_with("file: malformed body at BTCUSD: \"BTCUSD\" is not a pair"));
        assert!(error(r#"{"BTC/USD": 65000}"#).contains("must be written as a decimal string"));
        assert!(error(r#"{"BTC/USD": "0"}"#).contains("is zero"));
        assert!(error(r#"["BTC/USD"]"#).starts_with("file: malformed body"));
        let missing = FileFeed::new("/nonexistent/payrail-rates.json").read(now).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(missing.starts_with("file: cannot read /nonexistent/payrail-rates.json"), "{missing}");
    }
}
