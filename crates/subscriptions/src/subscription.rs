//! Subscriptions: started, cancelled, paused and resumed, and moved to another plan. Each change
//! is one transaction on the subscription's locked row, with its webhook event; what must happen
//! to invoices (voiding those a change made pointless) is returned for the caller, which owns them.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use payrail_store::page::{Order, Page};
use sqlx::{PgConnection, PgPool};

use payrail_core::subscription::{next_invoice, prorate, Carry, Event, SubscriptionStatus};
use payrail_credits::promo::{self, PromoView, Redeemed};
use payrail_store::outbox::emit;

use crate::error::{invalid, Result, SubscriptionsError};
use crate::ids::new_id;
use crate::money::Amount;
use crate::plan::{self, Version};

/// Body of `POST /v1/customers/{id}/subscriptions`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Subscribe {
    /// The plan, `plan_…`: its current version.
    pub plan: String,
    /// A code for `plans`: a percentage or amount off the first paid period, or more trial days.
    pub promo_code: Option<String>,
    /// `crypto` (the default): each period is an invoice the customer pays on any rail. `card`: the
    /// same invoices; the first paid by card keeps the card, and renewals are charged to it
    /// off-session.
    pub payment: Option<String>,
}

/// Body of `POST /v1/subscriptions/{id}/cancel`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Cancel {
    /// `true`: ends when the paid period ends; `false` (the default): ends now.
    #[serde(default)]
    pub at_period_end: bool,
}

/// Body of `POST /v1/subscriptions/{id}/change`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePlan {
    /// The new plan, `plan_…` (its current version).
    pub plan: String,
    /// `period_end` (the default): from the next period. `now`: at once, prorated on the next
    /// invoice (same currency only).
    pub at: Option<String>,
}

/// A subscription as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct SubscriptionView {
    /// `sub_…`
    pub id: String,
    #[sqlx(skip)]
    #[schema(value_type = String, example = "subscription")]
    pub object: &'static str,
    pub customer_id: String,
    pub plan_id: String,
    pub plan_version: i32,
    /// `incomplete`, `trialing`, `active`, `past_due`, `paused`, `canceled` or `expired`.
    pub status: String,
    /// `crypto` or `card`.
    pub payment: String,
    /// The current period's number (1 is the first, a trial's or the first paid one).
    pub period: i32,
    pub current_period_start: DateTime<Utc>,
    pub current_period_end: DateTime<Utc>,
    pub trial_end: Option<DateTime<Utc>>,
    pub cancel_at_period_end: bool,
    pub past_due_since: Option<DateTime<Utc>>,
    pub paused_at: Option<DateTime<Utc>>,
    /// The plan the next period is sold under, when a change waits for it.
    pub next_plan_id: Option<String>,
    /// The entitlements of the current plan version.
    pub entitlements: Vec<String>,
    /// The newest invoice asking for a period.
    pub latest_invoice: Option<String>,
    pub canceled_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

const VIEW_SQL: &str = "SELECT s.id, s.customer_id, s.plan_id, s.plan_version, s.status, s.payment, s.period, \
       s.period_start AS current_period_start, s.period_end AS current_period_end, s.trial_end, s.cancel_at_period_end, \
       s.past_due_since, s.paused_at, s.next_plan_id, pv.entitlements, \
       (SELECT si.invoice_id FROM subscription_invoices si WHERE si.subscription_id = s.id ORDER BY si.period DESC, si.attempt DESC LIMIT 1) AS latest_invoice, \
       s.canceled_at, s.ended_at, s.created_at \
     FROM subscriptions s JOIN plan_versions pv ON pv.plan_id = s.plan_id AND pv.version = s.plan_version";

fn finish(mut view: SubscriptionView) -> SubscriptionView {
    view.object = "subscription";
    view
}

/// The subscription `id` (of `merchant_id` when given).
pub async fn load(conn: &mut PgConnection, merchant_id: Option<&str>, id: &str) -> Result<SubscriptionView> {
    let view: Option<SubscriptionView> = sqlx::query_as(&format!("{VIEW_SQL} WHERE s.id = $1 AND ($2::text IS NULL OR s.merchant_id = $2)"))
        .bind(id)
        .bind(merchant_id)
        .fetch_optional(&mut *conn)
        .await?;
    view.map(finish).ok_or_else(|| SubscriptionsError::NotFound { what: "subscription", id: id.to_owned() })
}

pub async fn get(pool: &PgPool, merchant_id: &str, id: &str) -> Result<SubscriptionView> {
    load(&mut *pool.acquire().await?, Some(merchant_id), id).await
}

/// A page of a customer's subscriptions, newest first, and whether more follow.
pub async fn list_for_customer(pool: &PgPool, merchant_id: &str, customer_id: &str, page: &Page) -> Result<(Vec<SubscriptionView>, bool)> {
    const ORDER: Order = Order("s.seq DESC");
    let views: Vec<SubscriptionView> = sqlx::query_as(&format!(
        "{VIEW_SQL} WHERE s.customer_id = $1 AND s.merchant_id = $2 AND {} ORDER BY {} LIMIT $4",
        page.condition(ORDER, "SELECT seq FROM subscriptions WHERE id = $3 AND customer_id = $1"),
        page.order_by(ORDER),
    ))
    .bind(customer_id)
    .bind(merchant_id)
    .bind(page.cursor_id())
    .bind(page.fetch())
    .fetch_all(pool)
    .await?;
    let (views, has_more) = page.finish(views);
    Ok((views.into_iter().map(finish).collect(), has_more))
}

/// A subscription's row, locked for a change.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct Sub {
    pub(crate) id: String,
    pub(crate) merchant_id: String,
    pub(crate) customer_id: String,
    pub(crate) plan_id: String,
    pub(crate) plan_version: i32,
    pub(crate) status: String,
    pub(crate) anchor_at: DateTime<Utc>,
    pub(crate) anchor_period: i32,
    pub(crate) period: i32,
    pub(crate) period_start: DateTime<Utc>,
    pub(crate) period_end: DateTime<Utc>,
    pub(crate) cancel_at_period_end: bool,
    pub(crate) paused_left_s: Option<i64>,
    pub(crate) next_plan_id: Option<String>,
    pub(crate) next_plan_version: Option<i32>,
    pub(crate) carry_charge_minor: String,
    pub(crate) carry_credit_minor: String,
}

impl Sub {
    pub(crate) fn status(&self) -> Result<SubscriptionStatus> {
        SubscriptionStatus::parse(&self.status).ok_or_else(|| invalid("subscription", format!("stored status {:?}", self.status)))
    }

    pub(crate) fn carry(&self) -> Result<Carry> {
        let parse = |s: &str| Amount::parse_decimal(s, 0).map_err(|_| invalid("subscription", format!("stored carry {s:?}")));
        Ok(Carry { charge: parse(&self.carry_charge_minor)?, credit: parse(&self.carry_credit_minor)? })
    }
}

pub(crate) async fn lock(conn: &mut PgConnection, merchant_id: Option<&str>, id: &str) -> Result<Sub> {
    let sub: Option<Sub> = sqlx::query_as(
        "SELECT id, merchant_id, customer_id, plan_id, plan_version, status, anchor_at, anchor_period, period, period_start, period_end, \
                cancel_at_period_end, paused_left_s, next_plan_id, next_plan_version, \
                carry_charge_minor::text AS carry_charge_minor, carry_credit_minor::text AS carry_credit_minor \
         FROM subscriptions WHERE id = $1 AND ($2::text IS NULL OR merchant_id = $2) FOR UPDATE",
    )
    .bind(id)
    .bind(merchant_id)
    .fetch_optional(&mut *conn)
    .await?;
    sub.ok_or_else(|| SubscriptionsError::NotFound { what: "subscription", id: id.to_owned() })
}

pub(crate) async fn set_status(conn: &mut PgConnection, id: &str, status: SubscriptionStatus, now: DateTime<Utc>) -> Result<()> {
    sqlx::query("UPDATE subscriptions SET status = $2, updated_at = $3 WHERE id = $1").bind(id).bind(status.as_str()).bind(now).execute(&mut *conn).await?;
    Ok(())
}

/// Writes `subscription.{event}` with the subscription as it is now.
pub(crate) async fn announce(conn: &mut PgConnection, merchant_id: &str, id: &str, event: &str, now: DateTime<Utc>) -> Result<SubscriptionView> {
    let view = load(&mut *conn, None, id).await?;
    emit(&mut *conn, merchant_id, &format!("subscription.{event}"), id, &view, now).await?;
    Ok(view)
}

/// Writes a period's row: what it costs under `version`, less what `carry` holds for it. Returns
/// the carry left for the period after (a credit larger than this period's price).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn insert_period(
    conn: &mut PgConnection,
    sub_id: &str,
    period: i32,
    kind: &str,
    starts_at: DateTime<Utc>,
    ends_at: DateTime<Utc>,
    version: &Version,
    carry: Carry,
    now: DateTime<Utc>,
) -> Result<Carry> {
    let (amount, left) = if kind == "trial" { (Amount::ZERO, carry.credit) } else { next_invoice(version.price, carry) };
    let free = kind == "paid" && amount.is_zero();
    sqlx::query(
        "INSERT INTO subscription_periods (subscription_id, period, kind, starts_at, ends_at, plan_id, plan_version, amount_minor, currency, paid_at, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8::numeric, $9, $10, $11)",
    )
    .bind(sub_id)
    .bind(period)
    .bind(kind)
    .bind(starts_at)
    .bind(ends_at)
    .bind(&version.plan_id)
    .bind(version.version)
    .bind(amount.to_string())
    .bind(version.fiat.code())
    // A period whose credit covers it is paid as it is written.
    .bind(free.then_some(now))
    .bind(now)
    .execute(&mut *conn)
    .await?;
    let carry = if kind == "trial" { carry } else { Carry { charge: Amount::ZERO, credit: left } };
    sqlx::query("UPDATE subscriptions SET carry_charge_minor = $2::numeric, carry_credit_minor = $3::numeric WHERE id = $1")
        .bind(sub_id)
        .bind(carry.charge.to_string())
        .bind(carry.credit.to_string())
        .execute(&mut *conn)
        .await?;
    Ok(carry)
}

/// Checks a plan may be sold now and reads its current version.
async fn sellable(conn: &mut PgConnection, merchant_id: &str, plan_id: &str) -> Result<Version> {
    let row: Option<(i32, bool)> = sqlx::query_as("SELECT version, active FROM plans WHERE id = $1 AND merchant_id = $2")
        .bind(plan_id)
        .bind(merchant_id)
        .fetch_optional(&mut *conn)
        .await?;
    let (current, active) = row.ok_or_else(|| SubscriptionsError::NotFound { what: "plan", id: plan_id.to_owned() })?;
    if !active {
        return Err(SubscriptionsError::Refused(format!("plan {plan_id} is not sold any more")));
    }
    plan::version(&mut *conn, plan_id, current).await
}

/// Starts a subscription of `customer_id` to `request.plan`: a trial (the plan's days, plus a
/// promo code's), or its first period unpaid (`incomplete`) until its invoice is paid — the caller
/// bills it with [`crate::schedule::bills`]. A retry under the same `key` answers the same
/// subscription (`true`: it was made before).
pub async fn subscribe(pool: &PgPool, merchant_id: &str, customer_id: &str, request: &Subscribe, key: Option<&str>, now: DateTime<Utc>) -> Result<(SubscriptionView, bool)> {
    let payment = request.payment.as_deref().unwrap_or("crypto");
    if !["crypto", "card"].contains(&payment) {
        return Err(invalid("payment", "crypto or card"));
    }
    let mut tx = pool.begin().await?;
    payrail_credits::movement::lock_customers(&mut tx, merchant_id, &[customer_id]).await?;
    if let Some(key) = key {
        let done: Option<String> = sqlx::query_scalar("SELECT id FROM subscriptions WHERE merchant_id = $1 AND idempotency_key = $2")
            .bind(merchant_id)
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(id) = done {
            return Ok((load(&mut tx, Some(merchant_id), &id).await?, true));
        }
    }
    let version = sellable(&mut tx, merchant_id, &request.plan).await?;
    let promo: Option<PromoView> = match &request.promo_code {
        None => None,
        Some(code) => Some(promo::find_usable(pool, merchant_id, code, "plans", version.price, version.fiat, now).await?),
    };
    let mut trial_days = version.trial_days;
    let mut carry = Carry::default();
    if let Some(promo) = &promo {
        match promo.kind.as_str() {
            "trial_days" => trial_days = trial_days.saturating_add(promo.value.parse().map_err(|_| invalid("promo_code", "stored days"))?),
            "bonus_credits" => return Err(SubscriptionsError::Credits(payrail_credits::CreditsError::PromoRefused {
                code: promo.code.clone(),
                reason: "bonus credits apply to packs, not plans".to_owned(),
            })),
            _ => {
                let (_, discount, _) = promo::apply(promo, version.price, Amount::ZERO)?;
                carry.credit = discount;
            }
        }
    }
    let id = new_id("sub");
    let (status, trial_end, period_end, anchor_at, anchor_period) = if trial_days > 0 {
        let trial_end = now + Duration::days(i64::from(trial_days));
        (SubscriptionStatus::Trialing, Some(trial_end), trial_end, trial_end, 2)
    } else {
        let end = version.cadence.boundary(now, 1).map_err(|e| invalid("plan", e.to_string()))?;
        (SubscriptionStatus::Incomplete, None, end, now, 1)
    };
    sqlx::query(
        "INSERT INTO subscriptions (id, merchant_id, customer_id, plan_id, plan_version, status, payment, anchor_at, anchor_period, period, \
                                    period_start, period_end, trial_end, promo_id, idempotency_key, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 1, $10, $11, $12, $13, $14, $10, $10)",
    )
    .bind(&id)
    .bind(merchant_id)
    .bind(customer_id)
    .bind(&version.plan_id)
    .bind(version.version)
    .bind(status.as_str())
    .bind(payment)
    .bind(anchor_at)
    .bind(anchor_period)
    .bind(now)
    .bind(period_end)
    .bind(trial_end)
    .bind(promo.as_ref().map(|p| p.id.clone()))
    .bind(key)
    .execute(&mut *tx)
    .await?;
    let kind = if trial_end.is_some() { "trial" } else { "paid" };
    insert_period(&mut tx, &id, 1, kind, now, period_end, &version, carry, now).await?;
    if let Some(promo) = &promo {
        promo::redeem(&mut tx, promo, Some(customer_id), Redeemed::Subscription(&id), now).await?;
    }
    let view = announce(&mut tx, merchant_id, &id, "created", now).await?;
    tx.commit().await?;
    Ok((view, false))
}

/// The open invoices of periods not paid yet: to be voided when a change makes them pointless.
pub(crate) async fn unpaid_invoices(conn: &mut PgConnection, sub_id: &str) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT si.invoice_id FROM subscription_invoices si \
         JOIN subscription_periods p ON p.subscription_id = si.subscription_id AND p.period = si.period \
         JOIN invoices i ON i.id = si.invoice_id \
         WHERE si.subscription_id = $1 AND p.paid_at IS NULL AND i.status = 'open'",
    )
    .bind(sub_id)
    .fetch_all(&mut *conn)
    .await?)
}

/// What a change came to: the subscription, and invoices the caller voids.
#[derive(Debug, Clone)]
pub struct Changed {
    pub subscription: SubscriptionView,
    pub void_invoices: Vec<String>,
}

/// Cancels at once (status `canceled`, entitlements end now) or at the end of the paid period.
/// Invoices of periods not paid yet are to be voided: nothing further is asked of the customer.
pub async fn cancel(pool: &PgPool, merchant_id: &str, id: &str, request: &Cancel, now: DateTime<Utc>) -> Result<Changed> {
    let mut tx = pool.begin().await?;
    let sub = lock(&mut tx, Some(merchant_id), id).await?;
    let status = sub.status()?;
    let event = if request.at_period_end {
        if !matches!(status, SubscriptionStatus::Trialing | SubscriptionStatus::Active | SubscriptionStatus::PastDue) {
            return Err(SubscriptionsError::Refused(format!("a {status} subscription cannot be canceled at its period end")));
        }
        sqlx::query("UPDATE subscriptions SET cancel_at_period_end = true, canceled_at = $2, updated_at = $2 WHERE id = $1").bind(id).bind(now).execute(&mut *tx).await?;
        "updated"
    } else {
        let next = status.on(Event::Cancel)?;
        sqlx::query("UPDATE subscriptions SET status = $2, canceled_at = $3, ended_at = $3, updated_at = $3 WHERE id = $1")
            .bind(id)
            .bind(next.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        "canceled"
    };
    let void_invoices = unpaid_invoices(&mut tx, id).await?;
    let subscription = announce(&mut tx, merchant_id, id, event, now).await?;
    tx.commit().await?;
    Ok(Changed { subscription, void_invoices })
}

/// Pauses an active subscription: its entitlements stop, nothing is billed, and the paid time
/// left in the period is kept for [`resume`].
pub async fn pause(pool: &PgPool, merchant_id: &str, id: &str, now: DateTime<Utc>) -> Result<SubscriptionView> {
    let mut tx = pool.begin().await?;
    let sub = lock(&mut tx, Some(merchant_id), id).await?;
    let next = sub.status()?.on(Event::Pause)?;
    let left = (sub.period_end - now).num_seconds().max(0);
    sqlx::query("UPDATE subscriptions SET status = $2, paused_at = $3, paused_left_s = $4, updated_at = $3 WHERE id = $1")
        .bind(id)
        .bind(next.as_str())
        .bind(now)
        .bind(left)
        .execute(&mut *tx)
        .await?;
    let view = announce(&mut tx, merchant_id, id, "paused", now).await?;
    tx.commit().await?;
    Ok(view)
}

/// Resumes a paused subscription: the period goes on for the time it had left, and every later
/// boundary (and a next period already billed) moves by the time spent paused.
pub async fn resume(pool: &PgPool, merchant_id: &str, id: &str, now: DateTime<Utc>) -> Result<SubscriptionView> {
    let mut tx = pool.begin().await?;
    let sub = lock(&mut tx, Some(merchant_id), id).await?;
    let next = sub.status()?.on(Event::Resume)?;
    let left = Duration::seconds(sub.paused_left_s.unwrap_or(0));
    let shift = (now + left) - sub.period_end;
    sqlx::query(
        "UPDATE subscriptions SET status = $2, paused_at = NULL, paused_left_s = NULL, period_end = period_end + $3, \
                anchor_at = anchor_at + $3, updated_at = $4 WHERE id = $1",
    )
    .bind(id)
    .bind(next.as_str())
    .bind(shift)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE subscription_periods SET starts_at = starts_at + $3, ends_at = ends_at + $3 WHERE subscription_id = $1 AND period > $2")
        .bind(id)
        .bind(sub.period)
        .bind(shift)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE subscription_periods SET ends_at = ends_at + $3 WHERE subscription_id = $1 AND period = $2")
        .bind(id)
        .bind(sub.period)
        .bind(shift)
        .execute(&mut *tx)
        .await?;
    let view = announce(&mut tx, merchant_id, id, "resumed", now).await?;
    tx.commit().await?;
    Ok(view)
}

/// Moves a subscription to another plan (see [`payrail_core::subscription::proration`] for the
/// rule of a change `now`). A next period billed but not paid is billed again under the new plan:
/// its invoices are returned to be voided.
pub async fn change_plan(pool: &PgPool, merchant_id: &str, id: &str, request: &ChangePlan, now: DateTime<Utc>) -> Result<Changed> {
    let at_once = match request.at.as_deref().unwrap_or("period_end") {
        "period_end" => false,
        "now" => true,
        other => return Err(invalid("at", format!("{other:?}: period_end or now"))),
    };
    let mut tx = pool.begin().await?;
    let sub = lock(&mut tx, Some(merchant_id), id).await?;
    let status = sub.status()?;
    if !matches!(status, SubscriptionStatus::Trialing | SubscriptionStatus::Active | SubscriptionStatus::PastDue) {
        return Err(SubscriptionsError::Refused(format!("a {status} subscription cannot change plan")));
    }
    let new = sellable(&mut tx, merchant_id, &request.plan).await?;
    let old = plan::version(&mut tx, &sub.plan_id, sub.plan_version).await?;
    if (new.plan_id.as_str(), new.version) == (sub.plan_id.as_str(), sub.plan_version) {
        return Err(invalid("plan", "the subscription is on this plan's current version already"));
    }
    let mut carry = sub.carry()?;
    if at_once {
        if status == SubscriptionStatus::PastDue {
            return Err(SubscriptionsError::Refused("a past_due subscription changes plan at its period end".to_owned()));
        }
        if new.fiat != old.fiat {
            return Err(invalid("plan", format!("a change now keeps the currency ({}); change at period_end instead", old.fiat.code())));
        }
        if status == SubscriptionStatus::Active {
            carry = carry.with(prorate(old.price, new.price, sub.period_start, sub.period_end, now));
        }
        sqlx::query(
            "UPDATE subscriptions SET plan_id = $2, plan_version = $3, next_plan_id = NULL, next_plan_version = NULL, \
                    carry_charge_minor = $4::numeric, carry_credit_minor = $5::numeric, updated_at = $6 WHERE id = $1",
        )
        .bind(id)
        .bind(&new.plan_id)
        .bind(new.version)
        .bind(carry.charge.to_string())
        .bind(carry.credit.to_string())
        .bind(now)
        .execute(&mut *tx)
        .await?;
    } else {
        sqlx::query("UPDATE subscriptions SET next_plan_id = $2, next_plan_version = $3, updated_at = $4 WHERE id = $1")
            .bind(id)
            .bind(&new.plan_id)
            .bind(new.version)
            .bind(now)
            .execute(&mut *tx)
            .await?;
    }
    // Later periods follow the new plan's cadence from the current period's end.
    if new.cadence != old.cadence {
        sqlx::query("UPDATE subscriptions SET anchor_at = period_end, anchor_period = period + 1 WHERE id = $1").bind(id).execute(&mut *tx).await?;
    }
    // A next period billed and unpaid is billed again under the new terms.
    let void_invoices = unpaid_invoices(&mut tx, id).await?;
    let billed: Option<(DateTime<Utc>, Option<DateTime<Utc>>)> =
        sqlx::query_as("SELECT starts_at, paid_at FROM subscription_periods WHERE subscription_id = $1 AND period = $2")
            .bind(id)
            .bind(sub.period + 1)
            .fetch_optional(&mut *tx)
            .await?;
    if let Some((starts_at, None)) = billed {
        let anchor: (DateTime<Utc>, i32) = sqlx::query_as("SELECT anchor_at, anchor_period FROM subscriptions WHERE id = $1").bind(id).fetch_one(&mut *tx).await?;
        let k = u32::try_from(sub.period + 2 - anchor.1).unwrap_or(1);
        let ends_at = new.cadence.boundary(anchor.0, k).map_err(|e| invalid("plan", e.to_string()))?;
        let amount = next_invoice(new.price, carry).0;
        let left = carry.credit.saturating_sub(new.price.checked_add(carry.charge).unwrap_or(Amount::MAX));
        sqlx::query(
            "UPDATE subscription_periods SET plan_id = $3, plan_version = $4, amount_minor = $5::numeric, currency = $6, ends_at = $7, \
                    paid_at = CASE WHEN $5::numeric = 0 THEN $8 ELSE NULL END \
             WHERE subscription_id = $1 AND period = $2",
        )
        .bind(id)
        .bind(sub.period + 1)
        .bind(&new.plan_id)
        .bind(new.version)
        .bind(amount.to_string())
        .bind(new.fiat.code())
        .bind(ends_at.max(starts_at + Duration::seconds(1)))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE subscriptions SET next_plan_id = NULL, next_plan_version = NULL, carry_charge_minor = 0, carry_credit_minor = $2::numeric WHERE id = $1")
            .bind(id)
            .bind(left.to_string())
            .execute(&mut *tx)
            .await?;
    }
    let subscription = announce(&mut tx, merchant_id, id, "updated", now).await?;
    tx.commit().await?;
    Ok(Changed { subscription, void_invoices })
}

/// A subscription paid by card, as the card rail needs it for an invoice of one of its periods.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CardSubscription {
    pub subscription_id: String,
    pub customer_id: String,
    /// The card on file, once a card payment saved one.
    pub card_payment_method: Option<String>,
}

/// The card subscription `invoice_id` asks a period of, if it is one.
pub async fn card_subscription(conn: &mut PgConnection, invoice_id: &str) -> Result<Option<CardSubscription>> {
    Ok(sqlx::query_as(
        "SELECT s.id AS subscription_id, s.customer_id, s.card_payment_method FROM subscription_invoices si \
         JOIN subscriptions s ON s.id = si.subscription_id WHERE si.invoice_id = $1 AND s.payment = 'card'",
    )
    .bind(invoice_id)
    .fetch_optional(&mut *conn)
    .await?)
}

/// Keeps `payment_method` as the card on file of the card subscription `invoice_id` belongs to, in
/// the caller's transaction (the one that credits the card payment).
pub async fn remember_card(conn: &mut PgConnection, invoice_id: &str, payment_method: &str, now: DateTime<Utc>) -> Result<()> {
    sqlx::query(
        "UPDATE subscriptions s SET card_payment_method = $2, updated_at = $3 FROM subscription_invoices si \
         WHERE si.invoice_id = $1 AND s.id = si.subscription_id AND s.payment = 'card'",
    )
    .bind(invoice_id)
    .bind(payment_method)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// `subscription.payment_failed`: the card on file was declined for a period's invoice.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PaymentFailed {
    pub subscription: SubscriptionView,
    pub invoice_id: String,
    /// Stripe's decline code or error code.
    pub failure_code: Option<String>,
    pub failure_message: Option<String>,
}

/// The card on file was declined for `invoice_id`: a live subscription falls past due at once (its
/// grace runs from the period end), and the merchant is told; payrail emails nobody. The invoice
/// stays payable on every rail. Once per invoice: the decline Stripe answered and the
/// `payment_intent.payment_failed` it sends after are the same decline.
pub async fn payment_failed(pool: &PgPool, invoice_id: &str, failure_code: Option<&str>, failure_message: Option<&str>, now: DateTime<Utc>) -> Result<()> {
    let mut tx = pool.begin().await?;
    payment_failed_on(&mut tx, invoice_id, failure_code, failure_message, now).await?;
    tx.commit().await?;
    Ok(())
}

/// [`payment_failed`] on the caller's transaction.
pub async fn payment_failed_on(conn: &mut PgConnection, invoice_id: &str, failure_code: Option<&str>, failure_message: Option<&str>, now: DateTime<Utc>) -> Result<()> {
    let Some(card) = card_subscription(&mut *conn, invoice_id).await? else { return Ok(()) };
    let sub = lock(&mut *conn, None, &card.subscription_id).await?;
    let told: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM outbox WHERE object_id = $1 AND event_type = 'subscription.payment_failed' \
                        AND payload -> 'data' ->> 'invoice_id' = $2)",
    )
    .bind(&sub.id)
    .bind(invoice_id)
    .fetch_one(&mut *conn)
    .await?;
    if told {
        return Ok(());
    }
    if matches!(sub.status()?, SubscriptionStatus::Trialing | SubscriptionStatus::Active) {
        sqlx::query("UPDATE subscriptions SET status = 'past_due', past_due_since = $2, updated_at = $2 WHERE id = $1").bind(&sub.id).bind(now).execute(&mut *conn).await?;
    }
    let failed = PaymentFailed {
        subscription: load(&mut *conn, None, &sub.id).await?,
        invoice_id: invoice_id.to_owned(),
        failure_code: failure_code.map(str::to_owned),
        failure_message: failure_message.map(str::to_owned),
    };
    emit(&mut *conn, &sub.merchant_id, "subscription.payment_failed", &sub.id, &failed, now).await?;
    Ok(())
}
