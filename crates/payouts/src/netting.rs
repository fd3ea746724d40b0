//! What a merchant owes for money its own wallet holds (Bitcoin: see custody in the ledger), taken
//! from the balance payrail holds for it when it settles a USD stablecoin.
//!
//! A Bitcoin payment's creators' shares and the platform's fee are in coins the merchant keeps.
//! When the merchant settles a USD-pegged stablecoin (USDC, USDT, DAI), each creator's share in a
//! merchant-held asset is first bought out of that balance at the current rate (the stablecoin at
//! par, refused while it is off its peg): the creator's share becomes the merchant's own coins and
//! the creator is owed the stablecoin instead, which it withdraws like any earnings. The fee goes
//! the same way. Creators' shares of card payments in US dollars (money the processor holds for
//! the platform) are bought out the same way at par, so a creator is paid its card earnings in
//! stablecoin and the merchant's card balance grows by as much, which it settles to its bank
//! (card settlements). One entry per creator (and one for the fee) carries both legs — balanced per
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
    /// merchant-held assets, and its creators' US-dollar card shares, with its balance of `stable`;
    /// see the module docs. Returns how much of
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
                let memo = format!("{} of {asset} held by the merchant", owed.amount);
                self.buy_out(&mut *tx, merchant_id, owed, asset, cents, stable, &memo, &quote.rate.to_string(), &mut left, &mut taken, now).await?;
            }
        }
        // Creators' shares of card payments in US dollars: the processor holds them for the
        // platform, so they are bought out at par, cent for cent.
        let usd = Fiat::USD.ledger_asset();
        for owed in self.creator_balances(&mut *tx, merchant_id, &usd).await? {
            let memo = format!("{} cents of card money owed to the creator", owed.amount);
            let cents = owed.amount;
            self.buy_out(&mut *tx, merchant_id, owed, &usd, cents, stable, &memo, "par", &mut left, &mut taken, now).await?;
        }
        Ok(taken)
    }

    /// Moves `owed` (worth `cents` US cents) to the merchant and as much of `stable` from the
    /// merchant to the one owed, in one entry; nothing when `left` cannot cover it.
    #[allow(clippy::too_many_arguments)]
    async fn buy_out(
        &self,
        tx: &mut PgConnection,
        merchant_id: &str,
        owed: Owed,
        asset: &str,
        cents: Amount,
        stable: &PayableAsset,
        memo: &str,
        rate: &str,
        left: &mut Amount,
        taken: &mut Amount,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let Some(price) = at_par(cents, stable.decimals()) else { return Ok(()) };
        if price.is_zero() || price > *left {
            return Ok(());
        }
        let merchant = AccountCode::merchant(merchant_id);
        let entry = NewEntry::new(format!("netting:{merchant_id}:{}:{asset}:{}", owed.account.as_str(), now.timestamp_micros()), "netting")
            .memo(format!("{memo}, bought out for {price} of {} at {rate}", stable.asset))
            .debit(owed.account.clone(), asset, owed.amount)
            .credit(merchant.clone(), asset, owed.amount)
            .debit(merchant, stable.asset.as_str(), price)
            .credit(owed.account, stable.asset.as_str(), price);
        self.ledger().post(&mut *tx, &entry).await?;
        *left = left.saturating_sub(price);
        *taken = taken.checked_add(price).unwrap_or(Amount::MAX);
        Ok(())
    }

    /// Each of merchant `merchant_id`'s creators' positive balances of `asset`.
    async fn creator_balances(&self, tx: &mut PgConnection, merchant_id: &str, asset: &str) -> Result<Vec<Owed>> {
        let creators: Vec<(String, String)> = sqlx::query_as(
            "SELECT c.id, sum(b.balance)::text FROM creators c \
             JOIN accounts a ON a.code = 'liabilities:creator:' || c.id JOIN balances b ON b.account_id = a.id AND b.asset = $2 \
             WHERE c.merchant_id = $1 GROUP BY c.id HAVING sum(b.balance) > 0 ORDER BY c.id",
        )
        .bind(merchant_id)
        .bind(asset)
        .fetch_all(&mut *tx)
        .await?;
        creators
            .into_iter()
            .map(|(creator, balance)| {
                let amount = Amount::parse_decimal(&balance, 0).map_err(|_| super::error::PayoutError::Corrupt { value: balance.clone() })?;
                Ok(Owed { account: AccountCode::creator(&creator), amount })
            })
            .collect()
    }

    /// What the merchant owes in `asset`, of which its wallet holds `holding`: each of its creators'
    /// positive balances, then the rest that is not its own (the platform's fee).
    async fn owed(&self, tx: &mut PgConnection, merchant_id: &str, asset: &str, holding: Amount) -> Result<Vec<Owed>> {
        let mut owed = self.creator_balances(&mut *tx, merchant_id, asset).await?;
        let mut not_fees = owed.iter().fold(Amount::ZERO, |sum, o| sum.checked_add(o.amount).unwrap_or(Amount::MAX));
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
