//! The sections of `config.toml` other than `[chains]`, each with its checks.
//!
//! Invariants of every section that leaves [`super::Config::load`]:
//! - Every limit is positive and below a named ceiling (`*_LIMIT`), so a typo cannot turn
//!   a limit off or make it absurd.
//! - `invoices.expires_in_s_default <= invoices.expires_in_s_max`.
//! - Fixed rates are keyed by an upper-case asset symbol and an ISO 4217 currency, and are
//!   strictly positive (the `Rate` type refuses zero).
//! - The database URL's password never appears in `Debug` output.
//!
//! Check errors carry keys relative to their section; the loader puts the section in front.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use serde::de::{self, Deserializer};
use serde::Deserialize;

use crate::money::{Amount, Fiat, Rate};

use super::chain::{is_valid_symbol, SYMBOL_LEN_MAX};
use super::error::InvalidKey;
use super::url;

/// Largest request body accepted by the API: 64 MiB.
pub const BODY_LIMIT_BYTES_LIMIT: u64 = 64 * 1024 * 1024;
/// Longest request timeout: 10 minutes.
pub const REQUEST_TIMEOUT_MS_LIMIT: u64 = 600_000;
/// Largest database pool.
pub const POOL_MAX_LIMIT: u32 = 1024;
/// Longest invoice lifetime: 30 days.
pub const EXPIRES_IN_S_LIMIT: u64 = 30 * 24 * 3600;
/// Largest underpayment tolerance: 10 %. Beyond that it is a discount, not a tolerance.
pub const UNDERPAYMENT_TOLERANCE_BPS_LIMIT: u32 = 1_000;
/// Most fixed rates.
pub const FIXED_RATES_MAX: usize = 1024;
/// Longest log filter.
pub const LOG_FILTER_LEN_MAX: usize = 1024;

/// `[server]`: the HTTP API.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Base of the links handed to payers and merchants, without a trailing slash.
    pub public_url: String,
    pub body_limit_bytes: u64,
    pub request_timeout_ms: u64,
}

impl ServerConfig {
    pub(crate) fn check(mut self) -> Result<Self, InvalidKey> {
        url::check(&self.public_url, &["http", "https"], false)
            .map_err(|message| InvalidKey::new("public_url", message))?;
        // Links are built as `{public_url}/pay/{id}`; one spelling avoids `//pay`.
        while self.public_url.ends_with('/') {
            self.public_url.pop();
        }
        in_range(
            "body_limit_bytes",
            self.body_limit_bytes,
            BODY_LIMIT_BYTES_LIMIT,
        )?;
        in_range(
            "request_timeout_ms",
            self.request_timeout_ms,
            REQUEST_TIMEOUT_MS_LIMIT,
        )?;
        Ok(self)
    }
}

/// `[database]`: PostgreSQL. `Debug` masks the password.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Connection URL; may hold a password, so never log it: use [`Self::url_redacted`].
    pub url: String,
    pub pool_max: u32,
}

impl DatabaseConfig {
    /// The URL with its password masked, for logs and error messages.
    pub fn url_redacted(&self) -> String {
        url::redact_password(&self.url)
    }

    pub(crate) fn check(self) -> Result<Self, InvalidKey> {
        url::check(&self.url, &["postgres", "postgresql"], false)
            .map_err(|message| InvalidKey::new("url", message))?;
        in_range(
            "pool_max",
            u64::from(self.pool_max),
            u64::from(POOL_MAX_LIMIT),
        )?;
        Ok(self)
    }
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &self.url_redacted())
            .field("pool_max", &self.pool_max)
            .finish()
    }
}

/// `[invoices]`: limits on invoices merchants create.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvoicesConfig {
    pub expires_in_s_default: u64,
    pub expires_in_s_max: u64,
    /// Largest invoice, in whole units of the invoice's currency (a decimal string in the
    /// file; whole units so that one limit means the same for USD, JPY and KWD).
    #[serde(deserialize_with = "whole_units")]
    amount_max: Amount,
    /// Underpayment still accepted as paid, in basis points of the fiat amount at the
    /// locked rate.
    pub underpayment_tolerance_bps: u32,
}

fn whole_units<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Amount, D::Error> {
    let text = String::deserialize(deserializer)?;
    Amount::parse_decimal(&text, 0).map_err(|_| {
        de::Error::custom(format!(
            "{text:?} is not a whole number of currency units, e.g. \"1000000\""
        ))
    })
}

/// Most minor units of any supported currency; `amount_max` must scale to it without overflow.
fn minor_units_max() -> u8 {
    Fiat::all()
        .map(|fiat| fiat.minor_units())
        .max()
        .unwrap_or(0)
}

fn scale_to_minor(whole: Amount, minor_units: u8) -> Option<Amount> {
    (0..minor_units).try_fold(whole, |acc, _| acc.checked_mul_u64(10))
}

impl InvoicesConfig {
    /// The largest invoice in whole currency units.
    pub fn amount_max_whole(&self) -> Amount {
        self.amount_max
    }

    /// The largest invoice in `fiat`'s minor units (cents for USD).
    pub fn amount_max_minor(&self, fiat: Fiat) -> Amount {
        // The load-time check scaled `amount_max` to the most minor units of any currency,
        // so this cannot overflow; `MAX` would only be reached if that check were removed.
        scale_to_minor(self.amount_max, fiat.minor_units()).unwrap_or(Amount::MAX)
    }

    pub(crate) fn check(self) -> Result<Self, InvalidKey> {
        in_range(
            "expires_in_s_max",
            self.expires_in_s_max,
            EXPIRES_IN_S_LIMIT,
        )?;
        in_range(
            "expires_in_s_default",
            self.expires_in_s_default,
            self.expires_in_s_max,
        )?;
        if self.amount_max.is_zero() || scale_to_minor(self.amount_max, minor_units_max()).is_none()
        {
            return Err(InvalidKey::new(
                "amount_max",
                "must be positive and fit in 256 bits in minor units",
            ));
        }
        if self.underpayment_tolerance_bps > UNDERPAYMENT_TOLERANCE_BPS_LIMIT {
            return Err(InvalidKey::new(
                "underpayment_tolerance_bps",
                format!(
                    "{} is out of range: expected 0 to {UNDERPAYMENT_TOLERANCE_BPS_LIMIT}",
                    self.underpayment_tolerance_bps
                ),
            ));
        }
        Ok(self)
    }
}

/// Where rates come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateFeed {
    /// The `[rates.fixed]` table: for development and tests only.
    Fixed,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RatesFile {
    feed: RateFeed,
    #[serde(default)]
    fixed: BTreeMap<String, Rate>,
}

/// `[rates]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RatesConfig {
    pub feed: RateFeed,
    fixed: BTreeMap<(String, Fiat), Rate>,
}

impl RatesConfig {
    /// The fixed price of one `base_symbol` in `quote_code` ("BTC", "USD"); exact spelling.
    pub fn fixed_rate(&self, base_symbol: &str, quote_code: &str) -> Option<Rate> {
        let quote: Fiat = quote_code.parse().ok()?;
        self.fixed.get(&(base_symbol.to_owned(), quote)).cloned()
    }

    /// Every fixed rate as (base symbol, quote currency, rate), sorted.
    pub fn fixed_rates(&self) -> impl Iterator<Item = (&str, Fiat, &Rate)> {
        self.fixed
            .iter()
            .map(|((base, quote), rate)| (base.as_str(), *quote, rate))
    }
}

impl RatesFile {
    pub(crate) fn check(self) -> Result<RatesConfig, InvalidKey> {
        if self.fixed.len() > FIXED_RATES_MAX {
            return Err(InvalidKey::new(
                "fixed",
                format!("{} rates, more than {FIXED_RATES_MAX}", self.fixed.len()),
            ));
        }
        if self.feed == RateFeed::Fixed && self.fixed.is_empty() {
            return Err(InvalidKey::new(
                "fixed",
                "feed \"fixed\" needs at least one rate",
            ));
        }
        let mut fixed = BTreeMap::new();
        for (pair, rate) in self.fixed {
            let key = format!("fixed.{pair}");
            let (base, quote) =
                parse_pair(&pair).map_err(|message| InvalidKey::new(&key, message))?;
            fixed.insert((base, quote), rate);
        }
        Ok(RatesConfig {
            feed: self.feed,
            fixed,
        })
    }
}

/// `"BTC/USD"` → ("BTC", USD).
fn parse_pair(pair: &str) -> Result<(String, Fiat), String> {
    let expected = || {
        format!(
            "{pair:?} is not a pair: expected \"BASE/QUOTE\" with an upper-case asset symbol of 1 to \
             {SYMBOL_LEN_MAX} characters and an ISO 4217 code, e.g. \"BTC/USD\""
        )
    };
    let (base, quote) = pair.split_once('/').ok_or_else(expected)?;
    if !is_valid_symbol(base) {
        return Err(expected());
    }
    let quote: Fiat = quote.parse().map_err(|e| format!("{pair:?}: {e}"))?;
    Ok((base.to_owned(), quote))
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
    /// `tracing-subscriber` `EnvFilter` directives ("info", "payrail=debug,sqlx=warn").
    #[serde(default = "LogConfig::filter_default")]
    pub filter: String,
}

impl LogConfig {
    fn filter_default() -> String {
        "info".to_owned()
    }

    pub(crate) fn check(self) -> Result<Self, InvalidKey> {
        if self.filter.trim().is_empty() || self.filter.len() > LOG_FILTER_LEN_MAX {
            return Err(InvalidKey::new(
                "filter",
                format!("expected 1 to {LOG_FILTER_LEN_MAX} characters of filter directives"),
            ));
        }
        Ok(self)
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::default(),
            filter: Self::filter_default(),
        }
    }
}

/// `value` in `1..=max`, else an error under `key`.
fn in_range(key: &str, value: u64, max: u64) -> Result<(), InvalidKey> {
    if !(1..=max).contains(&value) {
        return Err(InvalidKey::new(
            key,
            format!("{value} is out of range: expected 1 to {max}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_need_a_symbol_and_a_currency() {
        assert_eq!(parse_pair("BTC/USD"), Ok(("BTC".to_owned(), Fiat::USD)));
        for bad in [
            "BTCUSD",
            "btc/USD",
            "BTC/usd",
            "BTC/XXX",
            "/USD",
            "BTC/",
            "BTC/USD/EUR",
        ] {
            assert!(parse_pair(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn database_debug_masks_the_password() {
        let db = DatabaseConfig {
            url: "postgres://app:hunter2@db/payrail".to_owned(),
            pool_max: 4,
        };
        let debug = format!("{db:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("app:***@db/payrail"), "{debug}");
    }

    #[test]
    fn a_bad_database_url_is_reported_without_its_password() {
        let db = DatabaseConfig {
            url: "mysql://app:hunter2@db/payrail".to_owned(),
            pool_max: 4,
        };
        let message = db.check().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.starts_with("key url:"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }

    #[test]
    fn amount_max_scales_to_minor_units() {
        let invoices = InvoicesConfig {
            expires_in_s_default: 900,
            expires_in_s_max: 86_400,
            amount_max: Amount::from_u64(1_000_000),
            underpayment_tolerance_bps: 0,
        };
        assert_eq!(
            invoices.amount_max_minor(Fiat::USD),
            Amount::from_u64(100_000_000)
        );
        assert_eq!(
            invoices.amount_max_minor(Fiat::JPY),
            Amount::from_u64(1_000_000)
        );
        let too_long = InvoicesConfig {
            expires_in_s_default: 86_401,
            ..invoices
        };
        assert_eq!(
            too_long.check().err().map(|e| e.key),
            Some("expires_in_s_default".to_owned())
        );
    }
}
