//! Sweeps: confirmed deposits move from their forwarder address to the treasury through the
//! `ForwarderFactory` (which deploys the forwarder on first use), paid by the hot wallet. The hot
//! wallet only pays gas; it never holds customer funds.
//!
//! A deposit address is swept only when every payment seen at it is confirmed, so unconfirmed funds
//! are not moved on purpose. The sweep row (naming the payments it covers) commits before the
//! transaction is sent; after a crash a sweep without a hash is sent again, one with a hash is looked
//! up first. The gas a sweep burns is posted as `expenses:network_fees` against the chain's asset
//! account, keyed by the sweep, so it is booked once.

use std::sync::Arc;
use std::time::Duration;

use alloy::network::EthereumWallet;
use alloy::primitives::{Address, B256, U256};
use alloy::providers::{Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use sqlx::{PgPool, Row};
use thiserror::Error;

use crate::chain::evm::contracts::ForwarderFactory;
use crate::chain::evm::deposit_salt;
use crate::chain::evm::nonce::SignerLock;
use crate::config::ChainSpec;
use crate::ids::new_id;
use crate::ledger::{AccountCode, Ledger, LedgerError, NewEntry};
use crate::money::Amount;

/// Most deposit addresses swept in one pass.
pub const SWEEPS_PER_PASS_MAX: i64 = 50;
/// Pause between passes.
pub const SWEEP_INTERVAL_MS: u64 = 15_000;
/// How long to wait for a sweep's receipt before looking again on the next pass.
pub const RECEIPT_TIMEOUT_MS: u64 = 60_000;

#[derive(Debug, Error)]
pub enum SweepError {
    #[error("chain {chain} has no forwarder factory configured")]
    NoFactory { chain: String },
    #[error("invalid hot wallet key")]
    Key,
    #[error("invalid endpoint: {0}")]
    Endpoint(String),
    #[error("sweep {sweep_id}: {message}")]
    Send { sweep_id: String, message: String },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// What a pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepPass {
    pub confirmed: usize,
    pub failed: usize,
}

#[derive(Debug)]
pub struct Sweeper {
    chain: ChainSpec,
    caip2: String,
    factory: Address,
    tokens: Vec<Address>,
    signer: PrivateKeySigner,
    pool: PgPool,
    ledger: Arc<Ledger>,
}

impl Sweeper {
    /// `hot_wallet_key` is a hex private key; it is never logged.
    pub fn new(chain: ChainSpec, hot_wallet_key: &str, pool: PgPool, ledger: Arc<Ledger>) -> Result<Self, SweepError> {
        let factory = chain.forwarder_factory.ok_or_else(|| SweepError::NoFactory { chain: chain.name.clone() })?;
        let signer: PrivateKeySigner = hot_wallet_key.trim().parse().map_err(|_| SweepError::Key)?;
        let tokens = chain.tokens.iter().map(|t| t.address).collect();
        Ok(Self { caip2: chain.caip2.to_string(), chain, factory, tokens, signer, pool, ledger })
    }

    /// Sweeps until `shutdown` fires.
    pub async fn run(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            match self.pass().await {
                Ok(pass) if pass.confirmed + pass.failed > 0 => {
                    tracing::info!(target: "sweeper", chain = %self.chain.name, confirmed = pass.confirmed, failed = pass.failed, "sweep pass");
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(target: "sweeper", chain = %self.chain.name, %error, "sweep pass failed; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(SWEEP_INTERVAL_MS)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// One pass: resume open sweeps, then sweep every address whose deposits are all confirmed.
    pub async fn pass(&self) -> Result<SweepPass, SweepError> {
        let mut pass = SweepPass::default();
        let open: Vec<(String, String, Option<String>)> = sqlx::query_as(
            "SELECT id, invoice_id, tx_hash FROM sweeps WHERE chain = $1 AND status IN ('pending', 'sent') ORDER BY created_at",
        )
        .bind(&self.caip2)
        .fetch_all(&self.pool)
        .await?;
        for (sweep_id, invoice_id, tx_hash) in open {
            self.finish(&sweep_id, &invoice_id, tx_hash, &mut pass).await?;
        }
        let ready = sqlx::query(
            "SELECT p.invoice_id, lower(p.address) AS address FROM payments p \
             WHERE p.chain = $1 AND p.status = 'confirmed' AND p.sweep_id IS NULL AND p.address IS NOT NULL \
               AND NOT EXISTS (SELECT 1 FROM payments q WHERE q.chain = p.chain AND lower(q.address) = lower(p.address) \
                               AND q.status = 'seen') \
             GROUP BY p.invoice_id, lower(p.address) LIMIT $2",
        )
        .bind(&self.caip2)
        .bind(SWEEPS_PER_PASS_MAX)
        .fetch_all(&self.pool)
        .await?;
        for row in ready {
            let invoice_id: String = row.try_get("invoice_id")?;
            let address: String = row.try_get("address")?;
            let sweep_id = new_id("swp");
            let mut tx = self.pool.begin().await?;
            sqlx::query("INSERT INTO sweeps (id, chain, invoice_id, address, status) VALUES ($1, $2, $3, $4, 'pending')")
                .bind(&sweep_id)
                .bind(&self.caip2)
                .bind(&invoice_id)
                .bind(&address)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "UPDATE payments SET sweep_id = $1 WHERE chain = $2 AND lower(address) = $3 AND status = 'confirmed' \
                 AND sweep_id IS NULL",
            )
            .bind(&sweep_id)
            .bind(&self.caip2)
            .bind(&address)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            self.finish(&sweep_id, &invoice_id, None, &mut pass).await?;
        }
        Ok(pass)
    }

    fn endpoint(&self) -> Result<alloy::transports::http::reqwest::Url, SweepError> {
        let url = self.chain.rpc.first().ok_or_else(|| SweepError::Endpoint("none configured".to_owned()))?;
        alloy::transports::http::reqwest::Url::parse(url.as_str()).map_err(|e| SweepError::Endpoint(e.to_string()))
    }

    /// Sends (or looks up) the sweep transaction and settles the sweep from its receipt.
    async fn finish(
        &self,
        sweep_id: &str,
        invoice_id: &str,
        tx_hash: Option<String>,
        pass: &mut SweepPass,
    ) -> Result<(), SweepError> {
        let provider = ProviderBuilder::new().wallet(EthereumWallet::from(self.signer.clone())).connect_http(self.endpoint()?);
        let send_error = |message: String| SweepError::Send { sweep_id: sweep_id.to_owned(), message };
        let known = match &tx_hash {
            Some(hash) => {
                let hash: B256 = hash.parse().map_err(|_| send_error(format!("stored hash {hash} is invalid")))?;
                provider.get_transaction_receipt(hash).await.map_err(|e| send_error(e.to_string()))?
            }
            None => None,
        };
        let receipt = match known {
            Some(receipt) => receipt,
            None => {
                // Never sent, or sent and dropped: send now. Sweeping twice moves nothing twice.
                let factory = ForwarderFactory::new(self.factory, &provider);
                let signer = SignerLock::acquire(&self.pool, &self.caip2, self.signer.address()).await?;
                let pending = factory
                    .sweep(deposit_salt(invoice_id), self.tokens.clone())
                    .send()
                    .await
                    .map_err(|e| send_error(e.to_string()))?;
                signer.release().await?;
                let hash = format!("{:#x}", pending.tx_hash());
                sqlx::query("UPDATE sweeps SET status = 'sent', tx_hash = $2, updated_at = now() WHERE id = $1")
                    .bind(sweep_id)
                    .bind(&hash)
                    .execute(&self.pool)
                    .await?;
                pending
                    .with_timeout(Some(Duration::from_millis(RECEIPT_TIMEOUT_MS)))
                    .get_receipt()
                    .await
                    .map_err(|e| send_error(e.to_string()))?
            }
        };
        let fee = Amount::from_u256(U256::from(receipt.gas_used) * U256::from(receipt.effective_gas_price));
        let native = self.chain.native_asset_id().to_string();
        let mut tx = self.pool.begin().await?;
        let entry_id = if fee.is_zero() {
            None
        } else {
            let entry = NewEntry::new(format!("sweep-gas:{sweep_id}"), "network_fee")
                .memo(format!("sweep {sweep_id} {:#x}", receipt.transaction_hash))
                .debit(AccountCode::network_fees(), native.clone(), fee)
                .credit(AccountCode::chain_assets(&self.chain.caip2), native, fee);
            Some(self.ledger.post(&mut tx, &entry).await?.entry_id)
        };
        if receipt.status() {
            sqlx::query(
                "UPDATE sweeps SET status = 'confirmed', gas_fee = $2::numeric, ledger_entry_id = $3, updated_at = now() \
                 WHERE id = $1",
            )
            .bind(sweep_id)
            .bind(fee.to_string())
            .bind(entry_id)
            .execute(&mut *tx)
            .await?;
            pass.confirmed += 1;
        } else {
            // Reverted: the deposits stay where they are and are picked up by a later pass.
            sqlx::query("UPDATE sweeps SET status = 'failed', gas_fee = $2::numeric, ledger_entry_id = $3, error = 'reverted', updated_at = now() WHERE id = $1")
                .bind(sweep_id)
                .bind(fee.to_string())
                .bind(entry_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE payments SET sweep_id = NULL WHERE sweep_id = $1").bind(sweep_id).execute(&mut *tx).await?;
            pass.failed += 1;
        }
        tx.commit().await?;
        Ok(())
    }
}
