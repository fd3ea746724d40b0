//! Listing a merchant's invoices, newest first, with filters and cursor pagination.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Row};

use super::error::{InvoiceError, Result};
use super::model::InvoiceView;
use super::view::load_views;
use super::status::InvoiceStatus;

use payrail_store::page::{Order, Page};

#[derive(Debug, Clone)]
pub struct ListFilter {
    pub status: Option<InvoiceStatus>,
    pub order_id: Option<String>,
    pub created_from: Option<DateTime<Utc>>,
    pub created_to: Option<DateTime<Utc>>,
    pub page: Page,
}

/// The list's order: newest first.
const ORDER: Order = Order("created_at DESC, id DESC");

/// A page of the merchant's invoices that pass the filter, newest first, and whether more follow.
pub async fn list_invoices(conn: &mut PgConnection, merchant_id: &str, filter: &ListFilter) -> Result<(Vec<InvoiceView>, bool)> {
    // No stored order id holds a control character (creation refuses them), and PostgreSQL refuses
    // a NUL in any text: such a filter is a bad request, not a query.
    if filter.order_id.as_deref().is_some_and(|o| o.chars().any(char::is_control)) {
        return Err(InvoiceError::Invalid { field: "order_id", reason: "must not contain control characters".to_owned() });
    }
    let page = &filter.page;
    let rows = sqlx::query(&format!(
        "SELECT id FROM invoices WHERE merchant_id = $1 \
           AND ($2::text IS NULL OR status = $2) \
           AND ($3::text IS NULL OR order_id = $3) \
           AND ($4::timestamptz IS NULL OR created_at >= $4) \
           AND ($5::timestamptz IS NULL OR created_at < $5) \
           AND {} ORDER BY {} LIMIT $7",
        page.condition(ORDER, "SELECT created_at, id FROM invoices WHERE id = $6 AND merchant_id = $1"),
        page.order_by(ORDER),
    ))
    .bind(merchant_id)
    .bind(filter.status.map(InvoiceStatus::as_str))
    .bind(&filter.order_id)
    .bind(filter.created_from)
    .bind(filter.created_to)
    .bind(page.cursor_id())
    .bind(page.fetch())
    .fetch_all(&mut *conn)
    .await?;
    let (rows, has_more) = page.finish(rows);
    let ids = rows.iter().map(|row| row.try_get("id")).collect::<Result<Vec<String>, _>>()?;
    // The whole page's views in one more query, not one per invoice.
    let data = load_views(&mut *conn, Some(merchant_id), &ids).await?;
    Ok((data, has_more))
}
