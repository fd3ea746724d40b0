//! `Idempotency-Key` on every POST: the first response to a key is stored; a retry with the same
//! method, path and body gets that response again (same status, same body) without running the
//! request twice; a different request under the same key gets 409. A request still running under
//! the key gets 409 too, so two concurrent retries cannot both run. A 5xx is not stored: the
//! client may retry it. Keys are kept for [`IDEMPOTENCY_KEY_TTL_H`] hours, then purged.
//!
//! A claim that never got its response (the process was killed, or the request timeout cut the
//! request) is abandoned once it is older than any request may run ([`in_flight_max`]): the next
//! retry takes it over instead of being told "still running" until the key expires.
//!
//! Security invariants:
//! - The caller is authenticated *before* the store is read: a request whose bearer token does not
//!   verify never reaches the store (it goes on to the handler, which answers 401), and a stored
//!   response is scoped to the authenticated key's id, so only the key that made it can replay it.
//! - One-time secrets are never stored: before a response is kept, every string shaped like a
//!   secret payrail issues (an API key `pr_…_…`, a webhook signing secret `whsec_…`) is replaced
//!   by `null`, so a replay answers with the object and its secret redacted.

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use serde_json::Value;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};


use super::auth::{bearer, Authenticated};
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

/// Added to the request timeout before an unanswered claim counts as abandoned.
pub const IN_FLIGHT_MARGIN_MS: u64 = 5_000;

/// How long a claim without a response may be "still running": the request timeout (the timeout
/// layer ends every request by then) plus [`IN_FLIGHT_MARGIN_MS`].
pub fn in_flight_max(request_timeout_ms: u64) -> chrono::Duration {
    let ms = request_timeout_ms.saturating_add(IN_FLIGHT_MARGIN_MS);
    chrono::Duration::milliseconds(i64::try_from(ms).unwrap_or(i64::MAX))
}

/// Rows purged per statement by [`purge_expired`], so one purge never holds locks for long.
pub const PURGE_BATCH_MAX: i64 = 10_000;

pub async fn middleware(
    State((state, in_flight_max)): State<(AppState, chrono::Duration)>,
    mut request: Request,
    next: Next,
) -> Response {
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let Some(key) = request.headers().get("idempotency-key").cloned() else {
        return next.run(request).await;
    };
    let Some(token) = bearer(request.headers()) else {
        return next.run(request).await;
    };
    if let Some(error) = super::auth::out_of_tokens(&state, token) {
        return error.into_response();
    }
    // Authenticate first: an unverified caller must learn nothing from the store.
    let principal = match state.keys.authenticate(token, state.clock.now()).await {
        Ok(Some(principal)) => principal,
        Ok(None) => return next.run(request).await,
        Err(error) => return ApiError::database(error).into_response(),
    };
    let scope = principal.key_id.clone();
    request.extensions_mut().insert(Authenticated(principal));
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

    match claim(&state, &scope, &key, &request_hash, in_flight_max).await {
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
    .bind(redact(&bytes))
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

async fn claim(
    state: &AppState,
    scope: &str,
    key: &str,
    request_hash: &[u8],
    in_flight_max: chrono::Duration,
) -> Result<Claim, sqlx::Error> {
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
    // The same request, claimed longer ago than any request may run and never answered: the
    // process that claimed it died or its request was cut. One retry takes the claim over.
    let taken_over = sqlx::query(
        "UPDATE idempotency_keys SET created_at = $4 WHERE scope = $1 AND key = $2 AND request_hash = $3 \
         AND status_code IS NULL AND created_at < $5",
    )
    .bind(scope)
    .bind(key)
    .bind(request_hash)
    .bind(now)
    .bind(now - in_flight_max)
    .execute(&state.pool)
    .await?;
    if taken_over.rows_affected() == 1 {
        tracing::info!(target: "api", scope, "an abandoned Idempotency-Key claim was taken over");
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

/// The response as it may be stored: every secret-shaped string replaced by `null`. A body that
/// is not JSON is stored as an empty JSON object rather than risk keeping a secret in it (every
/// response of the API is JSON).
fn redact(body: &[u8]) -> Vec<u8> {
    match serde_json::from_slice::<Value>(body) {
        Ok(mut value) => {
            if !redact_value(&mut value) {
                return body.to_vec();
            }
            serde_json::to_vec(&value).unwrap_or_else(|_| b"{}".to_vec())
        }
        Err(_) => b"{}".to_vec(),
    }
}

/// Replaces secrets in place; `true` when anything was replaced.
fn redact_value(value: &mut Value) -> bool {
    match value {
        Value::String(s) if is_secret(s) => {
            *value = Value::Null;
            true
        }
        Value::Array(items) => items.iter_mut().fold(false, |any, item| redact_value(item) | any),
        Value::Object(fields) => fields.values_mut().fold(false, |any, item| redact_value(item) | any),
        _ => false,
    }
}

/// Whether `s` has the shape of a one-time secret payrail issues: an API key
/// (`pr_<key id>_<secret>`) or a webhook signing secret (`whsec_…`).
fn is_secret(s: &str) -> bool {
    if s.starts_with(crate::webhook::secret::SECRET_PREFIX) {
        return true;
    }
    s.strip_prefix("pr_")
        .and_then(|rest| rest.split_once('_'))
        .is_some_and(|(public, secret)| !public.is_empty() && public.bytes().all(|b| b.is_ascii_alphanumeric()) && secret.len() >= 16)
}

/// Forgets keys older than the replay window, in batches of [`PURGE_BATCH_MAX`]; returns how many.
pub async fn purge_expired(pool: &sqlx::PgPool, now: chrono::DateTime<chrono::Utc>) -> Result<u64, sqlx::Error> {
    let cutoff = now - chrono::Duration::hours(IDEMPOTENCY_KEY_TTL_H);
    let mut purged = 0;
    loop {
        let done = sqlx::query(
            "DELETE FROM idempotency_keys WHERE ctid IN \
               (SELECT ctid FROM idempotency_keys WHERE created_at < $1 LIMIT $2)",
        )
        .bind(cutoff)
        .bind(PURGE_BATCH_MAX)
        .execute(pool)
        .await?
        .rows_affected();
        purged += done;
        if done < u64::try_from(PURGE_BATCH_MAX).unwrap_or(u64::MAX) {
            return Ok(purged);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_before_storing_and_nothing_else() {
        let body = serde_json::json!({
            "id": "we_0123456789abcdef",
            "secret": "whsec_0123456789abcdefghijklmnopqrstuvwxyzABCD",
            "nested": [{"api_key": "pr_0123456789abcdef_0123456789abcdefghijklmnopqrstuvwxyzABCD"}],
            "url": "https://example.com/pr_x",
            "metadata": {"order": "pr_1"},
        });
        let stored: Value = serde_json::from_slice(&redact(&serde_json::to_vec(&body).expect("json"))).expect("json");
        assert_eq!(stored["secret"], Value::Null);
        assert_eq!(stored["nested"][0]["api_key"], Value::Null);
        assert_eq!(stored["id"], body["id"]);
        assert_eq!(stored["url"], body["url"]);
        assert_eq!(stored["metadata"], body["metadata"]);
        // Not JSON: nothing of it is kept.
        assert_eq!(redact(b"whsec_plain"), b"{}".to_vec());
        // Nothing secret: stored byte for byte.
        assert_eq!(redact(br#"{"a": 1}"#), br#"{"a": 1}"#.to_vec());
    }
}
