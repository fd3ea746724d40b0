//! Customers and their credits, over a merchant key. See [`payrail_credits`].
//!
//! Every movement (`grants`, `spend`, `transfers`) needs an `Idempotency-Key`: it is also the
//! movement's own key in the ledger, so a retry after any failure — even one the HTTP layer did not
//! keep the answer of — makes the movement once and answers it again.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;

use payrail_credits::currency::{self, CreateCurrency, CurrencyView};
use payrail_credits::customer::{self, CreateCustomer, CustomerView, UpdateCustomer};
use payrail_credits::movement::{self, GrantRequest, Moved, SpendRequest, TransferRequest};
use payrail_credits::view::{self, BalanceView, TransactionView};
use payrail_credits::CreditsError;

use super::auth::MerchantAuth;
use super::error::ApiError;
use super::AppState;

impl From<CreditsError> for ApiError {
    fn from(error: CreditsError) -> Self {
        match error {
            CreditsError::Invalid { .. } => Self::new(StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid", error.to_string()),
            CreditsError::NotFound { what, .. } => Self::not_found(what),
            CreditsError::Exists { .. } => Self::new(StatusCode::CONFLICT, "already_exists", error.to_string()),
            CreditsError::Insufficient { .. } => Self::new(StatusCode::PAYMENT_REQUIRED, "insufficient_credits", error.to_string()),
            CreditsError::KeyReused { .. } => Self::new(StatusCode::CONFLICT, "idempotency_key_reused", error.to_string()),
            CreditsError::Ledger(e) => Self::ledger(e),
            CreditsError::Database(e) => Self::database(e),
        }
    }
}

/// A page of customers, newest first.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct CustomerList {
    #[schema(value_type = String, example = "list")]
    pub object: &'static str,
    pub data: Vec<CustomerView>,
    pub has_more: bool,
}

/// Query of `GET /v1/customers`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CustomerQuery {
    /// Only the customer with this `external_id`.
    pub external_id: Option<String>,
    /// 1 to 100; 20 when absent.
    pub limit: Option<u32>,
    /// A `cus_…` id: customers created before it.
    pub starting_after: Option<String>,
}

/// The credit currencies of the merchant.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct CurrencyList {
    #[schema(value_type = String, example = "list")]
    pub object: &'static str,
    pub data: Vec<CurrencyView>,
    pub has_more: bool,
}

/// A page of a customer's credit history, newest first.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct TransactionList {
    #[schema(value_type = String, example = "list")]
    pub object: &'static str,
    pub data: Vec<TransactionView>,
    pub has_more: bool,
}

/// Query of `GET /v1/customers/{id}/transactions`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TransactionQuery {
    /// 1 to 100; 20 when absent.
    pub limit: Option<u32>,
    /// A `ctx_…` id: movements before it.
    pub starting_after: Option<String>,
}

fn query_error(e: QueryRejection) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "parameter_invalid", e.body_text())
}

/// The `Idempotency-Key` a movement needs.
fn movement_key(headers: &HeaderMap) -> Result<String, ApiError> {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "idempotency_key_required", "a movement of credits needs an Idempotency-Key header"))
}

fn moved(moved: Moved) -> (StatusCode, Json<TransactionView>) {
    (if moved.replayed { StatusCode::OK } else { StatusCode::CREATED }, Json(moved.transaction))
}

fn customer_id(id: &str) -> Result<(), ApiError> {
    if crate::ids::is_id(id, "cus") { Ok(()) } else { Err(ApiError::not_found("customer")) }
}

#[utoipa::path(post, path = "/v1/customers", tag = "credits", security(("bearer" = [])),
    request_body = CreateCustomer,
    responses((status = 201, body = CustomerView), (status = 401, body = super::openapi::ErrorBody),
        (status = 403, body = super::openapi::ErrorBody),
        (status = 409, body = super::openapi::ErrorBody, description = "already_exists: the external_id is taken"),
        (status = 415, body = super::openapi::ErrorBody), (status = 422, body = super::openapi::ErrorBody)))]
pub async fn create_customer(
    State(state): State<AppState>,
    auth: MerchantAuth,
    body: Result<Json<CreateCustomer>, JsonRejection>,
) -> Result<(StatusCode, Json<CustomerView>), ApiError> {
    let Json(body) = body?;
    Ok((StatusCode::CREATED, Json(customer::create(&state.pool, &auth.merchant_id, &body, state.clock.now()).await?)))
}

#[utoipa::path(get, path = "/v1/customers", tag = "credits", security(("bearer" = [])),
    params(CustomerQuery),
    responses((status = 200, body = CustomerList), (status = 400, body = super::openapi::ErrorBody),
        (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody),
        (status = 422, body = super::openapi::ErrorBody)))]
pub async fn list_customers(
    State(state): State<AppState>,
    auth: MerchantAuth,
    query: Result<Query<CustomerQuery>, QueryRejection>,
) -> Result<Json<CustomerList>, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    let limit = super::page_limit(Some(query.limit.unwrap_or(20)), customer::LIST_LIMIT_MAX)?;
    let starting_after = super::cursor(query.starting_after.as_deref(), "cus")?;
    let (data, has_more) = customer::list(&state.pool, &auth.merchant_id, query.external_id.as_deref(), limit, starting_after).await?;
    Ok(Json(CustomerList { object: "list", data, has_more }))
}

#[utoipa::path(get, path = "/v1/customers/{id}", tag = "credits", security(("bearer" = [])),
    params(("id" = String, Path, description = "the customer, cus_…")),
    responses((status = 200, body = CustomerView), (status = 401, body = super::openapi::ErrorBody),
        (status = 403, body = super::openapi::ErrorBody), (status = 404, body = super::openapi::ErrorBody)))]
pub async fn get_customer(State(state): State<AppState>, auth: MerchantAuth, Path(id): Path<String>) -> Result<Json<CustomerView>, ApiError> {
    customer_id(&id)?;
    Ok(Json(customer::get(&state.pool, &auth.merchant_id, &id).await?))
}

#[utoipa::path(patch, path = "/v1/customers/{id}", tag = "credits", security(("bearer" = [])),
    params(("id" = String, Path, description = "the customer, cus_…")),
    request_body = UpdateCustomer,
    responses((status = 200, body = CustomerView), (status = 401, body = super::openapi::ErrorBody),
        (status = 403, body = super::openapi::ErrorBody), (status = 404, body = super::openapi::ErrorBody),
        (status = 415, body = super::openapi::ErrorBody), (status = 422, body = super::openapi::ErrorBody)))]
pub async fn update_customer(
    State(state): State<AppState>,
    auth: MerchantAuth,
    Path(id): Path<String>,
    body: Result<Json<UpdateCustomer>, JsonRejection>,
) -> Result<Json<CustomerView>, ApiError> {
    customer_id(&id)?;
    let Json(body) = body?;
    Ok(Json(customer::update(&state.pool, &auth.merchant_id, &id, &body, state.clock.now()).await?))
}

#[utoipa::path(post, path = "/v1/credit_currencies", tag = "credits", security(("bearer" = [])),
    request_body = CreateCurrency,
    responses((status = 201, body = CurrencyView), (status = 401, body = super::openapi::ErrorBody),
        (status = 403, body = super::openapi::ErrorBody),
        (status = 409, body = super::openapi::ErrorBody, description = "already_exists: the code is taken"),
        (status = 415, body = super::openapi::ErrorBody), (status = 422, body = super::openapi::ErrorBody)))]
pub async fn create_currency(
    State(state): State<AppState>,
    auth: MerchantAuth,
    body: Result<Json<CreateCurrency>, JsonRejection>,
) -> Result<(StatusCode, Json<CurrencyView>), ApiError> {
    let Json(body) = body?;
    Ok((StatusCode::CREATED, Json(currency::create(&state.pool, &auth.merchant_id, &body, state.clock.now()).await?)))
}

#[utoipa::path(get, path = "/v1/credit_currencies", tag = "credits", security(("bearer" = [])),
    responses((status = 200, body = CurrencyList), (status = 401, body = super::openapi::ErrorBody),
        (status = 403, body = super::openapi::ErrorBody)))]
pub async fn list_currencies(State(state): State<AppState>, auth: MerchantAuth) -> Result<Json<CurrencyList>, ApiError> {
    Ok(Json(CurrencyList { object: "list", data: currency::list(&state.pool, &auth.merchant_id).await?, has_more: false }))
}

#[utoipa::path(post, path = "/v1/customers/{id}/grants", tag = "credits", security(("bearer" = [])),
    params(("id" = String, Path, description = "the customer, cus_…"),
        ("Idempotency-Key" = String, Header, min_length = 1, max_length = 255, pattern = "^[!-~]+$", description = "required: the movement's own key")),
    request_body = GrantRequest,
    responses((status = 201, body = TransactionView, description = "the grant, a new lot"),
        (status = 200, body = TransactionView, description = "made before under this Idempotency-Key"),
        (status = 400, body = super::openapi::ErrorBody, description = "idempotency_key_required"),
        (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody),
        (status = 404, body = super::openapi::ErrorBody),
        (status = 409, body = super::openapi::ErrorBody, description = "idempotency_key_reused"),
        (status = 415, body = super::openapi::ErrorBody), (status = 422, body = super::openapi::ErrorBody)))]
pub async fn grant(
    State(state): State<AppState>,
    auth: MerchantAuth,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Json<GrantRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<TransactionView>), ApiError> {
    customer_id(&id)?;
    let Json(body) = body?;
    let key = movement_key(&headers)?;
    Ok(moved(movement::grant(&state.pool, &state.ledger, &auth.merchant_id, &id, &body, &key, state.clock.now()).await?))
}

#[utoipa::path(post, path = "/v1/customers/{id}/spend", tag = "credits", security(("bearer" = [])),
    params(("id" = String, Path, description = "the customer, cus_…"),
        ("Idempotency-Key" = String, Header, min_length = 1, max_length = 255, pattern = "^[!-~]+$", description = "required: the movement's own key")),
    request_body = SpendRequest,
    responses((status = 201, body = TransactionView, description = "the spend, with the lots taken and the shares"),
        (status = 200, body = TransactionView, description = "made before under this Idempotency-Key"),
        (status = 400, body = super::openapi::ErrorBody, description = "idempotency_key_required"),
        (status = 401, body = super::openapi::ErrorBody),
        (status = 402, body = super::openapi::ErrorBody, description = "insufficient_credits, with what is available"),
        (status = 403, body = super::openapi::ErrorBody), (status = 404, body = super::openapi::ErrorBody),
        (status = 409, body = super::openapi::ErrorBody, description = "idempotency_key_reused"),
        (status = 415, body = super::openapi::ErrorBody), (status = 422, body = super::openapi::ErrorBody)))]
pub async fn spend(
    State(state): State<AppState>,
    auth: MerchantAuth,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Json<SpendRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<TransactionView>), ApiError> {
    customer_id(&id)?;
    let Json(body) = body?;
    let key = movement_key(&headers)?;
    Ok(moved(movement::spend(&state.pool, &state.ledger, &auth.merchant_id, &id, &body, &key, state.clock.now()).await?))
}

#[utoipa::path(post, path = "/v1/transfers", tag = "credits", security(("bearer" = [])),
    params(("Idempotency-Key" = String, Header, min_length = 1, max_length = 255, pattern = "^[!-~]+$", description = "required: the movement's own key")),
    request_body = TransferRequest,
    responses((status = 201, body = TransactionView, description = "the sender's side of the transfer"),
        (status = 200, body = TransactionView, description = "made before under this Idempotency-Key"),
        (status = 400, body = super::openapi::ErrorBody, description = "idempotency_key_required"),
        (status = 401, body = super::openapi::ErrorBody),
        (status = 402, body = super::openapi::ErrorBody, description = "insufficient_credits, with what is available"),
        (status = 403, body = super::openapi::ErrorBody), (status = 404, body = super::openapi::ErrorBody),
        (status = 409, body = super::openapi::ErrorBody, description = "idempotency_key_reused"),
        (status = 415, body = super::openapi::ErrorBody), (status = 422, body = super::openapi::ErrorBody)))]
pub async fn transfer(
    State(state): State<AppState>,
    auth: MerchantAuth,
    headers: HeaderMap,
    body: Result<Json<TransferRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<TransactionView>), ApiError> {
    let Json(body) = body?;
    customer_id(&body.from_customer)?;
    if let Some(to) = &body.to_customer {
        customer_id(to)?;
    }
    let key = movement_key(&headers)?;
    Ok(moved(movement::transfer(&state.pool, &state.ledger, &auth.merchant_id, &body, &key, state.clock.now()).await?))
}

#[utoipa::path(get, path = "/v1/customers/{id}/balance", tag = "credits", security(("bearer" = [])),
    params(("id" = String, Path, description = "the customer, cus_…")),
    responses((status = 200, body = BalanceView), (status = 401, body = super::openapi::ErrorBody),
        (status = 403, body = super::openapi::ErrorBody), (status = 404, body = super::openapi::ErrorBody)))]
pub async fn balance(State(state): State<AppState>, auth: MerchantAuth, Path(id): Path<String>) -> Result<Json<BalanceView>, ApiError> {
    customer_id(&id)?;
    Ok(Json(view::balance(&state.pool, &auth.merchant_id, &id, state.clock.now()).await?))
}

#[utoipa::path(get, path = "/v1/customers/{id}/transactions", tag = "credits", security(("bearer" = [])),
    params(("id" = String, Path, description = "the customer, cus_…"), TransactionQuery),
    responses((status = 200, body = TransactionList), (status = 400, body = super::openapi::ErrorBody),
        (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody),
        (status = 404, body = super::openapi::ErrorBody), (status = 422, body = super::openapi::ErrorBody)))]
pub async fn transactions(
    State(state): State<AppState>,
    auth: MerchantAuth,
    Path(id): Path<String>,
    query: Result<Query<TransactionQuery>, QueryRejection>,
) -> Result<Json<TransactionList>, ApiError> {
    customer_id(&id)?;
    let Query(query) = query.map_err(query_error)?;
    let limit = super::page_limit(Some(query.limit.unwrap_or(20)), view::LIST_LIMIT_MAX)?;
    let starting_after = super::cursor(query.starting_after.as_deref(), "ctx")?;
    let (data, has_more) = view::transactions(&state.pool, &auth.merchant_id, &id, limit, starting_after).await?;
    Ok(Json(TransactionList { object: "list", data, has_more }))
}
