//! A merchant's day totals for the overview's charts: volume per day by currency, rail and asset,
//! and invoices created per day by status.
//!
//! Summing 30 days of a busy merchant means reading tens of thousands of rows (100,000 invoices
//! over two months: ~180 ms here), too slow for every look at the overview. The days before today
//! (UTC) are summed once and kept in memory for [`CLOSED_DAYS_FRESH_FOR`]; today's are summed on
//! every request (a day's rows at most). When the kept days grow stale the page is drawn from them
//! while a fresh sum runs in the background; only the first look after the daemon starts, or after
//! midnight, waits for the whole sum. What a chart may lag by is therefore a few minutes, for days
//! already past — an invoice created yesterday that expires or is refunded today moves its bar on
//! the next refresh.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::PgPool;

/// How long the sums of past days are used before they are summed again.
pub const CLOSED_DAYS_FRESH_FOR: Duration = Duration::from_secs(300);
/// Most merchants whose sums are kept; beyond it the whole map is cleared.
const MERCHANTS_KEPT_MAX: usize = 10_000;

/// One bar segment of the volume chart: a day's confirmed value of one rail and asset, in the
/// invoices' currency (smallest unit).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Volume {
    pub day: String,
    pub currency: String,
    pub chain: String,
    pub asset: String,
    pub value: String,
}

/// Invoices created on a day with a status now.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Created {
    pub day: String,
    pub status: String,
    pub invoices: i64,
}

#[derive(Debug, Clone, Default)]
pub struct Totals {
    pub volume: Vec<Volume>,
    pub created: Vec<Created>,
}

impl Totals {
    fn extend(&mut self, other: Totals) {
        self.volume.extend(other.volume);
        self.created.extend(other.created);
    }
}

#[derive(Debug)]
struct Kept {
    /// The day these sums end before (today, when they were summed).
    until: NaiveDate,
    summed_at: Instant,
    totals: Totals,
    refreshing: bool,
}

fn kept() -> &'static Mutex<HashMap<String, Kept>> {
    static KEPT: OnceLock<Mutex<HashMap<String, Kept>>> = OnceLock::new();
    KEPT.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Sums `[from, to)` for `merchant`.
async fn sum(pool: &PgPool, merchant: &str, from: DateTime<Utc>, to: Option<DateTime<Utc>>) -> Result<Totals, sqlx::Error> {
    let volume = sqlx::query_as(
        "SELECT to_char(day, 'YYYY-MM-DD') AS day, currency, chain, asset, value::text AS value FROM ( \
            SELECT (p.seen_at AT TIME ZONE 'UTC')::date AS day, i.currency, p.chain, p.asset, sum(p.value_minor) AS value \
              FROM payments p JOIN invoices i ON i.id = p.invoice_id \
             WHERE p.merchant_id = $1 AND p.seen_at >= $2 AND ($3::timestamptz IS NULL OR p.seen_at < $3) \
               AND p.status = 'confirmed' AND p.applied_to = 'invoice' \
             GROUP BY 1, 2, 3, 4) v ORDER BY 2, 3, 4",
    )
    .bind(merchant)
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await?;
    let created = sqlx::query_as(
        "SELECT to_char(day, 'YYYY-MM-DD') AS day, status, invoices FROM ( \
            SELECT (created_at AT TIME ZONE 'UTC')::date AS day, status, count(*) AS invoices \
              FROM invoices WHERE merchant_id = $1 AND created_at >= $2 AND ($3::timestamptz IS NULL OR created_at < $3) \
             GROUP BY 1, 2) c",
    )
    .bind(merchant)
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await?;
    Ok(Totals { volume, created })
}

/// The merchant's totals from `since` (a day's start) to now: the past days as kept (summed
/// again when stale), today's read now.
pub async fn totals(pool: &PgPool, merchant: &str, since: DateTime<Utc>, now: DateTime<Utc>) -> Result<Totals, sqlx::Error> {
    let today = now.date_naive();
    let today_start = today.and_hms_opt(0, 0, 0).map_or(now, |t| t.and_utc());
    let mut totals = past(pool, merchant, since, today, today_start).await?;
    totals.extend(sum(pool, merchant, today_start, None).await?);
    Ok(totals)
}

async fn past(pool: &PgPool, merchant: &str, since: DateTime<Utc>, today: NaiveDate, today_start: DateTime<Utc>) -> Result<Totals, sqlx::Error> {
    let stale = {
        let mut map = kept().lock().unwrap_or_else(PoisonError::into_inner);
        match map.get_mut(merchant) {
            Some(k) if k.until == today => {
                let stale = k.summed_at.elapsed() >= CLOSED_DAYS_FRESH_FOR && !k.refreshing;
                if stale {
                    k.refreshing = true;
                }
                Some((k.totals.clone(), stale))
            }
            _ => None,
        }
    };
    match stale {
        Some((totals, false)) => Ok(totals),
        Some((totals, true)) => {
            // Draw from what is kept; sum again meanwhile.
            let (pool, merchant) = (pool.clone(), merchant.to_owned());
            tokio::spawn(async move {
                let summed = sum(&pool, &merchant, since, Some(today_start)).await;
                let mut map = kept().lock().unwrap_or_else(PoisonError::into_inner);
                match summed {
                    // Past midnight a newer day's sums may be kept already: those stay.
                    Ok(totals) if map.get(&merchant).is_none_or(|k| k.until <= today) => {
                        map.insert(merchant, Kept { until: today, summed_at: Instant::now(), totals, refreshing: false });
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(target: "console", %error, "the overview's day totals could not be summed again");
                        if let Some(k) = map.get_mut(&merchant) {
                            k.refreshing = false;
                        }
                    }
                }
            });
            Ok(totals)
        }
        None => {
            let totals = sum(pool, merchant, since, Some(today_start)).await?;
            let mut map = kept().lock().unwrap_or_else(PoisonError::into_inner);
            if map.len() >= MERCHANTS_KEPT_MAX {
                map.clear();
            }
            map.insert(merchant.to_owned(), Kept { until: today, summed_at: Instant::now(), totals: totals.clone(), refreshing: false });
            Ok(totals)
        }
    }
}
