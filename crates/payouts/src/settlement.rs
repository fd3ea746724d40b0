//! Withdrawals on request: a merchant's settlement of its available balance, or a creator's
//! withdrawal of its earnings, each a payout batch of its own, written, signed, sent, replaced,
//! confirmed or returned by the same machinery as payout runs — one batch per chain and asset, the
//! contract refusing a batch id twice, the signed bytes stored before they are broadcast. A
//! creator's withdrawal must be worth the payout threshold, as a run's payment would.
//!
//! A settlement takes the merchant's `liabilities:merchant:{id}` balance to `payouts_in_flight` in
//! the transaction that writes the batch, under the same lock as payout runs, so two settlements (or
//! a settlement and a refund) cannot both take the same funds: the second is refused with what is
//! still available. It is paid to the merchant's payout address on the chain, which must have been
//! set at least `[payouts] address_change_delay_s` before (an account taken over cannot send the
//! balance to a new address at once). A merchant's settlement of a USD stablecoin first takes from
//! it what the merchant owes for money its own wallet holds ([`super::netting`]).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use payrail_store::page::{Listing, Order, Page};
use sqlx::{PgConnection, PgPool};

use crate::ledger::AccountCode;
use crate::money::{Amount, ChainId};

use super::error::{PayoutError, Result};
use super::plan::{Candidate, PlannedBatch};
use super::runner::{PayoutService, RunRequest};
use super::store::{self, PayoutView};

/// Body of `POST /v1/settlements`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettlementRequest {
    /// A chain by name (`polygon`) or CAIP-2 id.
    pub chain: String,
    /// The CAIP-19 asset to withdraw.
    pub asset: String,
    /// In the asset's smallest unit (an integer string); the whole available balance when absent.
    #[serde(default)]
    pub amount_minor: Option<String>,
}

/// When a merchant's balances are settled without asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Only on request (`POST /v1/settlements`).
    Manual,
    Daily,
    Weekly,
}

impl Schedule {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Manual => "manual",
            Self::Daily => "daily",
            Self::Weekly => "weekly",
        }
    }

    /// How long after a scheduled settlement the next is due; `None` for manual.
    pub fn interval(self) -> Option<chrono::Duration> {
        match self {
            Self::Manual => None,
            Self::Daily => Some(chrono::Duration::days(1)),
            Self::Weekly => Some(chrono::Duration::days(7)),
        }
    }
}

/// `PUT /v1/merchants/me/settlement_schedule` and what `GET` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettlementSchedule {
    pub schedule: Schedule,
    /// Balances of an asset worth less than this (USD, a decimal string such as `"50"`) stay and
    /// add up; `"0"` when absent.
    #[serde(default = "zero_usd")]
    pub minimum_usd: String,
    /// When the schedule last settled (read only).
    #[serde(default, skip_deserializing)]
    pub last_settled_at: Option<DateTime<Utc>>,
}

fn zero_usd() -> String {
    "0".to_owned()
}

/// A merchant's payout address on one chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct PayoutAddress {
    /// CAIP-2.
    pub chain: String,
    pub address: String,
    /// When it was last set: payments to it wait until the takeover delay has passed. Null for a
    /// creator's address its merchant set when it created the creator: usable at once.
    pub changed_at: Option<DateTime<Utc>>,
    /// When a second key confirmed the change (usable from then on, without waiting out the delay).
    pub confirmed_at: Option<DateTime<Utc>>,
    /// When payments to it may start; null when at once.
    pub usable_from: Option<DateTime<Utc>>,
}

/// A one-item batch about to be written: see [`PayoutService::single`].
pub(crate) struct Single<'a> {
    pub(crate) chain: &'a crate::config::ChainSpec,
    batcher: alloy_primitives::Address,
    pub(crate) asset: super::runner::PayableAsset,
    funds: Amount,
}

/// Whose balance a withdrawal takes, and where its payout addresses are kept.
#[derive(Debug, Clone, Copy)]
enum Payee<'a> {
    Merchant(&'a str),
    Creator { creator_id: &'a str, merchant_id: &'a str },
}

impl Payee<'_> {
    fn merchant_id(&self) -> &str {
        match self {
            Self::Merchant(id) | Self::Creator { merchant_id: id, .. } => id,
        }
    }

    fn account(&self) -> AccountCode {
        match self {
            Self::Merchant(id) => AccountCode::merchant(id),
            Self::Creator { creator_id, .. } => AccountCode::creator(creator_id),
        }
    }

    /// The table of its payout addresses, the column naming it, and its id there.
    fn addresses(&self) -> (&'static str, &'static str, &str) {
        match self {
            Self::Merchant(id) => ("merchant_payout_addresses", "merchant_id", id),
            Self::Creator { creator_id, .. } => ("creator_payout_addresses", "creator_id", creator_id),
        }
    }

    /// Where to set an address with `PUT`.
    fn address_path(&self) -> &'static str {
        match self {
            Self::Merchant(_) => "/v1/merchants/me/payout_addresses",
            Self::Creator { .. } => "/v1/creators/me/payout_addresses",
        }
    }
}

impl PayoutService {
    /// Writes a settlement of `merchant_id`'s balance: one batch with the merchant as its one
    /// recipient, which the executor then sends. See the module docs for what is refused.
    pub async fn settle(&self, merchant_id: &str, request: &SettlementRequest) -> Result<PayoutView> {
        self.withdraw(Payee::Merchant(merchant_id), request).await
    }

    /// Writes a withdrawal of creator `creator_id`'s earnings (of merchant `merchant_id`), as
    /// [`Self::settle`] does for a merchant; it must be worth at least the payout threshold.
    pub async fn withdraw_creator(&self, creator_id: &str, merchant_id: &str, request: &SettlementRequest) -> Result<PayoutView> {
        self.withdraw(Payee::Creator { creator_id, merchant_id }, request).await
    }

    /// The chain, batcher and asset of a one-item batch of `asset` on `chain`, and what the
    /// batcher holds of it — read before any transaction: no lock is held across a network call.
    pub(crate) async fn single(&self, chain: &str, asset: &str) -> Result<Single<'_>> {
        let asked = RunRequest { chain: Some(chain.to_owned()), asset: Some(asset.to_owned()) };
        let spec = self.chosen(&asked)?.into_iter().next().ok_or_else(|| PayoutError::ChainNotPayable { chain: chain.to_owned() })?;
        let batcher = spec.payout_batcher.ok_or_else(|| PayoutError::ChainNotPayable { chain: spec.name.clone() })?;
        let payable = super::runner::payable_assets(spec)
            .into_iter()
            .find(|a| a.asset == asset)
            .ok_or_else(|| PayoutError::AssetNotPayable { chain: spec.name.clone(), asset: asset.to_owned() })?;
        let funds = super::runner::connect(spec)?
            .balance_of(batcher, payable.token)
            .await
            .map(Amount::from_u256)
            .map_err(|e| PayoutError::Rpc { chain: spec.name.clone(), message: e.to_string() })?;
        Ok(Single { chain: spec, batcher, asset: payable, funds })
    }

    /// Writes the one-item batch paying `item` on the caller's transaction, which holds the runs'
    /// lock; refused (`batcher_funds_short`) when the batcher cannot cover it beside open batches.
    pub(crate) async fn write_single(&self, tx: &mut PgConnection, single: &Single<'_>, item: Candidate, now: DateTime<Utc>) -> Result<PayoutView> {
        let promised = store::promised(&mut *tx, &single.chain.caip2, &single.asset.asset).await?;
        if single.funds.saturating_sub(promised) < item.amount {
            return Err(PayoutError::Refused {
                code: "batcher_funds_short",
                reason: format!("the payout batcher on {} cannot cover this now; try again later", single.chain.caip2),
            });
        }
        let planned = PlannedBatch { total: item.amount, items: vec![item] };
        store::create_batch(
            tx,
            self.ledger(),
            &store::new_run_id(),
            &single.chain.caip2,
            &single.asset.asset,
            single.asset.token,
            single.batcher,
            &planned,
            now,
        )
        .await
    }

    async fn withdraw(&self, payee: Payee<'_>, request: &SettlementRequest) -> Result<PayoutView> {
        let wanted = match &request.amount_minor {
            Some(text) => {
                let amount = Amount::parse_decimal(text, 0)
                    .map_err(|_| PayoutError::Invalid { field: "amount_minor", reason: format!("{text:?} is not a whole number") })?;
                if amount.is_zero() {
                    return Err(PayoutError::Invalid { field: "amount_minor", reason: "must be more than 0".to_owned() });
                }
                Some(amount)
            }
            None => None,
        };
        let now = self.clock().now();
        let single = self.single(&request.chain, &request.asset).await?;
        let (chain, asset) = (single.chain, &single.asset);
        let address = {
            let mut conn = self.pool().acquire().await?;
            payout_address(&mut conn, payee, &chain.caip2, self.config().address_change_delay_s).await?
        }
        .ok_or_else(|| PayoutError::Refused {
            code: "payout_address_missing",
            reason: format!("no payout address on {}: set one with PUT {}/{{chain}}", chain.caip2, payee.address_path()),
        })?;
        if address.usable_from.is_some_and(|from| now < from) {
            return Err(PayoutError::Refused {
                code: "payout_address_recent",
                reason: format!(
                    "the payout address on {} changed at {}: payments to it start at {}",
                    chain.caip2,
                    address.changed_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
                    address.usable_from.map(|t| t.to_rfc3339()).unwrap_or_default()
                ),
            });
        }
        let to = address.address.parse().map_err(|_| PayoutError::Corrupt { value: address.address.clone() })?;

        let mut tx = self.pool().begin().await?;
        store::lock_runs(&mut tx).await?;
        // What the merchant owes for Bitcoin it holds is bought out of a stablecoin first.
        if let Payee::Merchant(merchant_id) = payee {
            self.net_receivables(&mut tx, merchant_id, asset, now).await?;
        }
        let balance = self.ledger().balance(&mut tx, &payee.account(), &asset.asset).await?;
        let available = if balance.is_negative() { Amount::ZERO } else { balance.magnitude() };
        let amount = wanted.unwrap_or(available);
        if amount.is_zero() || amount > available {
            return Err(PayoutError::Refused {
                code: "insufficient_funds",
                reason: format!("{} of {} is available to withdraw", available, asset.asset),
            });
        }
        if let Payee::Creator { .. } = payee {
            let threshold = self.config().threshold_usd_cents;
            if self.usd_cents(asset, amount, now).is_none_or(|usd| usd < threshold) {
                return Err(PayoutError::Refused {
                    code: "below_threshold",
                    reason: format!("worth less than the payout threshold of {} USD (or no rate)", threshold.to_decimal_string(2)),
                });
            }
        }
        let creator_id = match payee {
            Payee::Merchant(_) => None,
            Payee::Creator { creator_id, .. } => Some(creator_id.to_owned()),
        };
        let item = Candidate { refund_id: None, creator_id, merchant_id: payee.merchant_id().to_owned(), address: to, amount };
        let view = self.write_single(&mut tx, &single, item, now).await?;
        tx.commit().await?;
        tracing::info!(target: "payout", account = %payee.account().as_str(), batch = %view.id, chain = %chain.name, "withdrawal");
        Ok(view)
    }

    /// Sets the merchant's payout address on `chain` (a configured payout chain), checked and stored
    /// as [`crate::payments_creator::normalize_payout_address`] does for creators. A contract is
    /// refused unless `contract_confirmed` (a multisig wallet, say): tokens sent to a contract that
    /// cannot move them are lost. Setting the same address again keeps its time; a new one starts
    /// the takeover delay.
    /// `changed_by`: the API key that asks (another key can then confirm the change).
    pub async fn set_payout_address(
        &self,
        merchant_id: &str,
        chain: &str,
        address: &str,
        contract_confirmed: bool,
        changed_by: Option<&str>,
    ) -> Result<PayoutAddress> {
        self.set_address(Payee::Merchant(merchant_id), chain, address, contract_confirmed, changed_by).await
    }

    /// Sets a creator's payout address over its own key, as [`Self::set_payout_address`] does for a
    /// merchant (with the same takeover delay before it is paid to).
    pub async fn set_creator_payout_address(
        &self,
        creator_id: &str,
        merchant_id: &str,
        chain: &str,
        address: &str,
        contract_confirmed: bool,
        changed_by: Option<&str>,
    ) -> Result<PayoutAddress> {
        self.set_address(Payee::Creator { creator_id, merchant_id }, chain, address, contract_confirmed, changed_by).await
    }

    /// Confirms a payout address change with a second key, so it is usable at once: another of the
    /// merchant's keys than the one that set it (a merchant's address), or the creator's merchant (a
    /// creator's). Refused (`second_key_required`) from the key that made the change, and from a key
    /// created less than the delay before the change: a stolen key could make a fresh key of its
    /// own and confirm with it, so only a key that already existed when the delay began counts. An
    /// address already usable is returned as it is.
    pub async fn confirm_payout_address(&self, merchant_id: &str, creator_id: Option<&str>, chain: &str, confirmed_by: &str) -> Result<PayoutAddress> {
        let payee = match creator_id {
            Some(creator_id) => Payee::Creator { creator_id, merchant_id },
            None => Payee::Merchant(merchant_id),
        };
        let asked = RunRequest { chain: Some(chain.to_owned()), asset: None };
        let spec = self.chosen(&asked)?.into_iter().next().ok_or_else(|| PayoutError::ChainNotPayable { chain: chain.to_owned() })?;
        let (table, column, id) = payee.addresses();
        let mut tx = self.pool().begin().await?;
        let row: Option<AddressChange> = sqlx::query_as(&format!(
            "SELECT changed_by_key, changed_at, confirmed_at FROM {table} WHERE {column} = $1 AND chain = $2 FOR UPDATE"
        ))
        .bind(id)
        .bind(spec.caip2.to_string())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(AddressChange { changed_by_key: changed_by, changed_at, confirmed_at }) = row else {
            return Err(PayoutError::Refused { code: "payout_address_missing", reason: format!("no payout address on {}", spec.caip2) });
        };
        if confirmed_at.is_none() {
            if changed_by.as_deref() == Some(confirmed_by) {
                return Err(PayoutError::Refused {
                    code: "second_key_required",
                    reason: "the key that changed the address cannot confirm it: use another key".to_owned(),
                });
            }
            let delay = chrono::Duration::seconds(i64::try_from(self.config().address_change_delay_s).unwrap_or(i64::MAX / 1_000));
            let key_created: Option<DateTime<Utc>> = sqlx::query_scalar("SELECT created_at FROM api_keys WHERE id = $1")
                .bind(confirmed_by)
                .fetch_optional(&mut *tx)
                .await?;
            if key_created.is_none_or(|created| created > changed_at - delay) {
                return Err(PayoutError::Refused {
                    code: "second_key_required",
                    reason: "a key created after the delay began cannot confirm the change: use a key older than the delay, or wait".to_owned(),
                });
            }
            sqlx::query(&format!("UPDATE {table} SET confirmed_at = $3, confirmed_by_key = $4 WHERE {column} = $1 AND chain = $2"))
                .bind(id)
                .bind(spec.caip2.to_string())
                .bind(self.clock().now())
                .bind(confirmed_by)
                .execute(&mut *tx)
                .await?;
        }
        let address = payout_address(&mut tx, payee, &spec.caip2, self.config().address_change_delay_s)
            .await?
            .ok_or_else(|| PayoutError::Corrupt { value: format!("payout address of {id}") })?;
        tx.commit().await?;
        tracing::info!(target: "payout", payee = %payee.account().as_str(), chain = %spec.caip2, "payout address change confirmed by a second key");
        Ok(address)
    }

    async fn set_address(&self, payee: Payee<'_>, chain: &str, address: &str, contract_confirmed: bool, changed_by: Option<&str>) -> Result<PayoutAddress> {
        let asked = RunRequest { chain: Some(chain.to_owned()), asset: None };
        let spec = self.chosen(&asked)?.into_iter().next().ok_or_else(|| PayoutError::ChainNotPayable { chain: chain.to_owned() })?;
        let normalized = crate::payments_creator::normalize_payout_address(&spec.caip2.to_string(), address)
            .map_err(|e| PayoutError::Invalid { field: "address", reason: e.to_string() })?;
        let parsed = normalized.parse().map_err(|_| PayoutError::Corrupt { value: normalized.clone() })?;
        let code = super::runner::connect(spec)?
            .code_at(parsed)
            .await
            .map_err(|e| PayoutError::Rpc { chain: spec.name.clone(), message: e.to_string() })?;
        if !code.is_empty() && !contract_confirmed {
            return Err(PayoutError::Invalid {
                field: "address",
                reason: format!(
                    "{normalized} is a contract on {}: set contract_confirmed if it can move tokens (a multisig wallet)",
                    spec.caip2
                ),
            });
        }
        let now = self.clock().now();
        let mut conn = self.pool().acquire().await?;
        let (table, column, id) = payee.addresses();
        sqlx::query(&format!(
            "INSERT INTO {table} ({column}, chain, address, changed_at, changed_by_key) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT ({column}, chain) DO UPDATE SET address = EXCLUDED.address, changed_at = EXCLUDED.changed_at, \
                 changed_by_key = EXCLUDED.changed_by_key, confirmed_at = NULL, confirmed_by_key = NULL \
             WHERE {table}.address <> EXCLUDED.address"
        ))
        .bind(id)
        .bind(spec.caip2.to_string())
        .bind(&normalized)
        .bind(now)
        .bind(changed_by)
        .execute(&mut *conn)
        .await?;
        payout_address(&mut conn, payee, &spec.caip2, self.config().address_change_delay_s)
            .await?
            .ok_or_else(|| PayoutError::Corrupt { value: format!("payout address of {id}") })
    }
}

impl PayoutService {
    /// Stores the merchant's settlement schedule; the next scheduled settlement is due at once when
    /// none happened yet, else one interval after the last.
    pub async fn set_schedule(&self, merchant_id: &str, schedule: &SettlementSchedule) -> Result<SettlementSchedule> {
        let minimum = Amount::parse_decimal(&schedule.minimum_usd, 2).map_err(|_| PayoutError::Invalid {
            field: "minimum_usd",
            reason: format!("{:?} is not a USD amount with at most 2 decimals", schedule.minimum_usd),
        })?;
        sqlx::query(
            "INSERT INTO merchant_settlement_schedules (merchant_id, schedule, minimum_usd_cents, updated_at) \
             VALUES ($1, $2, $3::numeric, $4) \
             ON CONFLICT (merchant_id) DO UPDATE SET schedule = EXCLUDED.schedule, \
                 minimum_usd_cents = EXCLUDED.minimum_usd_cents, updated_at = EXCLUDED.updated_at",
        )
        .bind(merchant_id)
        .bind(schedule.schedule.as_str())
        .bind(minimum.to_string())
        .bind(self.clock().now())
        .execute(self.pool())
        .await?;
        self.schedule(merchant_id).await
    }

    /// The merchant's settlement schedule: manual with no minimum until one is set.
    pub async fn schedule(&self, merchant_id: &str) -> Result<SettlementSchedule> {
        let row: Option<(String, String, Option<DateTime<Utc>>)> = sqlx::query_as(
            "SELECT schedule, minimum_usd_cents::text, last_settled_at FROM merchant_settlement_schedules WHERE merchant_id = $1",
        )
        .bind(merchant_id)
        .fetch_optional(self.pool())
        .await?;
        let Some((schedule, cents, last_settled_at)) = row else {
            return Ok(SettlementSchedule { schedule: Schedule::Manual, minimum_usd: zero_usd(), last_settled_at: None });
        };
        let schedule = match schedule.as_str() {
            "manual" => Schedule::Manual,
            "daily" => Schedule::Daily,
            "weekly" => Schedule::Weekly,
            _ => return Err(PayoutError::Corrupt { value: schedule }),
        };
        let cents = Amount::parse_decimal(&cents, 0).map_err(|_| PayoutError::Corrupt { value: cents.clone() })?;
        Ok(SettlementSchedule { schedule, minimum_usd: cents.to_decimal_string(2), last_settled_at })
    }

    /// Settles every merchant whose schedule is due: each asset balance worth at least its minimum,
    /// on each chain where it has a usable payout address. A balance that cannot be settled now (no
    /// rate, the batcher short, an address still in its delay) is logged and waits for the next
    /// time; the schedule moves on either way, so one bad asset does not hold up the rest.
    pub async fn settle_due(&self) -> Result<Vec<PayoutView>> {
        let now = self.clock().now();
        let due: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT merchant_id, schedule, minimum_usd_cents::text FROM merchant_settlement_schedules \
             WHERE (schedule = 'daily' AND (last_settled_at IS NULL OR last_settled_at <= $1 - interval '1 day')) \
                OR (schedule = 'weekly' AND (last_settled_at IS NULL OR last_settled_at <= $1 - interval '7 days')) \
             ORDER BY merchant_id",
        )
        .bind(now)
        .fetch_all(self.pool())
        .await?;
        let mut created = Vec::new();
        for (merchant_id, _, minimum) in due {
            let minimum = Amount::parse_decimal(&minimum, 0).map_err(|_| PayoutError::Corrupt { value: minimum.clone() })?;
            let balances = {
                let mut conn = self.pool().acquire().await?;
                self.ledger().balances(&mut conn, &AccountCode::merchant(&merchant_id)).await?
            };
            for chain in self.chains() {
                for asset in super::runner::payable_assets(chain) {
                    let Some((_, balance)) = balances.iter().find(|(a, b)| *a == asset.asset && !b.is_negative()) else { continue };
                    let amount = balance.magnitude();
                    if amount.is_zero() || self.usd_cents(&asset, amount, now).is_none_or(|usd| usd < minimum) {
                        continue;
                    }
                    let request = SettlementRequest { chain: chain.name.clone(), asset: asset.asset.clone(), amount_minor: None };
                    match self.settle(&merchant_id, &request).await {
                        Ok(view) => created.push(view),
                        Err(PayoutError::Refused { code, reason }) => {
                            tracing::info!(target: "payout", merchant = %merchant_id, chain = %chain.name, code, %reason, "scheduled settlement waits");
                        }
                        Err(error) if error.is_retryable() => return Err(error),
                        Err(error) => {
                            tracing::warn!(target: "payout", merchant = %merchant_id, chain = %chain.name, %error, "scheduled settlement failed");
                        }
                    }
                }
            }
            sqlx::query("UPDATE merchant_settlement_schedules SET last_settled_at = $2 WHERE merchant_id = $1")
                .bind(&merchant_id)
                .bind(now)
                .execute(self.pool())
                .await?;
        }
        Ok(created)
    }
}

/// The payee's payout address on `chain`, if set.
async fn payout_address(conn: &mut PgConnection, payee: Payee<'_>, chain: &ChainId, delay_s: u64) -> Result<Option<PayoutAddress>> {
    let (table, column, id) = payee.addresses();
    let row: Option<AddressRow> = sqlx::query_as(&format!(
        "SELECT chain, address, changed_at, confirmed_at FROM {table} WHERE {column} = $1 AND chain = $2"
    ))
    .bind(id)
    .bind(chain.to_string())
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|row| address_view(row, delay_s)))
}

type AddressRow = (String, String, Option<DateTime<Utc>>, Option<DateTime<Utc>>);

fn address_view((chain, address, changed_at, confirmed_at): AddressRow, delay_s: u64) -> PayoutAddress {
    let after_delay = changed_at.map(|at| at + chrono::Duration::seconds(i64::try_from(delay_s).unwrap_or(i64::MAX / 1_000)));
    let usable_from = match (after_delay, confirmed_at) {
        (Some(after_delay), Some(confirmed)) => Some(after_delay.min(confirmed)),
        (usable_from, _) => usable_from,
    };
    PayoutAddress { chain, address, changed_at, confirmed_at, usable_from }
}

/// A page of the merchant's payout addresses, by chain (the cursors are chains' CAIP-2 ids), and
/// whether more follow.
pub async fn payout_addresses(pool: &PgPool, merchant_id: &str, delay_s: u64, page: &Page) -> Result<(Vec<PayoutAddress>, bool)> {
    const ADDRESSES: Listing = Listing {
        table: "merchant_payout_addresses",
        columns: "chain, address, changed_at, confirmed_at",
        owner: "merchant_id",
        id: "chain",
        order: Order("chain"),
    };
    let (rows, has_more): (Vec<AddressRow>, bool) = ADDRESSES.page(pool, merchant_id, page).await?;
    Ok((rows.into_iter().map(|row| address_view(row, delay_s)).collect(), has_more))
}

/// A page of the merchant's settlements (batches paying its own balance), newest first, and
/// whether more follow.
pub async fn settlements(pool: &PgPool, merchant_id: &str, page: &Page) -> Result<(Vec<PayoutView>, bool)> {
    let ids: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT b.id FROM payout_batches b JOIN payout_items i ON i.batch_id = b.id \
         WHERE i.merchant_id = $1 AND i.account = 'liabilities:merchant:' || i.merchant_id AND {} ORDER BY {} LIMIT $3",
        page.condition(store::NEWEST, store::BATCH_KEY),
        page.order_by(store::NEWEST),
    ))
    .bind(merchant_id)
    .bind(page.cursor_id())
    .bind(page.fetch())
    .fetch_all(pool)
    .await?;
    let (ids, has_more) = page.finish(ids);
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        out.push(settlement(pool, merchant_id, &id).await?);
    }
    Ok((out, has_more))
}

/// One settlement of the merchant; another merchant's, or a creators' batch, is not found.
pub async fn settlement(pool: &PgPool, merchant_id: &str, id: &str) -> Result<PayoutView> {
    let view = store::view(pool, id).await?;
    if !view.items.iter().any(|i| i.recipient == "merchant" && i.merchant_id == merchant_id) {
        return Err(PayoutError::NotFound { id: id.to_owned() });
    }
    store::merchant_share(&view, merchant_id)
}
/// Who changed a payout address and when, and whether a second key confirmed it.
#[derive(sqlx::FromRow)]
struct AddressChange {
    changed_by_key: Option<String>,
    changed_at: DateTime<Utc>,
    confirmed_at: Option<DateTime<Utc>>,
}

