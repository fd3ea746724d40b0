//! The ledger's side: every entry on a chain's asset account, classified by what it claims happened
//! on chain. Reads only the ledger (and the payout batches, to turn a `po_…` id into the bytes32
//! the contract saw); never the watcher's observations.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Row};

use crate::money::{Amount, ChainId};

use super::error::{ReconcileError, Result};
use super::model::{ItemKind, LedgerMovement};

/// A classified movement and when it was booked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Booked {
    pub movement: LedgerMovement,
    pub created_at: DateTime<Utc>,
    /// For a payout: the block its batch was recorded as mined in.
    pub mined_in: Option<u64>,
}

/// Entries on `assets:chain:{chain}` — and, for a Bitcoin chain, on the merchants' own holdings
/// (`assets:held_by_merchant:…`) in its asset — booked at or after `since` that are not reversals
/// and were not reversed (a reversed pair nets to nothing on chain). Gas entries are left out: they are the hot
/// wallet's costs, not money of customers.
pub async fn movements(conn: &mut PgConnection, chain: &ChainId, since: DateTime<Utc>) -> Result<Vec<Booked>> {
    let rows = sqlx::query(
        "SELECT e.id, e.idempotency_key, e.created_at, p.asset, p.amount::text AS amount, b.batch_key, \
                b.block_number AS batch_block \
         FROM journal_entries e \
         JOIN postings p ON p.entry_id = e.id \
         JOIN accounts a ON a.id = p.account_id \
              AND (a.code = $1 OR ($3 AND a.code LIKE 'assets:held_by_merchant:%' AND p.asset LIKE $4)) \
         LEFT JOIN payout_batches b ON e.idempotency_key = 'payout-settle:' || b.id \
         WHERE e.created_at >= $2 AND e.reverses_entry_id IS NULL \
           AND NOT EXISTS (SELECT 1 FROM journal_entries r WHERE r.reverses_entry_id = e.id) \
           AND e.idempotency_key NOT LIKE 'payout-gas:%' AND e.idempotency_key NOT LIKE 'sweep-gas:%' \
         ORDER BY e.id, p.id",
    )
    .bind(format!("assets:chain:{chain}"))
    .bind(since)
    .bind(chain.is_bip122())
    .bind(format!("{chain}/%"))
    .fetch_all(conn)
    .await?;
    let deposit_prefix = format!("payment:{chain}:");
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let key: String = row.try_get("idempotency_key")?;
        let text: String = row.try_get("amount")?;
        let magnitude = Amount::parse_decimal(text.trim_start_matches('-'), 0)
            .map_err(|_| ReconcileError::Corrupt { value: text.clone() })?;
        let batch_key: Option<String> = row.try_get("batch_key")?;
        let (kind, reference) = if key.starts_with(&deposit_prefix) {
            // A credit posted again after a reorg reversed the first one carries `#n`.
            let reference = &key["payment:".len()..];
            (ItemKind::Deposit, reference.split_once('#').map_or(reference, |(r, _)| r).to_owned())
        } else if let Some(batch_key) = batch_key {
            (ItemKind::Payout, batch_key)
        } else if let Some(refund) = key.strip_prefix("refund-paid:") {
            (ItemKind::Refund, refund.to_owned())
        } else {
            (ItemKind::Manual, key.clone())
        };
        out.push(Booked {
            movement: LedgerMovement {
                kind,
                reference,
                entry_id: row.try_get("id")?,
                idempotency_key: key,
                asset: row.try_get("asset")?,
                amount: magnitude,
            },
            created_at: row.try_get("created_at")?,
            mined_in: row.try_get::<Option<i64>, _>("batch_block")?.and_then(|b| u64::try_from(b).ok()),
        });
    }
    Ok(out)
}

/// Where payrail's payment record says a deposit was mined, for telling an orphaned credit from
/// one that never existed, and which address it paid (for credits found by a balance change).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedPayment {
    pub height: u64,
    pub hash: String,
    pub address: String,
}

pub async fn recorded_payment(conn: &mut PgConnection, tx_ref: &str) -> Result<Option<RecordedPayment>> {
    let row = sqlx::query("SELECT block_height, block_hash, address FROM payments WHERE tx_ref = $1")
        .bind(tx_ref)
        .fetch_optional(conn)
        .await?;
    Ok(row.and_then(|r| {
        let height: Option<i64> = r.try_get("block_height").ok()?;
        let hash: Option<String> = r.try_get("block_hash").ok()?;
        let address: Option<String> = r.try_get("address").ok()?;
        Some(RecordedPayment { height: u64::try_from(height?).ok()?, hash: hash?, address: address.unwrap_or_default() })
    }))
}

/// Whether payrail recorded a confirmed sweep in transaction `tx_hash`.
pub async fn sweep_recorded(conn: &mut PgConnection, chain: &str, tx_hash: &str) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM sweeps WHERE chain = $1 AND lower(tx_hash) = lower($2) AND status = 'confirmed')",
    )
    .bind(chain)
    .bind(tx_hash)
    .fetch_one(conn)
    .await?)
}

/// The deposit addresses payrail gave out on `chain` (its own address book, not observations).
pub async fn deposit_addresses(conn: &mut PgConnection, chain: &ChainId) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar("SELECT address FROM deposit_addresses WHERE chain = $1 ORDER BY address")
        .bind(chain.to_string())
        .fetch_all(conn)
        .await?)
}

/// A crypto refund the merchant paid from its own wallet: the transaction the watcher saw pay it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaidRefund {
    pub id: String,
    pub address: String,
    pub tx_hash: String,
}

/// The paid refunds of `chain` that no payout sent (the merchant paid them).
pub async fn paid_refunds(conn: &mut PgConnection, chain: &ChainId) -> Result<Vec<PaidRefund>> {
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT id, address, tx_hash FROM crypto_refunds WHERE chain = $1 AND status = 'paid' AND payout_id IS NULL \
           AND address IS NOT NULL AND tx_hash IS NOT NULL ORDER BY id",
    )
    .bind(chain.to_string())
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|(id, address, tx_hash)| PaidRefund { id, address, tx_hash }).collect())
}
