//! Card settlements, over a merchant key: `POST /v1/card_settlements` pays the merchant's card
//! balance of one currency out of Stripe to the bank, `GET /v1/card_settlements[/{id}]` follows it.
//! See [`payrail_stripe::settlement`].

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;

use payrail_stripe::settlement::{self, CardSettlementRequest, CardSettlementView};
use payrail_stripe::StripeError;

use super::auth::MerchantAuth;
use super::error::ApiError;
use super::AppState;

fn rail(state: &AppState) -> Result<&payrail_stripe::CardRail, ApiError> {
    state.card.as_deref().ok_or_else(|| ApiError::from(StripeError::NotConfigured))
}

#[utoipa::path(post, path = "/v1/card_settlements", tag = "settlements", security(("bearer" = [])),
    request_body = CardSettlementRequest,
    responses((status = 201, body = CardSettlementView,
            description = "`pending` once Stripe made the payout; `created` when Stripe did not answer (asked again); `failed` when it refused (the amount is back)"),
        (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody),
        (status = 409, body = super::openapi::ErrorBody, description = "insufficient_funds (with what is available), card_unavailable"),
        (status = 415, body = super::openapi::ErrorBody), (status = 422, body = super::openapi::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    auth: MerchantAuth,
    body: Result<Json<CardSettlementRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<CardSettlementView>), ApiError> {
    let Json(request) = body?;
    let rail = rail(&state)?;
    let view = settlement::settle(rail, &state.pool, &state.ledger, &auth.merchant_id, &request, state.clock.now()).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

#[utoipa::path(get, path = "/v1/card_settlements", tag = "settlements", security(("bearer" = [])),
    params(super::PageQuery),
    responses((status = 200, body = super::List<CardSettlementView>, description = "the merchant's card settlements, newest first"),
        (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody),
        (status = 422, body = super::openapi::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    auth: MerchantAuth,
    query: Result<Query<super::PageQuery>, QueryRejection>,
) -> Result<Json<super::List<CardSettlementView>>, ApiError> {
    let page = super::list_query(query)?.page("cst")?;
    Ok(Json(super::List::of(settlement::list(&state.pool, &auth.merchant_id, &page).await?)))
}

#[utoipa::path(get, path = "/v1/card_settlements/{id}", tag = "settlements", security(("bearer" = [])),
    params(("id" = String, Path, description = "the card settlement, cst_…")),
    responses((status = 200, body = CardSettlementView), (status = 401, body = super::openapi::ErrorBody),
        (status = 403, body = super::openapi::ErrorBody), (status = 404, body = super::openapi::ErrorBody)))]
pub async fn show(State(state): State<AppState>, auth: MerchantAuth, Path(id): Path<String>) -> Result<Json<CardSettlementView>, ApiError> {
    if !crate::ids::is_id(&id, "cst") {
        return Err(ApiError::not_found("card settlement"));
    }
    Ok(Json(settlement::get(&state.pool, &auth.merchant_id, &id).await?))
}
