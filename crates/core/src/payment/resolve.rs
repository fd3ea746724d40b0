//! Problem payments, resolved by the merchant — decided without I/O, written by the same store as
//! every other [`PaymentChange`].
//!
//! A payment held on the merchant's unapplied balance (late, to a closed invoice, in an asset the
//! invoice did not quote) stays money until the merchant says what it is for:
//! - [`plan_application`] applies it to an invoice — its own or another of the same merchant's. Its
//!   standing credit (to the unapplied balance) is reversed and its next generation is posted to
//!   the invoice's split, so the ledger shows what happened and the deposit keeps its
//!   `payment:{tx_ref}` key (reconciliation and a later reorg treat it as any credited payment).
//!   The invoice is judged again: enough applied to an expired invoice pays it.
//! - [`plan_settlement`] accepts an invoice as paid although less arrived (an underpayment, beyond
//!   the tolerance): the merchant's word replaces the threshold. Its held payments are applied to it
//!   first ([`plan_application`] with `any_asset`), so a late or wrong-asset payment counts too.
//! - [`plan_invalidation`] is the way back: the merchant does not accept what arrived. Each payment
//!   that counted toward the invoice is held on the unapplied balance again (a confirmed one's credit
//!   rebooked there, unsplit), to be applied elsewhere or refunded, and the invoice becomes
//!   `invalid` ([`plan_invalid_status`]).

use chrono::{DateTime, Utc};

use super::model::InvoiceRow;
use super::plan::{
    credit_key, credit_entry, judge, AppliedTo, Judge, LedgerChange, PaymentChange, PaymentEvent, PaymentStatus, PlanError,
    Quote, Result, RowChange, StatusMove, StoredPayment, UnappliedReason,
};
use super::status::InvoiceStatus;
use crate::money::{mul_div, Amount, Rounding};

/// The memo of the reversal that takes a held payment off the unapplied balance.
const APPLY_MEMO: &str = "applied to an invoice";
/// The memo of the reversal that takes a payment's credit off an invoice marked invalid.
const INVALID_MEMO: &str = "invoice marked invalid";

/// Whether a held payment may be applied to an invoice in `status`: any invoice that was not voided
/// or refunded (an expired one included: that is what a late payment is for).
pub fn may_receive(status: InvoiceStatus) -> bool {
    status.accepts_payments() || status == InvoiceStatus::Expired
}

/// The key of the reversal that takes credit `entry_id` of `tx_ref` off the unapplied balance.
pub fn application_key(tx_ref: &str, entry_id: i64) -> String {
    format!("apply:{tx_ref}:{entry_id}")
}

/// The key of the reversal that takes credit `entry_id` of `tx_ref` off an invoice marked invalid.
pub fn invalidation_key(tx_ref: &str, entry_id: i64) -> String {
    format!("invalid:{tx_ref}:{entry_id}")
}

/// Plans applying `stored` (confirmed, held as unapplied) to `target`, whose `quote` (with its
/// splits) is loaded. `stored.credits_reversed` must be loaded: the new credit is the next
/// generation. With `any_asset`, an asset `target` did not quote is applied too, worth nothing
/// toward its price (settling an invoice); without it such a payment is refused, as its value there
/// is unknown.
pub fn plan_application(
    target: &InvoiceRow,
    stored: &StoredPayment,
    quote: &Quote,
    any_asset: bool,
    now: DateTime<Utc>,
) -> Result<PaymentChange> {
    let refuse = |code, reason: String| Err(PlanError::Refused { code, reason });
    if stored.applied_to != AppliedTo::Unapplied {
        return refuse("payment_not_unapplied", format!("payment {} already counts toward an invoice", stored.id));
    }
    if stored.status != PaymentStatus::Confirmed {
        return refuse(
            "payment_not_confirmed",
            format!("payment {} is {}: only a confirmed payment can be applied", stored.id, stored.status),
        );
    }
    if !may_receive(target.status) {
        return refuse("invoice_state", format!("invoice {} is {} and cannot receive a payment", target.id, target.status));
    }
    let quoted = quote.assets.iter().find(|a| a.asset == stored.asset).map(|a| a.quoted);
    let value = match quoted {
        Some(quoted) => mul_div(stored.amount, target.amount_minor, quoted, Rounding::Down)
            .map_err(|e| PlanError::Invalid { field: "amount", reason: format!("cannot be valued: {e}") })?,
        None if any_asset => Amount::ZERO,
        None => {
            return refuse(
                "asset_not_quoted",
                format!("invoice {} did not quote {}; mark its own invoice settled to accept it", target.id, stored.asset),
            )
        }
    };
    let entry_id = stored
        .ledger_entry_id
        .ok_or_else(|| PlanError::Corrupt { column: "ledger_entry_id", value: format!("none on confirmed {}", stored.id) })?;
    let reversed = stored.credits_reversed.ok_or_else(|| PlanError::NotLoaded { fact: "credit history", tx_ref: stored.tx_ref.clone() })?;
    // The standing credit is generation `reversed + 1`; its successor takes the next key.
    let generation = reversed.saturating_add(2);
    credit_key(&stored.tx_ref, generation)?;
    let credit =
        credit_entry(target, &stored.id, stored.money(), AppliedTo::Invoice, quote.splits.as_ref(), generation)?;
    let after = quote.moved(&stored.asset, stored.amount, None, Some(PaymentStatus::Confirmed))?;
    Ok(PaymentChange {
        payment_id: stored.id.clone(),
        tx_ref: stored.tx_ref.clone(),
        invoice_id: target.id.clone(),
        merchant_id: target.merchant_id.clone(),
        applied_to: AppliedTo::Invoice,
        ledger: Some(LedgerChange::Rebook {
            entry_id,
            key: application_key(&stored.tx_ref, entry_id),
            memo: APPLY_MEMO,
            credit,
        }),
        row: Some(RowChange::Apply { value }),
        payment_event: Some(PaymentEvent::Applied),
        invoice: judge(target, &after, now, Judge::Evaluate)?,
        announce_reversal: false,
    })
}

/// The status an invoice the merchant accepts as paid moves to, given what now counts toward it
/// (`quote`, after its held payments were applied): `paid`, or `overpaid` if more than due arrived
/// after all. Settling twice changes nothing; a voided or refunded invoice cannot be settled.
pub fn plan_settlement(invoice: &InvoiceRow, quote: &Quote) -> Result<StatusMove> {
    let to = match invoice.status {
        InvoiceStatus::Paid | InvoiceStatus::Overpaid => invoice.status,
        status if may_receive(status) => {
            let (confirmed, _) = quote.valuation(invoice.amount_minor)?;
            if confirmed > invoice.amount_minor {
                InvoiceStatus::Overpaid
            } else {
                InvoiceStatus::Paid
            }
        }
        status => {
            return Err(PlanError::Refused {
                code: "invoice_state",
                reason: format!("invoice {} is {status} and cannot be settled", invoice.id),
            })
        }
    };
    Ok(StatusMove { from: invoice.status, to })
}

/// The status an invoice the merchant marks invalid moves to: `invalid`, from any status but void
/// and refunded (nothing counts toward those); marking it twice changes nothing.
pub fn plan_invalid_status(invoice: &InvoiceRow) -> Result<StatusMove> {
    match invoice.status {
        InvoiceStatus::Void | InvoiceStatus::Refunded => Err(PlanError::Refused {
            code: "invoice_state",
            reason: format!("invoice {} is {} and cannot be marked invalid", invoice.id, invoice.status),
        }),
        from => Ok(StatusMove { from, to: InvoiceStatus::Invalid }),
    }
}

/// Plans holding `stored`, a payment that counts toward `invoice`, on the merchant's unapplied
/// balance again because the merchant marked `invoice` invalid. A confirmed payment's standing
/// credit is reversed and its next generation credited to the unapplied balance, unsplit (the
/// creators' and platform's shares are taken back with it); a pending one is only marked held and
/// is credited there when it confirms. A payment that no longer counts (orphaned, reversed) or is
/// held already needs nothing: `None`. `stored.credits_reversed` must be loaded for a confirmed one.
pub fn plan_invalidation(invoice: &InvoiceRow, stored: &StoredPayment) -> Result<Option<PaymentChange>> {
    if stored.applied_to != AppliedTo::Invoice
        || !matches!(stored.status, PaymentStatus::Seen | PaymentStatus::Confirmed)
    {
        return Ok(None);
    }
    let ledger = match (stored.status, stored.ledger_entry_id) {
        (PaymentStatus::Confirmed, Some(entry_id)) => {
            let reversed =
                stored.credits_reversed.ok_or_else(|| PlanError::NotLoaded { fact: "credit history", tx_ref: stored.tx_ref.clone() })?;
            let generation = reversed.saturating_add(2);
            let credit = credit_entry(invoice, &stored.id, stored.money(), AppliedTo::Unapplied, None, generation)?;
            Some(LedgerChange::Rebook { entry_id, key: invalidation_key(&stored.tx_ref, entry_id), memo: INVALID_MEMO, credit })
        }
        (PaymentStatus::Confirmed, None) => {
            return Err(PlanError::Corrupt { column: "ledger_entry_id", value: format!("none on confirmed {}", stored.id) })
        }
        _ => None,
    };
    Ok(Some(PaymentChange {
        payment_id: stored.id.clone(),
        tx_ref: stored.tx_ref.clone(),
        invoice_id: invoice.id.clone(),
        merchant_id: invoice.merchant_id.clone(),
        applied_to: AppliedTo::Unapplied,
        ledger,
        row: Some(RowChange::Hold { reason: UnappliedReason::InvoiceInvalid }),
        payment_event: None,
        invoice: StatusMove { from: invoice.status, to: invoice.status },
        announce_reversal: false,
    }))
}

#[cfg(test)]
mod tests;
