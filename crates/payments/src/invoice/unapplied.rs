//! Unapplied funds: the payments held on a merchant's unapplied balance for review — late, to a
//! closed invoice, or in an asset the invoice did not quote — that are still money (seen or
//! confirmed; an orphaned or reversed one is not). A late payment is never lost: it is listed here.

use chrono::{DateTime, Utc};
use serde::Serialize;
use payrail_store::page::{Order, Page};
use sqlx::PgConnection;

use super::error::{InvoiceError, Result};
use super::plan::{PaymentStatus, UnappliedReason};

/// One payment held for review.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct UnappliedPayment {
    /// `pay_…`
    pub id: String,
    /// The invoice it was sent for.
    pub invoice_id: String,
    pub chain: String,
    pub asset: String,
    pub tx_ref: String,
    /// The deposit address it reached (none for card payments).
    pub address: Option<String>,
    /// In the asset's smallest unit.
    pub amount_minor: String,
    /// `seen` (not yet at its confirmation policy: pending) or `confirmed` (on the unapplied balance).
    #[schema(value_type = String)]
    pub status: PaymentStatus,
    /// `asset_not_quoted`, `invoice_expired`, `invoice_void`, `invoice_refunded` or `late`.
    #[schema(value_type = String)]
    pub reason: UnappliedReason,
    pub seen_at: DateTime<Utc>,
    pub confirmed_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct UnappliedRow {
    id: String,
    invoice_id: String,
    chain: String,
    asset: String,
    tx_ref: String,
    address: Option<String>,
    amount_minor: String,
    status: String,
    unapplied_reason: Option<String>,
    seen_at: DateTime<Utc>,
    confirmed_at: Option<DateTime<Utc>>,
}

impl UnappliedRow {
    fn payment(self) -> Result<UnappliedPayment> {
        let corrupt = |column, value: &str| InvoiceError::Corrupt { column, value: value.to_owned() };
        let reason = self.unapplied_reason.as_deref().unwrap_or_default();
        Ok(UnappliedPayment {
            status: self.status.parse().map_err(|_| corrupt("status", &self.status))?,
            reason: reason.parse().map_err(|_| corrupt("unapplied_reason", reason))?,
            id: self.id,
            invoice_id: self.invoice_id,
            chain: self.chain,
            asset: self.asset,
            tx_ref: self.tx_ref,
            address: self.address,
            amount_minor: self.amount_minor,
            seen_at: self.seen_at,
            confirmed_at: self.confirmed_at,
        })
    }
}

/// A page of the merchant's unapplied payments, oldest first, and whether more follow.
pub async fn list_unapplied(conn: &mut PgConnection, merchant_id: &str, page: &Page) -> Result<(Vec<UnappliedPayment>, bool)> {
    const ORDER: Order = Order("seen_at, id");
    // A payment being refunded is no longer held for the merchant to resolve.
    let rows: Vec<UnappliedRow> = sqlx::query_as(&format!(
        "SELECT id, invoice_id, chain, asset, tx_ref, address, amount_minor::text AS amount_minor, status, \
                unapplied_reason, seen_at, confirmed_at \
         FROM payments p WHERE merchant_id = $1 AND applied_to = $2 AND status IN ($3, $4) \
           AND NOT {} AND {} ORDER BY {} LIMIT $6",
        crate::refund::STANDING_REFUND_OF_P,
        page.condition(ORDER, "SELECT seen_at, id FROM payments WHERE id = $5 AND merchant_id = $1"),
        page.order_by(ORDER),
    ))
    .bind(merchant_id)
    .bind(super::plan::AppliedTo::Unapplied.as_str())
    .bind(PaymentStatus::Seen.as_str())
    .bind(PaymentStatus::Confirmed.as_str())
    .bind(page.cursor_id())
    .bind(page.fetch())
    .fetch_all(&mut *conn)
    .await?;
    let (rows, has_more) = page.finish(rows);
    Ok((rows.into_iter().map(UnappliedRow::payment).collect::<Result<Vec<_>>>()?, has_more))
}
