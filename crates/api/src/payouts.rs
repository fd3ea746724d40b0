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

/// Query of `GET /v1/payouts`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Payouts per page, 1–100 (20 when absent).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// A payout id: the page holds the payouts after it (older).
    pub starting_after: Option<String>,
    /// A payout id: the page holds the payouts before it (newer).
    pub ending_before: Option<String>,
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
    responses((status = 200, body = super::List<PayoutView>, description = "the payout batches, newest first"),
        (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody),
        (status = 422, body = super::openapi::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    _auth: FinanceAuth,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<super::List<PayoutView>>, ApiError> {
    let query = super::list_query(query)?;
    let page = super::page(query.limit, query.starting_after, query.ending_before, super::CursorKind::Id("po"), super::PageSize::LIST)?;
    if let Some(status) = &query.status {
        if !["created", "sent", "confirmed", "failed"].contains(&status.as_str()) {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "parameter_invalid",
                "status must be created, sent, confirmed or failed",
            ));
        }
    }
    Ok(Json(super::List::of(payout::store::list(&state.pool, &page, query.status.as_deref()).await?)))
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

#[utoipa::path(get, path = "/v1/creators/me/payouts", tag = "creators", security(("bearer" = [])), params(super::PageQuery),
    responses((status = 200, body = super::List<CreatorPayoutView>, description = "the creator's payouts, newest first"),
        (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody),
        (status = 422, body = super::openapi::ErrorBody)))]
pub async fn mine(
    State(state): State<AppState>,
    auth: CreatorAuth,
    query: Result<Query<super::PageQuery>, QueryRejection>,
) -> Result<Json<super::List<CreatorPayoutView>>, ApiError> {
    let page = super::list_query(query)?.page("po")?;
    Ok(Json(super::List::of(payout::store::creator_payouts(&state.pool, &auth.creator_id, &page).await?)))
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
