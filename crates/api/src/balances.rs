//! `GET /v1/balances`: what the platform owes the merchant, per asset, and what it holds for review.

use axum::extract::State;
use axum::Json;
use serde::Serialize;

use payrail_store::ledger::AccountCode;
use crate::money::{AssetId, Fiat};

use super::auth::MerchantAuth;
use super::error::ApiError;
use super::AppState;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BalanceLine {
    pub asset: String,
    /// Decimal string in whole units, when the asset's decimals are known.
    pub amount: String,
    pub amount_minor: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Balances {
    #[schema(value_type = String, example = "balances")]
    pub object: &'static str,
    pub merchant_id: String,
    /// Credited from paid invoices.
    pub available: Vec<BalanceLine>,
    /// Late payments, payments to expired invoices or in unquoted assets, held for review.
    pub unapplied: Vec<BalanceLine>,
}

#[utoipa::path(get, path = "/v1/balances", tag = "balances", security(("bearer" = [])),
    responses((status = 200, body = Balances), (status = 401, body = super::openapi::ErrorBody)))]
pub async fn show(State(state): State<AppState>, auth: MerchantAuth) -> Result<Json<Balances>, ApiError> {
    let mut conn = state.pool.acquire().await.map_err(ApiError::database)?;
    let lines = |rows: Vec<(String, payrail_store::ledger::SignedAmount)>| -> Vec<BalanceLine> {
        rows.into_iter()
            .map(|(asset, balance)| {
                let decimals = decimals_of(&state, &asset);
                let magnitude = balance.magnitude();
                let sign = if balance.is_negative() { "-" } else { "" };
                BalanceLine {
                    amount: match decimals {
                        Some(d) => format!("{sign}{}", magnitude.to_decimal_string(d)),
                        None => balance.to_string(),
                    },
                    amount_minor: balance.to_string(),
                    asset,
                }
            })
            .collect()
    };
    let available = state
        .ledger
        .balances(&mut conn, &AccountCode::merchant(&auth.merchant_id))
        .await
        .map_err(ApiError::ledger)?;
    let unapplied = state
        .ledger
        .balances(&mut conn, &AccountCode::unapplied(&auth.merchant_id))
        .await
        .map_err(ApiError::ledger)?;
    Ok(Json(Balances {
        object: "balances",
        merchant_id: auth.merchant_id.clone(),
        available: lines(available),
        unapplied: lines(unapplied),
    }))
}

fn decimals_of(state: &AppState, asset: &str) -> Option<u8> {
    if let Some(code) = asset.strip_prefix("iso4217:") {
        return code.parse::<Fiat>().ok().map(|f| f.minor_units());
    }
    let id: AssetId = asset.parse().ok()?;
    state.catalog.get(&id).map(|a| a.decimals)
}
