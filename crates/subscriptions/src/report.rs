//! Reports: subscriptions per plan (MRR, counts, revenue) and sales per kind of product.
//!
//! MRR at a moment is what the subscriptions in a paid period then bring in a month: each period's
//! price scaled to a month (a year's twelfth, a week's 52/12, a day's 365/12, divided by the
//! interval count), rounded down per plan version. A subscription in trial or past due brings
//! nothing until it is paid.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use payrail_core::money::{mul_div, Rounding};
use payrail_core::subscription::Interval;

use crate::error::{invalid, Result};
use crate::money::Amount;

/// One plan's line of `GET /v1/reports/subscriptions`, in one currency.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PlanLine {
    pub plan_id: String,
    pub plan_name: String,
    pub currency: String,
    /// Monthly recurring revenue at `to`, in the currency's minor units.
    pub mrr_minor: String,
    /// Subscriptions in a paid period at `to`.
    pub active: i64,
    /// Subscriptions in their trial at `to`.
    pub trialing: i64,
    /// Subscriptions started in the range.
    pub new: i64,
    /// Subscriptions canceled in the range.
    pub churned: i64,
    /// Subscriptions past due now.
    pub past_due: i64,
    /// What periods paid in the range brought, in minor units.
    pub revenue_minor: String,
}

/// One kind's line of `GET /v1/reports/sales`, in one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct SalesLine {
    /// `packs`, `plans`, `invoices` (everything else invoiced) or `unlocks` (in credits: `currency`
    /// is the credit currency's code).
    pub kind: String,
    pub currency: String,
    /// Before discounts, in minor units.
    pub gross_minor: String,
    /// Promo codes and credits for plan changes.
    pub discounts_minor: String,
    pub refunds_minor: String,
    /// Gross less discounts and refunds.
    pub net_minor: String,
}

/// A report's line as a CSV record, under the report's header.
pub trait CsvLine {
    const HEADER: &'static [&'static str];
    fn record(&self) -> Vec<String>;
}

impl CsvLine for PlanLine {
    const HEADER: &'static [&'static str] = &["plan_id", "plan_name", "currency", "mrr_minor", "active", "trialing", "new", "churned", "past_due", "revenue_minor"];
    fn record(&self) -> Vec<String> {
        let mut record = vec![self.plan_id.clone(), self.plan_name.clone(), self.currency.clone(), self.mrr_minor.clone()];
        record.extend([self.active, self.trialing, self.new, self.churned, self.past_due].map(|n| n.to_string()));
        record.push(self.revenue_minor.clone());
        record
    }
}

impl CsvLine for SalesLine {
    const HEADER: &'static [&'static str] = &["kind", "currency", "gross_minor", "discounts_minor", "refunds_minor", "net_minor"];
    fn record(&self) -> Vec<String> {
        [&self.kind, &self.currency, &self.gross_minor, &self.discounts_minor, &self.refunds_minor, &self.net_minor].map(String::clone).to_vec()
    }
}

/// The fraction of a month one period is: (numerator, denominator).
fn months_per_period(interval: Interval, count: u32) -> (u64, u64) {
    let count = u64::from(count.max(1));
    match interval {
        Interval::Month => (1, count),
        Interval::Year => (1, 12 * count),
        Interval::Week => (52, 12 * count),
        Interval::Day => (365, 12 * count),
    }
}

fn amount(text: &str) -> Result<Amount> {
    Amount::parse_decimal(text, 0).map_err(|_| invalid("report", format!("stored amount {text:?}")))
}

type Key = (String, String);
type Lines = BTreeMap<Key, (PlanLine, Amount, Amount)>;

/// The line of `plan` in `currency` (its current one when `None`), made on first use: the line,
/// its MRR and its revenue.
fn line<'a>(lines: &'a mut Lines, names: &BTreeMap<String, (String, String)>, plan: &str, currency: Option<&str>) -> &'a mut (PlanLine, Amount, Amount) {
    let (name, current) = names.get(plan).cloned().unwrap_or_default();
    let key = (plan.to_owned(), currency.map_or(current, str::to_owned));
    lines.entry(key.clone()).or_insert_with(|| (PlanLine { plan_id: key.0, plan_name: name, currency: key.1, ..PlanLine::default() }, Amount::ZERO, Amount::ZERO))
}

/// Subscriptions per plan and currency over `[from, to)`.
pub async fn subscriptions(pool: &PgPool, merchant_id: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> Result<Vec<PlanLine>> {
    if from >= to {
        return Err(invalid("from", "must be before to"));
    }
    let mut lines: Lines = BTreeMap::new();
    let names: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT pl.id, pl.name, pv.currency FROM plans pl JOIN plan_versions pv ON pv.plan_id = pl.id AND pv.version = pl.version WHERE pl.merchant_id = $1",
    )
    .bind(merchant_id)
    .fetch_all(pool)
    .await?;
    let names: BTreeMap<String, (String, String)> = names.into_iter().map(|(id, name, currency)| (id, (name, currency))).collect();
    // In a paid period at `to`: active, and their MRR.
    let paid: Vec<(String, String, String, String, i32, i64)> = sqlx::query_as(
        "SELECT p.plan_id, pv.currency, pv.price_minor::text, pv.interval, pv.interval_count, count(*) \
         FROM subscription_periods p JOIN subscriptions s ON s.id = p.subscription_id \
         JOIN plan_versions pv ON pv.plan_id = p.plan_id AND pv.version = p.plan_version \
         WHERE s.merchant_id = $1 AND p.kind = 'paid' AND p.paid_at IS NOT NULL AND p.starts_at <= $2 AND p.ends_at > $2 \
           AND (s.ended_at IS NULL OR s.ended_at > $2) \
         GROUP BY 1, 2, 3, 4, 5",
    )
    .bind(merchant_id)
    .bind(to)
    .fetch_all(pool)
    .await?;
    for (plan, currency, price, interval, count, n) in paid {
        let interval = Interval::parse(&interval).ok_or_else(|| invalid("report", "stored interval"))?;
        let (num, den) = months_per_period(interval, u32::try_from(count).unwrap_or(1));
        let total = amount(&price)?.checked_mul_u64(u64::try_from(n).unwrap_or(0)).and_then(|t| t.checked_mul_u64(num)).unwrap_or(Amount::MAX);
        let mrr = mul_div(total, Amount::from_u64(1), Amount::from_u64(den), Rounding::Down).unwrap_or(Amount::MAX);
        let (l, m, _) = line(&mut lines, &names, &plan, Some(&currency));
        *m = m.checked_add(mrr).unwrap_or(Amount::MAX);
        l.active += n;
    }
    // The counts by plan.
    let counts: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT s.plan_id, \
                count(*) FILTER (WHERE EXISTS (SELECT 1 FROM subscription_periods p WHERE p.subscription_id = s.id AND p.kind = 'trial' \
                                               AND p.starts_at <= $3 AND p.ends_at > $3) AND (s.ended_at IS NULL OR s.ended_at > $3)), \
                count(*) FILTER (WHERE s.created_at >= $2 AND s.created_at < $3), \
                count(*) FILTER (WHERE s.status = 'canceled' AND s.ended_at >= $2 AND s.ended_at < $3), \
                count(*) FILTER (WHERE s.status = 'past_due') \
         FROM subscriptions s WHERE s.merchant_id = $1 GROUP BY 1",
    )
    .bind(merchant_id)
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await?;
    for (plan, trialing, new, churned, past_due) in counts {
        let (l, _, _) = line(&mut lines, &names, &plan, None);
        (l.trialing, l.new, l.churned, l.past_due) = (trialing, new, churned, past_due);
    }
    let revenue: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT p.plan_id, p.currency, sum(p.amount_minor)::text FROM subscription_periods p JOIN subscriptions s ON s.id = p.subscription_id \
         WHERE s.merchant_id = $1 AND p.paid_at >= $2 AND p.paid_at < $3 GROUP BY 1, 2",
    )
    .bind(merchant_id)
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await?;
    for (plan, currency, sum) in revenue {
        let (_, _, r) = line(&mut lines, &names, &plan, Some(&currency));
        *r = r.checked_add(amount(&sum)?).unwrap_or(Amount::MAX);
    }
    Ok(lines
        .into_values()
        .map(|(mut l, mrr, revenue)| {
            l.mrr_minor = mrr.to_string();
            l.revenue_minor = revenue.to_string();
            l
        })
        .collect())
}

/// Sales over `[from, to)` per kind of product and currency: invoices paid in the range (packs,
/// plans, the rest), refunds made in the range of any invoice, unlocks made in the range.
pub async fn sales(pool: &PgPool, merchant_id: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> Result<Vec<SalesLine>> {
    if from >= to {
        return Err(invalid("from", "must be before to"));
    }
    Ok(sqlx::query_as(
        "WITH inv AS ( \
           SELECT i.id, i.currency, i.amount_minor, i.paid_at, i.status, \
                  CASE WHEN cp.id IS NOT NULL THEN 'packs' WHEN si.invoice_id IS NOT NULL THEN 'plans' ELSE 'invoices' END AS kind, \
                  CASE WHEN cp.id IS NOT NULL THEN cp.discount_minor \
                       WHEN si.invoice_id IS NOT NULL THEN greatest(pv.price_minor - i.amount_minor, 0) \
                       ELSE i.discount_minor END AS discount \
           FROM invoices i \
           LEFT JOIN credit_purchases cp ON cp.invoice_id = i.id \
           LEFT JOIN subscription_invoices si ON si.invoice_id = i.id \
           LEFT JOIN subscription_periods sp ON sp.subscription_id = si.subscription_id AND sp.period = si.period \
           LEFT JOIN plan_versions pv ON pv.plan_id = sp.plan_id AND pv.version = sp.plan_version \
           WHERE i.merchant_id = $1), \
         sold AS ( \
           SELECT kind, currency, sum(amount_minor + discount) AS gross, sum(discount) AS discounts FROM inv \
           WHERE status IN ('paid', 'overpaid', 'refunded') AND paid_at >= $2 AND paid_at < $3 GROUP BY 1, 2), \
         back AS ( \
           SELECT inv.kind, inv.currency, sum(r.amount) AS refunds FROM inv JOIN ( \
               SELECT invoice_id, amount_minor AS amount, created_at FROM card_refunds WHERE status = 'succeeded' \
               UNION ALL SELECT invoice_id, value_minor, created_at FROM crypto_refunds WHERE status = 'paid') r ON r.invoice_id = inv.id \
           WHERE r.created_at >= $2 AND r.created_at < $3 GROUP BY 1, 2), \
         money AS ( \
           SELECT coalesce(s.kind, b.kind) AS kind, coalesce(s.currency, b.currency) AS currency, \
                  coalesce(s.gross, 0) AS gross, coalesce(s.discounts, 0) AS discounts, coalesce(b.refunds, 0) AS refunds \
           FROM sold s FULL JOIN back b ON b.kind = s.kind AND b.currency = s.currency), \
         credits AS ( \
           SELECT 'unlocks' AS kind, currency, sum(price_minor) FILTER (WHERE created_at >= $2 AND created_at < $3) AS gross, \
                  0 AS discounts, coalesce(sum(price_minor) FILTER (WHERE refunded_at >= $2 AND refunded_at < $3), 0) AS refunds \
           FROM unlocks WHERE merchant_id = $1 GROUP BY currency) \
         SELECT kind, currency, gross::text AS gross_minor, discounts::text AS discounts_minor, refunds::text AS refunds_minor, \
                (gross - discounts - refunds)::text AS net_minor \
         FROM (SELECT * FROM money UNION ALL SELECT kind, currency, coalesce(gross, 0), discounts, refunds FROM credits) lines \
         WHERE gross <> 0 OR refunds <> 0 ORDER BY kind, currency",
    )
    .bind(merchant_id)
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_scale_to_a_month() {
        assert_eq!(months_per_period(Interval::Month, 1), (1, 1));
        assert_eq!(months_per_period(Interval::Month, 3), (1, 3));
        assert_eq!(months_per_period(Interval::Year, 1), (1, 12));
        assert_eq!(months_per_period(Interval::Week, 2), (52, 24));
        assert_eq!(months_per_period(Interval::Day, 1), (365, 12));
    }
}
