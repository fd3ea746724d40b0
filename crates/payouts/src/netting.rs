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

/// The merchant's stablecoin balance a settlement buys out of: what is left, and what was taken.
struct Purse<'a> {
    stable: &'a PayableAsset,
    left: Amount,
    taken: Amount,
}

/// One share to buy out: what is owed, in which asset, worth how many US cents, and which account
/// takes the owed asset in exchange (the merchant for coins it holds or card money, its credits'
/// issue for credits).
struct BuyOut<'a> {
    owed: Owed,
    asset: &'a str,
    cents: Amount,
    taker: AccountCode,
    memo: String,
}

/// One share owed in a merchant-held asset.
struct Owed {
    /// The account owed: a creator's, or the platform's fees.
    account: AccountCode,
    amount: Amount,
}

impl PayoutService {
    /// Buys out, on `tx` (which holds the runs' lock), what merchant `merchant_id` owes in
    /// merchant-held assets, its creators' US-dollar card shares and what its credits spent earned
    /// creators and the platform, with its balance of `stable`; see the module docs. Returns how
    /// much of `stable` it took.
    pub(crate) async fn net_receivables(&self, tx: &mut PgConnection, merchant_id: &str, stable: &PayableAsset, now: DateTime<Utc>) -> Result<Amount> {
        if !USD_STABLECOINS.contains(&stable.symbol()) || self.rates().quote(stable.symbol(), Fiat::USD, now).is_err() {
            return Ok(Amount::ZERO);
        }
        let merchant = AccountCode::merchant(merchant_id);
        let held = self.ledger().balances(&mut *tx, &AccountCode::held_by_merchant(merchant_id)).await?;
        let mut purse = {
            let balance = self.ledger().balance(&mut *tx, &merchant, &stable.asset).await?;
            Purse { stable, left: if balance.is_negative() { Amount::ZERO } else { balance.magnitude() }, taken: Amount::ZERO }
        };
        for (asset, holding) in held.iter().filter(|(_, b)| !b.is_negative() && !b.magnitude().is_zero()) {
            let Some((symbol, decimals)) = self.merchant_held(asset) else { continue };
            let Ok(quote) = self.rates().quote(&symbol, Fiat::USD, now) else {
                tracing::info!(target: "payout", merchant = %merchant_id, %asset, "no rate: what the merchant owes in it stays owed");
                continue;
            };
            for owed in self.owed(&mut *tx, merchant_id, asset, holding.magnitude()).await? {
                let cents = asset_to_fiat(owed.amount, decimals, &quote.rate, Fiat::USD, Rounding::Down).unwrap_or(Amount::ZERO);
                let memo = format!("{} of {asset} held by the merchant, at {}", owed.amount, quote.rate);
                self.buy_out(&mut *tx, merchant_id, BuyOut { owed, asset, cents, taker: merchant.clone(), memo }, &mut purse, now).await?;
            }
        }
        // Creators' shares of card payments in US dollars: the processor holds them for the
        // platform, so they are bought out at par, cent for cent.
        let usd = Fiat::USD.ledger_asset();
        for owed in self.creator_balances(&mut *tx, merchant_id, &usd).await? {
            let memo = format!("{} cents of card money owed to the creator, at par", owed.amount);
            let cents = owed.amount;
            self.buy_out(&mut *tx, merchant_id, BuyOut { owed, asset: &usd, cents, taker: merchant.clone(), memo }, &mut purse, now).await?;
        }
        // Credits spent on creators and the platform, worth their US-dollar peg: the merchant sold
        // them for money it holds, so it pays their worth; the credits go back to its issue.
        let mut pegged = Vec::new();
        for currency in payrail_credits::currency::list_on(&mut *tx, merchant_id).await? {
            if currency.peg_currency.as_deref() == Some(Fiat::USD.code()) {
                pegged.push(currency);
            }
        }
        for currency in pegged {
            let mut owed = self.creator_balances(&mut *tx, merchant_id, &currency.asset).await?;
            let fees = self.ledger().balance(&mut *tx, &AccountCode::platform_fees(), &currency.asset).await?;
            if !fees.is_negative() && !fees.magnitude().is_zero() {
                owed.push(Owed { account: AccountCode::platform_fees(), amount: fees.magnitude() });
            }
            for owed in owed {
                let Some((_, cents)) = currency.value(owed.amount) else { continue };
                let memo = format!("{} {} earned from credits spent, at {} USD each", owed.amount, currency.code, currency.peg.as_deref().unwrap_or("?"));
                let taker = AccountCode::credits_issued(merchant_id);
                self.buy_out(&mut *tx, merchant_id, BuyOut { owed, asset: &currency.asset, cents, taker, memo }, &mut purse, now).await?;
            }
        }
        Ok(purse.taken)
    }

    /// Moves `buy.owed` (worth `buy.cents` US cents) to `buy.taker` and as much of the stablecoin
    /// from the merchant to the one owed, in one entry; nothing when the purse cannot cover it.
    async fn buy_out(&self, tx: &mut PgConnection, merchant_id: &str, buy: BuyOut<'_>, purse: &mut Purse<'_>, now: DateTime<Utc>) -> Result<()> {
        let stable = purse.stable;
        let Some(price) = at_par(buy.cents, stable.decimals()) else { return Ok(()) };
        if price.is_zero() || price > purse.left {
            return Ok(());
        }
        let BuyOut { owed, asset, taker, memo, .. } = buy;
        let entry = NewEntry::new(format!("netting:{merchant_id}:{}:{asset}:{}", owed.account.as_str(), now.timestamp_micros()), "netting")
            .memo(format!("{memo}: bought out for {price} of {}", stable.asset))
            .debit(owed.account.clone(), asset, owed.amount)
            .credit(taker, asset, owed.amount)
            .debit(AccountCode::merchant(merchant_id), stable.asset.as_str(), price)
            .credit(owed.account, stable.asset.as_str(), price);
        self.ledger().post(&mut *tx, &entry).await?;
        purse.left = purse.left.saturating_sub(price);
        purse.taken = purse.taken.checked_add(price).unwrap_or(Amount::MAX);
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
