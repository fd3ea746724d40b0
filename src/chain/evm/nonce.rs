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
