//! Listing a merchant's invoices, newest first, with filters and cursor pagination.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Row};

use super::error::{InvoiceError, Result};
use super::model::InvoiceView;
use super::view::load_views;
use super::status::InvoiceStatus;

/// Page size when none is asked for.
pub const LIST_LIMIT_DEFAULT: i64 = 20;
/// Largest page.
pub const LIST_LIMIT_MAX: i64 = 100;

#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub status: Option<InvoiceStatus>,
    pub order_id: Option<String>,
    pub created_from: Option<DateTime<Utc>>,
    pub created_to: Option<DateTime<Utc>>,
    /// Return invoices after this one (the last id of the previous page).
    pub starting_after: Option<String>,
    pub limit: Option<i64>,
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct InvoicePage {
    #[schema(value_type = String, example = "list")]
    pub object: &'static str,
    pub data: Vec<InvoiceView>,
    pub has_more: bool,
}

pub async fn list_invoices(conn: &mut PgConnection, merchant_id: &str, filter: &ListFilter) -> Result<InvoicePage> {
    let limit = filter.limit.unwrap_or(LIST_LIMIT_DEFAULT);
    if !(1..=LIST_LIMIT_MAX).contains(&limit) {
        return Err(InvoiceError::Invalid { field: "limit", reason: format!("must be 1..={LIST_LIMIT_MAX}") });
    }
    // No stored order id holds a control character (creation refuses them), and PostgreSQL refuses
    // a NUL in any text: such a filter is a bad request, not a query.
    if filter.order_id.as_deref().is_some_and(|o| o.chars().any(char::is_control)) {
        return Err(InvoiceError::Invalid { field: "order_id", reason: "must not contain control characters".to_owned() });
    }
    let cursor: Option<(DateTime<Utc>, String)> = match &filter.starting_after {
        None => None,
        Some(id) => Some(
            sqlx::query_as("SELECT created_at, id FROM invoices WHERE id = $1 AND merchant_id = $2")
                .bind(id)
                .bind(merchant_id)
                .fetch_optional(&mut *conn)
                .await?
                .ok_or_else(|| InvoiceError::Invalid {
                    field: "starting_after",
                    reason: format!("no invoice {id}"),
                })?,
        ),
    };
    let rows = sqlx::query(
        "SELECT id FROM invoices WHERE merchant_id = $1 \
           AND ($2::text IS NULL OR status = $2) \
           AND ($3::text IS NULL OR order_id = $3) \
           AND ($4::timestamptz IS NULL OR created_at >= $4) \
           AND ($5::timestamptz IS NULL OR created_at < $5) \
           AND ($6::timestamptz IS NULL OR (created_at, id) < ($6, $7)) \
         ORDER BY created_at DESC, id DESC LIMIT $8",
    )
    .bind(merchant_id)
    .bind(filter.status.map(InvoiceStatus::as_str))
    .bind(&filter.order_id)
    .bind(filter.created_from)
    .bind(filter.created_to)
    .bind(cursor.as_ref().map(|c| c.0))
    .bind(cursor.as_ref().map(|c| c.1.clone()))
    .bind(limit + 1)
    .fetch_all(&mut *conn)
    .await?;
    let has_more = i64::try_from(rows.len()).unwrap_or(i64::MAX) > limit;
    let ids = rows.iter().take(usize::try_from(limit).unwrap_or(0)).map(|row| row.try_get("id")).collect::<Result<Vec<String>, _>>()?;
    // The whole page's views in one more query, not one per invoice.
    let data = load_views(&mut *conn, Some(merchant_id), &ids).await?;
    Ok(InvoicePage { object: "list", data, has_more })
}
