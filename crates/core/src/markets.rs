//! The price sources payrail can read and the markets each lists: static knowledge that both the
//! configuration (is every pair listed by a quorum of sources?) and the feeds (which market to ask
//! for) use, so neither has to know the other.

use crate::money::{Fiat, Pair};

/// Timeout of one request when the configuration does not say.
pub const FEED_TIMEOUT_MS_DEFAULT: u64 = 5_000;

/// The exchange and price APIs payrail can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LiveSource {
    Coinbase,
    Kraken,
    Binance,
    #[serde(rename = "coingecko")]
    CoinGecko,
}

impl LiveSource {
    pub const ALL: [LiveSource; 4] = [LiveSource::Coinbase, LiveSource::Kraken, LiveSource::Binance, LiveSource::CoinGecko];

    /// The name in the configuration, in quotes and in metrics: "coinbase".
    pub fn name(self) -> &'static str {
        match self {
            LiveSource::Coinbase => coinbase::NAME,
            LiveSource::Kraken => kraken::NAME,
            LiveSource::Binance => binance::NAME,
            LiveSource::CoinGecko => coingecko::NAME,
        }
    }

    /// The real API host.
    pub fn default_base_url(self) -> &'static str {
        match self {
            LiveSource::Coinbase => coinbase::COINBASE_BASE_URL,
            LiveSource::Kraken => kraken::KRAKEN_BASE_URL,
            LiveSource::Binance => binance::BINANCE_BASE_URL,
            LiveSource::CoinGecko => coingecko::COINGECKO_BASE_URL,
        }
    }

    /// Whether this source lists a market for `pair`.
    pub fn supports(self, pair: &Pair) -> bool {
        match self {
            LiveSource::Coinbase => coinbase::currency(&pair.base).is_some(),
            LiveSource::Kraken => kraken::market(pair).is_some(),
            LiveSource::Binance => binance::market(pair).is_some(),
            LiveSource::CoinGecko => coingecko::coin_id(&pair.base).is_some() && coingecko::vs_currency(pair.quote).is_some(),
        }
    }
}

impl std::fmt::Display for LiveSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

pub mod coinbase {

    pub const NAME: &str = "coinbase";
    /// The real API host.
    pub const COINBASE_BASE_URL: &str = "https://api.coinbase.com";

    /// Coinbase's currency code for a payrail asset symbol; `None` where it has no market.
    /// MATIC became POL on Coinbase in September 2024.
    pub fn currency(symbol: &str) -> Option<&'static str> {
        match symbol {
            "BTC" => Some("BTC"),
            "ETH" => Some("ETH"),
            "POL" | "MATIC" => Some("POL"),
            "USDC" => Some("USDC"),
            "USDT" => Some("USDT"),
            "DAI" => Some("DAI"),
            _ => None,
        }
    }
}

pub mod kraken {
    use super::{Fiat, Pair};

    pub const NAME: &str = "kraken";
    /// The real API host.
    pub const KRAKEN_BASE_URL: &str = "https://api.kraken.com";

    /// Kraken's asset code for a payrail symbol; `None` where Kraken has no market.
    pub fn asset(symbol: &str) -> Option<&'static str> {
        match symbol {
            "BTC" => Some("XBT"),
            "ETH" => Some("ETH"),
            "POL" | "MATIC" => Some("POL"),
            "USDC" => Some("USDC"),
            "USDT" => Some("USDT"),
            "DAI" => Some("DAI"),
            _ => None,
        }
    }

    pub fn currency(quote: Fiat) -> Option<&'static str> {
        match quote.code() {
            "USD" => Some("USD"),
            "EUR" => Some("EUR"),
            _ => None,
        }
    }

    /// The pair name to ask for, and the names Kraken may answer under.
    pub fn market(pair: &Pair) -> Option<(String, [String; 3])> {
        let asset = asset(&pair.base)?;
        let currency = currency(pair.quote)?;
        let request = format!("{asset}{currency}");
        Some((request.clone(), [request, format!("X{asset}Z{currency}"), format!("{asset}Z{currency}")]))
    }
}

pub mod binance {
    use super::{Fiat, Pair};

    pub const NAME: &str = "binance";
    /// The real API host.
    pub const BINANCE_BASE_URL: &str = "https://api.binance.com";
    /// The currency Binance's markets are quoted in, standing in for USD.
    pub const PROXY: &str = "USDT";

    /// Binance's symbol for a payrail asset; `None` where it has no USDT market (and USDT itself).
    pub fn asset(symbol: &str) -> Option<&'static str> {
        match symbol {
            "BTC" => Some("BTC"),
            "ETH" => Some("ETH"),
            "POL" | "MATIC" => Some("POL"),
            "BNB" => Some("BNB"),
            "USDC" => Some("USDC"),
            _ => None,
        }
    }

    pub fn market(pair: &Pair) -> Option<String> {
        if pair.quote != Fiat::USD {
            return None;
        }
        asset(&pair.base).map(|asset| format!("{asset}{PROXY}"))
    }
}

pub mod coingecko {
    use super::Fiat;

    pub const NAME: &str = "coingecko";
    /// The real API host (the public API; a Pro key uses `https://pro-api.coingecko.com`).
    pub const COINGECKO_BASE_URL: &str = "https://api.coingecko.com";

    /// CoinGecko's coin id for a payrail symbol.
    pub fn coin_id(symbol: &str) -> Option<&'static str> {
        match symbol {
            "BTC" => Some("bitcoin"),
            "ETH" => Some("ethereum"),
            "POL" | "MATIC" => Some("polygon-ecosystem-token"),
            "BNB" => Some("binancecoin"),
            "USDC" => Some("usd-coin"),
            "USDT" => Some("tether"),
            "DAI" => Some("dai"),
            _ => None,
        }
    }

    /// The fiat currencies CoinGecko quotes in (its `vs_currencies`), upper case.
    pub const VS_CURRENCIES: &[&str] = &[
        "AED", "ARS", "AUD", "BDT", "BHD", "BRL", "CAD", "CHF", "CLP", "CNY", "CZK", "DKK", "EUR", "GBP", "HKD", "HUF",
        "IDR", "ILS", "INR", "JPY", "KRW", "KWD", "MXN", "MYR", "NGN", "NOK", "NZD", "PHP", "PKR", "PLN", "SAR", "SEK",
        "SGD", "THB", "TRY", "TWD", "UAH", "USD", "VND", "ZAR",
    ];

    pub fn vs_currency(quote: Fiat) -> Option<String> {
        VS_CURRENCIES.contains(&quote.code()).then(|| quote.code().to_ascii_lowercase())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_names_round_trip_through_serde() {
        for source in LiveSource::ALL {
            let json = serde_json::to_string(&source).expect("serialize");
            assert_eq!(json, format!("\"{}\"", source.name()));
            assert_eq!(serde_json::from_str::<LiveSource>(&json).ok(), Some(source));
            assert!(source.default_base_url().starts_with("https://api."));
        }
    }
}
