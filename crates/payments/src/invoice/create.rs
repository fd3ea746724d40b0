//! Creating an invoice: validate the request, quote every accepted asset at a locked rate, store it.
//!
//! The asset amount a payer owes rounds up to the asset's smallest unit, so the merchant is never
//! short. A retry with the same `Idempotency-Key` and the same body returns the first invoice; the
//! same key with another body is refused.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::ids::new_id;
use crate::money::{fiat_to_asset, Amount, AmountError, AssetId, Fiat, Rounding};
use crate::rates::RateSource;

use payrail_core::payment::SpeedPolicy;

use super::catalog::{AssetCatalog, DepositScheme};
use super::error::{InvoiceError, Result};
use super::model::InvoiceView;
use super::view::load_view;
use super::split::{check_creators, matching_rule, store_on_invoice, Splits};

/// Most assets one invoice may accept.
pub const ACCEPTED_ASSETS_MAX: usize = 64;
/// Longest `order_id`.
pub const ORDER_ID_LEN_MAX: usize = 200;
/// Largest `metadata` object, serialized.
pub const METADATA_BYTES_MAX: usize = 16 * 1024;
/// Shortest lifetime an invoice may be given.
pub const EXPIRES_IN_S_MIN: u64 = 60;

/// Limits and defaults from the configuration.
#[derive(Debug, Clone)]
pub struct InvoicePolicy {
    pub expires_in_s_default: u64,
    pub expires_in_s_max: u64,
    /// Largest invoice amount, in whole units of its currency.
    pub amount_max_major: Amount,
    pub underpayment_tolerance_bps: u32,
}

/// The body of `POST /v1/invoices`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInvoice {
    /// Decimal string in the currency's major unit: `"25.00"`.
    pub amount: String,
    /// ISO 4217 code.
    pub currency: String,
    /// CAIP-19 ids; every configured asset with a rate when absent.
    #[serde(default)]
    pub accepted: Option<Vec<String>>,
    /// Seconds until the quotes expire.
    #[serde(default)]
    pub expires_in: Option<u64>,
    #[serde(default)]
    pub order_id: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    /// The merchant's customer paying, `cus_…`.
    #[serde(default)]
    pub customer: Option<String>,
    /// A promo code that applies to invoices (any case): the amount is what is left after it.
    #[serde(default)]
    pub promo_code: Option<String>,
    /// Where the checkout page sends the payer back once the invoice is paid or has expired: an
    /// `https` URL (`http` only to a loopback host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_url: Option<String>,
    /// The payer's e-mail address: shown on the page and given to the card processor for its
    /// receipt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buyer_email: Option<String>,
    /// The checkout page's language (`en`, `es`, `fr`, `de`, `pt`, `zh-CN`, `ja`; a regional tag
    /// such as `pt-BR` is accepted); when absent, the payer's browser chooses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    /// The part of the amount the invoice may be short and still count as paid, in basis points;
    /// the configured `[invoices] underpayment_tolerance_bps` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub underpayment_tolerance_bps: Option<u32>,
    /// How long payments wait before they count: `fast`, `medium` (the default) or `slow`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed_policy: Option<String>,
}

/// Longest `redirect_url`.
pub const REDIRECT_URL_LEN_MAX: usize = 2_000;
/// Longest `buyer_email` (RFC 5321's path limit).
pub const BUYER_EMAIL_LEN_MAX: usize = 254;
/// Largest per-invoice `underpayment_tolerance_bps`: a tenth of the amount.
pub const UNDERPAYMENT_TOLERANCE_BPS_MAX: u32 = 1_000;

/// What the checkout page is asked to do for one invoice, checked and normalized.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct CheckoutOptions {
    redirect_url: Option<String>,
    buyer_email: Option<String>,
    locale: Option<crate::lang::Lang>,
    tolerance_bps: u32,
    speed: SpeedPolicy,
}

fn checkout_options(request: &CreateInvoice, policy: &InvoicePolicy) -> Result<CheckoutOptions> {
    let redirect_url = request
        .redirect_url
        .as_deref()
        .map(|raw| {
            if raw.len() > REDIRECT_URL_LEN_MAX {
                return Err(invalid("redirect_url", format!("must be at most {REDIRECT_URL_LEN_MAX} bytes")));
            }
            // The rules of a webhook endpoint's URL: https (http only to a loopback host), no
            // credentials, no address inside the operator's network.
            crate::webhook::endpoint::validate_url(raw, true)
                .map_err(|e| match e {
                    crate::webhook::error::WebhookError::Invalid { reason, .. } => invalid("redirect_url", reason),
                    other => invalid("redirect_url", other.to_string()),
                })
                .map(String::from)
        })
        .transpose()?;
    let buyer_email = request.buyer_email.as_deref().map(check_email).transpose()?;
    let locale = request
        .locale
        .as_deref()
        .map(|tag| tag.parse::<crate::lang::Lang>().map_err(|e| invalid("locale", e.to_string())))
        .transpose()?;
    let tolerance_bps = match request.underpayment_tolerance_bps {
        Some(bps) if bps > UNDERPAYMENT_TOLERANCE_BPS_MAX => {
            return Err(invalid("underpayment_tolerance_bps", format!("must be 0..={UNDERPAYMENT_TOLERANCE_BPS_MAX}")))
        }
        Some(bps) => bps,
        None => policy.underpayment_tolerance_bps.min(10_000),
    };
    let speed = request
        .speed_policy
        .as_deref()
        .map(|s| s.parse::<SpeedPolicy>().map_err(|e| invalid("speed_policy", e.to_string())))
        .transpose()?
        .unwrap_or_default();
    Ok(CheckoutOptions { redirect_url, buyer_email, locale, tolerance_bps, speed })
}

/// An address a mail server would take: `local@domain`, the domain with a dot and no empty label,
/// no spaces or control characters. Stored as given, the domain lower-cased.
fn check_email(raw: &str) -> Result<String> {
    let refuse = || invalid("buyer_email", "must be an e-mail address such as payer@example.com");
    if raw.len() > BUYER_EMAIL_LEN_MAX {
        return Err(invalid("buyer_email", format!("must be at most {BUYER_EMAIL_LEN_MAX} bytes")));
    }
    if raw.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | '"' | ',' | ';')) {
        return Err(refuse());
    }
    let (local, domain) = raw.rsplit_once('@').ok_or_else(refuse)?;
    let labels_ok = domain.split('.').all(|label| !label.is_empty() && !label.starts_with('-') && !label.ends_with('-'));
    if local.is_empty() || local.len() > 64 || local.contains('@') || !domain.contains('.') || !labels_ok {
        return Err(refuse());
    }
    Ok(format!("{local}@{}", domain.to_lowercase()))
}

struct PricedOption {
    asset: AssetId,
    deposit: Option<super::catalog::DepositScheme>,
    symbol: String,
    decimals: u8,
    /// The exact conversion rounded up to what a payer types: what the invoice asks and is valued at.
    amount: Amount,
    /// The exact conversion, rounded up to the asset's smallest unit.
    exact: Amount,
    /// The decimals `amount` was rounded to.
    shown: u8,
    rate: String,
    source: String,
    sources: serde_json::Value,
    at: DateTime<Utc>,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> InvoiceError {
    InvoiceError::Invalid { field, reason: reason.into() }
}

/// Checks the request and prices it. Pure apart from reading rates.
fn quote(
    request: &CreateInvoice,
    policy: &InvoicePolicy,
    catalog: &AssetCatalog,
    rates: &dyn RateSource,
    now: DateTime<Utc>,
) -> Result<(Fiat, Amount, Vec<PricedOption>, Duration)> {
    let currency: Fiat =
        request.currency.parse().map_err(|_| InvoiceError::UnsupportedCurrency { code: request.currency.clone() })?;
    let amount = Amount::parse_decimal(&request.amount, currency.minor_units()).map_err(|e| match e {
        AmountError::TooPrecise { .. } => {
            invalid("amount", format!("{} allows {} decimal places", currency.code(), currency.minor_units()))
        }
        _ => invalid("amount", "must be a positive decimal string such as \"25.00\""),
    })?;
    if amount.is_zero() {
        return Err(invalid("amount", "must be greater than zero"));
    }
    let amount_max = Amount::parse_decimal(&policy.amount_max_major.to_string(), currency.minor_units())
        .map_err(|_| invalid("amount", "exceeds the maximum"))?;
    if amount > amount_max {
        return Err(invalid("amount", format!("exceeds the maximum of {} {}", policy.amount_max_major, currency.code())));
    }
    let expires_in = request.expires_in.unwrap_or(policy.expires_in_s_default);
    if !(EXPIRES_IN_S_MIN..=policy.expires_in_s_max).contains(&expires_in) {
        return Err(invalid(
            "expires_in",
            format!("must be between {EXPIRES_IN_S_MIN} and {} seconds", policy.expires_in_s_max),
        ));
    }
    if let Some(order_id) = &request.order_id {
        if order_id.is_empty() || order_id.len() > ORDER_ID_LEN_MAX || order_id.chars().any(char::is_control) {
            return Err(invalid("order_id", format!("must be 1..={ORDER_ID_LEN_MAX} bytes without control characters")));
        }
    }
    if let Some(metadata) = &request.metadata {
        if !metadata.is_object() {
            return Err(invalid("metadata", "must be a JSON object"));
        }
        let serialized = metadata.to_string();
        if serialized.len() > METADATA_BYTES_MAX {
            return Err(invalid("metadata", format!("must be at most {METADATA_BYTES_MAX} bytes")));
        }
        // PostgreSQL's jsonb cannot hold the NUL character.
        if serialized.contains("\\u0000") {
            return Err(invalid("metadata", "must not contain the NUL character (\\u0000)"));
        }
    }

    let mut options = Vec::new();
    match &request.accepted {
        Some(list) => {
            if list.is_empty() || list.len() > ACCEPTED_ASSETS_MAX {
                return Err(invalid("accepted", format!("must list 1..={ACCEPTED_ASSETS_MAX} assets")));
            }
            for text in list {
                let asset: AssetId = text.parse().map_err(|e| invalid("accepted", format!("{text:?}: {e}")))?;
                if options.iter().any(|o: &PricedOption| o.asset == asset) {
                    return Err(invalid("accepted", format!("{asset} is listed twice")));
                }
                let entry =
                    catalog.get(&asset).ok_or_else(|| InvoiceError::UnsupportedAsset { asset: asset.to_string() })?;
                let q = rates.quote(&entry.symbol, currency, now).map_err(|e| InvoiceError::RateUnavailable {
                    asset: asset.to_string(),
                    reason: e.to_string(),
                })?;
                options.push(priced(entry, amount, currency, q)?);
            }
        }
        None => {
            // Every asset that can be priced now; one dead rate does not stop the others.
            for entry in catalog.all() {
                if let Ok(q) = rates.quote(&entry.symbol, currency, now) {
                    options.push(priced(entry, amount, currency, q)?);
                }
            }
            if options.is_empty() {
                return Err(InvoiceError::RateUnavailable {
                    asset: "*".to_owned(),
                    reason: format!("no asset can be priced in {}", currency.code()),
                });
            }
        }
    }
    let lifetime = Duration::seconds(i64::try_from(expires_in).map_err(|_| invalid("expires_in", "too large"))?);
    Ok((currency, amount, options, lifetime))
}

fn priced(entry: &super::catalog::CatalogAsset, amount: Amount, currency: Fiat, q: crate::rates::Quote) -> Result<PricedOption> {
    let exact = fiat_to_asset(amount, currency, &q.rate, entry.decimals, Rounding::Up)
        .map_err(|e| invalid("amount", format!("cannot be priced in {}: {e}", entry.asset)))?;
    let (due, shown) = crate::money::display::round_for_payer(exact, entry.decimals, entry.display_decimals);
    Ok(PricedOption {
        asset: entry.asset.clone(),
        deposit: entry.deposit,
        symbol: entry.symbol.clone(),
        decimals: entry.decimals,
        amount: due,
        exact,
        shown,
        rate: q.rate.to_string(),
        sources: q.sources_json(),
        source: q.source,
        at: q.at,
    })
}

fn fingerprint(request: &CreateInvoice, splits: Option<&Splits>) -> Vec<u8> {
    // serde_json writes struct fields in declaration order and object keys sorted, so equal
    // requests serialize equally. A request without splits hashes as it always has.
    let mut canonical = serde_json::to_vec(request).unwrap_or_default();
    if let Some(splits) = splits {
        canonical.extend_from_slice(&serde_json::to_vec(splits).unwrap_or_default());
    }
    Sha256::digest(&canonical).to_vec()
}

/// Creates an invoice for `merchant_id`. Returns the invoice and whether this call created it.
/// The revenue split is the merchant's matching rule, if any (see [`create_invoice_with_splits`]).
#[allow(clippy::too_many_arguments)]
pub async fn create_invoice(
    pool: &PgPool,
    catalog: &AssetCatalog,
    rates: &dyn RateSource,
    policy: &InvoicePolicy,
    merchant_id: &str,
    request: &CreateInvoice,
    idempotency_key: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(InvoiceView, bool)> {
    create_invoice_with_splits(pool, catalog, rates, policy, merchant_id, request, None, idempotency_key, now).await
}

/// Creates an invoice as [`create_invoice`] does, with the revenue split `splits` when given;
/// otherwise the merchant's rule for the longest matching `order_id` prefix, else its default rule,
/// else none, is copied onto the invoice, so a later rule edit never changes this invoice.
#[allow(clippy::too_many_arguments)]
pub async fn create_invoice_with_splits(
    pool: &PgPool,
    catalog: &AssetCatalog,
    rates: &dyn RateSource,
    policy: &InvoicePolicy,
    merchant_id: &str,
    request: &CreateInvoice,
    splits: Option<&Splits>,
    idempotency_key: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(InvoiceView, bool)> {
    if let Some(splits) = splits {
        splits.validate()?;
    }
    if let Some(key) = idempotency_key {
        if key.is_empty() || key.len() > 256 {
            return Err(invalid("Idempotency-Key", "must be 1..=256 bytes"));
        }
    }
    let request_fingerprint = fingerprint(request, splits);
    if let Some(key) = idempotency_key {
        if let Some(existing) = find_by_idempotency_key(pool, merchant_id, key, &request_fingerprint).await? {
            return Ok((existing, false));
        }
    }
    if let Some(customer) = &request.customer {
        let known: Option<String> = sqlx::query_scalar("SELECT id FROM customers WHERE id = $1 AND merchant_id = $2").bind(customer).bind(merchant_id).fetch_optional(pool).await?;
        if known.is_none() {
            return Err(invalid("customer", format!("{customer} is not a customer of this merchant")));
        }
    }
    // A promo code prices the invoice at what is left after it; it is redeemed with the insert.
    let (discounted, promo) = match &request.promo_code {
        None => (None, None),
        Some(code) => {
            let (currency, amount, ..) = quote(&CreateInvoice { promo_code: None, ..request.clone() }, policy, catalog, rates, now)?;
            let promo = payrail_credits::promo::find_usable(pool, merchant_id, code, "invoices", amount, currency, now).await?;
            let (left, discount, _) = payrail_credits::promo::apply(&promo, amount, Amount::ZERO)?;
            let priced = CreateInvoice { amount: left.to_decimal_string(currency.minor_units()), ..request.clone() };
            (Some(priced), Some((promo, discount)))
        }
    };
    let (currency, amount, options, lifetime) = quote(discounted.as_ref().unwrap_or(request), policy, catalog, rates, now)?;
    let checkout = checkout_options(request, policy)?;
    let id = new_id("inv");
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO invoices (id, merchant_id, status, currency, amount_minor, underpayment_tolerance_bps, order_id, \
                               metadata, idempotency_key, request_fingerprint, expires_at, created_at, updated_at, \
                               redirect_url, buyer_email, locale, speed_policy) \
         VALUES ($1, $2, 'open', $3, $4::numeric, $5, $6, $7, $8, $9, $10, $11, $11, $12, $13, $14, $15) \
         ON CONFLICT (merchant_id, idempotency_key) DO NOTHING",
    )
    .bind(&id)
    .bind(merchant_id)
    .bind(currency.code())
    .bind(amount.to_string())
    .bind(i32::try_from(checkout.tolerance_bps).unwrap_or(0))
    .bind(&request.order_id)
    .bind(request.metadata.clone().unwrap_or_else(|| serde_json::json!({})))
    .bind(idempotency_key)
    .bind(&request_fingerprint)
    .bind(now + lifetime)
    .bind(now)
    .bind(&checkout.redirect_url)
    .bind(&checkout.buyer_email)
    .bind(checkout.locale.map(crate::lang::Lang::tag))
    .bind(checkout.speed.as_str())
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        // A concurrent request with the same key won the race.
        tx.rollback().await?;
        let key = idempotency_key.unwrap_or_default();
        return find_by_idempotency_key(pool, merchant_id, key, &request_fingerprint)
            .await?
            .map(|view| (view, false))
            .ok_or_else(|| InvoiceError::IdempotencyConflict { key: key.to_owned() });
    }
    if request.customer.is_some() || promo.is_some() {
        if let Some(customer) = &request.customer {
            sqlx::query("SELECT id FROM customers WHERE id = $1 FOR UPDATE").bind(customer).execute(&mut *tx).await?;
        }
        sqlx::query("UPDATE invoices SET customer_id = $2, promo_id = $3, discount_minor = $4::numeric WHERE id = $1")
            .bind(&id)
            .bind(&request.customer)
            .bind(promo.as_ref().map(|(p, _)| p.id.clone()))
            .bind(promo.as_ref().map_or_else(|| "0".to_owned(), |(_, d)| d.to_string()))
            .execute(&mut *tx)
            .await?;
        if let Some((promo, _)) = &promo {
            payrail_credits::promo::redeem(&mut tx, promo, request.customer.as_deref(), payrail_credits::promo::Redeemed::Invoice(&id), now).await?;
        }
    }
    let split = match splits {
        Some(given) => {
            check_creators(&mut tx, merchant_id, given).await?;
            Some(given.clone())
        }
        None => matching_rule(&mut tx, merchant_id, request.order_id.as_deref()).await?,
    };
    if let Some(split) = split.filter(|s| !s.is_empty()) {
        store_on_invoice(&mut tx, merchant_id, &id, &split).await?;
    }
    // Deposit addresses: computed (CREATE2 forwarders) or allocated here, on this transaction
    // (Bitcoin descriptors). Without a descriptor the merchant is not offered Bitcoin: dropped from
    // a default list, kept without an address when asked for by name.
    let mut offered: Vec<(&PricedOption, Option<String>)> = Vec::with_capacity(options.len());
    for option in &options {
        let address = match option.deposit {
            Some(DepositScheme::Bitcoin) => {
                let allocated = crate::merchant::bitcoin::allocate(&mut tx, merchant_id, option.asset.chain(), &id)
                    .await
                    .map_err(|e| match e {
                        crate::merchant::bitcoin::AllocationError::Database(e) => InvoiceError::Database(e),
                        other => InvoiceError::Corrupt { column: "bitcoin_descriptors", value: other.to_string() },
                    })?;
                match allocated {
                    Some(allocation) => Some(allocation.address),
                    None if request.accepted.is_none() => continue,
                    None => None,
                }
            }
            Some(scheme) => scheme.address_for(&id),
            None => None,
        };
        offered.push((option, address));
    }
    if offered.is_empty() {
        return Err(InvoiceError::RateUnavailable {
            asset: "*".to_owned(),
            reason: format!("no asset this merchant can receive can be priced in {}", currency.code()),
        });
    }
    // One statement for all options and one for the deposit addresses, however many assets are
    // offered: a round trip each, not one per row.
    let column = |f: fn(&PricedOption) -> String| offered.iter().map(|(o, _)| f(o)).collect::<Vec<String>>();
    let positions: Vec<i16> = (0..offered.len()).map(|p| i16::try_from(p).unwrap_or(i16::MAX)).collect();
    sqlx::query(
        "INSERT INTO payment_options (invoice_id, asset, chain, symbol, decimals, amount_minor, rate, rate_source, \
                                      rate_at, position, address, rate_sources, amount_exact_minor, display_decimals) \
         SELECT $1, asset, chain, symbol, decimals, amount::numeric, rate, rate_source, rate_at, position, address, \
                rate_sources, exact::numeric, shown \
           FROM unnest($2::text[], $3::text[], $4::text[], $5::int2[], $6::text[], $7::text[], $8::text[], \
                       $9::timestamptz[], $10::int2[], $11::text[], $12::jsonb[], $13::text[], $14::int2[]) \
                AS o(asset, chain, symbol, decimals, amount, rate, rate_source, rate_at, position, address, \
                     rate_sources, exact, shown)",
    )
    .bind(&id)
    .bind(column(|o| o.asset.to_string()))
    .bind(column(|o| o.asset.chain().to_string()))
    .bind(column(|o| o.symbol.clone()))
    .bind(offered.iter().map(|(o, _)| i16::from(o.decimals)).collect::<Vec<i16>>())
    .bind(column(|o| o.amount.to_string()))
    .bind(column(|o| o.rate.clone()))
    .bind(column(|o| o.source.clone()))
    .bind(offered.iter().map(|(o, _)| o.at).collect::<Vec<DateTime<Utc>>>())
    .bind(positions)
    .bind(offered.iter().map(|(_, address)| address.clone()).collect::<Vec<Option<String>>>())
    .bind(offered.iter().map(|(o, _)| o.sources.clone()).collect::<Vec<serde_json::Value>>())
    .bind(column(|o| o.exact.to_string()))
    .bind(offered.iter().map(|(o, _)| i16::from(o.shown)).collect::<Vec<i16>>())
    .execute(&mut *tx)
    .await?;
    let mut deposits: Vec<(String, String)> = offered
        .iter()
        .filter_map(|(o, address)| address.as_ref().map(|a| (o.asset.chain().to_string(), a.to_lowercase())))
        .collect();
    deposits.sort();
    deposits.dedup();
    let (chains, addresses): (Vec<String>, Vec<String>) = deposits.into_iter().unzip();
    // The primary key refuses an address that already belongs to another invoice.
    sqlx::query("INSERT INTO deposit_addresses (chain, address, invoice_id) SELECT chain, address, $3 FROM unnest($1::text[], $2::text[]) AS d(chain, address)")
        .bind(chains)
        .bind(addresses)
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    let view = load_view(&mut tx, Some(merchant_id), &id).await?;
    crate::webhook::emit(&mut tx, merchant_id, "invoice.created", &id, &view, now).await?;
    tx.commit().await?;
    Ok((view, true))
}

async fn find_by_idempotency_key(
    pool: &PgPool,
    merchant_id: &str,
    key: &str,
    request_fingerprint: &[u8],
) -> Result<Option<InvoiceView>> {
    let found: Option<(String, Option<Vec<u8>>)> = sqlx::query_as(
        "SELECT id, request_fingerprint FROM invoices WHERE merchant_id = $1 AND idempotency_key = $2",
    )
    .bind(merchant_id)
    .bind(key)
    .fetch_optional(pool)
    .await?;
    match found {
        None => Ok(None),
        Some((id, stored)) if stored.as_deref() == Some(request_fingerprint) => {
            let mut conn = pool.acquire().await?;
            Ok(Some(load_view(&mut conn, Some(merchant_id), &id).await?))
        }
        Some(_) => Err(InvoiceError::IdempotencyConflict { key: key.to_owned() }),
    }
}
