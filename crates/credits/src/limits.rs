//! Per-customer limits a merchant sets, in fiat value: what a customer may spend, send (gifts,
//! transfers, tips) and buy per UTC day, and buy per UTC month.
//!
//! A movement's fiat value is recorded on its history row (pegged credits at their peg; purchases
//! at their price). A limit is checked, and the movement recorded, under the customer's row lock,
//! so concurrent requests of one customer are judged one after the other and cannot together pass
//! a limit. Credits without a peg, or pegged to another currency than the limits', are not counted.

use chrono::{DateTime, Datelike, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};

use crate::error::{invalid, CreditsError, Result};
use crate::money::{Amount, Fiat};

/// `PUT /v1/credit_limits` and what `GET` answers: decimals of `currency`; absent or null, no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// ISO 4217: what the limits are counted in. Null when no limits are set.
    pub currency: Option<String>,
    pub spend_per_day: Option<String>,
    pub transfer_per_day: Option<String>,
    pub purchase_per_day: Option<String>,
    pub purchase_per_month: Option<String>,
}

/// What kind of movement a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    Spend,
    Transfer,
}

impl Counted {
    fn kinds(self) -> &'static [&'static str] {
        match self {
            Self::Spend => &["spend"],
            Self::Transfer => &["gift_sent", "transfer_sent", "tip"],
        }
    }
}

struct Stored {
    fiat: Fiat,
    spend_per_day: Option<Amount>,
    transfer_per_day: Option<Amount>,
    purchase_per_day: Option<Amount>,
    purchase_per_month: Option<Amount>,
}

type Row = (String, Option<String>, Option<String>, Option<String>, Option<String>);

fn parse_row((currency, spend, transfer, purchase_day, purchase_month): Row) -> Result<Stored> {
    let fiat: Fiat = currency.parse().map_err(|_| invalid("credit_limits", format!("stored currency {currency:?}")))?;
    let amount = |text: Option<String>| text.map(|t| Amount::parse_decimal(&t, 0).map_err(|_| invalid("credit_limits", format!("stored {t:?}")))).transpose();
    Ok(Stored { fiat, spend_per_day: amount(spend)?, transfer_per_day: amount(transfer)?, purchase_per_day: amount(purchase_day)?, purchase_per_month: amount(purchase_month)? })
}

async fn load(conn: &mut PgConnection, merchant_id: &str) -> Result<Option<Stored>> {
    let row: Option<Row> = sqlx::query_as(
        "SELECT currency, spend_per_day_minor::text, transfer_per_day_minor::text, purchase_per_day_minor::text, purchase_per_month_minor::text \
         FROM credit_limits WHERE merchant_id = $1",
    )
    .bind(merchant_id)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(parse_row).transpose()
}

fn shown(stored: Option<Stored>) -> Limits {
    let Some(s) = stored else { return Limits::default() };
    let decimal = |a: Option<Amount>| a.map(|a| a.to_decimal_string(s.fiat.minor_units()));
    Limits {
        currency: Some(s.fiat.code().to_owned()),
        spend_per_day: decimal(s.spend_per_day),
        transfer_per_day: decimal(s.transfer_per_day),
        purchase_per_day: decimal(s.purchase_per_day),
        purchase_per_month: decimal(s.purchase_per_month),
    }
}

pub async fn get(pool: &PgPool, merchant_id: &str) -> Result<Limits> {
    Ok(shown(load(&mut *pool.acquire().await?, merchant_id).await?))
}

/// Replaces the merchant's limits; `{}` (no currency) removes them.
pub async fn set(pool: &PgPool, merchant_id: &str, limits: &Limits, now: DateTime<Utc>) -> Result<Limits> {
    let Some(code) = &limits.currency else {
        if limits != &Limits::default() {
            return Err(invalid("currency", "limits need the currency they are counted in"));
        }
        sqlx::query("DELETE FROM credit_limits WHERE merchant_id = $1").bind(merchant_id).execute(pool).await?;
        return Ok(Limits::default());
    };
    let fiat: Fiat = code.parse().map_err(|e: crate::money::FiatError| invalid("currency", e.to_string()))?;
    let parse = |field: &'static str, text: &Option<String>| -> Result<Option<String>> {
        text.as_deref()
            .map(|t| {
                Amount::parse_decimal(t, fiat.minor_units())
                    .ok()
                    .filter(|a| !a.is_zero() && !t.starts_with('+') && t.len() <= 40)
                    .map(|a| a.to_string())
                    .ok_or_else(|| invalid(field, format!("a positive decimal of at most {} decimals", fiat.minor_units())))
            })
            .transpose()
    };
    sqlx::query(
        "INSERT INTO credit_limits (merchant_id, currency, spend_per_day_minor, transfer_per_day_minor, purchase_per_day_minor, purchase_per_month_minor, updated_at) \
         VALUES ($1, $2, $3::numeric, $4::numeric, $5::numeric, $6::numeric, $7) \
         ON CONFLICT (merchant_id) DO UPDATE SET currency = $2, spend_per_day_minor = $3::numeric, transfer_per_day_minor = $4::numeric, \
             purchase_per_day_minor = $5::numeric, purchase_per_month_minor = $6::numeric, updated_at = $7",
    )
    .bind(merchant_id)
    .bind(fiat.code())
    .bind(parse("spend_per_day", &limits.spend_per_day)?)
    .bind(parse("transfer_per_day", &limits.transfer_per_day)?)
    .bind(parse("purchase_per_day", &limits.purchase_per_day)?)
    .bind(parse("purchase_per_month", &limits.purchase_per_month)?)
    .bind(now)
    .execute(pool)
    .await?;
    get(pool, merchant_id).await
}

fn day_start(now: DateTime<Utc>) -> DateTime<Utc> {
    now.date_naive().and_hms_opt(0, 0, 0).map_or(now, |d| Utc.from_utc_datetime(&d))
}

fn month_start(now: DateTime<Utc>) -> DateTime<Utc> {
    now.date_naive().with_day(1).and_then(|d| d.and_hms_opt(0, 0, 0)).map_or(now, |d| Utc.from_utc_datetime(&d))
}

fn exceeded(what: &'static str, fiat: Fiat, limit: Amount, used: Amount) -> CreditsError {
    CreditsError::LimitExceeded {
        limit: what,
        currency: fiat.code().to_owned(),
        remaining: limit.saturating_sub(used).to_decimal_string(fiat.minor_units()),
    }
}

/// Checks a spend or transfer worth `value` against the merchant's daily limit, on the caller's
/// transaction (which holds the customer's lock). Returns the value to record on the movement's
/// row, in the limits' currency; `None` when it is not counted.
pub(crate) async fn check_movement(tx: &mut PgConnection, merchant_id: &str, customer_id: &str, counted: Counted, value: Option<(Fiat, Amount)>, now: DateTime<Utc>) -> Result<Option<(Fiat, Amount)>> {
    let Some(limits) = load(&mut *tx, merchant_id).await? else { return Ok(value) };
    let Some((fiat, amount)) = value.filter(|(fiat, _)| *fiat == limits.fiat) else { return Ok(None) };
    let limit = match counted {
        Counted::Spend => limits.spend_per_day,
        Counted::Transfer => limits.transfer_per_day,
    };
    if let Some(limit) = limit {
        let used = sum(
            &mut *tx,
            "SELECT coalesce(sum(value_minor), 0)::text FROM credit_transactions \
             WHERE customer_id = $1 AND kind = ANY($2) AND value_currency = $3 AND created_at >= $4",
            customer_id,
            counted.kinds(),
            fiat,
            day_start(now),
        )
        .await?;
        if used.checked_add(amount).is_none_or(|total| total > limit) {
            let what = if counted == Counted::Spend { "spend_per_day" } else { "transfer_per_day" };
            return Err(exceeded(what, fiat, limit, used));
        }
    }
    Ok(Some((fiat, amount)))
}

/// Checks a purchase of `price` against the merchant's daily and monthly purchase limits, on the
/// caller's transaction (which holds the customer's lock).
pub(crate) async fn check_purchase(tx: &mut PgConnection, merchant_id: &str, customer_id: &str, fiat: Fiat, price: Amount, now: DateTime<Utc>) -> Result<()> {
    let Some(limits) = load(&mut *tx, merchant_id).await? else { return Ok(()) };
    if fiat != limits.fiat {
        return Ok(());
    }
    for (what, limit, since) in [("purchase_per_day", limits.purchase_per_day, day_start(now)), ("purchase_per_month", limits.purchase_per_month, month_start(now))] {
        let Some(limit) = limit else { continue };
        let used = sum(
            &mut *tx,
            "SELECT coalesce(sum(price_minor), 0)::text FROM credit_purchases \
             WHERE customer_id = $1 AND $2::text[] IS NOT NULL AND price_currency = $3 AND created_at >= $4",
            customer_id,
            &[],
            fiat,
            since,
        )
        .await?;
        if used.checked_add(price).is_none_or(|total| total > limit) {
            return Err(exceeded(what, fiat, limit, used));
        }
    }
    Ok(())
}

async fn sum(tx: &mut PgConnection, sql: &str, customer_id: &str, kinds: &[&str], fiat: Fiat, since: DateTime<Utc>) -> Result<Amount> {
    let text: String = sqlx::query_scalar(sql).bind(customer_id).bind(kinds).bind(fiat.code()).bind(since).fetch_one(&mut *tx).await?;
    Amount::parse_decimal(&text, 0).map_err(|_| invalid("credit_limits", format!("a sum of {text:?}")))
}

/// Records the fiat value of movement `txn_id` (counted by later limit checks).
pub(crate) async fn record_value(tx: &mut PgConnection, txn_id: &str, value: Option<(Fiat, Amount)>) -> Result<()> {
    if let Some((fiat, amount)) = value {
        sqlx::query("UPDATE credit_transactions SET value_minor = $2::numeric, value_currency = $3 WHERE id = $1")
            .bind(txn_id)
            .bind(amount.to_string())
            .bind(fiat.code())
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_and_months_start_at_utc_midnight() {
        let at = Utc.with_ymd_and_hms(2026, 12, 4, 18, 30, 5).single().expect("time");
        assert_eq!(day_start(at), Utc.with_ymd_and_hms(2026, 12, 4, 0, 0, 0).single().expect("time"));
        assert_eq!(month_start(at), Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).single().expect("time"));
    }
}
