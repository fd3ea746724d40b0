//! Plans a merchant sells by the period, and their versions.
//!
//! A plan's terms (price, period, credits, trial, entitlements, grace) are a version: changing any
//! of them writes the next version, which new subscriptions get; a subscription keeps the version
//! it was sold until it changes plan. Name and the active flag are the plan's own, unversioned.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use payrail_store::page::{Listing, Order, Page};
use sqlx::{PgConnection, PgPool};

use payrail_core::subscription::{Cadence, Interval};

use crate::error::{invalid, Result, SubscriptionsError};
use crate::ids::new_id;
use crate::money::{Amount, Fiat};

/// Days of grace after an unpaid period end, unless the plan says otherwise.
pub const GRACE_DAYS_DEFAULT: u32 = 3;
/// How long before a period ends its renewal invoice is made, unless the plan says otherwise.
pub const RENEWAL_LEAD_S_DEFAULT: i64 = 3 * 86_400;
/// Longest renewal lead: thirty days.
pub const RENEWAL_LEAD_S_MAX: i64 = 30 * 86_400;
/// Most entitlements of a plan.
pub const ENTITLEMENTS_MAX: usize = 20;

/// Credits a plan grants each paid period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PeriodCredits {
    /// The merchant's credit currency.
    pub currency: String,
    /// A positive integer string of the currency's smallest unit.
    pub amount_minor: String,
    /// Whether what is left of them expires when the period ends (false when absent).
    #[serde(default)]
    pub expire_at_period_end: bool,
}

/// Body of `POST /v1/plans`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePlan {
    /// `Premium`
    pub name: String,
    /// A decimal string in `currency`'s major unit: `"9.99"`.
    pub price: String,
    /// ISO 4217.
    pub currency: String,
    /// `day` (for tests), `week`, `month` or `year`.
    pub interval: String,
    /// Periods are `interval_count` intervals long (1 when absent; at most three years in all).
    pub interval_count: Option<u32>,
    pub credits_per_period: Option<PeriodCredits>,
    /// Days of free trial before the first paid period (0 when absent).
    pub trial_days: Option<u32>,
    /// What an active subscription entitles its customer to: `tier:premium` (up to 20).
    pub entitlements: Option<Vec<String>>,
    /// Days an unpaid subscription stays `past_due` before it is canceled (3 when absent; 0–60).
    pub grace_days: Option<u32>,
    /// Whether entitlements are kept while `past_due` (true when absent).
    pub entitlements_in_grace: Option<bool>,
    /// Seconds before a period ends its renewal invoice is made (3 days when absent; at most 30 days).
    pub renewal_lead_s: Option<i64>,
    /// Sold (true, the default) or not.
    pub active: Option<bool>,
}

/// Body of `PATCH /v1/plans/{id}`: any of the terms writes a new version.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdatePlan {
    pub name: Option<String>,
    pub active: Option<bool>,
    pub price: Option<String>,
    pub currency: Option<String>,
    pub interval: Option<String>,
    pub interval_count: Option<u32>,
    /// `null` keeps the current credits; to stop granting credits set `credits_per_period_off`.
    pub credits_per_period: Option<PeriodCredits>,
    /// Stops granting credits in the new version.
    pub credits_per_period_off: Option<bool>,
    pub trial_days: Option<u32>,
    pub entitlements: Option<Vec<String>>,
    pub grace_days: Option<u32>,
    pub entitlements_in_grace: Option<bool>,
    pub renewal_lead_s: Option<i64>,
}

/// A version's terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Terms {
    pub version: i32,
    /// Decimal, in `currency`.
    pub price: String,
    pub currency: String,
    pub interval: String,
    pub interval_count: u32,
    pub credits_per_period: Option<PeriodCredits>,
    pub trial_days: u32,
    pub entitlements: Vec<String>,
    pub grace_days: u32,
    pub entitlements_in_grace: bool,
    pub renewal_lead_s: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PlanView {
    /// `plan_…`
    pub id: String,
    #[schema(value_type = String, example = "plan")]
    pub object: &'static str,
    pub name: String,
    pub active: bool,
    /// The terms new subscriptions get (`terms.version`).
    pub terms: Terms,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A version as stored, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub plan_id: String,
    pub merchant_id: String,
    pub version: i32,
    pub price: Amount,
    pub fiat: Fiat,
    pub cadence: Cadence,
    pub credits: Option<(String, Amount, bool)>,
    pub trial_days: u32,
    pub entitlements: Vec<String>,
    pub grace_days: u32,
    pub entitlements_in_grace: bool,
    pub renewal_lead_s: i64,
}

impl Version {
    pub fn terms(&self) -> Terms {
        Terms {
            version: self.version,
            price: self.price.to_decimal_string(self.fiat.minor_units()),
            currency: self.fiat.code().to_owned(),
            interval: self.cadence.interval().as_str().to_owned(),
            interval_count: self.cadence.count(),
            credits_per_period: self.credits.as_ref().map(|(currency, amount, expire)| PeriodCredits {
                currency: currency.clone(),
                amount_minor: amount.to_string(),
                expire_at_period_end: *expire,
            }),
            trial_days: self.trial_days,
            entitlements: self.entitlements.clone(),
            grace_days: self.grace_days,
            entitlements_in_grace: self.entitlements_in_grace,
            renewal_lead_s: self.renewal_lead_s,
        }
    }

    pub fn grace(&self) -> chrono::Duration {
        chrono::Duration::days(i64::from(self.grace_days))
    }
}

const VERSION_COLUMNS: &str = "plan_id, merchant_id, version, price_minor::text, currency, interval, interval_count, credits_currency, \
     credits_per_period::text, credits_expire, trial_days, entitlements, grace_days, entitlements_in_grace, renewal_lead_s";

type VersionRow = (String, String, i32, String, String, String, i32, Option<String>, Option<String>, bool, i32, Vec<String>, i32, bool, i64);

fn parse_version(row: VersionRow) -> Result<Version> {
    let (plan_id, merchant_id, version, price, currency, interval, count, credits_currency, credits, credits_expire, trial_days, entitlements, grace_days, in_grace, lead) = row;
    let stored = |what: &str| invalid("plan", format!("stored {what} of {plan_id} v{version}"));
    let fiat: Fiat = currency.parse().map_err(|_| stored("currency"))?;
    let interval = Interval::parse(&interval).ok_or_else(|| stored("interval"))?;
    let cadence = Cadence::new(interval, u32::try_from(count).map_err(|_| stored("interval_count"))?).map_err(|_| stored("interval_count"))?;
    let price = Amount::parse_decimal(&price, 0).map_err(|_| stored("price"))?;
    let credits = match (credits_currency, credits) {
        (Some(code), Some(amount)) => Some((code, Amount::parse_decimal(&amount, 0).map_err(|_| stored("credits"))?, credits_expire)),
        _ => None,
    };
    Ok(Version {
        plan_id,
        merchant_id,
        version,
        price,
        fiat,
        cadence,
        credits,
        trial_days: u32::try_from(trial_days).unwrap_or(0),
        entitlements,
        grace_days: u32::try_from(grace_days).unwrap_or(0),
        entitlements_in_grace: in_grace,
        renewal_lead_s: lead,
    })
}

/// A plan's version `version`.
pub async fn version(conn: &mut PgConnection, plan_id: &str, version: i32) -> Result<Version> {
    let row: Option<VersionRow> = sqlx::query_as(&format!("SELECT {VERSION_COLUMNS} FROM plan_versions WHERE plan_id = $1 AND version = $2"))
        .bind(plan_id)
        .bind(version)
        .fetch_optional(&mut *conn)
        .await?;
    parse_version(row.ok_or_else(|| SubscriptionsError::NotFound { what: "plan version", id: format!("{plan_id} v{version}") })?)
}

/// The terms checked and parsed, before they are stored.
struct NewTerms {
    price: Amount,
    fiat: Fiat,
    cadence: Cadence,
    credits: Option<(String, Amount, bool)>,
    trial_days: u32,
    entitlements: Vec<String>,
    grace_days: u32,
    entitlements_in_grace: bool,
    renewal_lead_s: i64,
}

fn check_name(name: &str) -> Result<String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(invalid("name", "1 to 100 characters"));
    }
    Ok(name.to_owned())
}

/// An entitlement or a resource name: 1 to 200 visible characters, no spaces.
pub fn check_label(field: &'static str, label: &str) -> Result<()> {
    if label.is_empty() || label.len() > 200 || !label.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(field, format!("{label:?}: 1 to 200 visible ASCII characters")));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn check_terms(
    conn: &mut PgConnection,
    merchant_id: &str,
    price: &str,
    currency: &str,
    interval: &str,
    interval_count: u32,
    credits: Option<&PeriodCredits>,
    trial_days: u32,
    entitlements: &[String],
    grace_days: u32,
    entitlements_in_grace: bool,
    renewal_lead_s: i64,
) -> Result<NewTerms> {
    let fiat: Fiat = currency.parse().map_err(|_| invalid("currency", format!("{currency:?} is not a supported ISO 4217 code")))?;
    let price = Amount::parse_decimal(price, fiat.minor_units()).map_err(|e| invalid("price", format!("{price:?}: {e}")))?;
    if price.is_zero() {
        return Err(invalid("price", "must be positive (a free tier needs no subscription)"));
    }
    let interval = Interval::parse(interval).ok_or_else(|| invalid("interval", "day, week, month or year"))?;
    let cadence = Cadence::new(interval, interval_count).map_err(|e| invalid("interval_count", e.to_string()))?;
    let credits = match credits {
        None => None,
        Some(c) => {
            let amount = Amount::parse_decimal(&c.amount_minor, 0).map_err(|_| invalid("credits_per_period", "amount_minor: a positive integer string"))?;
            if amount.is_zero() {
                return Err(invalid("credits_per_period", "amount_minor: a positive integer string"));
            }
            payrail_credits::currency::get(&mut *conn, merchant_id, &c.currency).await?;
            Some((c.currency.clone(), amount, c.expire_at_period_end))
        }
    };
    if trial_days > 730 {
        return Err(invalid("trial_days", "0 to 730"));
    }
    if entitlements.len() > ENTITLEMENTS_MAX {
        return Err(invalid("entitlements", format!("at most {ENTITLEMENTS_MAX}")));
    }
    for e in entitlements {
        check_label("entitlements", e)?;
    }
    let mut entitlements = entitlements.to_vec();
    entitlements.sort();
    entitlements.dedup();
    if grace_days > 60 {
        return Err(invalid("grace_days", "0 to 60"));
    }
    if !(0..=RENEWAL_LEAD_S_MAX).contains(&renewal_lead_s) {
        return Err(invalid("renewal_lead_s", format!("0 to {RENEWAL_LEAD_S_MAX}")));
    }
    Ok(NewTerms { price, fiat, cadence, credits, trial_days, entitlements, grace_days, entitlements_in_grace, renewal_lead_s })
}

async fn insert_version(conn: &mut PgConnection, merchant_id: &str, plan_id: &str, version: i32, t: &NewTerms, now: DateTime<Utc>) -> Result<()> {
    sqlx::query(
        "INSERT INTO plan_versions (plan_id, version, merchant_id, price_minor, currency, interval, interval_count, credits_currency, \
                                    credits_per_period, credits_expire, trial_days, entitlements, grace_days, entitlements_in_grace, \
                                    renewal_lead_s, created_at) \
         VALUES ($1, $2, $3, $4::numeric, $5, $6, $7, $8, $9::numeric, $10, $11, $12, $13, $14, $15, $16)",
    )
    .bind(plan_id)
    .bind(version)
    .bind(merchant_id)
    .bind(t.price.to_string())
    .bind(t.fiat.code())
    .bind(t.cadence.interval().as_str())
    .bind(i32::try_from(t.cadence.count()).unwrap_or(1))
    .bind(t.credits.as_ref().map(|c| c.0.clone()))
    .bind(t.credits.as_ref().map(|c| c.1.to_string()))
    .bind(t.credits.as_ref().is_some_and(|c| c.2))
    .bind(i32::try_from(t.trial_days).unwrap_or(0))
    .bind(&t.entitlements)
    .bind(i32::try_from(t.grace_days).unwrap_or(0))
    .bind(t.entitlements_in_grace)
    .bind(t.renewal_lead_s)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn create(pool: &PgPool, merchant_id: &str, request: &CreatePlan, now: DateTime<Utc>) -> Result<PlanView> {
    let name = check_name(&request.name)?;
    let mut tx = pool.begin().await?;
    let terms = check_terms(
        &mut tx,
        merchant_id,
        &request.price,
        &request.currency,
        &request.interval,
        request.interval_count.unwrap_or(1),
        request.credits_per_period.as_ref(),
        request.trial_days.unwrap_or(0),
        request.entitlements.as_deref().unwrap_or_default(),
        request.grace_days.unwrap_or(GRACE_DAYS_DEFAULT),
        request.entitlements_in_grace.unwrap_or(true),
        request.renewal_lead_s.unwrap_or(RENEWAL_LEAD_S_DEFAULT),
    )
    .await?;
    let id = new_id("plan");
    sqlx::query("INSERT INTO plans (id, merchant_id, name, version, active, created_at, updated_at) VALUES ($1, $2, $3, 1, $4, $5, $5)")
        .bind(&id)
        .bind(merchant_id)
        .bind(&name)
        .bind(request.active.unwrap_or(true))
        .bind(now)
        .execute(&mut *tx)
        .await?;
    insert_version(&mut tx, merchant_id, &id, 1, &terms, now).await?;
    let view = get_on(&mut tx, merchant_id, &id).await?;
    tx.commit().await?;
    Ok(view)
}

type PlanRow = (String, String, i32, bool, DateTime<Utc>, DateTime<Utc>);

async fn view_of(conn: &mut PgConnection, (id, name, current, active, created_at, updated_at): PlanRow) -> Result<PlanView> {
    let terms = version(&mut *conn, &id, current).await?.terms();
    Ok(PlanView { id, object: "plan", name, active, terms, created_at, updated_at })
}

pub async fn get_on(conn: &mut PgConnection, merchant_id: &str, id: &str) -> Result<PlanView> {
    let row: Option<PlanRow> = sqlx::query_as("SELECT id, name, version, active, created_at, updated_at FROM plans WHERE id = $1 AND merchant_id = $2")
        .bind(id)
        .bind(merchant_id)
        .fetch_optional(&mut *conn)
        .await?;
    view_of(conn, row.ok_or_else(|| SubscriptionsError::NotFound { what: "plan", id: id.to_owned() })?).await
}

pub async fn get(pool: &PgPool, merchant_id: &str, id: &str) -> Result<PlanView> {
    get_on(&mut *pool.acquire().await?, merchant_id, id).await
}

/// A page of the merchant's plans, newest first, and whether more follow.
pub async fn list(pool: &PgPool, merchant_id: &str, page: &Page) -> Result<(Vec<PlanView>, bool)> {
    const PLANS: Listing = Listing {
        table: "plans",
        columns: "id, name, version, active, created_at, updated_at",
        owner: "merchant_id",
        id: "id",
        order: Order("seq DESC"),
    };
    let (rows, has_more): (Vec<PlanRow>, bool) = PLANS.page(pool, merchant_id, page).await?;
    let mut conn = pool.acquire().await?;
    let mut plans = Vec::with_capacity(rows.len());
    for row in rows {
        plans.push(view_of(&mut conn, row).await?);
    }
    Ok((plans, has_more))
}

/// Renames, (de)activates, and — when any term is given — writes the plan's next version.
pub async fn update(pool: &PgPool, merchant_id: &str, id: &str, request: &UpdatePlan, now: DateTime<Utc>) -> Result<PlanView> {
    let mut tx = pool.begin().await?;
    let current: Option<i32> = sqlx::query_scalar("SELECT version FROM plans WHERE id = $1 AND merchant_id = $2 FOR UPDATE")
        .bind(id)
        .bind(merchant_id)
        .fetch_optional(&mut *tx)
        .await?;
    let current = current.ok_or_else(|| SubscriptionsError::NotFound { what: "plan", id: id.to_owned() })?;
    if let Some(name) = &request.name {
        sqlx::query("UPDATE plans SET name = $2, updated_at = $3 WHERE id = $1").bind(id).bind(check_name(name)?).bind(now).execute(&mut *tx).await?;
    }
    if let Some(active) = request.active {
        sqlx::query("UPDATE plans SET active = $2, updated_at = $3 WHERE id = $1").bind(id).bind(active).bind(now).execute(&mut *tx).await?;
    }
    let r = request;
    let changes_terms = r.price.is_some()
        || r.currency.is_some()
        || r.interval.is_some()
        || r.interval_count.is_some()
        || r.credits_per_period.is_some()
        || r.credits_per_period_off.is_some()
        || r.trial_days.is_some()
        || r.entitlements.is_some()
        || r.grace_days.is_some()
        || r.entitlements_in_grace.is_some()
        || r.renewal_lead_s.is_some();
    if changes_terms {
        let old = version(&mut tx, id, current).await?;
        let old_terms = old.terms();
        let currency = r.currency.clone().unwrap_or(old_terms.currency);
        // A new currency needs a new price: the old one's digits mean something else in it.
        if r.currency.is_some() && r.price.is_none() {
            return Err(invalid("price", "a new currency needs its price"));
        }
        let price = r.price.clone().unwrap_or(old_terms.price);
        let credits = match (&r.credits_per_period, r.credits_per_period_off) {
            (Some(_), Some(true)) => return Err(invalid("credits_per_period_off", "not with credits_per_period")),
            (_, Some(true)) => None,
            (Some(c), _) => Some(c.clone()),
            (None, _) => old_terms.credits_per_period,
        };
        let terms = check_terms(
            &mut tx,
            merchant_id,
            &price,
            &currency,
            r.interval.as_deref().unwrap_or(&old_terms.interval),
            r.interval_count.unwrap_or(old_terms.interval_count),
            credits.as_ref(),
            r.trial_days.unwrap_or(old_terms.trial_days),
            r.entitlements.as_deref().unwrap_or(&old_terms.entitlements),
            r.grace_days.unwrap_or(old_terms.grace_days),
            r.entitlements_in_grace.unwrap_or(old_terms.entitlements_in_grace),
            r.renewal_lead_s.unwrap_or(old_terms.renewal_lead_s),
        )
        .await?;
        let next = current.checked_add(1).ok_or_else(|| invalid("plan", "too many versions"))?;
        insert_version(&mut tx, merchant_id, id, next, &terms, now).await?;
        sqlx::query("UPDATE plans SET version = $2, updated_at = $3 WHERE id = $1").bind(id).bind(next).bind(now).execute(&mut *tx).await?;
    }
    let view = get_on(&mut tx, merchant_id, id).await?;
    tx.commit().await?;
    Ok(view)
}
