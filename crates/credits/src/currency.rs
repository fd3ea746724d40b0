//! Credit currencies: what a merchant calls its credits, their decimals, and what one is worth.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use payrail_store::page::{Listing, Order, Page};
use sqlx::{PgConnection, PgPool};

use payrail_core::credits::{CreditAsset, CREDIT_DECIMALS_MAX};

use crate::error::{invalid, CreditsError, Result};
use crate::money::{asset_to_fiat, Amount, Fiat, Rate, Rounding};

/// Most credit currencies per merchant.
pub const CURRENCIES_MAX: i64 = 20;

/// Body of `POST /v1/credit_currencies`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCurrency {
    /// `coins`: 2 to 32 characters of a-z, 0-9 and `_`, starting with a letter.
    pub code: String,
    /// Shown to people: `Coins`.
    pub name: String,
    /// 0 to 6; 0 when absent (whole credits).
    #[serde(default)]
    pub decimals: u8,
    /// What one whole credit is worth, a decimal string (`"0.01"`), in `peg_currency`. Without a
    /// peg credits are worth nothing in money: creators cannot earn them.
    pub peg: Option<String>,
    /// ISO 4217 code of the peg.
    pub peg_currency: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct CurrencyView {
    #[schema(value_type = String, example = "credit_currency")]
    pub object: &'static str,
    pub code: String,
    pub name: String,
    pub decimals: u8,
    /// The ledger asset of these credits: `credit:{merchant_id}/{code}`.
    pub asset: String,
    pub peg: Option<String>,
    pub peg_currency: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl CurrencyView {
    /// What `amount` of these credits is worth in their peg currency, rounded down; `None` unpegged.
    pub fn value(&self, amount: Amount) -> Option<(Fiat, Amount)> {
        let fiat: Fiat = self.peg_currency.as_deref()?.parse().ok()?;
        let rate: Rate = self.peg.as_deref()?.parse().ok()?;
        asset_to_fiat(amount, self.decimals, &rate, fiat, Rounding::Down).ok().map(|v| (fiat, v))
    }
}

type Row = (String, String, i16, Option<String>, Option<String>, DateTime<Utc>);

fn view(merchant_id: &str, (code, name, decimals, peg, peg_currency, created_at): Row) -> CurrencyView {
    let asset = CreditAsset::new(merchant_id, &code).map_or_else(|_| format!("credit:{merchant_id}/{code}"), |a| a.to_string());
    CurrencyView { object: "credit_currency", code, name, decimals: u8::try_from(decimals).unwrap_or(0), asset, peg, peg_currency, created_at }
}

pub async fn create(pool: &PgPool, merchant_id: &str, request: &CreateCurrency, now: DateTime<Utc>) -> Result<CurrencyView> {
    if !CreditAsset::valid_code(&request.code) {
        return Err(invalid("code", "2 to 32 characters of a-z, 0-9 and _, starting with a letter"));
    }
    let name = request.name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(invalid("name", "1 to 100 characters"));
    }
    if request.decimals > CREDIT_DECIMALS_MAX {
        return Err(invalid("decimals", format!("0 to {CREDIT_DECIMALS_MAX}")));
    }
    match (&request.peg, &request.peg_currency) {
        (None, None) => {}
        (Some(peg), Some(currency)) => {
            let rate: Rate = peg.parse().map_err(|_| invalid("peg", format!("{peg:?} is not a positive decimal")))?;
            if rate.mantissa().is_zero() || !peg.bytes().all(|b| b.is_ascii_digit() || b == b'.') || peg.len() > 40 {
                return Err(invalid("peg", format!("{peg:?} is not a positive decimal")));
            }
            currency.parse::<Fiat>().map_err(|e| invalid("peg_currency", e.to_string()))?;
        }
        _ => return Err(invalid("peg", "peg and peg_currency go together")),
    }
    let mut tx = pool.begin().await?;
    // One currency list per merchant: count and insert under its lock.
    sqlx::query("SELECT id FROM merchants WHERE id = $1 FOR UPDATE").bind(merchant_id).execute(&mut *tx).await?;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM credit_currencies WHERE merchant_id = $1").bind(merchant_id).fetch_one(&mut *tx).await?;
    if count >= CURRENCIES_MAX {
        return Err(invalid("code", format!("at most {CURRENCIES_MAX} credit currencies per merchant")));
    }
    let row: Option<Row> = sqlx::query_as(
        "INSERT INTO credit_currencies (merchant_id, code, name, decimals, peg, peg_currency, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING \
         RETURNING code, name, decimals, peg, peg_currency, created_at",
    )
    .bind(merchant_id)
    .bind(&request.code)
    .bind(name)
    .bind(i16::from(request.decimals))
    .bind(&request.peg)
    .bind(&request.peg_currency)
    .bind(now)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Err(CreditsError::Exists { what: "credit currency", id: request.code.clone() });
    };
    tx.commit().await?;
    Ok(view(merchant_id, row))
}

/// A page of the merchant's credit currencies, by code, and whether more follow.
pub async fn list(pool: &PgPool, merchant_id: &str, page: &Page) -> Result<(Vec<CurrencyView>, bool)> {
    const LIST: Listing = Listing {
        table: "credit_currencies",
        columns: "code, name, decimals, peg, peg_currency, created_at",
        owner: "merchant_id",
        id: "code",
        order: Order("code"),
    };
    let (rows, has_more): (Vec<Row>, bool) = LIST.page(pool, merchant_id, page).await?;
    Ok((rows.into_iter().map(|r| view(merchant_id, r)).collect(), has_more))
}

/// The merchant's credit currencies, read on `conn`.
pub async fn list_on(conn: &mut PgConnection, merchant_id: &str) -> Result<Vec<CurrencyView>> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT code, name, decimals, peg, peg_currency, created_at FROM credit_currencies WHERE merchant_id = $1 ORDER BY code",
    )
    .bind(merchant_id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(|r| view(merchant_id, r)).collect())
}

pub async fn get(conn: &mut PgConnection, merchant_id: &str, code: &str) -> Result<CurrencyView> {
    // A code no currency can have (a NUL byte, which PostgreSQL refuses in any text, among them)
    // names none: not found, without asking.
    if !CreditAsset::valid_code(code) {
        return Err(CreditsError::NotFound { what: "credit currency", id: code.escape_debug().to_string() });
    }
    let row: Option<Row> = sqlx::query_as(
        "SELECT code, name, decimals, peg, peg_currency, created_at FROM credit_currencies WHERE merchant_id = $1 AND code = $2",
    )
    .bind(merchant_id)
    .bind(code)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|r| view(merchant_id, r)).ok_or_else(|| CreditsError::NotFound { what: "credit currency", id: code.to_owned() })
}

/// Parses a credit amount: a positive integer string of the currency's smallest unit.
pub fn parse_amount(field: &'static str, text: &str) -> Result<Amount> {
    match Amount::parse_decimal(text, 0) {
        Ok(amount) if !amount.is_zero() && text.bytes().all(|b| b.is_ascii_digit()) && text.len() <= 30 => Ok(amount),
        _ => Err(invalid(field, "must be a positive integer string of the currency's smallest unit")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pegged_credit_is_worth_its_peg_rounded_down() {
        let coins = CurrencyView {
            object: "credit_currency",
            code: "coins".to_owned(),
            name: "Coins".to_owned(),
            decimals: 0,
            asset: "credit:mer_0123456789abcdef/coins".to_owned(),
            peg: Some("0.01".to_owned()),
            peg_currency: Some("USD".to_owned()),
            created_at: Utc::now(),
        };
        assert_eq!(coins.value(Amount::from_u64(7)), Some((Fiat::USD, Amount::from_u64(7))));
        let gems = CurrencyView { decimals: 2, peg: Some("0.333".to_owned()), ..coins.clone() };
        // 1.50 gems × 0.333 USD = 0.4995 USD → 49 cents.
        assert_eq!(gems.value(Amount::from_u64(150)), Some((Fiat::USD, Amount::from_u64(49))));
        assert_eq!(CurrencyView { peg: None, peg_currency: None, ..coins }.value(Amount::from_u64(7)), None);
    }
}
