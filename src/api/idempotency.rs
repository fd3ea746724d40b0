//! `Idempotency-Key` on every POST: the first response to a key is stored; a retry with the same
//! method, path and body gets that response again (same status, same body) without running the
//! request twice; a different request under the same key gets 409. A request still running under
//! the key gets 409 too, so two concurrent retries cannot both run. A 5xx is not stored: the
//! client may retry it. Keys are scoped to the API key that sent them and kept for
//! [`IDEMPOTENCY_KEY_TTL_H`] hours.

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::AppState;

/// Longest key accepted.
/// A stored key: the request's hash, and the response once there is one.
type StoredKey = (Vec<u8>, Option<i16>, Option<Vec<u8>>);

pub const IDEMPOTENCY_KEY_LEN_MAX: usize = 256;
/// Largest response stored for replay.
pub const STORED_RESPONSE_BYTES_MAX: usize = 1024 * 1024;
/// Largest request body hashed (the body limit layer refuses larger ones in the handler anyway).
pub const REQUEST_BYTES_MAX: usize = 1024 * 1024;
/// How long a key is remembered.
pub const IDEMPOTENCY_KEY_TTL_H: i64 = 24;

/// The API key id in a bearer token, without touching the database (a malformed token is left to
/// authentication to refuse).
fn scope_of(request: &Request) -> Option<String> {
    let token = request.headers().get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ")?.trim();
    let (public, _) = token.strip_prefix("pr_")?.split_once('_')?;
    Some(format!("key_{public}"))
}

pub async fn middleware(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let Some(key) = request.headers().get("idempotency-key").cloned() else {
        return next.run(request).await;
    };
    let Some(scope) = scope_of(&request) else {
        return next.run(request).await;
    };
    let key = match key.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= IDEMPOTENCY_KEY_LEN_MAX => k.to_owned(),
        _ => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "parameter_invalid",
                format!("Idempotency-Key must be 1..={IDEMPOTENCY_KEY_LEN_MAX} visible ASCII characters"),
            )
            .into_response()
        }
    };
    let (parts, body) = request.into_parts();
    let bytes = match to_bytes(body, REQUEST_BYTES_MAX).await {
        Ok(bytes) => bytes,
        Err(_) => return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "request body too large").into_response(),
    };
    let mut hasher = Sha256::new();
    hasher.update(parts.method.as_str().as_bytes());
    hasher.update([0]);
    hasher.update(parts.uri.path().as_bytes());
    hasher.update([0]);
    hasher.update(&bytes);
    let request_hash = hasher.finalize().to_vec();

    match claim(&state, &scope, &key, &request_hash).await {
        Ok(Claim::Fresh) => {}
        Ok(Claim::Replay(status, body)) => {
            let mut response = (status, body).into_response();
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
            return response;
        }
        Ok(Claim::Conflict(message)) => {
            return ApiError::new(StatusCode::CONFLICT, "idempotency_conflict", message).into_response();
        }
        Err(error) => return ApiError::database(error).into_response(),
    }

    let response = next.run(Request::from_parts(parts, Body::from(bytes))).await;
    let (parts, body) = response.into_parts();
    let bytes = match to_bytes(body, STORED_RESPONSE_BYTES_MAX).await {
        Ok(bytes) => bytes,
        Err(error) => {
            forget(&state, &scope, &key).await;
            return ApiError::internal(error).into_response();
        }
    };
    // Server errors may succeed on retry; refusals of the key itself (unknown, forbidden, rate
    // limited) say nothing about the request and must not let strangers fill the table.
    let not_stored = parts.status.is_server_error()
        || matches!(parts.status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS);
    if not_stored {
        forget(&state, &scope, &key).await;
    } else if let Err(error) = sqlx::query(
        "UPDATE idempotency_keys SET status_code = $3, response_body = $4 WHERE scope = $1 AND key = $2",
    )
    .bind(&scope)
    .bind(&key)
    .bind(i16::try_from(parts.status.as_u16()).unwrap_or(500))
    .bind(bytes.as_ref())
    .execute(&state.pool)
    .await
    {
        tracing::warn!(target: "api", %error, "idempotency key not stored; a retry will run again");
        forget(&state, &scope, &key).await;
    }
    Response::from_parts(parts, Body::from(bytes))
}

enum Claim {
    Fresh,
    Replay(StatusCode, Vec<u8>),
    Conflict(&'static str),
}

async fn claim(state: &AppState, scope: &str, key: &str, request_hash: &[u8]) -> Result<Claim, sqlx::Error> {
    let now = state.clock.now();
    // Expired keys are forgotten first, so a key may be reused after its time.
    sqlx::query("DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2 AND created_at < $3")
        .bind(scope)
        .bind(key)
        .bind(now - chrono::Duration::hours(IDEMPOTENCY_KEY_TTL_H))
        .execute(&state.pool)
        .await?;
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (scope, key, request_hash, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (scope, key) DO NOTHING",
    )
    .bind(scope)
    .bind(key)
    .bind(request_hash)
    .bind(now)
    .execute(&state.pool)
    .await?;
    if inserted.rows_affected() == 1 {
        return Ok(Claim::Fresh);
    }
    let row: Option<StoredKey> = sqlx::query_as(
        "SELECT request_hash, status_code, response_body FROM idempotency_keys WHERE scope = $1 AND key = $2",
    )
    .bind(scope)
    .bind(key)
    .fetch_optional(&state.pool)
    .await?;
    Ok(match row {
        // Deleted in between (a 5xx was forgotten): let this one run.
        None => Claim::Fresh,
        Some((stored, _, _)) if stored != request_hash => {
            Claim::Conflict("this Idempotency-Key was used for a different request")
        }
        Some((_, Some(status), Some(body))) => Claim::Replay(
            StatusCode::from_u16(u16::try_from(status).unwrap_or(500)).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            body,
        ),
        Some(_) => Claim::Conflict("a request with this Idempotency-Key is still running"),
    })
}

async fn forget(state: &AppState, scope: &str, key: &str) {
    if let Err(error) = sqlx::query("DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2")
        .bind(scope)
        .bind(key)
        .execute(&state.pool)
        .await
    {
        tracing::warn!(target: "api", %error, "idempotency key not released");
    }
}
