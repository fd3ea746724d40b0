//! What a merchant owes for money its own wallet holds (Bitcoin: see custody in the ledger), taken
//! from the balance payrail holds for it when it settles a USD stablecoin.
//!
//! A Bitcoin payment's creators' shares and the platform's fee are in coins the merchant keeps.
//! When the merchant settles a USD-pegged stablecoin (USDC, USDT, DAI), each creator's share in a
//! merchant-held asset is first bought out of that balance at the current rate (the stablecoin at
//! par, refused while it is off its peg): the creator's share becomes the merchant's own coins and
//! the creator is owed the stablecoin instead, which it withdraws like any earnings. The fee goes
//! the same way. One entry per creator (and one for the fee) carries both legs — balanced per
//! asset — so a share is either moved whole or not at all; what the balance cannot cover stays
//! owed.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::ledger::{AccountCode, NewEntry};
use crate::money::{asset_to_fiat, Amount, Fiat, Rounding};

use super::error::Result;
use super::runner::{PayableAsset, PayoutService};

/// Stablecoins settled at par with the US dollar.
const USD_STABLECOINS: &[&str] = &["USDC", "USDT", "DAI"];

/// One share owed in a merchant-held asset.
struct Owed {
    /// The account owed: a creator's, or the platform's fees.
    account: AccountCode,
    amount: Amount,
}

impl PayoutService {
    /// Buys out, on `tx` (which holds the runs' lock), what merchant `merchant_id` owes in
    /// merchant-held assets with its balance of `stable`; see the module docs. Returns how much of
    /// `stable` it took.
    pub(crate) async fn net_receivables(&self, tx: &mut PgConnection, merchant_id: &str, stable: &PayableAsset, now: DateTime<Utc>) -> Result<Amount> {
        if !USD_STABLECOINS.contains(&stable.symbol()) || self.rates().quote(stable.symbol(), Fiat::USD, now).is_err() {
            return Ok(Amount::ZERO);
        }
        let merchant = AccountCode::merchant(merchant_id);
        let held = self.ledger().balances(&mut *tx, &AccountCode::held_by_merchant(merchant_id)).await?;
        let mut left = {
            let balance = self.ledger().balance(&mut *tx, &merchant, &stable.asset).await?;
            if balance.is_negative() { Amount::ZERO } else { balance.magnitude() }
        };
        let mut taken = Amount::ZERO;
        for (asset, holding) in held.iter().filter(|(_, b)| !b.is_negative() && !b.magnitude().is_zero()) {
            let Some((symbol, decimals)) = self.merchant_held(asset) else { continue };
            let Ok(quote) = self.rates().quote(&symbol, Fiat::USD, now) else {
                tracing::info!(target: "payout", merchant = %merchant_id, %asset, "no rate: what the merchant owes in it stays owed");
                continue;
            };
            for owed in self.owed(&mut *tx, merchant_id, asset, holding.magnitude()).await? {
                let cents = asset_to_fiat(owed.amount, decimals, &quote.rate, Fiat::USD, Rounding::Down).unwrap_or(Amount::ZERO);
                let Some(price) = at_par(cents, stable.decimals()) else { continue };
                if price.is_zero() || price > left {
                    continue;
                }
                let entry = NewEntry::new(format!("netting:{merchant_id}:{}:{asset}:{}", owed.account.as_str(), now.timestamp_micros()), "netting")
                    .memo(format!("{} of {asset} held by the merchant, bought out for {price} of {} at {}", owed.amount, stable.asset, quote.rate))
                    .debit(owed.account.clone(), asset.as_str(), owed.amount)
                    .credit(merchant.clone(), asset.as_str(), owed.amount)
                    .debit(merchant.clone(), stable.asset.as_str(), price)
                    .credit(owed.account, stable.asset.as_str(), price);
                self.ledger().post(&mut *tx, &entry).await?;
                left = left.saturating_sub(price);
                taken = taken.checked_add(price).unwrap_or(Amount::MAX);
            }
        }
        Ok(taken)
    }

    /// What the merchant owes in `asset`, of which its wallet holds `holding`: each of its creators'
    /// positive balances, then the rest that is not its own (the platform's fee).
    async fn owed(&self, tx: &mut PgConnection, merchant_id: &str, asset: &str, holding: Amount) -> Result<Vec<Owed>> {
        let creators: Vec<(String, String)> = sqlx::query_as(
            "SELECT c.id, sum(b.balance)::text FROM creators c \
             JOIN accounts a ON a.code = 'liabilities:creator:' || c.id JOIN balances b ON b.account_id = a.id AND b.asset = $2 \
             WHERE c.merchant_id = $1 GROUP BY c.id HAVING sum(b.balance) > 0 ORDER BY c.id",
        )
        .bind(merchant_id)
        .bind(asset)
        .fetch_all(&mut *tx)
        .await?;
        let mut owed = Vec::with_capacity(creators.len() + 1);
        let mut not_fees = Amount::ZERO;
        for (creator, balance) in creators {
            let amount = Amount::parse_decimal(&balance, 0).map_err(|_| super::error::PayoutError::Corrupt { value: balance.clone() })?;
            not_fees = not_fees.checked_add(amount).unwrap_or(Amount::MAX);
            owed.push(Owed { account: AccountCode::creator(&creator), amount });
        }
        for account in [AccountCode::merchant(merchant_id), AccountCode::unapplied(merchant_id)] {
            let balance = self.ledger().balance(&mut *tx, &account, asset).await?;
            if !balance.is_negative() {
                not_fees = not_fees.checked_add(balance.magnitude()).unwrap_or(Amount::MAX);
            }
        }
        let fees = holding.saturating_sub(not_fees);
        if !fees.is_zero() {
            owed.push(Owed { account: AccountCode::platform_fees(), amount: fees });
        }
        Ok(owed)
    }
}

/// `cents` of USD in a USD stablecoin of `decimals`, one to one.
fn at_par(cents: Amount, decimals: u8) -> Option<Amount> {
    let scale = decimals.checked_sub(2)?;
    (0..scale).try_fold(cents, |amount, _| amount.checked_mul_u64(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cents_become_stablecoin_units_at_par() {
        assert_eq!(at_par(Amount::from_u64(249), 6), Some(Amount::from_u64(2_490_000)));
        assert_eq!(at_par(Amount::from_u64(1), 18), Some(Amount::from_u64(10_000_000_000_000_000)));
        assert_eq!(at_par(Amount::from_u64(1), 1), None);
    }
}
