//! Crypto refunds, decided without I/O: how much of which payments a refund gives back, and the
//! ledger postings that reserve it.
//!
//! A refund is in one asset of the invoice. Its *value* (in the invoice's currency) is taken back
//! from that asset's payments **at the rate they were paid at**: `reserved = value × Σamount /
//! Σvalue` of the asset's payments (rounded down), spread over the payments newest first, each
//! payment's credit reversed in proportion (creators' shares and the platform fee too, as card
//! refunds are). What the payer receives can differ from `reserved` only when it is priced at
//! another moment (`current_rate`, `fiat`: at the rate when claimed) or given exactly (`custom`):
//! the merchant's balance pays or keeps the difference.

use crate::ledger::{reversal_delta, AccountCode, NewEntry, Posting, Side};
use crate::money::{mul_div, Amount, Rounding};

/// What the merchant asks to give back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundAmount {
    /// The crypto the payer sent, in proportion: all that is left, or `value` of it (invoice
    /// currency minor units) at the rate the payments were made at.
    RateThen { value: Option<Amount> },
    /// The value left to refund, at the rate when the payer claims.
    CurrentRate,
    /// `value` (invoice currency minor units) at the rate when the payer claims.
    Fiat { value: Amount },
    /// What was paid above the invoice's amount, at the rate it was paid at.
    Overpaid,
    /// Exactly `amount` of the asset (smallest units).
    Custom { amount: Amount },
}

impl RefundAmount {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::RateThen { .. } => "rate_then",
            Self::CurrentRate => "current_rate",
            Self::Fiat { .. } => "fiat",
            Self::Overpaid => "overpaid",
            Self::Custom { .. } => "custom",
        }
    }
}

/// A confirmed payment of the refund's asset that counts toward the invoice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refundable {
    pub payment_id: String,
    /// In the asset's smallest unit.
    pub amount: Amount,
    /// What it was worth in the invoice's currency when credited.
    pub value: Amount,
    /// What standing refunds already gave back of it.
    pub returned: Amount,
}

impl Refundable {
    fn remaining(&self) -> Amount {
        self.amount.saturating_sub(self.returned)
    }
}

/// A payment's part in a refund: `returned` more of it, on top of `before`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub payment_id: String,
    pub before: Amount,
    pub returned: Amount,
}

/// What a refund takes, decided when it is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// In the invoice's currency.
    pub value: Amount,
    /// Given back by the payments' credits, in the asset.
    pub reserved: Amount,
    /// What the payer receives; `None` until priced at claim.
    pub amount: Option<Amount>,
    /// Newest payment first; the order `payments` came in.
    pub parts: Vec<Part>,
}

/// Why a refund cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefundRefused {
    #[error("nothing of this asset is left to refund")]
    NothingLeft,
    #[error("the invoice was not overpaid in this asset")]
    NotOverpaid,
    #[error("{asked} is more than the {available} left to refund (invoice currency, minor units)")]
    Exceeds { asked: Amount, available: Amount },
    #[error("the amount is too small to send")]
    TooSmall,
    #[error("the payments carry no value to refund by; ask for a custom amount")]
    NoValue,
}

/// Decides the refund of `request` from `payments` (the asset's, newest first). `overpaid_value`
/// is what the invoice received above its amount, in its currency.
pub fn plan_reservation(payments: &[Refundable], request: &RefundAmount, overpaid_value: Amount) -> Result<Reservation, RefundRefused> {
    let total = Amount::checked_sum(payments.iter().map(|p| p.amount)).unwrap_or(Amount::MAX);
    let total_value = Amount::checked_sum(payments.iter().map(|p| p.value)).unwrap_or(Amount::MAX);
    let remaining = Amount::checked_sum(payments.iter().map(Refundable::remaining)).unwrap_or(Amount::MAX);
    if remaining.is_zero() {
        return Err(RefundRefused::NothingLeft);
    }
    let remaining_value = mul_div(remaining, total_value, total, Rounding::Down).unwrap_or(Amount::ZERO);
    // Asset units worth `value` at the rate the payments were made at.
    let at_rate_then = |value: Amount| -> Result<Amount, RefundRefused> {
        if total_value.is_zero() {
            return Err(RefundRefused::NoValue);
        }
        if value > remaining_value {
            return Err(RefundRefused::Exceeds { asked: value, available: remaining_value });
        }
        let units = mul_div(value, total, total_value, Rounding::Down).map_err(|_| RefundRefused::TooSmall)?;
        if units.is_zero() {
            return Err(RefundRefused::TooSmall);
        }
        Ok(units.min(remaining))
    };
    let (value, reserved, amount) = match request {
        RefundAmount::RateThen { value: None } => (remaining_value, remaining, Some(remaining)),
        RefundAmount::RateThen { value: Some(value) } => {
            let units = at_rate_then(*value)?;
            (*value, units, Some(units))
        }
        RefundAmount::CurrentRate => {
            if total_value.is_zero() {
                return Err(RefundRefused::NoValue);
            }
            (remaining_value, remaining, None)
        }
        RefundAmount::Fiat { value } => (*value, at_rate_then(*value)?, None),
        RefundAmount::Overpaid => {
            if overpaid_value.is_zero() {
                return Err(RefundRefused::NotOverpaid);
            }
            let value = overpaid_value.min(remaining_value);
            let units = at_rate_then(value)?;
            (value, units, Some(units))
        }
        RefundAmount::Custom { amount } => {
            if amount.is_zero() {
                return Err(RefundRefused::TooSmall);
            }
            let units = (*amount).min(remaining);
            (mul_div(units, total_value, total, Rounding::Down).unwrap_or(Amount::ZERO), units, Some(*amount))
        }
    };
    let mut left = reserved;
    let mut parts = Vec::new();
    for payment in payments {
        if left.is_zero() {
            break;
        }
        let take = payment.remaining().min(left);
        if take.is_zero() {
            continue;
        }
        left = left.saturating_sub(take);
        parts.push(Part { payment_id: payment.payment_id.clone(), before: payment.returned, returned: take });
    }
    Ok(Reservation { value, reserved, amount, parts })
}

/// The postings that take `part` back from a payment whose standing credit is `credit` (of
/// `whole`, the payment's amount): the credit reversed in proportion, with what it had booked on
/// an asset account held for the refund on `refund` instead.
pub fn part_postings(credit: &[Posting], part: &Part, whole: Amount, refund: &AccountCode) -> Vec<Posting> {
    let after = part.before.checked_add(part.returned).unwrap_or(Amount::MAX);
    reversal_delta(credit, part.before, after, whole)
        .into_iter()
        .map(|posting| {
            if posting.account.as_str().starts_with("assets:") {
                Posting { account: refund.clone(), ..posting }
            } else {
                posting
            }
        })
        .collect()
}

/// The postings that settle the difference between what the payments gave back (`reserved`) and
/// what the payer receives (`amount`), on the merchant's balance; nothing when they are equal.
pub fn difference_postings(merchant: &AccountCode, refund: &AccountCode, asset: &str, reserved: Amount, amount: Amount) -> Vec<Posting> {
    if amount > reserved {
        let more = amount.saturating_sub(reserved);
        vec![Posting::debit(merchant.clone(), asset, more), Posting::credit(refund.clone(), asset, more)]
    } else if reserved > amount {
        let less = reserved.saturating_sub(amount);
        vec![Posting::debit(refund.clone(), asset, less), Posting::credit(merchant.clone(), asset, less)]
    } else {
        Vec::new()
    }
}

/// An entry of `postings`, netted per account and asset (a refund over several payments touches
/// each share account once per payment, and the difference may go the other way).
pub fn merged_entry(key: String, kind: &str, memo: String, postings: Vec<Posting>) -> NewEntry {
    // (account, asset) -> (debits, credits), in first-seen order.
    let mut sums: Vec<(AccountCode, String, Amount, Amount)> = Vec::with_capacity(postings.len());
    for posting in postings {
        let index = match sums.iter().position(|(a, s, _, _)| *a == posting.account && *s == posting.asset) {
            Some(index) => index,
            None => {
                sums.push((posting.account.clone(), posting.asset.clone(), Amount::ZERO, Amount::ZERO));
                sums.len() - 1
            }
        };
        let slot = &mut sums[index];
        match posting.side {
            Side::Debit => slot.2 = slot.2.checked_add(posting.amount).unwrap_or(Amount::MAX),
            Side::Credit => slot.3 = slot.3.checked_add(posting.amount).unwrap_or(Amount::MAX),
        }
    }
    let mut entry = NewEntry::new(key, kind).memo(memo);
    for (account, asset, debits, credits) in sums {
        if debits > credits {
            entry = entry.debit(account, asset, debits.saturating_sub(credits));
        } else if credits > debits {
            entry = entry.credit(account, asset, credits.saturating_sub(debits));
        }
    }
    entry
}

#[cfg(test)]
mod tests;
