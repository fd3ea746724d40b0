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
use payrail_credits::movement::{self, AdjustmentRequest, GrantRequest, Moved, SpendRequest, TransferRequest};
use payrail_credits::pack::{self, CreatePack, PackView, UpdatePack};
use payrail_credits::limits::{self, Limits};
use payrail_credits::promo::{self, CreatePromo, PromoView};
use payrail_credits::purchase::{self, PurchaseView};
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
            CreditsError::PromoRefused { .. } => Self::new(StatusCode::CONFLICT, "promo_refused", error.to_string()),
            CreditsError::LimitExceeded { .. } => Self::new(StatusCode::CONFLICT, "credit_limit_exceeded", error.to_string()),
            CreditsError::Ledger(e) => Self::ledger(e),
            CreditsError::Database(e) => Self::database(e),
        }
    }
}

/// Query of `GET /v1/customers`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CustomerQuery {
    /// Only the customer with this `external_id`.
    pub external_id: Option<String>,
    /// Customers per page, 1–100 (20 when absent).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// A customer id: the page holds the customers after it (older).
    pub starting_after: Option<String>,
    /// A customer id: the page holds the customers before it (newer).
    pub ending_before: Option<String>,
}

/// Query of `GET /v1/customers/{id}/transactions`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TransactionQuery {
    /// Movements per page, 1–100 (20 when absent).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// A movement id: the page holds the movements after it (older).
    pub starting_after: Option<String>,
    /// A movement id: the page holds the movements before it (newer).
    pub ending_before: Option<String>,
    /// `json` (the default) or `csv` (one record per movement; `Payrail-Has-More: true` when
    /// another page follows).
    pub format: Option<String>,
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
    responses((status = 200, body = super::List<CustomerView>, description = "the merchant's customers, newest first"),
        (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody),
        (status = 422, body = super::openapi::ErrorBody)))]
pub async fn list_customers(
    State(state): State<AppState>,
    auth: MerchantAuth,
    query: Result<Query<CustomerQuery>, QueryRejection>,
) -> Result<Json<super::List<CustomerView>>, ApiError> {
    let query = super::list_query(query)?;
    let page = super::page(query.limit, query.starting_after, query.ending_before, super::CursorKind::Id("cus"), super::PageSize::LIST)?;
    Ok(Json(super::List::of(customer::list(&state.pool, &auth.merchant_id, query.external_id.as_deref(), &page).await?)))
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
    params(super::PageQuery),
    responses((status = 200, body = super::List<CurrencyView>, description = "the merchant's credit currencies, by code; the cursors are codes"),
        (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody),
        (status = 422, body = super::openapi::ErrorBody)))]
pub async fn list_currencies(
    State(state): State<AppState>,
    auth: MerchantAuth,
    query: Result<Query<super::PageQuery>, QueryRejection>,
) -> Result<Json<super::List<CurrencyView>>, ApiError> {
    let page = super::list_query(query)?.page_by(super::CursorKind::Code)?;
    Ok(Json(super::List::of(currency::list(&state.pool, &auth.merchant_id, &page).await?)))
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
    responses((status = 200, body = super::List<TransactionView>,
            description = "the customer's movements, newest first; or with format=csv, text/csv: id, created_at, kind, currency, amount_minor, source, description, resource, counterparty, entry_id"),
        (status = 400, body = super::openapi::ErrorBody),
        (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody),
        (status = 404, body = super::openapi::ErrorBody), (status = 422, body = super::openapi::ErrorBody)))]
pub async fn transactions(
    State(state): State<AppState>,
    auth: MerchantAuth,
    Path(id): Path<String>,
    query: Result<Query<TransactionQuery>, QueryRejection>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    customer_id(&id)?;
    let query = super::list_query(query)?;
    let csv = match query.format.as_deref().unwrap_or("json") {
        "json" => false,
        "csv" => true,
        _ => return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid", "format must be json or csv")),
    };
    let page = super::page(query.limit, query.starting_after, query.ending_before, super::CursorKind::Id("ctx"), super::PageSize::LIST)?;
    let (data, has_more) = view::transactions(&state.pool, &auth.merchant_id, &id, &page).await?;
    if !csv {
        return Ok(Json(super::List::of((data, has_more))).into_response());
    }
    let mut body = String::new();
    let header = ["id", "created_at", "kind", "currency", "amount_minor", "source", "description", "resource", "counterparty", "entry_id"];
    payrail_core::csv::push_record(&mut body, header);
    for t in &data {
        let (created, entry) = (t.created_at.to_rfc3339(), t.entry_id.to_string());
        let fields = [
            t.id.as_str(),
            created.as_str(),
            t.kind.as_str(),
            t.currency.as_str(),
            t.amount_minor.as_str(),
            t.source.as_deref().unwrap_or(""),
            t.description.as_deref().unwrap_or(""),
            t.resource.as_deref().unwrap_or(""),
            t.counterparty.as_deref().unwrap_or(""),
            entry.as_str(),
        ];
        payrail_core::csv::push_record(&mut body, fields);
    }
    Ok(super::statements::csv_page(body, has_more))
}

/// Body of `POST /v1/customers/{id}/purchases`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PurchaseBody {
    /// The pack, `pack_…`.
    pub pack: String,
    /// A promo code that applies to packs (any case).
    pub promo_code: Option<String>,
}

#[utoipa::path(post, path = "/v1/promo_codes", tag = "credits", security(("bearer" = [])),
    request_body = CreatePromo,
    responses((status = 201, body = PromoView), (status = 401, body = super::openapi::ErrorBody),
        (status = 403, body = super::openapi::ErrorBody),
        (status = 409, body = super::openapi::ErrorBody, description = "already_exists: the code is taken (in any case)"),
        (status = 415, body = super::openapi::ErrorBody), (status = 422, body = super::openapi::ErrorBody)))]
pub async fn create_promo(
    State(state): State<AppState>,
    auth: MerchantAuth,
    body: Result<Json<CreatePromo>, JsonRejection>,
) -> Result<(StatusCode, Json<PromoView>), ApiError> {
    let Json(body) = body?;
    Ok((StatusCode::CREATED, Json(promo::create(&state.pool, &auth.merchant_id, &body, state.clock.now()).await?)))
}

#[utoipa::path(get, path = "/v1/credit_limits", tag = "credits", security(("bearer" = [])),
    responses((status = 200, body = Limits, description = "the per-customer limits; all null when none are set"),
        (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody)))]
pub async fn get_limits(State(state): State<AppState>, auth: MerchantAuth) -> Result<Json<Limits>, ApiError> {
    Ok(Json(limits::get(&state.pool, &auth.merchant_id).await?))
}

#[utoipa::path(put, path = "/v1/credit_limits", tag = "credits", security(("bearer" = [])),
    request_body = Limits,
    responses((status = 200, body = Limits), (status = 401, body = super::openapi::ErrorBody),
        (status = 403, body = super::openapi::ErrorBody), (status = 415, body = super::openapi::ErrorBody),
        (status = 422, body = super::openapi::ErrorBody)))]
pub async fn put_limits(State(state): State<AppState>, auth: MerchantAuth, body: Result<Json<Limits>, JsonRejection>) -> Result<Json<Limits>, ApiError> {
    let Json(body) = body?;
    Ok(Json(limits::set(&state.pool, &auth.merchant_id, &body, state.clock.now()).await?))
}

#[utoipa::path(get, path = "/v1/promo_codes", tag = "credits", security(("bearer" = [])),
    params(super::PageQuery),
    responses((status = 200, body = super::List<PromoView>, description = "the merchant's promo codes, oldest first"),
        (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody),
        (status = 422, body = super::openapi::ErrorBody)))]
pub async fn list_promos(
    State(state): State<AppState>,
    auth: MerchantAuth,
    query: Result<Query<super::PageQuery>, QueryRejection>,
) -> Result<Json<super::List<PromoView>>, ApiError> {
    let page = super::list_query(query)?.page("promo")?;
    Ok(Json(super::List::of(promo::list(&state.pool, &auth.merchant_id, &page).await?)))
}

/// A purchase and the invoice the customer pays for it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct PurchaseCreated {
    pub purchase: PurchaseView,
    pub invoice: crate::invoice::InvoiceView,
}

#[utoipa::path(post, path = "/v1/credit_packs", tag = "credits", security(("bearer" = [])),
    request_body = CreatePack,
    responses((status = 201, body = PackView), (status = 401, body = super::openapi::ErrorBody),
        (status = 403, body = super::openapi::ErrorBody),
        (status = 404, body = super::openapi::ErrorBody, description = "no such credit currency"),
        (status = 415, body = super::openapi::ErrorBody), (status = 422, body = super::openapi::ErrorBody)))]
pub async fn create_pack(
    State(state): State<AppState>,
    auth: MerchantAuth,
    body: Result<Json<CreatePack>, JsonRejection>,
) -> Result<(StatusCode, Json<PackView>), ApiError> {
    let Json(body) = body?;
    Ok((StatusCode::CREATED, Json(pack::create(&state.pool, &auth.merchant_id, &body, state.clock.now()).await?)))
}

#[utoipa::path(get, path = "/v1/credit_packs", tag = "credits", security(("bearer" = [])),
    params(super::PageQuery),
    responses((status = 200, body = super::List<PackView>, description = "the merchant's credit packs, oldest first"),
        (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody),
        (status = 422, body = super::openapi::ErrorBody)))]
pub async fn list_packs(
    State(state): State<AppState>,
    auth: MerchantAuth,
    query: Result<Query<super::PageQuery>, QueryRejection>,
) -> Result<Json<super::List<PackView>>, ApiError> {
    let page = super::list_query(query)?.page("pack")?;
    Ok(Json(super::List::of(pack::list(&state.pool, &auth.merchant_id, &page).await?)))
}

#[utoipa::path(patch, path = "/v1/credit_packs/{id}", tag = "credits", security(("bearer" = [])),
    params(("id" = String, Path, description = "the pack, pack_…")),
    request_body = UpdatePack,
    responses((status = 200, body = PackView), (status = 401, body = super::openapi::ErrorBody),
        (status = 403, body = super::openapi::ErrorBody), (status = 404, body = super::openapi::ErrorBody),
        (status = 415, body = super::openapi::ErrorBody), (status = 422, body = super::openapi::ErrorBody)))]
pub async fn update_pack(
    State(state): State<AppState>,
    auth: MerchantAuth,
    Path(id): Path<String>,
    body: Result<Json<UpdatePack>, JsonRejection>,
) -> Result<Json<PackView>, ApiError> {
    if !crate::ids::is_id(&id, "pack") {
        return Err(ApiError::not_found("credit pack"));
    }
    let Json(body) = body?;
    Ok(Json(pack::set_active(&state.pool, &auth.merchant_id, &id, body.active, state.clock.now()).await?))
}

#[utoipa::path(post, path = "/v1/customers/{id}/purchases", tag = "credits", security(("bearer" = [])),
    params(("id" = String, Path, description = "the customer, cus_…"),
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 200, pattern = "^[!-~]+$", description = "retries get the same purchase and invoice")),
    request_body = PurchaseBody,
    responses((status = 201, body = PurchaseCreated, description = "the purchase, `pending` until its invoice is paid on any rail; then the credits are granted"),
        (status = 400, body = super::openapi::ErrorBody),
        (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody),
        (status = 404, body = super::openapi::ErrorBody), (status = 409, body = super::openapi::ErrorBody),
        (status = 415, body = super::openapi::ErrorBody), (status = 422, body = super::openapi::ErrorBody)))]
pub async fn purchase(
    State(state): State<AppState>,
    auth: MerchantAuth,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Json<PurchaseBody>, JsonRejection>,
) -> Result<(StatusCode, Json<PurchaseCreated>), ApiError> {
    customer_id(&id)?;
    let Json(body) = body?;
    if !crate::ids::is_id(&body.pack, "pack") {
        return Err(ApiError::not_found("credit pack"));
    }
    customer::get(&state.pool, &auth.merchant_id, &id).await?;
    let pack = pack::get(&state.pool, &auth.merchant_id, &body.pack).await?;
    if !pack.active {
        return Err(ApiError::new(StatusCode::CONFLICT, "pack_inactive", format!("credit pack {} is not sold any more", pack.id)));
    }
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(format!(
            "purchase:{id}:{}",
            v.to_str().map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "parameter_invalid", "Idempotency-Key must be visible ASCII"))?
        )),
    };
    let now = state.clock.now();
    let fiat: crate::money::Fiat = pack.price_currency.parse().map_err(ApiError::internal)?;
    let promo = match &body.promo_code {
        None => None,
        Some(code) => {
            let full = purchase::price(&pack, None)?;
            Some(promo::find_usable(&state.pool, &auth.merchant_id, code, "packs", full.price, fiat, now).await?)
        }
    };
    let priced = purchase::price(&pack, promo)?;
    let request = crate::invoice::CreateInvoice {
        amount: priced.price.to_decimal_string(fiat.minor_units()),
        currency: pack.price_currency.clone(),
        accepted: None,
        expires_in: None,
        order_id: Some(purchase::order_id(&pack.id)),
        metadata: Some(serde_json::json!({ "credit_purchase": {
            "customer": id,
            "pack": pack.id,
            "credits": pack.credits,
            "bonus_credits": priced.bonus.to_string(),
            "promo_code": priced.promo.as_ref().map(|p| p.code.clone()),
            "discount": priced.discount.to_decimal_string(fiat.minor_units()),
        } })),
        customer: Some(id.clone()),
        promo_code: None,
        redirect_url: None,
        buyer_email: None,
        locale: None,
        underpayment_tolerance_bps: None,
        speed_policy: None,
    };
    let (invoice, _) = crate::invoice::create_invoice(&state.pool, &state.catalog, state.rates.as_ref(), &state.policy, &auth.merchant_id, &request, key.as_deref(), now).await?;
    match purchase::record(&state.pool, &auth.merchant_id, &id, &pack, &priced, &invoice.id, now).await {
        Ok(purchase) => Ok((StatusCode::CREATED, Json(PurchaseCreated { purchase, invoice }))),
        Err(error) => {
            // Nothing may pay an invoice its purchase was refused for.
            if let Err(void) = crate::invoice::void_invoice(&state.pool, &auth.merchant_id, &invoice.id, now).await {
                tracing::warn!(target: "credits", invoice = %invoice.id, %void, "an invoice whose purchase was refused could not be voided");
            }
            Err(error.into())
        }
    }
}

/// One event of a customer's balance stream, as `text/event-stream` frames it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct BalanceEvent {
    /// Always `balance`.
    #[schema(example = "balance")]
    pub event: String,
    /// The JSON of `GET /v1/customers/{id}/balance` (a `BalanceView`).
    pub data: String,
}

/// A customer's balance stream: the balance now, then each time it changes.
struct BalanceStream {
    state: AppState,
    merchant_id: String,
    id: String,
    wake: tokio::sync::broadcast::Receiver<String>,
    sent: String,
    first: Option<axum::response::sse::Event>,
}

impl BalanceStream {
    async fn next(&mut self) -> Option<axum::response::sse::Event> {
        use tokio::sync::broadcast::error::RecvError;
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        loop {
            tokio::select! {
                woken = self.wake.recv() => match woken {
                    Ok(object) if object != self.id => continue,
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return None,
                },
                () = tokio::time::sleep(std::time::Duration::from_secs(super::checkout::live::RECHECK_S)) => {}
            }
            // The database away for a moment: the next wake-up or recheck tries again.
            let Ok(balance) = view::balance(&self.state.pool, &self.merchant_id, &self.id, self.state.clock.now()).await else { continue };
            let json = serde_json::to_string(&balance).unwrap_or_default();
            if json == self.sent {
                continue;
            }
            self.sent = json.clone();
            return Some(axum::response::sse::Event::default().event("balance").data(json));
        }
    }
}

/// `GET /v1/customers/{id}/stream`: Server-Sent Events of the customer's credit balance — the
/// balance now, then again whenever a grant, spend, transfer, expiry or reversal changed it
/// (announced by its `credits.*` event, read from the outbox within a fifth of a second).
#[utoipa::path(get, path = "/v1/customers/{id}/stream", tag = "credits", security(("bearer" = [])),
    params(("id" = String, Path, description = "the customer, cus_…")),
    responses((status = 200, description = "`balance` events, each the JSON of `GET /v1/customers/{id}/balance`", content_type = "text/event-stream", body = BalanceEvent),
        (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody),
        (status = 404, body = super::openapi::ErrorBody)))]
pub async fn stream(State(state): State<AppState>, auth: MerchantAuth, Path(id): Path<String>) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    customer_id(&id)?;
    // Subscribed before the first read, so no change after it is missed.
    let wake = state.live.subscribe();
    let balance = view::balance(&state.pool, &auth.merchant_id, &id, state.clock.now()).await?;
    let json = serde_json::to_string(&balance).map_err(ApiError::internal)?;
    let stream = BalanceStream {
        state,
        merchant_id: auth.merchant_id,
        id,
        wake,
        sent: json.clone(),
        first: Some(axum::response::sse::Event::default().event("balance").data(json)),
    };
    let events = futures::stream::unfold(stream, |mut stream| async move {
        let event = stream.next().await?;
        Some((Ok::<_, std::convert::Infallible>(event), stream))
    });
    let mut response = axum::response::sse::Sse::new(events)
        .keep_alive(axum::response::sse::KeepAlive::new().interval(std::time::Duration::from_secs(15)))
        .into_response();
    response.headers_mut().insert("x-accel-buffering", axum::http::HeaderValue::from_static("no"));
    Ok(response)
}

#[utoipa::path(post, path = "/v1/customers/{id}/adjustments", tag = "credits", security(("bearer" = [])),
    params(("id" = String, Path, description = "the customer, cus_…"),
        ("Idempotency-Key" = String, Header, min_length = 1, max_length = 255, pattern = "^[!-~]+$", description = "required: the movement's own key")),
    request_body = AdjustmentRequest,
    responses((status = 201, body = TransactionView, description = "the adjustment, with its reason and the admin key that made it"),
        (status = 400, body = super::openapi::ErrorBody, description = "idempotency_key_required"),
        (status = 401, body = super::openapi::ErrorBody),
        (status = 402, body = super::openapi::ErrorBody, description = "insufficient_credits: a negative adjustment takes no more than the customer has"),
        (status = 403, body = super::openapi::ErrorBody, description = "not an admin key"),
        (status = 404, body = super::openapi::ErrorBody),
        (status = 409, body = super::openapi::ErrorBody, description = "idempotency_key_reused"),
        (status = 415, body = super::openapi::ErrorBody), (status = 422, body = super::openapi::ErrorBody)))]
pub async fn adjust(
    State(state): State<AppState>,
    auth: super::auth::AdminAuth,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Json<AdjustmentRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<TransactionView>), ApiError> {
    customer_id(&id)?;
    let Json(body) = body?;
    let key = movement_key(&headers)?;
    Ok(moved(movement::adjust(&state.pool, &state.ledger, &id, &body, &key, &auth.key_id, state.clock.now()).await?))
}
