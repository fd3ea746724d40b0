//! The one mapping from internal errors to HTTP. Clients get a stable `code` and a message; internal
//! details (SQL, stack) are logged, never returned.

use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::invoice::InvoiceError;

/// Seconds a client is told to wait while the database is unavailable.
pub const DATABASE_RETRY_AFTER_S: u64 = 2;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds to send as `Retry-After` (429, 503).
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), retry_after_s: None }
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("{what} not found"))
    }

    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", "a valid API key is required: Authorization: Bearer <key>")
    }

    /// A database error: 503 `database_unavailable` with `Retry-After` when the database cannot be
    /// reached (a restart, a full pool), so clients retry instead of giving up; anything else is
    /// internal.
    pub fn database(error: sqlx::Error) -> Self {
        if crate::db::is_unavailable(&error) {
            tracing::warn!(target: "api", %error, "database unavailable");
            let mut unavailable =
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "database_unavailable", "the database is unavailable; retry shortly");
            unavailable.retry_after_s = Some(DATABASE_RETRY_AFTER_S);
            unavailable
        } else {
            Self::internal(error)
        }
    }

    /// A ledger error: as [`ApiError::database`] for its database errors, else internal.
    pub fn ledger(error: payrail_store::ledger::LedgerError) -> Self {
        match error {
            payrail_store::ledger::LedgerError::Database(error) => Self::database(error),
            // A guarded balance would go negative: money that already left (a creator's share paid out).
            error @ payrail_store::ledger::LedgerError::InsufficientBalance { .. } => {
                Self::new(StatusCode::CONFLICT, "insufficient_funds", error.to_string())
            }
            other => Self::internal(other),
        }
    }

    pub fn internal(error: impl std::fmt::Display) -> Self {
        tracing::error!(target: "api", %error, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after_s {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(seconds));
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonSyntaxError(e) => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_json", format!("malformed JSON: {}", e.body_text()))
            }
            JsonRejection::JsonDataError(e) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", e.body_text())
            }
            JsonRejection::MissingJsonContentType(_) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as application/json",
            ),
            JsonRejection::BytesRejection(e) => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", e.body_text())
            }
            other => Self::new(StatusCode::BAD_REQUEST, "invalid_request", other.body_text()),
        }
    }
}

impl From<InvoiceError> for ApiError {
    fn from(error: InvoiceError) -> Self {
        use InvoiceError::*;
        let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
        match error {
            NotFound { .. } => Self::not_found("invoice"),
            PaymentNotFound { .. } => Self::not_found("payment"),
            RefundNotFound { .. } => Self::not_found("refund"),
            Refused { code, reason } => Self::new(StatusCode::CONFLICT, code, reason),
            Invalid { field, reason } => Self::new(unprocessable, "parameter_invalid", format!("{field}: {reason}")),
            UnsupportedCurrency { .. } => Self::new(unprocessable, "currency_unsupported", error.to_string()),
            UnsupportedAsset { .. } => Self::new(unprocessable, "asset_unsupported", error.to_string()),
            RateUnavailable { .. } => Self::new(unprocessable, "rate_unavailable", error.to_string()),
            IdempotencyConflict { .. } => Self::new(StatusCode::CONFLICT, "idempotency_conflict", error.to_string()),
            WrongState { .. } => Self::new(StatusCode::CONFLICT, "invoice_state", error.to_string()),
            Database(error) => Self::database(error),
            Ledger(error) => Self::ledger(error),
            Credits(error) => error.into(),
            Subscriptions(error) => error.into(),
            PaymentMismatch { .. } | Corrupt { .. } | Plan(_) => Self::internal(error),
        }
    }
}
