//! The payer's claim, and how a claimed refund ends: paid, failed or expired.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Row};

use crate::invoice::{InvoiceError, Result};
use crate::ledger::{AccountCode, Ledger, NewEntry};
use crate::money::{fiat_to_asset, Amount, ChainId, Fiat, Rounding};
use crate::rates::RateSource;

use payrail_core::payment::plan::Rail;
use payrail_core::payment::refund::{difference_postings, merged_entry};

use super::{amount_of, close, refused, token_hash, view_on, CryptoRefundView};

/// An open refund locked for its claim.
#[derive(Debug, Clone)]
pub struct OpenRefund {
    pub id: String,
    pub merchant_id: String,
    pub chain: String,
    pub asset: String,
    pub symbol: String,
    pub decimals: u8,
    pub currency: String,
    pub value: Amount,
    pub reserved: Amount,
    /// Fixed when created; `None` for the kinds priced at claim.
    pub amount: Option<Amount>,
}

/// Locks the refund `token` opens, on the caller's transaction; it must be open and unexpired.
pub async fn lock_open(tx: &mut PgConnection, token: &str, now: DateTime<Utc>) -> Result<OpenRefund> {
    let row = sqlx::query(
        "SELECT id, merchant_id, chain, asset, symbol, decimals, currency, status, expires_at, value_minor::text AS value, \
                reserved_minor::text AS reserved, amount_minor::text AS amount FROM crypto_refunds WHERE token_hash = $1 FOR UPDATE",
    )
    .bind(&token_hash(token)[..])
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| InvoiceError::RefundNotFound { id: "(token)".to_owned() })?;
    let status: String = row.try_get("status")?;
    let expires_at: DateTime<Utc> = row.try_get("expires_at")?;
    if status != "open" {
        return Err(refused("refund_state", format!("this refund is {status}: it was claimed or closed already")));
    }
    if expires_at <= now {
        return Err(refused("refund_state", "this refund link has expired"));
    }
    let decimals: i16 = row.try_get("decimals")?;
    Ok(OpenRefund {
        id: row.try_get("id")?,
        merchant_id: row.try_get("merchant_id")?,
        chain: row.try_get("chain")?,
        asset: row.try_get("asset")?,
        symbol: row.try_get("symbol")?,
        decimals: u8::try_from(decimals).map_err(|_| InvoiceError::Corrupt { column: "decimals", value: decimals.to_string() })?,
        currency: row.try_get("currency")?,
        value: amount_of(&row.try_get::<String, _>("value")?, "value_minor")?,
        reserved: amount_of(&row.try_get::<String, _>("reserved")?, "reserved_minor")?,
        amount: row.try_get::<Option<String>, _>("amount")?.map(|a| amount_of(&a, "amount_minor")).transpose()?,
    })
}

/// What the payer receives: the amount fixed at creation, or the refund's value at the rate now.
pub fn price_claim(refund: &OpenRefund, rates: &dyn RateSource, now: DateTime<Utc>) -> Result<Amount> {
    if let Some(amount) = refund.amount {
        return Ok(amount);
    }
    let fiat: Fiat = refund.currency.parse().map_err(|_| InvoiceError::Corrupt { column: "currency", value: refund.currency.clone() })?;
    let quote = rates.quote(&refund.symbol, fiat, now).map_err(|e| InvoiceError::RateUnavailable { asset: refund.asset.clone(), reason: e.to_string() })?;
    let amount = fiat_to_asset(refund.value, fiat, &quote.rate, refund.decimals, Rounding::Down)
        .map_err(|e| InvoiceError::RateUnavailable { asset: refund.asset.clone(), reason: e.to_string() })?;
    if amount.is_zero() {
        return Err(refused("refund_refused", "the refund is worth nothing at the current rate"));
    }
    Ok(amount)
}

/// Records the payer's claim on the caller's transaction: the address, the amount, and (for a
/// refund priced now) the difference to what was reserved, on the merchant's balance — refused
/// with `insufficient_funds` when the merchant's balance cannot pay it.
pub async fn record_claim(tx: &mut PgConnection, ledger: &Ledger, refund: &OpenRefund, address: &str, amount: Amount, now: DateTime<Utc>) -> Result<CryptoRefundView> {
    if refund.amount.is_none() {
        let merchant = AccountCode::merchant(&refund.merchant_id);
        let more = amount.saturating_sub(refund.reserved);
        if !more.is_zero() {
            let balance = ledger.balance(&mut *tx, &merchant, &refund.asset).await?;
            let available = if balance.is_negative() { Amount::ZERO } else { balance.magnitude() };
            if available < more {
                return Err(refused(
                    "insufficient_funds",
                    format!("at the current rate this refund needs {more} more {} from the merchant's balance; {available} is available", refund.asset),
                ));
            }
        }
        let postings = difference_postings(&merchant, &AccountCode::refund(&refund.id), &refund.asset, refund.reserved, amount);
        if !postings.is_empty() {
            let entry = merged_entry(format!("refund-claim:{}", refund.id), "refund", format!("crypto refund {} priced at claim", refund.id), postings);
            ledger.post(&mut *tx, &entry).await?;
        }
    }
    sqlx::query(
        "UPDATE crypto_refunds SET status = 'claimed', address = $2, amount_minor = $3::numeric, claimed_at = $4, updated_at = $4 WHERE id = $1",
    )
    .bind(&refund.id)
    .bind(address)
    .bind(amount.to_string())
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let view = view_on(&mut *tx, None, &refund.id).await?;
    crate::webhook::emit(&mut *tx, &refund.merchant_id, "refund.claimed", &refund.id, &view, now).await?;
    Ok(view)
}

/// Claims a refund the merchant pays from its own wallet (Bitcoin): `address` was checked for the
/// chain by the caller.
pub async fn claim_merchant_paid(pool: &PgPool, ledger: &Ledger, rates: &dyn RateSource, token: &str, address: &str, now: DateTime<Utc>) -> Result<CryptoRefundView> {
    let mut tx = pool.begin().await?;
    let refund = lock_open(&mut tx, token, now).await?;
    let amount = price_claim(&refund, rates, now)?;
    let view = record_claim(&mut tx, ledger, &refund, address, amount, now).await?;
    tx.commit().await?;
    Ok(view)
}

/// A claimed refund was paid by `tx_hash`. `book_chain`: the payment left the chain's asset
/// account here (the merchant paid it from the deposits' wallet); a payout's own settlement books
/// that otherwise. `false` when the refund was not claimed (already paid, or cancelled).
pub async fn mark_paid(tx: &mut PgConnection, ledger: &Ledger, id: &str, tx_hash: &str, book_chain: bool, now: DateTime<Utc>) -> Result<bool> {
    let row = sqlx::query(
        "UPDATE crypto_refunds SET status = 'paid', tx_hash = $2, finished_at = $3, updated_at = $3 \
         WHERE id = $1 AND status = 'claimed' RETURNING merchant_id, invoice_id, chain, asset, amount_minor::text AS amount",
    )
    .bind(id)
    .bind(tx_hash)
    .bind(now)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else { return Ok(false) };
    let merchant_id: String = row.try_get("merchant_id")?;
    let invoice_id: String = row.try_get("invoice_id")?;
    if book_chain {
        let chain: String = row.try_get("chain")?;
        let chain: ChainId = chain.parse().map_err(|_| InvoiceError::Corrupt { column: "chain", value: chain.clone() })?;
        let asset: String = row.try_get("asset")?;
        let amount = amount_of(&row.try_get::<String, _>("amount")?, "amount_minor")?;
        // The coins left where they were held: the merchant's own wallet for Bitcoin.
        let held = Rail::Chain(chain).debit_account(&merchant_id);
        let entry = NewEntry::new(format!("refund-paid:{id}"), "refund_paid")
            .memo(format!("crypto refund {id} {tx_hash}"))
            .debit(AccountCode::refund(id), asset.as_str(), amount)
            .credit(held, asset.as_str(), amount);
        ledger.post(&mut *tx, &entry).await?;
    }
    let view = view_on(&mut *tx, None, id).await?;
    crate::webhook::emit(&mut *tx, &merchant_id, "refund.paid", id, &view, now).await?;
    // Every payment given back in full by paid refunds: the invoice is refunded.
    let whole: Option<bool> = sqlx::query_scalar(
        "SELECT bool_and(COALESCE((SELECT sum(x.returned_minor) FROM crypto_refund_parts x JOIN crypto_refunds r ON r.id = x.refund_id \
                                   WHERE x.payment_id = p.id AND r.status = 'paid'), 0) >= p.amount_minor) \
         FROM payments p WHERE COALESCE(p.applied_invoice_id, p.invoice_id) = $1 AND p.applied_to = 'invoice' AND p.status = 'confirmed'",
    )
    .bind(&invoice_id)
    .fetch_one(&mut *tx)
    .await?;
    if whole == Some(true) {
        let status: String = sqlx::query_scalar("SELECT status FROM invoices WHERE id = $1").bind(&invoice_id).fetch_one(&mut *tx).await?;
        if matches!(status.as_str(), "paid" | "overpaid") {
            crate::invoice::mark_refunded(&mut *tx, ledger, &invoice_id, now).await?;
        }
    }
    Ok(true)
}

/// The payout paying a refund failed: its funds are back on the refund's account (the payout's own
/// entry), and the refund is `failed` until the merchant cancels it.
pub async fn mark_failed(tx: &mut PgConnection, payout_id: &str, now: DateTime<Utc>) -> Result<()> {
    let row = sqlx::query(
        "UPDATE crypto_refunds SET status = 'failed', finished_at = $2, updated_at = $2 WHERE payout_id = $1 AND status = 'claimed' \
         RETURNING id, merchant_id",
    )
    .bind(payout_id)
    .bind(now)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(row) = row {
        let id: String = row.try_get("id")?;
        let merchant_id: String = row.try_get("merchant_id")?;
        let view = view_on(&mut *tx, None, &id).await?;
        crate::webhook::emit(&mut *tx, &merchant_id, "refund.failed", &id, &view, now).await?;
    }
    Ok(())
}

/// Expires every open refund whose link ran out, each in its own transaction; how many.
pub async fn expire_due(pool: &PgPool, ledger: &Ledger, now: DateTime<Utc>) -> Result<u64> {
    let due: Vec<String> = sqlx::query_scalar("SELECT id FROM crypto_refunds WHERE status = 'open' AND expires_at <= $1 ORDER BY expires_at LIMIT 500")
        .bind(now)
        .fetch_all(pool)
        .await?;
    let mut expired = 0;
    for id in due {
        let mut tx = pool.begin().await?;
        let still: Option<String> = sqlx::query_scalar("SELECT id FROM crypto_refunds WHERE id = $1 AND status = 'open' FOR UPDATE")
            .bind(&id)
            .fetch_optional(&mut *tx)
            .await?;
        if still.is_some() {
            close(&mut tx, ledger, &id, "expired", now).await?;
            expired += 1;
        }
        tx.commit().await?;
    }
    Ok(expired)
}
