//! Merchants, for admin keys: `POST /v1/merchants` creates a merchant and its first API key.

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::merchant::{create_merchant, MerchantError};

use super::auth::AdminAuth;
use super::error::ApiError;
use super::openapi::ErrorBody;
use super::AppState;

impl From<MerchantError> for ApiError {
    fn from(error: MerchantError) -> Self {
        match error {
            MerchantError::InvalidName => Self::new(StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid", format!("name: {error}")),
            MerchantError::Database(error) => Self::database(error),
            MerchantError::NotPlatformRole => Self::internal(error),
        }
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateMerchant {
    /// The merchant's display name, 1..=200 characters.
    pub name: String,
}

/// A new merchant with its first API key, shown only in this response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedMerchant {
    /// `mer_…`
    pub id: String,
    #[schema(value_type = String, example = "merchant")]
    pub object: &'static str,
    pub name: String,
    pub created_at: DateTime<Utc>,
    /// The merchant's first API key. Shown only here: an idempotent replay answers with null.
    #[schema(value_type = Option<String>)]
    pub api_key: String,
}

#[utoipa::path(post, path = "/v1/merchants", tag = "merchants", security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 256, pattern = "^[!-~]+$",
        description = "retries with the same key and body get the first response, with `api_key` set to null")),
    request_body = CreateMerchant,
    responses(
        (status = 201, body = CreatedMerchant, description = "the merchant and its first API key (shown only here)"),
        (status = 400, body = ErrorBody, description = "invalid_json"),
        (status = 401, body = ErrorBody, description = "unauthorized"),
        (status = 403, body = ErrorBody, description = "forbidden: not an admin key"),
        (status = 409, body = ErrorBody, description = "idempotency_conflict"),
        (status = 422, body = ErrorBody, description = "invalid_request, parameter_invalid")))]
pub async fn create(
    State(state): State<AppState>,
    _auth: AdminAuth,
    body: Result<Json<CreateMerchant>, JsonRejection>,
) -> Result<(StatusCode, Json<CreatedMerchant>), ApiError> {
    let Json(request) = body?;
    if request.name.contains('\0') {
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid", "name: must not contain NUL"));
    }
    let created = create_merchant(&state.pool, &request.name).await?;
    let body = CreatedMerchant {
        id: created.merchant_id,
        object: "merchant",
        name: request.name.trim().to_owned(),
        created_at: created.created_at,
        api_key: created.api_key,
    };
    Ok((StatusCode::CREATED, Json(body)))
}
