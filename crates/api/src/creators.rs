//! Creators (merchant key): `POST /v1/creators`, `GET /v1/creators`, `PUT`/`GET /v1/split_rules`.
//! A creator's own view (creator key): `GET /v1/creators/me`, `GET /v1/creators/me/statement`.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::creator::{self, CreateCreator, CreatorAccount, CreatorError, CreatorView, NewCreator, SplitRules, StatementLine};

use super::auth::{CreatorAuth, MerchantAuth};
use super::statements::{self, StatementQuery};
use super::error::ApiError;
use super::AppState;

impl From<CreatorError> for ApiError {
    fn from(error: CreatorError) -> Self {
        match error {
            CreatorError::Invalid { field, reason } => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid", format!("{field}: {reason}"))
            }
            CreatorError::NotFound { .. } => Self::not_found("creator"),
            CreatorError::Database(error) => Self::database(error),
            CreatorError::Ledger(error) => Self::ledger(error),
        }
    }
}

#[utoipa::path(post, path = "/v1/creators", tag = "creators", security(("bearer" = [])),
    request_body = CreateCreator,
    responses((status = 201, body = NewCreator, description = "the creator and its API key, shown once"),
        (status = 400, body = super::openapi::ErrorBody), (status = 401, body = super::openapi::ErrorBody),
        (status = 403, body = super::openapi::ErrorBody), (status = 422, body = super::openapi::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    auth: MerchantAuth,
    body: Result<Json<CreateCreator>, JsonRejection>,
) -> Result<(StatusCode, Json<NewCreator>), ApiError> {
    let Json(request) = body?;
    let created = creator::create_creator(&state.pool, &auth.merchant_id, &request).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

#[utoipa::path(get, path = "/v1/creators", tag = "creators", security(("bearer" = [])), params(super::PageQuery),
    responses((status = 200, body = super::List<CreatorView>, description = "the merchant's creators, oldest first"),
        (status = 401, body = super::openapi::ErrorBody),
        (status = 403, body = super::openapi::ErrorBody), (status = 422, body = super::openapi::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    auth: MerchantAuth,
    query: Result<Query<super::PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<super::List<CreatorView>>, ApiError> {
    let page = super::list_query(query)?.page("cr")?;
    Ok(Json(super::List::of(creator::list_creators(&state.pool, &auth.merchant_id, &page).await?)))
}

#[utoipa::path(get, path = "/v1/creators/{id}", tag = "creators", security(("bearer" = [])),
    params(("id" = String, Path, description = "the creator id, cr_…")),
    responses((status = 200, body = CreatorView), (status = 401, body = super::openapi::ErrorBody),
        (status = 403, body = super::openapi::ErrorBody), (status = 404, body = super::openapi::ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    auth: MerchantAuth,
    Path(id): Path<String>,
) -> Result<Json<CreatorView>, ApiError> {
    if !crate::ids::is_id(&id, "cr") {
        return Err(ApiError::not_found("creator"));
    }
    Ok(Json(creator::get_creator(&state.pool, &auth.merchant_id, &id).await?))
}

#[utoipa::path(put, path = "/v1/split_rules", tag = "creators", security(("bearer" = [])),
    request_body = SplitRules,
    responses((status = 200, body = SplitRules, description = "the rules now in force; existing invoices keep theirs"),
        (status = 400, body = super::openapi::ErrorBody), (status = 401, body = super::openapi::ErrorBody),
        (status = 403, body = super::openapi::ErrorBody), (status = 422, body = super::openapi::ErrorBody)))]
pub async fn put_split_rules(
    State(state): State<AppState>,
    auth: MerchantAuth,
    body: Result<Json<SplitRules>, JsonRejection>,
) -> Result<Json<SplitRules>, ApiError> {
    let Json(rules) = body?;
    Ok(Json(creator::set_split_rules(&state.pool, &auth.merchant_id, &rules).await?))
}

#[utoipa::path(get, path = "/v1/split_rules", tag = "creators", security(("bearer" = [])),
    responses((status = 200, body = SplitRules), (status = 401, body = super::openapi::ErrorBody),
        (status = 403, body = super::openapi::ErrorBody)))]
pub async fn get_split_rules(State(state): State<AppState>, auth: MerchantAuth) -> Result<Json<SplitRules>, ApiError> {
    let mut conn = state.pool.acquire().await.map_err(ApiError::database)?;
    Ok(Json(creator::split_rules(&mut conn, &auth.merchant_id).await?))
}

#[utoipa::path(get, path = "/v1/creators/me", tag = "creators", security(("bearer" = [])),
    responses((status = 200, body = CreatorAccount), (status = 401, body = super::openapi::ErrorBody),
        (status = 403, body = super::openapi::ErrorBody)))]
pub async fn me(State(state): State<AppState>, auth: CreatorAuth) -> Result<Json<CreatorAccount>, ApiError> {
    Ok(Json(creator::creator_account(&state.pool, &state.ledger, &auth.creator_id).await?))
}

/// `GET /v1/creators/me/statement` as JSON.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Statement {
    #[schema(value_type = String, example = "list")]
    pub object: &'static str,
    pub creator_id: String,
    pub data: Vec<StatementLine>,
    /// More lines follow in the direction asked: ask again with `starting_after` = the last
    /// line's `entry_id` (or `ending_before` = the first's). In CSV, the `Payrail-Has-More` header.
    pub has_more: bool,
}


#[utoipa::path(get, path = "/v1/creators/me/statement", tag = "creators", security(("bearer" = [])),
    params(StatementQuery),
    responses((status = 200, body = Statement, description = "JSON, or with format=csv text/csv with the same columns"),
        (status = 400, body = super::openapi::ErrorBody), (status = 401, body = super::openapi::ErrorBody),
        (status = 403, body = super::openapi::ErrorBody), (status = 422, body = super::openapi::ErrorBody)))]
pub async fn statement(
    State(state): State<AppState>,
    auth: CreatorAuth,
    query: Result<Query<StatementQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let asked = statements::asked(query)?;
    let (lines, has_more) = creator::statement(&state.read_pool, &auth.creator_id, &asked.range).await?;
    if asked.csv {
        return Ok(statements::csv_page(creator::statement_csv(&lines), has_more));
    }
    Ok(Json(Statement { object: "list", creator_id: auth.creator_id, data: lines, has_more }).into_response())
}
