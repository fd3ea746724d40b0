//! One transaction at a time per hot wallet and chain. The sweeper and the payout executor sign with
//! the same key and both take the nonce from the node's pending count; holding this lock from
//! picking the nonce until the transaction is broadcast keeps two of them (or two replicas) from
//! signing the same nonce, where one would replace or knock out the other.

use alloy_primitives::Address;
use sqlx::{PgPool, Postgres, Transaction};

/// Held until [`SignerLock::release`] (or dropped: the transaction rolls back and the lock goes).
pub struct SignerLock {
    tx: Transaction<'static, Postgres>,
}

impl SignerLock {
    /// Waits for the lock of `sender` on `chain` (a CAIP-2 id).
    pub async fn acquire(pool: &PgPool, chain: &str, sender: Address) -> Result<Self, sqlx::Error> {
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(format!("payrail.signer.{chain}.{sender:#x}"))
            .execute(&mut *tx)
            .await?;
        Ok(Self { tx })
    }

    pub async fn release(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

/// The highest nonce of a transaction `sender` signed on `chain` that is stored and not final yet
/// (an open payout batch's attempts, an open sweep's transaction). Such a transaction may not
/// have reached any node, so the node's pending count does not know its nonce: the next one signed
/// must come after it.
pub async fn highest_stored_nonce(pool: &PgPool, chain: &str, sender: Address) -> Result<Option<u64>, sqlx::Error> {
    let nonce: Option<i64> = sqlx::query_scalar(
        "SELECT max(n) FROM ( \
           SELECT a.nonce AS n FROM payout_attempts a JOIN payout_batches b ON b.id = a.batch_id \
            WHERE b.chain = $1 AND b.status IN ('created', 'sent') AND a.sender = $2 \
           UNION ALL \
           SELECT nonce FROM sweeps WHERE chain = $1 AND status IN ('pending', 'sent') AND sender = $2 \
         ) stored",
    )
    .bind(chain)
    .bind(format!("{sender:#x}"))
    .fetch_one(pool)
    .await?;
    Ok(nonce.and_then(|n| u64::try_from(n).ok()))
}
