//! Merchants and API keys.
//!
//! A key is shown once, at creation: `pr_<key id>_<secret>`. Only SHA-256 of the secret is stored;
//! the key id finds the row and the digests are compared in constant time.

use chrono::{DateTime, Utc};
use rand::Rng;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use subtle::ConstantTimeEq;
use thiserror::Error;

use crate::ids::new_id;

const SECRET_LEN: usize = 40;
const SECRET_ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
/// Longest name a merchant may have.
pub const MERCHANT_NAME_LEN_MAX: usize = 200;

pub mod bitcoin;
pub mod cache;
pub mod keys;

#[derive(Debug, Error)]
pub enum MerchantError {
    #[error("merchant name must be 1..={MERCHANT_NAME_LEN_MAX} characters")]
    InvalidName,
    #[error("a platform key is a finance or admin key")]
    NotPlatformRole,
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Merchant,
    Creator,
    Finance,
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "merchant" => Self::Merchant,
            "creator" => Self::Creator,
            "finance" => Self::Finance,
            "admin" => Self::Admin,
            _ => return None,
        })
    }
}

/// Who a request speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub key_id: String,
    pub role: Role,
    pub merchant_id: Option<String>,
    /// The one creator a `creator` key speaks for.
    pub creator_id: Option<String>,
    /// A read-only key may only read (GET): it cannot create, change or delete anything.
    pub read_only: bool,
    /// The key's own request rate; `None` for the daemon's default.
    pub rate_limit: Option<keys::KeyRateLimit>,
}

/// A merchant and the one-time plaintext of its first API key.
#[derive(Debug, Clone)]
pub struct NewMerchant {
    pub merchant_id: String,
    pub api_key: String,
    pub created_at: DateTime<Utc>,
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

pub async fn create_merchant(pool: &PgPool, name: &str) -> Result<NewMerchant, MerchantError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MERCHANT_NAME_LEN_MAX {
        return Err(MerchantError::InvalidName);
    }
    let merchant_id = new_id("mer");
    let mut tx = pool.begin().await?;
    let created_at: DateTime<Utc> =
        sqlx::query_scalar("INSERT INTO merchants (id, name) VALUES ($1, $2) RETURNING created_at")
            .bind(&merchant_id)
            .bind(name)
            .fetch_one(&mut *tx)
            .await?;
    let api_key = issue_key(&mut tx, "merchant", Some(&merchant_id)).await?;
    tx.commit().await?;
    Ok(NewMerchant { merchant_id, api_key, created_at })
}

/// Issues the API key of a creator (role `creator`, scoped to `creator_id`) on the caller's
/// transaction; returns its one-time plaintext.
pub async fn issue_creator_key(
    conn: &mut sqlx::PgConnection,
    merchant_id: &str,
    creator_id: &str,
) -> Result<String, sqlx::Error> {
    let key = issue_key(&mut *conn, "creator", Some(merchant_id)).await?;
    let key_id = key_id_of(&key).unwrap_or_default();
    sqlx::query("UPDATE api_keys SET creator_id = $2 WHERE id = $1")
        .bind(key_id)
        .bind(creator_id)
        .execute(conn)
        .await?;
    Ok(key)
}

/// Issues a platform-wide key (`finance` or `admin`: no merchant) and returns its one-time
/// plaintext. Such keys run payouts and read across merchants, so only an operator with database
/// access can make one.
pub async fn create_platform_key(pool: &PgPool, role: Role) -> Result<String, MerchantError> {
    let role = match role {
        Role::Finance => "finance",
        Role::Admin => "admin",
        Role::Merchant | Role::Creator => return Err(MerchantError::NotPlatformRole),
    };
    let mut conn = pool.acquire().await?;
    Ok(issue_key(&mut conn, role, None).await?)
}

fn key_id_of(token: &str) -> Option<String> {
    token.strip_prefix("pr_").and_then(|rest| rest.split_once('_')).map(|(public, _)| format!("key_{public}"))
}

async fn issue_key(conn: &mut sqlx::PgConnection, role: &str, merchant_id: Option<&str>) -> Result<String, sqlx::Error> {
    let spec = KeySpec { role, merchant_id, creator_id: None, name: None, read_only: false, rate_limit: None };
    Ok(insert_key(conn, &spec).await?.1)
}

/// What a new key is: its role and tenant, and what the merchant said of it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeySpec<'a> {
    pub role: &'a str,
    pub merchant_id: Option<&'a str>,
    pub creator_id: Option<&'a str>,
    pub name: Option<&'a str>,
    pub read_only: bool,
    pub rate_limit: Option<keys::KeyRateLimit>,
}

/// Inserts a key with a fresh secret; returns its id and its one-time plaintext.
pub(crate) async fn insert_key(conn: &mut sqlx::PgConnection, spec: &KeySpec<'_>) -> Result<(String, String), sqlx::Error> {
    let key_id = new_id("key");
    let secret: String = {
        let mut rng = rand::thread_rng();
        (0..SECRET_LEN).map(|_| char::from(SECRET_ALPHABET[rng.gen_range(0..SECRET_ALPHABET.len())])).collect()
    };
    sqlx::query(
        "INSERT INTO api_keys (id, merchant_id, role, secret_hash, creator_id, name, read_only, requests_per_s, burst) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&key_id)
    .bind(spec.merchant_id)
    .bind(spec.role)
    .bind(&digest(&secret)[..])
    .bind(spec.creator_id)
    .bind(spec.name)
    .bind(spec.read_only)
    .bind(keys::KeyRateLimit::columns(spec.rate_limit).0)
    .bind(keys::KeyRateLimit::columns(spec.rate_limit).1)
    .execute(conn)
    .await?;
    let public = key_id.trim_start_matches("key_");
    let plaintext = format!("pr_{public}_{secret}");
    Ok((key_id, plaintext))
}

/// How stale `last_used_at` may get before an authenticated request refreshes it: one write per key
/// and minute at most, not one per request.
pub const LAST_USED_REFRESH_S: i64 = 60;

/// Resolves a bearer token to its principal at `now`; `None` for anything unknown, revoked,
/// expired (a rotated key past its grace period) or malformed. This asks the database every time
/// (the operator's commands); the API asks through a [`cache::KeyCache`].
pub async fn authenticate(pool: &PgPool, token: &str, now: DateTime<Utc>) -> Result<Option<Principal>, sqlx::Error> {
    let Some((key_id, secret)) = split_token(token) else {
        return Ok(None);
    };
    let Some(stored) = StoredKey::load(pool, &key_id).await? else {
        return Ok(None);
    };
    let principal = stored.admit(&key_id, secret, now);
    if principal.is_some() && stored.stale_use(now) {
        touch(pool, &key_id, now).await?;
    }
    Ok(principal)
}

/// The key id and secret of a well-formed token `pr_<id>_<secret>`; `None` for anything else.
pub fn split_token(token: &str) -> Option<(String, &str)> {
    let (public, secret) = token.strip_prefix("pr_")?.split_once('_')?;
    let key_id = format!("key_{public}");
    (crate::ids::is_id(&key_id, "key") && secret.len() == SECRET_LEN).then_some((key_id, secret))
}

/// An unrevoked `api_keys` row, as authentication reads it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct StoredKey {
    secret_hash: Vec<u8>,
    role: String,
    merchant_id: Option<String>,
    creator_id: Option<String>,
    read_only: bool,
    expires_at: Option<DateTime<Utc>>,
    pub(crate) last_used_at: Option<DateTime<Utc>>,
    requests_per_s: Option<i32>,
    burst: Option<i32>,
}

impl StoredKey {
    /// The key `key_id` unless it is unknown or revoked.
    pub(crate) async fn load(pool: &PgPool, key_id: &str) -> Result<Option<Self>, sqlx::Error> {
        sqlx::query_as(
            "SELECT secret_hash, role, merchant_id, creator_id, read_only, expires_at, last_used_at, requests_per_s, burst \
               FROM api_keys WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(key_id)
        .fetch_optional(pool)
        .await
    }

    /// Who `secret` speaks for at `now`: `None` for a wrong secret or an expired key.
    pub(crate) fn admit(&self, key_id: &str, secret: &str, now: DateTime<Utc>) -> Option<Principal> {
        if !bool::from(self.secret_hash.as_slice().ct_eq(&digest(secret)[..])) {
            return None;
        }
        if self.expires_at.is_some_and(|at| at <= now) {
            return None;
        }
        let rate_limit = keys::KeyRateLimit::from_columns(self.requests_per_s, self.burst);
        Role::parse(&self.role).map(|role| Principal {
            key_id: key_id.to_owned(),
            role,
            merchant_id: self.merchant_id.clone(),
            creator_id: self.creator_id.clone(),
            read_only: self.read_only,
            rate_limit,
        })
    }

    /// Whether `last_used_at` is due a refresh at `now`.
    pub(crate) fn stale_use(&self, now: DateTime<Utc>) -> bool {
        self.last_used_at.is_none_or(|at| now - at >= chrono::Duration::seconds(LAST_USED_REFRESH_S))
    }
}

/// Records that `key_id` was used at `now` (never moving it back).
pub(crate) async fn touch(pool: &PgPool, key_id: &str, now: DateTime<Utc>) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE api_keys SET last_used_at = $2 WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2)")
        .bind(key_id)
        .bind(now)
        .execute(pool)
        .await?;
    Ok(())
}
