//! Applying an observed payment to its invoice.
//!
//! Everything happens on the caller's transaction, so the watcher's cursor commits with it: the
//! payment row (keyed by `tx_ref`, unique), the ledger entry once the payment meets its confirmation
//! policy (keyed by `payment:{tx_ref}`), the invoice's new status and the outbox row announcing it.
//! Replaying the same observation changes nothing; a payment is never dropped: one that arrives after
//! the invoice expired, to a closed invoice, or in an asset the invoice did not quote is credited to
//! the merchant's unapplied balance for review.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, Row};

use crate::ids::new_id;
use crate::ledger::{AccountCode, Ledger, NewEntry};
use crate::money::{mul_div, Amount, AssetId, ChainId, Fiat, Rounding};

use super::error::{InvoiceError, Result};
use super::model::{load_view, parse_amount, progress_of, row_to_invoice, InvoiceRow, INVOICE_COLUMNS};
use super::status::{after_reversal, evaluate, InvoiceStatus};

/// A payment as a watcher (or the card rail) reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedPayment {
    pub invoice_id: String,
    pub chain: ChainId,
    pub asset: AssetId,
    /// Unique per credited output: `{caip2}:{txid}:{vout}` or `{caip2}:{tx hash}:{log index}`.
    pub tx_ref: String,
    pub address: Option<String>,
    pub amount: Amount,
    pub confirmations: u32,
    /// What the chain's policy demands for this payment's value.
    pub confirmations_required: u32,
    /// The block that holds it (`None` for a mempool payment).
    pub block: Option<BlockRef>,
}

/// A block by height and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockRef {
    pub height: u64,
    pub hash: String,
}

/// What applying an observation did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Applied {
    pub payment_id: String,
    pub invoice_status: InvoiceStatus,
    /// Whether this call posted the payment's ledger entry.
    pub credited: bool,
    pub applied_to: &'static str,
}

/// Why a payment is held as unapplied instead of counting toward its invoice.
fn unapplied_reason(invoice: &InvoiceRow, asset_quoted: bool, now: DateTime<Utc>) -> Option<&'static str> {
    if !asset_quoted {
        Some("asset_not_quoted")
    } else if !invoice.status.accepts_payments() {
        Some(match invoice.status {
            InvoiceStatus::Expired => "invoice_expired",
            InvoiceStatus::Void => "invoice_void",
            _ => "invoice_refunded",
        })
    } else if now >= invoice.expires_at {
        Some("late")
    } else {
        None
    }
}

/// A card payment as the card rail reports it: a Stripe PaymentIntent that succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardPayment {
    pub invoice_id: String,
    /// The PaymentIntent (`pi_…`); the payment's `tx_ref` is `stripe:{payment_intent_id}`.
    pub payment_intent_id: String,
    /// The currency Stripe charged in; a currency other than the invoice's is held as unapplied.
    pub currency: Fiat,
    /// In the currency's minor units (cents).
    pub amount: Amount,
}

/// The `chain` column of card payments and of the card option: cards settle at Stripe, not on a chain.
pub const CARD_RAIL: &str = "stripe";
/// Where the price of the card option comes from: the invoice's own currency, at par.
pub const CARD_RATE_SOURCE: &str = "par";

impl CardPayment {
    pub fn tx_ref(&self) -> String {
        format!("{CARD_RAIL}:{}", self.payment_intent_id)
    }
}

/// What every rail's payment becomes before it is applied: identifiers as stored, and the asset
/// account the ledger debits.
struct Credit<'a> {
    invoice_id: &'a str,
    chain: String,
    asset: String,
    tx_ref: &'a str,
    address: Option<&'a str>,
    amount: Amount,
    confirmations: u32,
    confirmations_required: u32,
    block: Option<&'a BlockRef>,
    debit_account: AccountCode,
}

/// Records `payment` on the caller's transaction `tx`. See the module docs.
pub async fn apply_payment(
    tx: &mut PgConnection,
    ledger: &Ledger,
    payment: &ObservedPayment,
    now: DateTime<Utc>,
) -> Result<Applied> {
    let credit = Credit {
        invoice_id: &payment.invoice_id,
        chain: payment.chain.to_string(),
        asset: payment.asset.to_string(),
        tx_ref: &payment.tx_ref,
        address: payment.address.as_deref(),
        amount: payment.amount,
        confirmations: payment.confirmations,
        confirmations_required: payment.confirmations_required,
        block: payment.block.as_ref(),
        debit_account: AccountCode::chain_assets(&payment.chain),
    };
    apply_credit(tx, ledger, &credit, now).await
}

/// Records a card payment on `tx`, exactly as [`apply_payment`] records a chain payment, with two
/// differences: the asset is the fiat currency itself (`iso4217:USD`) and the ledger debits
/// `assets:stripe:{currency}`; and a card payment is final when Stripe reports it, so it is
/// credited at once. The card option (the invoice's own amount, at par) is added to the invoice
/// the first time a card payment in its currency arrives, so the payment counts toward it.
pub async fn apply_card_payment(
    tx: &mut PgConnection,
    ledger: &Ledger,
    payment: &CardPayment,
    now: DateTime<Utc>,
) -> Result<Applied> {
    let asset = payment.currency.ledger_asset();
    // Lock the invoice before its options change: the same order as every other writer.
    let row = sqlx::query(&format!(
        "SELECT {INVOICE_COLUMNS} FROM invoices WHERE id = $1 FOR UPDATE"
    ))
    .bind(&payment.invoice_id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| InvoiceError::NotFound {
        id: payment.invoice_id.clone(),
    })?;
    let invoice = row_to_invoice(&row)?;
    if invoice.currency == payment.currency {
        sqlx::query(
            "INSERT INTO payment_options (invoice_id, asset, chain, symbol, decimals, amount_minor, rate, rate_source, \
                                          rate_at, position, address) \
             SELECT $1, $2, $3, $4, $5, $6::numeric, '1', $7, $8, coalesce(max(position) + 1, 0), NULL \
             FROM payment_options WHERE invoice_id = $1 \
             ON CONFLICT (invoice_id, asset) DO NOTHING",
        )
        .bind(&invoice.id)
        .bind(&asset)
        .bind(CARD_RAIL)
        .bind(payment.currency.code())
        .bind(i16::from(payment.currency.minor_units()))
        .bind(invoice.amount_minor.to_string())
        .bind(CARD_RATE_SOURCE)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    let tx_ref = payment.tx_ref();
    let credit = Credit {
        invoice_id: &payment.invoice_id,
        chain: CARD_RAIL.to_owned(),
        asset,
        tx_ref: &tx_ref,
        address: None,
        amount: payment.amount,
        confirmations: 1,
        confirmations_required: 1,
        block: None,
        debit_account: AccountCode::stripe(payment.currency),
    };
    apply_credit(tx, ledger, &credit, now).await
}

async fn apply_credit(
    tx: &mut PgConnection,
    ledger: &Ledger,
    payment: &Credit<'_>,
    now: DateTime<Utc>,
) -> Result<Applied> {
    if payment.amount.is_zero() {
        return Err(InvoiceError::Invalid {
            field: "amount",
            reason: "a payment of zero is not a payment".to_owned(),
        });
    }
    // Lock the invoice first: every writer of an invoice's payments takes this lock before any
    // ledger lock, so the order is the same for all.
    let row = sqlx::query(&format!(
        "SELECT {INVOICE_COLUMNS} FROM invoices WHERE id = $1 FOR UPDATE"
    ))
    .bind(payment.invoice_id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| InvoiceError::NotFound {
        id: payment.invoice_id.to_owned(),
    })?;
    let invoice = row_to_invoice(&row)?;
    let asset = payment.asset.clone();

    let existing = sqlx::query(
        "SELECT id, invoice_id, asset, amount_minor::text AS amount_minor, status, applied_to, \
                confirmations, confirmations_required, block_hash \
         FROM payments WHERE tx_ref = $1 FOR UPDATE",
    )
    .bind(payment.tx_ref)
    .fetch_optional(&mut *tx)
    .await?;

    let confirmations = i32::try_from(payment.confirmations).unwrap_or(i32::MAX);
    let block_height = payment.block.and_then(|b| i64::try_from(b.height).ok());
    let block_hash = payment.block.map(|b| b.hash.as_str());
    let required = i32::try_from(payment.confirmations_required).unwrap_or(i32::MAX);
    // Whether anything about an already known payment changed; an unchanged replay (a watcher
    // refreshing a payment that is still waiting) writes nothing and cannot move the invoice.
    let mut unchanged = false;
    let mut pre_posted: Option<crate::ledger::Posted> = None;
    let (payment_id, status, applied_to) = match existing {
        Some(found) => {
            let stored_amount = parse_amount("amount_minor", &found.try_get::<String, _>("amount_minor")?)?;
            let stored_invoice: String = found.try_get("invoice_id")?;
            let stored_asset: String = found.try_get("asset")?;
            if stored_amount != payment.amount || stored_invoice != payment.invoice_id || stored_asset != asset {
                return Err(InvoiceError::PaymentMismatch {
                    tx_ref: payment.tx_ref.to_owned(),
                    stored: format!("{stored_amount} {stored_asset} to {stored_invoice}"),
                    reported: format!("{} {asset} to {}", payment.amount, payment.invoice_id),
                });
            }
            let id: String = found.try_get("id")?;
            let stored_status: String = found.try_get("status")?;
            let mut status = stored_status.clone();
            if status == "orphaned" || status == "reversed" {
                // Back in the canonical chain after a reorg: seen again. A credit that was reversed
                // when its block left the chain is posted again once it is confirmed again.
                status = "seen".to_owned();
            }
            unchanged = status == stored_status
                && found.try_get::<i32, _>("confirmations")? == confirmations
                && found.try_get::<i32, _>("confirmations_required")? == required
                && found.try_get::<Option<String>, _>("block_hash")?.as_deref() == block_hash;
            if !unchanged {
                sqlx::query(
                "UPDATE payments SET confirmations = $2, confirmations_required = $3, status = $4, updated_at = $5, \
                        block_height = $6, block_hash = $7 \
                 WHERE id = $1",
            )
            .bind(&id)
            .bind(confirmations)
            .bind(required)
            .bind(&status)
            .bind(now)
            .bind(block_height)
            .bind(block_hash)
            .execute(&mut *tx)
            .await?;
            }
            (id, status, found.try_get::<String, _>("applied_to")?)
        }
        None => {
            let option = sqlx::query(
                "SELECT amount_minor::text AS amount_minor FROM payment_options WHERE invoice_id = $1 AND asset = $2",
            )
            .bind(&invoice.id)
            .bind(&asset)
            .fetch_optional(&mut *tx)
            .await?;
            let reason = unapplied_reason(&invoice, option.is_some(), now);
            let value = match (&option, reason) {
                (Some(o), None) => {
                    let quoted = parse_amount("amount_minor", &o.try_get::<String, _>("amount_minor")?)?;
                    // The share of the invoice this payment covers, at the locked quote.
                    mul_div(payment.amount, invoice.amount_minor, quoted, Rounding::Down).map_err(|e| {
                        InvoiceError::Invalid {
                            field: "amount",
                            reason: format!("cannot be valued: {e}"),
                        }
                    })?
                }
                _ => Amount::ZERO,
            };
            let id = new_id("pay");
            let applied_to = if reason.is_some() { "unapplied" } else { "invoice" };
            // Confirmed at first sight (a watcher catching up): credit first, then write the row
            // as confirmed — one statement less than inserting it as seen and updating it.
            if payment.confirmations >= payment.confirmations_required {
                pre_posted = Some(post_credit(tx, ledger, payment, &invoice, &id, applied_to, false).await?);
            }
            let row_status = if pre_posted.is_some() { "confirmed" } else { "seen" };
            sqlx::query(
                "INSERT INTO payments (id, merchant_id, invoice_id, chain, asset, tx_ref, address, amount_minor, \
                                       value_minor, confirmations, confirmations_required, status, applied_to, \
                                       unapplied_reason, seen_at, updated_at, block_height, block_hash, \
                                       ledger_entry_id, confirmed_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8::numeric, $9::numeric, $10, $11, $17, $12, $13, $14, $14, $15, $16, $18, $19)",
            )
            .bind(&id)
            .bind(&invoice.merchant_id)
            .bind(&invoice.id)
            .bind(&payment.chain)
            .bind(&asset)
            .bind(payment.tx_ref)
            .bind(payment.address)
            .bind(payment.amount.to_string())
            .bind(value.to_string())
            .bind(confirmations)
            .bind(required)
            .bind(applied_to)
            .bind(reason)
            .bind(now)
            .bind(block_height)
            .bind(block_hash)
            .bind(row_status)
            .bind(pre_posted.map(|p| p.entry_id))
            .bind(pre_posted.map(|_| now))
            .execute(&mut *tx)
            .await?;
            let row_status = if pre_posted.is_some() { "confirmed" } else { "seen" };
            (id, row_status.to_owned(), applied_to.to_owned())
        }
    };

    let mut credited = false;
    let posted = match pre_posted {
        Some(posted) => Some(posted),
        None if status == "seen" && payment.confirmations >= payment.confirmations_required => {
            // A payment that waited may have been credited and reversed by a reorg before.
            let posted = post_credit(tx, ledger, payment, &invoice, &payment_id, &applied_to, true).await?;
            sqlx::query(
                "UPDATE payments SET status = 'confirmed', ledger_entry_id = $2, confirmed_at = $3, updated_at = $3 \
                 WHERE id = $1",
            )
            .bind(&payment_id)
            .bind(posted.entry_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            Some(posted)
        }
        None => None,
    };
    if let Some(posted) = posted {
        credited = posted.created;
        if applied_to == "unapplied" && credited {
            let view = load_view(&mut *tx, None, &invoice.id).await?;
            crate::webhook::emit(&mut *tx, &invoice.merchant_id, "invoice.payment_late", &invoice.id, &view, now)
                .await?;
        }
    }

    // A payment still waiting, unchanged, on an invoice already waiting for it cannot change its
    // status (expiry waits for pending payments): skip the valuation.
    let settled = unchanged && posted.is_none() && status == "seen" && invoice.status == InvoiceStatus::Processing;
    let invoice_status = if settled {
        invoice.status
    } else {
        settle_status(tx, &invoice, now).await?
    };
    Ok(Applied {
        payment_id,
        invoice_status,
        credited,
        applied_to: if applied_to == "invoice" {
            "invoice"
        } else {
            "unapplied"
        },
    })
}

/// Posts a payment's credit: the rail's asset account against the merchant, its creators and the
/// platform per the invoice's split (or, for a payment held for review, the merchant's unapplied
/// balance, unsplit). One entry, keyed by the payment's `tx_ref`: posted once.
async fn post_credit(
    tx: &mut PgConnection,
    ledger: &Ledger,
    payment: &Credit<'_>,
    invoice: &InvoiceRow,
    payment_id: &str,
    applied_to: &str,
    may_follow_reversal: bool,
) -> Result<crate::ledger::Posted> {
    // A payment held for review is not split: it is not yet known to be revenue of the invoice.
    let credits = if applied_to == "invoice" {
        let splits = super::split::load_for_invoice(&mut *tx, &invoice.id).await?;
        super::split::split_postings(AccountCode::merchant(&invoice.merchant_id), payment.amount, &splits)?
    } else {
        vec![(AccountCode::unapplied(&invoice.merchant_id), payment.amount)]
    };
    let mut entry = NewEntry::new(credit_key(&mut *tx, payment.tx_ref, may_follow_reversal).await?, "payment")
        .memo(format!("{} {payment_id}", invoice.id))
        .debit(payment.debit_account.clone(), payment.asset.clone(), payment.amount);
    for (account, amount) in credits {
        entry = entry.credit(account, payment.asset.clone(), amount);
    }
    Ok(ledger.post(&mut *tx, &entry).await?)
}

/// Most times one payment can be credited, reversed by a reorg and credited again.
pub const RECREDITS_MAX: u32 = 100;

/// The ledger key of a payment's credit: `payment:{tx_ref}`, or `payment:{tx_ref}#{n}` for the n-th
/// credit of a payment whose earlier credits were reversed when their blocks left the chain. Each
/// generation is posted once and reversed at most once (reversals are keyed by the entry).
async fn credit_key(tx: &mut PgConnection, tx_ref: &str, may_follow_reversal: bool) -> Result<String> {
    let base = format!("payment:{tx_ref}");
    if !may_follow_reversal {
        return Ok(base);
    }
    for generation in 1..=RECREDITS_MAX {
        let key = if generation == 1 { base.clone() } else { format!("{base}#{generation}") };
        // Exact keys only, so the unique index answers.
        let state: Option<bool> = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM journal_entries r WHERE r.reverses_entry_id = e.id) \
             FROM journal_entries e WHERE e.idempotency_key = $1",
        )
        .bind(&key)
        .fetch_optional(&mut *tx)
        .await?;
        match state {
            // Taken and reversed: the next generation.
            Some(true) => continue,
            // Free, or posted and standing (a replay finds it).
            None | Some(false) => return Ok(key),
        }
    }
    Err(InvoiceError::Invalid { field: "tx_ref", reason: format!("{tx_ref} was reversed more than {RECREDITS_MAX} times") })
}

/// Marks a payment whose block left the canonical chain. A payment not yet credited goes back to
/// unconfirmed accounting (its value no longer counts); a credited one is reversed by a new ledger
/// entry and raised as an alert, since the confirmation policy should have made that impossible.
pub async fn orphan_payment(
    tx: &mut PgConnection,
    ledger: &Ledger,
    tx_ref: &str,
    now: DateTime<Utc>,
) -> Result<InvoiceStatus> {
    let found = sqlx::query("SELECT id, invoice_id, status, ledger_entry_id FROM payments WHERE tx_ref = $1")
        .bind(tx_ref)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| InvoiceError::NotFound { id: tx_ref.to_owned() })?;
    let invoice_id: String = found.try_get("invoice_id")?;
    let row = sqlx::query(&format!(
        "SELECT {INVOICE_COLUMNS} FROM invoices WHERE id = $1 FOR UPDATE"
    ))
    .bind(&invoice_id)
    .fetch_one(&mut *tx)
    .await?;
    let invoice = row_to_invoice(&row)?;
    let payment_id: String = found.try_get("id")?;
    let status: String = found.try_get("status")?;
    let mut orphaned_as: Option<&str> = None;
    match status.as_str() {
        "seen" => orphaned_as = Some("orphaned"),
        "confirmed" => {
            let entry_id: Option<i64> = found.try_get("ledger_entry_id")?;
            if let Some(entry_id) = entry_id {
                ledger
                    .reverse(
                        &mut *tx,
                        entry_id,
                        &format!("reorg:{tx_ref}:{entry_id}"),
                        "credited block orphaned",
                    )
                    .await?;
            }
            tracing::error!(target: "invoice", tx_ref, invoice = %invoice.id,
                "credited payment orphaned by a reorg deeper than its confirmation policy; credit reversed");
            orphaned_as = Some("reversed");
        }
        _ => {}
    }
    // An uncredited payment simply stops counting; a credited one is marked reversed. Either is
    // announced (`payment.orphaned`), with the payment as it now stands.
    let Some(new_status) = orphaned_as else {
        return settle_status(tx, &invoice, now).await;
    };
    sqlx::query(
        "UPDATE payments SET status = $3, confirmations = 0, block_height = NULL, block_hash = NULL, \
         updated_at = $2 WHERE id = $1",
    )
    .bind(&payment_id)
    .bind(now)
    .bind(new_status)
    .execute(&mut *tx)
    .await?;
    let view = load_view(&mut *tx, None, &invoice.id).await?;
    if let Some(payment) = view.payments.iter().find(|p| p.id == payment_id) {
        crate::webhook::emit(&mut *tx, &invoice.merchant_id, "payment.orphaned", &payment_id, payment, now).await?;
    }
    if new_status != "reversed" {
        return settle_status(tx, &invoice, now).await;
    }
    // A credit taken back: a paid invoice no longer claims to be paid by it (see
    // `status::after_reversal`), and the merchant is told in the same transaction.
    let next = settle_status_by(tx, &invoice, now, |current, progress| match current {
        InvoiceStatus::Paid | InvoiceStatus::Overpaid => after_reversal(progress),
        _ => evaluate(current, progress),
    })
    .await?;
    let view = load_view(&mut *tx, None, &invoice.id).await?;
    crate::webhook::emit(&mut *tx, &invoice.merchant_id, "invoice.payment_reversed", &invoice.id, &view, now).await?;
    Ok(next)
}

/// Recomputes an invoice's status from its payments and, when it changed, stores it and writes the
/// event. The invoice row must already be locked by the caller.
pub(crate) async fn settle_status(
    tx: &mut PgConnection,
    invoice: &InvoiceRow,
    now: DateTime<Utc>,
) -> Result<InvoiceStatus> {
    settle_status_by(tx, invoice, now, evaluate).await
}

/// As [`settle_status`], with the transition rule given.
async fn settle_status_by(
    tx: &mut PgConnection,
    invoice: &InvoiceRow,
    now: DateTime<Utc>,
    rule: impl Fn(InvoiceStatus, &super::status::Progress) -> InvoiceStatus,
) -> Result<InvoiceStatus> {
    let progress = progress_of(tx, invoice, now).await?;
    let next = rule(invoice.status, &progress);
    if next != invoice.status {
        // Leaving paid after a reversal clears `paid_at`; paid again sets it anew.
        sqlx::query(
            "UPDATE invoices SET status = $2, updated_at = $3, \
                    paid_at = CASE WHEN $2 IN ('paid', 'overpaid') THEN coalesce(paid_at, $3) \
                                   WHEN $2 IN ('open', 'processing', 'expired') THEN NULL ELSE paid_at END \
             WHERE id = $1",
        )
        .bind(&invoice.id)
        .bind(next.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let view = load_view(&mut *tx, None, &invoice.id).await?;
        crate::webhook::emit(
            &mut *tx,
            &invoice.merchant_id,
            &next.event_type(),
            &invoice.id,
            &view,
            now,
        )
        .await?;
    }
    Ok(next)
}
