//! Errors of the webhook module. Variants carry the failing key; none carries a secret or a URL.

use thiserror::Error;

pub type Result<T, E = WebhookError> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum WebhookError {
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("merchant {merchant_id} already has {max} webhook endpoints")]
    TooManyEndpoints { merchant_id: String, max: usize },
    #[error("webhook endpoint {id} not found")]
    EndpointNotFound { id: String },
    #[error("event {id} not found")]
    EventNotFound { id: String },
    #[error("cannot build the webhook HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("stored value {value:?} in {column} is not valid")]
    Corrupt { column: &'static str, value: String },
    #[error("signing secret of endpoint {endpoint_id}: {source}")]
    Secret { endpoint_id: String, source: crate::secrets::SecretsError },
    #[error("signing secret of endpoint {endpoint_id} is sealed, but no secrets key is configured")]
    SecretsKeyMissing { endpoint_id: String },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}
