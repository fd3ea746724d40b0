//! A crypto refund claimed on an EVM chain is paid from the treasury by a payout batch of its own:
//! one item, paid from the refund's account (`liabilities:refund:{id}`), written in the
//! transaction that records the claim. From there it is any other batch — signed and stored before
//! it is broadcast, the contract refusing its id twice, replaced when stuck — and its confirmation
//! marks the refund paid (its failure, failed) in the transaction that settles it.

use alloy_primitives::Address;

use super::error::{PayoutError, Result};
use super::plan::Candidate;
use super::runner::{PayoutService, RunRequest};
use super::store;
use crate::payments_refund::{self as refund, CryptoRefundView};

impl PayoutService {
    /// Whether a refund on `chain` (CAIP-2) of `asset` can be paid by a payout here: a batcher pays
    /// the asset there and an executor (a hot wallet key) sends batches.
    pub fn pays_refunds_of(&self, chain: &str, asset: &str) -> bool {
        if !self.executor_running() {
            return false;
        }
        let asked = RunRequest { chain: Some(chain.to_owned()), asset: Some(asset.to_owned()) };
        self.chosen(&asked).ok().and_then(|c| c.into_iter().next()).is_some_and(|chain| {
            chain.payout_batcher.is_some() && super::runner::payable_assets(chain).iter().any(|a| a.asset == asset)
        })
    }

    /// Claims the refund `token` opens for `address` (already checked for the chain) and writes its
    /// payout. Refused when the link is used or expired, when the merchant's balance cannot pay a
    /// difference priced now (`insufficient_funds`), or when the batcher cannot cover it yet
    /// (`batcher_funds_short`: the refund stays open, the payer may try again).
    pub async fn claim_refund(&self, token: &str, address: Address) -> Result<CryptoRefundView> {
        let now = self.clock().now();
        let (chain_id, asset_id) = {
            let mut conn = self.pool().acquire().await?;
            let row: Option<(String, String)> = sqlx::query_as("SELECT chain, asset FROM crypto_refunds WHERE token_hash = $1")
                .bind(&refund::token_hash(token)[..])
                .fetch_optional(&mut *conn)
                .await?;
            row.ok_or_else(|| PayoutError::Refund(payrail_payments::invoice::InvoiceError::RefundNotFound { id: "(token)".to_owned() }))?
        };
        let single = self.single(&chain_id, &asset_id).await?;
        let mut tx = self.pool().begin().await?;
        // Under the payout runs' lock, as settlements and withdrawals are.
        store::lock_runs(&mut tx).await?;
        let open = refund::lock_open(&mut tx, token, now).await?;
        let amount = refund::price_claim(&open, self.rates(), now)?;
        refund::record_claim(&mut tx, self.ledger(), &open, &address.to_checksum(None), amount, now).await?;
        let item = Candidate { refund_id: Some(open.id.clone()), creator_id: None, merchant_id: open.merchant_id.clone(), address, amount };
        let batch = self.write_single(&mut tx, &single, item, now).await?;
        sqlx::query("UPDATE crypto_refunds SET payout_id = $2 WHERE id = $1").bind(&open.id).bind(&batch.id).execute(&mut *tx).await?;
        let view = refund::view_in(&mut tx, &open.id).await?;
        tx.commit().await?;
        tracing::info!(target: "payout", refund = %open.id, batch = %batch.id, chain = %single.chain.name, "refund claimed");
        Ok(view)
    }
}
