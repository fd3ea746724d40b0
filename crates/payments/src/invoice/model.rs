//! Invoices as stored and as shown to merchants. The JSON shape here is the API's and the webhook
//! payload's contract: fields are added, never silently removed.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgConnection};

use crate::money::Amount;

use super::error::{InvoiceError, Result};
use super::plan::{AppliedTo, PaymentStatus};
use super::status::InvoiceStatus;
pub use payrail_core::payment::InvoiceRow;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PaymentOptionView {
    pub asset: String,
    pub chain: String,
    pub symbol: String,
    pub decimals: u8,
    /// Null until a rail derives the deposit address.
    pub address: Option<String>,
    /// A payment request a wallet understands (EIP-681 on EVM chains, BIP21 on Bitcoin); null without an address.
    pub uri: Option<String>,
    /// Decimal string in whole asset units, with the decimals a payer types (`25.00`, `0.008334`):
    /// the exact conversion rounded up, by at most 0.1 %.
    pub amount: String,
    /// `amount` as an integer string in the asset's smallest unit: what the invoice is valued at.
    pub amount_minor: String,
    /// The exact conversion at the locked rate, before rounding for the payer.
    pub amount_exact_minor: String,
    /// The decimals `amount` is rounded to.
    pub display_decimals: u8,
    /// Price of one whole asset unit in the invoice currency, locked at creation.
    pub rate: String,
    pub rate_source: String,
    pub rate_at: DateTime<Utc>,
    /// Each source's rate and time behind the locked rate.
    #[schema(value_type = Vec<Object>)]
    pub rate_sources: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PaymentView {
    pub id: String,
    /// The invoice it was sent for.
    pub invoice_id: String,
    /// The merchant's other invoice it was applied to, which it counts toward; null when it counts
    /// toward (or is held for) its own.
    pub applied_invoice_id: Option<String>,
    pub asset: String,
    pub chain: String,
    pub tx_ref: String,
    pub address: Option<String>,
    pub amount: String,
    pub amount_minor: String,
    /// Worth in the invoice currency at the locked quote (minor units); zero when unapplied.
    pub value_minor: String,
    pub confirmations: u32,
    pub confirmations_required: u32,
    pub status: String,
    pub applied_to: String,
    /// Why it was held for review (`late`, `invoice_expired`, `asset_not_quoted`, …); kept after the
    /// merchant applied it.
    pub unapplied_reason: Option<String>,
    pub seen_at: DateTime<Utc>,
    pub confirmed_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct InvoiceView {
    pub id: String,
    #[schema(value_type = String, example = "invoice")]
    pub object: &'static str,
    pub merchant_id: String,
    pub status: InvoiceStatus,
    pub currency: String,
    pub amount: String,
    pub amount_minor: String,
    /// Confirmed value received so far, in the invoice currency.
    pub amount_paid: String,
    /// What is still missing, in the invoice currency (zero once paid).
    pub amount_remaining: String,
    pub underpayment_tolerance_bps: u32,
    pub order_id: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub paid_at: Option<DateTime<Utc>>,
    /// When the merchant accepted the invoice as paid although less (or another asset, or late)
    /// arrived (`POST /v1/invoices/{id}/settle`); null otherwise.
    pub settled_at: Option<DateTime<Utc>>,
    pub payment_options: Vec<PaymentOptionView>,
    pub payments: Vec<PaymentView>,
    /// How confirmed payments are shared: creators' basis points and the platform fee, fixed when
    /// the invoice was created.
    pub split: super::split::Splits,
    /// The merchant's customer paying, `cus_…`.
    pub customer: Option<String>,
    /// The promo code applied (lower case) and what it took off, in the invoice currency: the
    /// invoice's `amount` is what is left.
    pub promo_code: Option<String>,
    pub discount: Option<String>,
}


pub(crate) fn parse_amount(column: &'static str, text: &str) -> Result<Amount> {
    text.parse().map_err(|_| InvoiceError::Corrupt { column, value: text.to_owned() })
}

fn to_u32(column: &'static str, value: i32) -> Result<u32> {
    u32::try_from(value).map_err(|_| InvoiceError::Corrupt { column, value: value.to_string() })
}

/// An `invoices` row as [`INVOICE_COLUMNS`] selects it.
#[derive(sqlx::FromRow)]
struct InvoiceRecord {
    id: String,
    merchant_id: String,
    status: String,
    currency: String,
    amount_minor: String,
    underpayment_tolerance_bps: i32,
    order_id: Option<String>,
    metadata: serde_json::Value,
    expires_at: DateTime<Utc>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    paid_at: Option<DateTime<Utc>>,
    settled_at: Option<DateTime<Utc>>,
}

impl InvoiceRecord {
    fn invoice(&self) -> Result<InvoiceRow> {
        let corrupt = |column, value: &str| InvoiceError::Corrupt { column, value: value.to_owned() };
        Ok(InvoiceRow {
            id: self.id.clone(),
            merchant_id: self.merchant_id.clone(),
            status: self.status.parse().map_err(|_| corrupt("status", &self.status))?,
            currency: self.currency.parse().map_err(|_| corrupt("currency", &self.currency))?,
            amount_minor: parse_amount("amount_minor", &self.amount_minor)?,
            tolerance_bps: to_u32("underpayment_tolerance_bps", self.underpayment_tolerance_bps)?,
            expires_at: self.expires_at,
        })
    }
}

pub(crate) fn row_to_invoice(row: &sqlx::postgres::PgRow) -> Result<InvoiceRow> {
    InvoiceRecord::from_row(row)?.invoice()
}

/// A `payment_options` row as [`load_view`] selects it (as JSON).
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

/// A `payments` row, with its option's decimals, as [`load_view`] selects it (as JSON) and the
/// payment writes return it.
#[derive(sqlx::FromRow, serde::Deserialize)]
pub(crate) struct PaymentRecord {
    id: String,
    invoice_id: String,
    applied_invoice_id: Option<String>,
    asset: String,
    chain: String,
    tx_ref: String,
    address: Option<String>,
    amount_minor: String,
    value_minor: String,
    confirmations: i32,
    confirmations_required: i32,
    status: String,
    applied_to: String,
    unapplied_reason: Option<String>,
    seen_at: DateTime<Utc>,
    confirmed_at: Option<DateTime<Utc>>,
    decimals: Option<i16>,
    display_decimals: Option<i16>,
}

pub(crate) const INVOICE_COLUMNS: &str = "id, merchant_id, status, currency, amount_minor::text AS amount_minor, \
     underpayment_tolerance_bps, order_id, metadata, expires_at, created_at, updated_at, paid_at, settled_at";

/// The columns of [`PaymentRecord`] over payments rows `p` joined to their options `o`.
macro_rules! payment_view_columns {
    () => {
        "p.id, p.invoice_id, p.applied_invoice_id, p.asset, p.chain, p.tx_ref, \
         p.address, p.amount_minor::text AS amount_minor, p.value_minor::text AS value_minor, p.confirmations, \
         p.confirmations_required, p.status, p.applied_to, p.unapplied_reason, p.seen_at, p.confirmed_at, \
         o.decimals, o.display_decimals"
    };
}

/// The option a payment `p` was made for: its decimals show the amount.
macro_rules! payment_option_join {
    () => {
        "LEFT JOIN payment_options o ON o.invoice_id = p.invoice_id AND o.asset = p.asset"
    };
}

/// The columns of [`PaymentRecord`] over a relation `p` of payments rows: a payment with its
/// option's decimals. `p` is the table, or the rows a write returns (`WITH p AS (… RETURNING *)`).
pub(crate) const PAYMENT_VIEW_OF_P: &str = concat!("SELECT ", payment_view_columns!(), " FROM p ", payment_option_join!());

impl PaymentRecord {
    pub(crate) fn view(self) -> Result<PaymentView> {
        let amount = parse_amount("amount_minor", &self.amount_minor)?;
        let value = parse_amount("value_minor", &self.value_minor)?;
        let shown = match self.decimals {
            Some(d) => {
                let decimals = decimals_of(d)?;
                let display = self.display_decimals.map(decimals_of).transpose()?.unwrap_or(decimals);
                crate::money::display::display_string(amount, decimals, display)
            }
            None => amount.to_string(),
        };
        Ok(PaymentView {
            id: self.id,
            invoice_id: self.invoice_id,
            applied_invoice_id: self.applied_invoice_id,
            asset: self.asset,
            chain: self.chain,
            tx_ref: self.tx_ref,
            address: self.address,
            amount: shown,
            amount_minor: amount.to_string(),
            value_minor: value.to_string(),
            confirmations: to_u32("confirmations", self.confirmations)?,
            confirmations_required: to_u32("confirmations_required", self.confirmations_required)?,
            status: self.status,
            applied_to: self.applied_to,
            unapplied_reason: self.unapplied_reason,
            seen_at: self.seen_at,
            confirmed_at: self.confirmed_at,
        })
    }
}

/// One payment as the API and its events show it.
pub async fn load_payment_view(conn: &mut PgConnection, payment_id: &str) -> Result<Option<PaymentView>> {
    let record: Option<PaymentRecord> = sqlx::query_as(&format!("WITH p AS (SELECT * FROM payments WHERE id = $1) {PAYMENT_VIEW_OF_P}"))
        .bind(payment_id)
        .fetch_optional(conn)
        .await?;
    record.map(PaymentRecord::view).transpose()
}

/// Loads the whole view of an invoice. With `merchant_id`, another merchant's invoice is not found.
pub async fn load_view(conn: &mut PgConnection, merchant_id: Option<&str>, id: &str) -> Result<InvoiceView> {
    Ok(load_named_view(conn, merchant_id, id).await?.0)
}

/// [`load_view`], with the merchant's name (what the checkout shows as the payee).
pub async fn load_named_view(conn: &mut PgConnection, merchant_id: Option<&str>, id: &str) -> Result<(InvoiceView, String)> {
    let record: Option<ViewRecord> = sqlx::query_as(&view_query("id = $1 AND ($2::text IS NULL OR merchant_id = $2)"))
        .bind(id)
        .bind(merchant_id)
        .fetch_optional(&mut *conn)
        .await?;
    record.ok_or_else(|| InvoiceError::NotFound { id: id.to_owned() })?.view()
}

/// [`load_named_view`] as of `now`: an open invoice past its expiry is expired first (what the
/// expiry job would do a moment later), so no reader sees it open late. Only such an invoice costs
/// more than the one query.
pub async fn load_current_view(pool: &sqlx::PgPool, merchant_id: Option<&str>, id: &str, now: DateTime<Utc>) -> Result<(InvoiceView, String)> {
    let loaded = {
        let mut conn = pool.acquire().await?;
        load_named_view(&mut conn, merchant_id, id).await?
    };
    if loaded.0.status != InvoiceStatus::Open || loaded.0.expires_at > now {
        return Ok(loaded);
    }
    super::expire::refresh(pool, id, now).await?;
    let mut conn = pool.acquire().await?;
    load_named_view(&mut conn, merchant_id, id).await
}

/// The views of the merchant's invoices `ids`, in that order, in one query (a listed page).
pub(crate) async fn load_views(conn: &mut PgConnection, merchant_id: &str, ids: &[String]) -> Result<Vec<InvoiceView>> {
    let records: Vec<ViewRecord> = sqlx::query_as(&format!(
        "{} ORDER BY array_position($1::text[], v.id)",
        view_query("id = ANY($1) AND merchant_id = $2")
    ))
    .bind(ids)
    .bind(merchant_id)
    .fetch_all(&mut *conn)
    .await?;
    records.into_iter().map(|r| Ok(r.view()?.0)).collect()
}

/// One statement reading the invoices `filter` selects (over `invoices` columns) with everything
/// their views show — options, payments, the valuation's sums, splits, promo, merchant name — as
/// JSON aggregates, so a view costs one round trip however many payments it has.
fn view_query(filter: &str) -> String {
    let confirmed = PaymentStatus::Confirmed.as_str();
    let seen = PaymentStatus::Seen.as_str();
    let to_invoice = AppliedTo::Invoice.as_str();
    format!(
        "SELECT v.*, \
           (SELECT m.name FROM merchants m WHERE m.id = v.merchant_id) AS merchant_name, \
           (SELECT pc.code FROM promo_codes pc WHERE pc.id = v.promo_id) AS promo_code, \
           (SELECT coalesce(json_agg(json_build_object( \
                'asset', o.asset, 'chain', o.chain, 'decimals', o.decimals, 'amount_minor', o.amount_minor::text, \
                'rate', o.rate, 'rate_source', o.rate_source, 'rate_at', o.rate_at, 'address', o.address, \
                'symbol', o.symbol, 'rate_sources', o.rate_sources, 'amount_exact_minor', o.amount_exact_minor::text, \
                'display_decimals', o.display_decimals) ORDER BY o.position), '[]'::json) \
              FROM payment_options o WHERE o.invoice_id = v.id) AS options, \
           (SELECT coalesce(json_agg(pv ORDER BY pv.seen_at, pv.id), '[]'::json) FROM ( \
                SELECT {columns} FROM payments p {join} \
                 WHERE p.invoice_id = v.id OR p.applied_invoice_id = v.id) pv) AS payments, \
           (SELECT coalesce(json_agg(json_build_object('asset', q.asset, 'quoted', q.quoted, 'confirmed', q.confirmed, \
                                                       'pending', q.pending)), '[]'::json) FROM ( \
                SELECT o.asset, o.amount_minor::text AS quoted, \
                       coalesce(sum(p.amount_minor) FILTER (WHERE p.status = '{confirmed}'), 0)::text AS confirmed, \
                       coalesce(sum(p.amount_minor) FILTER (WHERE p.status = '{seen}'), 0)::text AS pending \
                  FROM payment_options o \
                  LEFT JOIN payments p ON (p.invoice_id = o.invoice_id AND p.applied_invoice_id IS NULL \
                                           OR p.applied_invoice_id = o.invoice_id) \
                                          AND p.asset = o.asset AND p.applied_to = '{to_invoice}' \
                 WHERE o.invoice_id = v.id GROUP BY o.asset, o.amount_minor) q) AS quote, \
           (SELECT coalesce(json_agg(json_build_object('creator', s.creator_id, 'bps', s.bps) ORDER BY s.position), '[]'::json) \
              FROM invoice_splits s WHERE s.invoice_id = v.id) AS splits \
         FROM (SELECT {INVOICE_COLUMNS}, customer_id, promo_id, discount_minor::text AS discount_minor, platform_fee_bps \
                 FROM invoices WHERE {filter}) v",
        columns = payment_view_columns!(),
        join = payment_option_join!(),
    )
}

/// A row of [`view_query`].
#[derive(sqlx::FromRow)]
struct ViewRecord {
    #[sqlx(flatten)]
    invoice: InvoiceRecord,
    customer_id: Option<String>,
    discount_minor: String,
    platform_fee_bps: i32,
    merchant_name: String,
    promo_code: Option<String>,
    options: sqlx::types::Json<Vec<OptionRecord>>,
    payments: sqlx::types::Json<Vec<PaymentRecord>>,
    quote: sqlx::types::Json<Vec<QuotedRecord>>,
    splits: sqlx::types::Json<Vec<SplitRecord>>,
}

/// One asset's quoted amount and the sums paid in it, as [`view_query`] reads them.
#[derive(serde::Deserialize)]
struct QuotedRecord {
    asset: String,
    quoted: String,
    confirmed: String,
    pending: String,
}

/// One creator's share, as [`view_query`] reads it.
#[derive(serde::Deserialize)]
struct SplitRecord {
    creator: String,
    bps: i32,
}

impl ViewRecord {
    fn view(self) -> Result<(InvoiceView, String)> {
        let record = self.invoice;
        let invoice = record.invoice()?;
        let minor_units = invoice.currency.minor_units();
        let merchant_name = self.merchant_name;
        let mut payment_options = Vec::with_capacity(self.options.0.len());
        for o in self.options.0 {
            let decimals = decimals_of(o.decimals)?;
            let amount = parse_amount("amount_minor", &o.amount_minor)?;
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
            payment_options.push(PaymentOptionView {
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
        let payments = self.payments.0.into_iter().map(PaymentRecord::view).collect::<Result<Vec<_>>>()?;
        let mut assets = Vec::with_capacity(self.quote.0.len());
        for q in self.quote.0 {
            assets.push(super::plan::QuotedAsset {
                asset: q.asset,
                quoted: parse_amount("amount_minor", &q.quoted)?,
                confirmed: parse_amount("amount_minor", &q.confirmed)?,
                pending: parse_amount("amount_minor", &q.pending)?,
            });
        }
        let (confirmed, _pending) = super::plan::Quote { assets, splits: None }.valuation(invoice.amount_minor)?;
        let mut splits = Vec::with_capacity(self.splits.0.len());
        for s in self.splits.0 {
            splits.push(super::split::CreatorShare { creator: s.creator, bps: super::split::bps_of("invoice_splits.bps", s.bps)? });
        }
        let split = super::split::Splits { splits, platform_fee_bps: super::split::bps_of("invoices.platform_fee_bps", self.platform_fee_bps)? };
        let discount = self
            .promo_code
            .as_ref()
            .map(|_| parse_amount("discount_minor", &self.discount_minor).map(|d| d.to_decimal_string(minor_units)))
            .transpose()?;
        let view = InvoiceView {
            customer: self.customer_id,
            promo_code: self.promo_code,
            discount,
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
            payment_options,
            payments,
            split,
        };
        Ok((view, merchant_name))
    }
}

fn decimals_of(value: i16) -> Result<u8> {
    u8::try_from(value).map_err(|_| InvoiceError::Corrupt { column: "decimals", value: value.to_string() })
}
