//! Promo codes: a percentage or an amount off a pack's price, bonus credits, or trial days (for
//! subscriptions), within limits. A code is matched without regard to case. Its redemption is
//! counted in the transaction that records the purchase it applies to, by one conditional update of
//! its counter, so concurrent redemptions can never exceed `max_redemptions`; the per-customer limit
//! is checked under the customer's row lock.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use payrail_store::page::{Listing, Order, Page};
use sqlx::{PgConnection, PgPool};

use crate::error::{invalid, CreditsError, Result};
use crate::ids::new_id;
use crate::money::{Amount, Fiat};

/// What a code may apply to.
pub const APPLIES_TO: &[&str] = &["packs", "invoices", "plans"];

/// Body of `POST /v1/promo_codes`: exactly one of `percent_off`, `amount_off`, `bonus_credits`,
/// `trial_days`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePromo {
    /// 2 to 40 characters of letters, digits, `_` and `-`; matched without regard to case.
    pub code: String,
    /// 1 to 100 percent off the price (the discount rounded down to the minor unit).
    pub percent_off: Option<u32>,
    /// A decimal of `currency` off the price.
    pub amount_off: Option<String>,
    /// ISO 4217, with `amount_off`.
    pub currency: Option<String>,
    /// Credits added to a pack's bonus, an integer string.
    pub bonus_credits: Option<String>,
    /// Free days of a subscription's plan.
    pub trial_days: Option<u32>,
    pub max_redemptions: Option<i64>,
    pub per_customer_max: Option<i64>,
    /// The lowest price it applies to, a decimal of `min_currency`.
    pub min_amount: Option<String>,
    pub min_currency: Option<String>,
    pub starts_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Any of `packs`, `invoices`, `plans`; `["packs"]` when absent.
    pub applies_to: Option<Vec<String>>,
    pub active: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PromoView {
    /// `promo_…`
    pub id: String,
    #[schema(value_type = String, example = "promo_code")]
    pub object: &'static str,
    /// Lower case.
    pub code: String,
    /// `percent_off`, `amount_off`, `bonus_credits` or `trial_days`.
    pub kind: String,
    /// Percent, minor units of `currency`, credits or days.
    pub value: String,
    pub currency: Option<String>,
    pub max_redemptions: Option<i64>,
    pub per_customer_max: Option<i64>,
    pub min_amount_minor: Option<String>,
    pub min_currency: Option<String>,
    pub starts_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub applies_to: Vec<String>,
    pub active: bool,
    pub redeemed: i64,
    pub created_at: DateTime<Utc>,
}

type Row = (
    String,
    String,
    String,
    String,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Vec<String>,
    bool,
    i64,
    DateTime<Utc>,
);
const COLUMNS: &str = "id, code, kind, value::text, currency, max_redemptions, per_customer_max, min_amount_minor::text, min_currency, \
     starts_at, expires_at, applies_to, active, redeemed, created_at";

fn view(row: Row) -> PromoView {
    let (id, code, kind, value, currency, max_redemptions, per_customer_max, min_amount_minor, min_currency, starts_at, expires_at, applies_to, active, redeemed, created_at) = row;
    PromoView {
        id,
        object: "promo_code",
        code,
        kind,
        value,
        currency,
        max_redemptions,
        per_customer_max,
        min_amount_minor,
        min_currency,
        starts_at,
        expires_at,
        applies_to,
        active,
        redeemed,
        created_at,
    }
}

fn positive_decimal(field: &'static str, text: &str, fiat: Fiat) -> Result<Amount> {
    Amount::parse_decimal(text, fiat.minor_units())
        .ok()
        .filter(|a| !a.is_zero() && !text.starts_with('+') && text.len() <= 40)
        .ok_or_else(|| invalid(field, format!("a positive decimal of at most {} decimals", fiat.minor_units())))
}

pub async fn create(pool: &PgPool, merchant_id: &str, request: &CreatePromo, now: DateTime<Utc>) -> Result<PromoView> {
    let code = request.code.to_ascii_lowercase();
    if !valid_code(&code) {
        return Err(invalid("code", "2 to 40 characters of letters, digits, _ and -"));
    }
    let currency_of = |field: &'static str, text: &Option<String>| -> Result<Option<Fiat>> {
        text.as_deref().map(|c| c.parse::<Fiat>().map_err(|e| invalid(field, e.to_string()))).transpose()
    };
    let currency = currency_of("currency", &request.currency)?;
    let (kind, value) = match (request.percent_off, &request.amount_off, &request.bonus_credits, request.trial_days) {
        (Some(p), None, None, None) if (1..=100).contains(&p) => ("percent_off", Amount::from_u64(u64::from(p))),
        (Some(_), None, None, None) => return Err(invalid("percent_off", "1 to 100")),
        (None, Some(off), None, None) => {
            let fiat = currency.ok_or_else(|| invalid("currency", "amount_off needs its currency"))?;
            ("amount_off", positive_decimal("amount_off", off, fiat)?)
        }
        (None, None, Some(bonus), None) => ("bonus_credits", crate::currency::parse_amount("bonus_credits", bonus)?),
        (None, None, None, Some(days)) if (1..=3650).contains(&days) => ("trial_days", Amount::from_u64(u64::from(days))),
        (None, None, None, Some(_)) => return Err(invalid("trial_days", "1 to 3650")),
        _ => return Err(invalid("percent_off", "exactly one of percent_off, amount_off, bonus_credits and trial_days")),
    };
    if kind != "amount_off" && currency.is_some() {
        return Err(invalid("currency", "only with amount_off"));
    }
    for (field, limit) in [("max_redemptions", request.max_redemptions), ("per_customer_max", request.per_customer_max)] {
        if limit.is_some_and(|l| l < 1) {
            return Err(invalid(field, "at least 1"));
        }
    }
    let min_currency = currency_of("min_currency", &request.min_currency)?;
    let min_amount = match (&request.min_amount, min_currency) {
        (None, None) => None,
        (Some(text), Some(fiat)) => Some(positive_decimal("min_amount", text, fiat)?),
        _ => return Err(invalid("min_amount", "min_amount and min_currency go together")),
    };
    if let (Some(from), Some(to)) = (request.starts_at, request.expires_at) {
        if from >= to {
            return Err(invalid("expires_at", "must be after starts_at"));
        }
    }
    let applies_to = request.applies_to.clone().unwrap_or_else(|| vec!["packs".to_owned()]);
    if applies_to.is_empty() || applies_to.iter().any(|a| !APPLIES_TO.contains(&a.as_str())) {
        return Err(invalid("applies_to", format!("some of {}", APPLIES_TO.join(", "))));
    }
    let row: Option<Row> = sqlx::query_as(&format!(
        "INSERT INTO promo_codes (id, merchant_id, code, kind, value, currency, max_redemptions, per_customer_max, min_amount_minor, min_currency, \
                                  starts_at, expires_at, applies_to, active, created_at) \
         VALUES ($1, $2, $3, $4, $5::numeric, $6, $7, $8, $9::numeric, $10, $11, $12, $13, $14, $15) \
         ON CONFLICT (merchant_id, code) DO NOTHING RETURNING {COLUMNS}"
    ))
    .bind(new_id("promo"))
    .bind(merchant_id)
    .bind(&code)
    .bind(kind)
    .bind(value.to_string())
    .bind(currency.map(|c| c.code()))
    .bind(request.max_redemptions)
    .bind(request.per_customer_max)
    .bind(min_amount.map(|a| a.to_string()))
    .bind(min_currency.map(|c| c.code()))
    .bind(request.starts_at)
    .bind(request.expires_at)
    .bind(&applies_to)
    .bind(request.active.unwrap_or(true))
    .bind(now)
    .fetch_optional(pool)
    .await?;
    row.map(view).ok_or(CreditsError::Exists { what: "promo code", id: code })
}

/// A page of the merchant's promo codes, oldest first, and whether more follow.
pub async fn list(pool: &PgPool, merchant_id: &str, page: &Page) -> Result<(Vec<PromoView>, bool)> {
    const LIST: Listing = Listing { table: "promo_codes", columns: COLUMNS, owner: "merchant_id", id: "id", order: Order("created_at, id") };
    let (rows, has_more): (Vec<Row>, bool) = LIST.page(pool, merchant_id, page).await?;
    Ok((rows.into_iter().map(view).collect(), has_more))
}

/// Whether `code` (lower case) is what a promo code may be: 2 to 40 letters, digits, `_` and `-`.
fn valid_code(code: &str) -> bool {
    (2..=40).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Finds `code` (any case) and checks that it may apply to `what` priced `price` of `fiat` at
/// `now`; the redemption is counted later by [`redeem`].
pub async fn find_usable(pool: &PgPool, merchant_id: &str, code: &str, what: &str, price: Amount, fiat: Fiat, now: DateTime<Utc>) -> Result<PromoView> {
    // A code no promo code can have (a NUL byte, which PostgreSQL refuses in text, among them) is
    // not found, without asking.
    if !valid_code(&code.to_ascii_lowercase()) {
        return Err(CreditsError::NotFound { what: "promo code", id: code.escape_debug().to_string() });
    }
    let row: Option<Row> = sqlx::query_as(&format!("SELECT {COLUMNS} FROM promo_codes WHERE merchant_id = $1 AND code = $2"))
        .bind(merchant_id)
        .bind(code.to_ascii_lowercase())
        .fetch_optional(pool)
        .await?;
    let promo = row.map(view).ok_or_else(|| CreditsError::NotFound { what: "promo code", id: code.to_owned() })?;
    let refused = |reason: String| CreditsError::PromoRefused { code: promo.code.clone(), reason };
    if !promo.active {
        return Err(refused("it is not active".to_owned()));
    }
    if promo.starts_at.is_some_and(|at| now < at) || promo.expires_at.is_some_and(|at| now >= at) {
        return Err(refused("it is not valid at this time".to_owned()));
    }
    if !promo.applies_to.iter().any(|a| a == what) {
        return Err(refused(format!("it does not apply to {what}")));
    }
    if promo.max_redemptions.is_some_and(|max| promo.redeemed >= max) {
        return Err(refused("it has been redeemed as often as it may be".to_owned()));
    }
    if let (Some(min), Some(min_currency)) = (&promo.min_amount_minor, &promo.min_currency) {
        let min = Amount::parse_decimal(min, 0).map_err(|_| invalid("promo_code", format!("stored minimum {min:?}")))?;
        if min_currency != fiat.code() || price < min {
            return Err(refused(format!("the price must be at least {} {min_currency}", min.to_decimal_string(fiat.minor_units()))));
        }
    }
    if promo.kind == "amount_off" && promo.currency.as_deref() != Some(fiat.code()) {
        return Err(refused(format!("it takes {} off, not {}", promo.currency.as_deref().unwrap_or("?"), fiat.code())));
    }
    Ok(promo)
}

/// What `promo` makes of a price of `price` and a bonus of `bonus`: (price to pay, discount,
/// bonus). Refused when nothing would be left to pay.
pub fn apply(promo: &PromoView, price: Amount, bonus: Amount) -> Result<(Amount, Amount, Amount)> {
    let value = Amount::parse_decimal(&promo.value, 0).map_err(|_| invalid("promo_code", format!("stored value {:?}", promo.value)))?;
    let discount = match promo.kind.as_str() {
        "percent_off" => crate::money::mul_div(price, value, Amount::from_u64(100), crate::money::Rounding::Down).map_err(|e| invalid("promo_code", e.to_string()))?,
        "amount_off" => value,
        _ => Amount::ZERO,
    };
    if discount >= price {
        return Err(CreditsError::PromoRefused { code: promo.code.clone(), reason: "it would leave nothing to pay".to_owned() });
    }
    let bonus = if promo.kind == "bonus_credits" { bonus.checked_add(value).unwrap_or(Amount::MAX) } else { bonus };
    Ok((price.saturating_sub(discount), discount, bonus))
}

/// What a redemption discounts.
#[derive(Debug, Clone, Copy)]
pub enum Redeemed<'a> {
    Purchase(&'a str),
    Invoice(&'a str),
    Subscription(&'a str),
}

/// Counts one redemption of `promo` by `customer_id` for `target`, on the caller's transaction
/// (which holds the customer's row lock): refused once the code is used up, in all or for this
/// customer (a code limited per customer needs one).
pub async fn redeem(tx: &mut PgConnection, promo: &PromoView, customer_id: Option<&str>, target: Redeemed<'_>, now: DateTime<Utc>) -> Result<()> {
    let counted: Option<String> = sqlx::query_scalar(
        "UPDATE promo_codes SET redeemed = redeemed + 1 WHERE id = $1 AND active AND (max_redemptions IS NULL OR redeemed < max_redemptions) RETURNING id",
    )
    .bind(&promo.id)
    .fetch_optional(&mut *tx)
    .await?;
    if counted.is_none() {
        return Err(CreditsError::PromoRefused { code: promo.code.clone(), reason: "it has been redeemed as often as it may be".to_owned() });
    }
    if let Some(max) = promo.per_customer_max {
        let Some(customer_id) = customer_id else {
            return Err(CreditsError::PromoRefused { code: promo.code.clone(), reason: "it is limited per customer: name the customer".to_owned() });
        };
        let used: i64 = sqlx::query_scalar("SELECT count(*) FROM promo_redemptions WHERE promo_id = $1 AND customer_id = $2")
            .bind(&promo.id)
            .bind(customer_id)
            .fetch_one(&mut *tx)
            .await?;
        if used >= max {
            return Err(CreditsError::PromoRefused { code: promo.code.clone(), reason: format!("this customer has redeemed it {used} times, the most it may") });
        }
    }
    let (purchase_id, invoice_id, subscription_id) = match target {
        Redeemed::Purchase(id) => (Some(id), None, None),
        Redeemed::Invoice(id) => (None, Some(id), None),
        Redeemed::Subscription(id) => (None, None, Some(id)),
    };
    sqlx::query(
        "INSERT INTO promo_redemptions (promo_id, customer_id, purchase_id, invoice_id, subscription_id, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
        .bind(&promo.id)
        .bind(customer_id)
        .bind(purchase_id)
        .bind(invoice_id)
        .bind(subscription_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    Ok(())
}
