//! Invoices as stored and as shown to merchants. The JSON shape here is the API's and the webhook
//! payload's contract: fields are added, never silently removed.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgConnection};

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

/// An invoice's payment options: a list to read, serialized once — they never change, and polled
/// views show them again and again.
#[derive(Debug, Clone)]
pub struct PaymentOptions {
    list: std::sync::Arc<[PaymentOptionView]>,
    json: std::sync::Arc<serde_json::value::RawValue>,
}

impl PaymentOptions {
    pub fn new(list: Vec<PaymentOptionView>) -> Result<Self> {
        let json = serde_json::value::to_raw_value(&list)
            .map_err(|e| InvoiceError::Corrupt { column: "payment_options", value: e.to_string() })?;
        Ok(Self { list: list.into(), json: json.into() })
    }
}

impl std::ops::Deref for PaymentOptions {
    type Target = [PaymentOptionView];

    fn deref(&self) -> &Self::Target {
        &self.list
    }
}

impl<'a> IntoIterator for &'a PaymentOptions {
    type Item = &'a PaymentOptionView;
    type IntoIter = std::slice::Iter<'a, PaymentOptionView>;

    fn into_iter(self) -> Self::IntoIter {
        self.list.iter()
    }
}

impl Serialize for PaymentOptions {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        self.json.serialize(serializer)
    }
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
    #[schema(value_type = Vec<PaymentOptionView>)]
    pub payment_options: PaymentOptions,
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
    /// Where the checkout page sends the payer back once the invoice is paid or has expired.
    pub redirect_url: Option<String>,
    pub buyer_email: Option<String>,
    /// The checkout page's language; null when the payer's browser chooses.
    pub locale: Option<String>,
    /// How long payments wait before they count: `fast`, `medium` or `slow`.
    pub speed_policy: payrail_core::payment::SpeedPolicy,
}


pub(crate) fn parse_amount(column: &'static str, text: &str) -> Result<Amount> {
    text.parse().map_err(|_| InvoiceError::Corrupt { column, value: text.to_owned() })
}

fn to_u32(column: &'static str, value: i32) -> Result<u32> {
    u32::try_from(value).map_err(|_| InvoiceError::Corrupt { column, value: value.to_string() })
}

/// An `invoices` row as [`INVOICE_COLUMNS`] selects it.
#[derive(sqlx::FromRow)]
pub(crate) struct InvoiceRecord {
    pub(crate) id: String,
    pub(crate) merchant_id: String,
    status: String,
    currency: String,
    amount_minor: String,
    underpayment_tolerance_bps: i32,
    pub(crate) order_id: Option<String>,
    pub(crate) metadata: serde_json::Value,
    expires_at: DateTime<Utc>,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) updated_at: DateTime<Utc>,
    pub(crate) paid_at: Option<DateTime<Utc>>,
    pub(crate) settled_at: Option<DateTime<Utc>>,
}

impl InvoiceRecord {
    pub(crate) fn invoice(&self) -> Result<InvoiceRow> {
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
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

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

pub(crate) fn decimals_of(value: i16) -> Result<u8> {
    u8::try_from(value).map_err(|_| InvoiceError::Corrupt { column: "decimals", value: value.to_string() })
}
