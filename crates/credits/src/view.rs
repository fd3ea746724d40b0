//! What a customer's credits look like: its history and its balance by lot.

use chrono::{DateTime, Utc};
use serde::Serialize;
use payrail_store::page::{Order, Page};
use sqlx::{PgConnection, PgPool};

use crate::currency;
use crate::error::{CreditsError, Result};
use crate::money::Amount;


/// One movement of a customer's credits.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct TransactionView {
    /// `ctx_…`
    pub id: String,
    pub customer_id: String,
    pub currency: String,
    /// `grant`, `spend`, `gift_sent`, `gift_received`, `transfer_sent`, `transfer_received`, `tip`,
    /// `expiry` or `adjustment`.
    pub kind: String,
    /// Signed, in the currency's smallest unit: positive in, negative out.
    pub amount_minor: String,
    /// For grants: `reward`, `bonus`, `promo`, `purchase`, `transfer`.
    pub source: Option<String>,
    pub description: Option<String>,
    pub resource: Option<String>,
    /// The other customer of a gift or transfer, or the creator tipped.
    pub counterparty: Option<String>,
    /// The ledger entry that made it.
    pub entry_id: i64,
    /// The lots taken from or granted, and the shares of a spend or tip.
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, customer_id, currency, kind, amount_minor::text AS amount_minor, source, description, resource, counterparty, \
     entry_id, detail, created_at";

pub async fn transaction(conn: &mut PgConnection, id: &str) -> Result<TransactionView> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM credit_transactions WHERE id = $1"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| CreditsError::NotFound { what: "credit transaction", id: id.to_owned() })
}

pub(crate) async fn transaction_by_key(conn: &mut PgConnection, merchant_id: &str, key: &str, customer_id: &str) -> Result<Option<TransactionView>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM credit_transactions WHERE merchant_id = $1 AND idempotency_key = $2 AND customer_id = $3"
    ))
    .bind(merchant_id)
    .bind(key)
    .bind(customer_id)
    .fetch_optional(&mut *conn)
    .await?)
}

/// A page of the customer's history, newest first, and whether more follow.
pub async fn transactions(pool: &PgPool, merchant_id: &str, customer_id: &str, page: &Page) -> Result<(Vec<TransactionView>, bool)> {
    const ORDER: Order = Order("seq DESC");
    crate::customer::get(pool, merchant_id, customer_id).await?;
    let rows: Vec<TransactionView> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM credit_transactions WHERE customer_id = $1 AND merchant_id = $2 AND {} ORDER BY {} LIMIT $3",
        page.condition(ORDER, "SELECT seq FROM credit_transactions WHERE id = $4 AND customer_id = $1"),
        page.order_by(ORDER),
    ))
    .bind(customer_id)
    .bind(merchant_id)
    .bind(page.fetch())
    .bind(page.cursor_id())
    .fetch_all(pool)
    .await?;
    Ok(page.finish(rows))
}

/// One lot as the balance shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct LotView {
    /// `lot_…`
    pub id: String,
    pub source: String,
    pub remaining_minor: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub granted_at: DateTime<Utc>,
}

/// A customer's credits of one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct CurrencyBalance {
    pub currency: String,
    /// Spendable now: every lot not past its expiry.
    pub total_minor: String,
    /// In spending order.
    pub lots: Vec<LotView>,
    /// The soonest expiry and what expires then.
    pub next_expiry: Option<DateTime<Utc>>,
    pub next_expiry_minor: Option<String>,
    /// What the total is worth in the currency's peg (rounded down); null without a peg.
    pub value: Option<String>,
    pub value_currency: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct BalanceView {
    #[schema(value_type = String, example = "credit_balance")]
    pub object: &'static str,
    pub customer_id: String,
    pub balances: Vec<CurrencyBalance>,
}

/// The customer's spendable credits per currency, lot by lot in spending order.
pub async fn balance(pool: &PgPool, merchant_id: &str, customer_id: &str, now: DateTime<Utc>) -> Result<BalanceView> {
    crate::customer::get(pool, merchant_id, customer_id).await?;
    let mut conn = pool.acquire().await?;
    let mut balances = Vec::new();
    for currency in currency::list_on(&mut conn, merchant_id).await? {
        let lots = crate::movement::open_lots(&mut conn, customer_id, &currency).await?;
        let mut live: Vec<&payrail_core::credits::LotBalance> = lots.iter().filter(|l| l.expires_at.is_none_or(|at| at > now)).collect();
        if live.is_empty() {
            continue;
        }
        payrail_core::credits::sort_for_spending(&mut live);
        let total = live.iter().try_fold(Amount::ZERO, |sum, l| sum.checked_add(l.remaining)).unwrap_or(Amount::MAX);
        let next_expiry = live.iter().filter_map(|l| l.expires_at).min();
        let next_expiry_minor = next_expiry.map(|at| {
            live.iter().filter(|l| l.expires_at == Some(at)).try_fold(Amount::ZERO, |sum, l| sum.checked_add(l.remaining)).unwrap_or(Amount::MAX).to_string()
        });
        let sources: Vec<(String, String)> = sqlx::query_as("SELECT id, source FROM credit_lots WHERE id = ANY($1)")
            .bind(live.iter().map(|l| l.lot_id.clone()).collect::<Vec<_>>())
            .fetch_all(&mut *conn)
            .await?;
        let source_of = |id: &str| sources.iter().find(|(l, _)| l == id).map(|(_, s)| s.clone()).unwrap_or_default();
        let value = currency.value(total);
        balances.push(CurrencyBalance {
            currency: currency.code.clone(),
            total_minor: total.to_string(),
            lots: live
                .iter()
                .map(|l| LotView { id: l.lot_id.clone(), source: source_of(&l.lot_id), remaining_minor: l.remaining.to_string(), expires_at: l.expires_at, granted_at: l.granted_at })
                .collect(),
            next_expiry,
            next_expiry_minor,
            value: value.map(|(fiat, v)| v.to_decimal_string(fiat.minor_units())),
            value_currency: value.map(|(fiat, _)| fiat.code().to_owned()),
        });
    }
    Ok(BalanceView { object: "credit_balance", customer_id: customer_id.to_owned(), balances })
}
