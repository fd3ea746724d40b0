//! API keys of the calling merchant: `POST/GET /v1/api_keys`, `GET/DELETE /v1/api_keys/{id}`,
//! `POST /v1/api_keys/{id}/rotate`. A key's secret is shown once, in the response that made it;
//! listings never carry secrets. Revocation is read by every request on every replica (keys are
//! not cached), so it takes effect at once.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;

use crate::merchant::keys::{self, CreateKey, KeyError, KeyView, NewKey, RotateKey, UpdateKey};

use super::auth::MerchantAuth;
use super::error::ApiError;
use super::openapi::ErrorBody;
use super::List;
use super::AppState;

impl From<KeyError> for ApiError {
    fn from(error: KeyError) -> Self {
        let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
        match error {
            KeyError::Invalid { field, reason } => Self::new(unprocessable, "parameter_invalid", format!("{field}: {reason}")),
            KeyError::NotFound { .. } => Self::not_found("api key"),
            KeyError::Inactive { .. } => Self::new(StatusCode::CONFLICT, "api_key_inactive", error.to_string()),
            KeyError::TooManyKeys => Self::new(unprocessable, "api_key_limit_reached", error.to_string()),
            KeyError::Database(error) => Self::database(error),
        }
    }
}

fn key_id(id: &str) -> Result<(), ApiError> {
    if crate::ids::is_id(id, "key") {
        Ok(())
    } else {
        Err(ApiError::not_found("api key"))
    }
}

/// An optional JSON body: absent or empty means all defaults.
fn optional_body<T: Default>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    match body {
        Ok(Json(value)) => Ok(value),
        Err(JsonRejection::MissingJsonContentType(_)) => Ok(T::default()),
        Err(rejection) => Err(rejection.into()),
    }
}

#[utoipa::path(post, path = "/v1/api_keys", tag = "api_keys", security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 256, pattern = "^[!-~]+$",
        description = "retries with the same key and body get the first response, with `secret` set to null")),
    request_body(content = Option<CreateKey>, description = "optional: a name, and read_only"),
    responses(
        (status = 201, body = NewKey, description = "the key and its secret, shown only in this response"),
        (status = 400, body = ErrorBody, description = "invalid_json, or parameter_invalid for a bad Idempotency-Key"),
        (status = 401, body = ErrorBody, description = "unauthorized: no valid API key"),
        (status = 403, body = ErrorBody, description = "forbidden: not a merchant key; read_only_key"),
        (status = 409, body = ErrorBody, description = "idempotency_conflict"),
        (status = 422, body = ErrorBody, description = "invalid_request, parameter_invalid, api_key_limit_reached"),
        (status = 429, body = ErrorBody, description = "rate_limited",
            headers(("Retry-After" = u64, description = "seconds to wait")))))]
pub async fn create(
    State(state): State<AppState>,
    auth: MerchantAuth,
    body: Result<Json<CreateKey>, JsonRejection>,
) -> Result<(StatusCode, Json<NewKey>), ApiError> {
    let request = optional_body(body)?;
    Ok((StatusCode::CREATED, Json(keys::create(&state.pool, &auth.merchant_id, &request).await?)))
}

#[utoipa::path(get, path = "/v1/api_keys", tag = "api_keys", security(("bearer" = [])), params(super::PageQuery),
    responses((status = 200, body = List<KeyView>, description = "the merchant's keys (merchant and creator keys, revoked ones too), newest first; never secrets"),
        (status = 401, body = ErrorBody, description = "unauthorized"),
        (status = 403, body = ErrorBody, description = "forbidden: not a merchant key"),
        (status = 422, body = ErrorBody, description = "parameter_invalid"),
        (status = 429, body = ErrorBody, description = "rate_limited",
            headers(("Retry-After" = u64, description = "seconds to wait")))))]
pub async fn list(
    State(state): State<AppState>,
    auth: MerchantAuth,
    query: Result<Query<super::PageQuery>, QueryRejection>,
) -> Result<Json<List<KeyView>>, ApiError> {
    let page = super::list_query(query)?.page("key")?;
    Ok(Json(List::of(keys::list(&state.pool, &auth.merchant_id, &page).await?)))
}

#[utoipa::path(get, path = "/v1/api_keys/{id}", tag = "api_keys", security(("bearer" = [])),
    params(("id" = String, Path, description = "the key id, key_…")),
    responses((status = 200, body = KeyView),
        (status = 401, body = ErrorBody, description = "unauthorized"),
        (status = 403, body = ErrorBody, description = "forbidden: not a merchant key"),
        (status = 404, body = ErrorBody, description = "not_found: no such key for this merchant")))]
pub async fn show(State(state): State<AppState>, auth: MerchantAuth, Path(id): Path<String>) -> Result<Json<KeyView>, ApiError> {
    key_id(&id)?;
    Ok(Json(keys::get(&state.pool, &auth.merchant_id, &id).await?))
}

#[utoipa::path(delete, path = "/v1/api_keys/{id}", tag = "api_keys", security(("bearer" = [])),
    params(("id" = String, Path, description = "the key id, key_…")),
    responses((status = 200, body = KeyView, description = "the key, revoked: refused from the next request on by this daemon, and within a second by every other replica"),
        (status = 401, body = ErrorBody, description = "unauthorized"),
        (status = 403, body = ErrorBody, description = "forbidden: not a merchant key; read_only_key"),
        (status = 404, body = ErrorBody, description = "not_found: no such key for this merchant")))]
pub async fn revoke(State(state): State<AppState>, auth: MerchantAuth, Path(id): Path<String>) -> Result<Json<KeyView>, ApiError> {
    key_id(&id)?;
    let revoked = keys::revoke(&state.pool, &auth.merchant_id, &id, state.clock.now()).await?;
    state.keys.forget(&id);
    Ok(Json(revoked))
}

#[utoipa::path(patch, path = "/v1/api_keys/{id}", tag = "api_keys", security(("bearer" = [])),
    params(("id" = String, Path, description = "the key id, key_…")),
    request_body(content = UpdateKey, description = "name and/or rate_limit (null: the daemon's default)"),
    responses((status = 200, body = KeyView, description = "the key as changed"),
        (status = 400, body = ErrorBody, description = "invalid_json"),
        (status = 401, body = ErrorBody, description = "unauthorized"),
        (status = 403, body = ErrorBody, description = "forbidden: not a merchant key; read_only_key"),
        (status = 404, body = ErrorBody, description = "not_found: no such key for this merchant"),
        (status = 409, body = ErrorBody, description = "api_key_inactive: the key is revoked or expired"),
        (status = 422, body = ErrorBody, description = "invalid_request, parameter_invalid: name or rate out of range")))]
pub async fn update(
    State(state): State<AppState>,
    auth: MerchantAuth,
    Path(id): Path<String>,
    body: Result<Json<UpdateKey>, JsonRejection>,
) -> Result<Json<KeyView>, ApiError> {
    key_id(&id)?;
    let Json(request) = body?;
    let updated = keys::update(&state.pool, &auth.merchant_id, &id, &request, state.clock.now()).await?;
    state.keys.forget(&id);
    Ok(Json(updated))
}

#[utoipa::path(post, path = "/v1/api_keys/{id}/rotate", tag = "api_keys", security(("bearer" = [])),
    params(("id" = String, Path, description = "the key id, key_…"),
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 256, pattern = "^[!-~]+$",
            description = "retries with the same key and body get the first response, with `secret` set to null")),
    request_body(content = Option<RotateKey>, description = "optional: grace_period_s"),
    responses(
        (status = 201, body = NewKey, description = "the new key and its secret (shown only here); the old key works until its expires_at"),
        (status = 401, body = ErrorBody, description = "unauthorized"),
        (status = 403, body = ErrorBody, description = "forbidden: not a merchant key; read_only_key"),
        (status = 404, body = ErrorBody, description = "not_found: no such key for this merchant"),
        (status = 409, body = ErrorBody, description = "api_key_inactive: the key is revoked, expired or already rotated"),
        (status = 422, body = ErrorBody, description = "parameter_invalid: grace_period_s out of 0..=86400")))]
pub async fn rotate(
    State(state): State<AppState>,
    auth: MerchantAuth,
    Path(id): Path<String>,
    body: Result<Json<RotateKey>, JsonRejection>,
) -> Result<(StatusCode, Json<NewKey>), ApiError> {
    key_id(&id)?;
    let request = optional_body(body)?;
    let created = keys::rotate(&state.pool, &auth.merchant_id, &id, &request, state.clock.now()).await?;
    state.keys.forget(&id);
    Ok((StatusCode::CREATED, Json(created)))
}
