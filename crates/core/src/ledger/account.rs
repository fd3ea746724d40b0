//! Account codes and the chart of accounts.
//!
//! An account code is `type:segment[:segment…]`, where the type fixes the normal side (assets and
//! expenses are debit-normal; liabilities, equity and revenue are credit-normal). Which accounts may
//! never go negative is decided here, once, from the code: every liability to a merchant or creator,
//! the unapplied balance and the payouts in flight. The database stores that decision next to the
//! account and enforces it on every balance row.

use std::fmt;
use std::str::FromStr;

use crate::money::{ChainId, Fiat};

use super::error::EntryError;

/// Longest account code accepted (the database's CHECK agrees).
pub const ACCOUNT_CODE_LEN_MAX: usize = 256;
/// How many balance rows an account is spread over, so concurrent writers rarely meet on one lock.
pub const BALANCE_SHARDS: i16 = 16;

/// The five account types of double-entry bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccountType {
    Assets,
    Liabilities,
    Equity,
    Revenue,
    Expenses,
}

impl AccountType {
    fn from_prefix(prefix: &str) -> Option<Self> {
        Some(match prefix {
            "assets" => Self::Assets,
            "liabilities" => Self::Liabilities,
            "equity" => Self::Equity,
            "revenue" => Self::Revenue,
            "expenses" => Self::Expenses,
            _ => return None,
        })
    }

    /// Debit-normal accounts grow with debits.
    pub fn is_debit_normal(self) -> bool {
        matches!(self, Self::Assets | Self::Expenses)
    }
}

/// A validated account code such as `liabilities:merchant:mer_…`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountCode(String);

impl AccountCode {
    /// What the platform holds of every asset on one chain.
    pub fn chain_assets(chain: &ChainId) -> Self {
        Self(format!("assets:chain:{chain}"))
    }
    /// Coins paid to addresses of the merchant's own wallet (Bitcoin, by its watch-only
    /// descriptor): the merchant holds them; its share of them is on [`Self::merchant`], and the
    /// rest — creators' shares and the platform's fee — is what it owes.
    pub fn held_by_merchant(merchant_id: &str) -> Self {
        Self(format!("assets:held_by_merchant:{merchant_id}"))
    }
    /// What card payments put at Stripe, per settlement currency.
    pub fn stripe(fiat: Fiat) -> Self {
        Self(format!("assets:stripe:{}", fiat.code().to_ascii_lowercase()))
    }
    /// What the platform owes a merchant.
    pub fn merchant(merchant_id: &str) -> Self {
        Self(format!("liabilities:merchant:{merchant_id}"))
    }
    /// Payments that arrived late, to an expired invoice or in an unexpected asset: owed to the
    /// merchant, held for review.
    pub fn unapplied(merchant_id: &str) -> Self {
        Self(format!("liabilities:unapplied:{merchant_id}"))
    }
    /// What the platform owes a creator.
    pub fn creator(creator_id: &str) -> Self {
        Self(format!("liabilities:creator:{creator_id}"))
    }
    /// What a crypto refund holds from when it is created until it is paid: the reversed credits
    /// of the payments it gives back, and any difference at the rate it is paid at.
    pub fn refund(refund_id: &str) -> Self {
        Self(format!("liabilities:refund:{refund_id}"))
    }
    /// One lot of credits granted to a customer (guarded: never below zero).
    pub fn credit_lot(lot_id: &str) -> Self {
        Self(format!("liabilities:credit_lot:{lot_id}"))
    }
    /// A merchant's credits outstanding, issued for money or as a bonus: debited when granted,
    /// credited back when they leave without being spent on the merchant.
    pub fn credits_issued(merchant_id: &str) -> Self {
        Self(format!("equity:credits_issued:{merchant_id}"))
    }
    /// Credits a merchant gave away at its own cost (rewards).
    pub fn rewards(merchant_id: &str) -> Self {
        Self(format!("expenses:rewards:{merchant_id}"))
    }
    /// A merchant's share of credits spent: revenue recognised when spent.
    pub fn credits_revenue(merchant_id: &str) -> Self {
        Self(format!("revenue:credits:{merchant_id}"))
    }
    /// Credits that expired unspent.
    pub fn breakage(merchant_id: &str) -> Self {
        Self(format!("revenue:breakage:{merchant_id}"))
    }
    pub fn payouts_in_flight() -> Self {
        Self("liabilities:payouts_in_flight".to_owned())
    }
    pub fn platform_fees() -> Self {
        Self("revenue:platform_fees".to_owned())
    }
    /// Where the dust of rounded-down shares goes, so every entry still sums to zero.
    pub fn rounding() -> Self {
        Self("revenue:rounding".to_owned())
    }
    pub fn network_fees() -> Self {
        Self("expenses:network_fees".to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn account_type(&self) -> AccountType {
        let prefix = self.0.split(':').next().unwrap_or_default();
        // Construction validated the prefix; `Assets` is never reached for a valid code.
        AccountType::from_prefix(prefix).unwrap_or(AccountType::Assets)
    }

    /// Accounts whose balance may never go below zero: the platform may not owe anyone a negative
    /// amount, and it may not send out more than it holds in flight.
    pub fn is_non_negative(&self) -> bool {
        self.0.starts_with("liabilities:")
    }

    /// Every account is spread over several balance rows; a guarded account keeps each row
    /// non-negative, so the guard holds for their sum.
    pub fn balance_shards(&self) -> i16 {
        BALANCE_SHARDS
    }
}

impl FromStr for AccountCode {
    type Err = EntryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || EntryError::InvalidAccount { code: s.to_owned() };
        if s.is_empty() || s.len() > ACCOUNT_CODE_LEN_MAX {
            return Err(invalid());
        }
        let mut segments = s.split(':');
        let prefix = segments.next().ok_or_else(invalid)?;
        AccountType::from_prefix(prefix).ok_or_else(invalid)?;
        let mut rest = 0;
        for segment in segments {
            let ok = !segment.is_empty()
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'/' | b'-'));
            if !ok {
                return Err(invalid());
            }
            rest += 1;
        }
        if rest == 0 {
            return Err(invalid());
        }
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Display for AccountCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_codes_parse_back() {
        let chain: ChainId = "eip155:137".parse().expect("valid caip-2");
        for code in [
            AccountCode::chain_assets(&chain),
            AccountCode::merchant("mer_abc"),
            AccountCode::unapplied("mer_abc"),
            AccountCode::creator("cr_x"),
            AccountCode::payouts_in_flight(),
            AccountCode::platform_fees(),
            AccountCode::network_fees(),
            AccountCode::rounding(),
        ] {
            let back: AccountCode = code.as_str().parse().expect("chart code is valid");
            assert_eq!(back, code);
        }
    }

    #[test]
    fn guard_and_sides_follow_the_type() {
        assert!(AccountCode::merchant("m").is_non_negative());
        assert!(!AccountCode::platform_fees().is_non_negative());
        assert!(AccountCode::network_fees().account_type().is_debit_normal());
        assert!(!AccountCode::merchant("m").account_type().is_debit_normal());
        assert_eq!(AccountCode::platform_fees().balance_shards(), BALANCE_SHARDS);
    }

    #[test]
    fn bad_codes_are_refused() {
        for bad in ["", "assets", "cash:x", "assets::x", "assets:x y", "assets:é", "liabilities:"] {
            assert!(bad.parse::<AccountCode>().is_err(), "{bad} accepted");
        }
    }
}
