//! The payment core's adapter to PostgreSQL: it loads the facts a plan needs and writes the
//! [`PaymentChange`] a plan made, on the caller's transaction, so a watcher's cursor commits with it.
//!
//! Lock order, the same for every writer of an invoice's payments: the invoice row first, then the
//! payment row, then ledger accounts (inside [`Ledger::post`]). Enum values reach SQL only through
//! their `as_str`, so the text stored is written down once, in [`super::plan`].

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Row};

use crate::ledger::{Ledger, NewEntry, Posted};
use crate::webhook::outbox::{emit_many, NewEvent};

use super::error::{InvoiceError, Result};
use super::view::{load_view, load_views};
use super::model::{
    load_payment_view, InvoiceView, PaymentView, parse_amount, row_to_invoice, InvoiceRow, PaymentRecord, INVOICE_COLUMNS, PAYMENT_VIEW_OF_P,
};
use super::plan::{
    self, AppliedTo, Judge, LedgerChange, NewPayment, PaymentChange, PaymentEvent, PaymentStatus, Quote, QuotedAsset,
    RowChange, StatusMove, StoredPayment, RECREDITS_MAX,
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
    Ok(lock_invoices(conn, &[id]).await?.remove(id))
}

/// Locks and reads the invoices `ids` in one statement, in id order (the order every writer takes
/// invoice locks in), by id; an id with no invoice is absent.
pub(crate) async fn lock_invoices(conn: &mut PgConnection, ids: &[&str]) -> Result<HashMap<String, InvoiceRow>> {
    let rows = sqlx::query(&format!("SELECT {INVOICE_COLUMNS} FROM invoices WHERE id = ANY($1) ORDER BY id FOR UPDATE"))
        .bind(ids)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(|row| row_to_invoice(row).map(|invoice| (invoice.id.clone(), invoice))).collect()
}

/// Reads a payment by `tx_ref`, locking its row when `lock`.
pub(crate) async fn load_payment(conn: &mut PgConnection, tx_ref: &str, lock: bool) -> Result<Option<StoredPayment>> {
    read_payment(conn, tx_ref, false, lock).await
}

/// Reads a payment by its id (`pay_…`), locking its row when `lock`.
pub(crate) async fn load_payment_by_id(conn: &mut PgConnection, id: &str, lock: bool) -> Result<Option<StoredPayment>> {
    read_payment(conn, id, true, lock).await
}

/// The columns [`stored_of`] reads.
const STORED_COLUMNS: &str = "id, invoice_id, applied_invoice_id, chain, tx_ref, asset, amount_minor::text AS amount_minor, status, \
     applied_to, confirmations, confirmations_required, block_hash, ledger_entry_id";

async fn read_payment(conn: &mut PgConnection, key: &str, by_id: bool, lock: bool) -> Result<Option<StoredPayment>> {
    let row = sqlx::query(&format!(
        "SELECT {STORED_COLUMNS} FROM payments WHERE {} = $1{}",
        if by_id { "id" } else { "tx_ref" },
        if lock { " FOR UPDATE" } else { "" }
    ))
    .bind(key)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(stored_of).transpose()
}

/// Locks and reads the payments `tx_refs` in one statement, by `tx_ref`; one never seen is absent.
/// The caller holds their invoices' locks (invoice first, then payment).
pub(crate) async fn lock_payments(conn: &mut PgConnection, tx_refs: &[&str]) -> Result<HashMap<String, StoredPayment>> {
    let rows = sqlx::query(&format!("SELECT {STORED_COLUMNS} FROM payments WHERE tx_ref = ANY($1) ORDER BY tx_ref FOR UPDATE"))
        .bind(tx_refs)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(|row| stored_of(row).map(|stored| (stored.tx_ref.clone(), stored))).collect()
}

fn stored_of(row: &sqlx::postgres::PgRow) -> Result<StoredPayment> {
    let text = |column: &'static str| -> Result<String> { Ok(row.try_get::<String, _>(column)?) };
    let corrupt = |column: &'static str, value: String| InvoiceError::Corrupt { column, value };
    let count = |column: &'static str| -> Result<u32> {
        let value: i32 = row.try_get(column)?;
        u32::try_from(value).map_err(|_| corrupt(column, value.to_string()))
    };
    let status = text("status")?;
    let applied_to = text("applied_to")?;
    let asset = text("asset")?;
    Ok(StoredPayment {
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
    })
}

/// The invoice's quoted assets with the confirmed and pending sums of the payments applied to it:
/// its own, and those of its merchant's other invoices applied to it. The splits are not read here
/// (see [`super::split::load_for_invoice`]).
pub(crate) async fn load_quote(conn: &mut PgConnection, invoice_id: &str) -> Result<Quote> {
    Ok(load_quotes(conn, &[invoice_id]).await?.remove(invoice_id).unwrap_or_default())
}

/// [`load_quote`] of the invoices `ids`, in one statement; an invoice with no options is absent.
pub(crate) async fn load_quotes(conn: &mut PgConnection, ids: &[&str]) -> Result<HashMap<String, Quote>> {
    // The payments are summed per invoice and asset first (one index probe per invoice, not one per
    // option); a payment counts toward the invoice it was applied to, else its own.
    let rows = sqlx::query(
        "WITH s AS ( \
             SELECT coalesce(p.applied_invoice_id, p.invoice_id) AS invoice_id, p.asset, \
                    sum(p.amount_minor) FILTER (WHERE p.status = $2) AS confirmed, \
                    sum(p.amount_minor) FILTER (WHERE p.status = $3) AS pending \
             FROM payments p \
             WHERE (p.invoice_id = ANY($1) AND p.applied_invoice_id IS NULL OR p.applied_invoice_id = ANY($1)) \
               AND p.applied_to = $4 \
             GROUP BY 1, 2) \
         SELECT o.invoice_id, o.asset, o.amount_minor::text AS quoted, coalesce(s.confirmed, 0)::text AS confirmed, \
                coalesce(s.pending, 0)::text AS pending \
         FROM payment_options o LEFT JOIN s ON s.invoice_id = o.invoice_id AND s.asset = o.asset \
         WHERE o.invoice_id = ANY($1)",
    )
    .bind(ids)
    .bind(PaymentStatus::Confirmed.as_str())
    .bind(PaymentStatus::Seen.as_str())
    .bind(AppliedTo::Invoice.as_str())
    .fetch_all(&mut *conn)
    .await?;
    let mut quotes: HashMap<String, Quote> = HashMap::with_capacity(ids.len());
    for row in &rows {
        let amount = |column: &'static str| -> Result<crate::money::Amount> {
            parse_amount("amount_minor", &row.try_get::<String, _>(column)?)
        };
        let asset = QuotedAsset { asset: row.try_get("asset")?, quoted: amount("quoted")?, confirmed: amount("confirmed")?, pending: amount("pending")? };
        quotes.entry(row.try_get("invoice_id")?).or_default().assets.push(asset);
    }
    Ok(quotes)
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Written {
    /// Whether the change's credit was posted now (not found standing from an earlier run).
    pub credited: bool,
}

/// Writes `change` on the caller's transaction `tx`, in the order [`PaymentChange`] documents. The
/// invoice (and, for an observation, the payment) must be locked by the caller.
pub async fn apply(tx: &mut PgConnection, ledger: &Ledger, change: &PaymentChange, now: DateTime<Utc>) -> Result<Written> {
    Ok(apply_all(tx, ledger, std::slice::from_ref(change), now).await?.pop().unwrap_or_default())
}

/// Writes `changes`, each about a different invoice locked by the caller (with its payment), as
/// [`apply`] writes each one, in the same order per invoice. The common changes — a payment seen or
/// counted again, credited or not, with the invoice's status move — are written together: one
/// statement per kind of write for all of them, their credits included. The others
/// (held, late, orphaned, applied payments) are written one by one first.
pub async fn apply_all(tx: &mut PgConnection, ledger: &Ledger, changes: &[PaymentChange], now: DateTime<Utc>) -> Result<Vec<Written>> {
    let mut written = vec![Written::default(); changes.len()];
    let mut common = Vec::with_capacity(changes.len());
    for (i, change) in changes.iter().enumerate() {
        let plain_row = matches!(change.row, None | Some(RowChange::Insert(_) | RowChange::Update { .. }));
        let plain_ledger = matches!(change.ledger, None | Some(LedgerChange::Credit(_)));
        if plain_row && plain_ledger && change.payment_event.is_none() && !change.announce_reversal {
            common.push(change);
        } else if let Some(slot) = written.get_mut(i) {
            *slot = apply_one(&mut *tx, ledger, change, now).await?;
        }
    }
    let credits: Vec<(&str, &NewEntry)> = common
        .iter()
        .filter_map(|c| match &c.ledger {
            Some(LedgerChange::Credit(entry)) => Some((c.payment_id.as_str(), entry)),
            _ => None,
        })
        .collect();
    let entries: Vec<&NewEntry> = credits.iter().map(|(_, entry)| *entry).collect();
    let posted: HashMap<&str, Posted> = credits.iter().map(|(id, _)| *id).zip(ledger.post_many(&mut *tx, &entries).await?).collect();
    let rows: Vec<RowWrite<'_>> = common.iter().filter_map(|c| RowWrite::of(c, posted.get(c.payment_id.as_str()).copied())).collect();
    // Each invoice's payment events, then its status event: every event of the round in one insert.
    let mut events = write_rows(&mut *tx, &rows, now).await?;
    let moves: Vec<StatusWrite<'_>> = common.iter().map(|c| StatusWrite::of(c)).collect();
    events.extend(write_statuses(&mut *tx, ledger, &moves, now).await?);
    emit_many(&mut *tx, &events, now).await?;
    for (change, slot) in changes.iter().zip(written.iter_mut()) {
        if let Some(p) = posted.get(change.payment_id.as_str()) {
            slot.credited = p.created;
        }
    }
    Ok(written)
}

/// Writes any change, alone: the ledger, the payment's row, the payment's events, the invoice's
/// status and its event, the reversal notice.
async fn apply_one(tx: &mut PgConnection, ledger: &Ledger, change: &PaymentChange, now: DateTime<Utc>) -> Result<Written> {
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
    match &change.row {
        Some(RowChange::Insert(_) | RowChange::Update { .. }) => {
            let rows: Vec<RowWrite<'_>> = RowWrite::of(change, posted).into_iter().collect();
            let events = write_rows(&mut *tx, &rows, now).await?;
            emit_many(&mut *tx, &events, now).await?;
        }
        Some(RowChange::Orphan { status }) => {
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
        Some(RowChange::Apply { value }) => {
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
        Some(RowChange::Hold { reason }) => {
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
        None => {}
    }
    let credited = posted.is_some_and(|p| p.created);
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
    let moved = write_statuses(&mut *tx, ledger, &[StatusWrite::of(change)], now).await?;
    emit_many(&mut *tx, &moved, now).await?;
    if change.announce_reversal {
        let view = load_view(&mut *tx, None, &change.invoice_id).await?;
        crate::webhook::emit(&mut *tx, &change.merchant_id, EVENT_PAYMENT_REVERSED, &change.invoice_id, &view, now).await?;
    }
    Ok(Written { credited })
}

/// A payment row to insert or update, with the credit the change posted for it, if any.
struct RowWrite<'a> {
    change: &'a PaymentChange,
    posted: Option<Posted>,
}

impl<'a> RowWrite<'a> {
    fn of(change: &'a PaymentChange, posted: Option<Posted>) -> Option<Self> {
        matches!(change.row, Some(RowChange::Insert(_) | RowChange::Update { .. })).then_some(Self { change, posted })
    }

    fn new_payment(&self) -> Option<&'a NewPayment> {
        match &self.change.row {
            Some(RowChange::Insert(new)) => Some(new),
            _ => None,
        }
    }

    fn entry_id(&self) -> Option<i64> {
        self.posted.map(|p| p.entry_id)
    }
}

/// Inserts the new payments and updates the known ones of `rows`, one statement each, and returns
/// the per-payment events: a payment first seen is detected, and one whose credit was posted now
/// is confirmed (a payment first seen already in a block is both, and a merchant following
/// payments misses neither, whatever its invoice's status does). Each carries the payment as the
/// API shows it, returned by the write itself.
async fn write_rows<'a>(tx: &mut PgConnection, rows: &[RowWrite<'a>], now: DateTime<Utc>) -> Result<Vec<NewEvent<'a, Announced>>> {
    let mut records: HashMap<String, PaymentRecord> = HashMap::with_capacity(rows.len());
    let count = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
    let height = |block: &Option<plan::BlockRef>| block.as_ref().and_then(|b| i64::try_from(b.height).ok());
    let hash = |block: &Option<plan::BlockRef>| block.as_ref().map(|b| b.hash.clone());
    let inserts: Vec<(&RowWrite<'_>, &NewPayment)> = rows.iter().filter_map(|r| r.new_payment().map(|n| (r, n))).collect();
    if !inserts.is_empty() {
        let column = |f: &dyn Fn(&RowWrite<'_>, &NewPayment) -> Option<String>| inserts.iter().map(|(r, n)| f(r, n)).collect::<Vec<_>>();
        let inserted: Vec<PaymentRecord> = sqlx::query_as(&format!(
            "WITH p AS (INSERT INTO payments (id, merchant_id, invoice_id, chain, asset, tx_ref, address, amount_minor, \
                                   value_minor, confirmations, confirmations_required, status, applied_to, \
                                   unapplied_reason, seen_at, updated_at, block_height, block_hash, \
                                   ledger_entry_id, confirmed_at) \
             SELECT r.id, r.merchant_id, r.invoice_id, r.chain, r.asset, r.tx_ref, r.address, r.amount::numeric, r.value::numeric, \
                    r.confirmations, r.required, r.status, r.applied_to, r.reason, $15, $15, r.height, r.hash, r.entry, \
                    CASE WHEN r.entry IS NULL THEN NULL ELSE $15 END \
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], \
                         $9::text[], $10::int4[], $11::int4[], $12::text[], $13::text[], $14::text[], $16::int8[], $17::text[], \
                         $18::int8[]) WITH ORDINALITY \
                  AS r(id, merchant_id, invoice_id, chain, asset, tx_ref, address, amount, value, confirmations, required, \
                       status, applied_to, reason, height, hash, entry, n) \
             ORDER BY r.n \
             RETURNING *) {PAYMENT_VIEW_OF_P}"
        ))
        .bind(column(&|r, _| Some(r.change.payment_id.clone())))
        .bind(column(&|r, _| Some(r.change.merchant_id.clone())))
        .bind(column(&|r, _| Some(r.change.invoice_id.clone())))
        .bind(column(&|_, n| Some(n.chain.clone())))
        .bind(column(&|_, n| Some(n.asset.clone())))
        .bind(column(&|_, n| Some(n.tx_ref.clone())))
        .bind(column(&|_, n| n.address.clone()))
        .bind(column(&|_, n| Some(n.amount.to_string())))
        .bind(column(&|_, n| Some(n.value.to_string())))
        .bind(inserts.iter().map(|(_, n)| count(n.confirmations)).collect::<Vec<_>>())
        .bind(inserts.iter().map(|(_, n)| count(n.confirmations_required)).collect::<Vec<_>>())
        .bind(column(&|_, n| Some(n.status.as_str().to_owned())))
        .bind(column(&|r, _| Some(r.change.applied_to.as_str().to_owned())))
        .bind(column(&|_, n| n.unapplied_reason.map(|r| r.as_str().to_owned())))
        .bind(now)
        .bind(inserts.iter().map(|(_, n)| height(&n.block)).collect::<Vec<_>>())
        .bind(column(&|_, n| hash(&n.block)))
        .bind(inserts.iter().map(|(r, _)| r.entry_id()).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?;
        records.extend(inserted.into_iter().map(|r| (r.id().to_owned(), r)));
    }
    // A credit posted now is recorded with the time it was confirmed, and only such a payment is
    // returned for its event.
    let updates: Vec<(&RowWrite<'_>, PaymentStatus, u32, u32, &Option<plan::BlockRef>)> = rows
        .iter()
        .filter_map(|r| match &r.change.row {
            Some(RowChange::Update { status, confirmations, confirmations_required, block }) => {
                Some((r, *status, *confirmations, *confirmations_required, block))
            }
            _ => None,
        })
        .collect();
    if !updates.is_empty() {
        let updated: Vec<PaymentRecord> = sqlx::query_as(&format!(
            "WITH p AS (UPDATE payments SET confirmations = u.confirmations, confirmations_required = u.required, \
                    status = u.status, updated_at = $8, block_height = u.height, block_hash = u.hash, \
                    ledger_entry_id = coalesce(u.entry, payments.ledger_entry_id), \
                    confirmed_at = CASE WHEN u.entry IS NULL THEN payments.confirmed_at ELSE $8 END \
             FROM unnest($1::text[], $2::int4[], $3::int4[], $4::text[], $5::int8[], $6::text[], $7::int8[]) \
                  AS u(id, confirmations, required, status, height, hash, entry) \
             WHERE payments.id = u.id RETURNING payments.*, u.entry) {PAYMENT_VIEW_OF_P} WHERE p.entry IS NOT NULL"
        ))
        .bind(updates.iter().map(|u| u.0.change.payment_id.as_str()).collect::<Vec<_>>())
        .bind(updates.iter().map(|u| count(u.2)).collect::<Vec<_>>())
        .bind(updates.iter().map(|u| count(u.3)).collect::<Vec<_>>())
        .bind(updates.iter().map(|u| u.1.as_str()).collect::<Vec<_>>())
        .bind(updates.iter().map(|u| height(u.4)).collect::<Vec<_>>())
        .bind(updates.iter().map(|u| hash(u.4)).collect::<Vec<_>>())
        .bind(updates.iter().map(|u| u.0.entry_id()).collect::<Vec<_>>())
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        records.extend(updated.into_iter().map(|r| (r.id().to_owned(), r)));
    }
    let mut events = Vec::new();
    for row in rows {
        let Some(record) = records.remove(row.change.payment_id.as_str()) else { continue };
        let view = record.view()?;
        let detected = row.new_payment().is_some();
        let credited = row.posted.is_some_and(|p| p.created);
        for (happened, event_type) in [(detected, EVENT_PAYMENT_DETECTED), (credited, EVENT_PAYMENT_CONFIRMED)] {
            if happened {
                let (merchant_id, object_id) = (row.change.merchant_id.as_str(), row.change.payment_id.as_str());
                events.push(NewEvent { merchant_id, event_type, object_id, data: Announced::Payment(Box::new(view.clone())) });
            }
        }
    }
    Ok(events)
}
/// An invoice's status move to store and announce.
pub(crate) struct StatusWrite<'a> {
    pub merchant_id: &'a str,
    pub invoice_id: &'a str,
    pub status: StatusMove,
}

impl<'a> StatusWrite<'a> {
    fn of(change: &'a PaymentChange) -> Self {
        Self { merchant_id: &change.merchant_id, invoice_id: &change.invoice_id, status: change.invoice }
    }
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
    let events = write_statuses(&mut *tx, ledger, &[StatusWrite { merchant_id, invoice_id, status }], now).await?;
    emit_many(tx, &events, now).await?;
    Ok(())
}

/// [`write_status`] for moves of different invoices, returning their events for the caller to
/// write: one statement stores the moves, one reads the moved invoices as the API shows them (plus
/// what delivering or taking back a sale needs, for the invoices that sell something).
async fn write_statuses<'a>(tx: &mut PgConnection, ledger: &Ledger, moves: &[StatusWrite<'a>], now: DateTime<Utc>) -> Result<Vec<NewEvent<'a, Announced>>> {
    let moving: Vec<&StatusWrite<'a>> = moves.iter().filter(|m| m.status.moves()).collect();
    if moving.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<String> = moving.iter().map(|m| m.invoice_id.to_owned()).collect();
    // Leaving paid after a reversal clears `paid_at`; paid again sets it anew.
    sqlx::query(
        "UPDATE invoices SET status = u.status, updated_at = $3, \
                paid_at = CASE WHEN u.status IN ('paid', 'overpaid') THEN coalesce(invoices.paid_at, $3) \
                               WHEN u.status IN ('open', 'processing', 'expired') THEN NULL ELSE invoices.paid_at END \
         FROM unnest($1::text[], $2::text[]) AS u(id, status) WHERE invoices.id = u.id",
    )
    .bind(&ids)
    .bind(moving.iter().map(|m| m.status.to.as_str()).collect::<Vec<_>>())
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let flipped: Vec<(&str, bool)> =
        moving.iter().filter(|m| m.status.from.is_paid() != m.status.to.is_paid()).map(|m| (m.invoice_id, m.status.to.is_paid())).collect();
    if !flipped.is_empty() {
        payrail_credits::purchase::on_invoice_statuses(&mut *tx, ledger, &flipped, now).await?;
        payrail_subscriptions::period::on_invoice_statuses(&mut *tx, ledger, &flipped, now).await?;
    }
    let views = load_views(&mut *tx, None, &ids).await?;
    if views.len() != ids.len() {
        return Err(sqlx::Error::RowNotFound.into());
    }
    Ok(moving
        .iter()
        .zip(views)
        .map(|(m, view)| NewEvent {
            merchant_id: m.merchant_id,
            event_type: m.status.to.event_type(),
            object_id: m.invoice_id,
            data: Announced::Invoice(Box::new(view)),
        })
        .collect())
}

/// What an event of the payment path carries.
#[derive(Debug, serde::Serialize)]
#[serde(untagged)]
enum Announced {
    Payment(Box<PaymentView>),
    Invoice(Box<InvoiceView>),
}

/// Recomputes an invoice's status from its payments and, when it changed, stores it and writes the
/// event. The invoice row must already be locked by the caller.
pub(crate) async fn settle_status(tx: &mut PgConnection, ledger: &Ledger, invoice: &InvoiceRow, now: DateTime<Utc>) -> Result<InvoiceStatus> {
    let quote = load_quote(&mut *tx, &invoice.id).await?;
    let status = plan::judge(invoice, &quote, now, Judge::Evaluate)?;
    write_status(tx, ledger, &invoice.merchant_id, &invoice.id, status, now).await?;
    Ok(status.to)
}
