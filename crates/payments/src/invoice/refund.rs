//! The one transition the state machine leaves to the caller: a paid invoice whose money went
//! back to the payer in full becomes `refunded`. What was refunded, and the ledger entries that
//! reverse it, belong to the rail that moved the money (the card rail today).

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::error::{InvoiceError, Result};
use super::model::{row_to_invoice, INVOICE_COLUMNS};
use super::view::load_view;
use super::status::InvoiceStatus;
use crate::ledger::Ledger;

/// Marks a paid or overpaid invoice `refunded` on the caller's transaction and announces it
/// (`invoice.refunded`). An invoice already refunded is left as it is; one in any other status is
/// refused, since only money that arrived can go back. What the invoice delivered is taken back
/// where unspent (a credit pack's credits), in the same transaction.
pub async fn mark_refunded(tx: &mut PgConnection, ledger: &Ledger, invoice_id: &str, now: DateTime<Utc>) -> Result<InvoiceStatus> {
    let row = sqlx::query(&format!("SELECT {INVOICE_COLUMNS} FROM invoices WHERE id = $1 FOR UPDATE"))
        .bind(invoice_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| InvoiceError::NotFound { id: invoice_id.to_owned() })?;
    let invoice = row_to_invoice(&row)?;
    match invoice.status {
        InvoiceStatus::Refunded => Ok(InvoiceStatus::Refunded),
        InvoiceStatus::Paid | InvoiceStatus::Overpaid => {
            sqlx::query("UPDATE invoices SET status = 'refunded', updated_at = $2 WHERE id = $1")
                .bind(invoice_id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            payrail_credits::purchase::on_invoice_status(&mut *tx, ledger, invoice_id, false, now).await?;
            payrail_subscriptions::period::on_invoice_status(&mut *tx, ledger, invoice_id, false, now).await?;
            let view = load_view(&mut *tx, None, invoice_id).await?;
            crate::webhook::emit(&mut *tx, &invoice.merchant_id, InvoiceStatus::Refunded.event_type(), invoice_id, &view, now)
                .await?;
            Ok(InvoiceStatus::Refunded)
        }
        other => Err(InvoiceError::WrongState { id: invoice_id.to_owned(), status: other.to_string(), action: "refunded" }),
    }
}
