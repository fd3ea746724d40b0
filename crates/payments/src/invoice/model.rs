//! Invoices as stored and as shown to merchants. The JSON shape here is the API's and the webhook
//! payload's contract: fields are added, never silently removed.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, Row};

use crate::money::Amount;

use super::error::{InvoiceError, Result};
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
    /// Decimal string in whole asset units.
    pub amount: String,
    /// Integer string in the asset's smallest unit.
    pub amount_minor: String,
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
    pub payment_options: Vec<PaymentOptionView>,
    pub payments: Vec<PaymentView>,
    /// How confirmed payments are shared: creators' basis points and the platform fee, fixed when
    /// the invoice was created.
    pub split: super::split::Splits,
}


pub(crate) fn parse_amount(column: &'static str, text: &str) -> Result<Amount> {
    text.parse().map_err(|_| InvoiceError::Corrupt { column, value: text.to_owned() })
}

fn to_u32(column: &'static str, value: i32) -> Result<u32> {
    u32::try_from(value).map_err(|_| InvoiceError::Corrupt { column, value: value.to_string() })
}

pub(crate) fn row_to_invoice(row: &sqlx::postgres::PgRow) -> Result<InvoiceRow> {
    let status: String = row.try_get("status")?;
    let currency: String = row.try_get("currency")?;
    Ok(InvoiceRow {
        id: row.try_get("id")?,
        merchant_id: row.try_get("merchant_id")?,
        status: status.parse().map_err(|_| InvoiceError::Corrupt { column: "status", value: status.clone() })?,
        currency: currency.parse().map_err(|_| InvoiceError::Corrupt { column: "currency", value: currency.clone() })?,
        amount_minor: parse_amount("amount_minor", &row.try_get::<String, _>("amount_minor")?)?,
        tolerance_bps: to_u32("underpayment_tolerance_bps", row.try_get("underpayment_tolerance_bps")?)?,
        expires_at: row.try_get("expires_at")?,
    })
}

pub(crate) const INVOICE_COLUMNS: &str = "id, merchant_id, status, currency, amount_minor::text AS amount_minor, \
     underpayment_tolerance_bps, order_id, metadata, expires_at, created_at, updated_at, paid_at";

/// Values an invoice's applied payments in its currency at the locked quotes: confirmed and still
/// pending (see [`super::plan::Quote::valuation`]).
pub(crate) async fn valuation(conn: &mut PgConnection, invoice_id: &str, due: Amount) -> Result<(Amount, Amount)> {
    Ok(super::store::load_quote(conn, invoice_id).await?.valuation(due)?)
}

/// Loads the whole view of an invoice. With `merchant_id`, another merchant's invoice is not found.
pub async fn load_view(conn: &mut PgConnection, merchant_id: Option<&str>, id: &str) -> Result<InvoiceView> {
    let row = sqlx::query(&format!(
        "SELECT {INVOICE_COLUMNS} FROM invoices WHERE id = $1 AND ($2::text IS NULL OR merchant_id = $2)"
    ))
    .bind(id)
    .bind(merchant_id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| InvoiceError::NotFound { id: id.to_owned() })?;
    let invoice = row_to_invoice(&row)?;
    let minor_units = invoice.currency.minor_units();

    let options = sqlx::query(
        "SELECT asset, chain, decimals, amount_minor::text AS amount_minor, rate, rate_source, rate_at, address, symbol, rate_sources \
         FROM payment_options WHERE invoice_id = $1 ORDER BY position",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    let mut payment_options = Vec::with_capacity(options.len());
    let mut merchant_name: Option<String> = None;
    for o in &options {
        let decimals = decimals_of(o.try_get("decimals")?)?;
        let amount = parse_amount("amount_minor", &o.try_get::<String, _>("amount_minor")?)?;
        let asset: String = o.try_get("asset")?;
        let address: Option<String> = o.try_get("address")?;
        let uri = match (asset.parse::<crate::money::AssetId>(), address.as_deref()) {
            (Ok(parsed), Some(deposit)) if parsed.chain().is_bip122() && parsed.is_native() => {
                // BIP21, labelled with the merchant's name so the wallet shows who is paid.
                if merchant_name.is_none() {
                    merchant_name = sqlx::query_scalar("SELECT name FROM merchants WHERE id = $1")
                        .bind(&invoice.merchant_id)
                        .fetch_optional(&mut *conn)
                        .await?;
                }
                Some(crate::chain::bitcoin::payment_uri(deposit, amount, merchant_name.as_deref(), Some(&format!("Invoice {}", invoice.id))))
            }
            (Ok(parsed), Some(deposit)) => deposit
                .parse::<alloy_primitives::Address>()
                .ok()
                .and_then(|deposit| crate::chain::evm::payment_uri(&parsed, &deposit, amount)),
            _ => None,
        };
        payment_options.push(PaymentOptionView {
            uri,
            asset,
            chain: o.try_get("chain")?,
            symbol: o.try_get("symbol")?,
            decimals,
            address,
            amount: amount.to_decimal_string(decimals),
            amount_minor: amount.to_string(),
            rate: o.try_get("rate")?,
            rate_source: o.try_get("rate_source")?,
            rate_at: o.try_get("rate_at")?,
            rate_sources: o.try_get("rate_sources")?,
        });
    }

    let payment_rows = sqlx::query(
        "SELECT p.id, p.asset, p.chain, p.tx_ref, p.address, p.amount_minor::text AS amount_minor, \
                p.value_minor::text AS value_minor, p.confirmations, p.confirmations_required, p.status, \
                p.applied_to, p.unapplied_reason, p.seen_at, p.confirmed_at, o.decimals \
         FROM payments p LEFT JOIN payment_options o ON o.invoice_id = p.invoice_id AND o.asset = p.asset \
         WHERE p.invoice_id = $1 ORDER BY p.seen_at, p.id",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    let mut payments = Vec::with_capacity(payment_rows.len());
    for p in &payment_rows {
        let amount = parse_amount("amount_minor", &p.try_get::<String, _>("amount_minor")?)?;
        let value = parse_amount("value_minor", &p.try_get::<String, _>("value_minor")?)?;
        let status: String = p.try_get("status")?;
        let applied_to: String = p.try_get("applied_to")?;
        let decimals: Option<i16> = p.try_get("decimals")?;
        payments.push(PaymentView {
            id: p.try_get("id")?,
            asset: p.try_get("asset")?,
            chain: p.try_get("chain")?,
            tx_ref: p.try_get("tx_ref")?,
            address: p.try_get("address")?,
            amount: match decimals {
                Some(d) => amount.to_decimal_string(decimals_of(d)?),
                None => amount.to_string(),
            },
            amount_minor: amount.to_string(),
            value_minor: value.to_string(),
            confirmations: to_u32("confirmations", p.try_get("confirmations")?)?,
            confirmations_required: to_u32("confirmations_required", p.try_get("confirmations_required")?)?,
            status,
            applied_to,
            unapplied_reason: p.try_get("unapplied_reason")?,
            seen_at: p.try_get("seen_at")?,
            confirmed_at: p.try_get("confirmed_at")?,
        });
    }

    let (confirmed, _pending) = valuation(conn, &invoice.id, invoice.amount_minor).await?;
    let split = super::split::load_for_invoice(&mut *conn, &invoice.id).await?;
    Ok(InvoiceView {
        id: invoice.id.clone(),
        object: "invoice",
        merchant_id: invoice.merchant_id.clone(),
        status: invoice.status,
        currency: invoice.currency.code().to_owned(),
        amount: invoice.amount_minor.to_decimal_string(minor_units),
        amount_minor: invoice.amount_minor.to_string(),
        amount_paid: confirmed.to_decimal_string(minor_units),
        amount_remaining: invoice.amount_minor.saturating_sub(confirmed).to_decimal_string(minor_units),
        underpayment_tolerance_bps: invoice.tolerance_bps,
        order_id: row.try_get("order_id")?,
        metadata: row.try_get("metadata")?,
        expires_at: invoice.expires_at,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        paid_at: row.try_get("paid_at")?,
        payment_options,
        payments,
        split,
    })
}

fn decimals_of(value: i16) -> Result<u8> {
    u8::try_from(value).map_err(|_| InvoiceError::Corrupt { column: "decimals", value: value.to_string() })
}
