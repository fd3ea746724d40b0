//! `POST /v1/invoices`, `GET /v1/invoices/{id}`.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;

use crate::invoice::{self, CreateInvoice, InvoiceView};

use super::auth::MerchantAuth;
use super::error::ApiError;
use super::AppState;

pub async fn create(
    State(state): State<AppState>,
    auth: MerchantAuth,
    headers: HeaderMap,
    body: Result<Json<CreateInvoice>, JsonRejection>,
) -> Result<(StatusCode, Json<InvoiceView>), ApiError> {
    let Json(request) = body?;
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| {
            ApiError::new(StatusCode::BAD_REQUEST, "parameter_invalid", "Idempotency-Key must be visible ASCII")
        })?),
    };
    let (view, created) = invoice::create_invoice(
        &state.pool,
        &state.catalog,
        state.rates.as_ref(),
        &state.policy,
        &auth.merchant_id,
        &request,
        key,
        state.clock.now(),
    )
    .await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(view)))
}

pub async fn show(
    State(state): State<AppState>,
    auth: MerchantAuth,
    Path(id): Path<String>,
) -> Result<Json<InvoiceView>, ApiError> {
    if !crate::ids::is_id(&id, "inv") {
        return Err(ApiError::not_found("invoice"));
    }
    invoice::refresh(&state.pool, &id, state.clock.now()).await?;
    let mut conn = state.pool.acquire().await.map_err(ApiError::internal)?;
    Ok(Json(invoice::load_view(&mut conn, Some(&auth.merchant_id), &id).await?))
}
