//! Credit packs a merchant sells: credits and bonus credits for a price.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use payrail_store::page::{Listing, Order, Page};
use sqlx::PgPool;

use crate::currency::{self, parse_amount};
use crate::error::{invalid, CreditsError, Result};
use crate::ids::new_id;
use crate::money::{Amount, Fiat};

/// Longest a purchased lot may live: ten years.
pub const EXPIRES_IN_S_MAX: i64 = 10 * 366 * 86_400;

/// Body of `POST /v1/credit_packs`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePack {
    /// `100 coins`
    pub name: String,
    /// The credit currency's code.
    pub currency: String,
    /// In the currency's smallest unit, an integer string.
    pub credits: String,
    /// Granted with them, as a lot of its own (source `bonus`); none when absent.
    pub bonus_credits: Option<String>,
    /// A decimal string in `price_currency`'s major unit: `"0.99"`.
    pub price: String,
    /// ISO 4217.
    pub price_currency: String,
    /// Seconds after the grant when what is left of the pack's lots expires; never when absent.
    pub expires_in_s: Option<i64>,
    /// Sold (true, the default) or not.
    pub active: Option<bool>,
}

/// Body of `PATCH /v1/credit_packs/{id}`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdatePack {
    pub active: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PackView {
    /// `pack_…`
    pub id: String,
    #[schema(value_type = String, example = "credit_pack")]
    pub object: &'static str,
    pub name: String,
    pub currency: String,
    pub credits: String,
    pub bonus_credits: String,
    /// Decimal, in `price_currency`.
    pub price: String,
    pub price_currency: String,
    pub expires_in_s: Option<i64>,
    pub active: bool,
    pub created_at: DateTime<Utc>,
}

type Row = (String, String, String, String, String, String, String, Option<i64>, bool, DateTime<Utc>);
const COLUMNS: &str = "id, name, currency, credits::text, bonus_credits::text, price_minor::text, price_currency, expires_in_s, active, created_at";

fn view((id, name, currency, credits, bonus_credits, price_minor, price_currency, expires_in_s, active, created_at): Row) -> PackView {
    let price = match (price_currency.parse::<Fiat>(), Amount::parse_decimal(&price_minor, 0)) {
        (Ok(fiat), Ok(minor)) => minor.to_decimal_string(fiat.minor_units()),
        _ => price_minor,
    };
    PackView { id, object: "credit_pack", name, currency, credits, bonus_credits, price, price_currency, expires_in_s, active, created_at }
}

pub async fn create(pool: &PgPool, merchant_id: &str, request: &CreatePack, now: DateTime<Utc>) -> Result<PackView> {
    let name = request.name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(invalid("name", "1 to 100 characters"));
    }
    let credits = parse_amount("credits", &request.credits)?;
    let bonus = match &request.bonus_credits {
        None => Amount::ZERO,
        Some(text) if text == "0" => Amount::ZERO,
        Some(text) => parse_amount("bonus_credits", text)?,
    };
    let fiat: Fiat = request.price_currency.parse().map_err(|e: crate::money::FiatError| invalid("price_currency", e.to_string()))?;
    let price = Amount::parse_decimal(&request.price, fiat.minor_units())
        .ok()
        .filter(|p| !p.is_zero() && !request.price.starts_with('+') && request.price.len() <= 40)
        .ok_or_else(|| invalid("price", format!("a positive decimal of at most {} decimals", fiat.minor_units())))?;
    if request.expires_in_s.is_some_and(|s| !(1..=EXPIRES_IN_S_MAX).contains(&s)) {
        return Err(invalid("expires_in_s", format!("1 to {EXPIRES_IN_S_MAX}")));
    }
    let mut conn = pool.acquire().await?;
    currency::get(&mut conn, merchant_id, &request.currency).await?;
    let row: Row = sqlx::query_as(&format!(
        "INSERT INTO credit_packs (id, merchant_id, name, currency, credits, bonus_credits, price_minor, price_currency, expires_in_s, active, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5::numeric, $6::numeric, $7::numeric, $8, $9, $10, $11, $11) RETURNING {COLUMNS}"
    ))
    .bind(new_id("pack"))
    .bind(merchant_id)
    .bind(name)
    .bind(&request.currency)
    .bind(credits.to_string())
    .bind(bonus.to_string())
    .bind(price.to_string())
    .bind(fiat.code())
    .bind(request.expires_in_s)
    .bind(request.active.unwrap_or(true))
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;
    Ok(view(row))
}

pub async fn get(pool: &PgPool, merchant_id: &str, id: &str) -> Result<PackView> {
    let row: Option<Row> = sqlx::query_as(&format!("SELECT {COLUMNS} FROM credit_packs WHERE id = $1 AND merchant_id = $2"))
        .bind(id)
        .bind(merchant_id)
        .fetch_optional(pool)
        .await?;
    row.map(view).ok_or_else(|| CreditsError::NotFound { what: "credit pack", id: id.to_owned() })
}

/// A page of the merchant's credit packs, oldest first, and whether more follow.
pub async fn list(pool: &PgPool, merchant_id: &str, page: &Page) -> Result<(Vec<PackView>, bool)> {
    const LIST: Listing = Listing { table: "credit_packs", columns: COLUMNS, owner: "merchant_id", id: "id", order: Order("created_at, id") };
    let (rows, has_more): (Vec<Row>, bool) = LIST.page(pool, merchant_id, page).await?;
    Ok((rows.into_iter().map(view).collect(), has_more))
}

pub async fn set_active(pool: &PgPool, merchant_id: &str, id: &str, active: bool, now: DateTime<Utc>) -> Result<PackView> {
    let row: Option<Row> = sqlx::query_as(&format!(
        "UPDATE credit_packs SET active = $3, updated_at = $4 WHERE id = $1 AND merchant_id = $2 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(merchant_id)
    .bind(active)
    .bind(now)
    .fetch_optional(pool)
    .await?;
    row.map(view).ok_or_else(|| CreditsError::NotFound { what: "credit pack", id: id.to_owned() })
}
