//! Journal entries as the daemon builds them, before they reach the database.
//!
//! Invariants checked here (and again by the database): an entry has 2..=[`POSTINGS_PER_ENTRY_MAX`]
//! postings, no posting is zero, and for every asset the debits equal the credits. The fingerprint is
//! a SHA-256 over the entry's canonical content, so a retry under the same idempotency key can be told
//! apart from a different entry that reuses the key by mistake.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::money::Amount;

use super::account::AccountCode;
use super::error::{EntryError, Result};
use super::signed::SignedAmount;

/// Most postings in one entry: a payout batch or a revenue split stays well below this.
pub const POSTINGS_PER_ENTRY_MAX: usize = 512;
/// Longest idempotency key.
pub const IDEMPOTENCY_KEY_LEN_MAX: usize = 256;
/// Longest asset identifier (CAIP-19 or `iso4217:XXX`).
pub const ASSET_LEN_MAX: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    Debit,
    Credit,
}

/// One line of an entry: `amount` of `asset` debited or credited to `account`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posting {
    pub account: AccountCode,
    pub asset: String,
    pub side: Side,
    pub amount: Amount,
}

impl Posting {
    pub fn debit(account: AccountCode, asset: impl Into<String>, amount: Amount) -> Self {
        Self { account, asset: asset.into(), side: Side::Debit, amount }
    }

    pub fn credit(account: AccountCode, asset: impl Into<String>, amount: Amount) -> Self {
        Self { account, asset: asset.into(), side: Side::Credit, amount }
    }

    /// Debits are stored positive, credits negative.
    pub fn signed_amount(&self) -> SignedAmount {
        match self.side {
            Side::Debit => SignedAmount::positive(self.amount),
            Side::Credit => SignedAmount::negative(self.amount),
        }
    }

    /// The same line on the other side, for reversals.
    pub fn reversed(&self) -> Self {
        let side = match self.side {
            Side::Debit => Side::Credit,
            Side::Credit => Side::Debit,
        };
        Self { side, ..self.clone() }
    }
}

/// An entry to post. `kind` names the business event (`payment`, `payout`, `reversal`, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEntry {
    pub idempotency_key: String,
    pub kind: String,
    pub memo: Option<String>,
    pub postings: Vec<Posting>,
    pub reverses_entry_id: Option<i64>,
}

impl NewEntry {
    pub fn new(idempotency_key: impl Into<String>, kind: impl Into<String>) -> Self {
        Self {
            idempotency_key: idempotency_key.into(),
            kind: kind.into(),
            memo: None,
            postings: Vec::new(),
            reverses_entry_id: None,
        }
    }

    pub fn memo(mut self, memo: impl Into<String>) -> Self {
        self.memo = Some(memo.into());
        self
    }

    pub fn debit(mut self, account: AccountCode, asset: impl Into<String>, amount: Amount) -> Self {
        self.postings.push(Posting::debit(account, asset, amount));
        self
    }

    pub fn credit(mut self, account: AccountCode, asset: impl Into<String>, amount: Amount) -> Self {
        self.postings.push(Posting::credit(account, asset, amount));
        self
    }

    /// Checks every invariant that does not need the database.
    pub fn validate(&self) -> Result<()> {
        let invalid = |reason: String| EntryError::InvalidEntry { key: self.idempotency_key.clone(), reason };
        if self.idempotency_key.is_empty() || self.idempotency_key.len() > IDEMPOTENCY_KEY_LEN_MAX {
            return Err(invalid(format!("idempotency key must be 1..={IDEMPOTENCY_KEY_LEN_MAX} bytes")));
        }
        if self.kind.is_empty() || self.kind.len() > 64 {
            return Err(invalid("kind must be 1..=64 bytes".to_owned()));
        }
        if !(2..=POSTINGS_PER_ENTRY_MAX).contains(&self.postings.len()) {
            return Err(invalid(format!(
                "an entry needs 2..={POSTINGS_PER_ENTRY_MAX} postings, got {}",
                self.postings.len()
            )));
        }
        let mut sums: BTreeMap<&str, SignedAmount> = BTreeMap::new();
        for posting in &self.postings {
            if posting.amount.is_zero() {
                return Err(invalid(format!("zero posting to {}", posting.account)));
            }
            if posting.asset.is_empty() || posting.asset.len() > ASSET_LEN_MAX {
                return Err(invalid(format!("asset must be 1..={ASSET_LEN_MAX} bytes")));
            }
            let sum = sums.entry(posting.asset.as_str()).or_insert(SignedAmount::ZERO);
            *sum = sum
                .checked_add(posting.signed_amount())
                .ok_or_else(|| invalid(format!("postings in {} overflow 256 bits", posting.asset)))?;
        }
        if let Some((asset, _)) = sums.iter().find(|(_, sum)| **sum != SignedAmount::ZERO) {
            return Err(EntryError::Unbalanced { key: self.idempotency_key.clone(), asset: (*asset).to_owned() });
        }
        Ok(())
    }

    /// SHA-256 of kind, reversed entry and the postings in canonical order. The memo is descriptive
    /// and left out.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut lines: Vec<String> = self
            .postings
            .iter()
            .map(|p| format!("{}\u{1f}{}\u{1f}{}", p.account, p.asset, p.signed_amount()))
            .collect();
        lines.sort();
        let mut hasher = Sha256::new();
        hasher.update(self.kind.as_bytes());
        hasher.update([0x1e]);
        hasher.update(self.reverses_entry_id.map(|id| id.to_string()).unwrap_or_default().as_bytes());
        for line in lines {
            hasher.update([0x1e]);
            hasher.update(line.as_bytes());
        }
        hasher.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd() -> String {
        "iso4217:USD".to_owned()
    }

    #[test]
    fn balanced_entry_passes() {
        let entry = NewEntry::new("k1", "test")
            .debit(AccountCode::platform_fees(), usd(), Amount::from_u64(5))
            .credit(AccountCode::merchant("m"), usd(), Amount::from_u64(5));
        entry.validate().expect("balanced");
    }

    #[test]
    fn unbalanced_entry_names_the_asset() {
        let entry = NewEntry::new("k1", "test")
            .debit(AccountCode::platform_fees(), usd(), Amount::from_u64(5))
            .credit(AccountCode::merchant("m"), usd(), Amount::from_u64(4))
            .debit(AccountCode::platform_fees(), "iso4217:EUR", Amount::from_u64(1))
            .credit(AccountCode::merchant("m"), "iso4217:EUR", Amount::from_u64(1));
        match entry.validate() {
            Err(EntryError::Unbalanced { asset, .. }) => assert_eq!(asset, "iso4217:USD"),
            other => panic!("expected unbalanced, got {other:?}"),
        }
    }

    #[test]
    fn balance_is_per_asset() {
        let entry = NewEntry::new("k1", "test")
            .debit(AccountCode::platform_fees(), usd(), Amount::from_u64(5))
            .credit(AccountCode::merchant("m"), "iso4217:EUR", Amount::from_u64(5));
        assert!(matches!(entry.validate(), Err(EntryError::Unbalanced { .. })));
    }

    #[test]
    fn zero_postings_and_single_postings_are_refused() {
        let zero = NewEntry::new("k", "t")
            .debit(AccountCode::platform_fees(), usd(), Amount::ZERO)
            .credit(AccountCode::merchant("m"), usd(), Amount::ZERO);
        assert!(matches!(zero.validate(), Err(EntryError::InvalidEntry { .. })));
        let single = NewEntry::new("k", "t").debit(AccountCode::platform_fees(), usd(), Amount::from_u64(1));
        assert!(matches!(single.validate(), Err(EntryError::InvalidEntry { .. })));
    }

    #[test]
    fn fingerprint_ignores_order_and_memo_but_not_amounts() {
        let a = NewEntry::new("k", "t")
            .debit(AccountCode::platform_fees(), usd(), Amount::from_u64(5))
            .credit(AccountCode::merchant("m"), usd(), Amount::from_u64(5));
        let b = NewEntry::new("k", "t")
            .credit(AccountCode::merchant("m"), usd(), Amount::from_u64(5))
            .debit(AccountCode::platform_fees(), usd(), Amount::from_u64(5))
            .memo("note");
        let c = NewEntry::new("k", "t")
            .debit(AccountCode::platform_fees(), usd(), Amount::from_u64(6))
            .credit(AccountCode::merchant("m"), usd(), Amount::from_u64(6));
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
    }
}
