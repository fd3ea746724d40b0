//! Merchant settlement. A merchant key: `GET /v1/merchants/me/payout_addresses`, `PUT
//! /v1/merchants/me/payout_addresses/{chain}`, `GET` and `PUT /v1/merchants/me/settlement_schedule`,
//! `POST /v1/settlements`, `GET /v1/settlements`, `GET /v1/settlements/{id}`. A creator key: `PUT
//! /v1/creators/me/payout_addresses/{chain}`, `POST /v1/creators/me/withdrawals`.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;

use crate::payout::{self, PayoutAddress, PayoutView, SettlementRequest, SettlementSchedule};

use super::auth::{CreatorAuth, MerchantAuth};
use super::error::ApiError;
use super::AppState;

/// Body of `PUT /v1/merchants/me/payout_addresses/{chain}`.
#[derive(Debug, Clone, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PayoutAddressBody {
    /// `0x…`: a mixed-case address must carry its EIP-55 checksum; stored checksummed.
    pub address: String,
    /// The address is a contract that can move tokens (a multisig wallet): without this a contract
    /// is refused, as tokens sent to one that cannot move them are lost.
    #[serde(default)]
    pub contract_confirmed: bool,
}

use super::payouts::{sending_service, services as service};

#[utoipa::path(get, path = "/v1/merchants/me/payout_addresses", tag = "settlements", security(("bearer" = [])),
    params(super::PageQuery),
    responses((status = 200, body = super::List<PayoutAddress>, description = "the merchant's payout addresses by chain; the cursors are chains (CAIP-2)"),
        (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody),
        (status = 409, body = super::openapi::ErrorBody), (status = 422, body = super::openapi::ErrorBody)))]
pub async fn addresses(
    State(state): State<AppState>,
    auth: MerchantAuth,
    query: Result<Query<super::PageQuery>, QueryRejection>,
) -> Result<Json<super::List<PayoutAddress>>, ApiError> {
    let page = super::list_query(query)?.page_by(super::CursorKind::Code)?;
    let delay = service(&state)?.config().address_change_delay_s;
    Ok(Json(super::List::of(payout::settlement::payout_addresses(&state.pool, &auth.merchant_id, delay, &page).await?)))
}

#[utoipa::path(put, path = "/v1/merchants/me/payout_addresses/{chain}", tag = "settlements", security(("bearer" = [])),
    params(("chain" = String, Path, description = "a payout chain by name (`polygon`) or CAIP-2 id")),
    request_body = PayoutAddressBody,
    responses((status = 200, body = PayoutAddress, description = "the address; a new one is usable once `usable_from` has passed"),
        (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody),
        (status = 409, body = super::openapi::ErrorBody), (status = 415, body = super::openapi::ErrorBody),
        (status = 422, body = super::openapi::ErrorBody, description = "parameter_invalid: not an address of the chain, a contract not confirmed, or not a payout chain"),
        (status = 503, body = super::openapi::ErrorBody)))]
pub async fn put_address(
    State(state): State<AppState>,
    auth: MerchantAuth,
    Path(chain): Path<String>,
    body: Result<Json<PayoutAddressBody>, JsonRejection>,
) -> Result<Json<PayoutAddress>, ApiError> {
    let Json(body) = body?;
    let set = service(&state)?.set_payout_address(&auth.merchant_id, &chain, &body.address, body.contract_confirmed, Some(&auth.key_id)).await?;
    Ok(Json(set))
}

#[utoipa::path(post, path = "/v1/merchants/me/payout_addresses/{chain}/confirm", tag = "settlements", security(("bearer" = [])),
    params(("chain" = String, Path, description = "a payout chain by name (`polygon`) or CAIP-2 id")),
    responses((status = 200, body = PayoutAddress, description = "the address, usable at once (`confirmed_at` set)"),
        (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody),
        (status = 409, body = super::openapi::ErrorBody, description = "second_key_required: the key that changed it, or one created less than the delay before the change; payout_address_missing"),
        (status = 422, body = super::openapi::ErrorBody)))]
pub async fn confirm_address(State(state): State<AppState>, auth: MerchantAuth, Path(chain): Path<String>) -> Result<Json<PayoutAddress>, ApiError> {
    Ok(Json(service(&state)?.confirm_payout_address(&auth.merchant_id, None, &chain, &auth.key_id).await?))
}

#[utoipa::path(post, path = "/v1/creators/{id}/payout_addresses/{chain}/confirm", tag = "creators", security(("bearer" = [])),
    params(("id" = String, Path, description = "the creator, cr_…"), ("chain" = String, Path, description = "a payout chain by name or CAIP-2 id")),
    responses((status = 200, body = PayoutAddress, description = "the creator's address, usable at once"),
        (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody),
        (status = 404, body = super::openapi::ErrorBody),
        (status = 409, body = super::openapi::ErrorBody, description = "payout_address_missing"),
        (status = 422, body = super::openapi::ErrorBody)))]
pub async fn confirm_creator_address(
    State(state): State<AppState>,
    auth: MerchantAuth,
    Path((creator_id, chain)): Path<(String, String)>,
) -> Result<Json<PayoutAddress>, ApiError> {
    let owned: Option<String> = sqlx::query_scalar("SELECT id FROM creators WHERE id = $1 AND merchant_id = $2")
        .bind(&creator_id)
        .bind(&auth.merchant_id)
        .fetch_optional(&state.pool)
        .await
        .map_err(ApiError::database)?;
    if owned.is_none() {
        return Err(ApiError::not_found("creator"));
    }
    Ok(Json(service(&state)?.confirm_payout_address(&auth.merchant_id, Some(&creator_id), &chain, &auth.key_id).await?))
}

#[utoipa::path(post, path = "/v1/settlements", tag = "settlements", security(("bearer" = [])),
    request_body = SettlementRequest,
    responses((status = 201, body = PayoutView, description = "the settlement's batch, `created`; the executor sends it"),
        (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody),
        (status = 409, body = super::openapi::ErrorBody,
            description = "insufficient_funds (with what is available), payout_address_missing, payout_address_recent, batcher_funds_short, payouts_unavailable"),
        (status = 415, body = super::openapi::ErrorBody), (status = 422, body = super::openapi::ErrorBody),
        (status = 503, body = super::openapi::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    auth: MerchantAuth,
    body: Result<Json<SettlementRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<PayoutView>), ApiError> {
    let Json(request) = body?;
    let settled = sending_service(&state, "settlement")?.settle(&auth.merchant_id, &request).await?;
    Ok((StatusCode::CREATED, Json(settled)))
}

#[utoipa::path(get, path = "/v1/settlements", tag = "settlements", security(("bearer" = [])),
    params(super::PageQuery),
    responses((status = 200, body = super::List<PayoutView>, description = "the merchant's settlements, newest first"),
        (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody),
        (status = 422, body = super::openapi::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    auth: MerchantAuth,
    query: Result<Query<super::PageQuery>, QueryRejection>,
) -> Result<Json<super::List<PayoutView>>, ApiError> {
    let page = super::list_query(query)?.page("po")?;
    Ok(Json(super::List::of(payout::settlement::settlements(&state.pool, &auth.merchant_id, &page).await?)))
}

#[utoipa::path(get, path = "/v1/settlements/{id}", tag = "settlements", security(("bearer" = [])),
    params(("id" = String, Path, description = "the settlement's payout id, po_…")),
    responses((status = 200, body = PayoutView), (status = 401, body = super::openapi::ErrorBody),
        (status = 403, body = super::openapi::ErrorBody), (status = 404, body = super::openapi::ErrorBody)))]
pub async fn show(State(state): State<AppState>, auth: MerchantAuth, Path(id): Path<String>) -> Result<Json<PayoutView>, ApiError> {
    if !crate::ids::is_id(&id, "po") {
        return Err(ApiError::not_found("settlement"));
    }
    Ok(Json(payout::settlement::settlement(&state.pool, &auth.merchant_id, &id).await?))
}

#[utoipa::path(get, path = "/v1/merchants/me/settlement_schedule", tag = "settlements", security(("bearer" = [])),
    responses((status = 200, body = SettlementSchedule, description = "manual with no minimum until one is set"),
        (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody),
        (status = 409, body = super::openapi::ErrorBody)))]
pub async fn get_schedule(State(state): State<AppState>, auth: MerchantAuth) -> Result<Json<SettlementSchedule>, ApiError> {
    Ok(Json(service(&state)?.schedule(&auth.merchant_id).await?))
}

#[utoipa::path(put, path = "/v1/merchants/me/settlement_schedule", tag = "settlements", security(("bearer" = [])),
    request_body = SettlementSchedule,
    responses((status = 200, body = SettlementSchedule), (status = 401, body = super::openapi::ErrorBody),
        (status = 403, body = super::openapi::ErrorBody), (status = 409, body = super::openapi::ErrorBody),
        (status = 415, body = super::openapi::ErrorBody), (status = 422, body = super::openapi::ErrorBody)))]
pub async fn put_schedule(
    State(state): State<AppState>,
    auth: MerchantAuth,
    body: Result<Json<SettlementSchedule>, JsonRejection>,
) -> Result<Json<SettlementSchedule>, ApiError> {
    let Json(body) = body?;
    Ok(Json(service(&state)?.set_schedule(&auth.merchant_id, &body).await?))
}

#[utoipa::path(put, path = "/v1/creators/me/payout_addresses/{chain}", tag = "creators", security(("bearer" = [])),
    params(("chain" = String, Path, description = "a payout chain by name (`polygon`) or CAIP-2 id")),
    request_body = PayoutAddressBody,
    responses((status = 200, body = PayoutAddress,
            description = "the address; a changed one is paid to once `usable_from` has passed (payout runs skip it until then)"),
        (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody),
        (status = 409, body = super::openapi::ErrorBody), (status = 415, body = super::openapi::ErrorBody),
        (status = 422, body = super::openapi::ErrorBody), (status = 503, body = super::openapi::ErrorBody)))]
pub async fn put_creator_address(
    State(state): State<AppState>,
    auth: CreatorAuth,
    Path(chain): Path<String>,
    body: Result<Json<PayoutAddressBody>, JsonRejection>,
) -> Result<Json<PayoutAddress>, ApiError> {
    let Json(body) = body?;
    let set = service(&state)?
        .set_creator_payout_address(&auth.creator_id, &auth.merchant_id, &chain, &body.address, body.contract_confirmed, Some(&auth.key_id))
        .await?;
    Ok(Json(set))
}

#[utoipa::path(post, path = "/v1/creators/me/withdrawals", tag = "creators", security(("bearer" = [])),
    request_body = SettlementRequest,
    responses((status = 201, body = PayoutView, description = "the withdrawal's batch, `created`; the executor sends it"),
        (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody),
        (status = 409, body = super::openapi::ErrorBody,
            description = "insufficient_funds, below_threshold, payout_address_missing, payout_address_recent, batcher_funds_short, payouts_unavailable"),
        (status = 415, body = super::openapi::ErrorBody), (status = 422, body = super::openapi::ErrorBody),
        (status = 503, body = super::openapi::ErrorBody)))]
pub async fn creator_withdrawal(
    State(state): State<AppState>,
    auth: CreatorAuth,
    body: Result<Json<SettlementRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<PayoutView>), ApiError> {
    let Json(request) = body?;
    let batch = sending_service(&state, "withdrawal")?.withdraw_creator(&auth.creator_id, &auth.merchant_id, &request).await?;
    Ok((StatusCode::CREATED, Json(batch)))
}
