//! Crypto refunds over the API: created by `POST /v1/invoices/{id}/refunds` with `"method":
//! "crypto"` (see [`create_crypto`]), then `GET /v1/refunds`, `GET /v1/refunds/{id}` and `POST
//! /v1/refunds/{id}/cancel` with a merchant key. The payer's side is `/refund/{token}`
//! (`checkout::claim`).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::Value;

use crate::money::{Amount, Fiat};
use crate::refund::{self, CryptoRefundView, NewCryptoRefund, RefundAmount, RefundSource};

use super::auth::MerchantAuth;
use super::error::ApiError;
use super::AppState;

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid", message.into())
}

/// `amount` of a crypto refund: `{"kind": "rate_then", "amount"?: "10.00"}`, `{"kind":
/// "current_rate"}`, `{"kind": "fiat", "amount": "10.00"}`, `{"kind": "overpaid"}`, `{"kind":
/// "custom", "amount_minor": "1500000"}`; all that is left at the rate then when absent.
pub fn parse_amount(value: Option<&Value>, fiat: Fiat) -> Result<RefundAmount, ApiError> {
    let Some(value) = value else { return Ok(RefundAmount::RateThen { value: None }) };
    let object = value.as_object().ok_or_else(|| invalid("amount: an object with a kind for a crypto refund"))?;
    let kind = object.get("kind").and_then(Value::as_str).ok_or_else(|| invalid("amount.kind: rate_then, current_rate, fiat, overpaid or custom"))?;
    let allowed: &[&str] = match kind {
        "rate_then" | "fiat" => &["kind", "amount"],
        "custom" => &["kind", "amount_minor"],
        _ => &["kind"],
    };
    if let Some(extra) = object.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(invalid(format!("amount.{extra}: not a field of kind {kind}")));
    }
    let fiat_amount = |required: bool| -> Result<Option<Amount>, ApiError> {
        match object.get("amount") {
            None if required => Err(invalid(format!("amount.amount: required for kind {kind}"))),
            None => Ok(None),
            Some(v) => {
                let text = v.as_str().ok_or_else(|| invalid("amount.amount: a decimal string"))?;
                let parsed = Amount::parse_decimal(text, fiat.minor_units()).map_err(|_| {
                    invalid(format!("amount.amount: {text:?} is not an amount of {} with at most {} decimals", fiat.code(), fiat.minor_units()))
                })?;
                if parsed.is_zero() {
                    return Err(invalid("amount.amount: must be more than 0"));
                }
                Ok(Some(parsed))
            }
        }
    };
    Ok(match kind {
        "rate_then" => RefundAmount::RateThen { value: fiat_amount(false)? },
        "current_rate" => RefundAmount::CurrentRate,
        "fiat" => RefundAmount::Fiat { value: fiat_amount(true)?.unwrap_or(Amount::ZERO) },
        "overpaid" => RefundAmount::Overpaid,
        "custom" => {
            let text = object.get("amount_minor").and_then(Value::as_str).ok_or_else(|| invalid("amount.amount_minor: required, an integer string"))?;
            let amount = Amount::parse_decimal(text, 0).map_err(|_| invalid(format!("amount.amount_minor: {text:?} is not a whole number")))?;
            if amount.is_zero() {
                return Err(invalid("amount.amount_minor: must be more than 0"));
            }
            RefundAmount::Custom { amount }
        }
        other => return Err(invalid(format!("amount.kind: {other:?} is not rate_then, current_rate, fiat, overpaid or custom"))),
    })
}

/// Creates a crypto refund and answers it with its claim URL (shown this once).
pub async fn create_crypto(
    state: &AppState,
    merchant_id: &str,
    invoice_id: &str,
    fiat: Fiat,
    body: &super::stripe::RefundBody,
) -> Result<CryptoRefundView, ApiError> {
    let amount = parse_amount(body.amount.as_ref(), fiat)?;
    if let Some(asset) = &body.asset {
        if asset.len() > 200 || asset.chars().any(char::is_control) {
            return Err(invalid("asset: a CAIP-19 asset id"));
        }
    }
    let request = NewCryptoRefund { asset: body.asset.clone(), amount, reason: body.reason.clone(), expires_in_s: body.expires_in_s, asset_info: None };
    create(state, merchant_id, RefundSource::Invoice(invoice_id), request).await
}

async fn create(state: &AppState, merchant_id: &str, source: RefundSource<'_>, mut request: NewCryptoRefund) -> Result<CryptoRefundView, ApiError> {
    if let RefundSource::Unapplied(payment_id) = source {
        // A held payment may be in an asset its invoice did not quote: its decimals come from the
        // configured assets.
        let asset: Option<String> = sqlx::query_scalar("SELECT asset FROM payments WHERE id = $1 AND merchant_id = $2")
            .bind(payment_id)
            .bind(merchant_id)
            .fetch_optional(&state.pool)
            .await
            .map_err(ApiError::database)?;
        request.asset_info = asset
            .and_then(|a| a.parse().ok())
            .and_then(|a| state.catalog.get(&a).map(|c| (c.symbol.clone(), c.decimals)));
    }
    let created = refund::create(&state.pool, &state.ledger, merchant_id, source, &request, state.clock.now()).await?;
    let mut view = created.refund;
    if view.chain.starts_with("eip155:") && !state.payouts.as_ref().is_some_and(|p| p.pays_refunds_of(&view.chain, &view.asset)) {
        // Nothing could send it: take it back at once rather than hand out a link that cannot pay.
        let _ = refund::cancel(&state.pool, &state.ledger, merchant_id, &view.id, state.clock.now()).await?;
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "refund_unavailable",
            format!("refunds of {} cannot be paid here: no payout batcher pays it on {}", view.asset, view.chain),
        ));
    }
    view.claim_url = Some(format!("{}/refund/{}", state.public_url, created.token));
    Ok(view)
}

/// Body of `POST /v1/unapplied/{id}/refund`.
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnappliedRefundBody {
    /// A note, at most 500 characters.
    pub reason: Option<String>,
    /// How long the claim link is usable, 60 s to 90 days; 30 days when absent.
    pub expires_in_s: Option<i64>,
}

#[utoipa::path(post, path = "/v1/unapplied/{id}/refund", tag = "refunds", security(("bearer" = [])),
    params(("id" = String, Path, description = "the held payment's id, pay_…")),
    request_body = UnappliedRefundBody,
    responses((status = 201, body = CryptoRefundView, description = "the refund of the whole payment, `open`, with its one-time `claim_url`"),
        (status = 401, body = super::openapi::ErrorBody), (status = 404, body = super::openapi::ErrorBody),
        (status = 409, body = super::openapi::ErrorBody, description = "payment_not_unapplied, payment_not_confirmed, nothing_to_refund (being refunded already), refund_unavailable"),
        (status = 415, body = super::openapi::ErrorBody), (status = 422, body = super::openapi::ErrorBody)))]
pub async fn refund_unapplied(
    State(state): State<AppState>,
    auth: MerchantAuth,
    Path(id): Path<String>,
    body: Result<Json<UnappliedRefundBody>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<CryptoRefundView>), ApiError> {
    let Json(body) = body?;
    if !crate::ids::is_id(&id, "pay") {
        return Err(ApiError::not_found("payment"));
    }
    let request = NewCryptoRefund { asset: None, amount: RefundAmount::RateThen { value: None }, reason: body.reason, expires_in_s: body.expires_in_s, asset_info: None };
    Ok((StatusCode::CREATED, Json(create(&state, &auth.merchant_id, RefundSource::Unapplied(&id), request).await?)))
}

/// Query of `GET /v1/refunds`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RefundQuery {
    /// Only this invoice's refunds (`inv_…`).
    pub invoice: Option<String>,
    /// Refunds per page, 1–100 (20 when absent).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// A refund id: the page holds the refunds after it (older).
    pub starting_after: Option<String>,
    /// A refund id: the page holds the refunds before it (newer).
    pub ending_before: Option<String>,
}

#[utoipa::path(get, path = "/v1/refunds", tag = "refunds", security(("bearer" = [])),
    params(RefundQuery),
    responses((status = 200, body = super::List<CryptoRefundView>, description = "the merchant's refunds, newest first"),
        (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody),
        (status = 422, body = super::openapi::ErrorBody)))]
pub async fn list(State(state): State<AppState>, auth: MerchantAuth, query: Result<Query<RefundQuery>, QueryRejection>) -> Result<Json<super::List<CryptoRefundView>>, ApiError> {
    let query = super::list_query(query)?;
    let page = super::page(query.limit, query.starting_after, query.ending_before, super::CursorKind::Id("rfd"), super::PageSize::LIST)?;
    if query.invoice.as_deref().is_some_and(|i| !crate::ids::is_id(i, "inv")) {
        return Err(invalid("invoice must be an inv_… id"));
    }
    Ok(Json(super::List::of(refund::list(&state.pool, &auth.merchant_id, query.invoice.as_deref(), &page).await?)))
}

#[utoipa::path(get, path = "/v1/refunds/{id}", tag = "refunds", security(("bearer" = [])),
    params(("id" = String, Path, description = "the refund id, rfd_…")),
    responses((status = 200, body = CryptoRefundView), (status = 401, body = super::openapi::ErrorBody),
        (status = 403, body = super::openapi::ErrorBody), (status = 404, body = super::openapi::ErrorBody)))]
pub async fn show(State(state): State<AppState>, auth: MerchantAuth, Path(id): Path<String>) -> Result<Json<CryptoRefundView>, ApiError> {
    if !crate::ids::is_id(&id, "rfd") {
        return Err(ApiError::not_found("refund"));
    }
    Ok(Json(refund::view(&state.pool, &auth.merchant_id, &id).await?))
}

#[utoipa::path(post, path = "/v1/refunds/{id}/cancel", tag = "refunds", security(("bearer" = [])),
    params(("id" = String, Path, description = "the refund id, rfd_…")),
    responses((status = 200, body = CryptoRefundView, description = "`canceled`: what it held is back on the balances it came from"),
        (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody),
        (status = 404, body = super::openapi::ErrorBody),
        (status = 409, body = super::openapi::ErrorBody, description = "refund_state: paid, being paid, or closed")))]
pub async fn cancel(State(state): State<AppState>, auth: MerchantAuth, Path(id): Path<String>) -> Result<Json<CryptoRefundView>, ApiError> {
    if !crate::ids::is_id(&id, "rfd") {
        return Err(ApiError::not_found("refund"));
    }
    Ok(Json(refund::cancel(&state.pool, &state.ledger, &auth.merchant_id, &id, state.clock.now()).await?))
}
