//! `PUT`/`GET /v1/merchants/me/bitcoin` (merchant key): the watch-only descriptor the merchant's
//! Bitcoin deposit addresses come from. Invoices offer Bitcoin only once one is set.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;

use crate::merchant::bitcoin::SetDescriptor;
use crate::merchant::bitcoin::{bitcoin_settings, set_descriptor, AllocationError, BitcoinSettings};
use crate::invoice::DepositScheme;
use crate::money::ChainId;

use super::auth::MerchantAuth;
use super::error::ApiError;
use super::AppState;

impl From<AllocationError> for ApiError {
    fn from(error: AllocationError) -> Self {
        let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
        match &error {
            AllocationError::Descriptor(e) => Self::new(unprocessable, e.code(), e.to_string()),
            AllocationError::GapLimit { .. } => Self::new(unprocessable, "parameter_invalid", format!("gap_limit: {error}")),
            AllocationError::UnknownChain { .. } => Self::new(unprocessable, "chain_unsupported", error.to_string()),
            // Answered as any unusable descriptor, without saying why: that another merchant
            // registered these keys is theirs to know, not the caller's.
            AllocationError::InUse { .. } => {
                Self::new(unprocessable, "descriptor_invalid", "descriptor: cannot be used for deposit addresses")
            }
            AllocationError::Exhausted { .. } | AllocationError::Corrupt { .. } | AllocationError::Database(_) => {
                Self::internal(error)
            }
        }
    }
}

/// Query of both routes.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ChainQuery {
    /// CAIP-2 id of the Bitcoin chain; the first enabled one when absent.
    pub chain: Option<String>,
}

/// The enabled Bitcoin chain the request means.
fn chain_of(state: &AppState, query: &ChainQuery) -> Result<ChainId, ApiError> {
    let mut chains = state
        .catalog
        .all()
        .iter()
        .filter(|a| a.deposit == Some(DepositScheme::Bitcoin))
        .map(|a| a.chain().clone());
    let not_enabled = || ApiError::new(StatusCode::NOT_FOUND, "chain_not_enabled", "no Bitcoin chain is enabled on this server");
    match &query.chain {
        None => chains.next().ok_or_else(not_enabled),
        Some(text) => {
            let wanted: ChainId = text
                .parse()
                .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid", format!("chain: {e}")))?;
            chains.find(|c| *c == wanted).ok_or_else(not_enabled)
        }
    }
}

#[utoipa::path(put, path = "/v1/merchants/me/bitcoin", tag = "merchants", security(("bearer" = [])),
    params(ChainQuery), request_body = SetDescriptor,
    responses((status = 200, body = BitcoinSettings, description = "the descriptor now in force; new invoices derive from it"),
        (status = 400, body = super::openapi::ErrorBody), (status = 401, body = super::openapi::ErrorBody),
        (status = 403, body = super::openapi::ErrorBody), (status = 404, body = super::openapi::ErrorBody),
        (status = 422, body = super::openapi::ErrorBody,
            description = "descriptor_invalid (also for keys that cannot be used here, without saying why), descriptor_checksum, descriptor_private_key, descriptor_not_ranged, descriptor_unsupported, descriptor_network, parameter_invalid")))]
pub async fn put_descriptor(
    State(state): State<AppState>,
    auth: MerchantAuth,
    Query(query): Query<ChainQuery>,
    body: Result<Json<SetDescriptor>, JsonRejection>,
) -> Result<Json<BitcoinSettings>, ApiError> {
    let Json(request) = body?;
    let chain = chain_of(&state, &query)?;
    let settings = set_descriptor(&state.pool, &auth.merchant_id, &chain, &request).await?;
    tracing::info!(target: "api", merchant = %auth.merchant_id, %chain, first_address = %settings.first_address, "bitcoin descriptor set");
    Ok(Json(settings))
}

#[utoipa::path(get, path = "/v1/merchants/me/bitcoin", tag = "merchants", security(("bearer" = [])),
    params(ChainQuery),
    responses((status = 200, body = BitcoinSettings), (status = 401, body = super::openapi::ErrorBody),
        (status = 403, body = super::openapi::ErrorBody),
        (status = 404, body = super::openapi::ErrorBody, description = "no descriptor set (or no Bitcoin chain enabled)")))]
pub async fn get_descriptor(
    State(state): State<AppState>,
    auth: MerchantAuth,
    Query(query): Query<ChainQuery>,
) -> Result<Json<BitcoinSettings>, ApiError> {
    let chain = chain_of(&state, &query)?;
    let mut conn = state.pool.acquire().await.map_err(ApiError::database)?;
    bitcoin_settings(&mut conn, &auth.merchant_id, &chain)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("bitcoin descriptor"))
}
