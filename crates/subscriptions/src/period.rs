//! Periods paid and begun: the invoice store's hook, and the step from one period to the next.

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::PgConnection;

use payrail_core::subscription::{Event, SubscriptionStatus};
use payrail_credits::movement::{grant_lot, LotGrant};
use payrail_store::ledger::Ledger;

use crate::error::Result;
use crate::plan;
use crate::subscription::{announce, lock, set_status, Sub};

/// A period's row as read to begin it.
#[derive(Debug, Clone, sqlx::FromRow)]
struct PeriodRow {
    period: i32,
    starts_at: DateTime<Utc>,
    ends_at: DateTime<Utc>,
    plan_id: String,
    plan_version: i32,
    paid_at: Option<DateTime<Utc>>,
    credits_granted: bool,
}

async fn period_row(conn: &mut PgConnection, sub_id: &str, period: i32) -> Result<Option<PeriodRow>> {
    Ok(sqlx::query_as(
        "SELECT period, starts_at, ends_at, plan_id, plan_version, paid_at, credits_granted FROM subscription_periods \
         WHERE subscription_id = $1 AND period = $2",
    )
    .bind(sub_id)
    .bind(period)
    .fetch_optional(&mut *conn)
    .await?)
}

/// Grants a paid period's credits, once (the period's row says whether it was done; the grant's
/// key is the period's).
async fn grant_credits(conn: &mut PgConnection, ledger: &Ledger, sub: &Sub, row: &PeriodRow, now: DateTime<Utc>) -> Result<()> {
    if row.credits_granted || row.paid_at.is_none() {
        return Ok(());
    }
    let version = plan::version(&mut *conn, &row.plan_id, row.plan_version).await?;
    if let Some((currency, amount, expire)) = &version.credits {
        let key = format!("subscription:{}:{}", sub.id, row.period);
        let grant = LotGrant {
            merchant_id: &sub.merchant_id,
            customer_id: &sub.customer_id,
            currency,
            amount: *amount,
            source: "subscription",
            expires_at: expire.then_some(row.ends_at),
            key: &key,
            resource: Some(&sub.id),
            description: None,
            detail: json!({ "subscription": sub.id, "period": row.period, "plan": row.plan_id }),
            funded_by: payrail_core::ledger::AccountCode::credits_issued(&sub.merchant_id),
        };
        grant_lot(&mut *conn, ledger, &grant, now).await?;
    }
    sqlx::query("UPDATE subscription_periods SET credits_granted = true WHERE subscription_id = $1 AND period = $2")
        .bind(&sub.id)
        .bind(row.period)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Begins the period after the current one, which is paid: the subscription moves onto it (and onto
/// its plan), becomes active, and the period's credits are granted. The new period starts where the
/// old one ended, whenever it was paid.
pub(crate) async fn advance(conn: &mut PgConnection, ledger: &Ledger, sub: &Sub, now: DateTime<Utc>) -> Result<bool> {
    let Some(next) = period_row(&mut *conn, &sub.id, sub.period + 1).await? else { return Ok(false) };
    if next.paid_at.is_none() {
        return Ok(false);
    }
    let status = sub.status()?.on(Event::Paid)?;
    let clears_change = sub.next_plan_id.as_deref() == Some(next.plan_id.as_str()) && sub.next_plan_version == Some(next.plan_version);
    sqlx::query(
        "UPDATE subscriptions SET period = $2, period_start = $3, period_end = $4, plan_id = $5, plan_version = $6, status = $7, \
                past_due_since = NULL, updated_at = $8, \
                next_plan_id = CASE WHEN $9 THEN NULL ELSE next_plan_id END, next_plan_version = CASE WHEN $9 THEN NULL ELSE next_plan_version END \
         WHERE id = $1",
    )
    .bind(&sub.id)
    .bind(next.period)
    .bind(next.starts_at)
    .bind(next.ends_at)
    .bind(&next.plan_id)
    .bind(next.plan_version)
    .bind(status.as_str())
    .bind(now)
    .bind(clears_change)
    .execute(&mut *conn)
    .await?;
    grant_credits(&mut *conn, ledger, sub, &next, now).await?;
    announce(&mut *conn, &sub.merchant_id, &sub.id, "renewed", now).await?;
    Ok(true)
}

/// [`on_invoice_status`] for the invoices a payment step moved into (`true`) or out of paid: one
/// query finds those that pay a subscription's period, and only they are handled.
pub async fn on_invoice_statuses(tx: &mut PgConnection, ledger: &Ledger, moved: &[(&str, bool)], now: DateTime<Utc>) -> Result<()> {
    for (id, paid) in payrail_store::invoice_links::linked(&mut *tx, "subscription_invoices", moved).await? {
        on_invoice_status(&mut *tx, ledger, id, paid, now).await?;
    }
    Ok(())
}

/// Called by the invoice store, on the transaction that moves invoice `invoice_id` into or out of
/// a paid status (`paid`). An invoice of a subscription's period marks the period paid: the first
/// period's activates the subscription; a renewal paid after its period began (past due) begins it
/// now; one paid early waits for the period end. A period's payment taken back (a reorg, an
/// invalidation) unmarks it, and a subscription living on it falls past due; credits granted stay.
pub async fn on_invoice_status(tx: &mut PgConnection, ledger: &Ledger, invoice_id: &str, paid: bool, now: DateTime<Utc>) -> Result<()> {
    let link: Option<(String, i32)> = sqlx::query_as("SELECT subscription_id, period FROM subscription_invoices WHERE invoice_id = $1")
        .bind(invoice_id)
        .fetch_optional(&mut *tx)
        .await?;
    let Some((sub_id, period)) = link else { return Ok(()) };
    let sub = lock(&mut *tx, None, &sub_id).await?;
    let status = sub.status()?;
    if !paid {
        sqlx::query("UPDATE subscription_periods SET paid_at = NULL WHERE subscription_id = $1 AND period = $2").bind(&sub_id).bind(period).execute(&mut *tx).await?;
        if period == sub.period && status == SubscriptionStatus::Active {
            sqlx::query("UPDATE subscriptions SET status = 'past_due', past_due_since = $2, updated_at = $2 WHERE id = $1").bind(&sub_id).bind(now).execute(&mut *tx).await?;
            announce(&mut *tx, &sub.merchant_id, &sub_id, "past_due", now).await?;
        }
        return Ok(());
    }
    sqlx::query("UPDATE subscription_periods SET paid_at = coalesce(paid_at, $3) WHERE subscription_id = $1 AND period = $2")
        .bind(&sub_id)
        .bind(period)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    if status.is_final() {
        tracing::warn!(target: "subscriptions", subscription = %sub_id, invoice = %invoice_id, %status, "a period of an ended subscription was paid; refund it");
        return Ok(());
    }
    if period == sub.period && status == SubscriptionStatus::Incomplete {
        set_status(&mut *tx, &sub_id, status.on(Event::Paid)?, now).await?;
        if let Some(row) = period_row(&mut *tx, &sub_id, period).await? {
            grant_credits(&mut *tx, ledger, &sub, &row, now).await?;
        }
        announce(&mut *tx, &sub.merchant_id, &sub_id, "activated", now).await?;
    } else if period == sub.period + 1 && sub.period_end <= now && status != SubscriptionStatus::Paused {
        advance(&mut *tx, ledger, &sub, now).await?;
    }
    Ok(())
}
