//! `Pair`: an asset symbol priced in a fiat currency, spelt "BTC/USD".
//!
//! Invariant: `base` is 1 to [`SYMBOL_LEN_MAX`] characters of `[A-Z0-9]` (the rule of the
//! chain files' symbols), and `quote` is an ISO 4217 currency; one pair has one spelling.

use std::fmt;
use std::str::FromStr;

use crate::money::{Fiat, FiatError};

/// Longest asset symbol, as in the chain files.
pub const SYMBOL_LEN_MAX: usize = 11;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pair {
    pub base: String,
    pub quote: Fiat,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PairError {
    #[error(
        "{input:?} is not a pair: expected \"BASE/QUOTE\" with an upper-case asset symbol of 1 to \
         {SYMBOL_LEN_MAX} characters and an ISO 4217 code, e.g. \"BTC/USD\""
    )]
    Syntax { input: String },
    #[error("{input:?}: {reason}")]
    Currency {
        input: String,
        #[source]
        reason: FiatError,
    },
}

pub(crate) fn is_valid_symbol(symbol: &str) -> bool {
    (1..=SYMBOL_LEN_MAX).contains(&symbol.len())
        && symbol.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

impl Pair {
    pub fn new(base: &str, quote: Fiat) -> Result<Pair, PairError> {
        if !is_valid_symbol(base) {
            return Err(PairError::Syntax { input: format!("{base}/{quote}") });
        }
        Ok(Pair { base: base.to_owned(), quote })
    }
}

impl fmt::Display for Pair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.quote)
    }
}

impl FromStr for Pair {
    type Err = PairError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || PairError::Syntax { input: s.to_owned() };
        let (base, quote) = s.split_once('/').ok_or_else(syntax)?;
        if !is_valid_symbol(base) {
            return Err(syntax());
        }
        let quote: Fiat = quote.parse().map_err(|reason| PairError::Currency { input: s.to_owned(), reason })?;
        Ok(Pair { base: base.to_owned(), quote })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_parse_and_display_in_one_spelling() {
        let pair: Pair = "BTC/USD".parse().expect("pair");
        assert_eq!(pair, Pair { base: "BTC".to_owned(), quote: Fiat::USD });
        assert_eq!(pair.to_string(), "BTC/USD");
        for bad in ["BTCUSD", "btc/USD", "BTC/usd", "BTC/XXX", "/USD", "BTC/", "BTC/USD/EUR", "ABCDEFGHIJKL/USD"] {
            assert!(bad.parse::<Pair>().is_err(), "{bad}");
        }
        assert!(Pair::new("eth", Fiat::USD).is_err());
    }
}
