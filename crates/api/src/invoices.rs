//! `POST /v1/invoices`, `GET /v1/invoices/{id}`.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;

use crate::invoice::{self, CreateInvoice, CreatorShare, InvoiceView, ListFilter, Splits};

use super::auth::MerchantAuth;
use super::error::ApiError;
use super::AppState;

/// Body of `POST /v1/invoices`: the invoice, and optionally its revenue split. Without `splits`
/// and `platform_fee_bps`, the merchant's rule for the longest matching `order_id` prefix (else its
/// default rule, else none) is copied onto the invoice.
#[derive(Debug, Clone, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInvoiceBody {
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
    /// Creators and their basis points of every payment; with `platform_fee_bps` at most 10000.
    #[serde(default)]
    pub splits: Option<Vec<CreatorShare>>,
    /// The platform's fee in basis points of every payment.
    #[serde(default)]
    pub platform_fee_bps: Option<u32>,
    /// The merchant's customer paying, `cus_…`.
    #[serde(default)]
    pub customer: Option<String>,
    /// A promo code that applies to invoices (any case): `amount` is the price before it.
    #[serde(default)]
    pub promo_code: Option<String>,
    /// Where the checkout page sends the payer back ("Return to merchant") once the invoice is
    /// paid or has expired: `https` (`http` only to a loopback host), at most 2,000 bytes.
    #[serde(default)]
    pub redirect_url: Option<String>,
    /// The payer's e-mail address: shown on the checkout page, given to Stripe for its receipt.
    #[serde(default)]
    pub buyer_email: Option<String>,
    /// The checkout page's language: `en`, `es`, `fr`, `de`, `pt`, `zh-CN` or `ja` (regional tags
    /// such as `pt-BR` are accepted). Absent: the payer's `Accept-Language`.
    #[serde(default)]
    pub locale: Option<String>,
    /// How far short of `amount` a payment may fall and still pay the invoice, in basis points
    /// (0..=1000); the configured `[invoices] underpayment_tolerance_bps` when absent.
    #[serde(default)]
    pub underpayment_tolerance_bps: Option<u32>,
    /// How long payments wait before they count: `medium` (the default: the chain's confirmation
    /// tiers by value), `slow` (the chain's deepest tier for every payment) or `fast` (none, for a
    /// payment the chain allows to count unconfirmed: `zero_conf_up_to_usd` in its chain file;
    /// the tiers above that).
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "medium")]
    pub speed_policy: Option<String>,
}

impl CreateInvoiceBody {
    fn into_parts(self) -> (CreateInvoice, Option<Splits>) {
        let splits = if self.splits.is_some() || self.platform_fee_bps.is_some() {
            Some(Splits {
                splits: self.splits.unwrap_or_default(),
                platform_fee_bps: self.platform_fee_bps.unwrap_or(0),
            })
        } else {
            None
        };
        let request = CreateInvoice {
            amount: self.amount,
            currency: self.currency,
            accepted: self.accepted,
            expires_in: self.expires_in,
            order_id: self.order_id,
            metadata: self.metadata,
            customer: self.customer,
            promo_code: self.promo_code,
            redirect_url: self.redirect_url,
            buyer_email: self.buyer_email,
            locale: self.locale,
            underpayment_tolerance_bps: self.underpayment_tolerance_bps,
            speed_policy: self.speed_policy,
        };
        (request, splits)
    }
}

#[utoipa::path(post, path = "/v1/invoices", tag = "invoices", security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 256, pattern = "^[!-~]+$", description = "retries with the same key and body get the first response")),
    request_body = CreateInvoiceBody,
    responses(
        (status = 201, body = InvoiceView), (status = 200, body = InvoiceView, description = "an earlier invoice under the same Idempotency-Key"),
        (status = 400, body = super::openapi::ErrorBody), (status = 401, body = super::openapi::ErrorBody),
        (status = 404, body = super::openapi::ErrorBody, description = "promo_code names no promo code of the merchant"),
        (status = 409, body = super::openapi::ErrorBody), (status = 413, body = super::openapi::ErrorBody),
        (status = 415, body = super::openapi::ErrorBody), (status = 422, body = super::openapi::ErrorBody),
        (status = 429, body = super::openapi::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    auth: MerchantAuth,
    headers: HeaderMap,
    body: Result<Json<CreateInvoiceBody>, JsonRejection>,
) -> Result<(StatusCode, Json<InvoiceView>), ApiError> {
    let Json(body) = body?;
    let (request, splits) = body.into_parts();
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| {
            ApiError::new(StatusCode::BAD_REQUEST, "parameter_invalid", "Idempotency-Key must be visible ASCII")
        })?),
    };
    let (view, created) = invoice::create_invoice_with_splits(
        &state.pool,
        &state.catalog,
        state.rates.as_ref(),
        &state.policy,
        &auth.merchant_id,
        &request,
        splits.as_ref(),
        key,
        state.clock.now(),
    )
    .await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(view)))
}

#[utoipa::path(get, path = "/v1/invoices/{id}", tag = "invoices", security(("bearer" = [])),
    params(("id" = String, Path, description = "the invoice id, inv_…")),
    responses((status = 200, body = InvoiceView), (status = 401, body = super::openapi::ErrorBody), (status = 404, body = super::openapi::ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    auth: MerchantAuth,
    Path(id): Path<String>,
) -> Result<Json<InvoiceView>, ApiError> {
    if !crate::ids::is_id(&id, "inv") {
        return Err(ApiError::not_found("invoice"));
    }
    Ok(Json(invoice::load_current_view(&state.pool, Some(&auth.merchant_id), &id, state.clock.now()).await?.0))
}

/// Query of `GET /v1/invoices`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub status: Option<String>,
    pub order_id: Option<String>,
    /// RFC 3339; invoices created at or after.
    pub created_from: Option<String>,
    /// RFC 3339; invoices created before.
    pub created_to: Option<String>,
    /// Invoices per page, 1–100 (20 when absent).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// An invoice id: the page holds the invoices after it.
    pub starting_after: Option<String>,
    /// An invoice id: the page holds the invoices before it.
    pub ending_before: Option<String>,
}


#[utoipa::path(get, path = "/v1/invoices", tag = "invoices", security(("bearer" = [])), params(ListQuery),
    responses((status = 200, body = super::List<InvoiceView>, description = "the merchant's invoices, newest first"), (status = 401, body = super::openapi::ErrorBody), (status = 422, body = super::openapi::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    auth: MerchantAuth,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<super::List<InvoiceView>>, ApiError> {
    let query = super::list_query(query)?;
    let status = query
        .status
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|e: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid", format!("status: {e}")))?;
    let filter = ListFilter {
        status,
        order_id: query.order_id,
        created_from: super::time_param("created_from", query.created_from.as_deref())?,
        created_to: super::time_param("created_to", query.created_to.as_deref())?,
        page: super::page(query.limit, query.starting_after, query.ending_before, super::CursorKind::Id("inv"), super::PageSize::LIST)?,
    };
    let mut conn = state.pool.acquire().await.map_err(ApiError::database)?;
    Ok(Json(super::List::of(invoice::list_invoices(&mut conn, &auth.merchant_id, &filter).await?)))
}

#[utoipa::path(get, path = "/v1/unapplied", tag = "invoices", security(("bearer" = [])), params(super::PageQuery),
    responses((status = 200, body = super::List<invoice::UnappliedPayment>,
            description = "the payments held on the merchant's unapplied balance that are still money, oldest first"),
        (status = 401, body = super::openapi::ErrorBody, description = "unauthorized: no valid API key"),
        (status = 403, body = super::openapi::ErrorBody, description = "forbidden: not a merchant key"),
        (status = 422, body = super::openapi::ErrorBody, description = "parameter_invalid: a query parameter is invalid")))]
pub async fn unapplied(
    State(state): State<AppState>,
    auth: MerchantAuth,
    query: Result<Query<super::PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<super::List<invoice::UnappliedPayment>>, ApiError> {
    let page = super::list_query(query)?.page("pay")?;
    let mut conn = state.pool.acquire().await.map_err(ApiError::database)?;
    Ok(Json(super::List::of(invoice::list_unapplied(&mut conn, &auth.merchant_id, &page).await?)))
}

#[utoipa::path(post, path = "/v1/invoices/{id}/void", tag = "invoices", security(("bearer" = [])),
    params(("id" = String, Path, description = "the invoice id, inv_…")),
    responses((status = 200, body = InvoiceView), (status = 401, body = super::openapi::ErrorBody),
        (status = 404, body = super::openapi::ErrorBody), (status = 409, body = super::openapi::ErrorBody)))]
pub async fn void(
    State(state): State<AppState>,
    auth: MerchantAuth,
    Path(id): Path<String>,
) -> Result<Json<InvoiceView>, ApiError> {
    if !crate::ids::is_id(&id, "inv") {
        return Err(ApiError::not_found("invoice"));
    }
    Ok(Json(invoice::void_invoice(&state.pool, &auth.merchant_id, &id, state.clock.now()).await?))
}

/// Body of `POST /v1/invoices/{id}/mark`.
#[derive(Debug, Clone, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MarkBody {
    /// `settled`: accept the invoice as paid although less, late or in another asset arrived (its
    /// confirmed held payments are applied to it first). `invalid`: do not accept what arrived —
    /// every payment that counted toward it is held on the unapplied balance again, to be applied
    /// elsewhere or refunded.
    pub status: MarkStatus,
}

#[derive(Debug, Clone, Copy, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MarkStatus {
    Settled,
    Invalid,
}

#[utoipa::path(post, path = "/v1/invoices/{id}/mark", tag = "invoices", security(("bearer" = [])),
    params(("id" = String, Path, description = "the invoice id, inv_…")),
    request_body = MarkBody,
    responses((status = 200, body = InvoiceView,
            description = "the invoice: settled, paid (or overpaid; a paid invoice is returned unchanged); invalid, `invalid`"),
        (status = 401, body = super::openapi::ErrorBody), (status = 404, body = super::openapi::ErrorBody),
        (status = 409, body = super::openapi::ErrorBody,
            description = "invoice_state: voided or refunded (or, settling, invalid); insufficient_funds: a creator's share was paid out already"),
        (status = 415, body = super::openapi::ErrorBody), (status = 422, body = super::openapi::ErrorBody)))]
pub async fn mark(
    State(state): State<AppState>,
    auth: MerchantAuth,
    Path(id): Path<String>,
    body: Result<Json<MarkBody>, JsonRejection>,
) -> Result<Json<InvoiceView>, ApiError> {
    let Json(body) = body?;
    if !crate::ids::is_id(&id, "inv") {
        return Err(ApiError::not_found("invoice"));
    }
    let now = state.clock.now();
    let view = match body.status {
        MarkStatus::Settled => invoice::settle_invoice(&state.pool, &state.ledger, &auth.merchant_id, &id, now).await?,
        MarkStatus::Invalid => invoice::invalidate_invoice(&state.pool, &state.ledger, &auth.merchant_id, &id, now).await?,
    };
    Ok(Json(view))
}

/// Body of `POST /v1/unapplied/{id}/apply`.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplyBody {
    /// The merchant's invoice to apply the payment to (`inv_…`); the payment's own invoice when absent.
    #[serde(default)]
    pub invoice: Option<String>,
}

#[utoipa::path(post, path = "/v1/unapplied/{id}/apply", tag = "invoices", security(("bearer" = [])),
    params(("id" = String, Path, description = "the held payment's id, pay_…")),
    request_body = ApplyBody,
    responses((status = 200, body = InvoiceView, description = "the invoice the payment now counts toward"),
        (status = 401, body = super::openapi::ErrorBody), (status = 404, body = super::openapi::ErrorBody),
        (status = 409, body = super::openapi::ErrorBody,
            description = "payment_not_unapplied, payment_not_confirmed, asset_not_quoted or invoice_state"),
        (status = 415, body = super::openapi::ErrorBody), (status = 422, body = super::openapi::ErrorBody)))]
pub async fn apply_unapplied(
    State(state): State<AppState>,
    auth: MerchantAuth,
    Path(id): Path<String>,
    body: Result<Json<ApplyBody>, JsonRejection>,
) -> Result<Json<InvoiceView>, ApiError> {
    let Json(body) = body?;
    if !crate::ids::is_id(&id, "pay") {
        return Err(ApiError::not_found("payment"));
    }
    if body.invoice.as_deref().is_some_and(|target| !crate::ids::is_id(target, "inv")) {
        return Err(ApiError::not_found("invoice"));
    }
    let now = state.clock.now();
    let view =
        invoice::apply_held_payment(&state.pool, &state.ledger, &auth.merchant_id, &id, body.invoice.as_deref(), now).await?;
    Ok(Json(view))
}
