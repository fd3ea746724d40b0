//! Reading an invoice's view: one statement for everything it shows, and for the polling paths
//! (`GET /v1/invoices/{id}`, the checkout status) a smaller one that leaves out what never
//! changes once the invoice is written.
//!
//! What never changes: the payment options (rows are only ever added — a card option on the first
//! card payment — never changed or removed), the splits and platform fee, the customer, the promo
//! code and its discount (all written in the creating transaction) and the merchant's name. Their
//! rendered form is kept per invoice ([`FIXED_VIEWS_MAX`] at most) and used while the invoice's
//! option count is the one they were read with; the small statement reads the invoice row, its
//! payments and that count. Views read inside a transaction never use or
//! fill the cache: they may see what is not committed.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::money::Amount;

use super::error::{InvoiceError, Result};
use super::model::{decimals_of, parse_amount, InvoiceRecord, InvoiceView, PaymentOptionView, PaymentOptions, PaymentRecord, PaymentView, INVOICE_COLUMNS};
use super::plan::{AppliedTo, PaymentStatus, Quote, QuotedAsset};
use super::split::{bps_of, CreatorShare, Splits};
use super::status::InvoiceStatus;

/// Invoices whose unchanging parts are kept; past it, the longest kept is dropped first.
pub const FIXED_VIEWS_MAX: usize = 2_048;

/// Loads the whole view of an invoice. With `merchant_id`, another merchant's invoice is not found.
pub async fn load_view(conn: &mut PgConnection, merchant_id: Option<&str>, id: &str) -> Result<InvoiceView> {
    Ok(load_named_view(conn, merchant_id, id).await?.0)
}

/// [`load_view`], with the merchant's name (what the checkout shows as the payee).
pub async fn load_named_view(conn: &mut PgConnection, merchant_id: Option<&str>, id: &str) -> Result<(InvoiceView, String)> {
    let (record, fixed) = load_whole(conn, merchant_id, id).await?;
    assemble(record, &fixed)
}

/// [`load_named_view`] as of `now`, from committed data: an open invoice past its expiry is
/// expired first (what the expiry job would do a moment later), so no reader sees it open late.
/// Its unchanging parts come from memory when they were read before.
pub async fn load_current_view(pool: &sqlx::PgPool, merchant_id: Option<&str>, id: &str, now: DateTime<Utc>) -> Result<(InvoiceView, String)> {
    let loaded = load_polled(pool, merchant_id, id).await?;
    if loaded.0.status != InvoiceStatus::Open || loaded.0.expires_at > now {
        return Ok(loaded);
    }
    super::expire::refresh(pool, id, now).await?;
    load_polled(pool, merchant_id, id).await
}

/// The view through the cache: the small statement when the unchanging parts are known and still
/// current, else the whole one (whose parts are then kept).
async fn load_polled(pool: &sqlx::PgPool, merchant_id: Option<&str>, id: &str) -> Result<(InvoiceView, String)> {
    let mut conn = pool.acquire().await?;
    if let Some(fixed) = cached(id) {
        let record: Option<ChangingRecord> = sqlx::query_as(one_query(&CHANGING_ONE, changing_query))
            .bind(id)
            .bind(merchant_id)
            .fetch_optional(&mut *conn)
            .await?;
        let record = record.ok_or_else(|| InvoiceError::NotFound { id: id.to_owned() })?;
        if record.options_count == fixed.options_count {
            return assemble(record, &fixed);
        }
    }
    let (record, fixed) = load_whole(&mut conn, merchant_id, id).await?;
    keep(id, fixed.clone());
    assemble(record, &fixed)
}

/// The views of invoices `ids` (of `merchant_id` when given), in that order, in one query: a listed
/// page, or the invoices a payment step moved.
pub(crate) async fn load_views(conn: &mut PgConnection, merchant_id: Option<&str>, ids: &[String]) -> Result<Vec<InvoiceView>> {
    let records: Vec<WholeRecord> = sqlx::query_as(&format!(
        "{} ORDER BY array_position($1::text[], v.id)",
        whole_query("id = ANY($1) AND ($2::text IS NULL OR merchant_id = $2)")
    ))
    .bind(ids)
    .bind(merchant_id)
    .fetch_all(&mut *conn)
    .await?;
    records
        .into_iter()
        .map(|record| {
            let (changing, fixed) = record.split()?;
            Ok(assemble(changing, &fixed)?.0)
        })
        .collect()
}

const FILTER_ONE: &str = "id = $1 AND ($2::text IS NULL OR merchant_id = $2)";

/// The one-invoice statements, written once rather than formatted on every request.
static CHANGING_ONE: OnceLock<String> = OnceLock::new();
static WHOLE_ONE: OnceLock<String> = OnceLock::new();

fn one_query(cell: &'static OnceLock<String>, build: fn(&str) -> String) -> &'static str {
    cell.get_or_init(|| build(FILTER_ONE))
}

async fn load_whole(conn: &mut PgConnection, merchant_id: Option<&str>, id: &str) -> Result<(ChangingRecord, Arc<FixedParts>)> {
    let record: Option<WholeRecord> =
        sqlx::query_as(one_query(&WHOLE_ONE, whole_query)).bind(id).bind(merchant_id).fetch_optional(&mut *conn).await?;
    record.ok_or_else(|| InvoiceError::NotFound { id: id.to_owned() })?.split()
}

/// The statement reading what changes of the invoices `filter` selects: the row, its payments
/// (as JSON) and the option count. `extra` adds columns over `v`.
fn changing_query_with(filter: &str, extra: &str) -> String {
    format!(
        "SELECT v.*, \
           (SELECT count(*) FROM payment_options o WHERE o.invoice_id = v.id) AS options_count, \
           (SELECT coalesce(json_agg(pv ORDER BY pv.seen_at, pv.id), '[]'::json) FROM ( \
                SELECT {columns} FROM payments p {join} \
                 WHERE p.invoice_id = v.id OR p.applied_invoice_id = v.id) pv) AS payments{extra} \
         FROM (SELECT {INVOICE_COLUMNS}, customer_id, promo_id, discount_minor::text AS discount_minor, platform_fee_bps, \
                      redirect_url, buyer_email, locale, speed_policy \
                 FROM invoices WHERE {filter}) v",
        columns = payment_view_columns!(),
        join = payment_option_join!(),
    )
}

fn changing_query(filter: &str) -> String {
    changing_query_with(filter, "")
}

/// [`changing_query`] and the unchanging parts: options, splits, promo code, merchant name.
fn whole_query(filter: &str) -> String {
    changing_query_with(
        filter,
        ", \
           (SELECT m.name FROM merchants m WHERE m.id = v.merchant_id) AS merchant_name, \
           (SELECT pc.code FROM promo_codes pc WHERE pc.id = v.promo_id) AS promo_code, \
           (SELECT coalesce(json_agg(json_build_object( \
                'asset', o.asset, 'chain', o.chain, 'decimals', o.decimals, 'amount_minor', o.amount_minor::text, \
                'rate', o.rate, 'rate_source', o.rate_source, 'rate_at', o.rate_at, 'address', o.address, \
                'symbol', o.symbol, 'rate_sources', o.rate_sources, 'amount_exact_minor', o.amount_exact_minor::text, \
                'display_decimals', o.display_decimals) ORDER BY o.position), '[]'::json) \
              FROM payment_options o WHERE o.invoice_id = v.id) AS options, \
           (SELECT coalesce(json_agg(json_build_object('creator', s.creator_id, 'bps', s.bps) ORDER BY s.position), '[]'::json) \
              FROM invoice_splits s WHERE s.invoice_id = v.id) AS splits",
    )
}

/// A row of [`changing_query`].
#[derive(sqlx::FromRow)]
struct ChangingRecord {
    #[sqlx(flatten)]
    invoice: InvoiceRecord,
    options_count: i64,
    payments: sqlx::types::Json<Vec<PaymentRecord>>,
}

/// A row of [`whole_query`].
#[derive(sqlx::FromRow)]
struct WholeRecord {
    #[sqlx(flatten)]
    changing: ChangingRecord,
    customer_id: Option<String>,
    discount_minor: String,
    platform_fee_bps: i32,
    redirect_url: Option<String>,
    buyer_email: Option<String>,
    locale: Option<String>,
    speed_policy: String,
    merchant_name: String,
    promo_code: Option<String>,
    options: sqlx::types::Json<Vec<OptionRecord>>,
    splits: sqlx::types::Json<Vec<SplitRecord>>,
}

/// A `payment_options` row, as [`whole_query`] reads it.
#[derive(serde::Deserialize)]
struct OptionRecord {
    asset: String,
    chain: String,
    decimals: i16,
    amount_minor: String,
    rate: String,
    rate_source: String,
    rate_at: DateTime<Utc>,
    address: Option<String>,
    symbol: String,
    rate_sources: serde_json::Value,
    amount_exact_minor: Option<String>,
    display_decimals: Option<i16>,
}

/// One creator's share, as [`whole_query`] reads it.
#[derive(serde::Deserialize)]
struct SplitRecord {
    creator: String,
    bps: i32,
}

/// What an invoice's view shows that never changes (see the module documentation), rendered.
#[derive(Debug)]
struct FixedParts {
    options: PaymentOptions,
    /// Each option's asset and quoted amount, for the valuation.
    quoted: Vec<(String, Amount)>,
    options_count: i64,
    split: Splits,
    customer: Option<String>,
    promo_code: Option<String>,
    discount: Option<String>,
    redirect_url: Option<String>,
    buyer_email: Option<String>,
    locale: Option<String>,
    speed_policy: payrail_core::payment::SpeedPolicy,
    merchant_name: String,
}

impl WholeRecord {
    fn split(self) -> Result<(ChangingRecord, Arc<FixedParts>)> {
        let invoice = self.changing.invoice.invoice()?;
        let minor_units = invoice.currency.minor_units();
        let merchant_name = self.merchant_name;
        let mut options = Vec::with_capacity(self.options.0.len());
        let mut quoted = Vec::with_capacity(self.options.0.len());
        for o in self.options.0 {
            let decimals = decimals_of(o.decimals)?;
            let amount = parse_amount("amount_minor", &o.amount_minor)?;
            quoted.push((o.asset.clone(), amount));
            // Options written before amounts were rounded for payers show every decimal, as quoted.
            let shown = o.display_decimals.map(decimals_of).transpose()?.unwrap_or(decimals);
            let uri = match (o.asset.parse::<crate::money::AssetId>(), o.address.as_deref()) {
                (Ok(parsed), Some(deposit)) if parsed.chain().is_bip122() && parsed.is_native() => {
                    // BIP21, labelled with the merchant's name so the wallet shows who is paid.
                    Some(crate::chain::bitcoin::payment_uri(deposit, amount, Some(&merchant_name), Some(&format!("Invoice {}", invoice.id))))
                }
                (Ok(parsed), Some(deposit)) => deposit
                    .parse::<alloy_primitives::Address>()
                    .ok()
                    .and_then(|deposit| crate::chain::evm::payment_uri(&parsed, &deposit, amount)),
                _ => None,
            };
            options.push(PaymentOptionView {
                uri,
                asset: o.asset,
                chain: o.chain,
                symbol: o.symbol,
                decimals,
                address: o.address,
                amount: crate::money::display::display_string(amount, decimals, shown),
                amount_minor: amount.to_string(),
                amount_exact_minor: o.amount_exact_minor.unwrap_or_else(|| amount.to_string()),
                display_decimals: shown,
                rate: o.rate,
                rate_source: o.rate_source,
                rate_at: o.rate_at,
                rate_sources: o.rate_sources,
            });
        }
        let mut splits = Vec::with_capacity(self.splits.0.len());
        for s in self.splits.0 {
            splits.push(CreatorShare { creator: s.creator, bps: bps_of("invoice_splits.bps", s.bps)? });
        }
        let split = Splits { splits, platform_fee_bps: bps_of("invoices.platform_fee_bps", self.platform_fee_bps)? };
        let discount = self
            .promo_code
            .as_ref()
            .map(|_| parse_amount("discount_minor", &self.discount_minor).map(|d| d.to_decimal_string(minor_units)))
            .transpose()?;
        let fixed = FixedParts {
            options: PaymentOptions::new(options)?,
            quoted,
            options_count: self.changing.options_count,
            split,
            customer: self.customer_id,
            promo_code: self.promo_code,
            discount,
            redirect_url: self.redirect_url,
            buyer_email: self.buyer_email,
            locale: self.locale,
            speed_policy: self.speed_policy.parse().map_err(|_| InvoiceError::Corrupt { column: "speed_policy", value: self.speed_policy.clone() })?,
            merchant_name,
        };
        Ok((self.changing, Arc::new(fixed)))
    }
}

/// The view from what changes and what does not.
fn assemble(record: ChangingRecord, fixed: &FixedParts) -> Result<(InvoiceView, String)> {
    let invoice = record.invoice.invoice()?;
    let minor_units = invoice.currency.minor_units();
    let payments = record.payments.0.into_iter().map(PaymentRecord::view).collect::<Result<Vec<_>>>()?;
    let sums = sums(&record.invoice.id, &payments)?;
    let assets = fixed
        .quoted
        .iter()
        .map(|(asset, quoted)| {
            let (confirmed, pending) = sums.get(asset).copied().unwrap_or((Amount::ZERO, Amount::ZERO));
            QuotedAsset { asset: asset.clone(), quoted: *quoted, confirmed, pending }
        })
        .collect();
    let (confirmed, _pending) = Quote { assets, splits: None }.valuation(invoice.amount_minor)?;
    let record = record.invoice;
    let view = InvoiceView {
        customer: fixed.customer.clone(),
        promo_code: fixed.promo_code.clone(),
        discount: fixed.discount.clone(),
        redirect_url: fixed.redirect_url.clone(),
        buyer_email: fixed.buyer_email.clone(),
        locale: fixed.locale.clone(),
        speed_policy: fixed.speed_policy,
        id: record.id,
        object: "invoice",
        merchant_id: record.merchant_id,
        status: invoice.status,
        currency: invoice.currency.code().to_owned(),
        amount: invoice.amount_minor.to_decimal_string(minor_units),
        amount_minor: invoice.amount_minor.to_string(),
        amount_paid: confirmed.to_decimal_string(minor_units),
        amount_remaining: invoice.amount_minor.saturating_sub(confirmed).to_decimal_string(minor_units),
        underpayment_tolerance_bps: invoice.tolerance_bps,
        order_id: record.order_id,
        metadata: record.metadata,
        expires_at: invoice.expires_at,
        created_at: record.created_at,
        updated_at: record.updated_at,
        paid_at: record.paid_at,
        settled_at: record.settled_at,
        payment_options: fixed.options.clone(),
        payments,
        split: fixed.split.clone(),
    };
    Ok((view, fixed.merchant_name.clone()))
}

/// Confirmed and pending sums per asset of the payments that count toward invoice `id`: applied to
/// it, sent for it and not applied elsewhere or applied to it from elsewhere — the rule
/// `store::load_quote` writes in SQL for the payment path.
fn sums(id: &str, payments: &[PaymentView]) -> Result<HashMap<String, (Amount, Amount)>> {
    let mut sums: HashMap<String, (Amount, Amount)> = HashMap::new();
    for p in payments {
        let counts = p.applied_to == AppliedTo::Invoice.as_str()
            && (p.invoice_id == id && p.applied_invoice_id.is_none() || p.applied_invoice_id.as_deref() == Some(id));
        if !counts {
            continue;
        }
        let amount = parse_amount("amount_minor", &p.amount_minor)?;
        let (confirmed, pending) = sums.entry(p.asset.clone()).or_insert((Amount::ZERO, Amount::ZERO));
        let total = if p.status == PaymentStatus::Confirmed.as_str() {
            confirmed
        } else if p.status == PaymentStatus::Seen.as_str() {
            pending
        } else {
            continue;
        };
        *total = total.checked_add(amount).ok_or_else(|| InvoiceError::Corrupt { column: "amount_minor", value: format!("sum of {} payments", p.asset) })?;
    }
    Ok(sums)
}

/// The kept unchanging parts, by invoice id, with the order they were kept in (oldest first).
#[derive(Default)]
struct Fixed {
    by_id: HashMap<String, Arc<FixedParts>>,
    order: VecDeque<String>,
}

fn fixed() -> std::sync::MutexGuard<'static, Fixed> {
    static FIXED: OnceLock<Mutex<Fixed>> = OnceLock::new();
    FIXED.get_or_init(Mutex::default).lock().unwrap_or_else(PoisonError::into_inner)
}

fn cached(id: &str) -> Option<Arc<FixedParts>> {
    fixed().by_id.get(id).cloned()
}

fn keep(id: &str, parts: Arc<FixedParts>) {
    let mut fixed = fixed();
    if fixed.by_id.insert(id.to_owned(), parts).is_none() {
        fixed.order.push_back(id.to_owned());
    }
    while fixed.order.len() > FIXED_VIEWS_MAX {
        if let Some(oldest) = fixed.order.pop_front() {
            fixed.by_id.remove(&oldest);
        }
    }
}
