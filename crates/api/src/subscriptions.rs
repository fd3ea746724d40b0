//! Plans, subscriptions and access, over a merchant key. See [`payrail_subscriptions`].

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;

use payrail_payments::billing::Biller;
use payrail_subscriptions::access::{self, Access, AccessRule, RefundUnlock, UnlockRequest, UnlockView};
use payrail_subscriptions::plan::{self, CreatePlan, PlanView, UpdatePlan};
use payrail_subscriptions::subscription::{self, Cancel, ChangePlan, Changed, Subscribe, SubscriptionView};
use payrail_subscriptions::SubscriptionsError;

use super::auth::MerchantAuth;
use super::error::ApiError;
use super::AppState;

impl From<SubscriptionsError> for ApiError {
    fn from(error: SubscriptionsError) -> Self {
        match error {
            SubscriptionsError::Invalid { .. } => Self::new(StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid", error.to_string()),
            SubscriptionsError::NotFound { what, .. } => Self::not_found(what),
            SubscriptionsError::Refused(reason) => Self::new(StatusCode::CONFLICT, "subscription_state", reason),
            SubscriptionsError::Credits(e) => e.into(),
            SubscriptionsError::Ledger(e) => Self::ledger(e),
            SubscriptionsError::Database(e) => Self::database(e),
        }
    }
}

impl From<payrail_payments::billing::BillingError> for ApiError {
    fn from(error: payrail_payments::billing::BillingError) -> Self {
        match error {
            payrail_payments::billing::BillingError::Invoice(e) => e.into(),
            payrail_payments::billing::BillingError::Subscriptions(e) => e.into(),
        }
    }
}

/// The invoicing of subscriptions, over the API's state.
pub fn biller(state: &AppState) -> Biller {
    Biller {
        pool: state.pool.clone(),
        ledger: state.ledger.clone(),
        catalog: state.catalog.clone(),
        rates: state.rates.clone(),
        policy: state.policy.clone(),
        public_url: state.public_url.clone(),
    }
}

fn id_of(id: &str, prefix: &str, what: &'static str) -> Result<(), ApiError> {
    if crate::ids::is_id(id, prefix) { Ok(()) } else { Err(ApiError::not_found(what)) }
}

fn query_error(e: QueryRejection) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "parameter_invalid", e.body_text())
}

#[utoipa::path(post, path = "/v1/plans", tag = "subscriptions", security(("bearer" = [])),
    request_body = CreatePlan,
    responses((status = 201, body = PlanView), (status = 401, body = super::openapi::ErrorBody),
        (status = 403, body = super::openapi::ErrorBody), (status = 404, body = super::openapi::ErrorBody, description = "the credit currency"),
        (status = 415, body = super::openapi::ErrorBody), (status = 422, body = super::openapi::ErrorBody)))]
pub async fn create_plan(State(state): State<AppState>, auth: MerchantAuth, body: Result<Json<CreatePlan>, JsonRejection>) -> Result<(StatusCode, Json<PlanView>), ApiError> {
    let Json(body) = body?;
    Ok((StatusCode::CREATED, Json(plan::create(&state.pool, &auth.merchant_id, &body, state.clock.now()).await?)))
}

#[utoipa::path(get, path = "/v1/plans", tag = "subscriptions", security(("bearer" = [])),
    params(super::PageQuery),
    responses((status = 200, body = super::List<PlanView>, description = "the merchant's plans, newest first"),
        (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody),
        (status = 422, body = super::openapi::ErrorBody)))]
pub async fn list_plans(State(state): State<AppState>, auth: MerchantAuth, query: Result<Query<super::PageQuery>, QueryRejection>) -> Result<Json<super::List<PlanView>>, ApiError> {
    let page = super::list_query(query)?.page("plan")?;
    Ok(Json(super::List::of(plan::list(&state.pool, &auth.merchant_id, &page).await?)))
}

#[utoipa::path(get, path = "/v1/plans/{id}", tag = "subscriptions", security(("bearer" = [])),
    params(("id" = String, Path, description = "the plan, plan_…")),
    responses((status = 200, body = PlanView), (status = 401, body = super::openapi::ErrorBody),
        (status = 403, body = super::openapi::ErrorBody), (status = 404, body = super::openapi::ErrorBody)))]
pub async fn get_plan(State(state): State<AppState>, auth: MerchantAuth, Path(id): Path<String>) -> Result<Json<PlanView>, ApiError> {
    id_of(&id, "plan", "plan")?;
    Ok(Json(plan::get(&state.pool, &auth.merchant_id, &id).await?))
}

#[utoipa::path(patch, path = "/v1/plans/{id}", tag = "subscriptions", security(("bearer" = [])),
    params(("id" = String, Path, description = "the plan, plan_…")),
    request_body = UpdatePlan,
    responses((status = 200, body = PlanView, description = "the plan; a change of its terms is its next version, which new subscriptions get"),
        (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody),
        (status = 404, body = super::openapi::ErrorBody), (status = 415, body = super::openapi::ErrorBody),
        (status = 422, body = super::openapi::ErrorBody)))]
pub async fn update_plan(
    State(state): State<AppState>,
    auth: MerchantAuth,
    Path(id): Path<String>,
    body: Result<Json<UpdatePlan>, JsonRejection>,
) -> Result<Json<PlanView>, ApiError> {
    id_of(&id, "plan", "plan")?;
    let Json(body) = body?;
    Ok(Json(plan::update(&state.pool, &auth.merchant_id, &id, &body, state.clock.now()).await?))
}

/// A new subscription and the invoice of its first period (none while it is in trial).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct SubscriptionCreated {
    pub subscription: SubscriptionView,
    pub invoice: Option<crate::invoice::InvoiceView>,
}

#[utoipa::path(post, path = "/v1/customers/{id}/subscriptions", tag = "subscriptions", security(("bearer" = [])),
    params(("id" = String, Path, description = "the customer, cus_…"),
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 200, pattern = "^[!-~]+$", description = "retries get the same subscription")),
    request_body = Subscribe,
    responses((status = 201, body = SubscriptionCreated, description = "`trialing`, or `incomplete` until the first invoice is paid on any rail"),
        (status = 200, body = SubscriptionCreated, description = "made before under this Idempotency-Key, asked again after the stored answer was purged"),
        (status = 400, body = super::openapi::ErrorBody),
        (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody),
        (status = 404, body = super::openapi::ErrorBody), (status = 409, body = super::openapi::ErrorBody),
        (status = 415, body = super::openapi::ErrorBody), (status = 422, body = super::openapi::ErrorBody)))]
pub async fn subscribe(
    State(state): State<AppState>,
    auth: MerchantAuth,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Json<Subscribe>, JsonRejection>,
) -> Result<(StatusCode, Json<SubscriptionCreated>), ApiError> {
    id_of(&id, "cus", "customer")?;
    let Json(body) = body?;
    if !crate::ids::is_id(&body.plan, "plan") {
        return Err(ApiError::not_found("plan"));
    }
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(format!(
            "subscribe:{id}:{}",
            v.to_str().map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "parameter_invalid", "Idempotency-Key must be visible ASCII"))?
        )),
    };
    let now = state.clock.now();
    let (created, replayed) = subscription::subscribe(&state.pool, &auth.merchant_id, &id, &body, key.as_deref(), now).await?;
    // The first period is invoiced at once (a retry finds the same invoice); should that fail, the
    // scheduler invoices it on its next pass.
    let mut invoice = biller(&state).bill_due(Some(&created.id), now).await?.into_iter().next();
    let subscription = subscription::get(&state.pool, &auth.merchant_id, &created.id).await?;
    if invoice.is_none() {
        if let Some(latest) = &subscription.latest_invoice {
            let mut conn = state.pool.acquire().await.map_err(ApiError::database)?;
            invoice = Some(crate::invoice::load_view(&mut conn, Some(&auth.merchant_id), latest).await?);
        }
    }
    let status = if replayed { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(SubscriptionCreated { subscription, invoice })))
}

#[utoipa::path(get, path = "/v1/customers/{id}/subscriptions", tag = "subscriptions", security(("bearer" = [])),
    params(("id" = String, Path, description = "the customer, cus_…"), super::PageQuery),
    responses((status = 200, body = super::List<SubscriptionView>, description = "the customer's subscriptions, newest first"),
        (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody),
        (status = 404, body = super::openapi::ErrorBody), (status = 422, body = super::openapi::ErrorBody)))]
pub async fn list_subscriptions(
    State(state): State<AppState>,
    auth: MerchantAuth,
    Path(id): Path<String>,
    query: Result<Query<super::PageQuery>, QueryRejection>,
) -> Result<Json<super::List<SubscriptionView>>, ApiError> {
    id_of(&id, "cus", "customer")?;
    let page = super::list_query(query)?.page("sub")?;
    payrail_credits::customer::get(&state.pool, &auth.merchant_id, &id).await?;
    Ok(Json(super::List::of(subscription::list_for_customer(&state.pool, &auth.merchant_id, &id, &page).await?)))
}

#[utoipa::path(get, path = "/v1/subscriptions/{id}", tag = "subscriptions", security(("bearer" = [])),
    params(("id" = String, Path, description = "the subscription, sub_…")),
    responses((status = 200, body = SubscriptionView), (status = 401, body = super::openapi::ErrorBody),
        (status = 403, body = super::openapi::ErrorBody), (status = 404, body = super::openapi::ErrorBody)))]
pub async fn get_subscription(State(state): State<AppState>, auth: MerchantAuth, Path(id): Path<String>) -> Result<Json<SubscriptionView>, ApiError> {
    id_of(&id, "sub", "subscription")?;
    Ok(Json(subscription::get(&state.pool, &auth.merchant_id, &id).await?))
}

/// Voids what a change made pointless, then answers the subscription.
async fn changed(state: &AppState, merchant_id: &str, changed: Changed) -> Json<SubscriptionView> {
    let now = state.clock.now();
    let void: Vec<(String, String)> = changed.void_invoices.into_iter().map(|i| (merchant_id.to_owned(), i)).collect();
    biller(state).void_all(&void, now).await;
    Json(changed.subscription)
}

#[utoipa::path(post, path = "/v1/subscriptions/{id}/cancel", tag = "subscriptions", security(("bearer" = [])),
    params(("id" = String, Path, description = "the subscription, sub_…")),
    request_body = Cancel,
    responses((status = 200, body = SubscriptionView), (status = 401, body = super::openapi::ErrorBody),
        (status = 403, body = super::openapi::ErrorBody), (status = 404, body = super::openapi::ErrorBody),
        (status = 409, body = super::openapi::ErrorBody, description = "subscription_state: it has ended"),
        (status = 415, body = super::openapi::ErrorBody), (status = 422, body = super::openapi::ErrorBody)))]
pub async fn cancel(
    State(state): State<AppState>,
    auth: MerchantAuth,
    Path(id): Path<String>,
    body: Result<Json<Cancel>, JsonRejection>,
) -> Result<Json<SubscriptionView>, ApiError> {
    id_of(&id, "sub", "subscription")?;
    let Json(body) = body?;
    let done = subscription::cancel(&state.pool, &auth.merchant_id, &id, &body, state.clock.now()).await?;
    Ok(changed(&state, &auth.merchant_id, done).await)
}

#[utoipa::path(post, path = "/v1/subscriptions/{id}/pause", tag = "subscriptions", security(("bearer" = [])),
    params(("id" = String, Path, description = "the subscription, sub_…")),
    responses((status = 200, body = SubscriptionView), (status = 401, body = super::openapi::ErrorBody),
        (status = 403, body = super::openapi::ErrorBody), (status = 404, body = super::openapi::ErrorBody),
        (status = 409, body = super::openapi::ErrorBody, description = "subscription_state: only an active subscription pauses")))]
pub async fn pause(State(state): State<AppState>, auth: MerchantAuth, Path(id): Path<String>) -> Result<Json<SubscriptionView>, ApiError> {
    id_of(&id, "sub", "subscription")?;
    Ok(Json(subscription::pause(&state.pool, &auth.merchant_id, &id, state.clock.now()).await?))
}

#[utoipa::path(post, path = "/v1/subscriptions/{id}/resume", tag = "subscriptions", security(("bearer" = [])),
    params(("id" = String, Path, description = "the subscription, sub_…")),
    responses((status = 200, body = SubscriptionView), (status = 401, body = super::openapi::ErrorBody),
        (status = 403, body = super::openapi::ErrorBody), (status = 404, body = super::openapi::ErrorBody),
        (status = 409, body = super::openapi::ErrorBody, description = "subscription_state: it is not paused")))]
pub async fn resume(State(state): State<AppState>, auth: MerchantAuth, Path(id): Path<String>) -> Result<Json<SubscriptionView>, ApiError> {
    id_of(&id, "sub", "subscription")?;
    Ok(Json(subscription::resume(&state.pool, &auth.merchant_id, &id, state.clock.now()).await?))
}

#[utoipa::path(post, path = "/v1/subscriptions/{id}/change", tag = "subscriptions", security(("bearer" = [])),
    params(("id" = String, Path, description = "the subscription, sub_…")),
    request_body = ChangePlan,
    responses((status = 200, body = SubscriptionView), (status = 401, body = super::openapi::ErrorBody),
        (status = 403, body = super::openapi::ErrorBody), (status = 404, body = super::openapi::ErrorBody),
        (status = 409, body = super::openapi::ErrorBody), (status = 415, body = super::openapi::ErrorBody),
        (status = 422, body = super::openapi::ErrorBody)))]
pub async fn change(
    State(state): State<AppState>,
    auth: MerchantAuth,
    Path(id): Path<String>,
    body: Result<Json<ChangePlan>, JsonRejection>,
) -> Result<Json<SubscriptionView>, ApiError> {
    id_of(&id, "sub", "subscription")?;
    let Json(body) = body?;
    if !crate::ids::is_id(&body.plan, "plan") {
        return Err(ApiError::not_found("plan"));
    }
    let done = subscription::change_plan(&state.pool, &auth.merchant_id, &id, &body, state.clock.now()).await?;
    Ok(changed(&state, &auth.merchant_id, done).await)
}

#[utoipa::path(post, path = "/v1/access_rules", tag = "subscriptions", security(("bearer" = [])),
    request_body = AccessRule,
    responses((status = 200, body = AccessRule, description = "set (a prefix posted again has its entitlements replaced)"),
        (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody),
        (status = 415, body = super::openapi::ErrorBody), (status = 422, body = super::openapi::ErrorBody)))]
pub async fn set_rule(State(state): State<AppState>, auth: MerchantAuth, body: Result<Json<AccessRule>, JsonRejection>) -> Result<Json<AccessRule>, ApiError> {
    let Json(body) = body?;
    Ok(Json(access::set_rule(&state.pool, &auth.merchant_id, &body, state.clock.now()).await?))
}

#[utoipa::path(get, path = "/v1/access_rules", tag = "subscriptions", security(("bearer" = [])),
    params(super::PageQuery),
    responses((status = 200, body = super::List<AccessRule>, description = "the merchant's access rules, by prefix; the cursors are prefixes"),
        (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody),
        (status = 422, body = super::openapi::ErrorBody)))]
pub async fn list_rules(
    State(state): State<AppState>,
    auth: MerchantAuth,
    query: Result<Query<super::PageQuery>, QueryRejection>,
) -> Result<Json<super::List<AccessRule>>, ApiError> {
    let page = super::list_query(query)?.page_by(super::CursorKind::Code)?;
    Ok(Json(super::List::of(access::rules(&state.pool, &auth.merchant_id, &page).await?)))
}

#[utoipa::path(post, path = "/v1/customers/{id}/unlocks", tag = "subscriptions", security(("bearer" = [])),
    params(("id" = String, Path, description = "the customer, cus_…")),
    request_body = UnlockRequest,
    responses((status = 201, body = UnlockView, description = "unlocked; the credits were spent"),
        (status = 200, body = UnlockView, description = "unlocked before: nothing was charged"),
        (status = 401, body = super::openapi::ErrorBody), (status = 402, body = super::openapi::ErrorBody, description = "insufficient_credits"),
        (status = 403, body = super::openapi::ErrorBody), (status = 404, body = super::openapi::ErrorBody),
        (status = 409, body = super::openapi::ErrorBody), (status = 415, body = super::openapi::ErrorBody),
        (status = 422, body = super::openapi::ErrorBody)))]
pub async fn unlock(
    State(state): State<AppState>,
    auth: MerchantAuth,
    Path(id): Path<String>,
    body: Result<Json<UnlockRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<UnlockView>), ApiError> {
    id_of(&id, "cus", "customer")?;
    let Json(body) = body?;
    let (view, charged) = access::unlock(&state.pool, &state.ledger, &auth.merchant_id, &id, &body, state.clock.now()).await?;
    Ok((if charged { StatusCode::CREATED } else { StatusCode::OK }, Json(view)))
}

#[utoipa::path(post, path = "/v1/customers/{id}/unlocks/refund", tag = "subscriptions", security(("bearer" = [])),
    params(("id" = String, Path, description = "the customer, cus_…")),
    request_body = RefundUnlock,
    responses((status = 200, body = UnlockView, description = "refunded (now or before): access by it has ended, its credits are back as a lot of source `refund`"),
        (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody),
        (status = 404, body = super::openapi::ErrorBody, description = "the customer, or no unlock of the resource"),
        (status = 415, body = super::openapi::ErrorBody), (status = 422, body = super::openapi::ErrorBody)))]
pub async fn refund_unlock(
    State(state): State<AppState>,
    auth: MerchantAuth,
    Path(id): Path<String>,
    body: Result<Json<RefundUnlock>, JsonRejection>,
) -> Result<Json<UnlockView>, ApiError> {
    id_of(&id, "cus", "customer")?;
    let Json(body) = body?;
    Ok(Json(access::refund_unlock(&state.pool, &state.ledger, &auth.merchant_id, &id, &body.resource, state.clock.now()).await?))
}

/// Query of `GET /v1/customers/{id}/access`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AccessQuery {
    /// The resource: `chapter/123`.
    pub resource: String,
}

#[utoipa::path(get, path = "/v1/customers/{id}/access", tag = "subscriptions", security(("bearer" = [])),
    params(("id" = String, Path, description = "the customer, cus_…"), AccessQuery),
    responses((status = 200, body = Access), (status = 400, body = super::openapi::ErrorBody),
        (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody),
        (status = 404, body = super::openapi::ErrorBody), (status = 422, body = super::openapi::ErrorBody)))]
pub async fn access_one(
    State(state): State<AppState>,
    auth: MerchantAuth,
    Path(id): Path<String>,
    query: Result<Query<AccessQuery>, QueryRejection>,
) -> Result<Json<Access>, ApiError> {
    id_of(&id, "cus", "customer")?;
    let Query(query) = query.map_err(query_error)?;
    let mut conn = state.pool.acquire().await.map_err(ApiError::database)?;
    let answer = access::check(&mut conn, &auth.merchant_id, &id, &[query.resource]).await?;
    answer.into_iter().next().map(Json).ok_or_else(|| ApiError::internal("an access check answered nothing"))
}

/// Body of `POST /v1/access/check`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessCheck {
    /// The customer, `cus_…`.
    pub customer: String,
    /// 1 to 1,000 resources.
    pub resources: Vec<String>,
}

#[utoipa::path(post, path = "/v1/access/check", tag = "subscriptions", security(("bearer" = [])),
    request_body = AccessCheck,
    responses((status = 200, body = super::List<Access>, description = "one answer per resource, in order; a customer the merchant does not have has access to nothing"),
        (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody),
        (status = 404, body = super::openapi::ErrorBody), (status = 415, body = super::openapi::ErrorBody),
        (status = 422, body = super::openapi::ErrorBody)))]
pub async fn access_check(State(state): State<AppState>, auth: MerchantAuth, body: Result<Json<AccessCheck>, JsonRejection>) -> Result<Json<super::List<Access>>, ApiError> {
    let Json(body) = body?;
    id_of(&body.customer, "cus", "customer")?;
    let mut conn = state.pool.acquire().await.map_err(ApiError::database)?;
    let data = access::check(&mut conn, &auth.merchant_id, &body.customer, &body.resources).await?;
    Ok(Json(super::List::of((data, false))))
}

/// Query of the reports.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ReportQuery {
    /// RFC 3339; the range's start (30 days before `to` when absent).
    pub from: Option<String>,
    /// RFC 3339; the range's end, excluded (now when absent).
    pub to: Option<String>,
    /// `json` (the default) or `csv`.
    pub format: Option<String>,
}

/// A report's range and format: a malformed query is 400, a bad time or format 422.
fn report_range(state: &AppState, query: Result<Query<ReportQuery>, QueryRejection>) -> Result<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>, bool), ApiError> {
    let Query(query) = query.map_err(query_error)?;
    let csv = match query.format.as_deref().unwrap_or("json") {
        "json" => false,
        "csv" => true,
        _ => return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid", "format must be json or csv")),
    };
    let to = super::time_param("to", query.to.as_deref())?.unwrap_or_else(|| state.clock.now());
    let from = super::time_param("from", query.from.as_deref())?.unwrap_or(to - chrono::Duration::days(30));
    Ok((from, to, csv))
}

/// `GET /v1/reports/subscriptions`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct SubscriptionReport {
    #[schema(value_type = String, example = "subscription_report")]
    pub object: &'static str,
    pub from: chrono::DateTime<chrono::Utc>,
    pub to: chrono::DateTime<chrono::Utc>,
    pub data: Vec<payrail_subscriptions::report::PlanLine>,
}

#[utoipa::path(get, path = "/v1/reports/subscriptions", tag = "subscriptions", security(("bearer" = [])),
    params(ReportQuery),
    responses((status = 200, body = SubscriptionReport,
            description = "JSON; or with format=csv, text/csv: plan_id, plan_name, currency, mrr_minor, active, trialing, new, churned, past_due, revenue_minor"),
        (status = 400, body = super::openapi::ErrorBody), (status = 401, body = super::openapi::ErrorBody),
        (status = 403, body = super::openapi::ErrorBody), (status = 422, body = super::openapi::ErrorBody)))]
pub async fn subscription_report(
    State(state): State<AppState>,
    auth: MerchantAuth,
    query: Result<Query<ReportQuery>, QueryRejection>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let (from, to, csv) = report_range(&state, query)?;
    let data = payrail_subscriptions::report::subscriptions(&state.pool, &auth.merchant_id, from, to).await?;
    let lines = csv.then(|| report_csv(&data));
    Ok(lines.unwrap_or_else(|| Json(SubscriptionReport { object: "subscription_report", from, to, data }).into_response()))
}

/// A report's lines as CSV (RFC 4180, with its header).
fn report_csv<L: payrail_subscriptions::report::CsvLine>(lines: &[L]) -> axum::response::Response {
    let mut body = String::new();
    payrail_core::csv::push_record(&mut body, L::HEADER.iter().copied());
    for line in lines {
        let record = line.record();
        payrail_core::csv::push_record(&mut body, record.iter().map(String::as_str));
    }
    super::csv_response(body)
}

/// `GET /v1/reports/sales`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct SalesReport {
    #[schema(value_type = String, example = "sales_report")]
    pub object: &'static str,
    pub from: chrono::DateTime<chrono::Utc>,
    pub to: chrono::DateTime<chrono::Utc>,
    pub data: Vec<payrail_subscriptions::report::SalesLine>,
}

#[utoipa::path(get, path = "/v1/reports/sales", tag = "subscriptions", security(("bearer" = [])),
    params(ReportQuery),
    responses((status = 200, body = SalesReport,
            description = "JSON; or with format=csv, text/csv: kind, currency, gross_minor, discounts_minor, refunds_minor, net_minor"),
        (status = 400, body = super::openapi::ErrorBody), (status = 401, body = super::openapi::ErrorBody),
        (status = 403, body = super::openapi::ErrorBody), (status = 422, body = super::openapi::ErrorBody)))]
pub async fn sales_report(
    State(state): State<AppState>,
    auth: MerchantAuth,
    query: Result<Query<ReportQuery>, QueryRejection>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let (from, to, csv) = report_range(&state, query)?;
    let data = payrail_subscriptions::report::sales(&state.pool, &auth.merchant_id, from, to).await?;
    let lines = csv.then(|| report_csv(&data));
    Ok(lines.unwrap_or_else(|| Json(SalesReport { object: "sales_report", from, to, data }).into_response()))
}
