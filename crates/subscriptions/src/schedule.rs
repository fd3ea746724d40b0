//! The scheduler's passes: subscriptions moved through time, the next periods written, and the
//! periods that need an invoice listed (the payments layer makes each invoice and attaches it with
//! [`attach`]). Every step locks the subscription's row and re-reads it, so a pass run twice at once
//! (two replicas, a restart in the middle) does each thing once; the lock the daemon's scheduler
//! holds only saves the duplicated work.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use payrail_core::subscription::{Event, SubscriptionStatus};
use payrail_store::ledger::Ledger;
use payrail_store::outbox::emit;

use crate::error::{invalid, Result};
use crate::money::Amount;
use crate::period::{advance, on_invoice_status};
use crate::plan;
use crate::subscription::{announce, insert_period, load, lock, unpaid_invoices, SubscriptionView};

/// Subscriptions handled per step of a pass.
pub const BATCH: i64 = 200;

/// Invoice statuses that no longer ask for money: a period whose invoices are all in them needs a
/// new one.
const DEAD_INVOICE: &str = "('expired', 'void', 'invalid', 'refunded')";

/// A period to invoice.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Bill {
    pub subscription_id: String,
    pub merchant_id: String,
    pub customer_id: String,
    pub plan_id: String,
    pub period: i32,
    /// 1 for the period's first invoice; more when earlier ones expired unpaid.
    pub attempt: i32,
    pub amount_minor: String,
    pub currency: String,
    pub payment: String,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    /// Until when the invoice may be paid: the end of the grace after the period before it.
    pub pay_by: DateTime<Utc>,
}

impl Bill {
    pub fn amount(&self) -> Result<Amount> {
        Amount::parse_decimal(&self.amount_minor, 0).map_err(|_| invalid("period", format!("stored amount {:?}", self.amount_minor)))
    }

    /// The invoice's idempotency key: one invoice per attempt at a period, however often asked.
    pub fn invoice_key(&self) -> String {
        format!("subscription:{}:{}:{}", self.subscription_id, self.period, self.attempt)
    }
}

/// What a pass left for the payments layer.
#[derive(Debug, Clone, Default)]
pub struct Pass {
    /// Invoices (merchant, invoice) of periods nobody will pay now: to be voided.
    pub void_invoices: Vec<(String, String)>,
    /// Subscriptions that changed status.
    pub moved: usize,
    /// Next periods written.
    pub periods: usize,
}

/// One pass: subscriptions whose period ended moved on (renewed, past due, canceled, expired), and
/// next periods written for those whose renewal is due.
pub async fn pass(pool: &PgPool, ledger: &Ledger, now: DateTime<Utc>) -> Result<Pass> {
    let mut done = Pass::default();
    advance_due(pool, ledger, now, &mut done).await?;
    write_next_periods(pool, now, &mut done).await?;
    Ok(done)
}

async fn advance_due(pool: &PgPool, ledger: &Ledger, now: DateTime<Utc>, done: &mut Pass) -> Result<()> {
    // Only subscriptions with something to do now: one past due waits out its grace unless its
    // next period was paid, so a crowd of those never hides the rest from a pass.
    let due: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT s.id FROM subscriptions s JOIN plan_versions pv ON pv.plan_id = s.plan_id AND pv.version = s.plan_version \
         WHERE (s.status IN ('trialing', 'active') AND s.period_end <= $1) \
            OR (s.status = 'past_due' AND s.period_end <= $1 \
                AND (s.period_end + make_interval(days => pv.grace_days) <= $1 \
                     OR EXISTS (SELECT 1 FROM subscription_periods p WHERE p.subscription_id = s.id AND p.period = s.period + 1 \
                                AND p.paid_at IS NOT NULL))) \
            OR (s.status = 'incomplete' AND (s.period_end <= $1 \
                OR (EXISTS (SELECT 1 FROM subscription_invoices si WHERE si.subscription_id = s.id) \
                    AND NOT EXISTS (SELECT 1 FROM subscription_invoices si JOIN invoices i ON i.id = si.invoice_id \
                                    WHERE si.subscription_id = s.id AND i.status NOT IN {DEAD_INVOICE})))) \
         ORDER BY s.period_end LIMIT $2"
    ))
    .bind(now)
    .bind(BATCH)
    .fetch_all(pool)
    .await?;
    for id in due {
        let mut tx = pool.begin().await?;
        let moved = move_on(&mut tx, ledger, &id, now, done).await?;
        tx.commit().await?;
        if moved {
            done.moved += 1;
        }
    }
    Ok(())
}

/// Moves one subscription past the end of its period, as far as `now`.
async fn move_on(tx: &mut PgConnection, ledger: &Ledger, id: &str, now: DateTime<Utc>, done: &mut Pass) -> Result<bool> {
    let mut moved = false;
    // Each round either ends the subscription, makes it past due, or moves it one period on.
    for _ in 0..1_000 {
        let sub = lock(&mut *tx, None, id).await?;
        let status = sub.status()?;
        let ended = sub.period_end <= now;
        let (next, ends_at, event) = match status {
            SubscriptionStatus::Incomplete => (status.on(Event::FirstUnpaid)?, Some(sub.period_end.min(now)), "expired"),
            SubscriptionStatus::Trialing | SubscriptionStatus::Active if ended => {
                if advance(&mut *tx, ledger, &sub, now).await? {
                    moved = true;
                    continue;
                }
                if sub.cancel_at_period_end {
                    (status.on(Event::Cancel)?, Some(sub.period_end), "canceled")
                } else {
                    (status.on(Event::PeriodEndedUnpaid)?, None, "past_due")
                }
            }
            SubscriptionStatus::PastDue if ended => {
                if advance(&mut *tx, ledger, &sub, now).await? {
                    moved = true;
                    continue;
                }
                let version = plan::version(&mut *tx, &sub.plan_id, sub.plan_version).await?;
                if now < sub.period_end + version.grace() {
                    return Ok(moved);
                }
                (status.on(Event::GraceEnded)?, Some(now), "canceled")
            }
            _ => return Ok(moved),
        };
        sqlx::query(
            "UPDATE subscriptions SET status = $2, ended_at = $3, updated_at = $4, \
                    past_due_since = CASE WHEN $2 = 'past_due' THEN period_end ELSE past_due_since END WHERE id = $1",
        )
        .bind(id)
        .bind(next.as_str())
        .bind(ends_at)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if next.is_final() {
            for invoice in unpaid_invoices(&mut *tx, id).await? {
                done.void_invoices.push((sub.merchant_id.clone(), invoice));
            }
        }
        announce(&mut *tx, &sub.merchant_id, id, event, now).await?;
        return Ok(true);
    }
    Ok(moved)
}

async fn write_next_periods(pool: &PgPool, now: DateTime<Utc>, done: &mut Pass) -> Result<()> {
    let due: Vec<String> = sqlx::query_scalar(
        "SELECT s.id FROM subscriptions s JOIN plan_versions pv ON pv.plan_id = s.plan_id AND pv.version = s.plan_version \
         WHERE s.status IN ('trialing', 'active', 'past_due') AND NOT s.cancel_at_period_end \
           AND s.period_end - make_interval(secs => pv.renewal_lead_s) <= $1 \
           AND NOT EXISTS (SELECT 1 FROM subscription_periods p WHERE p.subscription_id = s.id AND p.period = s.period + 1) \
         ORDER BY s.period_end LIMIT $2",
    )
    .bind(now)
    .bind(BATCH)
    .fetch_all(pool)
    .await?;
    for id in due {
        let mut tx = pool.begin().await?;
        let sub = lock(&mut tx, None, &id).await?;
        let written: Option<i32> = sqlx::query_scalar("SELECT period FROM subscription_periods WHERE subscription_id = $1 AND period = $2")
            .bind(&id)
            .bind(sub.period + 1)
            .fetch_optional(&mut *tx)
            .await?;
        // Past due too: a period paid late may have begun after its own end, and the one after it
        // is then due at once.
        let live = matches!(sub.status()?, SubscriptionStatus::Trialing | SubscriptionStatus::Active | SubscriptionStatus::PastDue);
        if written.is_some() || !live || sub.cancel_at_period_end {
            continue;
        }
        let version = match (&sub.next_plan_id, sub.next_plan_version) {
            (Some(plan_id), Some(v)) => plan::version(&mut tx, plan_id, v).await?,
            _ => plan::version(&mut tx, &sub.plan_id, sub.plan_version).await?,
        };
        let k = u32::try_from(sub.period + 2 - sub.anchor_period).map_err(|_| invalid("subscription", "anchor after the period"))?;
        let ends_at = version.cadence.boundary(sub.anchor_at, k).map_err(|e| invalid("plan", e.to_string()))?;
        let ends_at = ends_at.max(sub.period_end + Duration::seconds(1));
        insert_period(&mut tx, &id, sub.period + 1, "paid", sub.period_end, ends_at, &version, sub.carry()?, now).await?;
        tx.commit().await?;
        done.periods += 1;
    }
    Ok(())
}

/// Periods that need an invoice now (of `subscription_id` only, when given): unpaid, not free, of a
/// live subscription, with no invoice still asking for them, and still payable. The first period
/// of a subscription is invoiced once: if that invoice lapses, the subscription expires.
pub async fn bills(pool: &PgPool, subscription_id: Option<&str>, now: DateTime<Utc>) -> Result<Vec<Bill>> {
    Ok(sqlx::query_as(&format!(
        "SELECT s.id AS subscription_id, s.merchant_id, s.customer_id, p.plan_id, p.period, \
                (SELECT count(*)::int + 1 FROM subscription_invoices si WHERE si.subscription_id = s.id AND si.period = p.period) AS attempt, \
                p.amount_minor::text AS amount_minor, p.currency, s.payment, p.starts_at, p.ends_at, \
                CASE WHEN p.period = s.period THEN s.period_end ELSE s.period_end + make_interval(days => pv.grace_days) END AS pay_by \
         FROM subscription_periods p JOIN subscriptions s ON s.id = p.subscription_id \
         JOIN plan_versions pv ON pv.plan_id = s.plan_id AND pv.version = s.plan_version \
         WHERE p.kind = 'paid' AND p.paid_at IS NULL AND p.amount_minor > 0 AND ($1::text IS NULL OR s.id = $1) \
           AND s.status IN ('incomplete', 'trialing', 'active', 'past_due') \
           AND p.period BETWEEN s.period AND s.period + 1 \
           AND NOT (s.status = 'incomplete' AND EXISTS (SELECT 1 FROM subscription_invoices si WHERE si.subscription_id = s.id AND si.period = p.period)) \
           AND NOT EXISTS (SELECT 1 FROM subscription_invoices si JOIN invoices i ON i.id = si.invoice_id \
                           WHERE si.subscription_id = s.id AND si.period = p.period AND i.status NOT IN {DEAD_INVOICE}) \
           AND (CASE WHEN p.period = s.period THEN s.period_end ELSE s.period_end + make_interval(days => pv.grace_days) END) > $2 \
         ORDER BY p.starts_at LIMIT $3"
    ))
    .bind(subscription_id)
    .bind(now)
    .bind(BATCH)
    .fetch_all(pool)
    .await?)
}

/// `subscription.renewal_due`: a period's invoice is ready to be paid.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RenewalDue {
    pub subscription: SubscriptionView,
    pub period: i32,
    pub invoice_id: String,
    /// Where the customer pays it, when the daemon has a public URL.
    pub checkout_url: Option<String>,
    pub amount_minor: String,
    pub currency: String,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
}

/// Records that `invoice_id` asks for `bill`'s period (once per attempt), and announces it: the
/// first period's invoice comes with `subscription.created`; later ones as
/// `subscription.renewal_due`. An invoice paid before it was attached counts at once.
pub async fn attach(pool: &PgPool, ledger: &Ledger, bill: &Bill, invoice_id: &str, checkout_url: Option<String>, now: DateTime<Utc>) -> Result<()> {
    let mut tx = pool.begin().await?;
    let _sub = lock(&mut tx, None, &bill.subscription_id).await?;
    let inserted = sqlx::query(
        "INSERT INTO subscription_invoices (invoice_id, subscription_id, period, attempt, created_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT DO NOTHING",
    )
    .bind(invoice_id)
    .bind(&bill.subscription_id)
    .bind(bill.period)
    .bind(bill.attempt)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 1 {
        let status: String = sqlx::query_scalar("SELECT status FROM invoices WHERE id = $1").bind(invoice_id).fetch_one(&mut *tx).await?;
        if status == "paid" || status == "overpaid" {
            on_invoice_status(&mut tx, ledger, invoice_id, true, now).await?;
        }
        if bill.period > 1 || bill.attempt > 1 {
            let subscription = load(&mut tx, None, &bill.subscription_id).await?;
            let due = RenewalDue {
                subscription,
                period: bill.period,
                invoice_id: invoice_id.to_owned(),
                checkout_url,
                amount_minor: bill.amount_minor.clone(),
                currency: bill.currency.clone(),
                period_start: bill.starts_at,
                period_end: bill.ends_at,
            };
            emit(&mut tx, &bill.merchant_id, "subscription.renewal_due", &bill.subscription_id, &due, now).await?;
        }
    }
    tx.commit().await?;
    Ok(())
}
