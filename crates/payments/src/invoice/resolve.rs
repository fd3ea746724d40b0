//! The merchant resolves problem payments: applies a held payment to an invoice, or settles an
//! invoice (accepts it as paid although less, late or in another asset arrived). Decided by the pure
//! plans of [`payrail_core::payment::resolve`], written by [`super::store::apply`], each call in one
//! transaction with its ledger entries and events.
//!
//! Lock order, as for a watcher: the payment's own invoice, then the payment's row, then the invoice
//! it is applied to.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use crate::ledger::Ledger;

use super::error::{InvoiceError, Result};
use super::model::{InvoiceRow, InvoiceView};
use super::view::load_view;
use super::plan::{AppliedTo, PaymentStatus, StoredPayment};
use super::status::InvoiceStatus;
use super::store;
use payrail_core::payment::resolve::{plan_application, plan_invalid_status, plan_invalidation, plan_settlement};

/// Applies the merchant's held payment `payment_id` to the invoice `target` (its own invoice when
/// `None`) and returns that invoice as it now stands. Another merchant's payment or invoice is not
/// found; a payment already applied, not confirmed, in an asset the invoice did not quote, or an
/// invoice voided or refunded is refused.
pub async fn apply_held_payment(
    pool: &PgPool,
    ledger: &Ledger,
    merchant_id: &str,
    payment_id: &str,
    target: Option<&str>,
    now: DateTime<Utc>,
) -> Result<InvoiceView> {
    let mut tx = pool.begin().await?;
    let own_id: String = sqlx::query_scalar("SELECT invoice_id FROM payments WHERE id = $1 AND merchant_id = $2")
        .bind(payment_id)
        .bind(merchant_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| InvoiceError::PaymentNotFound { id: payment_id.to_owned() })?;
    let own = lock_own(&mut tx, merchant_id, &own_id).await?;
    let stored = store::load_payment_by_id(&mut tx, payment_id, true)
        .await?
        .ok_or_else(|| InvoiceError::PaymentNotFound { id: payment_id.to_owned() })?;
    if refunding(&mut tx, payment_id).await? {
        return Err(InvoiceError::Refused {
            code: "payment_refunding",
            reason: format!("payment {payment_id} is being refunded: cancel the refund to apply it"),
        });
    }
    let target = match target {
        Some(id) if id != own.id => lock_own(&mut tx, merchant_id, id).await?,
        _ => own,
    };
    apply_one(&mut tx, ledger, &target, stored, false, now).await?;
    let view = load_view(&mut tx, Some(merchant_id), &target.id).await?;
    tx.commit().await?;
    Ok(view)
}

/// Settles the merchant's invoice `invoice_id`: its confirmed held payments are applied to it
/// (whatever their asset) and it becomes paid (or overpaid, if more than due arrived after all),
/// however much arrived. A paid invoice is returned unchanged; a voided or refunded one is refused.
/// A held payment still waiting for confirmations stays held: apply it once it is confirmed.
pub async fn settle_invoice(
    pool: &PgPool,
    ledger: &Ledger,
    merchant_id: &str,
    invoice_id: &str,
    now: DateTime<Utc>,
) -> Result<InvoiceView> {
    let mut tx = pool.begin().await?;
    let mut invoice = lock_own(&mut tx, merchant_id, invoice_id).await?;
    if !matches!(invoice.status, InvoiceStatus::Paid | InvoiceStatus::Overpaid) {
        // A held payment being refunded stays out: its funds are reserved for the payer.
        let held: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT p.id FROM payments p WHERE p.invoice_id = $1 AND p.applied_to = $2 AND p.status = $3 \
               AND NOT {} ORDER BY p.seen_at, p.id",
            crate::refund::STANDING_REFUND_OF_P
        ))
        .bind(invoice_id)
        .bind(AppliedTo::Unapplied.as_str())
        .bind(PaymentStatus::Confirmed.as_str())
        .fetch_all(&mut *tx)
        .await?;
        for id in held {
            let stored = store::load_payment_by_id(&mut tx, &id, true)
                .await?
                .ok_or_else(|| InvoiceError::PaymentNotFound { id: id.clone() })?;
            invoice.status = apply_one(&mut tx, ledger, &invoice, stored, true, now).await?;
        }
        let quote = store::load_quote(&mut tx, invoice_id).await?;
        let status = plan_settlement(&invoice, &quote)?;
        store::write_status(&mut tx, ledger, merchant_id, invoice_id, status, now).await?;
        sqlx::query("UPDATE invoices SET settled_at = coalesce(settled_at, $2) WHERE id = $1")
            .bind(invoice_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
    }
    let view = load_view(&mut tx, Some(merchant_id), invoice_id).await?;
    tx.commit().await?;
    Ok(view)
}

/// Marks the merchant's invoice `invoice_id` invalid: every payment that counts toward it is held on
/// the unapplied balance again (see [`plan_invalidation`]) and it becomes `invalid`, announced as
/// `invoice.invalid`. Marking it twice changes nothing; a voided or refunded invoice is refused, and
/// so is one whose shares were already paid out to a creator (the ledger refuses to take them back).
pub async fn invalidate_invoice(
    pool: &PgPool,
    ledger: &Ledger,
    merchant_id: &str,
    invoice_id: &str,
    now: DateTime<Utc>,
) -> Result<InvoiceView> {
    let mut tx = pool.begin().await?;
    // Payments applied here from the merchant's other invoices: those invoices are locked first, as
    // every writer of a payment locks its own invoice before the one it counts toward.
    let mut others: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT invoice_id FROM payments WHERE applied_invoice_id = $1 AND merchant_id = $2",
    )
    .bind(invoice_id)
    .bind(merchant_id)
    .fetch_all(&mut *tx)
    .await?;
    others.sort();
    for other in &others {
        lock_own(&mut tx, merchant_id, other).await?;
    }
    let invoice = lock_own(&mut tx, merchant_id, invoice_id).await?;
    let refunds: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM crypto_refunds WHERE invoice_id = $1 AND status NOT IN ('canceled', 'expired')",
    )
    .bind(invoice_id)
    .fetch_one(&mut *tx)
    .await?;
    if refunds > 0 {
        return Err(InvoiceError::Refused {
            code: "invoice_refunding",
            reason: format!("invoice {invoice_id} has crypto refunds: cancel those not paid before marking it invalid"),
        });
    }
    let status = plan_invalid_status(&invoice)?;
    if status.moves() {
        let counting: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM payments WHERE (invoice_id = $1 AND applied_invoice_id IS NULL OR applied_invoice_id = $1) \
               AND applied_to = $2 ORDER BY seen_at, id",
        )
        .bind(invoice_id)
        .bind(AppliedTo::Invoice.as_str())
        .fetch_all(&mut *tx)
        .await?;
        for id in counting {
            let mut stored = store::load_payment_by_id(&mut tx, &id, true)
                .await?
                .ok_or_else(|| InvoiceError::PaymentNotFound { id: id.clone() })?;
            stored.credits_reversed = Some(store::credits_reversed(&mut tx, &stored.tx_ref).await?);
            if let Some(change) = plan_invalidation(&invoice, &stored)? {
                store::apply(&mut tx, ledger, &change, now).await?;
            }
        }
        store::write_status(&mut tx, ledger, merchant_id, invoice_id, status, now).await?;
    }
    let view = load_view(&mut tx, Some(merchant_id), invoice_id).await?;
    tx.commit().await?;
    Ok(view)
}

/// Whether a crypto refund that still stands takes (part of) payment `payment_id`.
async fn refunding(tx: &mut PgConnection, payment_id: &str) -> Result<bool> {
    Ok(sqlx::query_scalar(&format!("SELECT {} FROM payments p WHERE p.id = $1", crate::refund::STANDING_REFUND_OF_P))
        .bind(payment_id)
        .fetch_optional(&mut *tx)
        .await?
        .unwrap_or(false))
}

/// Locks the merchant's invoice `id`; another merchant's is not found.
async fn lock_own(tx: &mut PgConnection, merchant_id: &str, id: &str) -> Result<InvoiceRow> {
    store::lock_invoice(tx, id)
        .await?
        .filter(|invoice| invoice.merchant_id == merchant_id)
        .ok_or_else(|| InvoiceError::NotFound { id: id.to_owned() })
}

/// Plans and writes applying `stored` to the locked `target`; returns the invoice's new status.
async fn apply_one(
    tx: &mut PgConnection,
    ledger: &Ledger,
    target: &InvoiceRow,
    mut stored: StoredPayment,
    any_asset: bool,
    now: DateTime<Utc>,
) -> Result<InvoiceStatus> {
    let mut quote = store::load_quote(&mut *tx, &target.id).await?;
    quote.splits = Some(super::split::load_for_invoice(&mut *tx, &target.id).await?);
    stored.credits_reversed = Some(store::credits_reversed(&mut *tx, &stored.tx_ref).await?);
    let change = plan_application(target, &stored, &quote, any_asset, now)?;
    store::apply(tx, ledger, &change, now).await?;
    Ok(change.invoice.to)
}
