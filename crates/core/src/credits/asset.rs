//! The asset id of a credit currency: `credit:{merchant_id}/{code}`.

use std::fmt;

/// Most decimals a credit currency may have.
pub const CREDIT_DECIMALS_MAX: u8 = 6;
/// Prefix of every credit asset id.
pub const CREDIT_ASSET_PREFIX: &str = "credit:";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("credit currency code {code:?} must be 2 to 32 characters of a-z, 0-9 and _, starting with a letter")]
pub struct CreditCodeError {
    pub code: String,
}

/// A merchant's credit currency as a ledger asset.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CreditAsset {
    merchant_id: String,
    code: String,
}

impl CreditAsset {
    /// `code` must be a valid currency code (see [`CreditAsset::valid_code`]).
    pub fn new(merchant_id: &str, code: &str) -> Result<Self, CreditCodeError> {
        if !Self::valid_code(code) {
            return Err(CreditCodeError { code: code.to_owned() });
        }
        Ok(Self { merchant_id: merchant_id.to_owned(), code: code.to_owned() })
    }

    /// 2 to 32 characters of `a-z`, `0-9` and `_`, starting with a letter.
    pub fn valid_code(code: &str) -> bool {
        (2..=32).contains(&code.len())
            && code.starts_with(|c: char| c.is_ascii_lowercase())
            && code.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    }

    /// Reads an asset id back; `None` when it is not a credit asset.
    pub fn parse(asset: &str) -> Option<Self> {
        let (merchant_id, code) = asset.strip_prefix(CREDIT_ASSET_PREFIX)?.split_once('/')?;
        crate::ids::is_id(merchant_id, "mer").then_some(())?;
        Self::new(merchant_id, code).ok()
    }

    pub fn merchant_id(&self) -> &str {
        &self.merchant_id
    }

    pub fn code(&self) -> &str {
        &self.code
    }
}

impl fmt::Display for CreditAsset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{CREDIT_ASSET_PREFIX}{}/{}", self.merchant_id, self.code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_bad_codes_are_refused() {
        let asset = CreditAsset::new("mer_0123456789abcdef", "coins").expect("valid");
        assert_eq!(asset.to_string(), "credit:mer_0123456789abcdef/coins");
        assert_eq!(CreditAsset::parse(&asset.to_string()), Some(asset));
        for code in ["", "c", "Coins", "1coins", "co-ins", "coins!", &"c".repeat(33)] {
            assert!(CreditAsset::new("mer_0123456789abcdef", code).is_err(), "{code:?}");
        }
        assert_eq!(CreditAsset::parse("eip155:1/slip44:60"), None);
        assert_eq!(CreditAsset::parse("credit:nobody/coins"), None);
    }
}
