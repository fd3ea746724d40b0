//! Money that goes back after a card payment was credited: refunds and disputes, in the ledger.
//!
//! A card payment's row (`card_payments`) keeps how much of it was refunded (Stripe's cumulative
//! `amount_refunded` of the charge) and disputed. Every change posts the difference of the
//! proportional reversal between the amount returned before and after ([`super::reversal`]), under
//! an idempotency key named by the new total, on the caller's transaction, with the payment row
//! locked: so the merchant's refund call and Stripe's `charge.refunded` webhook, in any order and
//! any number of times, post each refunded cent once, and an older report never undoes a newer one.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Row};

use crate::invoice::{self, InvoiceStatus};
use crate::ledger::{Ledger, NewEntry};
use crate::money::{Amount, Fiat};

use super::error::{Result, StripeError};
use crate::ledger::reversal_delta;

/// A credited card payment, locked.
#[derive(Debug, Clone)]
pub struct CardPaymentRow {
    pub payment_intent_id: String,
    pub payment_id: String,
    pub invoice_id: String,
    pub merchant_id: String,
    pub charge_id: Option<String>,
    pub currency: Fiat,
    pub amount: Amount,
    pub refunded: Amount,
    pub disputed: Amount,
    pub ledger_entry_id: i64,
}

impl CardPaymentRow {
    /// What has gone back in all.
    pub fn returned(&self) -> Amount {
        self.refunded.checked_add(self.disputed).unwrap_or(Amount::MAX)
    }

    /// What may still be refunded.
    pub fn refundable(&self) -> Amount {
        self.amount.saturating_sub(self.returned())
    }
}

const COLUMNS: &str = "payment_intent_id, payment_id, invoice_id, merchant_id, charge_id, currency, \
     amount_minor::text AS amount_minor, refunded_minor::text AS refunded_minor, \
     disputed_minor::text AS disputed_minor, ledger_entry_id";

fn corrupt(column: &'static str, value: &str) -> StripeError {
    StripeError::Invoice(invoice::InvoiceError::Corrupt { column, value: value.to_owned() })
}

fn amount(row: &sqlx::postgres::PgRow, column: &'static str) -> Result<Amount> {
    let text: String = row.try_get(column)?;
    text.parse().map_err(|_| corrupt(column, &text))
}

fn row_of(row: &sqlx::postgres::PgRow) -> Result<CardPaymentRow> {
    let currency: String = row.try_get("currency")?;
    Ok(CardPaymentRow {
        payment_intent_id: row.try_get("payment_intent_id")?,
        payment_id: row.try_get("payment_id")?,
        invoice_id: row.try_get("invoice_id")?,
        merchant_id: row.try_get("merchant_id")?,
        charge_id: row.try_get("charge_id")?,
        currency: currency.parse().map_err(|_| corrupt("currency", &currency))?,
        amount: amount(row, "amount_minor")?,
        refunded: amount(row, "refunded_minor")?,
        disputed: amount(row, "disputed_minor")?,
        ledger_entry_id: row.try_get("ledger_entry_id")?,
    })
}

/// The card payment of a PaymentIntent or of a charge, locked for the caller's transaction. The
/// invoice is locked first, as every writer of an invoice's payments does.
pub async fn lock(tx: &mut PgConnection, payment_intent_id: Option<&str>, charge_id: Option<&str>) -> Result<Option<CardPaymentRow>> {
    let invoice_id: Option<String> = sqlx::query_scalar(
        "SELECT invoice_id FROM card_payments WHERE payment_intent_id = $1 OR ($2::text IS NOT NULL AND charge_id = $2)",
    )
    .bind(payment_intent_id)
    .bind(charge_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(invoice_id) = invoice_id else { return Ok(None) };
    sqlx::query("SELECT id FROM invoices WHERE id = $1 FOR UPDATE").bind(&invoice_id).execute(&mut *tx).await?;
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM card_payments WHERE payment_intent_id = $1 OR ($2::text IS NOT NULL AND charge_id = $2) FOR UPDATE"
    ))
    .bind(payment_intent_id)
    .bind(charge_id)
    .fetch_optional(&mut *tx)
    .await?;
    row.as_ref().map(row_of).transpose()
}

/// Every card payment of an invoice, locked, newest first. The caller holds the invoice's lock.
pub async fn lock_all_of_invoice(tx: &mut PgConnection, invoice_id: &str) -> Result<Vec<CardPaymentRow>> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM card_payments WHERE invoice_id = $1 ORDER BY created_at DESC, payment_intent_id FOR UPDATE"
    ))
    .bind(invoice_id)
    .fetch_all(&mut *tx)
    .await?;
    rows.iter().map(row_of).collect()
}

/// Records a card payment the invoice module just credited (its `payments` row is confirmed).
pub async fn record_payment(
    tx: &mut PgConnection,
    payment_intent_id: &str,
    charge_id: Option<&str>,
    currency: Fiat,
    now: DateTime<Utc>,
) -> Result<()> {
    let tx_ref = format!("{}:{payment_intent_id}", invoice::CARD_RAIL);
    sqlx::query(
        "INSERT INTO card_payments (payment_intent_id, payment_id, invoice_id, merchant_id, charge_id, currency, amount_minor, \
                                    ledger_entry_id, created_at, updated_at) \
         SELECT $1, p.id, p.invoice_id, p.merchant_id, $3, $4, p.amount_minor, p.ledger_entry_id, $5, $5 \
         FROM payments p WHERE p.tx_ref = $2 AND p.ledger_entry_id IS NOT NULL \
         ON CONFLICT (payment_intent_id) DO UPDATE SET charge_id = coalesce(card_payments.charge_id, EXCLUDED.charge_id)",
    )
    .bind(payment_intent_id)
    .bind(&tx_ref)
    .bind(charge_id)
    .bind(currency.code())
    .bind(now)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// What a change of the amount returned did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Returned {
    /// Nothing new (an older or repeated report).
    Unchanged,
    /// The ledger moved; the invoice is now in this status.
    Posted(InvoiceStatus),
}

/// Stripe says the charge has `refunded_total` refunded in all.
pub async fn set_refunded_total(
    tx: &mut PgConnection,
    ledger: &Ledger,
    payment: &mut CardPaymentRow,
    refunded_total: Amount,
    now: DateTime<Utc>,
) -> Result<Returned> {
    let ceiling = payment.amount.saturating_sub(payment.disputed);
    if refunded_total > ceiling {
        tracing::error!(target: "stripe", payment_intent = %payment.payment_intent_id, %refunded_total, %ceiling,
            "stripe reports more refunded than was paid and not disputed; the excess is not posted");
    }
    let refunded_total = refunded_total.min(ceiling);
    if refunded_total <= payment.refunded {
        return Ok(Returned::Unchanged);
    }
    let key = format!("card_refund:{}:{refunded_total}", payment.payment_intent_id);
    let after = refunded_total.checked_add(payment.disputed).unwrap_or(Amount::MAX);
    post(tx, ledger, payment, after, &key, "refund").await?;
    sqlx::query("UPDATE card_payments SET refunded_minor = $2::numeric, updated_at = $3 WHERE payment_intent_id = $1")
        .bind(&payment.payment_intent_id)
        .bind(refunded_total.to_string())
        .bind(now)
        .execute(&mut *tx)
        .await?;
    payment.refunded = refunded_total;
    settle(tx, ledger, payment, "invoice.partially_refunded", now).await.map(Returned::Posted)
}

/// A dispute opened: its amount is taken back (capped at what was not refunded). Once per dispute.
pub async fn open_dispute(
    tx: &mut PgConnection,
    ledger: &Ledger,
    payment: &mut CardPaymentRow,
    dispute_id: &str,
    disputed: Amount,
    now: DateTime<Utc>,
) -> Result<Returned> {
    let key = format!("card_dispute:{dispute_id}");
    if entry_exists(tx, &key).await? {
        return Ok(Returned::Unchanged);
    }
    let disputed = disputed.min(payment.refundable());
    if disputed.is_zero() {
        return Ok(Returned::Unchanged);
    }
    let disputed_total = payment.disputed.checked_add(disputed).unwrap_or(Amount::MAX);
    let after = payment.refunded.checked_add(disputed_total).unwrap_or(Amount::MAX);
    post(tx, ledger, payment, after, &key, "dispute").await?;
    set_disputed(tx, payment, disputed_total, now).await?;
    settle(tx, ledger, payment, "invoice.disputed", now).await.map(Returned::Posted)
}

/// A dispute closed in the merchant's favour: what it took is credited back. Once per dispute.
pub async fn win_dispute(
    tx: &mut PgConnection,
    ledger: &Ledger,
    payment: &mut CardPaymentRow,
    dispute_id: &str,
    now: DateTime<Utc>,
) -> Result<Returned> {
    let opened = format!("card_dispute:{dispute_id}");
    let key = format!("card_dispute_won:{dispute_id}");
    if !entry_exists(tx, &opened).await? || entry_exists(tx, &key).await? {
        return Ok(Returned::Unchanged);
    }
    // What the dispute took: the credit side of its asset posting.
    let taken: Option<String> = sqlx::query_scalar(
        "SELECT sum(abs(p.amount))::text FROM postings p JOIN journal_entries e ON e.id = p.entry_id \
         JOIN accounts a ON a.id = p.account_id WHERE e.idempotency_key = $1 AND a.code LIKE 'assets:%'",
    )
    .bind(&opened)
    .fetch_one(&mut *tx)
    .await?;
    let taken: Amount = match taken {
        Some(text) => text.parse().map_err(|_| corrupt("amount", &text))?,
        None => return Ok(Returned::Unchanged),
    };
    let taken = taken.min(payment.disputed);
    let disputed_total = payment.disputed.saturating_sub(taken);
    let after = payment.refunded.checked_add(disputed_total).unwrap_or(Amount::MAX);
    post(tx, ledger, payment, after, &key, "dispute_won").await?;
    set_disputed(tx, payment, disputed_total, now).await?;
    let view = invoice::load_view(&mut *tx, None, &payment.invoice_id).await?;
    payrail_payments::webhook::emit(&mut *tx, &payment.merchant_id, "invoice.dispute_won", &payment.invoice_id, &view, now).await?;
    Ok(Returned::Posted(view.status))
}

async fn entry_exists(tx: &mut PgConnection, key: &str) -> Result<bool> {
    Ok(sqlx::query_scalar::<_, i64>("SELECT id FROM journal_entries WHERE idempotency_key = $1")
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?
        .is_some())
}

async fn set_disputed(tx: &mut PgConnection, payment: &mut CardPaymentRow, disputed_total: Amount, now: DateTime<Utc>) -> Result<()> {
    sqlx::query("UPDATE card_payments SET disputed_minor = $2::numeric, updated_at = $3 WHERE payment_intent_id = $1")
        .bind(&payment.payment_intent_id)
        .bind(disputed_total.to_string())
        .bind(now)
        .execute(&mut *tx)
        .await?;
    payment.disputed = disputed_total;
    Ok(())
}

/// Posts the reversal that moves `payment` from what it had returned to `after` returned.
async fn post(
    tx: &mut PgConnection,
    ledger: &Ledger,
    payment: &CardPaymentRow,
    after: Amount,
    key: &str,
    kind: &str,
) -> Result<()> {
    let original = ledger.entry(&mut *tx, payment.ledger_entry_id).await?;
    let postings = reversal_delta(&original.postings, payment.returned(), after, payment.amount);
    if postings.is_empty() {
        return Ok(());
    }
    let mut entry = NewEntry::new(key, kind).memo(format!("{} {} {}", payment.invoice_id, payment.payment_id, payment.payment_intent_id));
    entry.postings = postings;
    ledger.post(&mut *tx, &entry).await?;
    Ok(())
}

/// After money went back: an invoice whose every counted payment went back in full is `refunded`;
/// otherwise the merchant is told with `event`.
async fn settle(tx: &mut PgConnection, ledger: &Ledger, payment: &CardPaymentRow, event: &str, now: DateTime<Utc>) -> Result<InvoiceStatus> {
    let kept: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM payments p LEFT JOIN card_payments c ON c.payment_id = p.id \
         WHERE p.invoice_id = $1 AND p.applied_to = 'invoice' AND p.status = 'confirmed' \
           AND (c.payment_id IS NULL OR c.refunded_minor + c.disputed_minor < c.amount_minor)",
    )
    .bind(&payment.invoice_id)
    .fetch_one(&mut *tx)
    .await?;
    let view = invoice::load_view(&mut *tx, None, &payment.invoice_id).await?;
    if kept == 0 && matches!(view.status, InvoiceStatus::Paid | InvoiceStatus::Overpaid) {
        return Ok(invoice::mark_refunded(tx, ledger, &payment.invoice_id, now).await?);
    }
    payrail_payments::webhook::emit(&mut *tx, &payment.merchant_id, event, &payment.invoice_id, &view, now).await?;
    Ok(view.status)
}
