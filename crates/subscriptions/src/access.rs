//! Access to a merchant's resources (a chapter, a story, a post): by an unlock bought with credits,
//! or by an entitlement of a live subscription that the longest matching access rule names.
//!
//! The decision for a resource, in order: an unlock of it (`unlock`, permanent); else the access
//! rule with the longest prefix of it — access when the customer holds any of its entitlements (the
//! reason is that entitlement, until the subscription's period ends); else access when the resource
//! is itself an entitlement the customer holds (`tier:premium`); else `none`. A subscription gives
//! its entitlements while `trialing` or `active`, and while `past_due` when its plan keeps them
//! through the grace period. A refunded unlock gives no access.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use payrail_store::page::{Listing, Order, Page};
use sqlx::{PgConnection, PgPool};

use payrail_core::access::Holdings;
use payrail_core::payment::split::CreatorShare;
use payrail_credits::movement::{grant_lot, spend, LotGrant, SpendRequest};
use payrail_store::ledger::Ledger;

use crate::error::{invalid, Result, SubscriptionsError};
use crate::money::Amount;
use crate::plan::check_label;

/// Most resources in one bulk check.
pub const CHECK_MAX: usize = 1_000;
/// A creator's share of an unlock that names one, in basis points; the rest is the merchant's.
pub const CREATOR_SHARE_BPS: u32 = 7_000;
/// Most access rules per merchant.
pub const RULES_MAX: i64 = 500;

/// Body of `POST /v1/access_rules`: resources starting with `prefix` are included in any of
/// `entitlements`. Posting a prefix again replaces its entitlements.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessRule {
    /// `story/` — the longest prefix matching a resource decides.
    pub prefix: String,
    /// `["tier:premium"]` (1 to 20).
    pub entitlements: Vec<String>,
}

/// Body of `POST /v1/customers/{id}/unlocks`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnlockRequest {
    /// What is unlocked: `chapter/123`.
    pub resource: String,
    /// Its price, a positive integer string of the credit currency's smallest unit.
    pub price_credits: String,
    /// The credit currency; the merchant's only one when absent.
    pub currency: Option<String>,
    /// The resource's creator: gets 70% of the credits, the rest is the merchant's. Without one the
    /// merchant's split rules for the resource apply, as for any spend.
    pub creator: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct UnlockView {
    pub customer_id: String,
    pub resource: String,
    /// 1 for the first unlock; one more each time it is unlocked again after a refund.
    pub generation: i32,
    pub currency: String,
    pub price_minor: String,
    pub creator_id: Option<String>,
    /// The spend that paid for it, `ctx_…`.
    pub transaction_id: String,
    /// When it was refunded: access by it ended then.
    pub refunded_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// Body of `POST /v1/customers/{id}/unlocks/refund`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundUnlock {
    pub resource: String,
}

/// One resource's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Access {
    pub resource: String,
    pub access: bool,
    /// `unlock`, the entitlement that includes it (`tier:premium`), or `none`.
    pub reason: String,
    /// When access by an entitlement ends unless the subscription renews; null for an unlock.
    pub expires_at: Option<DateTime<Utc>>,
}

pub async fn set_rule(pool: &PgPool, merchant_id: &str, rule: &AccessRule, now: DateTime<Utc>) -> Result<AccessRule> {
    check_label("prefix", &rule.prefix)?;
    if rule.entitlements.is_empty() || rule.entitlements.len() > 20 {
        return Err(invalid("entitlements", "1 to 20"));
    }
    for e in &rule.entitlements {
        check_label("entitlements", e)?;
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM access_rules WHERE merchant_id = $1").bind(merchant_id).fetch_one(pool).await?;
    if count >= RULES_MAX {
        return Err(invalid("prefix", format!("at most {RULES_MAX} access rules")));
    }
    sqlx::query(
        "INSERT INTO access_rules (merchant_id, prefix, entitlements, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (merchant_id, prefix) DO UPDATE SET entitlements = EXCLUDED.entitlements",
    )
    .bind(merchant_id)
    .bind(&rule.prefix)
    .bind(&rule.entitlements)
    .bind(now)
    .execute(pool)
    .await?;
    Ok(rule.clone())
}

/// A page of the merchant's access rules, by prefix, and whether more follow.
pub async fn rules(pool: &PgPool, merchant_id: &str, page: &Page) -> Result<(Vec<AccessRule>, bool)> {
    const RULES: Listing =
        Listing { table: "access_rules", columns: "prefix, entitlements", owner: "merchant_id", id: "prefix", order: Order("prefix") };
    let (rows, has_more): (Vec<(String, Vec<String>)>, bool) = RULES.page(pool, merchant_id, page).await?;
    Ok((rows.into_iter().map(|(prefix, entitlements)| AccessRule { prefix, entitlements }).collect(), has_more))
}

const UNLOCK_COLUMNS: &str = "customer_id, resource, generation, currency, price_minor::text AS price_minor, creator_id, txn_id AS transaction_id, \
     refunded_at, created_at";

async fn find_unlock(conn: &mut PgConnection, customer_id: &str, resource: &str) -> Result<Option<UnlockView>> {
    Ok(sqlx::query_as(&format!("SELECT {UNLOCK_COLUMNS} FROM unlocks WHERE customer_id = $1 AND resource = $2 AND refunded_at IS NULL"))
        .bind(customer_id)
        .bind(resource)
        .fetch_optional(&mut *conn)
        .await?)
}

/// The spend's key of an unlock's `generation`: the first keeps the plain resource.
fn spend_key(resource: &str, generation: i32) -> String {
    if generation == 1 { format!("unlock:{resource}") } else { format!("unlock:{resource}#{generation}") }
}

/// Unlocks `request.resource` for the customer by spending its credits, once: a second unlock of
/// the same resource answers the first (`false`: nothing was charged). The spend's idempotency key
/// is the resource's (and generation's), so two unlocks at once charge once too.
pub async fn unlock(pool: &PgPool, ledger: &Ledger, merchant_id: &str, customer_id: &str, request: &UnlockRequest, now: DateTime<Utc>) -> Result<(UnlockView, bool)> {
    check_label("resource", &request.resource)?;
    let price = Amount::parse_decimal(&request.price_credits, 0).map_err(|_| invalid("price_credits", "a positive integer string"))?;
    if price.is_zero() {
        return Err(invalid("price_credits", "a positive integer string"));
    }
    let known: Option<String> = sqlx::query_scalar("SELECT id FROM customers WHERE id = $1 AND merchant_id = $2").bind(customer_id).bind(merchant_id).fetch_optional(pool).await?;
    if known.is_none() {
        return Err(SubscriptionsError::NotFound { what: "customer", id: customer_id.to_owned() });
    }
    if let Some(done) = find_unlock(&mut *pool.acquire().await?, customer_id, &request.resource).await? {
        return Ok((done, false));
    }
    let currency = match &request.currency {
        Some(code) => code.clone(),
        None => {
            let codes: Vec<String> = sqlx::query_scalar("SELECT code FROM credit_currencies WHERE merchant_id = $1 LIMIT 2").bind(merchant_id).fetch_all(pool).await?;
            match codes.as_slice() {
                [only] => only.clone(),
                [] => return Err(invalid("currency", "the merchant has no credit currency")),
                _ => return Err(invalid("currency", "the merchant has several credit currencies: name one")),
            }
        }
    };
    // The generation counts refunds, not unlocks: two unlocks at once both see the same refunds,
    // take the same generation and so the same spend key — one charge.
    let generation: i32 = sqlx::query_scalar("SELECT count(*)::int + 1 FROM unlocks WHERE customer_id = $1 AND resource = $2 AND refunded_at IS NOT NULL")
        .bind(customer_id)
        .bind(&request.resource)
        .fetch_one(pool)
        .await?;
    let spend_request = SpendRequest {
        currency: currency.clone(),
        amount_minor: price.to_string(),
        description: Some(format!("unlock of {}", request.resource)),
        resource: Some(request.resource.clone()),
        splits: request.creator.as_ref().map(|creator| vec![CreatorShare { creator: creator.clone(), bps: CREATOR_SHARE_BPS }]),
        platform_fee_bps: None,
    };
    let moved = spend(pool, ledger, merchant_id, customer_id, &spend_request, &spend_key(&request.resource, generation), now).await?;
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO unlocks (customer_id, resource, generation, merchant_id, currency, price_minor, creator_id, txn_id, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6::numeric, $7, $8, $9) ON CONFLICT DO NOTHING",
    )
    .bind(customer_id)
    .bind(&request.resource)
    .bind(generation)
    .bind(merchant_id)
    .bind(&currency)
    .bind(price.to_string())
    .bind(&request.creator)
    .bind(&moved.transaction.id)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let view = find_unlock(&mut tx, customer_id, &request.resource).await?.ok_or_else(|| SubscriptionsError::NotFound { what: "unlock", id: request.resource.clone() })?;
    tx.commit().await?;
    Ok((view, !moved.replayed))
}

/// Refunds a standing unlock: its access ends, and its price comes back to the customer as a lot
/// of its own (source `refund`), taken from the merchant's credits revenue — creators keep what
/// they earned. Once per unlock: a refund asked again answers the refunded unlock.
pub async fn refund_unlock(pool: &PgPool, ledger: &Ledger, merchant_id: &str, customer_id: &str, resource: &str, now: DateTime<Utc>) -> Result<UnlockView> {
    check_label("resource", resource)?;
    let mut tx = pool.begin().await?;
    payrail_credits::movement::lock_customers(&mut tx, merchant_id, &[customer_id]).await?;
    let Some(unlocked) = find_unlock(&mut tx, customer_id, resource).await? else {
        let last: Option<UnlockView> = sqlx::query_as(&format!(
            "SELECT {UNLOCK_COLUMNS} FROM unlocks WHERE customer_id = $1 AND resource = $2 ORDER BY generation DESC LIMIT 1"
        ))
        .bind(customer_id)
        .bind(resource)
        .fetch_optional(&mut *tx)
        .await?;
        return last.ok_or_else(|| SubscriptionsError::NotFound { what: "unlock", id: resource.to_owned() });
    };
    let price = Amount::parse_decimal(&unlocked.price_minor, 0).map_err(|_| invalid("unlock", "stored price"))?;
    let key = format!("{}:refund", spend_key(resource, unlocked.generation));
    let grant = LotGrant {
        merchant_id,
        customer_id,
        currency: &unlocked.currency,
        amount: price,
        source: "refund",
        expires_at: None,
        key: &key,
        resource: Some(resource),
        description: Some("an unlock refunded"),
        detail: serde_json::json!({ "unlock": unlocked.transaction_id, "generation": unlocked.generation }),
        funded_by: payrail_core::ledger::AccountCode::credits_revenue(merchant_id),
    };
    grant_lot(&mut tx, ledger, &grant, now).await?;
    let view: UnlockView = sqlx::query_as(&format!(
        "UPDATE unlocks SET refunded_at = $4 WHERE customer_id = $1 AND resource = $2 AND generation = $3 RETURNING {UNLOCK_COLUMNS}"
    ))
    .bind(customer_id)
    .bind(resource)
    .bind(unlocked.generation)
    .bind(now)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(view)
}

/// The one query a check reads: the customer's standing unlocks among the resources asked, its
/// live subscriptions' entitlements (with when each ends), and the merchant's access rules; the
/// decision for each resource is [`Holdings::decide`].
const CHECK_SQL: &str = "WITH ent AS ( \
       SELECT e, max(CASE WHEN s.status = 'past_due' THEN s.period_end + make_interval(days => pv.grace_days) ELSE s.period_end END) AS until \
       FROM subscriptions s JOIN plan_versions pv ON pv.plan_id = s.plan_id AND pv.version = s.plan_version \
       CROSS JOIN LATERAL unnest(pv.entitlements) AS e \
       WHERE s.customer_id = $1 AND s.merchant_id = $2 \
         AND (s.status IN ('trialing', 'active') OR (s.status = 'past_due' AND pv.entitlements_in_grace)) \
       GROUP BY e) \
     SELECT 'unlock' AS kind, u.resource AS name, NULL::timestamptz AS until, NULL::text[] AS opening FROM unlocks u \
       WHERE u.customer_id = $1 AND u.merchant_id = $2 AND u.refunded_at IS NULL AND u.resource = ANY ($3) \
     UNION ALL SELECT 'entitlement', e, until, NULL FROM ent \
     UNION ALL SELECT 'rule', prefix, NULL, entitlements FROM access_rules WHERE merchant_id = $2";

/// A row of [`CHECK_SQL`]: kind, name, until, the entitlements a rule names.
type HoldingRow = (String, String, Option<DateTime<Utc>>, Option<Vec<String>>);

/// Answers for each of `resources` (at most [`CHECK_MAX`]), in their order, from one query.
pub async fn check(conn: &mut PgConnection, merchant_id: &str, customer_id: &str, resources: &[String]) -> Result<Vec<Access>> {
    if resources.is_empty() || resources.len() > CHECK_MAX {
        return Err(invalid("resources", format!("1 to {CHECK_MAX}")));
    }
    for r in resources {
        check_label("resources", r)?;
    }
    let rows: Vec<HoldingRow> = sqlx::query_as(CHECK_SQL).bind(customer_id).bind(merchant_id).bind(resources).fetch_all(&mut *conn).await?;
    let mut holdings = Holdings::default();
    for (kind, name, until, opening) in rows {
        match (kind.as_str(), until, opening) {
            ("unlock", _, _) => {
                holdings.unlocked.insert(name);
            }
            ("entitlement", Some(until), _) => {
                holdings.entitlements.insert(name, until);
            }
            ("rule", _, Some(opening)) => {
                holdings.rules.insert(name, opening);
            }
            _ => return Err(invalid("access", format!("stored {kind} {name:?} is incomplete"))),
        }
    }
    Ok(resources
        .iter()
        .map(|resource| {
            let decision = holdings.decide(resource);
            Access { resource: resource.clone(), access: decision.access, reason: decision.reason, expires_at: decision.expires_at }
        })
        .collect())
}
