//! `Fiat`: an ISO 4217 currency from a built-in table, with its ISO minor units.
//!
//! Invariants:
//! - A `Fiat` can only be one of the table's entries, so its code is always three upper-case
//!   letters of a real currency and its minor units are the ISO 4217 exponent (USD 2, JPY 0,
//!   KWD 3). Fiat amounts elsewhere are `Amount`s in these minor units.
//! - Codes are case-sensitive: "usd" is refused rather than guessed, because the code is
//!   part of ledger account names and must have one spelling.
//! - The exponents are ISO's. Card processors deviate for a few currencies (for example
//!   ISK and HUF); adapters that talk to them convert at their edge.

use std::fmt;
use std::str::FromStr;

use super::serde_str::impl_serde_via_str;

/// Errors from parsing a currency code; each carries the refused code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FiatError {
    #[error("unknown currency code {code:?}")]
    Unknown { code: String },
    #[error("currency code {code:?} must be upper case")]
    NotUpperCase { code: String },
}

/// An ISO 4217 currency.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fiat {
    code: &'static str,
    minor_units: u8,
}

const fn fiat(code: &'static str, minor_units: u8) -> Fiat {
    Fiat { code, minor_units }
}

/// Supported currencies and their ISO 4217 minor units, sorted by code.
const TABLE: &[Fiat] = &[
    fiat("AED", 2),
    fiat("ARS", 2),
    fiat("AUD", 2),
    fiat("BDT", 2),
    fiat("BHD", 3),
    fiat("BRL", 2),
    fiat("CAD", 2),
    fiat("CHF", 2),
    fiat("CLP", 0),
    fiat("CNY", 2),
    fiat("COP", 2),
    fiat("CZK", 2),
    fiat("DKK", 2),
    fiat("EGP", 2),
    fiat("EUR", 2),
    fiat("GBP", 2),
    fiat("GHS", 2),
    fiat("HKD", 2),
    fiat("HUF", 2),
    fiat("IDR", 2),
    fiat("ILS", 2),
    fiat("INR", 2),
    fiat("IQD", 3),
    fiat("ISK", 0),
    fiat("JOD", 3),
    fiat("JPY", 0),
    fiat("KES", 2),
    fiat("KRW", 0),
    fiat("KWD", 3),
    fiat("LYD", 3),
    fiat("MAD", 2),
    fiat("MXN", 2),
    fiat("MYR", 2),
    fiat("NGN", 2),
    fiat("NOK", 2),
    fiat("NZD", 2),
    fiat("OMR", 3),
    fiat("PEN", 2),
    fiat("PHP", 2),
    fiat("PKR", 2),
    fiat("PLN", 2),
    fiat("PYG", 0),
    fiat("QAR", 2),
    fiat("RON", 2),
    fiat("SAR", 2),
    fiat("SEK", 2),
    fiat("SGD", 2),
    fiat("THB", 2),
    fiat("TND", 3),
    fiat("TRY", 2),
    fiat("TWD", 2),
    fiat("UAH", 2),
    fiat("UGX", 0),
    fiat("USD", 2),
    fiat("UYU", 2),
    fiat("VND", 0),
    fiat("XAF", 0),
    fiat("XOF", 0),
    fiat("ZAR", 2),
];

impl Fiat {
    pub const USD: Fiat = fiat("USD", 2);
    pub const EUR: Fiat = fiat("EUR", 2);
    pub const GBP: Fiat = fiat("GBP", 2);
    pub const JPY: Fiat = fiat("JPY", 0);

    /// The upper-case ISO 4217 code ("USD").
    pub const fn code(&self) -> &'static str {
        self.code
    }

    /// Digits after the decimal point: 2 for USD (cents), 0 for JPY, 3 for KWD.
    pub const fn minor_units(&self) -> u8 {
        self.minor_units
    }

    /// The asset name used in ledger postings ("iso4217:USD").
    pub fn ledger_asset(&self) -> String {
        format!("iso4217:{}", self.code)
    }

    /// Every supported currency, sorted by code.
    pub fn all() -> impl Iterator<Item = Fiat> {
        TABLE.iter().copied()
    }
}

impl fmt::Display for Fiat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code)
    }
}

impl FromStr for Fiat {
    type Err = FiatError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(found) = TABLE.iter().find(|f| f.code == s) {
            return Ok(*found);
        }
        let known_in_upper_case = TABLE.iter().any(|f| f.code.eq_ignore_ascii_case(s));
        if known_in_upper_case {
            Err(FiatError::NotUpperCase { code: s.to_owned() })
        } else {
            Err(FiatError::Unknown { code: s.to_owned() })
        }
    }
}

impl_serde_via_str!(Fiat);

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Fiat, FiatError> {
        s.parse()
    }

    #[test]
    fn required_currencies_have_their_iso_minor_units() {
        let expected = [
            ("USD", 2),
            ("EUR", 2),
            ("GBP", 2),
            ("JPY", 0),
            ("CHF", 2),
            ("CAD", 2),
            ("AUD", 2),
            ("NZD", 2),
            ("SEK", 2),
            ("NOK", 2),
            ("DKK", 2),
            ("PLN", 2),
            ("CZK", 2),
            ("HUF", 2),
            ("BRL", 2),
            ("MXN", 2),
            ("INR", 2),
            ("CNY", 2),
            ("HKD", 2),
            ("SGD", 2),
            ("KRW", 0),
            ("ZAR", 2),
            ("TRY", 2),
            ("AED", 2),
            ("ILS", 2),
            ("BHD", 3),
            ("KWD", 3),
            ("JOD", 3),
            ("OMR", 3),
            ("TND", 3),
            ("CLP", 0),
            ("ISK", 0),
            ("VND", 0),
            ("IDR", 2),
            ("THB", 2),
            ("PHP", 2),
            ("NGN", 2),
            ("ARS", 2),
            ("COP", 2),
            ("UAH", 2),
        ];
        for (code, minor_units) in expected {
            let currency = parse(code);
            assert_eq!(
                currency.map(|c| (c.code(), c.minor_units())),
                Ok((code, minor_units)),
                "{code}"
            );
        }
    }

    #[test]
    fn table_is_sorted_unique_and_well_formed() {
        for pair in TABLE.windows(2) {
            assert!(
                pair[0].code < pair[1].code,
                "{} before {}",
                pair[0].code,
                pair[1].code
            );
        }
        for f in TABLE {
            assert!(
                f.code.len() == 3 && f.code.bytes().all(|b| b.is_ascii_uppercase()),
                "{}",
                f.code
            );
            assert!(f.minor_units <= 3, "{}", f.code);
        }
        for constant in [Fiat::USD, Fiat::EUR, Fiat::GBP, Fiat::JPY] {
            assert_eq!(parse(constant.code()), Ok(constant));
        }
        assert_eq!(Fiat::all().count(), TABLE.len());
    }

    #[test]
    fn refuses_unknown_and_lower_case() {
        assert_eq!(
            parse("usd"),
            Err(FiatError::NotUpperCase {
                code: "usd".to_owned()
            })
        );
        assert_eq!(
            parse("Eur"),
            Err(FiatError::NotUpperCase {
                code: "Eur".to_owned()
            })
        );
        for bad in ["XXX", "BTC", "", "US", "USDT", " USD", "xyz"] {
            assert_eq!(
                parse(bad),
                Err(FiatError::Unknown {
                    code: bad.to_owned()
                }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn display_ledger_asset_and_serde() {
        assert_eq!(Fiat::USD.to_string(), "USD");
        assert_eq!(Fiat::USD.ledger_asset(), "iso4217:USD");
        assert_eq!(
            serde_json::to_string(&Fiat::JPY).ok().as_deref(),
            Some("\"JPY\"")
        );
        assert_eq!(
            serde_json::from_str::<Fiat>("\"KWD\"")
                .map(|f| f.minor_units())
                .ok(),
            Some(3)
        );
        assert!(serde_json::from_str::<Fiat>("\"usd\"").is_err());
    }
}
