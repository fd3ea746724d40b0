//! The lifecycle of API keys: a merchant creates more keys (optionally read-only and named), lists
//! them (never their secrets), revokes one, or rotates one — a new key at once and the old one
//! valid for a grace period the caller picks, at most [`ROTATION_GRACE_S_MAX`].
//!
//! Invariants: a key's secret exists in plaintext only in the response that created it; a revoked
//! key never authenticates again; a merchant sees and changes only its own keys (its merchant keys
//! and the creator keys it issued) — another merchant's key id is simply not found.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use payrail_store::page::{Listing, Order, Page};
use sqlx::PgPool;
use thiserror::Error;

use super::{insert_key, KeySpec};

/// The longest a rotated key may stay valid beside its successor.
pub const ROTATION_GRACE_S_MAX: i64 = 24 * 60 * 60;
/// The grace period when the caller names none.
pub const ROTATION_GRACE_S_DEFAULT: i64 = 60 * 60;
/// Longest key name.
pub const KEY_NAME_LEN_MAX: usize = 200;
/// Most keys one merchant may hold unrevoked (merchant and creator keys together are not
/// counted: creator keys come with creators).
pub const MERCHANT_KEYS_ACTIVE_MAX: i64 = 100;

#[derive(Debug, Error)]
pub enum KeyError {
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("api key {key_id} not found")]
    NotFound { key_id: String },
    #[error("api key {key_id} is revoked or expired")]
    Inactive { key_id: String },
    #[error("a merchant may hold at most {MERCHANT_KEYS_ACTIVE_MAX} active keys")]
    TooManyKeys,
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

pub type Result<T, E = KeyError> = std::result::Result<T, E>;

/// A key as its merchant sees it: never its secret or its hash.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct KeyView {
    /// `key_…`: also the middle part of the key itself (`pr_<id without key_>_<secret>`).
    pub id: String,
    #[schema(value_type = String, example = "api_key")]
    pub object: &'static str,
    /// `merchant` or `creator`.
    pub role: String,
    pub name: Option<String>,
    /// A read-only key can only make GET requests.
    pub read_only: bool,
    /// The creator a creator key speaks for.
    pub creator_id: Option<String>,
    pub created_at: DateTime<Utc>,
    /// Refreshed at most once a minute.
    pub last_used_at: Option<DateTime<Utc>>,
    /// Set on a rotated key: it stops working then.
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// The key that replaced this one, after a rotation.
    pub rotated_to: Option<String>,
    /// The key's own request rate; null for the daemon's default (`[server] key_requests_per_s`
    /// and `key_burst`).
    pub rate_limit: Option<KeyRateLimit>,
}

/// How many requests a key may make: a token bucket refilled at `requests_per_s`, holding at
/// most `burst`. Past it requests get 429 with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyRateLimit {
    /// 1..=100000.
    pub requests_per_s: u32,
    /// 1..=1000000.
    pub burst: u32,
}

/// Largest `requests_per_s` a key may be given.
pub const KEY_REQUESTS_PER_S_MAX: u32 = 100_000;
/// Largest `burst` a key may be given.
pub const KEY_BURST_MAX: u32 = 1_000_000;

impl KeyRateLimit {
    fn check(self) -> Result<Self> {
        if !(1..=KEY_REQUESTS_PER_S_MAX).contains(&self.requests_per_s) {
            return Err(KeyError::Invalid { field: "rate_limit.requests_per_s", reason: format!("must be 1..={KEY_REQUESTS_PER_S_MAX}") });
        }
        if !(1..=KEY_BURST_MAX).contains(&self.burst) {
            return Err(KeyError::Invalid { field: "rate_limit.burst", reason: format!("must be 1..={KEY_BURST_MAX}") });
        }
        Ok(self)
    }

    /// The rate the two columns hold: both set, or none.
    pub(crate) fn from_columns(requests_per_s: Option<i32>, burst: Option<i32>) -> Option<Self> {
        let requests_per_s = u32::try_from(requests_per_s?).ok()?;
        let burst = u32::try_from(burst?).ok()?;
        Some(Self { requests_per_s, burst })
    }

    /// The two columns: both set, or both NULL.
    pub(crate) fn columns(limit: Option<Self>) -> (Option<i32>, Option<i32>) {
        match limit {
            Some(l) => (i32::try_from(l.requests_per_s).ok(), i32::try_from(l.burst).ok()),
            None => (None, None),
        }
    }
}

/// A change to a key: each field present is set (`rate_limit: null` returns the key to the
/// daemon's default); absent fields stay.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateKey {
    /// A label for the key (1..=200 characters).
    pub name: Option<String>,
    /// The key's own request rate, or null for the daemon's default.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<KeyRateLimit>)]
    pub rate_limit: Option<Option<KeyRateLimit>>,
}

/// Tells a field given as `null` (`Some(None)`) from one left out (`None`).
fn present<'de, D, T>(deserializer: D) -> std::result::Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    Ok(Some(<Option<T> as serde::Deserialize>::deserialize(deserializer)?))
}

/// A key just made, with its secret: the only time the secret is shown.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NewKey {
    #[serde(flatten)]
    pub key: KeyView,
    /// The key itself (`Authorization: Bearer <secret>`). Shown only in this response: an
    /// idempotent replay of the request answers with `null` here.
    #[schema(value_type = Option<String>)]
    pub secret: String,
}

/// What a merchant asks for in a new key.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// A label for the key (1..=200 characters), e.g. where it is deployed.
    pub name: Option<String>,
    /// A read-only key can only read (GET); it is refused for anything else with 403.
    #[serde(default)]
    pub read_only: bool,
    /// The key's own request rate; the daemon's default when absent.
    pub rate_limit: Option<KeyRateLimit>,
}

/// How a rotation goes.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    /// Seconds the old key keeps working beside the new one: 0 (revoked at once) ..= 86400;
    /// 3600 when absent.
    pub grace_period_s: Option<i64>,
}

type KeyRow = (
    String,
    String,
    Option<String>,
    bool,
    Option<String>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Option<String>,
    Option<i32>,
    Option<i32>,
);

const KEY_COLUMNS: &str =
    "id, role, name, read_only, creator_id, created_at, last_used_at, expires_at, revoked_at, rotated_to, requests_per_s, burst";

fn view(row: KeyRow) -> KeyView {
    let (id, role, name, read_only, creator_id, created_at, last_used_at, expires_at, revoked_at, rotated_to, per_s, burst) = row;
    let rate_limit = KeyRateLimit::from_columns(per_s, burst);
    KeyView { id, object: "api_key", role, name, read_only, creator_id, created_at, last_used_at, expires_at, revoked_at, rotated_to, rate_limit }
}

fn check_name(name: Option<&str>) -> Result<Option<String>> {
    match name.map(str::trim) {
        None => Ok(None),
        Some(n) if n.is_empty() || n.chars().count() > KEY_NAME_LEN_MAX || n.contains('\0') => Err(KeyError::Invalid {
            field: "name",
            reason: format!("must be 1..={KEY_NAME_LEN_MAX} characters"),
        }),
        Some(n) => Ok(Some(n.to_owned())),
    }
}

async fn fetch(conn: &mut sqlx::PgConnection, merchant_id: &str, key_id: &str, lock: bool) -> Result<KeyView> {
    let lock = if lock { " FOR UPDATE" } else { "" };
    let row: Option<KeyRow> =
        sqlx::query_as(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1 AND merchant_id = $2{lock}"))
            .bind(key_id)
            .bind(merchant_id)
            .fetch_optional(conn)
            .await?;
    row.map(view).ok_or_else(|| KeyError::NotFound { key_id: key_id.to_owned() })
}

/// A new merchant key.
pub async fn create(pool: &PgPool, merchant_id: &str, request: &CreateKey) -> Result<NewKey> {
    let name = check_name(request.name.as_deref())?;
    let rate_limit = request.rate_limit.map(KeyRateLimit::check).transpose()?;
    let mut tx = pool.begin().await?;
    // The merchant row serialises concurrent creations, so the cap holds.
    sqlx::query("SELECT 1 FROM merchants WHERE id = $1 FOR UPDATE").bind(merchant_id).execute(&mut *tx).await?;
    let active: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM api_keys WHERE merchant_id = $1 AND role = 'merchant' AND revoked_at IS NULL",
    )
    .bind(merchant_id)
    .fetch_one(&mut *tx)
    .await?;
    if active >= MERCHANT_KEYS_ACTIVE_MAX {
        return Err(KeyError::TooManyKeys);
    }
    let spec =
        KeySpec { role: "merchant", merchant_id: Some(merchant_id), creator_id: None, name: name.as_deref(), read_only: request.read_only, rate_limit };
    let (key_id, secret) = insert_key(&mut tx, &spec).await?;
    let key = fetch(&mut tx, merchant_id, &key_id, false).await?;
    tx.commit().await?;
    Ok(NewKey { key, secret })
}

/// A page of the merchant's keys, newest first, and whether more follow.
pub async fn list(pool: &PgPool, merchant_id: &str, page: &Page) -> Result<(Vec<KeyView>, bool)> {
    const KEYS: Listing =
        Listing { table: "api_keys", columns: KEY_COLUMNS, owner: "merchant_id", id: "id", order: Order("created_at DESC, id DESC") };
    let (rows, has_more): (Vec<KeyRow>, bool) = KEYS.page(pool, merchant_id, page).await?;
    Ok((rows.into_iter().map(view).collect(), has_more))
}

/// One of the merchant's keys.
pub async fn get(pool: &PgPool, merchant_id: &str, key_id: &str) -> Result<KeyView> {
    let mut conn = pool.acquire().await?;
    fetch(&mut conn, merchant_id, key_id, false).await
}

/// Revokes one of the merchant's keys at `now`. Revoking a revoked key changes nothing and
/// answers the same.
pub async fn revoke(pool: &PgPool, merchant_id: &str, key_id: &str, now: DateTime<Utc>) -> Result<KeyView> {
    let mut tx = pool.begin().await?;
    fetch(&mut tx, merchant_id, key_id, true).await?;
    sqlx::query("UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
        .bind(key_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    let key = fetch(&mut tx, merchant_id, key_id, false).await?;
    tx.commit().await?;
    Ok(key)
}

/// Revokes any key by id (the operator's `payrail keys revoke`). `false` when no such key exists.
pub async fn revoke_any(pool: &PgPool, key_id: &str, now: DateTime<Utc>) -> Result<bool> {
    let found: Option<String> = sqlx::query_scalar(
        "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1 RETURNING id",
    )
    .bind(key_id)
    .bind(now)
    .fetch_optional(pool)
    .await?;
    Ok(found.is_some())
}

/// Rotates one of the merchant's keys: a new key with the same role, creator, name and
/// read-only flag, and the old key expiring after the grace period (revoked at once for 0).
pub async fn rotate(
    pool: &PgPool,
    merchant_id: &str,
    key_id: &str,
    request: &RotateKey,
    now: DateTime<Utc>,
) -> Result<NewKey> {
    let grace_s = request.grace_period_s.unwrap_or(ROTATION_GRACE_S_DEFAULT);
    if !(0..=ROTATION_GRACE_S_MAX).contains(&grace_s) {
        return Err(KeyError::Invalid {
            field: "grace_period_s",
            reason: format!("must be 0..={ROTATION_GRACE_S_MAX} seconds"),
        });
    }
    let mut tx = pool.begin().await?;
    let old = fetch(&mut tx, merchant_id, key_id, true).await?;
    let expired = old.expires_at.is_some_and(|at| at <= now);
    if old.revoked_at.is_some() || expired || old.rotated_to.is_some() {
        return Err(KeyError::Inactive { key_id: key_id.to_owned() });
    }
    let spec = KeySpec {
        role: &old.role,
        merchant_id: Some(merchant_id),
        creator_id: old.creator_id.as_deref(),
        name: old.name.as_deref(),
        read_only: old.read_only,
        rate_limit: old.rate_limit,
    };
    let (new_id, secret) = insert_key(&mut tx, &spec).await?;
    let (expires_at, revoked_at) = if grace_s == 0 { (None, Some(now)) } else { (Some(now + Duration::seconds(grace_s)), None) };
    sqlx::query("UPDATE api_keys SET expires_at = $2, revoked_at = $3, rotated_to = $4 WHERE id = $1")
        .bind(key_id)
        .bind(expires_at)
        .bind(revoked_at)
        .bind(&new_id)
        .execute(&mut *tx)
        .await?;
    let key = fetch(&mut tx, merchant_id, &new_id, false).await?;
    tx.commit().await?;
    Ok(NewKey { key, secret })
}

/// Changes one of the merchant's keys (its name, its rate). A revoked or expired key cannot be
/// changed.
pub async fn update(pool: &PgPool, merchant_id: &str, key_id: &str, request: &UpdateKey, now: DateTime<Utc>) -> Result<KeyView> {
    let name = check_name(request.name.as_deref())?;
    let rate_limit = request.rate_limit.map(|l| l.map(KeyRateLimit::check).transpose()).transpose()?;
    let mut tx = pool.begin().await?;
    let old = fetch(&mut tx, merchant_id, key_id, true).await?;
    if old.revoked_at.is_some() || old.expires_at.is_some_and(|at| at <= now) {
        return Err(KeyError::Inactive { key_id: key_id.to_owned() });
    }
    let (per_s, burst) = KeyRateLimit::columns(rate_limit.unwrap_or(old.rate_limit));
    sqlx::query("UPDATE api_keys SET name = coalesce($2, name), requests_per_s = $3, burst = $4 WHERE id = $1")
        .bind(key_id)
        .bind(name)
        .bind(per_s)
        .bind(burst)
        .execute(&mut *tx)
        .await?;
    let key = fetch(&mut tx, merchant_id, key_id, false).await?;
    tx.commit().await?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(check_name(None).expect("none"), None);
        assert_eq!(check_name(Some("  ci  ")).expect("ok").as_deref(), Some("ci"));
        assert!(matches!(check_name(Some("   ")), Err(KeyError::Invalid { field: "name", .. })));
        assert!(matches!(check_name(Some(&"x".repeat(KEY_NAME_LEN_MAX + 1))), Err(KeyError::Invalid { .. })));
        assert!(matches!(check_name(Some("a\0b")), Err(KeyError::Invalid { .. })));
    }

    #[test]
    fn key_rates_are_bounded() {
        let ok = KeyRateLimit { requests_per_s: 1, burst: KEY_BURST_MAX };
        assert_eq!(ok.check().expect("in range"), ok);
        let zero = KeyRateLimit { requests_per_s: 0, burst: 10 };
        assert!(matches!(zero.check(), Err(KeyError::Invalid { field: "rate_limit.requests_per_s", .. })));
        let huge = KeyRateLimit { requests_per_s: 10, burst: KEY_BURST_MAX + 1 };
        assert!(matches!(huge.check(), Err(KeyError::Invalid { field: "rate_limit.burst", .. })));
    }

    #[test]
    fn an_update_tells_null_from_absent() {
        let absent: UpdateKey = serde_json::from_str(r#"{"name":"ci"}"#).expect("parses");
        assert_eq!(absent.rate_limit, None);
        let null: UpdateKey = serde_json::from_str(r#"{"rate_limit":null}"#).expect("parses");
        assert_eq!(null.rate_limit, Some(None));
        let set: UpdateKey = serde_json::from_str(r#"{"rate_limit":{"requests_per_s":5,"burst":10}}"#).expect("parses");
        assert_eq!(set.rate_limit, Some(Some(KeyRateLimit { requests_per_s: 5, burst: 10 })));
    }
}
