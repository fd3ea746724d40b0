//! The sections of `config.toml` other than `[chains]`, each with its checks.
//!
//! Invariants of every section that leaves [`super::Config::load`]:
//! - Every limit is positive and below a named ceiling (`*_LIMIT`), so a typo cannot turn
//!   a limit off or make it absurd.
//! - `invoices.expires_in_s_default <= invoices.expires_in_s_max`.
//! - Fixed rates are keyed by an upper-case asset symbol and an ISO 4217 currency, and are
//!   strictly positive (the `Rate` type refuses zero).
//! - The table of the selected rate feed exists (`[rates.live]` for `feed = "live"`,
//!   `[rates.file]` for `"file"`), and a table that is present is checked even when another
//!   feed is selected, so switching feeds cannot surface an old mistake.
//! - A live feed can price every pair it tracks: each pair is listed by at least `quorum` of
//!   the configured sources, `max_age_ms >= refresh_interval_ms` (rates do not expire between
//!   two refreshes), and `timeout_ms <= refresh_interval_ms` (rounds do not pile up).
//! - Base URLs of the rate sources never appear in `Debug` output beyond scheme and host.
//! - The database URL's password never appears in `Debug` output.
//!
//! Check errors carry keys relative to their section; the loader puts the section in front.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use serde::de::{self, Deserializer};
use serde::Deserialize;

use std::path::PathBuf;

use crate::money::{Amount, Fiat, Rate};
use crate::markets::LiveSource;
use crate::money::Pair;

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
/// Shortest interval between two polls of the rate feeds: feeds are polled, not hammered.
pub const RATES_REFRESH_INTERVAL_MS_MIN: u64 = 1_000;
/// Longest interval between two polls of the rate feeds: 1 hour.
pub const RATES_REFRESH_INTERVAL_MS_LIMIT: u64 = 3_600_000;
/// Oldest rate that may still be used: 1 hour.
pub const RATES_MAX_AGE_MS_LIMIT: u64 = 3_600_000;
/// Longest timeout of one feed request.
pub const RATES_TIMEOUT_MS_LIMIT: u64 = 60_000;
/// Widest outlier band: 50 %. Wider, and nothing is an outlier.
pub const RATES_OUTLIER_BPS_LIMIT: u32 = 5_000;
/// Widest depeg band: 20 %.
pub const RATES_DEPEG_BPS_LIMIT: u32 = 2_000;
/// Most pairs a live feed tracks.
pub const RATES_PAIRS_MAX: usize = 256;
/// Longest path of the rates file.
pub const RATES_FILE_PATH_LEN_MAX: usize = 4096;
/// How long a USD stablecoin's last sound quotes keep pricing it while every source is down: 6 hours.
pub const RATES_STABLE_MAX_AGE_MS_DEFAULT: u64 = 21_600_000;
/// Longest such grace: 24 hours.
pub const RATES_STABLE_MAX_AGE_MS_LIMIT: u64 = 86_400_000;
/// `[rates.live]` defaults.
pub const RATES_LIVE_REFRESH_INTERVAL_MS_DEFAULT: u64 = 30_000;
pub const RATES_LIVE_MAX_AGE_MS_DEFAULT: u64 = 120_000;
pub const RATES_LIVE_QUORUM_DEFAULT: u32 = 2;
pub const RATES_OUTLIER_BPS_DEFAULT: u32 = 200;
pub const RATES_DEPEG_BPS_DEFAULT: u32 = 100;
/// `[rates.file]` defaults.
pub const RATES_FILE_REFRESH_INTERVAL_MS_DEFAULT: u64 = 5_000;
pub const RATES_FILE_MAX_AGE_MS_DEFAULT: u64 = 60_000;

/// `[server]`: the HTTP API.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Base of the links handed to payers and merchants, without a trailing slash.
    pub public_url: String,
    pub body_limit_bytes: u64,
    pub request_timeout_ms: u64,
    /// Serve `/metrics` on this address only, not on `listen` (keep it off the public listener).
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Behind a reverse proxy: the header holding the client's address (`x-real-ip`, or
    /// `x-forwarded-for`, whose last entry counts), for per-address rate limits. Without it the
    /// peer's address is the client's.
    #[serde(default)]
    pub client_ip_header: Option<String>,
    /// Serve the web console at `/console` on `listen` (on by default; off keeps the listener to
    /// the API and the checkout pages).
    #[serde(default = "console_default")]
    pub console: bool,
    /// Requests per second an API key may sustain, unless the key has its own rate.
    #[serde(default = "key_requests_per_s_default")]
    pub key_requests_per_s: u32,
    /// Requests an API key may make in a burst, unless the key has its own rate.
    #[serde(default = "key_burst_default")]
    pub key_burst: u32,
}

/// `[server] key_requests_per_s` when absent.
pub const KEY_REQUESTS_PER_S_DEFAULT: u32 = 50;
/// `[server] key_burst` when absent.
pub const KEY_BURST_DEFAULT: u32 = 100;
/// Largest `key_requests_per_s` (and a key's own rate).
pub const KEY_REQUESTS_PER_S_LIMIT: u64 = 100_000;
/// Largest `key_burst` (and a key's own burst).
pub const KEY_BURST_LIMIT: u64 = 1_000_000;

fn console_default() -> bool {
    true
}

fn key_requests_per_s_default() -> u32 {
    KEY_REQUESTS_PER_S_DEFAULT
}

fn key_burst_default() -> u32 {
    KEY_BURST_DEFAULT
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
        if let Some(name) = &self.client_ip_header {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(InvalidKey::new("client_ip_header", "not an HTTP header name"));
            }
        }
        if self.metrics_listen.is_some_and(|addr| addr == self.listen) {
            return Err(InvalidKey::new("metrics_listen", "must differ from listen"));
        }
        in_range("key_requests_per_s", u64::from(self.key_requests_per_s), KEY_REQUESTS_PER_S_LIMIT)?;
        in_range("key_burst", u64::from(self.key_burst), KEY_BURST_LIMIT)?;
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
    /// A read replica for reads that may lag the primary by a moment: the ledger export, the
    /// trial balance, merchant and creator statements. Unset, they read from `url`. Never used for
    /// anything that writes or decides, nor for invoice status (read right after a write).
    #[serde(default)]
    pub read_url: Option<String>,
    /// Connections to `read_url` (default: `pool_max`).
    #[serde(default)]
    pub read_pool_max: Option<u32>,
}

impl DatabaseConfig {
    /// The URL with its password masked, for logs and error messages.
    pub fn url_redacted(&self) -> String {
        url::redact_password(&self.url)
    }

    /// `read_url` with its password masked.
    pub fn read_url_redacted(&self) -> Option<String> {
        self.read_url.as_deref().map(url::redact_password)
    }

    /// How many connections the read pool may open.
    pub fn read_pool_max(&self) -> u32 {
        self.read_pool_max.unwrap_or(self.pool_max)
    }

    pub(crate) fn check(self) -> Result<Self, InvalidKey> {
        url::check(&self.url, &["postgres", "postgresql"], false)
            .map_err(|message| InvalidKey::new("url", message))?;
        if let Some(read_url) = &self.read_url {
            url::check(read_url, &["postgres", "postgresql"], false)
                .map_err(|message| InvalidKey::new("read_url", message))?;
        }
        in_range(
            "pool_max",
            u64::from(self.pool_max),
            u64::from(POOL_MAX_LIMIT),
        )?;
        if let Some(read_pool_max) = self.read_pool_max {
            in_range("read_pool_max", u64::from(read_pool_max), u64::from(POOL_MAX_LIMIT))?;
        }
        Ok(self)
    }
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &self.url_redacted())
            .field("pool_max", &self.pool_max)
            .field("read_url", &self.read_url_redacted())
            .field("read_pool_max", &self.read_pool_max)
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
    /// Exchange APIs, aggregated: the `[rates.live]` table.
    Live,
    /// A JSON file of pairs, re-read at every refresh: the `[rates.file]` table; development.
    File,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RatesFile {
    feed: RateFeed,
    #[serde(default)]
    fixed: BTreeMap<String, Rate>,
    #[serde(default)]
    live: Option<LiveFile>,
    #[serde(default)]
    file: Option<FileFeedFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LiveFile {
    sources: Vec<LiveSource>,
    pairs: Vec<String>,
    #[serde(default = "live_refresh_interval_ms_default")]
    refresh_interval_ms: u64,
    #[serde(default = "live_max_age_ms_default")]
    max_age_ms: u64,
    #[serde(default = "live_quorum_default")]
    quorum: u32,
    #[serde(default = "outlier_bps_default")]
    outlier_bps: u32,
    #[serde(default = "depeg_bps_default")]
    depeg_bps: u32,
    #[serde(default = "stable_max_age_ms_default")]
    stable_max_age_ms: u64,
    #[serde(default = "timeout_ms_default")]
    timeout_ms: u64,
    /// Per source: `base_url = { kraken = "http://127.0.0.1:9000" }`.
    #[serde(default)]
    base_url: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFeedFile {
    path: String,
    #[serde(default = "file_refresh_interval_ms_default")]
    refresh_interval_ms: u64,
    #[serde(default = "file_max_age_ms_default")]
    max_age_ms: u64,
    #[serde(default = "depeg_bps_default")]
    depeg_bps: u32,
    #[serde(default = "stable_max_age_ms_default")]
    stable_max_age_ms: u64,
}

fn live_refresh_interval_ms_default() -> u64 {
    RATES_LIVE_REFRESH_INTERVAL_MS_DEFAULT
}
fn live_max_age_ms_default() -> u64 {
    RATES_LIVE_MAX_AGE_MS_DEFAULT
}
fn live_quorum_default() -> u32 {
    RATES_LIVE_QUORUM_DEFAULT
}
fn outlier_bps_default() -> u32 {
    RATES_OUTLIER_BPS_DEFAULT
}
fn depeg_bps_default() -> u32 {
    RATES_DEPEG_BPS_DEFAULT
}
fn stable_max_age_ms_default() -> u64 {
    RATES_STABLE_MAX_AGE_MS_DEFAULT
}
fn timeout_ms_default() -> u64 {
    crate::markets::FEED_TIMEOUT_MS_DEFAULT
}
fn file_refresh_interval_ms_default() -> u64 {
    RATES_FILE_REFRESH_INTERVAL_MS_DEFAULT
}
fn file_max_age_ms_default() -> u64 {
    RATES_FILE_MAX_AGE_MS_DEFAULT
}

/// `[rates]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RatesConfig {
    pub feed: RateFeed,
    fixed: BTreeMap<(String, Fiat), Rate>,
    live: Option<LiveRatesConfig>,
    file: Option<FileRatesConfig>,
}

/// `[rates.live]`: exchange APIs polled every `refresh_interval_ms`, aggregated per pair.
#[derive(Clone, PartialEq, Eq)]
pub struct LiveRatesConfig {
    /// The sources, in the order given, without duplicates.
    pub sources: Vec<LiveSource>,
    /// The pairs asked of them, without duplicates.
    pub pairs: Vec<Pair>,
    pub refresh_interval_ms: u64,
    /// Oldest quote of a source still counted.
    pub max_age_ms: u64,
    /// Fewest fresh, agreeing sources a rate is built from.
    pub quorum: u32,
    /// Sources further than this from the median are dropped (basis points of the median).
    pub outlier_bps: u32,
    /// USDC, USDT and DAI priced in USD further than this from 1 are refused.
    pub depeg_bps: u32,
    /// While too few sources are fresh, a USD stablecoin is still priced from quotes up to this old
    /// (the quorum, outlier and depeg rules all applied to them); volatile assets are not.
    pub stable_max_age_ms: u64,
    /// Timeout of one request to a source.
    pub timeout_ms: u64,
    base_url: BTreeMap<LiveSource, String>,
}

impl LiveRatesConfig {
    /// The base URL configured for `source`; `None` means its real host.
    pub fn base_url(&self, source: LiveSource) -> Option<&str> {
        self.base_url.get(&source).map(String::as_str)
    }
}

impl fmt::Debug for LiveRatesConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let base_url: BTreeMap<&str, String> =
            self.base_url.iter().map(|(source, url)| (source.name(), url::redact_endpoint(url))).collect();
        f.debug_struct("LiveRatesConfig")
            .field("sources", &self.sources)
            .field("pairs", &self.pairs.iter().map(Pair::to_string).collect::<Vec<_>>())
            .field("refresh_interval_ms", &self.refresh_interval_ms)
            .field("max_age_ms", &self.max_age_ms)
            .field("quorum", &self.quorum)
            .field("outlier_bps", &self.outlier_bps)
            .field("depeg_bps", &self.depeg_bps)
            .field("stable_max_age_ms", &self.stable_max_age_ms)
            .field("timeout_ms", &self.timeout_ms)
            .field("base_url", &base_url)
            .finish()
    }
}

/// `[rates.file]`: a JSON file of `"BASE/QUOTE": "decimal"` pairs, for development.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRatesConfig {
    /// As written; a relative path is relative to the daemon's working directory.
    pub path: PathBuf,
    pub refresh_interval_ms: u64,
    pub max_age_ms: u64,
    pub depeg_bps: u32,
    /// As in [`LiveRatesConfig::stable_max_age_ms`].
    pub stable_max_age_ms: u64,
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

    /// `[rates.live]`; always there when `feed` is `live`.
    pub fn live(&self) -> Option<&LiveRatesConfig> {
        self.live.as_ref()
    }

    /// `[rates.file]`; always there when `feed` is `file`.
    pub fn file(&self) -> Option<&FileRatesConfig> {
        self.file.as_ref()
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
        if self.feed == RateFeed::Live && self.live.is_none() {
            return Err(InvalidKey::new("live", "feed \"live\" needs a [rates.live] table"));
        }
        if self.feed == RateFeed::File && self.file.is_none() {
            return Err(InvalidKey::new("file", "feed \"file\" needs a [rates.file] table"));
        }
        let mut fixed = BTreeMap::new();
        for (pair, rate) in self.fixed {
            let key = format!("fixed.{pair}");
            let (base, quote) =
                parse_pair(&pair).map_err(|message| InvalidKey::new(&key, message))?;
            fixed.insert((base, quote), rate);
        }
        let live = self.live.map(|live| live.check().map_err(|e| e.under("live"))).transpose()?;
        let file = self.file.map(|file| file.check().map_err(|e| e.under("file"))).transpose()?;
        Ok(RatesConfig {
            feed: self.feed,
            fixed,
            live,
            file,
        })
    }
}

/// `interval_ms` in `RATES_REFRESH_INTERVAL_MS_MIN..=RATES_REFRESH_INTERVAL_MS_LIMIT`, and
/// `max_age_ms` from it up to `RATES_MAX_AGE_MS_LIMIT`.
fn check_refresh(interval_ms: u64, max_age_ms: u64) -> Result<(), InvalidKey> {
    if !(RATES_REFRESH_INTERVAL_MS_MIN..=RATES_REFRESH_INTERVAL_MS_LIMIT).contains(&interval_ms) {
        return Err(InvalidKey::new(
            "refresh_interval_ms",
            format!(
                "{interval_ms} is out of range: expected {RATES_REFRESH_INTERVAL_MS_MIN} to \
                 {RATES_REFRESH_INTERVAL_MS_LIMIT}"
            ),
        ));
    }
    if !(interval_ms..=RATES_MAX_AGE_MS_LIMIT).contains(&max_age_ms) {
        return Err(InvalidKey::new(
            "max_age_ms",
            format!(
                "{max_age_ms} is out of range: expected refresh_interval_ms ({interval_ms}) to \
                 {RATES_MAX_AGE_MS_LIMIT}, so rates do not expire between two refreshes"
            ),
        ));
    }
    Ok(())
}

/// `stable_max_age_ms` from `max_age_ms` (no grace) up to `RATES_STABLE_MAX_AGE_MS_LIMIT`.
fn check_stable_max_age(max_age_ms: u64, stable_max_age_ms: u64) -> Result<(), InvalidKey> {
    if !(max_age_ms..=RATES_STABLE_MAX_AGE_MS_LIMIT).contains(&stable_max_age_ms) {
        return Err(InvalidKey::new(
            "stable_max_age_ms",
            format!(
                "{stable_max_age_ms} is out of range: expected max_age_ms ({max_age_ms}, no grace) to \
                 {RATES_STABLE_MAX_AGE_MS_LIMIT}"
            ),
        ));
    }
    Ok(())
}

fn bps_in_range(key: &str, value: u32, max: u32) -> Result<(), InvalidKey> {
    in_range(key, u64::from(value), u64::from(max))
}

impl LiveFile {
    /// Keys relative to `[rates.live]`.
    fn check(self) -> Result<LiveRatesConfig, InvalidKey> {
        if self.sources.is_empty() {
            return Err(InvalidKey::new(
                "sources",
                "expected at least one of \"coinbase\", \"kraken\", \"binance\", \"coingecko\"",
            ));
        }
        for (index, source) in self.sources.iter().enumerate() {
            if self.sources[..index].contains(source) {
                return Err(InvalidKey::new(format!("sources[{index}]"), format!("{source} is listed twice")));
            }
        }
        if self.pairs.is_empty() || self.pairs.len() > RATES_PAIRS_MAX {
            return Err(InvalidKey::new(
                "pairs",
                format!("{} pairs: expected 1 to {RATES_PAIRS_MAX}, e.g. [\"BTC/USD\"]", self.pairs.len()),
            ));
        }
        let mut pairs: Vec<Pair> = Vec::with_capacity(self.pairs.len());
        for (index, text) in self.pairs.iter().enumerate() {
            let key = format!("pairs[{index}]");
            let pair: Pair = text.parse().map_err(|e: crate::money::PairError| InvalidKey::new(&key, e.to_string()))?;
            if pairs.contains(&pair) {
                return Err(InvalidKey::new(key, format!("{pair} is listed twice")));
            }
            pairs.push(pair);
        }
        check_refresh(self.refresh_interval_ms, self.max_age_ms)?;
        if !(1..=self.refresh_interval_ms.min(RATES_TIMEOUT_MS_LIMIT)).contains(&self.timeout_ms) {
            return Err(InvalidKey::new(
                "timeout_ms",
                format!(
                    "{} is out of range: expected 1 to {}, at most refresh_interval_ms and {RATES_TIMEOUT_MS_LIMIT}",
                    self.timeout_ms,
                    self.refresh_interval_ms.min(RATES_TIMEOUT_MS_LIMIT)
                ),
            ));
        }
        let sources_len = u32::try_from(self.sources.len()).unwrap_or(u32::MAX);
        if !(1..=sources_len).contains(&self.quorum) {
            return Err(InvalidKey::new(
                "quorum",
                format!("{} is out of range: expected 1 to the number of sources ({sources_len})", self.quorum),
            ));
        }
        bps_in_range("outlier_bps", self.outlier_bps, RATES_OUTLIER_BPS_LIMIT)?;
        bps_in_range("depeg_bps", self.depeg_bps, RATES_DEPEG_BPS_LIMIT)?;
        check_stable_max_age(self.max_age_ms, self.stable_max_age_ms)?;
        let mut base_url = BTreeMap::new();
        for (name, value) in self.base_url {
            let key = format!("base_url.{name}");
            let source = LiveSource::ALL.into_iter().find(|s| s.name() == name).ok_or_else(|| {
                InvalidKey::new(&key, format!("unknown source {name:?}: expected coinbase, kraken, binance or coingecko"))
            })?;
            if !self.sources.contains(&source) {
                return Err(InvalidKey::new(&key, format!("{name} is not in sources")));
            }
            url::check(&value, &["http", "https"], false).map_err(|message| InvalidKey::new(&key, message))?;
            if value.contains(['?', '#']) {
                return Err(InvalidKey::new(&key, "a base url has no query or fragment"));
            }
            base_url.insert(source, value);
        }
        // Binance prices USD through USDT markets, which count only while USDT/USD is pegged.
        let usdt_usd = Pair { base: "USDT".to_owned(), quote: Fiat::USD };
        let binance_used = self.sources.contains(&LiveSource::Binance)
            && pairs.iter().any(|pair| LiveSource::Binance.supports(pair));
        if binance_used && !pairs.contains(&usdt_usd) {
            return Err(InvalidKey::new(
                "pairs",
                "binance prices USD through its USDT markets: add \"USDT/USD\" so that USDT's peg is checked",
            ));
        }
        for (index, pair) in pairs.iter().enumerate() {
            let able: Vec<&str> =
                self.sources.iter().filter(|source| source.supports(pair)).map(|source| source.name()).collect();
            if u32::try_from(able.len()).unwrap_or(u32::MAX) < self.quorum {
                return Err(InvalidKey::new(
                    format!("pairs[{index}]"),
                    format!(
                        "{pair} is listed by {} of the sources ({}), fewer than the quorum of {}",
                        able.len(),
                        if able.is_empty() { "none".to_owned() } else { able.join(", ") },
                        self.quorum
                    ),
                ));
            }
        }
        Ok(LiveRatesConfig {
            sources: self.sources,
            pairs,
            refresh_interval_ms: self.refresh_interval_ms,
            max_age_ms: self.max_age_ms,
            quorum: self.quorum,
            outlier_bps: self.outlier_bps,
            depeg_bps: self.depeg_bps,
            stable_max_age_ms: self.stable_max_age_ms,
            timeout_ms: self.timeout_ms,
            base_url,
        })
    }
}

impl FileFeedFile {
    /// Keys relative to `[rates.file]`.
    fn check(self) -> Result<FileRatesConfig, InvalidKey> {
        if self.path.trim().is_empty() || self.path.len() > RATES_FILE_PATH_LEN_MAX {
            return Err(InvalidKey::new(
                "path",
                format!("expected the path of a JSON file of pairs, 1 to {RATES_FILE_PATH_LEN_MAX} characters"),
            ));
        }
        check_refresh(self.refresh_interval_ms, self.max_age_ms)?;
        bps_in_range("depeg_bps", self.depeg_bps, RATES_DEPEG_BPS_LIMIT)?;
        check_stable_max_age(self.max_age_ms, self.stable_max_age_ms)?;
        Ok(FileRatesConfig {
            path: PathBuf::from(self.path),
            refresh_interval_ms: self.refresh_interval_ms,
            max_age_ms: self.max_age_ms,
            depeg_bps: self.depeg_bps,
            stable_max_age_ms: self.stable_max_age_ms,
        })
    }
}

/// `"BTC/USD"` → ("BTC", USD).
fn parse_pair(pair: &str) -> Result<(String, Fiat), String> {
    let pair: Pair = pair.parse().map_err(|e: crate::money::PairError| e.to_string())?;
    Ok((pair.base, pair.quote))
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

/// The environment variable that holds Stripe's secret API key (never the file).
pub const ENV_STRIPE_SECRET_KEY: &str = "PAYRAIL_STRIPE_SECRET_KEY";
/// The environment variable that holds the signing secret of Stripe's webhook endpoint.
pub const ENV_STRIPE_WEBHOOK_SECRET: &str = "PAYRAIL_STRIPE_WEBHOOK_SECRET";
/// Stripe's API, unless `[stripe] api_base` says otherwise (localstripe in tests).
pub const STRIPE_API_BASE_DEFAULT: &str = "https://api.stripe.com";
/// How far a webhook's signed timestamp may stray from our clock (Stripe's own libraries use 300 s).
pub const STRIPE_WEBHOOK_TOLERANCE_S_DEFAULT: u64 = 300;
/// Widest webhook tolerance: 1 hour. Wider, and a captured delivery stays replayable for too long.
pub const STRIPE_WEBHOOK_TOLERANCE_S_LIMIT: u64 = 3_600;
/// Timeout of one call to Stripe's API.
pub const STRIPE_TIMEOUT_MS_DEFAULT: u64 = 20_000;
pub const STRIPE_TIMEOUT_MS_LIMIT: u64 = 120_000;
/// Longest secret accepted from the environment.
pub const STRIPE_SECRET_LEN_MAX: usize = 512;

/// How the checkout page takes a card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CardCheckout {
    /// `test_cards` with a test-mode key (`sk_test_…`), `session` otherwise.
    #[default]
    Auto,
    /// A Stripe Checkout Session: the payer enters the card on Stripe's own page.
    Session,
    /// Stripe's test payment methods (`pm_card_visa`, …) confirmed by the daemon: test mode only,
    /// no card number ever reaches payrail.
    TestCards,
}

/// A secret read from the environment. `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself, for the one place that sends or uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// `[stripe]`: the card rail. Every key is optional; the rail is on when the environment holds a
/// secret key, and then needs the webhook secret too.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct StripeFile {
    api_base: Option<String>,
    webhook_tolerance_s: Option<u64>,
    timeout_ms: Option<u64>,
    #[serde(default)]
    checkout: CardCheckout,
    /// Present only to be refused with a pointer to the environment.
    secret_key: Option<de::IgnoredAny>,
    webhook_secret: Option<de::IgnoredAny>,
}

/// The checked `[stripe]` section.
#[derive(Clone, PartialEq, Eq)]
pub struct StripeConfig {
    /// Base URL of Stripe's API, without a trailing slash.
    pub api_base: String,
    pub webhook_tolerance_s: u64,
    pub timeout_ms: u64,
    /// `Auto` resolved against the key's mode.
    pub checkout: CardCheckout,
    secret_key: Option<SecretString>,
    webhook_secret: Option<SecretString>,
}

impl StripeConfig {
    /// Whether the card rail is configured.
    pub fn enabled(&self) -> bool {
        self.secret_key.is_some()
    }

    pub fn secret_key(&self) -> Option<&SecretString> {
        self.secret_key.as_ref()
    }

    pub fn webhook_secret(&self) -> Option<&SecretString> {
        self.webhook_secret.as_ref()
    }

    /// Whether the key is a test-mode key (no real money moves).
    pub fn test_mode(&self) -> bool {
        self.secret_key.as_ref().is_some_and(|k| is_test_key(k.expose()))
    }
}

impl Default for StripeConfig {
    fn default() -> Self {
        Self {
            api_base: STRIPE_API_BASE_DEFAULT.to_owned(),
            webhook_tolerance_s: STRIPE_WEBHOOK_TOLERANCE_S_DEFAULT,
            timeout_ms: STRIPE_TIMEOUT_MS_DEFAULT,
            checkout: CardCheckout::Session,
            secret_key: None,
            webhook_secret: None,
        }
    }
}

impl fmt::Debug for StripeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StripeConfig")
            .field("api_base", &url::redact_endpoint(&self.api_base))
            .field("webhook_tolerance_s", &self.webhook_tolerance_s)
            .field("timeout_ms", &self.timeout_ms)
            .field("checkout", &self.checkout)
            .field("secret_key", &self.secret_key)
            .field("webhook_secret", &self.webhook_secret)
            .finish()
    }
}

fn is_test_key(key: &str) -> bool {
    key.starts_with("sk_test_") || key.starts_with("rk_test_")
}

/// A secret from the environment: printable ASCII without spaces, with one of `prefixes`.
fn check_secret(key: &str, var: &str, value: &str, prefixes: &[&str]) -> Result<SecretString, InvalidKey> {
    let printable = value.bytes().all(|b| b.is_ascii_graphic());
    if value.is_empty() || value.len() > STRIPE_SECRET_LEN_MAX || !printable {
        return Err(InvalidKey::new(
            key,
            format!("{var} must be 1 to {STRIPE_SECRET_LEN_MAX} printable characters without spaces"),
        ));
    }
    if !prefixes.iter().any(|p| value.starts_with(p)) {
        // The value is a secret: the message names the expected shape, never the value.
        return Err(InvalidKey::new(key, format!("{var} must start with {}", prefixes.join(" or "))));
    }
    Ok(SecretString::new(value))
}

impl StripeFile {
    /// Keys relative to `[stripe]`. The secrets come from the environment, never from the file.
    pub(crate) fn check(self, secret_key: Option<&str>, webhook_secret: Option<&str>) -> Result<StripeConfig, InvalidKey> {
        if self.secret_key.is_some() {
            return Err(InvalidKey::new(
                "secret_key",
                format!("secrets are not read from the file: set {ENV_STRIPE_SECRET_KEY} in the environment"),
            ));
        }
        if self.webhook_secret.is_some() {
            return Err(InvalidKey::new(
                "webhook_secret",
                format!("secrets are not read from the file: set {ENV_STRIPE_WEBHOOK_SECRET} in the environment"),
            ));
        }
        let mut api_base = self.api_base.unwrap_or_else(|| STRIPE_API_BASE_DEFAULT.to_owned());
        url::check(&api_base, &["http", "https"], false).map_err(|message| InvalidKey::new("api_base", message))?;
        if api_base.contains(['?', '#']) {
            return Err(InvalidKey::new("api_base", "a base url has no query or fragment"));
        }
        while api_base.ends_with('/') {
            api_base.pop();
        }
        let webhook_tolerance_s = self.webhook_tolerance_s.unwrap_or(STRIPE_WEBHOOK_TOLERANCE_S_DEFAULT);
        in_range("webhook_tolerance_s", webhook_tolerance_s, STRIPE_WEBHOOK_TOLERANCE_S_LIMIT)?;
        let timeout_ms = self.timeout_ms.unwrap_or(STRIPE_TIMEOUT_MS_DEFAULT);
        in_range("timeout_ms", timeout_ms, STRIPE_TIMEOUT_MS_LIMIT)?;
        let secret_key = secret_key
            .map(|v| check_secret("secret_key", ENV_STRIPE_SECRET_KEY, v, &["sk_", "rk_"]))
            .transpose()?;
        let webhook_secret = webhook_secret
            .map(|v| check_secret("webhook_secret", ENV_STRIPE_WEBHOOK_SECRET, v, &["whsec_"]))
            .transpose()?;
        match (&secret_key, &webhook_secret) {
            (Some(_), None) => {
                return Err(InvalidKey::new(
                    "webhook_secret",
                    format!(
                        "{ENV_STRIPE_SECRET_KEY} is set but {ENV_STRIPE_WEBHOOK_SECRET} is not: without it no card \
                         payment could ever be confirmed"
                    ),
                ))
            }
            (None, Some(_)) => {
                return Err(InvalidKey::new(
                    "secret_key",
                    format!("{ENV_STRIPE_WEBHOOK_SECRET} is set but {ENV_STRIPE_SECRET_KEY} is not"),
                ))
            }
            _ => {}
        }
        let test_mode = secret_key.as_ref().is_some_and(|k| is_test_key(k.expose()));
        let checkout = match self.checkout {
            CardCheckout::Auto if test_mode => CardCheckout::TestCards,
            CardCheckout::Auto => CardCheckout::Session,
            CardCheckout::TestCards if secret_key.is_some() && !test_mode => {
                return Err(InvalidKey::new("checkout", "\"test_cards\" needs a test-mode key (sk_test_…)"))
            }
            other => other,
        };
        Ok(StripeConfig { api_base, webhook_tolerance_s, timeout_ms, checkout, secret_key, webhook_secret })
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
            read_url: Some("postgres://app:swordfish@replica/payrail".to_owned()),
            read_pool_max: None,
        };
        let debug = format!("{db:?}");
        assert!(!debug.contains("hunter2") && !debug.contains("swordfish"), "{debug}");
        assert!(debug.contains("app:***@db/payrail"), "{debug}");
        assert!(debug.contains("app:***@replica/payrail"), "{debug}");
        assert_eq!(db.read_pool_max(), 4);
    }

    #[test]
    fn a_bad_database_url_is_reported_without_its_password() {
        let db = DatabaseConfig {
            url: "mysql://app:hunter2@db/payrail".to_owned(),
            pool_max: 4,
            read_url: None,
            read_pool_max: None,
        };
        let message = db.check().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.starts_with("key url:"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
        let db = DatabaseConfig {
            url: "postgres://app@db/payrail".to_owned(),
            pool_max: 4,
            read_url: Some("mysql://app:hunter2@replica/payrail".to_owned()),
            read_pool_max: None,
        };
        let message = db.check().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.starts_with("key read_url:"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }

    fn stripe(text: &str, key: Option<&str>, hook: Option<&str>) -> Result<StripeConfig, InvalidKey> {
        let file: StripeFile = toml::from_str(text).map_err(|e| InvalidKey::new("toml", e.to_string()))?;
        file.check(key, hook)
    }

    #[test]
    fn stripe_is_off_without_a_key_and_defaults_are_stripe() {
        let config = stripe("", None, None).expect("empty section");
        assert!(!config.enabled());
        assert_eq!(config.api_base, STRIPE_API_BASE_DEFAULT);
        assert_eq!(config.webhook_tolerance_s, STRIPE_WEBHOOK_TOLERANCE_S_DEFAULT);
        assert_eq!(config.checkout, CardCheckout::Session);
    }

    #[test]
    fn stripe_secrets_come_from_the_environment_only() {
        let config = stripe("api_base = \"http://127.0.0.1:8420/\"\n", Some("sk_test_abc"), Some("whsec_def"))
            .expect("configured");
        assert!(config.enabled() && config.test_mode());
        assert_eq!(config.api_base, "http://127.0.0.1:8420");
        assert_eq!(config.checkout, CardCheckout::TestCards);
        assert_eq!(config.secret_key().map(SecretString::expose), Some("sk_test_abc"));
        for text in ["secret_key = \"sk_test_x\"\n", "webhook_secret = \"whsec_x\"\n"] {
            let error = stripe(text, None, None).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(error.contains("not read from the file") && error.contains("PAYRAIL_STRIPE_"), "{error}");
            assert!(!error.contains("sk_test_x") && !error.contains("whsec_x"), "{error}");
        }
    }

    #[test]
    fn stripe_secrets_are_never_shown() {
        let config = stripe("", Some("sk_live_hunter2"), Some("whsec_hunter3")).expect("configured");
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2") && !debug.contains("hunter3"), "{debug}");
        assert_eq!(config.checkout, CardCheckout::Session);
        let error = stripe("", Some("pk_live_hunter2"), Some("whsec_x")).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("sk_") && !error.contains("hunter2"), "{error}");
    }

    #[test]
    fn stripe_refuses_half_a_configuration_and_test_cards_in_live_mode() {
        assert_eq!(stripe("", Some("sk_test_a"), None).err().map(|e| e.key), Some("webhook_secret".to_owned()));
        assert_eq!(stripe("", None, Some("whsec_a")).err().map(|e| e.key), Some("secret_key".to_owned()));
        assert_eq!(
            stripe("checkout = \"test_cards\"\n", Some("sk_live_a"), Some("whsec_a")).err().map(|e| e.key),
            Some("checkout".to_owned())
        );
        assert_eq!(stripe("webhook_tolerance_s = 0\n", None, None).err().map(|e| e.key), Some("webhook_tolerance_s".to_owned()));
        assert_eq!(stripe("api_base = \"ftp://x\"\n", None, None).err().map(|e| e.key), Some("api_base".to_owned()));
        assert!(stripe("bogus = 1\n", None, None).is_err());
        assert_eq!(stripe("checkout = \"session\"\n", Some("sk_test_a"), Some("whsec_a")).map(|c| c.checkout).ok(), Some(CardCheckout::Session));
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
