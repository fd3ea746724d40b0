//! The payment core's adapter to PostgreSQL: it loads the facts a plan needs and writes the
//! [`PaymentChange`] a plan made, on the caller's transaction, so a watcher's cursor commits with it.
//!
//! Lock order, the same for every writer of an invoice's payments: the invoice row first, then the
//! payment row, then ledger accounts (inside [`Ledger::post`]). Enum values reach SQL only through
//! their `as_str`, so the text stored is written down once, in [`super::plan`].

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Row};

use crate::ledger::Ledger;

use super::error::{InvoiceError, Result};
use super::view::load_view;
use super::model::{
    load_payment_view, parse_amount, row_to_invoice, InvoiceRow, PaymentRecord, INVOICE_COLUMNS, PAYMENT_VIEW_OF_P,
};
use super::plan::{
    self, AppliedTo, Judge, LedgerChange, PaymentChange, PaymentEvent, PaymentStatus, Quote, QuotedAsset, RowChange,
    StatusMove, StoredPayment, RECREDITS_MAX,
};
use super::status::InvoiceStatus;

/// Announces an unapplied payment credited to the merchant's unapplied balance.
const EVENT_PAYMENT_LATE: &str = "invoice.payment_late";
/// Announces a held payment applied to an invoice by its merchant.
const EVENT_PAYMENT_APPLIED: &str = "invoice.payment_applied";
/// Announces a payment seen for the first time (in the mempool or already in a block).
const EVENT_PAYMENT_DETECTED: &str = "payment.detected";
/// Announces a payment credited: it met its confirmation policy.
const EVENT_PAYMENT_CONFIRMED: &str = "payment.confirmed";
/// Announces a payment whose block left the chain.
const EVENT_PAYMENT_ORPHANED: &str = "payment.orphaned";
/// Announces a credit taken back after a reorg deeper than the confirmation policy.
const EVENT_PAYMENT_REVERSED: &str = "invoice.payment_reversed";

/// Locks and reads an invoice.
pub(crate) async fn lock_invoice(conn: &mut PgConnection, id: &str) -> Result<Option<InvoiceRow>> {
    let row = sqlx::query(&format!("SELECT {INVOICE_COLUMNS} FROM invoices WHERE id = $1 FOR UPDATE"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(row_to_invoice).transpose()
}

/// Reads a payment by `tx_ref`, locking its row when `lock`.
pub(crate) async fn load_payment(conn: &mut PgConnection, tx_ref: &str, lock: bool) -> Result<Option<StoredPayment>> {
    read_payment(conn, tx_ref, false, lock).await
}

/// Reads a payment by its id (`pay_…`), locking its row when `lock`.
pub(crate) async fn load_payment_by_id(conn: &mut PgConnection, id: &str, lock: bool) -> Result<Option<StoredPayment>> {
    read_payment(conn, id, true, lock).await
}

async fn read_payment(conn: &mut PgConnection, key: &str, by_id: bool, lock: bool) -> Result<Option<StoredPayment>> {
    let row = sqlx::query(&format!(
        "SELECT id, invoice_id, applied_invoice_id, chain, tx_ref, asset, amount_minor::text AS amount_minor, status, \
                applied_to, confirmations, confirmations_required, block_hash, ledger_entry_id \
         FROM payments WHERE {} = $1{}",
        if by_id { "id" } else { "tx_ref" },
        if lock { " FOR UPDATE" } else { "" }
    ))
    .bind(key)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let text = |column: &'static str| -> Result<String> { Ok(row.try_get::<String, _>(column)?) };
    let corrupt = |column: &'static str, value: String| InvoiceError::Corrupt { column, value };
    let count = |column: &'static str| -> Result<u32> {
        let value: i32 = row.try_get(column)?;
        u32::try_from(value).map_err(|_| corrupt(column, value.to_string()))
    };
    let status = text("status")?;
    let applied_to = text("applied_to")?;
    let asset = text("asset")?;
    Ok(Some(StoredPayment {
        id: text("id")?,
        invoice_id: text("invoice_id")?,
        applied_invoice_id: row.try_get("applied_invoice_id")?,
        rail: plan::Rail::from_columns(&text("chain")?, &asset)?,
        tx_ref: text("tx_ref")?,
        asset,
        amount: parse_amount("amount_minor", &text("amount_minor")?)?,
        status: status.parse().map_err(|_| corrupt("status", status.clone()))?,
        applied_to: applied_to.parse().map_err(|_| corrupt("applied_to", applied_to.clone()))?,
        confirmations: count("confirmations")?,
        confirmations_required: count("confirmations_required")?,
        block_hash: row.try_get("block_hash")?,
        ledger_entry_id: row.try_get("ledger_entry_id")?,
        credits_reversed: None,
    }))
}

/// The invoice's quoted assets with the confirmed and pending sums of the payments applied to it:
/// its own, and those of its merchant's other invoices applied to it. The splits are not read here
/// (see [`super::split::load_for_invoice`]).
pub(crate) async fn load_quote(conn: &mut PgConnection, invoice_id: &str) -> Result<Quote> {
    let rows = sqlx::query(
        "SELECT o.asset, o.amount_minor::text AS quoted, \
                coalesce(sum(p.amount_minor) FILTER (WHERE p.status = $2), 0)::text AS confirmed, \
                coalesce(sum(p.amount_minor) FILTER (WHERE p.status = $3), 0)::text AS pending \
         FROM payment_options o \
         LEFT JOIN payments p ON (p.invoice_id = o.invoice_id AND p.applied_invoice_id IS NULL \
                                  OR p.applied_invoice_id = o.invoice_id) \
                                 AND p.asset = o.asset AND p.applied_to = $4 \
         WHERE o.invoice_id = $1 GROUP BY o.asset, o.amount_minor",
    )
    .bind(invoice_id)
    .bind(PaymentStatus::Confirmed.as_str())
    .bind(PaymentStatus::Seen.as_str())
    .bind(AppliedTo::Invoice.as_str())
    .fetch_all(&mut *conn)
    .await?;
    let mut assets = Vec::with_capacity(rows.len());
    for row in &rows {
        let amount = |column: &'static str| -> Result<crate::money::Amount> {
            parse_amount("amount_minor", &row.try_get::<String, _>(column)?)
        };
        assets.push(QuotedAsset {
            asset: row.try_get("asset")?,
            quoted: amount("quoted")?,
            confirmed: amount("confirmed")?,
            pending: amount("pending")?,
        });
    }
    Ok(Quote { assets, splits: None })
}

/// How many credits of `tx_ref` were posted and reversed, generation after generation. Exact keys
/// only, so the unique index answers each probe.
pub(crate) async fn credits_reversed(conn: &mut PgConnection, tx_ref: &str) -> Result<u32> {
    for generation in 1..=RECREDITS_MAX {
        let state: Option<bool> = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM journal_entries r WHERE r.reverses_entry_id = e.id) \
             FROM journal_entries e WHERE e.idempotency_key = $1",
        )
        .bind(plan::credit_key(tx_ref, generation)?)
        .fetch_optional(&mut *conn)
        .await?;
        if state != Some(true) {
            // Free, or posted and standing.
            return Ok(generation - 1);
        }
    }
    Ok(RECREDITS_MAX)
}

/// What writing a change did that only the database could tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Whether the change's credit was posted now (not found standing from an earlier run).
    pub credited: bool,
}

/// Writes `change` on the caller's transaction `tx`, in the order [`PaymentChange`] documents. The
/// invoice (and, for an observation, the payment) must be locked by the caller.
pub async fn apply(tx: &mut PgConnection, ledger: &Ledger, change: &PaymentChange, now: DateTime<Utc>) -> Result<Written> {
    let posted = match &change.ledger {
        Some(LedgerChange::Credit(entry)) => Some(ledger.post(&mut *tx, entry).await?),
        Some(LedgerChange::Reverse { entry_id, key, memo }) => {
            ledger.reverse(&mut *tx, *entry_id, key, memo).await?;
            None
        }
        Some(LedgerChange::Rebook { entry_id, key, memo, credit }) => {
            ledger.reverse(&mut *tx, *entry_id, key, memo).await?;
            Some(ledger.post(&mut *tx, credit).await?)
        }
        None => None,
    };
    if change.announce_reversal {
        tracing::error!(target: "invoice", tx_ref = %change.tx_ref, invoice = %change.invoice_id,
            "credited payment orphaned by a reorg deeper than its confirmation policy; credit reversed");
    }
    let count = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
    let height = |block: &Option<plan::BlockRef>| block.as_ref().and_then(|b| i64::try_from(b.height).ok());
    let hash = |block: &Option<plan::BlockRef>| block.as_ref().map(|b| b.hash.clone());
    // A new payment, or one credited now, is announced on its own: the write returns it as the API
    // shows it, in the same statement.
    let mut written: Option<PaymentRecord> = None;
    match (&change.row, posted) {
        (Some(RowChange::Insert(new)), _) => {
            let record = sqlx::query_as(&format!(
                "WITH p AS (INSERT INTO payments (id, merchant_id, invoice_id, chain, asset, tx_ref, address, amount_minor, \
                                       value_minor, confirmations, confirmations_required, status, applied_to, \
                                       unapplied_reason, seen_at, updated_at, block_height, block_hash, \
                                       ledger_entry_id, confirmed_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8::numeric, $9::numeric, $10, $11, $12, $13, $14, $15, $15, $16, $17, $18, $19) \
                 RETURNING *) {PAYMENT_VIEW_OF_P}"
            ))
            .bind(&change.payment_id)
            .bind(&change.merchant_id)
            .bind(&change.invoice_id)
            .bind(&new.chain)
            .bind(&new.asset)
            .bind(&new.tx_ref)
            .bind(&new.address)
            .bind(new.amount.to_string())
            .bind(new.value.to_string())
            .bind(count(new.confirmations))
            .bind(count(new.confirmations_required))
            .bind(new.status.as_str())
            .bind(change.applied_to.as_str())
            .bind(new.unapplied_reason.map(|r| r.as_str()))
            .bind(now)
            .bind(height(&new.block))
            .bind(hash(&new.block))
            .bind(posted.map(|p| p.entry_id))
            .bind(posted.map(|_| now))
            .fetch_one(&mut *tx)
            .await?;
            written = Some(record);
        }
        (Some(RowChange::Update { status, confirmations, confirmations_required, block }), posted) => {
            // A credit posted now is recorded with the time it was confirmed, and the payment is
            // returned for its event; without one the update returns nothing (the CTE still runs).
            written = sqlx::query_as(&format!(
                "WITH p AS (UPDATE payments SET confirmations = $2, confirmations_required = $3, status = $4, updated_at = $5, \
                        block_height = $6, block_hash = $7, ledger_entry_id = coalesce($8, ledger_entry_id), \
                        confirmed_at = CASE WHEN $8::bigint IS NULL THEN confirmed_at ELSE $5 END \
                 WHERE id = $1 RETURNING *) {PAYMENT_VIEW_OF_P} WHERE $8::bigint IS NOT NULL"
            ))
            .bind(&change.payment_id)
            .bind(count(*confirmations))
            .bind(count(*confirmations_required))
            .bind(status.as_str())
            .bind(now)
            .bind(height(block))
            .bind(hash(block))
            .bind(posted.map(|p| p.entry_id))
            .fetch_optional(&mut *tx)
            .await?;
        }
        (Some(RowChange::Orphan { status }), _) => {
            sqlx::query(
                "UPDATE payments SET status = $3, confirmations = 0, block_height = NULL, block_hash = NULL, \
                 updated_at = $2 WHERE id = $1",
            )
            .bind(&change.payment_id)
            .bind(now)
            .bind(status.as_str())
            .execute(&mut *tx)
            .await?;
        }
        (Some(RowChange::Apply { value }), posted) => {
            // Applied to another invoice, it says so; applied to its own, it is simply no longer held.
            sqlx::query(
                "UPDATE payments SET applied_to = $2, value_minor = $3::numeric, updated_at = $4, ledger_entry_id = $5, \
                        applied_invoice_id = CASE WHEN invoice_id = $6 THEN NULL ELSE $6 END \
                 WHERE id = $1",
            )
            .bind(&change.payment_id)
            .bind(AppliedTo::Invoice.as_str())
            .bind(value.to_string())
            .bind(now)
            .bind(posted.map(|p| p.entry_id))
            .bind(&change.invoice_id)
            .execute(&mut *tx)
            .await?;
        }
        (Some(RowChange::Hold { reason }), posted) => {
            sqlx::query(
                "UPDATE payments SET applied_to = $2, unapplied_reason = $3, applied_invoice_id = NULL, value_minor = 0, \
                        updated_at = $4, ledger_entry_id = coalesce($5, ledger_entry_id) \
                 WHERE id = $1",
            )
            .bind(&change.payment_id)
            .bind(AppliedTo::Unapplied.as_str())
            .bind(reason.as_str())
            .bind(now)
            .bind(posted.map(|p| p.entry_id))
            .execute(&mut *tx)
            .await?;
        }
        (None, _) => {}
    }
    let credited = posted.is_some_and(|p| p.created);
    // Per-payment events, whatever the invoice's status does: a payment first seen already in a
    // block is detected and confirmed at once, and a merchant following payments misses neither.
    if let Some(record) = written {
        let detected = matches!(change.row, Some(RowChange::Insert(_)));
        let events: Vec<&str> = [(detected, EVENT_PAYMENT_DETECTED), (credited, EVENT_PAYMENT_CONFIRMED)]
            .into_iter()
            .filter_map(|(happened, event)| happened.then_some(event))
            .collect();
        crate::webhook::emit_all(&mut *tx, &change.merchant_id, &events, &change.payment_id, &record.view()?, now).await?;
    }
    match change.payment_event {
        Some(PaymentEvent::Late) if credited => {
            let view = load_view(&mut *tx, None, &change.invoice_id).await?;
            crate::webhook::emit(&mut *tx, &change.merchant_id, EVENT_PAYMENT_LATE, &change.invoice_id, &view, now).await?;
        }
        Some(PaymentEvent::Orphaned) => {
            if let Some(payment) = load_payment_view(&mut *tx, &change.payment_id).await? {
                crate::webhook::emit(&mut *tx, &change.merchant_id, EVENT_PAYMENT_ORPHANED, &change.payment_id, &payment, now)
                    .await?;
            }
        }
        Some(PaymentEvent::Applied) => {
            let view = load_view(&mut *tx, None, &change.invoice_id).await?;
            crate::webhook::emit(&mut *tx, &change.merchant_id, EVENT_PAYMENT_APPLIED, &change.invoice_id, &view, now).await?;
        }
        Some(PaymentEvent::Late) | None => {}
    }
    write_status(tx, ledger, &change.merchant_id, &change.invoice_id, change.invoice, now).await?;
    if change.announce_reversal {
        let view = load_view(&mut *tx, None, &change.invoice_id).await?;
        crate::webhook::emit(&mut *tx, &change.merchant_id, EVENT_PAYMENT_REVERSED, &change.invoice_id, &view, now).await?;
    }
    Ok(Written { credited })
}

/// Stores an invoice's status move, if it moves, and writes the event announcing it. An invoice
/// that becomes paid delivers what it sells (a credit pack's credits), and one that stops being
/// paid takes back what is unspent of it, here, in the same transaction.
pub(crate) async fn write_status(
    tx: &mut PgConnection,
    ledger: &Ledger,
    merchant_id: &str,
    invoice_id: &str,
    status: StatusMove,
    now: DateTime<Utc>,
) -> Result<()> {
    if !status.moves() {
        return Ok(());
    }
    // Leaving paid after a reversal clears `paid_at`; paid again sets it anew.
    sqlx::query(
        "UPDATE invoices SET status = $2, updated_at = $3, \
                paid_at = CASE WHEN $2 IN ('paid', 'overpaid') THEN coalesce(paid_at, $3) \
                               WHEN $2 IN ('open', 'processing', 'expired') THEN NULL ELSE paid_at END \
         WHERE id = $1",
    )
    .bind(invoice_id)
    .bind(status.to.as_str())
    .bind(now)
    .execute(&mut *tx)
    .await?;
    if status.from.is_paid() != status.to.is_paid() {
        payrail_credits::purchase::on_invoice_status(&mut *tx, ledger, invoice_id, status.to.is_paid(), now).await?;
        payrail_subscriptions::period::on_invoice_status(&mut *tx, ledger, invoice_id, status.to.is_paid(), now).await?;
    }
    let view = load_view(&mut *tx, None, invoice_id).await?;
    crate::webhook::emit(&mut *tx, merchant_id, &status.to.event_type(), invoice_id, &view, now).await?;
    Ok(())
}

/// Recomputes an invoice's status from its payments and, when it changed, stores it and writes the
/// event. The invoice row must already be locked by the caller.
pub(crate) async fn settle_status(tx: &mut PgConnection, ledger: &Ledger, invoice: &InvoiceRow, now: DateTime<Utc>) -> Result<InvoiceStatus> {
    let quote = load_quote(&mut *tx, &invoice.id).await?;
    let status = plan::judge(invoice, &quote, now, Judge::Evaluate)?;
    write_status(tx, ledger, &invoice.merchant_id, &invoice.id, status, now).await?;
    Ok(status.to)
}
