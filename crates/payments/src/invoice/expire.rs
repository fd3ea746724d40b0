//! Expiry: an open invoice whose time ran out with nothing pending becomes `expired`, keeping
//! whatever partial amount it received. Invoices with a payment seen in time wait for it.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::store::settle_status;
use crate::ledger::Ledger;
use super::error::Result;
use super::model::{row_to_invoice, INVOICE_COLUMNS};

/// Most invoices expired in one transaction.
pub const EXPIRE_BATCH_MAX: i64 = 500;

/// Expires due invoices in batches; returns how many changed. Rows another replica is working on
/// are skipped, not waited for.
pub async fn expire_due(pool: &PgPool, now: DateTime<Utc>) -> Result<u64> {
    // Expiry never makes an invoice paid or unpaid, so nothing it posts needs a shared cache.
    let ledger = Ledger::new(pool.clone());
    let mut tx = pool.begin().await?;
    let rows = sqlx::query(&format!(
        "SELECT {INVOICE_COLUMNS} FROM invoices WHERE status = 'open' AND expires_at <= $1 \
         ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED"
    ))
    .bind(now)
    .bind(EXPIRE_BATCH_MAX)
    .fetch_all(&mut *tx)
    .await?;
    let mut changed = 0;
    for row in &rows {
        let invoice = row_to_invoice(row)?;
        if settle_status(&mut tx, &ledger, &invoice, now).await? != invoice.status {
            changed += 1;
        }
    }
    tx.commit().await?;
    Ok(changed)
}

/// Brings one invoice up to date before it is shown, so a read never reports `open` past expiry.
pub async fn refresh(pool: &PgPool, invoice_id: &str, now: DateTime<Utc>) -> Result<()> {
    let ledger = Ledger::new(pool.clone());
    let mut tx = pool.begin().await?;
    let row = sqlx::query(&format!(
        "SELECT {INVOICE_COLUMNS} FROM invoices WHERE id = $1 AND status = 'open' AND expires_at <= $2 FOR UPDATE"
    ))
    .bind(invoice_id)
    .bind(now)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(row) = row {
        settle_status(&mut tx, &ledger, &row_to_invoice(&row)?, now).await?;
    }
    tx.commit().await?;
    Ok(())
}
