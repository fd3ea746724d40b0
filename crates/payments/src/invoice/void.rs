//! Voiding: a merchant cancels an invoice that has received nothing. One with a payment seen or
//! credited cannot be voided (its money must be accounted for); voiding twice is harmless.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::error::{InvoiceError, Result};
use super::model::{row_to_invoice, InvoiceView, INVOICE_COLUMNS};
use super::view::load_view;
use super::plan::PaymentStatus;
use super::status::InvoiceStatus;

pub async fn void_invoice(pool: &PgPool, merchant_id: &str, id: &str, now: DateTime<Utc>) -> Result<InvoiceView> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query(&format!("SELECT {INVOICE_COLUMNS} FROM invoices WHERE id = $1 AND merchant_id = $2 FOR UPDATE"))
        .bind(id)
        .bind(merchant_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| InvoiceError::NotFound { id: id.to_owned() })?;
    let invoice = row_to_invoice(&row)?;
    match invoice.status {
        InvoiceStatus::Void => {}
        InvoiceStatus::Open => {
            let payments: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM payments WHERE invoice_id = $1 AND status IN ($2, $3)",
            )
            .bind(id)
            .bind(PaymentStatus::Seen.as_str())
            .bind(PaymentStatus::Confirmed.as_str())
            .fetch_one(&mut *tx)
            .await?;
            if payments > 0 {
                return Err(InvoiceError::WrongState { id: id.to_owned(), status: "partially paid".to_owned(), action: "voided" });
            }
            sqlx::query("UPDATE invoices SET status = 'void', updated_at = $2 WHERE id = $1")
                .bind(id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            let view = load_view(&mut tx, Some(merchant_id), id).await?;
            crate::webhook::emit(&mut tx, merchant_id, "invoice.void", id, &view, now).await?;
        }
        other => {
            return Err(InvoiceError::WrongState { id: id.to_owned(), status: other.to_string(), action: "voided" });
        }
    }
    let view = load_view(&mut tx, Some(merchant_id), id).await?;
    tx.commit().await?;
    Ok(view)
}
