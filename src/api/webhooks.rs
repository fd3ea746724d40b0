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

use crate::webhook::events::PAGE_LIMIT_DEFAULT;
use crate::webhook::{self, DeliveryView, EndpointSecret, EndpointView, EventPage, WebhookError};

use super::auth::MerchantAuth;
use super::error::ApiError;
use super::AppState;

impl From<WebhookError> for ApiError {
    fn from(error: WebhookError) -> Self {
        use WebhookError::*;
        let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
        match error {
            Invalid { field, reason } => Self::new(unprocessable, "parameter_invalid", format!("{field}: {reason}")),
            TooManyEndpoints { .. } => Self::new(unprocessable, "endpoint_limit_reached", error.to_string()),
            EndpointNotFound { .. } => Self::not_found("webhook endpoint"),
            EventNotFound { .. } => Self::not_found("event"),
            Client(_) | Corrupt { .. } | Database(_) => Self::internal(error),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateEndpoint {
    pub url: String,
    /// Event types to receive; absent or `["*"]` for all.
    pub events: Option<Vec<String>>,
}

/// The endpoint and, this once, its signing secret (masked in `Debug`, shown in the JSON).
#[derive(Debug, Serialize)]
pub struct CreatedEndpointBody {
    #[serde(flatten)]
    pub endpoint: EndpointView,
    #[serde(serialize_with = "expose_secret")]
    pub secret: EndpointSecret,
}

fn expose_secret<S: serde::Serializer>(secret: &EndpointSecret, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(secret.expose())
}

#[derive(Debug, Serialize)]
pub struct List<T> {
    pub object: &'static str,
    pub data: Vec<T>,
    pub has_more: bool,
}

#[derive(Debug, Serialize)]
pub struct Deleted {
    pub id: String,
    pub object: &'static str,
    pub deleted: bool,
}

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
    )
    .await?;
    let body = CreatedEndpointBody { secret: created.secret, endpoint: created.endpoint };
    Ok((StatusCode::CREATED, Json(body)))
}

pub async fn list_endpoints(
    State(state): State<AppState>,
    auth: MerchantAuth,
) -> Result<Json<List<EndpointView>>, ApiError> {
    let data = webhook::list_endpoints(&state.pool, &auth.merchant_id).await?;
    Ok(Json(List { object: "list", data, has_more: false }))
}

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListEvents {
    pub limit: Option<u32>,
    pub starting_after: Option<String>,
}

pub async fn list_events(
    State(state): State<AppState>,
    auth: MerchantAuth,
    query: Result<Query<ListEvents>, QueryRejection>,
) -> Result<Json<EventPage>, ApiError> {
    let Query(query) = query.map_err(|e| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid", e.body_text())
    })?;
    let limit = query.limit.unwrap_or(PAGE_LIMIT_DEFAULT);
    let page = webhook::list_events(&state.pool, &auth.merchant_id, limit, query.starting_after.as_deref()).await?;
    Ok(Json(page))
}

pub async fn show_event(
    State(state): State<AppState>,
    auth: MerchantAuth,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(webhook::get_event(&state.pool, &auth.merchant_id, &id).await?))
}

pub async fn event_deliveries(
    State(state): State<AppState>,
    auth: MerchantAuth,
    Path(id): Path<String>,
) -> Result<Json<List<DeliveryView>>, ApiError> {
    let data = webhook::deliveries(&state.pool, &auth.merchant_id, &id).await?;
    Ok(Json(List { object: "list", data, has_more: false }))
}

pub async fn replay_event(
    State(state): State<AppState>,
    auth: MerchantAuth,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<List<DeliveryView>>), ApiError> {
    let data = webhook::replay(&state.pool, &auth.merchant_id, &id, state.clock.now()).await?;
    Ok((StatusCode::ACCEPTED, Json(List { object: "list", data, has_more: false })))
}
