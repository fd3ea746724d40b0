//! Credits: currencies a merchant issues to its customers (coins), granted in lots, spent first
//! from the lot that expires first, and split like payments when spent. Pure: what a grant, a
//! spend, a transfer or an expiry posts; the credits store applies it.
//!
//! A credit currency is an asset of its own, `credit:{merchant_id}/{code}`, so the ledger keeps
//! it apart from money and balances each entry per asset as it does for coins and tokens. Every lot
//! is a guarded liability account `liabilities:credit_lot:{lot_id}`: the ledger refuses any entry
//! that would take a lot below zero, whatever the callers did.
//!
//! Chart of the credit asset: a grant for money or a bonus debits `equity:credits_issued:{merchant}`
//! (the merchant's credits outstanding, negative while credits are out); a merchant-funded reward
//! debits `expenses:rewards:{merchant}`; a spend credits the shares of creators and the platform
//! and the merchant's own share to `revenue:credits:{merchant}` (revenue recognised when spent); an
//! expiry credits `revenue:breakage:{merchant}`.

pub mod asset;
pub mod plan;

pub use asset::{CreditAsset, CreditCodeError, CREDIT_DECIMALS_MAX};
pub use plan::{consume, sort_for_spending, Consumed, LotBalance, Shortfall};
