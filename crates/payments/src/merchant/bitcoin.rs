//! Merchants' descriptors and the allocation of one fresh child index per invoice, in PostgreSQL.
//!
//! Invariants:
//! - A merchant has at most one active descriptor per Bitcoin chain; a descriptor (identified by
//!   its address at index 0, so two spellings of one key are one descriptor) belongs to one
//!   merchant.
//! - [`allocate`] runs on the invoice's transaction and holds the descriptor row's lock until it
//!   commits: concurrent invoices get distinct indexes, and a rolled-back invoice gives its index
//!   back only because nothing of it was ever written. A committed index is never handed out
//!   again, and `next_index` only grows.
//! - An address already taken on the chain (by any descriptor) is skipped, never shared.
//!
//! Gap limit: wallets restored from an xpub scan until they see `gap_limit` unused addresses in a
//! row. An address counts as used once a payment to it was credited. When the addresses allocated
//! after the last used one reach the merchant's gap limit, allocation goes on (an address is never
//! recycled) but a warning is logged, counted in `payrail_bitcoin_gap_limit_reached_total` and
//! shown as `gap_limit_reached` on `GET /v1/merchants/me/bitcoin`: the merchant should raise
//! the gap limit of the wallet that holds the keys.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool, Row};
use thiserror::Error;

use crate::metrics;
use crate::money::ChainId;

use payrail_core::chain::bitcoin::descriptor::{network_of, DescriptorError, WatchDescriptor, CHILD_INDEX_MAX};

/// Gap limit when the merchant does not give one: what most wallets scan by default.
pub const GAP_LIMIT_DEFAULT: u32 = 20;
/// Largest gap limit accepted.
pub const GAP_LIMIT_MAX: u32 = 100_000;
/// Most taken addresses skipped in one allocation before giving up.
pub const ALLOCATION_SKIPS_MAX: u32 = 100;

#[derive(Debug, Error)]
pub enum AllocationError {
    #[error(transparent)]
    Descriptor(#[from] DescriptorError),
    #[error("gap_limit must be 1 to {GAP_LIMIT_MAX}, got {gap_limit}")]
    GapLimit { gap_limit: u64 },
    #[error("chain {chain} is not a Bitcoin network payrail knows")]
    UnknownChain { chain: String },
    #[error("this descriptor is already in use by another merchant on {chain} (address {address})")]
    InUse { chain: String, address: String },
    #[error("descriptor {descriptor_id} has no free child index left below 2^31")]
    Exhausted { descriptor_id: i64 },
    #[error("stored descriptor {descriptor_id} does not parse any more: {source}")]
    Corrupt { descriptor_id: i64, source: DescriptorError },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl AllocationError {
    /// Whether the same request may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Database(_))
    }
}

pub type Result<T, E = AllocationError> = std::result::Result<T, E>;

/// The body of `PUT /v1/merchants/me/bitcoin`.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetDescriptor {
    /// A watch-only output descriptor: `wpkh([fingerprint/84h/0h/0h]xpub…/0/*)` or `tr(…/0/*)`;
    /// tpub on test networks; a `#checksum` is verified when present.
    pub descriptor: String,
    /// Unused addresses in a row after which a wallet restored from the key stops scanning.
    #[serde(default)]
    pub gap_limit: Option<u64>,
}

/// A merchant's Bitcoin settings on one chain.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BitcoinSettings {
    #[schema(value_type = String, example = "bitcoin_settings")]
    pub object: &'static str,
    /// CAIP-2 id of the chain.
    pub chain: String,
    /// Canonical descriptor text with its checksum.
    pub descriptor: String,
    /// The address at child index 0, to compare with the wallet.
    pub first_address: String,
    pub gap_limit: u32,
    /// The child index the next invoice gets.
    pub next_index: u64,
    /// Addresses allocated after the last one that received a credited payment.
    pub unused_addresses: u64,
    /// Whether `unused_addresses` reached `gap_limit`: raise the wallet's gap limit to see payments.
    pub gap_limit_reached: bool,
    pub updated_at: DateTime<Utc>,
}

/// The address an invoice got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressAllocation {
    pub address: String,
    pub child_index: u32,
    pub gap_limit_reached: bool,
}

fn network(chain: &ChainId) -> Result<bitcoin::Network> {
    network_of(chain).ok_or_else(|| AllocationError::UnknownChain { chain: chain.to_string() })
}

/// Sets the merchant's descriptor on `chain` (replacing the active one) and returns the settings.
/// Setting a descriptor used before continues from its own next index.
pub async fn set_descriptor(
    pool: &PgPool,
    merchant_id: &str,
    chain: &ChainId,
    request: &SetDescriptor,
) -> Result<BitcoinSettings> {
    let gap_limit = request.gap_limit.unwrap_or(u64::from(GAP_LIMIT_DEFAULT));
    let gap_limit = u32::try_from(gap_limit)
        .ok()
        .filter(|g| (1..=GAP_LIMIT_MAX).contains(g))
        .ok_or(AllocationError::GapLimit { gap_limit })?;
    let descriptor = WatchDescriptor::parse(&request.descriptor, network(chain)?)?;
    let first_address = descriptor.address_at(0)?.to_string().to_lowercase();
    let mut tx = pool.begin().await?;
    // One settings change per merchant at a time.
    sqlx::query("SELECT id FROM merchants WHERE id = $1 FOR UPDATE").bind(merchant_id).fetch_one(&mut *tx).await?;
    sqlx::query(
        "UPDATE bitcoin_descriptors SET active = false, updated_at = now() \
         WHERE merchant_id = $1 AND chain = $2 AND active AND first_address <> $3",
    )
    .bind(merchant_id)
    .bind(chain.to_string())
    .bind(&first_address)
    .execute(&mut *tx)
    .await?;
    let updated = sqlx::query(
        "INSERT INTO bitcoin_descriptors (merchant_id, chain, descriptor, first_address, gap_limit) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (chain, first_address) DO UPDATE SET active = true, gap_limit = EXCLUDED.gap_limit, updated_at = now() \
         WHERE bitcoin_descriptors.merchant_id = EXCLUDED.merchant_id \
         RETURNING id",
    )
    .bind(merchant_id)
    .bind(chain.to_string())
    .bind(descriptor.canonical())
    .bind(&first_address)
    .bind(i32::try_from(gap_limit).unwrap_or(i32::MAX))
    .fetch_optional(&mut *tx)
    .await?;
    if updated.is_none() {
        return Err(AllocationError::InUse { chain: chain.to_string(), address: first_address });
    }
    let settings = bitcoin_settings(&mut tx, merchant_id, chain).await?;
    tx.commit().await?;
    settings.ok_or(AllocationError::Database(sqlx::Error::RowNotFound))
}

/// The merchant's active descriptor on `chain`, with its allocation state.
pub async fn bitcoin_settings(conn: &mut PgConnection, merchant_id: &str, chain: &ChainId) -> Result<Option<BitcoinSettings>> {
    let Some(row) = sqlx::query(
        "SELECT d.id, d.descriptor, d.first_address, d.gap_limit, d.next_index, d.updated_at, \
                (SELECT max(a.child_index) FROM bitcoin_addresses a WHERE a.descriptor_id = d.id AND EXISTS \
                    (SELECT 1 FROM payments p WHERE p.invoice_id = a.invoice_id AND p.chain = a.chain \
                     AND p.status = 'confirmed')) AS last_used \
         FROM bitcoin_descriptors d WHERE d.merchant_id = $1 AND d.chain = $2 AND d.active",
    )
    .bind(merchant_id)
    .bind(chain.to_string())
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    let next_index = u64::try_from(row.try_get::<i64, _>("next_index")?).unwrap_or(0);
    let gap_limit = u32::try_from(row.try_get::<i32, _>("gap_limit")?).unwrap_or(GAP_LIMIT_DEFAULT);
    let last_used: Option<i64> = row.try_get("last_used")?;
    let used_below = last_used.and_then(|i| u64::try_from(i).ok()).map_or(0, |i| i + 1);
    let unused_addresses = next_index.saturating_sub(used_below);
    Ok(Some(BitcoinSettings {
        object: "bitcoin_settings",
        chain: chain.to_string(),
        descriptor: row.try_get("descriptor")?,
        first_address: row.try_get("first_address")?,
        gap_limit,
        next_index,
        unused_addresses,
        gap_limit_reached: unused_addresses >= u64::from(gap_limit),
        updated_at: row.try_get("updated_at")?,
    }))
}

/// Allocates the next child index of the merchant's active descriptor on `chain` to `invoice_id`,
/// on the invoice's transaction `tx`. `None` when the merchant has no descriptor there.
pub async fn allocate(
    tx: &mut PgConnection,
    merchant_id: &str,
    chain: &ChainId,
    invoice_id: &str,
) -> Result<Option<AddressAllocation>> {
    let Some(row) = sqlx::query(
        "SELECT id, descriptor, gap_limit, next_index FROM bitcoin_descriptors \
         WHERE merchant_id = $1 AND chain = $2 AND active FOR UPDATE",
    )
    .bind(merchant_id)
    .bind(chain.to_string())
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(None);
    };
    let descriptor_id: i64 = row.try_get("id")?;
    let text: String = row.try_get("descriptor")?;
    let descriptor = WatchDescriptor::parse(&text, network(chain)?)
        .map_err(|source| AllocationError::Corrupt { descriptor_id, source })?;
    let gap_limit = i64::from(row.try_get::<i32, _>("gap_limit")?);
    let mut index = row.try_get::<i64, _>("next_index")?;
    for _ in 0..=ALLOCATION_SKIPS_MAX {
        let child_index = u32::try_from(index)
            .ok()
            .filter(|i| *i <= CHILD_INDEX_MAX)
            .ok_or(AllocationError::Exhausted { descriptor_id })?;
        let address = descriptor.address_at(child_index)?.to_string().to_lowercase();
        index += 1;
        let inserted = sqlx::query(
            "INSERT INTO bitcoin_addresses (chain, address, descriptor_id, merchant_id, child_index, invoice_id) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(chain.to_string())
        .bind(&address)
        .bind(descriptor_id)
        .bind(merchant_id)
        .bind(i64::from(child_index))
        .bind(invoice_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            tracing::warn!(target: "watcher::bitcoin", %chain, merchant = merchant_id, child_index, %address,
                "address already taken on this chain; skipping its index");
            continue;
        }
        sqlx::query("UPDATE bitcoin_descriptors SET next_index = $2, updated_at = now() WHERE id = $1")
            .bind(descriptor_id)
            .bind(index)
            .execute(&mut *tx)
            .await?;
        // Used addresses among the last `gap_limit` allocated: none means the gap is reached.
        let gap_limit_reached = index >= gap_limit
            && !sqlx::query_scalar::<_, bool>(
                "SELECT EXISTS (SELECT 1 FROM bitcoin_addresses a WHERE a.descriptor_id = $1 AND a.child_index >= $2 \
                 AND EXISTS (SELECT 1 FROM payments p WHERE p.invoice_id = a.invoice_id AND p.chain = a.chain \
                             AND p.status = 'confirmed'))",
            )
            .bind(descriptor_id)
            .bind(index - gap_limit)
            .fetch_one(&mut *tx)
            .await?;
        if gap_limit_reached {
            tracing::warn!(target: "watcher::bitcoin", %chain, merchant = merchant_id, child_index, gap_limit,
                "gap limit reached: a wallet restored from this descriptor stops scanning before this address; \
                 raise the wallet's gap limit");
            metrics::count(
                "payrail_bitcoin_gap_limit_reached_total",
                "Bitcoin addresses allocated beyond the merchant's gap limit of unused addresses.",
                &[("chain", &chain.to_string())],
                1,
            );
        }
        return Ok(Some(AddressAllocation { address, child_index, gap_limit_reached }));
    }
    Err(AllocationError::Exhausted { descriptor_id })
}
