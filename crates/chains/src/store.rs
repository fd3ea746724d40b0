//! What the follower reads of payments and deposit addresses, in PostgreSQL.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};

use crate::invoice::PaymentStatus;
use crate::money::Amount;
use crate::pricing::SpeedPolicy;

use super::reorg::Tracked;
use super::source::Watched;

/// How long after expiry an invoice's addresses are still watched, for late payments.
pub const WATCH_AFTER_EXPIRY_S: i64 = 7 * 24 * 3600;

/// Deposit addresses of invoices that can still be paid, that expired recently (late payments),
/// or that have a payment still waiting, each with the transaction that wrote it; and the oldest
/// transaction still running when they were read (see [`written_since`]).
pub async fn watched(pool: &PgPool, chain: &str, now: DateTime<Utc>) -> Result<Written, sqlx::Error> {
    let rows = sqlx::query(
        "WITH s AS (SELECT pg_snapshot_xmin(pg_current_snapshot())::text AS since) \
         SELECT s.since, w.address, w.written_tx FROM s LEFT JOIN ( \
           SELECT d.address, d.written_tx::text AS written_tx FROM deposit_addresses d JOIN invoices i ON i.id = d.invoice_id \
           WHERE d.chain = $1 AND (i.status IN ('open', 'processing') OR i.expires_at > $2 \
                 OR EXISTS (SELECT 1 FROM payments p WHERE p.invoice_id = d.invoice_id AND p.chain = d.chain AND p.status = 'seen')) \
         ) w ON true",
    )
    .bind(chain)
    .bind(now - chrono::Duration::seconds(WATCH_AFTER_EXPIRY_S))
    .fetch(pool);
    deposits(rows).await
}

/// Deposit addresses written by transactions at or after `since` (a previous read's
/// [`watched`] or [`written_since`]), and the value to pass next time. Re-reads some rows; misses
/// none: a transaction a read could not see was running then, so it is not older than `since`.
pub async fn written_since(pool: &PgPool, chain: &str, since: u64) -> Result<Written, sqlx::Error> {
    let rows = sqlx::query(
        "WITH s AS (SELECT pg_snapshot_xmin(pg_current_snapshot())::text AS since) \
         SELECT s.since, d.address, d.written_tx::text AS written_tx FROM s LEFT JOIN deposit_addresses d \
           ON d.chain = $1 AND d.written_tx >= $2::text::xid8",
    )
    .bind(chain)
    .bind(since.to_string())
    .fetch(pool);
    deposits(rows).await
}

/// Deposit addresses with the transaction that wrote each, and where the next read starts.
#[derive(Debug, Default)]
pub struct Written {
    pub deposits: Vec<(Box<str>, u64)>,
    pub since: u64,
}

/// Rows of `since`, and a deposit address and its writer where present; read as they arrive, so
/// that a large set is never held twice.
async fn deposits(mut rows: impl futures::Stream<Item = Result<PgRow, sqlx::Error>> + Unpin) -> Result<Written, sqlx::Error> {
    let number = |text: String| text.parse::<u64>().map_err(|e| sqlx::Error::Decode(Box::new(e)));
    let mut written = Written::default();
    while let Some(row) = rows.try_next().await? {
        written.since = number(row.try_get("since")?)?;
        if let (Some(address), Some(tx)) = (row.try_get::<Option<String>, _>("address")?, row.try_get::<Option<String>, _>("written_tx")?) {
            written.deposits.push((address.into_boxed_str(), number(tx)?));
        }
    }
    written.deposits.shrink_to_fit();
    Ok(written)
}

/// The invoices of deposit addresses (lower-case, as stored) on `chain`, by address.
pub async fn invoices_of(pool: &PgPool, chain: &str, addresses: &[String]) -> Result<HashMap<String, (String, SpeedPolicy)>, sqlx::Error> {
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT d.address, d.invoice_id, i.speed_policy FROM deposit_addresses d JOIN invoices i ON i.id = d.invoice_id \
         WHERE d.chain = $1 AND d.address = ANY($2)",
    )
    .bind(chain)
    .bind(addresses)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(address, invoice, speed)| (address, (invoice, speed_of(&speed)))).collect())
}

/// A stored speed policy; one that does not parse (none can: the column is checked) waits longest.
fn speed_of(stored: &str) -> SpeedPolicy {
    stored.parse().unwrap_or(SpeedPolicy::Slow)
}

/// Refunds the merchant still has to pay to the payer's address (watched to see them paid).
pub async fn refunds_due(pool: &PgPool, chain: &str) -> Result<Vec<Watched>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT address, invoice_id, id, amount_minor::text AS amount FROM crypto_refunds \
         WHERE chain = $1 AND status = 'claimed' AND payout_id IS NULL",
    )
    .bind(chain)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            let amount: String = r.try_get("amount")?;
            let amount = Amount::parse_decimal(&amount, 0).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
            Ok(Watched { address: r.try_get("address")?, invoice_id: r.try_get("invoice_id")?, refund: Some((r.try_get("id")?, amount)) })
        })
        .collect()
}

/// The payments a step may act on: every waiting one, those above `fork`, and those in
/// `observed` (by `tx_ref`). Read inside the step's transaction.
pub async fn tracked(
    conn: &mut PgConnection,
    chain: &str,
    fork: Option<u64>,
    observed: &[&str],
) -> Result<Vec<Tracked>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT p.tx_ref, p.invoice_id, p.asset, p.amount_minor::text AS amount, p.address, p.status, p.block_height, \
                p.block_hash, i.speed_policy \
         FROM payments p JOIN invoices i ON i.id = p.invoice_id \
         WHERE p.chain = $1 AND p.status IN ('seen', 'confirmed') \
           AND (p.status = 'seen' OR p.block_height > $2 OR p.tx_ref = ANY($3) \
                OR (p.status = 'confirmed' AND p.block_height IS NULL))",
    )
    .bind(chain)
    .bind(fork.map_or(i64::MAX, |f| i64::try_from(f).unwrap_or(i64::MAX)))
    .bind(observed)
    .fetch_all(conn)
    .await?;
    let mut tracked = Vec::with_capacity(rows.len());
    for row in rows {
        let amount: String = row.try_get("amount")?;
        // An amount that does not parse cannot be refreshed; it is still orphaned or replaced.
        let amount = amount.parse().unwrap_or(crate::money::Amount::ZERO);
        let height: Option<i64> = row.try_get("block_height")?;
        let hash: Option<String> = row.try_get("block_hash")?;
        tracked.push(Tracked {
            tx_ref: row.try_get("tx_ref")?,
            invoice_id: row.try_get("invoice_id")?,
            asset: row.try_get("asset")?,
            amount,
            address: row.try_get("address")?,
            confirmed: row.try_get::<String, _>("status")? == PaymentStatus::Confirmed.as_str(),
            block: height.zip(hash).map(|(h, b)| (u64::try_from(h).unwrap_or(0), b)),
            speed: speed_of(&row.try_get::<String, _>("speed_policy")?),
        });
    }
    Ok(tracked)
}
