//! Payouts. Finance and admin keys: `POST /v1/payouts/run`, `GET /v1/payouts`, `GET /v1/payouts/{id}`.
//! A creator key: `GET /v1/creators/me/payouts`.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;

use crate::payout::{self, CreatorPayoutView, PayoutError, PayoutView, RunRequest, RunSummary};

use super::auth::{CreatorAuth, FinanceAuth};
use super::error::ApiError;
use super::AppState;

impl From<PayoutError> for ApiError {
    fn from(error: PayoutError) -> Self {
        match error {
            PayoutError::ChainNotPayable { .. } | PayoutError::AssetNotPayable { .. } => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid", error.to_string())
            }
            PayoutError::NotFound { .. } => Self::not_found("payout"),
            PayoutError::Invalid { field, reason } => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid", format!("{field}: {reason}"))
            }
            PayoutError::Refused { code, reason } => Self::new(StatusCode::CONFLICT, code, reason),
            PayoutError::Rpc { .. } => Self::new(StatusCode::SERVICE_UNAVAILABLE, "chain_unavailable", error.to_string()),
            PayoutError::Database(error) => Self::database(error),
            PayoutError::Ledger(error) => Self::ledger(error),
            PayoutError::Refund(error) => error.into(),
            PayoutError::Credits(error) => error.into(),
            _ => Self::internal(error),
        }
    }
}

/// A page of payouts, newest first.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct PayoutList {
    pub data: Vec<PayoutView>,
    /// Pass as `before` for the next page; absent on the last page.
    pub next_before: Option<String>,
}

/// A creator's payouts, newest first.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct CreatorPayoutList {
    pub data: Vec<CreatorPayoutView>,
}

/// Query of `GET /v1/payouts`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// 1 to 100; 20 when absent.
    pub limit: Option<i64>,
    /// A `po_…` id: payouts created before it.
    pub before: Option<String>,
    /// `created`, `sent`, `confirmed` or `failed`.
    pub status: Option<String>,
}

pub(crate) fn services(state: &AppState) -> Result<&payout::PayoutService, ApiError> {
    state.payouts.as_deref().ok_or_else(|| {
        ApiError::new(StatusCode::CONFLICT, "payouts_unavailable", "no enabled chain has a payout batcher")
    })
}

/// The payout service of a daemon that also sends what it writes: batches nobody sends would only
/// lock balances away, so without a hot wallet key writing one (`what`) is refused.
pub(crate) fn sending_service<'a>(state: &'a AppState, what: &str) -> Result<&'a payout::PayoutService, ApiError> {
    let service = services(state)?;
    if !service.executor_running() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "payouts_unavailable",
            format!("this daemon has no hot wallet key, so nothing would send the {what}"),
        ));
    }
    Ok(service)
}

#[utoipa::path(post, path = "/v1/payouts/run", tag = "payouts", security(("bearer" = [])),
    request_body = RunRequest,
    responses((status = 201, body = RunSummary, description = "the batches written; the executor sends them"),
        (status = 400, body = super::openapi::ErrorBody), (status = 401, body = super::openapi::ErrorBody),
        (status = 403, body = super::openapi::ErrorBody), (status = 409, body = super::openapi::ErrorBody),
        (status = 422, body = super::openapi::ErrorBody), (status = 503, body = super::openapi::ErrorBody)))]
pub async fn run(
    State(state): State<AppState>,
    _auth: FinanceAuth,
    body: Result<Json<RunRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<RunSummary>), ApiError> {
    let Json(request) = body?;
    Ok((StatusCode::CREATED, Json(sending_service(&state, "payouts")?.run(&request).await?)))
}

#[utoipa::path(get, path = "/v1/payouts", tag = "payouts", security(("bearer" = [])),
    params(ListQuery),
    responses((status = 200, body = PayoutList), (status = 400, body = super::openapi::ErrorBody),
        (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody),
        (status = 422, body = super::openapi::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    _auth: FinanceAuth,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<PayoutList>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "parameter_invalid", e.body_text()))?;
    let limit = query.limit.unwrap_or(20);
    if !(1..=payout::store::LIST_LIMIT_MAX).contains(&limit) {
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid", "limit must be 1 to 100"));
    }
    if let Some(status) = &query.status {
        if !["created", "sent", "confirmed", "failed"].contains(&status.as_str()) {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "parameter_invalid",
                "status must be created, sent, confirmed or failed",
            ));
        }
    }
    if query.before.as_deref().is_some_and(|b| !crate::ids::is_id(b, "po")) {
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid", "before must be a po_… id"));
    }
    let data = payout::store::list(&state.pool, limit, query.before.as_deref(), query.status.as_deref()).await?;
    let full = i64::try_from(data.len()).unwrap_or(0) == limit;
    let next_before = if full { data.last().map(|p| p.id.clone()) } else { None };
    Ok(Json(PayoutList { data, next_before }))
}

#[utoipa::path(get, path = "/v1/payouts/{id}", tag = "payouts", security(("bearer" = [])),
    params(("id" = String, Path, description = "the payout id, po_…")),
    responses((status = 200, body = PayoutView), (status = 401, body = super::openapi::ErrorBody),
        (status = 403, body = super::openapi::ErrorBody), (status = 404, body = super::openapi::ErrorBody)))]
pub async fn show(State(state): State<AppState>, _auth: FinanceAuth, Path(id): Path<String>) -> Result<Json<PayoutView>, ApiError> {
    if !crate::ids::is_id(&id, "po") {
        return Err(ApiError::not_found("payout"));
    }
    Ok(Json(payout::store::view(&state.pool, &id).await?))
}

#[utoipa::path(get, path = "/v1/creators/me/payouts", tag = "creators", security(("bearer" = [])),
    responses((status = 200, body = CreatorPayoutList), (status = 401, body = super::openapi::ErrorBody),
        (status = 403, body = super::openapi::ErrorBody)))]
pub async fn mine(State(state): State<AppState>, auth: CreatorAuth) -> Result<Json<CreatorPayoutList>, ApiError> {
    let data = payout::store::creator_payouts(&state.pool, &auth.creator_id, payout::store::LIST_LIMIT_MAX).await?;
    Ok(Json(CreatorPayoutList { data }))
}

#[utoipa::path(post, path = "/v1/payouts/{id}/cancel", tag = "payouts", security(("bearer" = [])),
    params(("id" = String, Path, description = "the payout id, po_…")),
    responses((status = 200, body = PayoutView, description = "the batch, `failed` (\"cancelled\"); every balance it took is back"),
        (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody),
        (status = 404, body = super::openapi::ErrorBody),
        (status = 409, body = super::openapi::ErrorBody, description = "payout_sent (its transaction may be mined) or payout_closed")))]
pub async fn cancel(State(state): State<AppState>, _auth: FinanceAuth, Path(id): Path<String>) -> Result<Json<PayoutView>, ApiError> {
    if !crate::ids::is_id(&id, "po") {
        return Err(ApiError::not_found("payout"));
    }
    let now = state.clock.now();
    Ok(Json(payout::store::cancel(&state.pool, &state.ledger, &id, "cancelled", now).await?))
}
