//! What the follower reads of payments and deposit addresses, in PostgreSQL.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Row};

use crate::invoice::PaymentStatus;
use crate::money::Amount;

use super::reorg::Tracked;
use super::source::Watched;

/// How long after expiry an invoice's addresses are still watched, for late payments.
pub const WATCH_AFTER_EXPIRY_S: i64 = 7 * 24 * 3600;

/// Deposit addresses of invoices that can still be paid, that expired recently (late payments),
/// or that have a payment still waiting.
pub async fn watched(pool: &PgPool, chain: &str, now: DateTime<Utc>) -> Result<Vec<Watched>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT d.address, d.invoice_id, NULL::text AS refund_id, NULL::text AS refund_amount \
         FROM deposit_addresses d JOIN invoices i ON i.id = d.invoice_id \
         WHERE d.chain = $1 AND (i.status IN ('open', 'processing') OR i.expires_at > $2 \
               OR EXISTS (SELECT 1 FROM payments p WHERE p.invoice_id = d.invoice_id AND p.chain = d.chain AND p.status = 'seen')) \
         UNION ALL \
         SELECT address, invoice_id, id, amount_minor::text FROM crypto_refunds \
         WHERE chain = $1 AND status = 'claimed' AND payout_id IS NULL",
    )
    .bind(chain)
    .bind(now - chrono::Duration::seconds(WATCH_AFTER_EXPIRY_S))
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            let refund = match (r.try_get::<Option<String>, _>("refund_id")?, r.try_get::<Option<String>, _>("refund_amount")?) {
                (Some(id), Some(amount)) => {
                    let amount = Amount::parse_decimal(&amount, 0).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
                    Some((id, amount))
                }
                _ => None,
            };
            Ok(Watched { address: r.try_get("address")?, invoice_id: r.try_get("invoice_id")?, refund })
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
        "SELECT tx_ref, invoice_id, asset, amount_minor::text AS amount, address, status, block_height, block_hash \
         FROM payments WHERE chain = $1 AND status IN ('seen', 'confirmed') \
           AND (status = 'seen' OR block_height > $2 OR tx_ref = ANY($3))",
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
        });
    }
    Ok(tracked)
}
