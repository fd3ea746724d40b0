//! Pack purchases: an invoice of their own, whose credits are granted in the transaction that makes
//! it paid — whatever rail paid it — and reversed where unspent if it stops being paid.
//!
//! The invoice store calls [`on_invoice_status`] from the one place an invoice's status moves, on
//! the same transaction, so a payment is credited and its credits granted together or not at all.
//! Each grant is a generation of the purchase (`purchase:{id}#{n}`): a reorg that takes the payment
//! back reverses the unspent part of that generation's lots (they close), and what had already
//! been spent (or expired) is recorded as `owed_minor` on the purchase, for the merchant to review
//! — credits cannot be taken back from what they bought. If the payment is mined again, generation
//! n+1 is granted less what is owed (the purchased credits first, then the bonus), so one payment
//! never yields more than its pack: each generation once, the pack once in all.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use serde_json::json;
use sqlx::{PgConnection, PgPool};

use payrail_store::ledger::Ledger;
use payrail_store::outbox::emit;

use crate::currency;
use crate::error::{invalid, CreditsError, Result};
use crate::ids::new_id;
use crate::ledger::{AccountCode, NewEntry};
use crate::money::Amount;
use crate::movement::{asset_of, entry_key, insert_lot, insert_row, lock_customers, post, Row};
use crate::pack::PackView;
use crate::promo::PromoView;

/// A customer's purchase of a pack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct PurchaseView {
    /// `cpu_…`
    pub id: String,
    pub customer_id: String,
    pub pack_id: String,
    /// The invoice the customer pays.
    pub invoice_id: String,
    pub currency: String,
    pub credits: String,
    pub bonus_credits: String,
    /// `pending` (not paid yet), `granted` or `reversed` (the payment was taken back).
    pub status: String,
    /// Credits of a reversed grant that had been spent or had expired by then.
    pub owed_minor: String,
    /// The promo code applied, `promo_…`.
    pub promo_id: Option<String>,
    /// What the promo code took off the pack's price, in the price currency's minor units.
    pub discount_minor: String,
    pub granted_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, customer_id, pack_id, invoice_id, currency, credits::text AS credits, bonus_credits::text AS bonus_credits, \
     status, owed_minor::text AS owed_minor, promo_id, discount_minor::text AS discount_minor, granted_at, created_at";

/// The order id of a pack's invoices: split rules may name it (`credits/`).
pub fn order_id(pack_id: &str) -> String {
    format!("credits/{pack_id}")
}

/// What a purchase costs once a promo code, if any, is applied.
#[derive(Debug, Clone)]
pub struct Priced {
    /// What the invoice asks, in the price currency's minor units.
    pub price: Amount,
    pub discount: Amount,
    /// The pack's bonus, plus a promo code's bonus credits.
    pub bonus: Amount,
    pub promo: Option<PromoView>,
}

/// Prices `pack` with `promo` (already found usable for it).
pub fn price(pack: &PackView, promo: Option<PromoView>) -> Result<Priced> {
    let fiat: crate::money::Fiat = pack.price_currency.parse().map_err(|_| invalid("pack", format!("stored currency {:?}", pack.price_currency)))?;
    let price = Amount::parse_decimal(&pack.price, fiat.minor_units()).map_err(|_| invalid("pack", format!("stored price {:?}", pack.price)))?;
    let bonus = Amount::parse_decimal(&pack.bonus_credits, 0).map_err(|_| invalid("pack", format!("stored bonus {:?}", pack.bonus_credits)))?;
    match promo {
        None => Ok(Priced { price, discount: Amount::ZERO, bonus, promo: None }),
        Some(promo) => {
            let (price, discount, bonus) = crate::promo::apply(&promo, price, bonus)?;
            Ok(Priced { price, discount, bonus, promo: Some(promo) })
        }
    }
}

/// Records that invoice `invoice_id` buys `pack` for `customer_id`, as `priced` (once per
/// invoice), and counts the promo code's redemption in the same transaction: refused, with nothing
/// recorded, when the code is used up.
pub async fn record(pool: &PgPool, merchant_id: &str, customer_id: &str, pack: &PackView, priced: &Priced, invoice_id: &str, now: DateTime<Utc>) -> Result<PurchaseView> {
    if !pack.active {
        return Err(invalid("pack", format!("{} is not sold any more", pack.id)));
    }
    let fiat: crate::money::Fiat = pack.price_currency.parse().map_err(|_| invalid("pack", format!("stored currency {:?}", pack.price_currency)))?;
    let mut tx = pool.begin().await?;
    lock_customers(&mut tx, merchant_id, &[customer_id]).await?;
    if by_invoice(&mut tx, invoice_id).await?.is_none() {
        crate::limits::check_purchase(&mut tx, merchant_id, customer_id, fiat, priced.price, now).await?;
    }
    let id = new_id("cpu");
    let inserted = sqlx::query(
        "INSERT INTO credit_purchases (id, merchant_id, customer_id, pack_id, invoice_id, currency, credits, bonus_credits, expires_in_s, \
                                       status, promo_id, discount_minor, price_minor, price_currency, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7::numeric, $8::numeric, $9, 'pending', $10, $11::numeric, $13::numeric, $14, $12, $12) \
         ON CONFLICT (invoice_id) DO NOTHING",
    )
    .bind(&id)
    .bind(merchant_id)
    .bind(customer_id)
    .bind(&pack.id)
    .bind(invoice_id)
    .bind(&pack.currency)
    .bind(&pack.credits)
    .bind(priced.bonus.to_string())
    .bind(pack.expires_in_s)
    .bind(priced.promo.as_ref().map(|p| p.id.clone()))
    .bind(priced.discount.to_string())
    .bind(now)
    .bind(priced.price.to_string())
    .bind(fiat.code())
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 1 {
        if let Some(promo) = &priced.promo {
            crate::promo::redeem(&mut tx, promo, Some(customer_id), crate::promo::Redeemed::Purchase(&id), now).await?;
        }
    }
    let view = by_invoice(&mut tx, invoice_id).await?.ok_or_else(|| CreditsError::NotFound { what: "credit purchase of invoice", id: invoice_id.to_owned() })?;
    tx.commit().await?;
    Ok(view)
}

pub async fn by_invoice(conn: &mut PgConnection, invoice_id: &str) -> Result<Option<PurchaseView>> {
    Ok(sqlx::query_as(&format!("SELECT {COLUMNS} FROM credit_purchases WHERE invoice_id = $1")).bind(invoice_id).fetch_optional(&mut *conn).await?)
}

/// [`on_invoice_status`] for the invoices a payment step moved into (`true`) or out of paid: one
/// query finds those that sell credits, and only they are handled.
pub async fn on_invoice_statuses(tx: &mut PgConnection, ledger: &Ledger, moved: &[(&str, bool)], now: DateTime<Utc>) -> Result<()> {
    for (id, paid) in payrail_store::invoice_links::linked(&mut *tx, "credit_purchases", moved).await? {
        on_invoice_status(&mut *tx, ledger, id, paid, now).await?;
    }
    Ok(())
}

/// Grants or reverses the purchase of `invoice_id`, if it has one, as the invoice becomes paid
/// (`paid`) or stops being paid; on the caller's transaction, which holds the invoice's lock.
pub async fn on_invoice_status(tx: &mut PgConnection, ledger: &Ledger, invoice_id: &str, paid: bool, now: DateTime<Utc>) -> Result<()> {
    let row: Option<PurchaseRow> = sqlx::query_as(
        "SELECT id, merchant_id, customer_id, currency, credits::text, bonus_credits::text, expires_in_s, status, generation, owed_minor::text \
         FROM credit_purchases WHERE invoice_id = $1 FOR UPDATE",
    )
    .bind(invoice_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((id, merchant_id, customer_id, code, credits, bonus, expires_in_s, status, generation, owed)) = row else {
        return Ok(());
    };
    let purchase = Purchase { id, merchant_id, customer_id, code, invoice_id: invoice_id.to_owned() };
    match (paid, status.as_str()) {
        (true, "pending" | "reversed") => {
            let amount = |text: &str| Amount::parse_decimal(text, 0).map_err(|_| invalid("credits", format!("stored {text:?}")));
            let expires_at = expires_in_s.map(|s| now + Duration::seconds(s));
            // What an earlier generation left owed is taken off this one: purchased credits first.
            let (credits, bonus, owed) = (amount(&credits)?, amount(&bonus)?, amount(&owed)?);
            let off_credits = if owed < credits { owed } else { credits };
            let off_bonus = { let rest = owed.saturating_sub(off_credits); if rest < bonus { rest } else { bonus } };
            let settled = off_credits.checked_add(off_bonus).unwrap_or(Amount::MAX);
            grant(tx, ledger, &purchase, generation + 1, credits.saturating_sub(off_credits), bonus.saturating_sub(off_bonus), settled, expires_at, now).await
        }
        (false, "granted") => reverse(tx, ledger, &purchase, generation, now).await,
        _ => Ok(()),
    }
}

/// A purchase row as locked: id, merchant, customer, currency, credits, bonus, lot lifetime, status,
/// generation, owed.
type PurchaseRow = (String, String, String, String, String, String, Option<i64>, String, i32, String);

struct Purchase {
    id: String,
    merchant_id: String,
    customer_id: String,
    code: String,
    invoice_id: String,
}

impl Purchase {
    /// Locks the customer and reads the purchase's credit currency and its asset id.
    async fn lock(&self, tx: &mut PgConnection) -> Result<(crate::currency::CurrencyView, String)> {
        lock_customers(&mut *tx, &self.merchant_id, &[self.customer_id.as_str()]).await?;
        let currency = currency::get(&mut *tx, &self.merchant_id, &self.code).await?;
        let asset = asset_of(&currency)?.to_string();
        Ok((currency, asset))
    }
}

fn grant_key(id: &str, generation: i32) -> String {
    format!("purchase:{id}#{generation}")
}

#[allow(clippy::too_many_arguments)]
async fn grant(
    tx: &mut PgConnection,
    ledger: &Ledger,
    purchase: &Purchase,
    generation: i32,
    credits: Amount,
    bonus: Amount,
    settled: Amount,
    expires_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<()> {
    sqlx::query("UPDATE credit_purchases SET status = 'granted', generation = $2, granted_at = $3, updated_at = $3, \
                 owed_minor = owed_minor - $4::numeric WHERE id = $1")
        .bind(&purchase.id)
        .bind(generation)
        .bind(now)
        .bind(settled.to_string())
        .execute(&mut *tx)
        .await?;
    if credits.is_zero() && bonus.is_zero() {
        return Ok(());
    }
    let (merchant_id, customer_id) = (purchase.merchant_id.as_str(), purchase.customer_id.as_str());
    let (currency, asset) = purchase.lock(&mut *tx).await?;
    let key = grant_key(&purchase.id, generation);
    let bonus_key = format!("{key}:bonus");
    let mut entry = NewEntry::new(entry_key(merchant_id, &key), "credit_purchase")
        .memo(format!("purchase {} (invoice {}) by {customer_id}", purchase.id, purchase.invoice_id))
        .debit(AccountCode::credits_issued(merchant_id), asset.as_str(), credits.checked_add(bonus).unwrap_or(Amount::MAX));
    let mut rows = Vec::new();
    for (amount, source, row_key) in [(credits, "purchase", &key), (bonus, "bonus", &bonus_key)] {
        if amount.is_zero() {
            continue;
        }
        let txn_id = new_id("ctx");
        let lot = insert_lot(&mut *tx, merchant_id, customer_id, &currency.code, source, amount, expires_at, &txn_id, now).await?;
        entry = entry.credit(AccountCode::credit_lot(&lot), asset.as_str(), amount);
        rows.push((txn_id, amount, source, row_key.clone(), lot));
    }
    let entry_id = post(&mut *tx, ledger, &entry, &key).await?;
    for (txn_id, amount, source, row_key, lot) in rows {
        let row = Row {
            id: txn_id,
            merchant_id,
            customer_id,
            currency: &currency.code,
            kind: "grant",
            amount: amount.to_string(),
            source: Some(source),
            description: None,
            resource: Some(&purchase.invoice_id),
            counterparty: None,
            key: &row_key,
            entry_id,
            detail: json!({ "lot": lot, "expires_at": expires_at, "purchase": purchase.id }),
        };
        let transaction = insert_row(&mut *tx, &row, now).await?;
        emit(&mut *tx, merchant_id, "credits.granted", customer_id, &transaction, now).await?;
    }
    Ok(())
}

async fn reverse(tx: &mut PgConnection, ledger: &Ledger, purchase: &Purchase, generation: i32, now: DateTime<Utc>) -> Result<()> {
    let (merchant_id, customer_id) = (purchase.merchant_id.as_str(), purchase.customer_id.as_str());
    let (currency, asset) = purchase.lock(&mut *tx).await?;
    let key = grant_key(&purchase.id, generation);
    let lots: Vec<(String, String)> = sqlx::query_as(
        "SELECT l.id, l.amount_minor::text FROM credit_lots l JOIN credit_transactions t ON t.id = l.txn_id \
         WHERE t.merchant_id = $1 AND t.customer_id = $2 AND t.idempotency_key IN ($3, $3 || ':bonus') ORDER BY l.seq",
    )
    .bind(merchant_id)
    .bind(customer_id)
    .bind(&key)
    .fetch_all(&mut *tx)
    .await?;
    let reversal_key = format!("{key}:reversal");
    let mut entry = NewEntry::new(entry_key(merchant_id, &reversal_key), "credit_purchase_reversal")
        .memo(format!("purchase {} (invoice {}) no longer paid", purchase.id, purchase.invoice_id));
    let (mut taken, mut owed) = (Amount::ZERO, Amount::ZERO);
    for (lot, granted) in &lots {
        let granted = Amount::parse_decimal(granted, 0).map_err(|_| invalid("lot", format!("stored {granted:?}")))?;
        let left = ledger.balance(&mut *tx, &AccountCode::credit_lot(lot), &asset).await?;
        let left = if left.is_negative() { Amount::ZERO } else { left.magnitude() };
        if !left.is_zero() {
            entry = entry.debit(AccountCode::credit_lot(lot), asset.as_str(), left);
            taken = taken.checked_add(left).unwrap_or(Amount::MAX);
        }
        owed = owed.checked_add(granted.saturating_sub(left)).unwrap_or(Amount::MAX);
        sqlx::query("UPDATE credit_lots SET expired_at = coalesce(expired_at, $2) WHERE id = $1").bind(lot).bind(now).execute(&mut *tx).await?;
    }
    if !taken.is_zero() {
        entry = entry.credit(AccountCode::credits_issued(merchant_id), asset.as_str(), taken);
        let entry_id = post(&mut *tx, ledger, &entry, &reversal_key).await?;
        let row = Row {
            id: new_id("ctx"),
            merchant_id,
            customer_id,
            currency: &currency.code,
            kind: "reversal",
            amount: format!("-{taken}"),
            source: Some("purchase"),
            description: Some("the purchase's payment was taken back"),
            resource: Some(&purchase.invoice_id),
            counterparty: None,
            key: &reversal_key,
            entry_id,
            detail: json!({ "purchase": purchase.id, "owed_minor": owed.to_string() }),
        };
        let transaction = insert_row(&mut *tx, &row, now).await?;
        emit(&mut *tx, merchant_id, "credits.reversed", customer_id, &transaction, now).await?;
    }
    if !owed.is_zero() {
        tracing::warn!(target: "credits", purchase = %purchase.id, owed = %owed, "a reversed purchase's credits were already spent; owed by the customer");
    }
    sqlx::query("UPDATE credit_purchases SET status = 'reversed', owed_minor = owed_minor + $2::numeric, updated_at = $3 WHERE id = $1")
        .bind(&purchase.id)
        .bind(owed.to_string())
        .bind(now)
        .execute(&mut *tx)
        .await?;
    Ok(())
}
