//! Reconciliation (finance and admin keys): `POST /v1/reconciliation` runs one, `GET
//! /v1/reconciliation` lists the stored runs, `GET /v1/reconciliation/{id}` shows a report as JSON
//! or CSV (one row per item).

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::reconcile::store::{self, RunSummary};
use crate::reconcile::{compare, ReconcileError, Report};

use super::auth::FinanceAuth;
use super::error::ApiError;
use super::AppState;

/// Most blocks one request may reconcile; longer ranges run from the command line, which resumes.
pub const API_RANGE_BLOCKS_MAX: u64 = 100_000;

impl From<ReconcileError> for ApiError {
    fn from(error: ReconcileError) -> Self {
        match error {
            ReconcileError::UnknownChain { .. } | ReconcileError::Unsupported { .. } | ReconcileError::Range { .. } => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid", error.to_string())
            }
            ReconcileError::NotFound { .. } => Self::not_found("reconciliation"),
            ReconcileError::Chain { .. } => Self::new(StatusCode::SERVICE_UNAVAILABLE, "chain_unavailable", error.to_string()),
            ReconcileError::Processor { retryable: true, .. } => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "processor_unavailable", error.to_string())
            }
            _ => Self::internal(error),
        }
    }
}

/// Body of `POST /v1/reconciliation`: a chain and a block range, or `"chain":"stripe"` and a time
/// range.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// A chain by name or CAIP-2 id, or `stripe` for card payments.
    pub chain: String,
    /// Chains: the first block (0 when absent).
    pub from_block: Option<u64>,
    /// Chains: the last block; the chain's tip when absent.
    pub to_block: Option<u64>,
    /// Stripe: RFC 3339, charges created at or after.
    pub from_time: Option<chrono::DateTime<chrono::Utc>>,
    /// Stripe: RFC 3339, charges created before.
    pub to_time: Option<chrono::DateTime<chrono::Utc>>,
}

/// Query of `GET /v1/reconciliation/{id}`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ReportQuery {
    /// `json` (the default) or `csv`.
    pub format: Option<String>,
}

#[utoipa::path(post, path = "/v1/reconciliation", tag = "finance", security(("bearer" = [])),
    request_body = RunRequest,
    responses((status = 201, body = Report, description = "the stored report; `ok` is false when anything does not match"),
        (status = 400, body = super::openapi::ErrorBody), (status = 401, body = super::openapi::ErrorBody),
        (status = 403, body = super::openapi::ErrorBody), (status = 409, body = super::openapi::ErrorBody),
        (status = 422, body = super::openapi::ErrorBody), (status = 503, body = super::openapi::ErrorBody)))]
pub async fn run(
    State(state): State<AppState>,
    _auth: FinanceAuth,
    body: Result<Json<RunRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Report>), ApiError> {
    let Json(request) = body?;
    if request.chain == "stripe" {
        let card = state.card.as_ref().ok_or_else(|| {
            ApiError::new(StatusCode::CONFLICT, "card_unavailable", "Stripe is not configured on this daemon")
        })?;
        let (Some(from), Some(to)) = (request.from_time, request.to_time) else {
            return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid", "stripe needs from_time and to_time"));
        };
        let report = crate::reconcile::stripe::reconcile_stripe(&state.pool, &card.client, from, to).await?;
        return Ok((StatusCode::CREATED, Json(report)));
    }
    let from_block = request.from_block.unwrap_or(0);
    if let Some(to) = request.to_block {
        if to >= from_block && to - from_block >= API_RANGE_BLOCKS_MAX {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "parameter_invalid",
                format!("at most {API_RANGE_BLOCKS_MAX} blocks per request; use `payrail reconcile` for longer ranges"),
            ));
        }
    }
    let id = state.reconciler.start(&request.chain, from_block, request.to_block).await?;
    let report = state.reconciler.complete(&id, &|_| {}).await?;
    Ok((StatusCode::CREATED, Json(report)))
}

#[utoipa::path(get, path = "/v1/reconciliation", tag = "finance", security(("bearer" = [])),
    params(super::PageQuery),
    responses((status = 200, body = super::List<RunSummary>, description = "stored runs, newest first"),
        (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody),
        (status = 422, body = super::openapi::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    _auth: FinanceAuth,
    query: Result<Query<super::PageQuery>, QueryRejection>,
) -> Result<Json<super::List<RunSummary>>, ApiError> {
    let page = super::list_query(query)?.page("rec")?;
    Ok(Json(super::List::of(store::list(&state.pool, &page).await?)))
}

#[utoipa::path(get, path = "/v1/reconciliation/{id}", tag = "finance", security(("bearer" = [])),
    params(("id" = String, Path, description = "the run id, rec_…"), ReportQuery),
    responses((status = 200, body = Report, description = "JSON, or with format=csv one row per item"),
        (status = 400, body = super::openapi::ErrorBody), (status = 401, body = super::openapi::ErrorBody),
        (status = 403, body = super::openapi::ErrorBody), (status = 404, body = super::openapi::ErrorBody),
        (status = 422, body = super::openapi::ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    _auth: FinanceAuth,
    Path(id): Path<String>,
    query: Result<Query<ReportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "parameter_invalid", e.body_text()))?;
    if !crate::ids::is_id(&id, "rec") {
        return Err(ApiError::not_found("reconciliation"));
    }
    let report = store::report(&state.pool, &id).await?;
    match query.format.as_deref().unwrap_or("json") {
        "json" => Ok(Json(report).into_response()),
        "csv" => Ok(super::csv_response(compare::items_csv(&report))),
        _ => Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid", "format must be json or csv")),
    }
}
