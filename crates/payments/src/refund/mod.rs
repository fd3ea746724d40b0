//! Crypto refunds by claim link: `POST /v1/invoices/{id}/refunds` with `"method": "crypto"`.
//!
//! 1. **Created** (`open`): the merchant names an amount (see [`RefundAmount`]) in one asset the
//!    invoice was paid with. In one transaction the refund row is written, each payment's part of
//!    it recorded, and the payments' credits reversed in proportion onto the refund's own account
//!    `liabilities:refund:{id}` ([`payrail_core::payment::refund`]): from then on those funds
//!    cannot be settled, withdrawn or refunded again. The answer carries a one-time claim URL
//!    (`/refund/{token}`; only the token's SHA-256 is stored).
//! 2. **Claimed**: the payer opens the link, enters an address; a current-rate amount is priced
//!    now and its difference to what was reserved booked on the merchant's balance. EVM refunds are
//!    then paid from the treasury by a payout batch (`payrail-payouts`); Bitcoin refunds are paid
//!    by the merchant from its own wallet, which holds the deposits: the merchant sees the address
//!    and amount, and the Bitcoin watcher looks for that amount at that address like a deposit.
//! 3. **Paid** (the payout confirmed, or the Bitcoin payment as deep as the chain's deepest
//!    confirmation tier): the refund account is emptied to the chain's asset account; when every
//!    payment of the invoice is given back in full the invoice becomes `refunded`.
//!
//! An open refund (or a claimed Bitcoin one not yet paid, or one whose payout failed) can be
//! cancelled; an open one expires at `expires_at` (30 days by default). Both reverse what the
//! refund booked, and the payments' parts no longer count.

mod claim;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use payrail_store::page::{Order, Page};
use sqlx::{PgConnection, PgPool, Row};

use crate::ids::new_id;
use crate::invoice::{InvoiceError, Result};
use crate::ledger::{AccountCode, Ledger};
use crate::money::Amount;

pub use claim::{claim_merchant_paid, expire_due, lock_open, mark_failed, mark_paid, price_claim, record_claim, OpenRefund};
pub use payrail_core::payment::refund::RefundAmount;
use payrail_core::payment::refund::{merged_entry, part_postings, plan_reservation, RefundRefused, Refundable};

/// How long a claim link stays usable unless the merchant says otherwise.
pub const CLAIM_DEFAULT_S: i64 = 30 * 24 * 3600;
/// The longest a merchant may make it.
pub const CLAIM_MAX_S: i64 = 90 * 24 * 3600;

/// Whether a crypto refund that still stands (not cancelled or expired) takes part of payment `p`:
/// an SQL condition on a `payments p` row.
pub const STANDING_REFUND_OF_P: &str = "EXISTS (SELECT 1 FROM crypto_refund_parts x JOIN crypto_refunds r ON r.id = x.refund_id \
     WHERE x.payment_id = p.id AND r.status NOT IN ('canceled', 'expired'))";

/// What a refund gives back.
#[derive(Debug, Clone, Copy)]
pub enum RefundSource<'a> {
    /// The payments that count toward this invoice (`inv_…`), which must be paid.
    Invoice(&'a str),
    /// One payment held on the unapplied balance (`pay_…`), whole: late, to an expired or invalid
    /// invoice, or in an asset it did not quote.
    Unapplied(&'a str),
}

/// What the merchant asks (the API's body, parsed).
#[derive(Debug, Clone)]
pub struct NewCryptoRefund {
    /// The CAIP-19 asset; may be left out when the invoice was paid in one asset only.
    pub asset: Option<String>,
    pub amount: RefundAmount,
    pub reason: Option<String>,
    /// Seconds the claim link stays usable.
    pub expires_in_s: Option<i64>,
    /// The asset's symbol and decimals where the invoice did not quote it (an unapplied payment in
    /// another asset), from the configured assets.
    pub asset_info: Option<(String, u8)>,
}

/// A crypto refund as the API and its events show it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct CryptoRefundView {
    /// `rfd_…`
    pub id: String,
    #[schema(value_type = String, example = "refund")]
    #[sqlx(skip)]
    pub object: &'static str,
    #[schema(value_type = String, example = "crypto")]
    #[sqlx(skip)]
    pub method: &'static str,
    pub invoice_id: String,
    /// CAIP-2 and CAIP-19.
    pub chain: String,
    pub asset: String,
    pub symbol: String,
    pub decimals: i16,
    /// `rate_then`, `current_rate`, `fiat`, `overpaid` or `custom`.
    pub kind: String,
    /// The value refunded, in the invoice's currency (its minor units).
    pub currency: String,
    pub value_minor: String,
    /// What the payer receives, in the asset's smallest unit; null until the payer claims a
    /// current-rate refund.
    pub amount_minor: Option<String>,
    /// `open` → `claimed` → `paid`; or `failed` (the payout failed: cancel to return the funds),
    /// `canceled`, `expired`.
    pub status: String,
    pub reason: Option<String>,
    /// The payer's address, once claimed.
    pub address: Option<String>,
    /// The payout batch paying it (EVM).
    pub payout_id: Option<String>,
    /// The transaction that paid it.
    pub tx_hash: Option<String>,
    /// For a claimed Bitcoin refund the merchant pays: a BIP21 URI of the address and amount.
    #[sqlx(skip)]
    pub payment_uri: Option<String>,
    /// The one-time link for the payer; only in the answer that created the refund.
    #[sqlx(skip)]
    pub claim_url: Option<String>,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub claimed_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

const VIEW_COLUMNS: &str = "id, invoice_id, chain, asset, symbol, decimals, kind, currency, value_minor::text AS value_minor, \
     amount_minor::text AS amount_minor, status, reason, address, payout_id, tx_hash, expires_at, created_at, claimed_at, finished_at";

impl CryptoRefundView {
    fn finish(mut self) -> Self {
        self.object = "refund";
        self.method = "crypto";
        if self.chain.starts_with("bip122:") && self.status == "claimed" {
            if let (Some(address), Some(amount)) = (&self.address, &self.amount_minor) {
                let decimals = u8::try_from(self.decimals).unwrap_or(8);
                let btc = Amount::parse_decimal(amount, 0).map(|a| a.to_decimal_string(decimals)).unwrap_or_default();
                self.payment_uri = Some(format!("bitcoin:{address}?amount={}", trim_zeros(&btc)));
            }
        }
        self
    }

    /// The amount as a decimal of the asset, when known.
    pub fn amount_text(&self) -> Option<String> {
        let decimals = u8::try_from(self.decimals).ok()?;
        let amount = Amount::parse_decimal(self.amount_minor.as_deref()?, 0).ok()?;
        Some(trim_zeros(&amount.to_decimal_string(decimals)))
    }
}

/// `0.00100000` → `0.001`; `25.000000` → `25`.
pub fn trim_zeros(text: &str) -> String {
    if !text.contains('.') {
        return text.to_owned();
    }
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// The stored form of a claim token.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn refused(code: &'static str, reason: impl Into<String>) -> InvoiceError {
    InvoiceError::Refused { code, reason: reason.into() }
}

fn amount_of(text: &str, column: &'static str) -> Result<Amount> {
    Amount::parse_decimal(text, 0).map_err(|_| InvoiceError::Corrupt { column, value: text.to_owned() })
}

/// What a new refund answers: the refund and its claim link's token (shown once).
#[derive(Debug, Clone)]
pub struct Created {
    pub refund: CryptoRefundView,
    pub token: String,
}

/// Creates a refund of `source`, an invoice or a held payment of `merchant_id`; see the module docs.
pub async fn create(
    pool: &PgPool,
    ledger: &Ledger,
    merchant_id: &str,
    source: RefundSource<'_>,
    request: &NewCryptoRefund,
    now: DateTime<Utc>,
) -> Result<Created> {
    let expires_in = request.expires_in_s.unwrap_or(CLAIM_DEFAULT_S);
    if !(60..=CLAIM_MAX_S).contains(&expires_in) {
        return Err(InvoiceError::Invalid { field: "expires_in_s", reason: format!("between 60 and {CLAIM_MAX_S} seconds") });
    }
    if let Some(reason) = &request.reason {
        if reason.chars().count() > 500 || reason.chars().any(char::is_control) {
            return Err(InvoiceError::Invalid { field: "reason", reason: "at most 500 characters, no control characters".to_owned() });
        }
    }
    let mut tx = pool.begin().await?;
    // Serialized with settlements, withdrawals and payout runs (the payouts' lock), so a refund and
    // a settlement of the same funds cannot both read them as available.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('payrail.payouts.run'))").execute(&mut *tx).await?;
    let invoice_id = match source {
        RefundSource::Invoice(id) => id.to_owned(),
        RefundSource::Unapplied(payment_id) => {
            let row = sqlx::query("SELECT invoice_id, applied_to, status FROM payments WHERE id = $1 AND merchant_id = $2")
                .bind(payment_id)
                .bind(merchant_id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| InvoiceError::PaymentNotFound { id: payment_id.to_owned() })?;
            if row.try_get::<String, _>("applied_to")? != "unapplied" {
                return Err(refused("payment_not_unapplied", format!("payment {payment_id} counts toward an invoice: refund the invoice")));
            }
            if row.try_get::<String, _>("status")? != "confirmed" {
                return Err(refused("payment_not_confirmed", format!("payment {payment_id} is not confirmed")));
            }
            if !matches!(request.amount, RefundAmount::RateThen { value: None }) {
                return Err(InvoiceError::Invalid { field: "amount", reason: "a held payment is refunded whole: leave amount out".to_owned() });
            }
            row.try_get("invoice_id")?
        }
    };
    let invoice = sqlx::query("SELECT status, currency, amount_minor::text AS amount FROM invoices WHERE id = $1 AND merchant_id = $2 FOR UPDATE")
        .bind(&invoice_id)
        .bind(merchant_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| InvoiceError::NotFound { id: invoice_id.clone() })?;
    let status: String = invoice.try_get("status")?;
    if matches!(source, RefundSource::Invoice(_)) && !matches!(status.as_str(), "paid" | "overpaid" | "refunded") {
        return Err(InvoiceError::WrongState { id: invoice_id.clone(), status, action: "refunded" });
    }
    let currency: String = invoice.try_get("currency")?;
    let invoice_amount = amount_of(&invoice.try_get::<String, _>("amount")?, "amount_minor")?;
    // The confirmed payments it gives back, locked: a payment's refunded parts and its credit cannot
    // change under this refund.
    let (filter, key) = match source {
        RefundSource::Invoice(id) => ("COALESCE(p.applied_invoice_id, p.invoice_id) = $1 AND p.applied_to = 'invoice'", id),
        RefundSource::Unapplied(id) => ("p.id = $1 AND p.applied_to = 'unapplied'", id),
    };
    let rows = sqlx::query(&format!(
        "SELECT p.id, p.chain, p.asset, p.amount_minor::text AS amount, p.value_minor::text AS value, p.ledger_entry_id, \
                COALESCE((SELECT sum(x.returned_minor) FROM crypto_refund_parts x JOIN crypto_refunds r ON r.id = x.refund_id \
                          WHERE x.payment_id = p.id AND r.status NOT IN ('canceled', 'expired')), 0)::text AS returned \
         FROM payments p WHERE {filter} AND p.status = 'confirmed' AND p.chain <> 'stripe' \
         ORDER BY p.seen_at DESC, p.id DESC FOR UPDATE OF p"
    ))
    .bind(key)
    .fetch_all(&mut *tx)
    .await?;
    let mut assets: Vec<String> = rows.iter().map(|r| r.try_get::<String, _>("asset")).collect::<std::result::Result<_, _>>()?;
    assets.sort();
    assets.dedup();
    let asset = match (&request.asset, assets.as_slice()) {
        (Some(asset), _) if assets.contains(asset) => asset.clone(),
        (Some(asset), _) => return Err(refused("asset_not_paid", format!("no confirmed payment to refund in {asset}"))),
        (None, [one]) => one.clone(),
        (None, []) => return Err(refused("nothing_to_refund", "no confirmed crypto payment to refund")),
        (None, several) => {
            return Err(InvoiceError::Invalid { field: "asset", reason: format!("the invoice was paid in {}: name one", several.join(", ")) })
        }
    };
    let quoted: Option<(String, i16)> = sqlx::query_as("SELECT symbol, decimals FROM payment_options WHERE invoice_id = $1 AND asset = $2")
        .bind(&invoice_id)
        .bind(&asset)
        .fetch_optional(&mut *tx)
        .await?;
    let (symbol, decimals) = match (quoted, &request.asset_info) {
        (Some(quoted), _) => quoted,
        (None, Some((symbol, decimals))) => (symbol.clone(), i16::from(*decimals)),
        (None, None) => return Err(refused("asset_not_quoted", format!("{asset} is not a configured asset: its decimals are unknown"))),
    };
    let mut payments = Vec::new();
    let mut entries = Vec::new();
    let mut chain = String::new();
    let mut paid_value = Amount::ZERO;
    for row in &rows {
        let value = amount_of(&row.try_get::<String, _>("value")?, "value_minor")?;
        paid_value = paid_value.checked_add(value).unwrap_or(Amount::MAX);
        if row.try_get::<String, _>("asset")? != asset {
            continue;
        }
        chain = row.try_get("chain")?;
        payments.push(Refundable {
            payment_id: row.try_get("id")?,
            amount: amount_of(&row.try_get::<String, _>("amount")?, "amount_minor")?,
            value,
            returned: amount_of(&row.try_get::<String, _>("returned")?, "returned_minor")?,
        });
        entries.push(row.try_get::<Option<i64>, _>("ledger_entry_id")?);
    }
    let overpaid = paid_value.saturating_sub(invoice_amount);
    let reservation = plan_reservation(&payments, &request.amount, overpaid).map_err(|refusal| match refusal {
        RefundRefused::Exceeds { .. } => refused("refund_exceeds", refusal.to_string()),
        RefundRefused::NothingLeft => refused("nothing_to_refund", refusal.to_string()),
        other => refused("refund_refused", other.to_string()),
    })?;

    let id = new_id("rfd");
    let token = hex::encode(rand::random::<[u8; 32]>());
    let account = AccountCode::refund(&id);
    sqlx::query(
        "INSERT INTO crypto_refunds (id, merchant_id, invoice_id, chain, asset, symbol, decimals, kind, currency, value_minor, \
             reserved_minor, amount_minor, token_hash, status, reason, expires_at, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::numeric, $11::numeric, $12::numeric, $13, 'open', $14, $15, $16, $16)",
    )
    .bind(&id)
    .bind(merchant_id)
    .bind(&invoice_id)
    .bind(&chain)
    .bind(&asset)
    .bind(&symbol)
    .bind(decimals)
    .bind(request.amount.kind())
    .bind(&currency)
    .bind(reservation.value.to_string())
    .bind(reservation.reserved.to_string())
    .bind(reservation.amount.map(|a| a.to_string()))
    .bind(&token_hash(&token)[..])
    .bind(&request.reason)
    .bind(now + chrono::Duration::seconds(expires_in))
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let mut postings = Vec::new();
    for part in &reservation.parts {
        let index = payments.iter().position(|p| p.payment_id == part.payment_id).unwrap_or_default();
        let entry_id = entries[index].ok_or_else(|| InvoiceError::Corrupt { column: "ledger_entry_id", value: part.payment_id.clone() })?;
        let credit = ledger.entry(&mut tx, entry_id).await?;
        postings.extend(part_postings(&credit.postings, part, payments[index].amount, &account));
        sqlx::query("INSERT INTO crypto_refund_parts (refund_id, payment_id, returned_minor) VALUES ($1, $2, $3::numeric)")
            .bind(&id)
            .bind(&part.payment_id)
            .bind(part.returned.to_string())
            .execute(&mut *tx)
            .await?;
    }
    if let Some(amount) = reservation.amount {
        postings.extend(payrail_core::payment::refund::difference_postings(
            &AccountCode::merchant(merchant_id),
            &account,
            &asset,
            reservation.reserved,
            amount,
        ));
    }
    let entry = merged_entry(format!("refund:{id}"), "refund", format!("crypto refund {id} of {invoice_id}"), postings);
    let merchant = AccountCode::merchant(merchant_id);
    if let Some(taken) = entry.postings.iter().find(|p| p.account == merchant && p.side == crate::ledger::Side::Debit) {
        let balance = ledger.balance(&mut tx, &merchant, &asset).await?;
        let available = if balance.is_negative() { Amount::ZERO } else { balance.magnitude() };
        if available < taken.amount {
            return Err(refused(
                "insufficient_funds",
                format!("this refund takes {} {asset} from the merchant's balance; {available} is available", taken.amount),
            ));
        }
    }
    ledger.post(&mut tx, &entry).await.map_err(insufficient)?;
    let refund = view_on(&mut tx, None, &id).await?;
    crate::webhook::emit(&mut tx, merchant_id, "refund.created", &id, &refund, now).await?;
    tx.commit().await?;
    Ok(Created { refund, token })
}

/// A share account that cannot give its part back (a creator already paid out, say) is a 409.
pub(crate) fn insufficient(error: crate::ledger::LedgerError) -> InvoiceError {
    match error {
        crate::ledger::LedgerError::InsufficientBalance { message, .. } => {
            refused("insufficient_funds", format!("a balance this refund takes from is paid out or settled already: {message}"))
        }
        other => other.into(),
    }
}

async fn view_on(conn: &mut PgConnection, merchant_id: Option<&str>, id: &str) -> Result<CryptoRefundView> {
    let view: Option<CryptoRefundView> =
        sqlx::query_as(&format!("SELECT {VIEW_COLUMNS} FROM crypto_refunds WHERE id = $1 AND ($2::text IS NULL OR merchant_id = $2)"))
            .bind(id)
            .bind(merchant_id)
            .fetch_optional(conn)
            .await?;
    view.map(CryptoRefundView::finish).ok_or_else(|| refused_not_found(id))
}

fn refused_not_found(id: &str) -> InvoiceError {
    InvoiceError::RefundNotFound { id: id.to_owned() }
}

/// A refund read on the caller's transaction.
pub async fn view_in(conn: &mut PgConnection, id: &str) -> Result<CryptoRefundView> {
    view_on(conn, None, id).await
}

/// One refund of the merchant.
pub async fn view(pool: &PgPool, merchant_id: &str, id: &str) -> Result<CryptoRefundView> {
    let mut conn = pool.acquire().await?;
    view_on(&mut conn, Some(merchant_id), id).await
}

/// A page of the merchant's refunds, newest first, optionally of one invoice, and whether more
/// follow.
pub async fn list(pool: &PgPool, merchant_id: &str, invoice_id: Option<&str>, page: &Page) -> Result<(Vec<CryptoRefundView>, bool)> {
    const ORDER: Order = Order("created_at DESC, id DESC");
    let rows: Vec<CryptoRefundView> = sqlx::query_as(&format!(
        "SELECT {VIEW_COLUMNS} FROM crypto_refunds WHERE merchant_id = $1 AND ($2::text IS NULL OR invoice_id = $2) \
           AND {} ORDER BY {} LIMIT $4",
        page.condition(ORDER, "SELECT created_at, id FROM crypto_refunds WHERE id = $3 AND merchant_id = $1"),
        page.order_by(ORDER),
    ))
    .bind(merchant_id)
    .bind(invoice_id)
    .bind(page.cursor_id())
    .bind(page.fetch())
    .fetch_all(pool)
    .await?;
    let (rows, has_more) = page.finish(rows);
    Ok((rows.into_iter().map(CryptoRefundView::finish).collect(), has_more))
}

/// The refund a claim token opens, for the payer's page: its view and its merchant's name.
pub async fn by_token(pool: &PgPool, token: &str, now: DateTime<Utc>) -> Result<Option<(CryptoRefundView, String)>> {
    let row = sqlx::query("SELECT r.id, m.name FROM crypto_refunds r JOIN merchants m ON m.id = r.merchant_id WHERE r.token_hash = $1")
    .bind(&token_hash(token)[..])
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let id: String = row.try_get("id")?;
    let mut conn = pool.acquire().await?;
    let mut view = view_on(&mut conn, None, &id).await?;
    if view.status == "open" && view.expires_at <= now {
        view.status = "expired".to_owned();
    }
    Ok(Some((view, row.try_get("name")?)))
}

/// Cancels a refund that has not paid anything: open, claimed on Bitcoin (the merchant has not
/// paid it yet) or failed. What it booked is reversed; its parts stop counting.
pub async fn cancel(pool: &PgPool, ledger: &Ledger, merchant_id: &str, id: &str, now: DateTime<Utc>) -> Result<CryptoRefundView> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query("SELECT status, payout_id FROM crypto_refunds WHERE id = $1 AND merchant_id = $2 FOR UPDATE")
        .bind(id)
        .bind(merchant_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| refused_not_found(id))?;
    let status: String = row.try_get("status")?;
    let payout: Option<String> = row.try_get("payout_id")?;
    let cancellable = match status.as_str() {
        "open" | "failed" => true,
        "claimed" => payout.is_none(),
        _ => false,
    };
    if !cancellable {
        return Err(refused(
            "refund_state",
            format!("refund {id} is {status}{}: it cannot be cancelled", if payout.is_some() { " and being paid" } else { "" }),
        ));
    }
    let view = close(&mut tx, ledger, id, "canceled", now).await?;
    tx.commit().await?;
    Ok(view)
}

/// Ends a refund without paying it (`canceled`, `expired`): every entry it booked is reversed,
/// newest first (a claim that gave part of the reservation back is undone before the reservation,
/// so the refund's account never dips below zero), on the caller's transaction with the row
/// locked; announced as `refund.{status}`.
pub(crate) async fn close(tx: &mut PgConnection, ledger: &Ledger, id: &str, status: &str, now: DateTime<Utc>) -> Result<CryptoRefundView> {
    let entries: Vec<i64> = sqlx::query_scalar(
        "SELECT e.id FROM journal_entries e WHERE e.idempotency_key IN ($1, $2) \
           AND NOT EXISTS (SELECT 1 FROM journal_entries r WHERE r.reverses_entry_id = e.id) ORDER BY e.id DESC",
    )
    .bind(format!("refund:{id}"))
    .bind(format!("refund-claim:{id}"))
    .fetch_all(&mut *tx)
    .await?;
    for entry_id in entries {
        ledger.reverse(&mut *tx, entry_id, &format!("refund-{status}:{id}:{entry_id}"), &format!("crypto refund {id} {status}")).await?;
    }
    sqlx::query("UPDATE crypto_refunds SET status = $2, finished_at = $3, updated_at = $3 WHERE id = $1")
        .bind(id)
        .bind(status)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    let view = view_on(&mut *tx, None, id).await?;
    let merchant: String = sqlx::query_scalar("SELECT merchant_id FROM crypto_refunds WHERE id = $1").bind(id).fetch_one(&mut *tx).await?;
    crate::webhook::emit(&mut *tx, &merchant, &format!("refund.{status}"), id, &view, now).await?;
    Ok(view)
}
