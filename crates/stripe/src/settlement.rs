//! Card settlements: a merchant's card balance leaves as a Stripe payout to the bank.
//!
//! Card money is held by the processor (`assets:stripe:{currency}`); what of it the merchant is
//! owed is its `liabilities:merchant:{id}` balance in `iso4217:{CUR}`. A settlement:
//! 1. in one transaction, writes the `created` row and reserves the amount (merchant →
//!    `liabilities:payouts_in_flight`, entry `card_settlement:{id}`): the ledger refuses a
//!    reservation the balance cannot cover, so two settlements (or a settlement and a card refund)
//!    cannot both take the same money;
//! 2. asks Stripe for a payout (`POST /v1/payouts`, idempotency key: the settlement's id, its id in
//!    the payout's metadata) and records Stripe's `po_…` as `pending`. A crash between 1 and 2, or
//!    Stripe not answering, leaves the row `created`; [`resume`] asks again with the same key, so
//!    Stripe makes one payout whatever happened;
//! 3. Stripe's `payout.*` events (or [`refresh`]) end it: `paid` moves the reservation out of the
//!    processor's account (entry `card_payout:{po}`, which the Stripe reconciliation matches to the
//!    payout); `failed` or `canceled` give it back to the merchant (`card_settlement_returned:{id}`).
//!    A payout that fails after it was paid (the bank returned it) puts the money back at Stripe and
//!    back on the merchant's balance.
//!
//! The Stripe account's payouts must be on the manual schedule: a payout payrail did not ask for
//! (Stripe's automatic schedule, the dashboard) is kept for review and reconciliation reports it.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use payrail_store::page::{Listing, Order, Page};
use sqlx::{PgConnection, PgPool};

use crate::ids::new_id;
use crate::ledger::{AccountCode, Ledger, LedgerError, NewEntry};
use crate::money::{Amount, Fiat};

use super::client::{stripe_amount, NewPayout, Payout};
use super::error::{Result, StripeError};
use super::CardRail;

/// The metadata key naming the settlement on the payout.
pub const METADATA_SETTLEMENT_ID: &str = "payrail_card_settlement";
/// The metadata key naming the merchant on the payout.
pub const METADATA_MERCHANT_ID: &str = "payrail_merchant_id";
/// A `created` settlement this old is asked for again by [`resume`] (a request under way is left).
pub const RESUME_AFTER_S: i64 = 30;

/// Body of `POST /v1/card_settlements`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CardSettlementRequest {
    /// ISO 4217 code of the card balance to pay out (`EUR`).
    pub currency: String,
    /// In the currency's minor units (an integer string); the whole available balance when absent.
    #[serde(default)]
    pub amount_minor: Option<String>,
}

/// A card settlement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct CardSettlementView {
    /// `cst_…`
    pub id: String,
    pub merchant_id: String,
    /// ISO 4217.
    pub currency: String,
    pub amount_minor: String,
    /// `created` (Stripe not answered yet; asked again), `pending` (Stripe's payout is on its
    /// way), `paid`, `failed` or `canceled` (the amount is back on the balance).
    pub status: String,
    /// Stripe's payout, `po_…`, once Stripe answered.
    pub stripe_payout: Option<String>,
    pub failure_message: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

const VIEW_COLUMNS: &str = "id, merchant_id, currency, amount_minor::text AS amount_minor, status, \
     stripe_payout_id AS stripe_payout, failure_message, created_at, updated_at, finished_at";

/// What a `payout.*` event came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayoutOutcome {
    /// Applied, or already applied.
    Applied(String),
    /// Not one of payrail's, or not as payrail asked: kept for review.
    Review(String),
}

/// Writes and asks Stripe for a settlement of merchant `merchant_id`'s card balance; see the
/// module docs. Stripe not answering leaves it `created` (it is asked again); Stripe refusing
/// ends it `failed` with the balance back.
pub async fn settle(rail: &CardRail, pool: &PgPool, ledger: &Ledger, merchant_id: &str, request: &CardSettlementRequest, now: DateTime<Utc>) -> Result<CardSettlementView> {
    let fiat: Fiat = request
        .currency
        .parse()
        .map_err(|_| StripeError::SettlementInvalid { reason: format!("{:?} is not an ISO 4217 currency code", request.currency) })?;
    let asked = match &request.amount_minor {
        None => None,
        Some(text) => match Amount::parse_decimal(text, 0) {
            Ok(amount) if !amount.is_zero() && !text.starts_with('+') => Some(amount),
            _ => return Err(StripeError::SettlementInvalid { reason: "amount_minor must be a positive integer string".to_owned() }),
        },
    };
    let id = new_id("cst");
    let mut tx = pool.begin().await?;
    let merchant = AccountCode::merchant(merchant_id);
    let balance = ledger.balance(&mut tx, &merchant, &fiat.ledger_asset()).await?;
    let available = if balance.is_negative() { Amount::ZERO } else { balance.magnitude() };
    let amount = asked.unwrap_or(available);
    if amount.is_zero() || amount > available {
        return Err(StripeError::SettlementFunds { currency: fiat.code().to_owned(), available: available.to_string() });
    }
    if stripe_amount(fiat, amount).is_none() {
        return Err(StripeError::SettlementInvalid { reason: format!("{amount} is more than one Stripe payout can carry") });
    }
    sqlx::query(
        "INSERT INTO card_settlements (id, merchant_id, currency, amount_minor, status, created_at, updated_at) \
         VALUES ($1, $2, $3, $4::numeric, 'created', $5, $5)",
    )
    .bind(&id)
    .bind(merchant_id)
    .bind(fiat.code())
    .bind(amount.to_string())
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let entry = NewEntry::new(format!("card_settlement:{id}"), "card_settlement")
        .memo(format!("card settlement {id} of merchant {merchant_id}"))
        .debit(merchant, fiat.ledger_asset(), amount)
        .credit(AccountCode::payouts_in_flight(), fiat.ledger_asset(), amount);
    match ledger.post(&mut tx, &entry).await {
        Ok(_) => {}
        // Another settlement or a refund took it since it was read.
        Err(LedgerError::InsufficientBalance { .. }) => {
            return Err(StripeError::SettlementFunds { currency: fiat.code().to_owned(), available: "less than asked".to_owned() });
        }
        Err(e) => return Err(e.into()),
    }
    let view = load(&mut tx, &id).await?;
    payrail_payments::webhook::emit(&mut tx, merchant_id, "card_settlement.created", &id, &view, now).await?;
    tx.commit().await?;
    send(rail, pool, ledger, &id, now).await
}

/// Asks Stripe for the payout of `created` settlement `id` (again, under the same idempotency key)
/// and records the answer.
async fn send(rail: &CardRail, pool: &PgPool, ledger: &Ledger, id: &str, now: DateTime<Utc>) -> Result<CardSettlementView> {
    let view = load(&mut *pool.acquire().await?, id).await?;
    if view.status != "created" {
        return Ok(view);
    }
    let fiat: Fiat = view.currency.parse().map_err(|_| StripeError::SettlementInvalid { reason: format!("stored currency {:?}", view.currency) })?;
    let amount = Amount::parse_decimal(&view.amount_minor, 0).ok().and_then(|a| stripe_amount(fiat, a));
    let Some(amount) = amount else {
        return Err(StripeError::SettlementInvalid { reason: format!("stored amount {:?}", view.amount_minor) });
    };
    let request = NewPayout {
        amount,
        currency: fiat.code().to_ascii_lowercase(),
        metadata: BTreeMap::from([
            (METADATA_SETTLEMENT_ID.to_owned(), id.to_owned()),
            (METADATA_MERCHANT_ID.to_owned(), view.merchant_id.clone()),
        ]),
    };
    match rail.client.create_payout(&request, id).await {
        Ok(payout) => {
            let mut tx = pool.begin().await?;
            apply(&mut tx, ledger, &payout, now).await?;
            let view = load(&mut tx, id).await?;
            tx.commit().await?;
            Ok(view)
        }
        Err(error) if error.is_retryable() => {
            tracing::warn!(target: "stripe::settlement", settlement = %id, %error, "payout not made yet; asked again later");
            Ok(view)
        }
        Err(error) => {
            let mut tx = pool.begin().await?;
            let row = lock(&mut tx, id).await?;
            if row.status == "created" {
                give_back(&mut tx, ledger, &row, "failed", &error.to_string(), now).await?;
            }
            let view = load(&mut tx, id).await?;
            tx.commit().await?;
            Ok(view)
        }
    }
}

/// Asks Stripe again for every settlement left `created` for [`RESUME_AFTER_S`]; how many.
pub async fn resume(rail: &CardRail, pool: &PgPool, ledger: &Ledger, now: DateTime<Utc>) -> Result<usize> {
    let due: Vec<String> = sqlx::query_scalar("SELECT id FROM card_settlements WHERE status = 'created' AND updated_at < $1 ORDER BY created_at LIMIT 100")
        .bind(now - Duration::seconds(RESUME_AFTER_S))
        .fetch_all(pool)
        .await?;
    for id in &due {
        send(rail, pool, ledger, id, now).await?;
    }
    Ok(due.len())
}

/// Applies what Stripe says of a payout, on `tx`: see the module docs.
pub async fn apply(tx: &mut PgConnection, ledger: &Ledger, payout: &Payout, now: DateTime<Utc>) -> Result<PayoutOutcome> {
    let named = payout.metadata.get(METADATA_SETTLEMENT_ID).cloned();
    let id: Option<String> = match named {
        Some(id) => Some(id),
        None => sqlx::query_scalar("SELECT id FROM card_settlements WHERE stripe_payout_id = $1").bind(&payout.id).fetch_optional(&mut *tx).await?,
    };
    let Some(id) = id else {
        return Ok(PayoutOutcome::Review(format!(
            "payout {} of {} {} was not asked for by payrail (set the Stripe account's payouts to manual); nothing booked",
            payout.id, payout.amount, payout.currency
        )));
    };
    let Some(row) = lock_optional(tx, &id).await? else {
        return Ok(PayoutOutcome::Review(format!("payout {} names settlement {id}, which this payrail does not have", payout.id)));
    };
    if row.stripe_payout_id.as_deref().is_some_and(|po| po != payout.id)
        || !payout.currency.eq_ignore_ascii_case(&row.currency)
        || Some(payout.amount) != row.amount.to_string().parse::<u64>().ok()
    {
        return Ok(PayoutOutcome::Review(format!(
            "payout {} ({} {}) does not match settlement {id} ({} {}, {:?})",
            payout.id, payout.amount, payout.currency, row.amount, row.currency, row.stripe_payout_id
        )));
    }
    if row.stripe_payout_id.is_none() {
        sqlx::query("UPDATE card_settlements SET stripe_payout_id = $2, status = CASE WHEN status = 'created' THEN 'pending' ELSE status END, updated_at = $3 WHERE id = $1")
            .bind(&id)
            .bind(&payout.id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
    }
    let fiat: Fiat = row.currency.parse().map_err(|_| StripeError::SettlementInvalid { reason: format!("stored currency {:?}", row.currency) })?;
    let asset = fiat.ledger_asset();
    match (payout.status.as_str(), row.status.as_str()) {
        ("paid", "created" | "pending") => {
            let entry = NewEntry::new(format!("card_payout:{}", payout.id), "card_payout")
                .memo(format!("card settlement {id}: Stripe payout {} paid to the bank", payout.id))
                .debit(AccountCode::payouts_in_flight(), asset.as_str(), row.amount)
                .credit(AccountCode::stripe(fiat), asset.as_str(), row.amount);
            ledger.post(&mut *tx, &entry).await?;
            finish(tx, &row, "paid", None, now).await?;
            Ok(PayoutOutcome::Applied(format!("settlement {id} paid")))
        }
        ("failed" | "canceled", "created" | "pending") => {
            let message = payout.failure_message.clone().unwrap_or_else(|| format!("the payout was {}", payout.status));
            give_back(tx, ledger, &row, &payout.status, &message, now).await?;
            Ok(PayoutOutcome::Applied(format!("settlement {id} {}; the amount is back on the balance", payout.status)))
        }
        // The bank sent a paid payout back: the money is at Stripe again, and the merchant's.
        ("failed", "paid") => {
            let entry = NewEntry::new(format!("card_payout_returned:{}", payout.id), "card_payout_returned")
                .memo(format!("card settlement {id}: Stripe payout {} returned by the bank", payout.id))
                .debit(AccountCode::stripe(fiat), asset.as_str(), row.amount)
                .credit(AccountCode::merchant(&row.merchant_id), asset.as_str(), row.amount);
            ledger.post(&mut *tx, &entry).await?;
            let message = payout.failure_message.clone().unwrap_or_else(|| "returned by the bank".to_owned());
            finish(tx, &row, "failed", Some(&message), now).await?;
            Ok(PayoutOutcome::Applied(format!("settlement {id} returned after it was paid; the amount is back on the balance")))
        }
        (_, "created") => {
            sqlx::query("UPDATE card_settlements SET status = 'pending', updated_at = $2 WHERE id = $1").bind(&id).bind(now).execute(&mut *tx).await?;
            Ok(PayoutOutcome::Applied(format!("settlement {id} pending")))
        }
        ("paid", "failed" | "canceled") => Ok(PayoutOutcome::Review(format!("payout {} paid after settlement {id} was {}", payout.id, row.status))),
        (status, _) => Ok(PayoutOutcome::Applied(format!("settlement {id} is {}; the payout is {status}", row.status))),
    }
}

/// Reads back from Stripe every payout still `pending` for longer than `age` and applies it: for a
/// missed or late event.
pub async fn refresh(rail: &CardRail, pool: &PgPool, ledger: &Ledger, age: Duration, now: DateTime<Utc>) -> Result<usize> {
    let open: Vec<String> =
        sqlx::query_scalar("SELECT stripe_payout_id FROM card_settlements WHERE status = 'pending' AND updated_at < $1 AND stripe_payout_id IS NOT NULL LIMIT 100")
            .bind(now - age)
            .fetch_all(pool)
            .await?;
    let mut changed = 0;
    for po in &open {
        let payout = rail.client.payout(po).await?;
        let mut tx = pool.begin().await?;
        if let PayoutOutcome::Applied(_) = apply(&mut tx, ledger, &payout, now).await? {
            changed += 1;
        }
        tx.commit().await?;
    }
    Ok(changed)
}

/// One settlement of `merchant_id`.
pub async fn get(pool: &PgPool, merchant_id: &str, id: &str) -> Result<CardSettlementView> {
    sqlx::query_as(&format!("SELECT {VIEW_COLUMNS} FROM card_settlements WHERE id = $1 AND merchant_id = $2"))
        .bind(id)
        .bind(merchant_id)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| StripeError::SettlementNotFound { id: id.to_owned() })
}

/// A page of `merchant_id`'s settlements, newest first, and whether more follow.
pub async fn list(pool: &PgPool, merchant_id: &str, page: &Page) -> Result<(Vec<CardSettlementView>, bool)> {
    const LIST: Listing = Listing {
        table: "card_settlements",
        columns: VIEW_COLUMNS,
        owner: "merchant_id",
        id: "id",
        order: Order("created_at DESC, id DESC"),
    };
    Ok(LIST.page(pool, merchant_id, page).await?)
}

async fn load(conn: &mut PgConnection, id: &str) -> Result<CardSettlementView> {
    sqlx::query_as(&format!("SELECT {VIEW_COLUMNS} FROM card_settlements WHERE id = $1"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StripeError::SettlementNotFound { id: id.to_owned() })
}

/// A settlement row as the state machine needs it.
struct Row {
    id: String,
    merchant_id: String,
    currency: String,
    amount: Amount,
    status: String,
    stripe_payout_id: Option<String>,
}

async fn lock_optional(tx: &mut PgConnection, id: &str) -> Result<Option<Row>> {
    let row: Option<(String, String, String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT id, merchant_id, currency, amount_minor::text, status, stripe_payout_id FROM card_settlements WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    row.map(|(id, merchant_id, currency, amount, status, stripe_payout_id)| {
        let amount = Amount::parse_decimal(&amount, 0).map_err(|_| StripeError::SettlementInvalid { reason: format!("stored amount {amount:?}") })?;
        Ok(Row { id, merchant_id, currency, amount, status, stripe_payout_id })
    })
    .transpose()
}

async fn lock(tx: &mut PgConnection, id: &str) -> Result<Row> {
    lock_optional(tx, id).await?.ok_or_else(|| StripeError::SettlementNotFound { id: id.to_owned() })
}

/// Returns the reservation of an unpaid settlement to the merchant and ends it as `status`.
async fn give_back(tx: &mut PgConnection, ledger: &Ledger, row: &Row, status: &str, message: &str, now: DateTime<Utc>) -> Result<()> {
    let fiat: Fiat = row.currency.parse().map_err(|_| StripeError::SettlementInvalid { reason: format!("stored currency {:?}", row.currency) })?;
    let asset = fiat.ledger_asset();
    let entry = NewEntry::new(format!("card_settlement_returned:{}", row.id), "card_settlement_returned")
        .memo(format!("card settlement {}: {message}", row.id))
        .debit(AccountCode::payouts_in_flight(), asset.as_str(), row.amount)
        .credit(AccountCode::merchant(&row.merchant_id), asset.as_str(), row.amount);
    ledger.post(&mut *tx, &entry).await?;
    let status = if status == "canceled" { "canceled" } else { "failed" };
    finish(tx, row, status, Some(message), now).await
}

/// Ends `row` as `status` and tells the merchant (`card_settlement.paid` or `.failed`).
async fn finish(tx: &mut PgConnection, row: &Row, status: &str, message: Option<&str>, now: DateTime<Utc>) -> Result<()> {
    sqlx::query("UPDATE card_settlements SET status = $2, failure_message = $3, updated_at = $4, finished_at = $4 WHERE id = $1")
        .bind(&row.id)
        .bind(status)
        .bind(message.map(|m| m.chars().take(500).collect::<String>()))
        .bind(now)
        .execute(&mut *tx)
        .await?;
    let view = load(&mut *tx, &row.id).await?;
    let event = if status == "paid" { "card_settlement.paid" } else { "card_settlement.failed" };
    payrail_payments::webhook::emit(&mut *tx, &row.merchant_id, event, &row.id, &view, now).await?;
    Ok(())
}
