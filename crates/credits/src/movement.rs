//! Every movement of credits: grants, spends, transfers (gift, transfer, tip) and expiry. Each is
//! one transaction: the customer rows locked (in id order), the lots planned
//! ([`payrail_core::credits::consume`]), one ledger entry, the history rows, the webhook events.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;
use sqlx::{PgConnection, PgPool};

use payrail_core::credits::{consume, Consumed, CreditAsset, LotBalance};
use payrail_core::payment::split::{split_postings, CreatorShare, Splits};
use payrail_store::ledger::{Ledger, LedgerError};
use payrail_store::outbox::emit;
use payrail_store::splits::{check_creators, matching_rule, SplitsError};

use crate::currency::{self, parse_amount, CurrencyView};
use crate::error::{invalid, CreditsError, Result};
use crate::ids::new_id;
use crate::ledger::{AccountCode, NewEntry};
use crate::money::{Amount, BPS_WHOLE};
use crate::view::{self, TransactionView};

/// Longest description of a movement.
pub const DESCRIPTION_LEN_MAX: usize = 500;
/// Longest resource name.
pub const RESOURCE_LEN_MAX: usize = 200;
/// Longest idempotency key.
pub const KEY_LEN_MAX: usize = 255;
/// Lots expired per pass of [`expire_due`].
pub const EXPIRE_BATCH: i64 = 500;

/// Sources a merchant may grant from over the API (purchases come from paid invoices).
pub const GRANT_SOURCES: &[&str] = &["reward", "bonus", "promo"];

/// Body of `POST /v1/customers/{id}/grants`: credits the merchant gives at its own cost.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantRequest {
    /// The credit currency's code.
    pub currency: String,
    /// A positive integer string of the currency's smallest unit.
    pub amount_minor: String,
    /// `reward` (the default), `bonus` or `promo`: booked to `expenses:rewards:{merchant}`.
    pub source: Option<String>,
    /// When what is left of the lot expires; never when absent.
    pub expires_at: Option<DateTime<Utc>>,
    pub description: Option<String>,
}

/// Body of `POST /v1/customers/{id}/spend`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SpendRequest {
    pub currency: String,
    pub amount_minor: String,
    pub description: Option<String>,
    /// What was bought (`chapter/123`): the merchant's split rule for the longest matching prefix
    /// applies (as an invoice's `order_id` does), else its default rule.
    pub resource: Option<String>,
    /// This spend's own split, instead of the rules.
    pub splits: Option<Vec<CreatorShare>>,
    /// With `splits`: the platform's fee in basis points (0 when absent).
    pub platform_fee_bps: Option<u32>,
}

/// Body of `POST /v1/customers/{id}/adjustments` (an admin key): a correction, with its reason.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdjustmentRequest {
    pub currency: String,
    /// A signed integer string: positive grants a lot (source `adjustment`), negative takes from
    /// the customer's lots in spending order.
    pub amount_minor: String,
    /// Why: kept on the movement (1 to 500 characters).
    pub reason: String,
}

/// Body of `POST /v1/transfers`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferRequest {
    /// `gift` or `transfer` (to another customer: `to_customer`), or `tip` (to a creator: `to_creator`).
    pub kind: String,
    /// The customer whose credits move, `cus_…`.
    pub from_customer: String,
    pub to_customer: Option<String>,
    pub to_creator: Option<String>,
    pub currency: String,
    pub amount_minor: String,
    pub description: Option<String>,
}

/// What a movement came to: the history row of the customer it was asked for, and whether it had
/// been made before under the same key (a retry).
#[derive(Debug, Clone)]
pub struct Moved {
    pub transaction: TransactionView,
    pub replayed: bool,
}

fn check_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > KEY_LEN_MAX || key.chars().any(char::is_control) {
        return Err(invalid("Idempotency-Key", format!("1 to {KEY_LEN_MAX} characters")));
    }
    Ok(())
}

fn check_text(field: &'static str, value: Option<&str>, max: usize) -> Result<()> {
    match value {
        Some(v) if v.chars().count() > max || v.chars().any(char::is_control) => Err(invalid(field, format!("at most {max} characters, no control characters"))),
        _ => Ok(()),
    }
}

/// The ledger key of a movement asked for under `key`.
pub(crate) fn entry_key(merchant_id: &str, key: &str) -> String {
    format!("credits:{merchant_id}:{key}")
}

/// Locks customers (in id order, so two movements between the same pair cannot deadlock); each must
/// be the merchant's.
pub async fn lock_customers(tx: &mut PgConnection, merchant_id: &str, ids: &[&str]) -> Result<()> {
    let mut sorted: Vec<&str> = ids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    for id in sorted {
        let found: Option<String> = sqlx::query_scalar("SELECT id FROM customers WHERE id = $1 AND merchant_id = $2 FOR UPDATE")
            .bind(id)
            .bind(merchant_id)
            .fetch_optional(&mut *tx)
            .await?;
        if found.is_none() {
            return Err(CreditsError::NotFound { what: "customer", id: id.to_owned() });
        }
    }
    Ok(())
}

/// The movement already made under `key` for `customer_id`, if any: the same request answers it
/// again, another one is refused.
async fn replay(tx: &mut PgConnection, merchant_id: &str, key: &str, customer_id: &str, kind: &str, amount: &str) -> Result<Option<Moved>> {
    let Some(found) = view::transaction_by_key(&mut *tx, merchant_id, key, customer_id).await? else {
        return Ok(None);
    };
    let magnitude = found.amount_minor.trim_start_matches('-');
    if found.kind != kind || magnitude != amount {
        return Err(CreditsError::KeyReused { key: key.to_owned() });
    }
    Ok(Some(Moved { transaction: found, replayed: true }))
}

/// A lot as read: id, expiry, grant time, grant order, what is left.
type LotRow = (String, Option<DateTime<Utc>>, DateTime<Utc>, i64, String);

/// The customer's lots of `currency` that still hold credits, with what each holds.
pub(crate) async fn open_lots(tx: &mut PgConnection, customer_id: &str, currency: &CurrencyView) -> Result<Vec<LotBalance>> {
    let rows: Vec<LotRow> = sqlx::query_as(
        "SELECT l.id, l.expires_at, l.granted_at, l.seq, sum(b.balance)::text FROM credit_lots l \
         JOIN accounts a ON a.code = 'liabilities:credit_lot:' || l.id \
         JOIN balances b ON b.account_id = a.id AND b.asset = $3 \
         WHERE l.customer_id = $1 AND l.currency = $2 AND l.expired_at IS NULL \
         GROUP BY l.id HAVING sum(b.balance) > 0",
    )
    .bind(customer_id)
    .bind(&currency.code)
    .bind(&currency.asset)
    .fetch_all(&mut *tx)
    .await?;
    rows.into_iter()
        .map(|(lot_id, expires_at, granted_at, granted_seq, remaining)| {
            let remaining = Amount::parse_decimal(&remaining, 0).map_err(|_| invalid("lot", format!("stored balance {remaining:?}")))?;
            Ok(LotBalance { lot_id, remaining, expires_at, granted_at, granted_seq })
        })
        .collect()
}

/// Plans taking `amount` from the customer's lots at `now`.
async fn plan(tx: &mut PgConnection, customer_id: &str, currency: &CurrencyView, amount: Amount, now: DateTime<Utc>) -> Result<Vec<Consumed>> {
    let lots = open_lots(&mut *tx, customer_id, currency).await?;
    consume(&lots, amount, now).map_err(|short| CreditsError::Insufficient { currency: currency.code.clone(), available: short.available.to_string() })
}

/// Writes a new lot of `customer_id` (its ledger account is credited by the caller's entry).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn insert_lot(
    tx: &mut PgConnection,
    merchant_id: &str,
    customer_id: &str,
    currency: &str,
    source: &str,
    amount: Amount,
    expires_at: Option<DateTime<Utc>>,
    txn_id: &str,
    now: DateTime<Utc>,
) -> Result<String> {
    let lot_id = new_id("lot");
    sqlx::query(
        "INSERT INTO credit_lots (id, merchant_id, customer_id, currency, source, amount_minor, expires_at, txn_id, granted_at) \
         VALUES ($1, $2, $3, $4, $5, $6::numeric, $7, $8, $9)",
    )
    .bind(&lot_id)
    .bind(merchant_id)
    .bind(customer_id)
    .bind(currency)
    .bind(source)
    .bind(amount.to_string())
    .bind(expires_at)
    .bind(txn_id)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    Ok(lot_id)
}

/// One history row.
pub(crate) struct Row<'a> {
    pub(crate) id: String,
    pub(crate) merchant_id: &'a str,
    pub(crate) customer_id: &'a str,
    pub(crate) currency: &'a str,
    pub(crate) kind: &'a str,
    /// Signed: positive in, negative out.
    pub(crate) amount: String,
    pub(crate) source: Option<&'a str>,
    pub(crate) description: Option<&'a str>,
    pub(crate) resource: Option<&'a str>,
    pub(crate) counterparty: Option<&'a str>,
    pub(crate) key: &'a str,
    pub(crate) entry_id: i64,
    pub(crate) detail: serde_json::Value,
}

pub(crate) async fn insert_row(tx: &mut PgConnection, row: &Row<'_>, now: DateTime<Utc>) -> Result<TransactionView> {
    sqlx::query(
        "INSERT INTO credit_transactions (id, merchant_id, customer_id, currency, kind, amount_minor, source, description, resource, \
                                          counterparty, idempotency_key, entry_id, detail, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6::numeric, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(&row.id)
    .bind(row.merchant_id)
    .bind(row.customer_id)
    .bind(row.currency)
    .bind(row.kind)
    .bind(&row.amount)
    .bind(row.source)
    .bind(row.description)
    .bind(row.resource)
    .bind(row.counterparty)
    .bind(row.key)
    .bind(row.entry_id)
    .bind(&row.detail)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    view::transaction(&mut *tx, &row.id).await
}

/// Posts `entry`; a key used for another entry is the caller's key reused.
pub(crate) async fn post(tx: &mut PgConnection, ledger: &Ledger, entry: &NewEntry, key: &str) -> Result<i64> {
    match ledger.post(&mut *tx, entry).await {
        Ok(posted) => Ok(posted.entry_id),
        Err(LedgerError::IdempotencyConflict { .. }) => Err(CreditsError::KeyReused { key: key.to_owned() }),
        Err(e) => Err(e.into()),
    }
}

/// A split rule's trouble as the caller's: an unknown creator is the request's fault, the database's
/// is not.
fn splits_error(field: &'static str, error: SplitsError) -> CreditsError {
    match error {
        SplitsError::Database(e) => CreditsError::Database(e),
        other => invalid(field, other.to_string()),
    }
}

fn consumed_json(consumed: &[Consumed]) -> serde_json::Value {
    json!(consumed.iter().map(|c| json!({ "lot": c.lot_id, "amount_minor": c.amount.to_string() })).collect::<Vec<_>>())
}

pub(crate) fn asset_of(currency: &CurrencyView) -> Result<CreditAsset> {
    CreditAsset::parse(&currency.asset).ok_or_else(|| invalid("currency", format!("stored asset {:?}", currency.asset)))
}

/// Grants credits the merchant pays for itself (`expenses:rewards:{merchant}`) as a new lot.
pub async fn grant(pool: &PgPool, ledger: &Ledger, merchant_id: &str, customer_id: &str, request: &GrantRequest, key: &str, now: DateTime<Utc>) -> Result<Moved> {
    check_key(key)?;
    let amount = parse_amount("amount_minor", &request.amount_minor)?;
    let source = request.source.as_deref().unwrap_or("reward");
    if !GRANT_SOURCES.contains(&source) {
        return Err(invalid("source", format!("one of {}", GRANT_SOURCES.join(", "))));
    }
    if request.expires_at.is_some_and(|at| at <= now) {
        return Err(invalid("expires_at", "must be in the future"));
    }
    check_text("description", request.description.as_deref(), DESCRIPTION_LEN_MAX)?;
    let mut tx = pool.begin().await?;
    lock_customers(&mut tx, merchant_id, &[customer_id]).await?;
    if let Some(done) = replay(&mut tx, merchant_id, key, customer_id, "grant", &amount.to_string()).await? {
        return Ok(done);
    }
    let grant = LotGrant {
        merchant_id,
        customer_id,
        currency: &request.currency,
        amount,
        source,
        expires_at: request.expires_at,
        key,
        resource: None,
        description: request.description.as_deref(),
        detail: json!({}),
        funded_by: AccountCode::rewards(merchant_id),
    };
    let transaction = grant_lot(&mut tx, ledger, &grant, now).await?;
    tx.commit().await?;
    Ok(Moved { transaction, replayed: false })
}

/// The split of a spend: its own, else the rule for its resource; none for unpegged credits.
async fn spend_splits(tx: &mut PgConnection, merchant_id: &str, currency: &CurrencyView, request: &SpendRequest) -> Result<Splits> {
    let splits = match &request.splits {
        Some(shares) => {
            let splits = Splits { splits: shares.clone(), platform_fee_bps: request.platform_fee_bps.unwrap_or(0) };
            splits.validate().map_err(|e| invalid("splits", e.0))?;
            check_creators(&mut *tx, merchant_id, &splits).await.map_err(|e| splits_error("splits", e))?;
            if currency.peg.is_none() && !splits.is_empty() {
                return Err(invalid("splits", "credits without a peg are worth nothing to creators or the platform: no split"));
            }
            splits
        }
        None if request.platform_fee_bps.is_some() => return Err(invalid("platform_fee_bps", "goes with splits")),
        None if currency.peg.is_none() => Splits::default(),
        None => matching_rule(&mut *tx, merchant_id, request.resource.as_deref()).await.map_err(|e| splits_error("resource", e))?.unwrap_or_default(),
    };
    Ok(splits)
}

/// Spends a customer's credits: taken from its lots in spending order, shared between creators,
/// the platform and the merchant (recognised as revenue) as the split says, to the unit.
pub async fn spend(pool: &PgPool, ledger: &Ledger, merchant_id: &str, customer_id: &str, request: &SpendRequest, key: &str, now: DateTime<Utc>) -> Result<Moved> {
    check_key(key)?;
    let amount = parse_amount("amount_minor", &request.amount_minor)?;
    check_text("description", request.description.as_deref(), DESCRIPTION_LEN_MAX)?;
    check_text("resource", request.resource.as_deref(), RESOURCE_LEN_MAX)?;
    let mut tx = pool.begin().await?;
    lock_customers(&mut tx, merchant_id, &[customer_id]).await?;
    if let Some(done) = replay(&mut tx, merchant_id, key, customer_id, "spend", &amount.to_string()).await? {
        return Ok(done);
    }
    let currency = currency::get(&mut tx, merchant_id, &request.currency).await?;
    let asset = asset_of(&currency)?.to_string();
    let splits = spend_splits(&mut tx, merchant_id, &currency, request).await?;
    let consumed = plan(&mut tx, customer_id, &currency, amount, now).await?;
    let value = crate::limits::check_movement(&mut tx, merchant_id, customer_id, crate::limits::Counted::Spend, currency.value(amount), now).await?;
    let shares = split_postings(AccountCode::credits_revenue(merchant_id), amount, &splits).map_err(|e| invalid("amount_minor", e.to_string()))?;
    let mut entry = NewEntry::new(entry_key(merchant_id, key), "credit_spend")
        .memo(format!("{customer_id} spent {amount} {}{}", currency.code, request.resource.as_deref().map(|r| format!(" on {r}")).unwrap_or_default()));
    for c in &consumed {
        entry = entry.debit(AccountCode::credit_lot(&c.lot_id), asset.as_str(), c.amount);
    }
    for (account, share) in &shares {
        entry = entry.credit(account.clone(), asset.as_str(), *share);
    }
    let entry_id = post(&mut tx, ledger, &entry, key).await?;
    let shares_json: BTreeMap<String, String> = shares.iter().map(|(a, v)| (a.as_str().to_owned(), v.to_string())).collect();
    let row = Row {
        id: new_id("ctx"),
        merchant_id,
        customer_id,
        currency: &currency.code,
        kind: "spend",
        amount: format!("-{amount}"),
        source: None,
        description: request.description.as_deref(),
        resource: request.resource.as_deref(),
        counterparty: None,
        key,
        entry_id,
        detail: json!({ "lots": consumed_json(&consumed), "shares": shares_json }),
    };
    let transaction = insert_row(&mut tx, &row, now).await?;
    crate::limits::record_value(&mut tx, &transaction.id, value).await?;
    emit(&mut tx, merchant_id, "credits.spent", customer_id, &transaction, now).await?;
    tx.commit().await?;
    Ok(Moved { transaction, replayed: false })
}

/// Moves credits from one customer to another (`gift`, `transfer`: the recipient gets a lot per
/// lot taken, with the same expiry) or to a creator (`tip`: the platform's fee of the merchant's
/// default rule taken, the rest the creator's).
pub async fn transfer(pool: &PgPool, ledger: &Ledger, merchant_id: &str, request: &TransferRequest, key: &str, now: DateTime<Utc>) -> Result<Moved> {
    check_key(key)?;
    let amount = parse_amount("amount_minor", &request.amount_minor)?;
    check_text("description", request.description.as_deref(), DESCRIPTION_LEN_MAX)?;
    let from = request.from_customer.as_str();
    let (sent_kind, received_kind) = match (request.kind.as_str(), &request.to_customer, &request.to_creator) {
        ("gift", Some(_), None) => ("gift_sent", Some("gift_received")),
        ("transfer", Some(_), None) => ("transfer_sent", Some("transfer_received")),
        ("tip", None, Some(_)) => ("tip", None),
        ("gift" | "transfer", _, _) => return Err(invalid("to_customer", "a gift or transfer names to_customer and no to_creator")),
        ("tip", _, _) => return Err(invalid("to_creator", "a tip names to_creator and no to_customer")),
        (other, _, _) => return Err(invalid("kind", format!("{other:?} is not gift, transfer or tip"))),
    };
    if request.to_customer.as_deref() == Some(from) {
        return Err(invalid("to_customer", "a customer cannot send credits to itself"));
    }
    let mut tx = pool.begin().await?;
    let mut locked = vec![from];
    locked.extend(request.to_customer.as_deref());
    lock_customers(&mut tx, merchant_id, &locked).await?;
    if let Some(done) = replay(&mut tx, merchant_id, key, from, sent_kind, &amount.to_string()).await? {
        return Ok(done);
    }
    let currency = currency::get(&mut tx, merchant_id, &request.currency).await?;
    let asset = asset_of(&currency)?.to_string();
    let consumed = plan(&mut tx, from, &currency, amount, now).await?;
    let value = crate::limits::check_movement(&mut tx, merchant_id, from, crate::limits::Counted::Transfer, currency.value(amount), now).await?;
    let sent_id = new_id("ctx");
    let mut entry = NewEntry::new(entry_key(merchant_id, key), format!("credit_{}", request.kind)).memo(format!("{} of {amount} {} from {from}", request.kind, currency.code));
    for c in &consumed {
        entry = entry.debit(AccountCode::credit_lot(&c.lot_id), asset.as_str(), c.amount);
    }
    let mut received = Vec::new();
    let counterparty;
    let mut detail = json!({ "lots": consumed_json(&consumed) });
    if let (Some(to), Some(kind)) = (request.to_customer.as_deref(), received_kind) {
        let received_id = new_id("ctx");
        let mut lots = Vec::with_capacity(consumed.len());
        for c in &consumed {
            let lot = insert_lot(&mut tx, merchant_id, to, &currency.code, "transfer", c.amount, c.expires_at, &received_id, now).await?;
            entry = entry.credit(AccountCode::credit_lot(&lot), asset.as_str(), c.amount);
            lots.push(json!({ "lot": lot, "amount_minor": c.amount.to_string(), "expires_at": c.expires_at }));
        }
        received.push((received_id, to, kind, json!({ "lots": lots })));
        counterparty = to.to_owned();
    } else {
        let creator = request.to_creator.as_deref().unwrap_or_default();
        if currency.peg.is_none() {
            return Err(invalid("currency", "credits without a peg are worth nothing to a creator: no tips"));
        }
        let fee = matching_rule(&mut tx, merchant_id, None).await.map_err(|e| splits_error("to_creator", e))?.map_or(0, |r| r.platform_fee_bps);
        let splits = Splits { splits: vec![CreatorShare { creator: creator.to_owned(), bps: BPS_WHOLE.saturating_sub(fee) }], platform_fee_bps: fee };
        check_creators(&mut tx, merchant_id, &splits).await.map_err(|e| splits_error("to_creator", e))?;
        let shares = split_postings(AccountCode::credits_revenue(merchant_id), amount, &splits).map_err(|e| invalid("amount_minor", e.to_string()))?;
        for (account, share) in &shares {
            entry = entry.credit(account.clone(), asset.as_str(), *share);
        }
        detail["shares"] = json!(shares.iter().map(|(a, v)| (a.as_str().to_owned(), v.to_string())).collect::<BTreeMap<_, _>>());
        counterparty = creator.to_owned();
    }
    let entry_id = post(&mut tx, ledger, &entry, key).await?;
    let sent = Row {
        id: sent_id,
        merchant_id,
        customer_id: from,
        currency: &currency.code,
        kind: sent_kind,
        amount: format!("-{amount}"),
        source: None,
        description: request.description.as_deref(),
        resource: None,
        counterparty: Some(&counterparty),
        key,
        entry_id,
        detail,
    };
    let transaction = insert_row(&mut tx, &sent, now).await?;
    crate::limits::record_value(&mut tx, &transaction.id, value).await?;
    emit(&mut tx, merchant_id, "credits.transferred", from, &transaction, now).await?;
    for (id, to, kind, detail) in received {
        let row = Row {
            id,
            merchant_id,
            customer_id: to,
            currency: &currency.code,
            kind,
            amount: amount.to_string(),
            source: Some("transfer"),
            description: request.description.as_deref(),
            resource: None,
            counterparty: Some(from),
            key,
            entry_id,
            detail,
        };
        let theirs = insert_row(&mut tx, &row, now).await?;
        emit(&mut tx, merchant_id, "credits.transferred", to, &theirs, now).await?;
    }
    tx.commit().await?;
    Ok(Moved { transaction, replayed: false })
}

/// An admin's correction of a customer's credits, against the merchant's credits issued
/// (`equity:credits_issued:{merchant}`); the reason and the admin key are kept on the movement.
pub async fn adjust(pool: &PgPool, ledger: &Ledger, customer_id: &str, request: &AdjustmentRequest, key: &str, admin_key_id: &str, now: DateTime<Utc>) -> Result<Moved> {
    check_key(key)?;
    let (negative, digits) = match request.amount_minor.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, request.amount_minor.as_str()),
    };
    let amount = parse_amount("amount_minor", digits)?;
    let reason = request.reason.trim();
    if reason.is_empty() {
        return Err(invalid("reason", "an adjustment needs its reason"));
    }
    check_text("reason", Some(reason), DESCRIPTION_LEN_MAX)?;
    let merchant_id: Option<String> = sqlx::query_scalar("SELECT merchant_id FROM customers WHERE id = $1").bind(customer_id).fetch_optional(pool).await?;
    let merchant_id = merchant_id.ok_or_else(|| CreditsError::NotFound { what: "customer", id: customer_id.to_owned() })?;
    let merchant_id = merchant_id.as_str();
    let mut tx = pool.begin().await?;
    lock_customers(&mut tx, merchant_id, &[customer_id]).await?;
    if let Some(done) = replay(&mut tx, merchant_id, key, customer_id, "adjustment", &amount.to_string()).await? {
        return Ok(done);
    }
    let currency = currency::get(&mut tx, merchant_id, &request.currency).await?;
    let asset = asset_of(&currency)?.to_string();
    let txn_id = new_id("ctx");
    let issued = AccountCode::credits_issued(merchant_id);
    let mut entry = NewEntry::new(entry_key(merchant_id, key), "credit_adjustment").memo(format!("adjustment of {} {} for {customer_id}: {reason}", request.amount_minor, currency.code));
    let detail = if negative {
        let consumed = plan(&mut tx, customer_id, &currency, amount, now).await?;
        for c in &consumed {
            entry = entry.debit(AccountCode::credit_lot(&c.lot_id), asset.as_str(), c.amount);
        }
        entry = entry.credit(issued, asset.as_str(), amount);
        json!({ "lots": consumed_json(&consumed), "admin_key": admin_key_id })
    } else {
        let lot = insert_lot(&mut tx, merchant_id, customer_id, &currency.code, "adjustment", amount, None, &txn_id, now).await?;
        entry = entry.debit(issued, asset.as_str(), amount).credit(AccountCode::credit_lot(&lot), asset.as_str(), amount);
        json!({ "lot": lot, "admin_key": admin_key_id })
    };
    let entry_id = post(&mut tx, ledger, &entry, key).await?;
    let row = Row {
        id: txn_id,
        merchant_id,
        customer_id,
        currency: &currency.code,
        kind: "adjustment",
        amount: request.amount_minor.clone(),
        source: Some("adjustment"),
        description: Some(reason),
        resource: None,
        counterparty: None,
        key,
        entry_id,
        detail,
    };
    let transaction = insert_row(&mut tx, &row, now).await?;
    let event = if negative { "credits.spent" } else { "credits.granted" };
    emit(&mut tx, merchant_id, event, customer_id, &transaction, now).await?;
    tx.commit().await?;
    Ok(Moved { transaction, replayed: false })
}

/// Books what is left of every lot past its expiry as breakage (`revenue:breakage:{merchant}`),
/// once: a lot is marked expired in the transaction that books it, under its customer's lock.
/// Returns how many lots it expired.
pub async fn expire_due(pool: &PgPool, ledger: &Ledger, now: DateTime<Utc>) -> Result<usize> {
    let due: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT id, merchant_id, customer_id FROM credit_lots WHERE expired_at IS NULL AND expires_at <= $1 ORDER BY expires_at, id LIMIT $2",
    )
    .bind(now)
    .bind(EXPIRE_BATCH)
    .fetch_all(pool)
    .await?;
    let mut expired = 0;
    for (lot_id, merchant_id, customer_id) in due {
        let mut tx = pool.begin().await?;
        lock_customers(&mut tx, &merchant_id, &[&customer_id]).await?;
        let lot: Option<(String, Option<DateTime<Utc>>)> =
            sqlx::query_as("SELECT currency, expires_at FROM credit_lots WHERE id = $1 AND expired_at IS NULL FOR UPDATE").bind(&lot_id).fetch_optional(&mut *tx).await?;
        let Some((code, expires_at)) = lot else { continue };
        let currency = currency::get(&mut tx, &merchant_id, &code).await?;
        let asset = asset_of(&currency)?.to_string();
        let left = ledger.balance(&mut tx, &AccountCode::credit_lot(&lot_id), &asset).await?;
        sqlx::query("UPDATE credit_lots SET expired_at = $2 WHERE id = $1").bind(&lot_id).bind(now).execute(&mut *tx).await?;
        if !left.is_negative() && !left.magnitude().is_zero() {
            let amount = left.magnitude();
            let key = format!("expiry:{lot_id}");
            let entry = NewEntry::new(entry_key(&merchant_id, &key), "credit_expiry")
                .memo(format!("lot {lot_id} of {customer_id} expired at {}", expires_at.map(|a| a.to_rfc3339()).unwrap_or_default()))
                .debit(AccountCode::credit_lot(&lot_id), asset.as_str(), amount)
                .credit(AccountCode::breakage(&merchant_id), asset.as_str(), amount);
            let entry_id = post(&mut tx, ledger, &entry, &key).await?;
            let row = Row {
                id: new_id("ctx"),
                merchant_id: &merchant_id,
                customer_id: &customer_id,
                currency: &currency.code,
                kind: "expiry",
                amount: format!("-{amount}"),
                source: None,
                description: None,
                resource: None,
                counterparty: None,
                key: &key,
                entry_id,
                detail: json!({ "lot": lot_id, "expires_at": expires_at }),
            };
            let transaction = insert_row(&mut tx, &row, now).await?;
            emit(&mut tx, &merchant_id, "credits.expired", &customer_id, &transaction, now).await?;
        }
        tx.commit().await?;
        expired += 1;
    }
    Ok(expired)
}

/// A grant of a new lot, made on the caller's transaction: by the merchant over the API (a
/// reward), or paid for outside the credits API (a subscription's period, an unlock given back).
#[derive(Debug, Clone)]
pub struct LotGrant<'a> {
    pub merchant_id: &'a str,
    pub customer_id: &'a str,
    pub currency: &'a str,
    pub amount: Amount,
    /// The lot's source: `reward`, `bonus`, `promo`, `subscription`, `refund`.
    pub source: &'a str,
    pub expires_at: Option<DateTime<Utc>>,
    /// The caller's, or derived from what was paid: the grant is made once under it.
    pub key: &'a str,
    pub resource: Option<&'a str>,
    pub description: Option<&'a str>,
    pub detail: serde_json::Value,
    /// Who pays for them: the merchant's rewards (`expenses:rewards:{merchant}`) for what it gives,
    /// its credits issued (`equity:credits_issued:{merchant}`) for
    /// credits bought with money, its credits revenue (`revenue:credits:{merchant}`) for credits
    /// given back after a spend.
    pub funded_by: AccountCode,
}

/// Grants a new lot (`grant.funded_by` pays), on the caller's transaction, which holds the
/// customer's lock or takes it here; once per key: a second call answers the first grant.
pub async fn grant_lot(tx: &mut PgConnection, ledger: &Ledger, grant: &LotGrant<'_>, now: DateTime<Utc>) -> Result<TransactionView> {
    let (merchant_id, customer_id) = (grant.merchant_id, grant.customer_id);
    lock_customers(&mut *tx, merchant_id, &[customer_id]).await?;
    if let Some(done) = replay(&mut *tx, merchant_id, grant.key, customer_id, "grant", &grant.amount.to_string()).await? {
        return Ok(done.transaction);
    }
    let currency = currency::get(&mut *tx, merchant_id, grant.currency).await?;
    let asset = asset_of(&currency)?.to_string();
    let txn_id = new_id("ctx");
    let lot_id = insert_lot(&mut *tx, merchant_id, customer_id, &currency.code, grant.source, grant.amount, grant.expires_at, &txn_id, now).await?;
    let entry = NewEntry::new(entry_key(merchant_id, grant.key), "credit_grant")
        .memo(format!("{} of {} {} to {customer_id}", grant.source, grant.amount, currency.code))
        .debit(grant.funded_by.clone(), asset.as_str(), grant.amount)
        .credit(AccountCode::credit_lot(&lot_id), asset.as_str(), grant.amount);
    let entry_id = post(&mut *tx, ledger, &entry, grant.key).await?;
    let mut detail = grant.detail.clone();
    detail["lot"] = json!(lot_id);
    detail["expires_at"] = json!(grant.expires_at);
    let row = Row {
        id: txn_id,
        merchant_id,
        customer_id,
        currency: &currency.code,
        kind: "grant",
        amount: grant.amount.to_string(),
        source: Some(grant.source),
        description: grant.description,
        resource: grant.resource,
        counterparty: None,
        key: grant.key,
        entry_id,
        detail,
    };
    let transaction = insert_row(&mut *tx, &row, now).await?;
    emit(&mut *tx, merchant_id, "credits.granted", customer_id, &transaction, now).await?;
    Ok(transaction)
}
