//! Webhook endpoints and events:
//! `POST/GET /v1/webhook_endpoints`, `DELETE /v1/webhook_endpoints/{id}`,
//! `GET /v1/events`, `GET /v1/events/{id}`, `GET /v1/events/{id}/deliveries`,
//! `POST /v1/events/{id}/replay`.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::webhook::events::Event;
use crate::webhook::{self, DeliveryView, EndpointSecret, EndpointView, WebhookError};

use super::auth::MerchantAuth;
use super::error::ApiError;
use super::openapi::ErrorBody;
use super::{AppState, CursorKind, List, PageQuery, PageSize};

impl From<WebhookError> for ApiError {
    fn from(error: WebhookError) -> Self {
        use WebhookError::*;
        let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
        match error {
            Invalid { field, reason } => Self::new(unprocessable, "parameter_invalid", format!("{field}: {reason}")),
            TooManyEndpoints { .. } => Self::new(unprocessable, "endpoint_limit_reached", error.to_string()),
            EndpointNotFound { .. } => Self::not_found("webhook endpoint"),
            EventNotFound { .. } => Self::not_found("event"),
            Database(error) => Self::database(error),
            Client(_) | Corrupt { .. } | Secret { .. } | SecretsKeyMissing { .. } => Self::internal(error),
        }
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEndpoint {
    /// Where to POST events: `https`, or `http` to a loopback host; at most 2048 bytes.
    #[schema(example = "https://hooks.example.com/payrail")]
    pub url: String,
    /// Event types to receive; absent or `["*"]` for all.
    #[schema(example = json!(["invoice.paid", "invoice.expired"]))]
    pub events: Option<Vec<String>>,
}

/// The endpoint and, this once, its signing secret (masked in `Debug`, shown in the JSON).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedEndpointBody {
    #[serde(flatten)]
    pub endpoint: EndpointView,
    /// The key that signs this endpoint's deliveries (`Payrail-Signature`). Shown only here: an
    /// idempotent replay of the creation answers `null`.
    #[serde(serialize_with = "expose_secret")]
    #[schema(value_type = Option<String>)]
    pub secret: EndpointSecret,
}

fn expose_secret<S: serde::Serializer>(secret: &EndpointSecret, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(secret.expose())
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Deleted {
    pub id: String,
    #[schema(value_type = String, example = "webhook_endpoint")]
    pub object: &'static str,
    pub deleted: bool,
}

#[utoipa::path(post, path = "/v1/webhook_endpoints", tag = "webhooks", security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 256, pattern = "^[!-~]+$",
        description = "retries with the same key and body get the first response")),
    request_body = CreateEndpoint,
    responses(
        (status = 201, body = CreatedEndpointBody, description = "the endpoint, with its signing secret (shown only this once)"),
        (status = 400, body = ErrorBody, description = "invalid_json, or parameter_invalid for a bad Idempotency-Key"),
        (status = 401, body = ErrorBody, description = "unauthorized: no valid API key"),
        (status = 403, body = ErrorBody, description = "forbidden: not a merchant key"),
        (status = 409, body = ErrorBody, description = "idempotency_conflict: the key was used for another request, or is in use"),
        (status = 413, body = ErrorBody, description = "body_too_large"),
        (status = 415, body = ErrorBody, description = "unsupported_media_type: the body is not application/json"),
        (status = 422, body = ErrorBody, description = "invalid_request, parameter_invalid (a field), endpoint_limit_reached"),
        (status = 429, body = ErrorBody, description = "rate_limited: too many requests for this API key",
            headers(("Retry-After" = u64, description = "seconds to wait")))))]
pub async fn create_endpoint(
    State(state): State<AppState>,
    auth: MerchantAuth,
    body: Result<Json<CreateEndpoint>, JsonRejection>,
) -> Result<(StatusCode, Json<CreatedEndpointBody>), ApiError> {
    let Json(request) = body?;
    let created = webhook::create_endpoint(
        &state.pool,
        &auth.merchant_id,
        &request.url,
        request.events.as_deref(),
        state.clock.now(),
        state.webhooks_allow_loopback,
        &state.webhook_secrets,
    )
    .await?;
    let body = CreatedEndpointBody { secret: created.secret, endpoint: created.endpoint };
    Ok((StatusCode::CREATED, Json(body)))
}

#[utoipa::path(get, path = "/v1/webhook_endpoints", tag = "webhooks", security(("bearer" = [])), params(PageQuery),
    responses((status = 200, body = List<EndpointView>, description = "the merchant's endpoints, newest first"),
        (status = 401, body = ErrorBody, description = "unauthorized: no valid API key"),
        (status = 403, body = ErrorBody, description = "forbidden: not a merchant key"),
        (status = 429, body = ErrorBody, description = "rate_limited: too many requests for this API key",
            headers(("Retry-After" = u64, description = "seconds to wait")))))]
pub async fn list_endpoints(
    State(state): State<AppState>,
    auth: MerchantAuth,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<List<EndpointView>>, ApiError> {
    let page = super::list_query(query)?.page("we")?;
    Ok(Json(List::of(webhook::list_endpoints(&state.pool, &auth.merchant_id, &page).await?)))
}

#[utoipa::path(get, path = "/v1/webhook_endpoints/{id}", tag = "webhooks", security(("bearer" = [])),
    params(("id" = String, Path, description = "the endpoint id, we_…")),
    responses((status = 200, body = EndpointView),
        (status = 401, body = ErrorBody, description = "unauthorized: no valid API key"),
        (status = 403, body = ErrorBody, description = "forbidden: not a merchant key"),
        (status = 404, body = ErrorBody, description = "not_found: no such webhook endpoint for this merchant")))]
pub async fn get_endpoint(
    State(state): State<AppState>,
    auth: MerchantAuth,
    Path(id): Path<String>,
) -> Result<Json<EndpointView>, ApiError> {
    if !crate::ids::is_id(&id, "we") {
        return Err(ApiError::not_found("webhook endpoint"));
    }
    Ok(Json(webhook::endpoint::get_endpoint(&state.pool, &auth.merchant_id, &id).await?))
}

#[utoipa::path(patch, path = "/v1/webhook_endpoints/{id}", tag = "webhooks", security(("bearer" = [])),
    params(("id" = String, Path, description = "the endpoint id, we_…")),
    request_body = webhook::endpoint::EndpointChange,
    responses((status = 200, body = EndpointView, description = "the endpoint as changed"),
        (status = 401, body = ErrorBody, description = "unauthorized: no valid API key"),
        (status = 403, body = ErrorBody, description = "forbidden: not a merchant key"),
        (status = 404, body = ErrorBody, description = "not_found: no such webhook endpoint for this merchant"),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody, description = "parameter_invalid")))]
pub async fn update_endpoint(
    State(state): State<AppState>,
    auth: MerchantAuth,
    Path(id): Path<String>,
    body: Result<Json<webhook::endpoint::EndpointChange>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<EndpointView>, ApiError> {
    let Json(change) = body?;
    if !crate::ids::is_id(&id, "we") {
        return Err(ApiError::not_found("webhook endpoint"));
    }
    let now = state.clock.now();
    let updated =
        webhook::endpoint::update_endpoint(&state.pool, &auth.merchant_id, &id, &change, now, state.webhooks_allow_loopback).await?;
    Ok(Json(updated))
}

/// Body of `POST /v1/webhook_endpoints/{id}/rotate_secret`.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateSecretBody {
    /// Seconds the previous secret keeps signing beside the new one (0–604800; 86400 when absent).
    #[serde(default)]
    pub overlap_s: Option<u64>,
}

#[utoipa::path(post, path = "/v1/webhook_endpoints/{id}/rotate_secret", tag = "webhooks", security(("bearer" = [])),
    params(("id" = String, Path, description = "the endpoint id, we_…")),
    request_body = RotateSecretBody,
    responses((status = 200, body = CreatedEndpointBody,
            description = "the endpoint and its new secret, shown only here; deliveries carry a signature of each secret until the overlap ends"),
        (status = 401, body = ErrorBody, description = "unauthorized: no valid API key"),
        (status = 403, body = ErrorBody, description = "forbidden: not a merchant key"),
        (status = 404, body = ErrorBody, description = "not_found: no such webhook endpoint for this merchant"),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody, description = "parameter_invalid")))]
pub async fn rotate_secret(
    State(state): State<AppState>,
    auth: MerchantAuth,
    Path(id): Path<String>,
    body: Result<Json<RotateSecretBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<CreatedEndpointBody>, ApiError> {
    let Json(body) = body?;
    if !crate::ids::is_id(&id, "we") {
        return Err(ApiError::not_found("webhook endpoint"));
    }
    let overlap = body.overlap_s.unwrap_or(webhook::endpoint::ROTATION_OVERLAP_S_DEFAULT);
    let now = state.clock.now();
    let rotated =
        webhook::endpoint::rotate_secret(&state.pool, &auth.merchant_id, &id, overlap, now, &state.webhook_secrets).await?;
    Ok(Json(CreatedEndpointBody { endpoint: rotated.endpoint, secret: rotated.secret }))
}

#[utoipa::path(delete, path = "/v1/webhook_endpoints/{id}", tag = "webhooks", security(("bearer" = [])),
    params(("id" = String, Path, description = "the endpoint id, we_…")),
    responses((status = 200, body = Deleted, description = "deleted: nothing more is sent to it"),
        (status = 401, body = ErrorBody, description = "unauthorized: no valid API key"),
        (status = 403, body = ErrorBody, description = "forbidden: not a merchant key"),
        (status = 404, body = ErrorBody, description = "not_found: no such webhook endpoint for this merchant"),
        (status = 429, body = ErrorBody, description = "rate_limited: too many requests for this API key",
            headers(("Retry-After" = u64, description = "seconds to wait")))))]
pub async fn delete_endpoint(
    State(state): State<AppState>,
    auth: MerchantAuth,
    Path(id): Path<String>,
) -> Result<Json<Deleted>, ApiError> {
    if !crate::ids::is_id(&id, "we") {
        return Err(ApiError::not_found("webhook endpoint"));
    }
    webhook::delete_endpoint(&state.pool, &auth.merchant_id, &id, state.clock.now()).await?;
    Ok(Json(Deleted { id, object: "webhook_endpoint", deleted: true }))
}

/// Query of `GET /v1/events`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListEvents {
    /// Events per page, 1–100 (20 when absent).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// An event id: the page holds the events after it (older).
    pub starting_after: Option<String>,
    /// An event id: the page holds the events before it (newer).
    pub ending_before: Option<String>,
    /// Only events of this type (`invoice.paid`, …).
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub event_type: Option<String>,
}

#[utoipa::path(get, path = "/v1/events", tag = "events", security(("bearer" = [])), params(ListEvents),
    responses((status = 200, body = List<Event>, description = "the merchant's events, newest first"),
        (status = 401, body = ErrorBody, description = "unauthorized: no valid API key"),
        (status = 403, body = ErrorBody, description = "forbidden: not a merchant key"),
        (status = 422, body = ErrorBody, description = "parameter_invalid: a query parameter is invalid"),
        (status = 429, body = ErrorBody, description = "rate_limited: too many requests for this API key",
            headers(("Retry-After" = u64, description = "seconds to wait")))))]
pub async fn list_events(
    State(state): State<AppState>,
    auth: MerchantAuth,
    query: Result<Query<ListEvents>, QueryRejection>,
) -> Result<Json<List<Value>>, ApiError> {
    let query = super::list_query(query)?;
    let page = super::page(query.limit, query.starting_after, query.ending_before, CursorKind::Id("evt"), PageSize::LIST)?;
    Ok(Json(List::of(webhook::list_events(&state.pool, &auth.merchant_id, &page, query.event_type.as_deref()).await?)))
}

#[utoipa::path(get, path = "/v1/events/{id}", tag = "events", security(("bearer" = [])),
    params(("id" = String, Path, description = "the event id, evt_…")),
    responses((status = 200, body = Event, description = "the event, exactly as delivered"),
        (status = 401, body = ErrorBody, description = "unauthorized: no valid API key"),
        (status = 403, body = ErrorBody, description = "forbidden: not a merchant key"),
        (status = 404, body = ErrorBody, description = "not_found: no such event for this merchant"),
        (status = 429, body = ErrorBody, description = "rate_limited: too many requests for this API key",
            headers(("Retry-After" = u64, description = "seconds to wait")))))]
pub async fn show_event(
    State(state): State<AppState>,
    auth: MerchantAuth,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(webhook::get_event(&state.pool, &auth.merchant_id, &id).await?))
}

#[utoipa::path(get, path = "/v1/events/{id}/deliveries", tag = "events", security(("bearer" = [])),
    params(("id" = String, Path, description = "the event id, evt_…"), PageQuery),
    responses((status = 200, body = List<DeliveryView>, description = "the event's deliveries, oldest first, each with its attempts: status code, duration and an error class; nothing of the response body or of the raw error"),
        (status = 401, body = ErrorBody, description = "unauthorized: no valid API key"),
        (status = 403, body = ErrorBody, description = "forbidden: not a merchant key"),
        (status = 404, body = ErrorBody, description = "not_found: no such event for this merchant"),
        (status = 429, body = ErrorBody, description = "rate_limited: too many requests for this API key",
            headers(("Retry-After" = u64, description = "seconds to wait")))))]
pub async fn event_deliveries(
    State(state): State<AppState>,
    auth: MerchantAuth,
    Path(id): Path<String>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<List<DeliveryView>>, ApiError> {
    let page = super::list_query(query)?.page("whd")?;
    Ok(Json(List::of(webhook::deliveries(&state.pool, &auth.merchant_id, &id, &page).await?)))
}

#[utoipa::path(post, path = "/v1/events/{id}/replay", tag = "events", security(("bearer" = [])),
    params(("id" = String, Path, description = "the event id, evt_…"),
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 256, pattern = "^[!-~]+$",
            description = "retries with the same key get the first response")),
    responses(
        (status = 202, body = List<DeliveryView>,
            description = "the deliveries queued: one per endpoint that takes the event's type and has none of it pending"),
        (status = 400, body = ErrorBody, description = "parameter_invalid: a bad Idempotency-Key"),
        (status = 401, body = ErrorBody, description = "unauthorized: no valid API key"),
        (status = 403, body = ErrorBody, description = "forbidden: not a merchant key"),
        (status = 404, body = ErrorBody, description = "not_found: no such event for this merchant"),
        (status = 409, body = ErrorBody, description = "idempotency_conflict: the key was used for another request, or is in use"),
        (status = 413, body = ErrorBody, description = "body_too_large"),
        (status = 429, body = ErrorBody, description = "rate_limited: too many requests for this API key",
            headers(("Retry-After" = u64, description = "seconds to wait")))))]
pub async fn replay_event(
    State(state): State<AppState>,
    auth: MerchantAuth,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<List<DeliveryView>>), ApiError> {
    let data = webhook::replay(&state.pool, &auth.merchant_id, &id, state.clock.now()).await?;
    Ok((StatusCode::ACCEPTED, Json(List::of((data, false)))))
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    /// The document shows what the delivery log keeps: an error class from a closed set, and no
    /// response body.
    #[test]
    fn the_documented_attempt_has_an_error_class_and_no_body() {
        let doc: Value = serde_json::to_value(super::super::openapi::document()).expect("document");
        let schemas = &doc["components"]["schemas"];
        let attempt = &schemas["AttemptView"]["properties"];
        assert!(attempt.get("response_excerpt").is_none(), "{attempt}");
        assert!(attempt["error"].to_string().contains("ErrorClass"), "{}", attempt["error"]);
        let classes = json!(["timeout", "connect", "tls", "dns", "refused_address", "http_status", "body_too_large", "other"]);
        assert_eq!(schemas["ErrorClass"]["enum"], classes, "{}", schemas["ErrorClass"]);
    }
}
