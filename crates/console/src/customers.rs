//! A merchant's customers and what they hold: credits per currency (unexpired lots, as the ledger
//! has them) and live subscriptions. Newest first, 50 a page, in two queries whatever the page.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::response::Response;
use chrono::{DateTime, Utc};
use payrail_api::AppState;
use payrail_core::ids::is_id;

use crate::error::{ConsoleError, Result};
use crate::page::{units, with_param, Cell, CsvQuery, Section, Table, View};
use crate::session::Viewer;

/// Customers per page.
pub const CUSTOMERS_PER_PAGE: i64 = 50;

#[derive(Debug, Default, serde::Deserialize)]
pub struct CustomersQuery {
    /// The last customer of the page before.
    #[serde(default)]
    after: String,
    csv: Option<String>,
}

#[derive(sqlx::FromRow)]
struct CustomerRow {
    id: String,
    external_id: Option<String>,
    email: Option<String>,
    name: Option<String>,
    created_at: DateTime<Utc>,
    live_subscriptions: i64,
}

#[derive(sqlx::FromRow)]
struct HoldingRow {
    customer_id: String,
    currency: String,
    decimals: i16,
    balance: String,
}

/// `GET /console/customers`.
pub async fn customers(State(state): State<AppState>, viewer: Viewer, Query(query): Query<CustomersQuery>) -> Result<Response> {
    let merchant = viewer.merchant()?;
    if !query.after.is_empty() && !is_id(&query.after, "cus") {
        return Err(ConsoleError::Invalid("after: expected a customer id".to_owned()));
    }
    let mut rows: Vec<CustomerRow> = sqlx::query_as(
        "SELECT c.id, c.external_id, c.email, c.name, c.created_at, \
                (SELECT count(*) FROM subscriptions s WHERE s.customer_id = c.id \
                    AND s.status IN ('incomplete', 'trialing', 'active', 'past_due', 'paused')) AS live_subscriptions \
           FROM customers c \
          WHERE c.merchant_id = $1 AND ($2::text IS NULL OR c.seq < (SELECT seq FROM customers WHERE id = $2 AND merchant_id = $1)) \
          ORDER BY c.seq DESC LIMIT $3",
    )
    .bind(merchant)
    .bind((!query.after.is_empty()).then_some(&query.after))
    .bind(CUSTOMERS_PER_PAGE + 1)
    .fetch_all(&state.read_pool)
    .await?;
    let page = usize::try_from(CUSTOMERS_PER_PAGE).unwrap_or(usize::MAX);
    let has_more = rows.len() > page;
    rows.truncate(page);
    let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    let holdings: Vec<HoldingRow> = sqlx::query_as(
        "SELECT l.customer_id, l.currency, cc.decimals, sum(b.balance)::text AS balance \
           FROM credit_lots l \
           JOIN credit_currencies cc ON cc.merchant_id = l.merchant_id AND cc.code = l.currency \
           JOIN accounts a ON a.code = 'liabilities:credit_lot:' || l.id \
           JOIN balances b ON b.account_id = a.id \
          WHERE l.customer_id = ANY($1) AND l.expired_at IS NULL \
          GROUP BY l.customer_id, l.currency, cc.decimals HAVING sum(b.balance) <> 0 ORDER BY l.currency",
    )
    .bind(&ids)
    .fetch_all(&state.read_pool)
    .await?;
    let mut held: HashMap<&str, Vec<String>> = HashMap::new();
    for h in &holdings {
        let decimals = u8::try_from(h.decimals).ok();
        held.entry(h.customer_id.as_str()).or_default().push(format!("{} {}", units(&h.balance, decimals), h.currency));
    }
    let mut table = Table::new("customers", "Customers", &["Created", "Customer", "Your id", "Name", "E-mail", "Credits", "Live subscriptions"])
        .empty("No customer yet: create them with POST /v1/customers.");
    for r in &rows {
        table.push(vec![
            Cell::time(r.created_at),
            Cell::text(r.id.clone()),
            Cell::text(r.external_id.clone().unwrap_or_default()),
            Cell::text(r.name.clone().unwrap_or_default()),
            Cell::text(r.email.clone().unwrap_or_default()),
            Cell::text(held.get(r.id.as_str()).map(|h| h.join(", ")).unwrap_or_default()),
            Cell::number(r.live_subscriptions.to_string()),
        ]);
    }
    if has_more {
        table.more = rows.last().map(|last| with_param("/console/customers", "after", &last.id));
    }
    let here = if query.after.is_empty() { "/console/customers".to_owned() } else { with_param("/console/customers", "after", &query.after) };
    View::new("Customers", vec![Section::Table(table)]).at(here).respond(&viewer, &CsvQuery { csv: query.csv })
}
