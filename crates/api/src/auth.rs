//! Bearer API keys. Every handler that reads tenant data takes [`MerchantAuth`] (or, for a
//! creator's own routes, [`CreatorAuth`]), and every query it makes filters by that merchant or
//! creator: another tenant's object is simply not found.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, Method, StatusCode};

use crate::merchant::{Principal, Role};

use super::error::ApiError;
use super::AppState;

/// A request authenticated with a merchant key.
#[derive(Debug, Clone)]
pub struct MerchantAuth {
    pub merchant_id: String,
    /// The key used (`key_…`): a second key can confirm what the first one changed.
    pub key_id: String,
}

impl FromRequestParts<AppState> for MerchantAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let principal = principal(parts, state).await?;
        match (principal.role, principal.merchant_id) {
            (Role::Merchant, Some(merchant_id)) => Ok(Self { merchant_id, key_id: principal.key_id }),
            _ => Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "this key is not a merchant key")),
        }
    }
}

/// A request authenticated with a creator key: it sees that one creator only.
#[derive(Debug, Clone)]
pub struct CreatorAuth {
    pub merchant_id: String,
    pub creator_id: String,
    pub key_id: String,
}

impl FromRequestParts<AppState> for CreatorAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let principal = principal(parts, state).await?;
        match (principal.role, principal.merchant_id, principal.creator_id) {
            (Role::Creator, Some(merchant_id), Some(creator_id)) => Ok(Self { merchant_id, creator_id, key_id: principal.key_id }),
            _ => Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "this key is not a creator key")),
        }
    }
}

/// A request authenticated with a finance or admin key: platform-wide operations (payouts).
#[derive(Debug, Clone)]
pub struct FinanceAuth {
    pub key_id: String,
}

impl FromRequestParts<AppState> for FinanceAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let principal = principal(parts, state).await?;
        match principal.role {
            Role::Finance | Role::Admin => Ok(Self { key_id: principal.key_id }),
            _ => Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "this key is not a finance or admin key")),
        }
    }
}

/// A request authenticated with an admin key: creates merchants.
#[derive(Debug, Clone)]
pub struct AdminAuth {
    pub key_id: String,
}

impl FromRequestParts<AppState> for AdminAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let principal = principal(parts, state).await?;
        match principal.role {
            Role::Admin => Ok(Self { key_id: principal.key_id }),
            _ => Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "this key is not an admin key")),
        }
    }
}

/// A principal already authenticated for this request (by the idempotency layer, which must know
/// who speaks before it may replay anything): handlers reuse it instead of asking again.
#[derive(Debug, Clone)]
pub struct Authenticated(pub Principal);

/// The bearer token of a request, if it has one.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

/// Methods a read-only key may use.
fn reads_only(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The key's principal, after the per-key rate limit; a read-only key is refused for anything
/// but reading. A key already out of tokens is refused before anything else is done for it — no
/// lookup, cached or not — and a verified key is read from memory ([`crate::merchant::cache`]).
async fn principal(parts: &Parts, state: &AppState) -> Result<Principal, ApiError> {
    let principal = match parts.extensions.get::<Authenticated>() {
        Some(Authenticated(principal)) => principal.clone(),
        None => {
            let token = bearer(&parts.headers).ok_or_else(ApiError::unauthorized)?;
            if let Some(error) = out_of_tokens(state, token) {
                return Err(error);
            }
            state.keys.authenticate(token, state.clock.now()).await.map_err(ApiError::database)?.ok_or_else(ApiError::unauthorized)?
        }
    };
    let rate = principal.rate_limit.map(|l| (l.requests_per_s, l.burst));
    if let Err(wait) = state.limiter.check_at(&principal.key_id, std::time::Instant::now(), rate) {
        return Err(rate_limited(wait));
    }
    if principal.read_only && !reads_only(&parts.method) {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "read_only_key", "this API key is read-only: it can only make GET requests"));
    }
    Ok(principal)
}

/// 429 for the key `token` names when it has no token left, found without asking anything of the
/// database (nor checking the secret: looking spends nothing, so a guesser cannot drain a key).
pub(crate) fn out_of_tokens(state: &AppState, token: &str) -> Option<ApiError> {
    let (key_id, _) = crate::merchant::split_token(token)?;
    state.limiter.empty_for(&key_id, std::time::Instant::now()).map(rate_limited)
}

/// 429 for a key out of tokens, with how long to wait.
fn rate_limited(wait: std::time::Duration) -> ApiError {
    let mut error = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "too many requests for this API key");
    error.retry_after_s = Some(wait.as_secs().max(1));
    error
}
